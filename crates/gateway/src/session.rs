//! One task per WebSocket connection: it reads commands, writes replies and
//! the frames the hub queues for it, pings the client, enforces the token's
//! expiry, holds the client to its message rate and closes with the
//! contract's close codes.
//!
//! Message rate: every frame the client sends (text, binary or ping) takes a
//! token from a per-connection bucket (`limits.msg_rate`, `limits.msg_burst`).
//! A frame over the rate gets a `rate_limited` error and is not executed;
//! those refusals take from a second bucket (`limits.msg_close_after`,
//! refilling at the same rate), and a client that empties it too, i.e. keeps
//! sending at more than twice its rate, is closed with 1008.
//!
//! Everything a session waits on is in one `select!`: the shutdown signal,
//! one timer (the nearest of ping, pong deadline and token expiry), its
//! outbound queue and the socket. Commands run one at a time, so the frames
//! one connection publishes reach the broker in the order it sent them.
//!
//! Recovery: a `subscribe` on a channel with history joins the hub first,
//! then reads the channel's history, answers with the position it read and
//! (with `since`) writes the missed messages right after the reply. Live
//! frames queued meanwhile that the reply's position already covers are
//! dropped when they come off the queue ([`Resume`]), so the client sees
//! every message after its `since` exactly once, in order.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};
use switchboard_protocol::frame::decode_command;
use switchboard_protocol::position::MAX_HISTORY_LIMIT;
use switchboard_protocol::{close, ChannelName, Command, ErrorCode, Position, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::auth::{AuthError, Claims};
use crate::broker::{self, BrokerError};
use crate::handshake::Admission;
use crate::history::{HistoryPage, HistoryQuery, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_SIZE};
use crate::hub::{Delivery, Outbound, SessionHandle};
use crate::metrics::Closed;
use crate::node::Node;
use crate::presence::Member;

/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a session ends.
#[derive(Debug)]
enum End {
    /// Send a close frame with this code and reason.
    Close(u16, Cow<'static, str>),
    /// The client closed, or the socket broke: nothing more to send.
    Gone(&'static str),
}

/// A connection admitted by the handshake, about to become a session.
#[derive(Debug)]
pub struct Opened {
    /// The node-local session number.
    pub id: u64,
    /// `<node_id>.<run>.<id>`, already recorded in cluster state.
    pub connection_id: Arc<str>,
    pub peer: SocketAddr,
    /// The claims, and the capacity, address and user slots held until the
    /// session ends.
    pub admission: Admission,
}

/// The client's message-rate buckets.
struct Rate {
    commands: DefaultDirectRateLimiter,
    refusals: DefaultDirectRateLimiter,
    per_second: u32,
}

impl Rate {
    fn new(limits: &crate::config::LimitsConfig) -> Rate {
        let per_second = NonZeroU32::new(limits.msg_rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.msg_burst).unwrap_or(NonZeroU32::MIN);
        let refusals = NonZeroU32::new(limits.msg_close_after).unwrap_or(NonZeroU32::MIN);
        Rate {
            commands: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            refusals: RateLimiter::direct(Quota::per_second(per_second).allow_burst(refusals)),
            per_second: limits.msg_rate,
        }
    }
}

impl End {
    /// How the metrics count this end.
    fn closed(&self) -> Closed {
        match self {
            End::Close(code, _) => Closed::Server(*code),
            End::Gone("client closed") => Closed::Client,
            End::Gone(_) => Closed::Lost,
        }
    }
}

/// A channel this session just (re)subscribed to with history: live frames
/// queued before its reply that the reply's position already covers.
#[derive(Debug)]
struct Resume {
    channel: Box<str>,
    offset: u64,
    epoch: Box<str>,
}

/// A command's result, and frames to write right after its reply.
type Done = (Value, Vec<Utf8Bytes>);

struct Session {
    node: Arc<Node>,
    rate: Rate,
    handle: Arc<SessionHandle>,
    connection_id: Arc<str>,
    claims: Claims,
    subscriptions: HashSet<ChannelName>,
    /// Usually empty; see [`Resume`].
    resumed: Vec<Resume>,
    expires_at: Instant,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    /// When the node drains: the moment this session closes with 1012.
    drain_at: Option<Instant>,
}

/// Runs a session on an upgraded connection until it closes.
pub async fn run<S>(node: Arc<Node>, ws: WebSocketStream<S>, opened: Opened)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Opened {
        id,
        connection_id,
        peer,
        admission,
    } = opened;
    let Admission {
        claims,
        permit,
        slots,
        client_ip,
        ..
    } = admission;
    let span = tracing::info_span!("session", %peer, client = %client_ip, node = %node.config.node_id, user = %claims.user, connection_id = %connection_id);
    async move {
        let (handle, rx) = SessionHandle::new(id, node.config.session.send_queue_bytes);
        let now = Instant::now();
        let lifetime = claims.lifetime(SystemTime::now(), node.verifier.leeway());
        let mut session = Session {
            handle: Arc::new(handle),
            rate: Rate::new(&node.config.limits),
            connection_id,
            expires_at: now + lifetime,
            next_ping: now + node.config.session.ping_interval,
            pong_deadline: None,
            drain_at: None,
            subscriptions: HashSet::new(),
            resumed: Vec::new(),
            claims,
            node,
        };
        tracing::debug!(
            message = "session opened",
            expires_in_secs = lifetime.as_secs()
        );
        let node = Arc::clone(&session.node);
        let _open = node.metrics.session_opened();
        node.hub.register(&session.claims.user, &session.handle);
        session.drive(ws, rx).await;
        node.hub.unregister(&session.claims.user, id);
        if let Err(error) = node.presence.disconnected(&session.connection_id).await {
            tracing::warn!(message = "connection not forgotten", %error);
        }
        drop(slots);
        drop(permit);
    }
    .instrument(span)
    .await
}

impl Session {
    async fn drive<S>(
        &mut self,
        mut ws: WebSocketStream<S>,
        mut rx: mpsc::UnboundedReceiver<Outbound>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let welcome = ServerFrame::Welcome {
            connection_id: &self.connection_id,
            node_id: &self.node.config.node_id,
            user: &self.claims.user,
            expires_in: self
                .expires_at
                .saturating_duration_since(Instant::now())
                .as_secs(),
        }
        .encode();
        let end = match self.write(&mut ws, Message::text(welcome)).await {
            Ok(()) => self.serve(&mut ws, &mut rx).await,
            Err(end) => end,
        };
        self.node.metrics.session_closed(end.closed());
        match &end {
            End::Close(code, reason) => {
                if *code == close::DRAINING || *code == close::NORMAL {
                    tracing::debug!(message = "session closed", code, %reason);
                } else {
                    tracing::info!(message = "session closed", code, %reason);
                }
                let frame = CloseFrame {
                    code: CloseCode::from(*code),
                    reason: Utf8Bytes::from(reason.as_ref()),
                };
                let _ = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
                let _ = timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            End::Gone(reason @ "client closed") => {
                tracing::debug!(message = "session closed by client", reason)
            }
            End::Gone(reason) => tracing::info!(message = "session lost", reason),
        }
        drop(ws);
        self.leave_all().await;
    }

    /// The main loop; returns how the session ends.
    async fn serve<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rx: &mut mpsc::UnboundedReceiver<Outbound>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let node = Arc::clone(&self.node);
        let mut deadline = self.next_deadline();
        let timer = sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            let result = tokio::select! {
                biased;
                () = node.shutdown.cancelled(), if self.drain_at.is_none() => {
                    self.drain_at = Some(Instant::now() + drain_delay(node.config.drain_window));
                    Ok(())
                }
                () = &mut timer => self.on_timer(ws).await,
                item = rx.recv() => match item {
                    Some(Outbound::Frame(delivery)) => {
                        self.handle.taken(&delivery);
                        self.write_batch(ws, rx, delivery).await
                    }
                    Some(Outbound::Close(code, reason)) => Err(End::Close(code, reason.into())),
                    None => Err(End::Close(close::INTERNAL, "session queue closed".into())),
                },
                message = ws.next() => self.on_message(ws, message).await,
            };
            if let Err(end) = result {
                return end;
            }
            let next = self.next_deadline();
            if next != deadline {
                deadline = next;
                timer.as_mut().reset(deadline);
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut next = self.expires_at.min(self.next_ping);
        if let Some(pong) = self.pong_deadline {
            next = next.min(pong);
        }
        if let Some(drain) = self.drain_at {
            next = next.min(drain);
        }
        next
    }

    async fn on_timer<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let now = Instant::now();
        if self.drain_at.is_some_and(|d| now >= d) {
            return Err(End::Close(close::DRAINING, "node shutting down".into()));
        }
        if now >= self.expires_at {
            return Err(End::Close(close::TOKEN_EXPIRED, "token expired".into()));
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(End::Close(
                close::GOING_AWAY,
                "no pong within timeout".into(),
            ));
        }
        if now >= self.next_ping {
            let config = &self.node.config.session;
            self.next_ping = now + config.ping_interval;
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + config.pong_timeout);
            }
            self.write(ws, Message::Ping(Default::default())).await?;
        }
        Ok(())
    }

    /// Whether a queued delivery goes out: false for what a recovery or the
    /// reply of a subscribe already covered. Costs nothing unless a
    /// subscribe just happened; an entry lives until the first frame of its
    /// channel beyond the position it recorded.
    fn admit(resumed: &mut Vec<Resume>, delivery: &Delivery) -> bool {
        if resumed.is_empty() {
            return true;
        }
        let Some((offset, epoch)) = &delivery.position else {
            return true;
        };
        let Some(i) = resumed.iter().position(|r| r.channel == delivery.channel) else {
            return true;
        };
        let resume = &resumed[i];
        if *resume.epoch == **epoch && *offset <= resume.offset {
            return false;
        }
        resumed.swap_remove(i);
        true
    }

    /// Writes one frame and whatever else is already queued, then flushes once.
    async fn write_batch<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rx: &mut mpsc::UnboundedReceiver<Outbound>,
        first: Arc<Delivery>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut close_after = None;
        let resumed = &mut self.resumed;
        let handle = &self.handle;
        let write = async {
            if Session::admit(resumed, &first) {
                ws.feed(Message::Text(first.frame.clone())).await?;
            }
            for _ in 1..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(Outbound::Frame(delivery)) => {
                        handle.taken(&delivery);
                        if Session::admit(resumed, &delivery) {
                            ws.feed(Message::Text(delivery.frame.clone())).await?
                        }
                    }
                    Ok(Outbound::Close(code, reason)) => {
                        close_after = Some(End::Close(code, reason.into()));
                        break;
                    }
                    Err(_) => break,
                }
            }
            ws.flush().await
        };
        bounded_write(self.node.config.session.pong_timeout, write).await?;
        if self.handle.is_slow() {
            return Err(End::Close(
                close::SLOW_CONSUMER,
                "slow consumer: send queue overflowed".into(),
            ));
        }
        close_after.map_or(Ok(()), Err)
    }

    async fn write<S>(&mut self, ws: &mut WebSocketStream<S>, message: Message) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        bounded_write(self.node.config.session.pong_timeout, ws.send(message)).await
    }

    async fn send_text<S>(&mut self, ws: &mut WebSocketStream<S>, text: String) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.write(ws, Message::text(text)).await
    }

    async fn on_message<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        message: Option<Result<Message, WsError>>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Any frame shows the client is alive.
        self.pong_deadline = None;
        let counted = matches!(
            message,
            Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_)))
        );
        if counted && self.rate.commands.check().is_err() {
            return self.over_rate(ws, message).await;
        }
        match message {
            None => Err(End::Gone("stream ended")),
            Some(Ok(Message::Text(text))) => self.on_text(ws, &text).await,
            Some(Ok(Message::Binary(_))) => {
                let frame = ServerFrame::failure(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                );
                self.send_text(ws, frame).await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Ok(Message::Close(_))) => Err(End::Gone("client closed")),
            Some(Err(WsError::Capacity(_))) => Err(End::Close(
                close::TOO_BIG,
                format!(
                    "frame exceeds {} bytes",
                    self.node.config.session.max_frame_bytes
                )
                .into(),
            )),
            Some(Err(WsError::Utf8(_))) => Err(End::Close(
                close::INVALID_DATA,
                "text frame is not valid UTF-8".into(),
            )),
            // The client's socket went away without a close frame: lost,
            // not a protocol violation worth a 1002.
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                Err(End::Gone("connection lost"))
            }
            Some(Err(WsError::Protocol(error))) => {
                tracing::debug!(message = "websocket protocol error", %error);
                Err(End::Close(1002, "websocket protocol error".into()))
            }
            Some(Err(error)) => Err(End::Gone(ws_error_reason(&error))),
        }
    }

    /// A frame beyond the message rate: refused with `rate_limited` (pings
    /// silently), or the connection closed with 1008 when the client keeps
    /// going past its refusal allowance.
    async fn over_rate<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        message: Option<Result<Message, WsError>>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let per_second = self.rate.per_second;
        self.node.metrics.command_rate_limited();
        if self.rate.refusals.check().is_err() {
            return Err(End::Close(
                close::POLICY,
                format!("message rate limit of {per_second}/s exceeded persistently").into(),
            ));
        }
        let id = match &message {
            Some(Ok(Message::Text(text))) => match decode_command(text) {
                Ok(request) => request.id,
                Err(error) => error.id,
            },
            Some(Ok(Message::Binary(_))) => None,
            _ => return Ok(()),
        };
        let frame = ServerFrame::failure(
            id,
            ErrorCode::RateLimited,
            &format!("message rate limit of {per_second}/s exceeded; command not executed"),
        );
        self.send_text(ws, frame).await
    }

    async fn on_text<S>(&mut self, ws: &mut WebSocketStream<S>, text: &str) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.node.metrics.client_message(text.len());
        let request = match decode_command(text) {
            Ok(request) => request,
            Err(error) => {
                self.node.metrics.command("invalid", Some(error.code));
                tracing::debug!(message = "bad frame", error = %error.message);
                let frame = ServerFrame::failure(error.id, error.code, &error.message);
                return self.send_text(ws, frame).await;
            }
        };
        let id = request.id;
        let kind = request.command.kind();
        let result = match request.command {
            Command::Subscribe { channel, since } => self.subscribe(channel, since).await,
            Command::Unsubscribe { channel } => self.unsubscribe(&channel).await.map(none),
            Command::Publish { channel, data } => self.publish(&channel, data).await.map(none),
            Command::Presence { channel } => self.presence(&channel).await.map(none),
            Command::Refresh { token } => self.refresh(&token).map(none),
            Command::History {
                channel,
                since,
                limit,
            } => self.history(&channel, since, limit).await.map(none),
            Command::Ping => Ok(none(json!({}))),
        };
        self.node
            .metrics
            .command(kind, result.as_ref().err().map(|(code, _)| *code));
        let (frame, replay) = match (result, id) {
            (Ok((value, replay)), Some(id)) => (
                Some(
                    ServerFrame::Reply {
                        id,
                        result: Some(&value),
                        error: None,
                    }
                    .encode(),
                ),
                replay,
            ),
            (Ok((_, replay)), None) => (None, replay),
            (Err((code, message)), id) => {
                (Some(ServerFrame::failure(id, code, &message)), Vec::new())
            }
        };
        if replay.is_empty() {
            return match frame {
                Some(frame) => self.send_text(ws, frame).await,
                None => Ok(()),
            };
        }
        // The reply, then every replayed message, in one flush.
        let write = async {
            if let Some(frame) = frame {
                ws.feed(Message::text(frame)).await?;
            }
            for message in replay {
                ws.feed(Message::Text(message)).await?;
            }
            ws.flush().await
        };
        bounded_write(self.node.config.session.pong_timeout, write).await
    }

    async fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Option<Position>,
    ) -> Result<Done, (ErrorCode, String)> {
        if !self.claims.channels.allows(channel.as_str()) {
            return Err((
                ErrorCode::Forbidden,
                format!("token does not grant subscribing to {channel}"),
            ));
        }
        if self.subscriptions.contains(&channel) {
            return Ok(none(json!({})));
        }
        let max = self.node.config.session.max_channels;
        if self.subscriptions.len() >= max {
            return Err((
                ErrorCode::BadRequest,
                format!("subscription limit of {max} channels reached"),
            ));
        }
        let node = Arc::clone(&self.node);
        if node.hub.subscribe(channel.as_str(), &self.handle) {
            if let Err(error) = node.broker.subscribe(channel.as_str()).await {
                tracing::warn!(message = "broker subscribe failed", channel = %channel, %error);
                self.undo_subscribe(&channel).await;
                return Err((
                    ErrorCode::Internal,
                    "subscription failed: broker unavailable".into(),
                ));
            }
        }
        let namespace = node.config.namespace(channel.namespace());
        // Read after joining the hub and the broker: every message after the
        // position read here reaches this session, live or from history.
        let (result, replay) = if namespace.history().enabled() {
            match self.recover(&channel, since).await {
                Ok(done) => done,
                Err(error) => {
                    self.undo_subscribe(&channel).await;
                    return Err(error);
                }
            }
        } else {
            let result = match since {
                Some(_) => json!({ "recovered": false }),
                None => json!({}),
            };
            (result, Vec::new())
        };
        let namespace = node.config.namespace(channel.namespace());
        if namespace.presence {
            let member = Member {
                user: Arc::clone(&self.claims.user),
                connection_id: Arc::clone(&self.connection_id),
                info: self.claims.info.clone(),
            };
            if let Err(error) = node.presence.join(channel.as_str(), &member).await {
                tracing::warn!(message = "presence join failed", channel = %channel, %error);
            } else if namespace.join_leave {
                let frame = ServerFrame::Join {
                    channel: channel.as_str(),
                    user: &self.claims.user,
                    connection_id: &self.connection_id,
                    info: self.claims.info.as_deref(),
                }
                .encode();
                if let Err(error) = node
                    .broker
                    .publish(channel.as_str(), Utf8Bytes::from(frame))
                    .await
                {
                    tracing::warn!(message = "join event not published", channel = %channel, %error);
                }
            }
        }
        node.metrics.subscribed(channel.as_str());
        self.subscriptions.insert(channel);
        Ok((result, replay))
    }

    /// Leaves the hub (and the broker) after a subscribe that failed midway.
    async fn undo_subscribe(&mut self, channel: &ChannelName) {
        let node = &self.node;
        if node.hub.unsubscribe(channel.as_str(), self.handle.id) {
            let _ = node.broker.unsubscribe(channel.as_str()).await;
        }
        self.resumed.retain(|r| *r.channel != *channel.as_str());
    }

    /// Reads the channel's position (and, with `since`, what the client
    /// missed) for a subscribe; records what queued frames to drop.
    async fn recover(
        &mut self,
        channel: &ChannelName,
        since: Option<Position>,
    ) -> Result<Done, (ErrorCode, String)> {
        // Without `since` only the position is needed: read one message,
        // not the whole history, on every plain subscribe.
        let query = HistoryQuery {
            limit: if since.is_some() { MAX_HISTORY_SIZE } else { 1 },
            since: since.clone(),
        };
        let page = self.read_history(channel, &query, "subscribe").await?;
        let node = &self.node;
        node.broker.holding(channel.as_str(), &page.top);
        let (recovered, replay) = match &since {
            None => (None, Vec::new()),
            Some(since) if page.is_beyond_top(since) => {
                return Err(beyond_top(since, &page));
            }
            Some(since) => {
                let recovered = page.continues(since);
                node.metrics.recovery(recovered);
                let replay: Vec<Utf8Bytes> = if recovered {
                    page.messages.into_iter().map(|(_, frame)| frame).collect()
                } else {
                    Vec::new()
                };
                node.metrics.replayed("session", replay.len());
                (Some(recovered), replay)
            }
        };
        self.resumed.retain(|r| *r.channel != *channel.as_str());
        self.resumed.push(Resume {
            channel: channel.as_str().into(),
            offset: page.top.offset,
            epoch: page.top.epoch.as_str().into(),
        });
        let mut result = json!({ "offset": page.top.offset, "epoch": page.top.epoch });
        if let Some(recovered) = recovered {
            result["recovered"] = json!(recovered);
        }
        Ok((result, replay))
    }

    async fn read_history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        reason: &'static str,
    ) -> Result<HistoryPage, (ErrorCode, String)> {
        let node = &self.node;
        let policy = node.config.namespace(channel.namespace()).history();
        let page = node.broker.history(channel.as_str(), policy, query).await;
        node.metrics.history_read(reason, page.is_ok());
        page.map_err(|BrokerError::Unavailable(error)| {
            tracing::warn!(message = "history read failed", channel = %channel, %error);
            (ErrorCode::Internal, "history unavailable".into())
        })
    }

    /// The `history` command: stored messages, newest `limit` or after `since`.
    async fn history(
        &mut self,
        channel: &ChannelName,
        since: Option<Position>,
        limit: Option<usize>,
    ) -> Result<Value, (ErrorCode, String)> {
        if !self.claims.channels.allows(channel.as_str()) {
            return Err((
                ErrorCode::Forbidden,
                format!("token does not grant access to {channel}"),
            ));
        }
        if !self
            .node
            .config
            .namespace(channel.namespace())
            .history()
            .enabled()
        {
            return Err(history_disabled(channel));
        }
        let query = HistoryQuery {
            since,
            limit: limit
                .unwrap_or(DEFAULT_HISTORY_LIMIT)
                .min(MAX_HISTORY_LIMIT),
        };
        let page = self.read_history(channel, &query, "history").await?;
        history_result(&query, page)
    }

    async fn unsubscribe(&mut self, channel: &ChannelName) -> Result<Value, (ErrorCode, String)> {
        if self.subscriptions.remove(channel) {
            self.resumed.retain(|r| *r.channel != *channel.as_str());
            self.leave(channel).await;
        }
        Ok(json!({}))
    }

    /// Drops one subscription: hub, broker, presence and the `leave` event.
    async fn leave(&self, channel: &ChannelName) {
        let node = &self.node;
        node.metrics.unsubscribed(channel.as_str());
        if node.hub.unsubscribe(channel.as_str(), self.handle.id) {
            if let Err(error) = node.broker.unsubscribe(channel.as_str()).await {
                tracing::warn!(message = "broker unsubscribe failed", channel = %channel, %error);
            }
        }
        let namespace = node.config.namespace(channel.namespace());
        if !namespace.presence {
            return;
        }
        if let Err(error) = node
            .presence
            .leave(channel.as_str(), &self.connection_id)
            .await
        {
            tracing::warn!(message = "presence leave failed", channel = %channel, %error);
            return;
        }
        if namespace.join_leave {
            let frame = ServerFrame::Leave {
                channel: channel.as_str(),
                user: &self.claims.user,
                connection_id: &self.connection_id,
            }
            .encode();
            if let Err(error) = node
                .broker
                .publish(channel.as_str(), Utf8Bytes::from(frame))
                .await
            {
                tracing::warn!(message = "leave event not published", channel = %channel, %error);
            }
        }
    }

    async fn leave_all(&mut self) {
        for channel in std::mem::take(&mut self.subscriptions) {
            self.leave(&channel).await;
        }
    }

    async fn publish(
        &mut self,
        channel: &ChannelName,
        data: &serde_json::value::RawValue,
    ) -> Result<Value, (ErrorCode, String)> {
        if !self.claims.publish.allows(channel.as_str()) {
            return Err((
                ErrorCode::Forbidden,
                format!("token does not grant publishing to {channel}"),
            ));
        }
        let node = &self.node;
        let policy = node.config.namespace(channel.namespace()).history();
        let published = broker::publish_message(&*node.broker, channel.as_str(), data, policy)
            .await
            .map(|position| match position {
                Some(p) => json!({ "offset": p.offset, "epoch": p.epoch }),
                None => json!({}),
            });
        match published {
            Ok(result) => Ok(result),
            Err(error) => {
                tracing::warn!(message = "publish failed", channel = %channel, %error);
                Err((
                    ErrorCode::Internal,
                    "message not published: broker unavailable".into(),
                ))
            }
        }
    }

    async fn presence(&mut self, channel: &ChannelName) -> Result<Value, (ErrorCode, String)> {
        if !self.claims.channels.allows(channel.as_str()) {
            return Err((
                ErrorCode::Forbidden,
                format!("token does not grant access to {channel}"),
            ));
        }
        if !self.node.config.namespace(channel.namespace()).presence {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "presence is disabled for namespace {:?}",
                    channel.namespace()
                ),
            ));
        }
        match self.node.presence.members(channel.as_str()).await {
            Ok(members) => Ok(json!({ "members": members })),
            Err(error) => {
                tracing::warn!(message = "presence read failed", channel = %channel, %error);
                Err((ErrorCode::Internal, "presence unavailable".into()))
            }
        }
    }

    fn refresh(&mut self, token: &str) -> Result<Value, (ErrorCode, String)> {
        let claims = self
            .node
            .verifier
            .verify(token)
            .map_err(|error| match error {
                AuthError::Expired => (ErrorCode::TokenExpired, error.to_string()),
                _ => (ErrorCode::Unauthorized, error.to_string()),
            })?;
        if claims.user != self.claims.user {
            tracing::info!(message = "refresh refused", reason = "other_user");
            return Err((ErrorCode::Forbidden, "token belongs to another user".into()));
        }
        let lifetime = claims.lifetime(SystemTime::now(), self.node.verifier.leeway());
        self.expires_at = Instant::now() + lifetime;
        self.claims = claims;
        Ok(json!({ "expires_in": lifetime.as_secs() }))
    }
}

