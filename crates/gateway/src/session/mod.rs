//! One task per WebSocket connection: it reads commands, writes replies and
//! the frames the hub queues for it, pings the client, enforces the token's
//! expiry, holds the client to its message rate and closes with the
//! contract's close codes.
//!
//! This file holds the session's state and its life: admission, the
//! welcome, the main loop, the timers, the drain and the close. What a
//! command does is decided in `commands` (pure) and run in `effects` (a
//! `publish_batch` in `batch`); the message rate is `rate` (pure); what a
//! subscribe recovers is `recovery` (pure); the channels held, one small
//! entry each, are `subscriptions` (pure); how frames reach the socket is
//! `writer`, over `socket` (tungstenite driven with one waker); its times
//! are `clock`'s 8-byte moments.
//!
//! Everything a session waits on is in one `select!`: one timer (the
//! nearest of ping, pong deadline, token expiry, drain and held writes),
//! its outbound queue and the socket. The queue also carries close requests
//! and the node's drain (a 1012 close at a random moment in the drain
//! window), and wakes the session when a frame was dropped for it, so an
//! overflow always ends in a 1013 close. Commands run one at a time, so the
//! frames one connection publishes reach the broker in the order it sent
//! them.
//!
//! Memory: an idle connection is what matters. The session's state is one
//! box, kept within jemalloc's 640-byte size class (its seven times are
//! 8-byte `clock` moments), the task's future is the idle `select!` and a
//! few pointers (the handlers are boxed while they run; tests guard both
//! sizes), text frames go out as vectored writes of their shared payloads
//! (no write buffer kept at a burst's size), and log events carry the
//! connection id instead of a span holding formatted fields.
//!
//! Close handshake: a client's close frame is answered (tungstenite queues
//! the echo, or 1002 for an invalid code) and flushed before the socket
//! closes; a malformed close (1-byte payload, reason not UTF-8) gets 1002
//! or 1007.

mod batch;
mod clock;
mod commands;
mod effects;
pub mod events;
pub mod formats;
mod rate;
mod recovery;
pub mod socket;
mod subscriptions;
mod wire;
mod writer;

pub use self::wire::Wire;
use self::wire::CLOSE_TIMEOUT;

use std::borrow::Cow;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use switchboard_protocol::frame::{decode_command, ErrorBody};
use switchboard_protocol::msgpack;
use switchboard_protocol::{close, ChannelName, Command, ErrorCode, Position, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use self::clock::Moment;
use self::commands::Caller;
use self::rate::{Rate, RateVerdict};

use self::subscriptions::Subscriptions;
use crate::auth::Claims;
use crate::compression::InflateError;
use crate::hub::{Outbound, SessionHandle, StreamCommand};
use crate::limits::Slots;
use crate::metrics::formats::{Direction, Format};
use crate::metrics::sessions::Transport;
use crate::metrics::sessions::{Closed, OpenSession};
use crate::node::Node;
use crate::presence::ConnectionId;

/// How a session ends.
#[derive(Debug)]
enum End {
    /// Send a close frame with this code and reason.
    Close(u16, Cow<'static, str>),
    /// The client closed, or the socket broke: nothing more to send.
    Gone(&'static str),
}

/// What the handshake admitted: a request that may be upgraded, and what
/// its session holds until it ends.
#[derive(Debug)]
pub struct Admission {
    pub claims: Claims,
    pub permit: OwnedSemaphorePermit,
    /// The address and user slots this connection holds until it closes.
    pub slots: Slots,
    /// The client's address (the peer, or what a trusted proxy forwarded).
    pub client_ip: IpAddr,
    /// The `Sec-WebSocket-Accept` value for the 101 response.
    pub accept_key: String,
    /// The client asked for batched frames (`?batch=1`), and its format
    /// and compression allow them: a text frame may carry several
    /// messages, one per line.
    pub batch: bool,
    /// The format and compression the handshake chose.
    pub mode: formats::Mode,
    /// The client named a subprotocol: the 101 names the one chosen.
    pub subprotocol: bool,
    /// permessage-deflate was negotiated: the 101's extension header.
    pub extension: Option<&'static str>,
}

/// A connection admitted by the handshake, about to become a session.
#[derive(Debug)]
pub struct Opened {
    /// The node-local session number: with the node's instance, the
    /// connection id ([`ConnectionId`]), already recorded in cluster state.
    pub id: u64,
    pub peer: SocketAddr,
    /// The claims, and the capacity, address and user slots held until the
    /// session ends.
    pub admission: Admission,
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

/// A session's whole state, in one heap allocation made when it opens: the
/// task's future then holds a pointer to it and the idle `select!`, and the
/// rarely-run handlers are boxed while they run.
struct Session<W> {
    /// The WebSocket, or the server-sent events stream.
    ws: W,
    node: Arc<Node>,
    rate: Rate,
    /// Its `id` and the node's instance make the connection id (see
    /// [`Session::connection_id`]): the session keeps no copy of it.
    handle: Arc<SessionHandle>,
    claims: Claims,
    /// One small entry per channel held (`session.max_channels` at most),
    /// each sharing the hub's name of its channel.
    subscriptions: Subscriptions,
    /// The frames being written (a lone frame inline; see [`writer::Out`]).
    out: writer::Out,
    /// Bytes of `out` written so far (headers included).
    out_done: usize,
    /// The write timeout, made only when a write does not complete at once.
    write_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    // The times are `Moment`s (see `clock`): 8 bytes each, even as an
    // `Option`, where tokio's `Instant` takes 16.
    expires_at: Moment,
    next_ping: Moment,
    pong_deadline: Option<Moment>,
    /// When the node drains: the moment this session closes with 1012.
    drain_at: Option<Moment>,
    /// A frame was cut short by a write timeout: no close frame can follow.
    torn: bool,
    /// When the socket was last written to (write coalescing; whether
    /// frames are being held is the handle's `holding` flag).
    last_write: Moment,
    /// Write coalescing: the last write of queued frames showed them
    /// arriving faster than the window, so the next frame waits for it.
    batching: bool,
    /// The client asked for batched frames (`?batch=1`): frames written
    /// together go out as one text frame, one message per line.
    batch: bool,
    _open: OpenSession,
    _slots: Slots,
    _permit: OwnedSemaphorePermit,
}

/// Runs a session on an upgraded connection until it closes. The state is
/// boxed here, before the returned future first runs.
pub fn run<W: Wire>(node: Arc<Node>, ws: W, opened: Opened) -> impl Future<Output = ()> {
    let Opened {
        id,
        peer,
        admission,
    } = opened;
    let Admission {
        claims,
        permit,
        slots,
        client_ip,
        batch,
        ..
    } = admission;
    // The one event that ties the connection id to its addresses (sessions
    // keep no span: its formatted fields cost 0.7 KB per connection).
    tracing::debug!(
        message = "session admitted",
        connection_id = %ConnectionId::new(&node.instance, id),
        %peer,
        client = %client_ip,
        user = %claims.user
    );
    let now = Moment::now();
    let lifetime = claims.lifetime(SystemTime::now(), node.verifier.leeway());
    let handle = SessionHandle::new(
        id,
        Arc::clone(&claims.user),
        node.config.session.send_queue_bytes,
    );
    let session = Box::new(Session {
        ws,
        handle: Arc::new(handle),
        rate: Rate::new(now),
        expires_at: now + lifetime,
        next_ping: now + node.config.session.ping_interval,
        pong_deadline: None,
        drain_at: None,
        torn: false,
        last_write: now,
        batching: false,
        batch,
        subscriptions: Subscriptions::default(),
        out: writer::Out::default(),
        out_done: 0,
        write_timer: None,
        claims,
        _open: node.metrics.session_opened(),
        _slots: slots,
        _permit: permit,
        node,
    });
    session.run()
}

impl<W: Wire> Session<W> {
    async fn run(mut self: Box<Self>) {
        let node = Arc::clone(&self.node);
        node.metrics.transport_opened(W::TRANSPORT);
        node.hub.register(&self.handle);
        node.presence.opened(self.connection_id());
        node.occupancy.connected(&self.claims.user);
        // The drain walks the hub's sessions once; one that registered
        // after the walk sees the node draining here.
        if node.is_draining() {
            self.drain_at = Some(Moment::now() + drain_delay(node.config.drain_window));
        }
        tracing::debug!(
            message = "session opened",
            connection_id = %self.connection_id(),
            user = %self.claims.user,
            expires_in_secs = self.expires_at.saturating_duration_since(Moment::now()).as_secs()
        );
        let end = match Box::pin(self.welcome()).await {
            Ok(()) => self.serve().await,
            Err(end) => end,
        };
        Box::pin(self.finish(end)).await;
        node.hub.unregister(self.handle.id);
        node.metrics.transport_closed(W::TRANSPORT);
        node.occupancy.disconnected(&self.claims.user);
        let user = &self.claims.user;
        if let Err(error) = node.presence.disconnected(self.connection_id(), user).await {
            tracing::warn!(message = "connection not forgotten", connection_id = %self.connection_id(), %error);
        }
    }

    /// This connection's id, made of what the session holds anyway (its
    /// handle's number and the node's instance); formatted only where text
    /// is needed.
    fn connection_id(&self) -> ConnectionId<'_> {
        ConnectionId::new(&self.node.instance, self.handle.id)
    }

    async fn welcome(&mut self) -> Result<(), End> {
        let welcome = ServerFrame::Welcome {
            connection_id: &self.connection_id().to_string(),
            node_id: &self.node.config.node_id,
            user: &self.claims.user,
            expires_in: self
                .expires_at
                .saturating_duration_since(Moment::now())
                .as_secs(),
            batch: self.batch,
            transport: (W::TRANSPORT == Transport::Sse).then_some("sse"),
            format: (self.ws.mode().format == Format::Msgpack).then_some("msgpack"),
        }
        .encode();
        self.out.push(self.ws.frame(welcome, &self.node));
        // A stream subscribes the channels its request named, each
        // answered by a `subscription` event (and its replay), all written
        // with the welcome.
        let opening = self.ws.opening_channels();
        for (index, (channel, since)) in opening.into_iter().enumerate() {
            Box::pin(self.open_channel(index, channel, since)).await;
        }
        self.write_out().await
    }

    /// A stream's channel: subscribed as a `subscribe` command would be
    /// (grants, the subscribe proxy, presence, recovery), its outcome
    /// staged as a `subscription` event, then its replayed messages. Each
    /// carries the stream's position in the channel after it: `since`
    /// before a replay (so a cut during it resumes where it stopped), then
    /// one offset more per replayed message (a replay is consecutive), or
    /// the subscription's start when nothing is replayed.
    async fn open_channel(&mut self, index: usize, name: ChannelName, since: Option<Position>) {
        // Kept for the event: the command takes the name.
        let channel = name.to_string();
        let channel = channel.as_str();
        let caller = Caller {
            claims: &self.claims,
            subscriptions: &self.subscriptions,
        };
        let command = Command::Subscribe {
            channel: name,
            since: since.clone(),
        };
        let result = match commands::decide(command, &caller, &self.node.config) {
            Ok(effect) => self.execute(effect).await,
            Err(refusal) => Err(refusal),
        };
        self.node
            .metrics
            .command("subscribe", result.as_ref().err().map(|(code, _)| *code));
        let (value, replay) = match result {
            Ok(done) => done,
            Err((code, message)) => {
                self.ws.set_position(index, None);
                let error = ErrorBody {
                    code: code.as_str().to_owned(),
                    message,
                };
                let frame = ServerFrame::Subscription {
                    channel,
                    result: None,
                    error: Some(error),
                }
                .encode();
                self.out.push(self.ws.positioned(frame, &self.node));
                return;
            }
        };
        let epoch = value
            .get("epoch")
            .and_then(Value::as_str)
            .map(Arc::<str>::from);
        let offset = value.get("offset").and_then(Value::as_u64).unwrap_or(0);
        let replays = value.get("recovered").and_then(Value::as_bool) == Some(true)
            || value.get("replayed_to").is_some();
        let start = match &since {
            Some(since) if replays => since.offset,
            _ => offset,
        };
        self.ws
            .set_position(index, epoch.clone().map(|epoch| (start, epoch)));
        let frame = ServerFrame::Subscription {
            channel,
            result: Some(&value),
            error: None,
        }
        .encode();
        self.out.reserve(1 + replay.len());
        self.out.push(self.ws.positioned(frame, &self.node));
        for (k, message) in replay.into_iter().enumerate() {
            let position = epoch.clone().map(|epoch| (start + 1 + k as u64, epoch));
            self.ws.set_position(index, position);
            self.out
                .push(self.ws.positioned(message.to_string(), &self.node));
        }
    }

    /// Closes (or answers the client's close), then leaves every channel.
    async fn finish(&mut self, end: End) {
        self.node.metrics.session_closed(end.closed());
        // Borrows two fields, not the session: the socket stays free.
        let connection_id = ConnectionId::new(&self.node.instance, self.handle.id);
        match &end {
            End::Close(code, reason) => {
                if *code == close::DRAINING || *code == close::NORMAL {
                    tracing::debug!(message = "session closed", code, %reason, %connection_id);
                } else {
                    tracing::info!(message = "session closed", code, %reason, %connection_id, user = %self.claims.user);
                }
                if !self.torn {
                    let frame = CloseFrame {
                        code: CloseCode::from(*code),
                        reason: Utf8Bytes::from(reason.as_ref()),
                    };
                    // A stream's last event goes out like any frame, behind
                    // what was written, within the write timeout.
                    if let Some(event) = self.ws.close(frame).await {
                        self.out.push(event);
                        let _ = timeout(CLOSE_TIMEOUT, self.write_out()).await;
                    }
                }
            }
            End::Gone(reason @ "client closed") => {
                tracing::debug!(message = "session closed by client", reason, %connection_id);
                // tungstenite queued the answer to the client's close frame
                // (its code echoed, or 1002 for an invalid one): send it
                // before dropping the socket (RFC 6455 §5.5.1).
                let _ = timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
            }
            End::Gone(reason) => {
                tracing::info!(message = "session lost", reason, %connection_id)
            }
        }
        let _ = timeout(CLOSE_TIMEOUT, self.ws.io().shutdown()).await;
        self.leave_all().await;
    }

    /// The main loop; returns how the session ends.
    async fn serve(&mut self) -> End {
        let timer = sleep_until(self.next_deadline().instant());
        tokio::pin!(timer);
        loop {
            let result = tokio::select! {
                biased;
                () = &mut timer => Box::pin(self.on_timer()).await,
                // Holding writes back, only a full batch (or a slow
                // consumer) ends the wait early (`None`); one branch for
                // both keeps the task small.
                item = poll_fn(|cx| self.handle.poll_outbound(cx)) => match item {
                    None => self.write_batch().await,
                    Some(Outbound::Frame(delivery)) => {
                        if self.stage(delivery) {
                            self.write_batch().await
                        } else {
                            Ok(())
                        }
                    }
                    Some(Outbound::Close(code, reason)) => Err(End::Close(code, String::from(&*reason).into())),
                    Some(Outbound::Drain(delay)) => {
                        self.drain(delay);
                        Ok(())
                    }
                    Some(Outbound::Command(command)) => Box::pin(self.on_command(command)).await,
                },
                message = poll_fn(|cx| self.ws.poll_next(cx)) => Box::pin(self.on_message(message)).await,
            };
            if let Err(end) = result {
                return end;
            }
            let next = self.next_deadline().instant();
            if next != timer.deadline() {
                timer.as_mut().reset(next);
            }
        }
    }

    /// The node drains: close with 1012 after `delay` (the first request wins).
    fn drain(&mut self, delay: Duration) {
        if self.drain_at.is_none() {
            self.drain_at = Some(Moment::now() + delay);
        }
    }

    fn next_deadline(&self) -> Moment {
        let mut next = self.expires_at.min(self.next_ping);
        if let Some(pong) = self.pong_deadline {
            next = next.min(pong);
        }
        if let Some(drain) = self.drain_at {
            next = next.min(drain);
        }
        if self.handle.holding() {
            next = next.min(self.flush_at());
        }
        next
    }

    async fn on_timer(&mut self) -> Result<(), End> {
        let now = Moment::now();
        if self.handle.holding() && now >= self.flush_at() {
            self.write_batch().await?;
        }
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
            // A stream cannot answer: its heartbeat only keeps proxies from
            // timing it out, and a dead client is found by its writes.
            if self.pong_deadline.is_none() && W::heartbeat().is_none() {
                self.pong_deadline = Some(now + config.pong_timeout);
            }
            self.send_ping().await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Result<(), End> {
        // Any frame shows the client is alive.
        self.pong_deadline = None;
        let counted = matches!(
            message,
            Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_)))
        );
        let format = match &message {
            Some(Ok(Message::Text(text))) => Some((Format::Json, text.len())),
            Some(Ok(Message::Binary(bytes))) => Some((Format::Msgpack, bytes.len())),
            _ => None,
        };
        if let Some((format, len)) = format {
            self.count_received(format, len);
        }
        if counted {
            match self.rate.check(Moment::now(), &self.node.config) {
                RateVerdict::Run => {}
                verdict => return self.over_rate(message, verdict).await,
            }
        }
        match message {
            None => Err(End::Gone("stream ended")),
            Some(Ok(Message::Text(text))) => self.on_text(&text).await,
            Some(Ok(Message::Binary(bytes))) if self.ws.mode().format == Format::Msgpack => {
                self.on_msgpack(&bytes).await
            }
            Some(Ok(Message::Binary(_))) => {
                let frame = ServerFrame::failure(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                );
                self.send_text(frame).await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Ok(Message::Close(_))) => Err(End::Gone("client closed")),
            Some(Err(WsError::Io(error))) if inflate_error(&error).is_some() => {
                Err(self.inflate_failed(inflate_error(&error)))
            }
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
                tracing::debug!(message = "websocket protocol error", %error, connection_id = %self.connection_id());
                Err(End::Close(1002, "websocket protocol error".into()))
            }
            Some(Err(error)) => Err(End::Gone(ws_error_reason(&error))),
        }
    }

    /// Counts a data frame received: a compressed connection's layer says
    /// whether it came compressed, and how many bytes it had on the wire.
    fn count_received(&mut self, format: Format, len: usize) {
        let (compressed, inflated) = self.ws.take_inflated();
        let metrics = &self.node.metrics;
        if compressed > 0 {
            metrics.wire_received(format, true, compressed as usize);
            metrics.deflated(Direction::Received, inflated as usize, compressed as usize);
        } else {
            metrics.wire_received(format, false, len);
        }
    }

    /// A compressed message that could not be inflated: over the frame
    /// limit once inflated (1009, as an oversized frame), or not deflate
    /// data (1007).
    fn inflate_failed(&self, error: Option<InflateError>) -> End {
        match error {
            Some(InflateError::TooBig) => End::Close(
                close::TOO_BIG,
                format!(
                    "frame exceeds {} bytes",
                    self.node.config.session.max_frame_bytes
                )
                .into(),
            ),
            _ => End::Close(
                close::INVALID_DATA,
                "compressed frame does not inflate".into(),
            ),
        }
    }

    /// A frame beyond the message rate: refused with `rate_limited` (pings
    /// silently), or the connection closed with 1008 when the client keeps
    /// going past its refusal allowance.
    async fn over_rate(
        &mut self,
        message: Option<Result<Message, WsError>>,
        verdict: RateVerdict,
    ) -> Result<(), End> {
        self.node.metrics.command_rate_limited();
        let (code, reason) = match verdict {
            RateVerdict::Run => return Ok(()),
            RateVerdict::Close(code, reason) => {
                return Err(End::Close(code, String::from(&*reason).into()))
            }
            RateVerdict::Refuse(refusal) => refusal,
        };
        let id = match &message {
            Some(Ok(Message::Text(text))) => match decode_command(text) {
                Ok(request) => request.id,
                Err(error) => error.id,
            },
            Some(Ok(Message::Binary(bytes))) => msgpack::command_id(bytes),
            _ => return Ok(()),
        };
        self.send_text(ServerFrame::failure(id, code, &reason))
            .await
    }

    /// A MessagePack command: its JSON text runs as any command does (the
    /// reply goes out in MessagePack); one with no JSON form is refused.
    async fn on_msgpack(&mut self, bytes: &[u8]) -> Result<(), End> {
        match msgpack::to_json(bytes) {
            Ok(text) => self.on_text(&text).await,
            Err(error) => {
                self.node.metrics.client_message(W::TRANSPORT, bytes.len());
                self.node
                    .metrics
                    .command("invalid", Some(ErrorCode::BadRequest));
                let frame = ServerFrame::failure(
                    msgpack::command_id(bytes),
                    ErrorCode::BadRequest,
                    &error.to_string(),
                );
                self.send_text(frame).await
            }
        }
    }

    /// A command: decided by its rules, run, answered (and, after a
    /// subscribe that recovered, followed by the replayed messages).
    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let (frame, replay) = self.run_command(text).await;
        if replay.is_empty() {
            return match frame {
                Some(frame) => self.send_text(frame).await,
                None => Ok(()),
            };
        }
        // The reply, then every replayed message, in one write.
        self.out.reserve(replay.len() + 1);
        if let Some(frame) = frame {
            self.out.push(self.ws.frame(frame, &self.node));
        }
        for message in replay {
            self.out.push(self.ws.shared(message, &self.node));
        }
        self.write_out().await
    }

    /// Decodes, decides and runs one command; returns its reply frame (none
    /// for a command without `id` that succeeded) and the frames to write
    /// after it (a recovering subscribe's replay).
    async fn run_command(&mut self, text: &str) -> (Option<String>, Vec<Utf8Bytes>) {
        self.node.metrics.client_message(W::TRANSPORT, text.len());
        let request = match decode_command(text) {
            Ok(request) => request,
            Err(error) => {
                self.node.metrics.command("invalid", Some(error.code));
                tracing::debug!(message = "bad frame", error = %error.message, connection_id = %self.connection_id());
                let frame = ServerFrame::failure(error.id, error.code, &error.message);
                return (Some(frame), Vec::new());
            }
        };
        let id = request.id;
        let kind = request.command.kind();
        let caller = Caller {
            claims: &self.claims,
            subscriptions: &self.subscriptions,
        };
        let decided = match request.command {
            // A stream's event ids name the channels of its request.
            Command::Subscribe { .. } if W::TRANSPORT == Transport::Sse => {
                Err((ErrorCode::BadRequest, STREAM_SUBSCRIBE.to_owned()))
            }
            command => commands::decide(command, &caller, &self.node.config),
        };
        let result = match decided {
            Ok(effect) => self.execute(effect).await,
            Err(refusal) => Err(refusal),
        };
        self.node
            .metrics
            .command(kind, result.as_ref().err().map(|(code, _)| *code));
        match result {
            Ok((value, replay)) => (commands::reply_frame(id, Ok(&value)), replay),
            Err(refusal) => (commands::reply_frame(id, Err(&refusal)), Vec::new()),
        }
    }

    /// A command a stream's client sent over HTTP: run in turn with the
    /// session's other work, under its message rate, and answered to the
    /// request that brought it. A WebSocket's client sends its commands on
    /// its socket: one arriving this way is refused.
    async fn on_command(&mut self, command: Arc<StreamCommand>) -> Result<(), End> {
        // Any command shows the client is alive.
        self.pong_deadline = None;
        let id = || match decode_command(&command.text) {
            Ok(request) => request.id,
            Err(error) => error.id,
        };
        if W::TRANSPORT != Transport::Sse {
            let frame = ServerFrame::failure(
                id(),
                ErrorCode::BadRequest,
                "this connection is a WebSocket; send its commands on it",
            );
            command.answer(Some(frame));
            return Ok(());
        }
        match self.rate.check(Moment::now(), &self.node.config) {
            RateVerdict::Run => {}
            RateVerdict::Refuse((code, reason)) => {
                self.node.metrics.command_rate_limited();
                command.answer(Some(ServerFrame::failure(id(), code, &reason)));
                return Ok(());
            }
            RateVerdict::Close(code, reason) => {
                self.node.metrics.command_rate_limited();
                let frame = ServerFrame::failure(id(), ErrorCode::RateLimited, &reason);
                command.answer(Some(frame));
                return Err(End::Close(code, String::from(&*reason).into()));
            }
        }
        let (frame, replay) = self.run_command(&command.text).await;
        command.answer(frame);
        // Only a subscribe replays, and a stream refuses it; written if it
        // ever did, never lost.
        for message in replay {
            self.out.push(self.ws.shared(message, &self.node));
        }
        self.write_out().await
    }
}