/// A result with nothing to write after its reply.
fn none(value: Value) -> Done {
    (value, Vec::new())
}

/// A client that cannot take a write within the pong timeout is as dead as
/// one that does not answer pings.
async fn bounded_write(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Result<(), End> {
    match timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(End::Gone(ws_error_reason(&error))),
        Err(_) => Err(End::Close(
            close::SLOW_CONSUMER,
            "slow consumer: write timed out".into(),
        )),
    }
}

/// The error for a `since` ahead of the channel's stream.
pub fn beyond_top(since: &Position, page: &HistoryPage) -> (ErrorCode, String) {
    (
        ErrorCode::BadRequest,
        format!(
            "since.offset {} is beyond the channel's latest offset {}",
            since.offset, page.top.offset
        ),
    )
}

/// The error for history on a namespace without it.
pub fn history_disabled(channel: &ChannelName) -> (ErrorCode, String) {
    (
        ErrorCode::BadRequest,
        format!(
            "history is disabled for namespace {:?}",
            channel.namespace()
        ),
    )
}

/// The result of a `history` command or `GET /api/history`:
/// `{offset, epoch, messages, recovered?}`. With `since`, `recovered`
/// says whether `messages` continue right after it; when not, the
/// messages are what history still holds.
pub fn history_result(
    query: &HistoryQuery,
    page: HistoryPage,
) -> Result<Value, (ErrorCode, String)> {
    let recovered = match &query.since {
        Some(since) if page.is_beyond_top(since) => return Err(beyond_top(since, &page)),
        Some(since) => Some(page.continues(since)),
        None => None,
    };
    // Stored frames are the `message` frames subscribers got; a bounded
    // read (at most MAX_HISTORY_LIMIT) is parsed back to sit in the reply.
    let messages = page
        .messages
        .iter()
        .map(|(_, frame)| serde_json::from_str::<Value>(frame))
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|error| {
            tracing::warn!(message = "stored frames are not JSON", %error);
            (ErrorCode::Internal, "history unavailable".to_owned())
        })?;
    let mut result = json!({
        "offset": page.top.offset,
        "epoch": page.top.epoch,
        "messages": messages,
    });
    if let Some(recovered) = recovered {
        result["recovered"] = json!(recovered);
    }
    Ok(result)
}

/// A uniformly random moment within the drain window: reconnects spread
/// over the window instead of arriving at the other nodes all at once.
fn drain_delay(window: Duration) -> Duration {
    if window.is_zero() {
        return Duration::ZERO;
    }
    window.mul_f64(rand::random::<f64>())
}

fn ws_error_reason(error: &WsError) -> &'static str {
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => "connection closed",
        WsError::Io(_) => "socket error",
        _ => "websocket error",
    }
}