/// The inflating layer's refusal inside an I/O error from tungstenite.
fn inflate_error(error: &std::io::Error) -> Option<InflateError> {
    error.get_ref()?.downcast_ref::<InflateError>().copied()
}

/// Why a stream's `subscribe` command is refused.
const STREAM_SUBSCRIBE: &str =
    "a stream's channels are named when it opens; open a new stream to add one";

/// A uniformly random moment within the drain window: reconnects spread
/// over the window instead of arriving at the other nodes all at once.
pub fn drain_delay(window: Duration) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::socket::Socket;
    use super::*;

    type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

    /// A session's state: the WebSocket (328 bytes of it is tungstenite's),
    /// claims, timers, buckets and the subscription list (48 bytes: the
    /// first subscription inline, so one channel takes no block), in the
    /// one box every connection holds (the connection id is not kept: it is
    /// the handle's number and the node's instance). The write list's inline
    /// frame (`writer::Out`) takes 8 bytes more than a `Vec` and saves a
    /// 48-byte heap block per idle connection. The seven times are 8-byte
    /// `clock::Moment`s rather than 16-byte `Instant`s (56 bytes less).
    ///
    /// Under jemalloc the box takes the next size class: 640 bytes for up to
    /// 640, 768 beyond it (128 bytes more per connection for a few bytes
    /// over). At 640 it fills the class: anything added must come out
    /// elsewhere.
    const SESSION_STATE_BOUND: usize = 640;

    /// A stream's session: the same state with an `EventStream` (the
    /// socket and one boxed list of its channels' positions) in place of
    /// tungstenite's WebSocket, so it fits jemalloc's 384-byte class.
    const STREAM_STATE_BOUND: usize = 384;

    #[test]
    fn a_stream_session_state_stays_smaller() {
        type Stream = events::EventStream<tokio::net::TcpStream>;
        let size = std::mem::size_of::<Session<Stream>>();
        assert!(
            size <= STREAM_STATE_BOUND,
            "a stream session's state is {size} bytes, over {STREAM_STATE_BOUND}"
        );
    }

    /// A compressed connection's session: the inflating layer's parse
    /// state (buffers only while a compressed message is in flight) on top
    /// of the usual state, within jemalloc's next class.
    const DEFLATE_STATE_BOUND: usize = 768;

    #[test]
    fn a_compressed_session_state_stays_within_the_next_class() {
        type Deflating = Socket<crate::compression::inflating::Inflating<Io>>;
        let size = std::mem::size_of::<Session<Deflating>>();
        println!("a compressed session's state: {size} bytes");
        assert!(
            size <= DEFLATE_STATE_BOUND,
            "a compressed session's state is {size} bytes, over {DEFLATE_STATE_BOUND}"
        );
    }

    #[test]
    fn the_session_state_stays_small() {
        let size = std::mem::size_of::<Session<Socket<Io>>>();
        assert!(
            size <= SESSION_STATE_BOUND,
            "a session's state is {size} bytes, over {SESSION_STATE_BOUND}"
        );
    }
}
