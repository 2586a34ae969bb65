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
//! Everything a session waits on is in one `select!`: one timer (the
//! nearest of ping, pong deadline, token expiry and drain), its outbound
//! queue and the socket. The queue also carries close requests and the
//! node's drain (a 1012 close at a random moment in the drain window), and
//! wakes the session when a frame was dropped for it, so an overflow always
//! ends in a 1013 close. Commands run one at a time, so the frames one
//! connection publishes reach the broker in the order it sent them.
//!
//! Memory: an idle connection is what matters. The session's state is one
//! box, the task's future is the idle `select!` and a few pointers (the
//! handlers are boxed while they run; tests guard both sizes), text frames
//! go out as vectored writes of their shared payloads (no write buffer kept
//! at a burst's size), and log events carry the connection id instead of a
//! span holding formatted fields.
//!
//! Close handshake: a client's close frame is answered (tungstenite queues
//! the echo, or 1002 for an invalid code) and flushed before the socket
//! closes; a malformed close (1-byte payload, reason not UTF-8) gets 1002
//! or 1007.
//!
//! Recovery: a `subscribe` on a channel with history joins the hub first,
//! then reads the channel's history, answers with the position it read and
//! (with `since`) writes the missed messages right after the reply. Live
//! frames queued meanwhile that the reply's position already covers are
//! dropped when they come off the queue ([`Resume`]), so the client sees
//! every message after its `since` exactly once, in order.

use std::borrow::Cow;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_protocol::frame::decode_command;
use switchboard_protocol::position::MAX_HISTORY_LIMIT;
use switchboard_protocol::{close, ChannelName, Command, ErrorCode, Position, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::auth::{AuthError, Claims};
use crate::backend::subscribe_proxy::Decision;
use crate::broker::{self, BrokerError};
use crate::config::namespaces::MAX_HISTORY_SIZE;
use crate::history::{HistoryPage, HistoryQuery, DEFAULT_HISTORY_LIMIT};
use crate::hub::{Delivery, Outbound, SessionHandle, SLOW_CONSUMER_REASON};
use crate::limits::Slots;
use crate::metrics::{Closed, OpenSession};
use crate::node::Node;
use crate::presence::Member;

/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The write list keeps this many slots between writes; a longer one (a
/// batch) is given back after its write, so a burst does not stay resident.
const OUT_KEEP: usize = 1;

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
    /// The client asked for batched frames (`?batch=1`): a text frame may
    /// carry several messages, one per line.
    pub batch: bool,
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

/// The client's message-rate buckets, as two theoretical arrival times
/// (GCRA, the algorithm governor implements). Written by hand because a
/// governor direct limiter carries its own clock and quota, about 100 bytes
/// each (see the `session_state_stays_small` test), and every session held
/// two; the rate and bursts here come from the node's configuration.
#[derive(Debug)]
struct Rate {
    commands: Instant,
    refusals: Instant,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate {
            commands: now,
            refusals: now,
        }
    }

    /// Takes one token from a bucket refilling at `per_second` and holding
    /// at most `burst`; false when it is empty.
    fn take(tat: &mut Instant, now: Instant, per_second: u32, burst: u32) -> bool {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        let tolerance = interval * burst.max(1);
        let start = (*tat).max(now);
        let next = start + interval;
        if next.saturating_duration_since(now) > tolerance {
            return false;
        }
        *tat = next;
        true
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

/// A session's whole state, in one heap allocation made when it opens: the
/// task's future then holds a pointer to it and the idle `select!`, and the
/// rarely-run handlers are boxed while they run.
struct Session<S> {
    ws: WebSocketStream<S>,
    node: Arc<Node>,
    rate: Rate,
    handle: Arc<SessionHandle>,
    connection_id: Arc<str>,
    claims: Claims,
    /// A small list: sessions hold few channels (`session.max_channels`).
    subscriptions: Vec<ChannelName>,
    /// Usually empty; see [`Resume`].
    resumed: Vec<Resume>,
    /// The frames being written: shared payloads, never copied (kept small
    /// between writes).
    out: Vec<Utf8Bytes>,
    /// Bytes of `out` written so far (headers included).
    out_done: usize,
    /// The write timeout, made only when a write does not complete at once.
    write_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expires_at: Instant,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    /// When the node drains: the moment this session closes with 1012.
    drain_at: Option<Instant>,
    /// A frame was cut short by a write timeout: no close frame can follow.
    torn: bool,
    /// When the socket was last written to (write coalescing; whether
    /// frames are being held is the handle's `holding` flag).
    last_write: Instant,
    /// The client asked for batched frames (`?batch=1`): frames written
    /// together go out as one text frame, one message per line.
    batch: bool,
    _open: OpenSession,
    _slots: Slots,
    _permit: OwnedSemaphorePermit,
}

/// Runs a session on an upgraded connection until it closes. The state is
/// boxed here, before the returned future first runs.
pub fn run<S>(node: Arc<Node>, ws: WebSocketStream<S>, opened: Opened) -> impl Future<Output = ()>
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
        batch,
        ..
    } = admission;
    // The one event that ties the connection id to its addresses (sessions
    // keep no span: its formatted fields cost 0.7 KB per connection).
    tracing::debug!(
        message = "session admitted",
        %connection_id,
        %peer,
        client = %client_ip,
        user = %claims.user
    );
    let now = Instant::now();
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
        connection_id,
        expires_at: now + lifetime,
        next_ping: now + node.config.session.ping_interval,
        pong_deadline: None,
        drain_at: None,
        torn: false,
        last_write: now,
        batch,
        subscriptions: Vec::new(),
        resumed: Vec::new(),
        out: Vec::new(),
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

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(mut self: Box<Self>) {
        let node = Arc::clone(&self.node);
        node.hub.register(&self.handle);
        node.occupancy.connected(&self.claims.user);
        // The drain walks the hub's sessions once; one that registered
        // after the walk sees the node draining here.
        if node.is_draining() {
            self.drain_at = Some(Instant::now() + drain_delay(node.config.drain_window));
        }
        tracing::debug!(
            message = "session opened",
            connection_id = %self.connection_id,
            user = %self.claims.user,
            expires_in_secs = self.expires_at.saturating_duration_since(Instant::now()).as_secs()
        );
        let end = match Box::pin(self.welcome()).await {
            Ok(()) => self.serve().await,
            Err(end) => end,
        };
        Box::pin(self.finish(end)).await;
        node.hub.unregister(self.handle.id);
        node.occupancy.disconnected(&self.claims.user);
        if let Err(error) = node.presence.disconnected(&self.connection_id).await {
            tracing::warn!(message = "connection not forgotten", connection_id = %self.connection_id, %error);
        }
    }

    async fn welcome(&mut self) -> Result<(), End> {
        let welcome = ServerFrame::Welcome {
            connection_id: &self.connection_id,
            node_id: &self.node.config.node_id,
            user: &self.claims.user,
            expires_in: self
                .expires_at
                .saturating_duration_since(Instant::now())
                .as_secs(),
            batch: self.batch,
        }
        .encode();
        self.send_text(welcome).await
    }

    /// Closes (or answers the client's close), then leaves every channel.
    async fn finish(&mut self, end: End) {
        self.node.metrics.session_closed(end.closed());
        let connection_id = &self.connection_id;
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
                    let ws = &mut self.ws;
                    let _ = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
                    let _ = timeout(CLOSE_TIMEOUT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
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
        let _ = timeout(CLOSE_TIMEOUT, self.ws.get_mut().shutdown()).await;
        self.leave_all().await;
    }

    /// The main loop; returns how the session ends.
    async fn serve(&mut self) -> End {
        let timer = sleep_until(self.next_deadline());
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
                    Some(Outbound::Close(code, reason)) => Err(End::Close(code, reason.into())),
                    Some(Outbound::Drain(delay)) => {
                        self.drain(delay);
                        Ok(())
                    }
                },
                message = self.ws.next() => Box::pin(self.on_message(message)).await,
            };
            if let Err(end) = result {
                return end;
            }
            let next = self.next_deadline();
            if next != timer.deadline() {
                timer.as_mut().reset(next);
            }
        }
    }

    /// The node drains: close with 1012 after `delay` (the first request wins).
    fn drain(&mut self, delay: Duration) {
        if self.drain_at.is_none() {
            self.drain_at = Some(Instant::now() + delay);
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
        if self.handle.holding() {
            next = next.min(self.flush_at());
        }
        next
    }

    /// When held frames go out.
    fn flush_at(&self) -> Instant {
        self.last_write + self.node.config.session.write_coalesce
    }

    /// A frame for the client. Adaptive write coalescing: a connection that
    /// has not written for `write_coalesce` writes it at once (a quiet
    /// connection never waits); one that wrote more recently is receiving
    /// steadily, so it holds the frame and writes everything queued by the
    /// end of the window in one vectored write (earlier if the queue reaches
    /// its flush size). No timer exists unless a flush is pending, so an
    /// idle connection costs nothing more. Returns the frame when it is to
    /// be written now (it is in `out` either way).
    fn stage(&mut self, first: Arc<Delivery>) -> bool {
        // Sized to the backlog: a single frame takes one slot, which is all
        // an idle session keeps between writes.
        let backlog = self.handle.queued_items().min(WRITE_BATCH - 1);
        self.out.reserve_exact(1 + backlog);
        if Session::<S>::admit(&mut self.resumed, &first) {
            self.out.push(first.frame.clone());
        }
        if Instant::now() >= self.flush_at() {
            return true;
        }
        self.handle.set_holding(true);
        false
    }

    async fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
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
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + config.pong_timeout);
            }
            let limit = config.pong_timeout;
            let ping = std::pin::pin!(self.ws.send(Message::Ping(Default::default())));
            bounded_write(limit, ping).await?;
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

    /// Writes `first` (if any), the frames held back and whatever else is
    /// queued (up to [`WRITE_BATCH`] frames) in one vectored write, then
    /// flushes once. The immediate write and the end of a coalescing window
    /// share this one future, so the session task stays its size.
    async fn write_batch(&mut self) -> Result<(), End> {
        self.handle.set_holding(false);
        let close_after = self.collect_more();
        self.write_out().await?;
        if self.handle.is_slow() {
            return Err(End::Close(
                close::SLOW_CONSUMER,
                SLOW_CONSUMER_REASON.into(),
            ));
        }
        close_after.map_or(Ok(()), Err)
    }

    /// Moves what is queued into `out`, up to [`WRITE_BATCH`] frames in
    /// all; returns a close request met on the way.
    fn collect_more(&mut self) -> Option<End> {
        let room = WRITE_BATCH.saturating_sub(self.out.len());
        self.out.reserve_exact(self.handle.queued_items().min(room));
        let (mut close, mut drain) = (None, None);
        let (out, resumed) = (&mut self.out, &mut self.resumed);
        self.handle.take_batch(room, |item| match item {
            Outbound::Frame(delivery) => {
                if Session::<S>::admit(resumed, &delivery) {
                    out.push(delivery.frame.clone());
                }
                true
            }
            Outbound::Close(code, reason) => {
                close = Some(End::Close(code, reason.into()));
                false
            }
            Outbound::Drain(delay) => {
                drain = Some(delay);
                true
            }
        });
        if let Some(delay) = drain {
            self.drain(delay);
        }
        close
    }

    /// Writes `out` as text frames straight to the socket: each frame's
    /// header and its shared payload go out in one vectored write, so a
    /// payload is never copied and no write buffer stays at a burst's
    /// high-water mark (tungstenite keeps its buffer's capacity).
    /// Whatever tungstenite still holds (a pong, say) is flushed first, so
    /// frames never interleave. The write state lives in the session, so
    /// this future is a pointer.
    async fn write_out(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.batch && self.out.len() > 1 {
            self.join_out();
        }
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// For a client that asked for batched frames: the frames in `out`
    /// become one text frame, one message per line (compact JSON has no raw
    /// newline). This copies the payloads once per connection, which costs
    /// far less than the frame headers and parsing it saves the client.
    fn join_out(&mut self) {
        let len = self.out.iter().map(|f| f.len() + 1).sum::<usize>() - 1;
        let mut joined = String::with_capacity(len);
        for (i, frame) in self.out.iter().enumerate() {
            if i > 0 {
                joined.push('\n');
            }
            joined.push_str(frame.as_str());
        }
        self.out.clear();
        self.out.push(Utf8Bytes::from(joined));
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        let result = match self.poll_out(cx) {
            Poll::Ready(result) => result.map_err(|error| End::Gone(ws_error_reason(&error))),
            Poll::Pending => {
                // A client that cannot take a write within the pong timeout
                // is as dead as one that does not answer pings.
                let limit = self.node.config.session.pong_timeout;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(timer.as_mut().poll(cx));
                // A frame cut short: no close frame can follow it.
                self.torn = self.out_done > 0;
                Err(End::Close(
                    close::SLOW_CONSUMER,
                    "slow consumer: write timed out".into(),
                ))
            }
        };
        self.write_timer = None;
        self.last_write = Instant::now();
        self.out.clear();
        self.out_done = 0;
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        }
        Poll::Ready(result)
    }

    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.out_done == 0 {
            ready!(futures_util::Sink::<Message>::poll_flush(
                Pin::new(&mut self.ws),
                cx
            ))?;
        }
        let io = self.ws.get_mut();
        let mut writes = 0;
        let written = poll_write_frames(io, cx, &self.out, &mut self.out_done, &mut writes);
        // Counted as they happen: a write that completes later still counts
        // the system calls made before it returned pending.
        self.node.metrics.frames_written(0, writes);
        ready!(written)?;
        self.node.metrics.frames_written(self.out.len(), 0);
        ready!(Pin::new(io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    async fn send_text(&mut self, text: String) -> Result<(), End> {
        self.out.reserve_exact(1);
        self.out.push(Utf8Bytes::from(text));
        self.write_out().await
    }

    async fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Result<(), End> {
        // Any frame shows the client is alive.
        self.pong_deadline = None;
        let counted = matches!(
            message,
            Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_)))
        );
        if counted {
            let limits = &self.node.config.limits;
            let now = Instant::now();
            if !Rate::take(
                &mut self.rate.commands,
                now,
                limits.msg_rate,
                limits.msg_burst,
            ) {
                return self.over_rate(message).await;
            }
        }
        match message {
            None => Err(End::Gone("stream ended")),
            Some(Ok(Message::Text(text))) => self.on_text(&text).await,
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
                tracing::debug!(message = "websocket protocol error", %error, connection_id = %self.connection_id);
                Err(End::Close(1002, "websocket protocol error".into()))
            }
            Some(Err(error)) => Err(End::Gone(ws_error_reason(&error))),
        }
    }

    /// A frame beyond the message rate: refused with `rate_limited` (pings
    /// silently), or the connection closed with 1008 when the client keeps
    /// going past its refusal allowance.
    async fn over_rate(&mut self, message: Option<Result<Message, WsError>>) -> Result<(), End> {
        let limits = &self.node.config.limits;
        let per_second = limits.msg_rate;
        self.node.metrics.command_rate_limited();
        let now = Instant::now();
        if !Rate::take(
            &mut self.rate.refusals,
            now,
            per_second,
            limits.msg_close_after,
        ) {
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
        self.send_text(frame).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        self.node.metrics.client_message(text.len());
        let request = match decode_command(text) {
            Ok(request) => request,
            Err(error) => {
                self.node.metrics.command("invalid", Some(error.code));
                tracing::debug!(message = "bad frame", error = %error.message, connection_id = %self.connection_id);
                let frame = ServerFrame::failure(error.id, error.code, &error.message);
                return self.send_text(frame).await;
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
                Some(frame) => self.send_text(frame).await,
                None => Ok(()),
            };
        }
        // The reply, then every replayed message, in one write.
        self.out.reserve_exact(replay.len() + 1);
        self.out.extend(frame.map(Utf8Bytes::from));
        self.out.extend(replay);
        self.write_out().await
    }

    async fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Option<Position>,
    ) -> Result<Done, (ErrorCode, String)> {
        if self.subscriptions.contains(&channel) {
            return Ok(none(json!({})));
        }
        // The `info` of this subscription's presence entry and `join`: the
        // token's, or what the backend answered for it.
        let info = if self.claims.channels.allows(channel.as_str()) {
            self.claims.info.clone()
        } else {
            self.authorize(&channel).await?
        };
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
                tracing::warn!(message = "broker subscribe failed", channel = %channel, %error, connection_id = %self.connection_id);
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
                info,
            };
            if let Err(error) = node.presence.join(channel.as_str(), &member).await {
                tracing::warn!(message = "presence join failed", channel = %channel, %error, connection_id = %self.connection_id);
            } else if namespace.join_leave {
                let frame = ServerFrame::Join {
                    channel: channel.as_str(),
                    user: &self.claims.user,
                    connection_id: &self.connection_id,
                    info: member.info.as_deref(),
                }
                .encode();
                if let Err(error) = node
                    .broker
                    .publish(channel.as_str(), Utf8Bytes::from(frame))
                    .await
                {
                    tracing::warn!(message = "join event not published", channel = %channel, %error, connection_id = %self.connection_id);
                }
            }
        }
        node.metrics.subscribed(channel.as_str());
        node.occupancy
            .subscribed(channel.as_str(), &self.claims.user, namespace.presence);
        if self.subscriptions.len() == self.subscriptions.capacity() {
            // Grow one at a time while small: most sessions hold one or two.
            let more = self.subscriptions.len().clamp(1, 8);
            self.subscriptions.reserve_exact(more);
        }
        self.subscriptions.push(channel);
        Ok((result, replay))
    }

    /// Whether `presence` and `history` may read a channel: the token
    /// grants it, or the session subscribed to it (the backend allowed it).
    fn may_read(&self, channel: &ChannelName) -> bool {
        self.claims.channels.allows(channel.as_str()) || self.subscriptions.contains(channel)
    }

    /// A subscribe the token does not grant: refused, or asked of the
    /// backend when the channel's namespace has a subscribe proxy. Allowed,
    /// it yields the subscription's presence `info`.
    async fn authorize(
        &mut self,
        channel: &ChannelName,
    ) -> Result<Option<Arc<RawValue>>, (ErrorCode, String)> {
        let node = &self.node;
        let (Some(url), Some(proxy)) = (
            node.config
                .namespace(channel.namespace())
                .subscribe_proxy
                .as_ref(),
            node.subscribe_proxy.as_ref(),
        ) else {
            return Err((
                ErrorCode::Forbidden,
                format!("token does not grant subscribing to {channel}"),
            ));
        };
        let decision = proxy
            .ask(
                url,
                &self.claims.user,
                channel.as_str(),
                self.claims.info.as_deref(),
                &self.connection_id,
            )
            .await;
        match decision {
            Ok(Decision::Allow { info }) => Ok(info.or_else(|| self.claims.info.clone())),
            Ok(Decision::Deny { reason }) => {
                tracing::info!(message = "subscribe refused by the backend", channel = %channel, reason = reason.as_deref().unwrap_or(""), connection_id = %self.connection_id);
                let mut message = format!("the backend refused subscribing to {channel}");
                if let Some(reason) = reason {
                    message.push_str(": ");
                    message.push_str(&reason);
                }
                Err((ErrorCode::Forbidden, message))
            }
            Err(error) => {
                tracing::warn!(message = "subscribe proxy failed", channel = %channel, %error, connection_id = %self.connection_id);
                Err((ErrorCode::Unavailable, error.client_message()))
            }
        }
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
        self.resumed.reserve_exact(1);
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
        &mut self,
        channel: &ChannelName,
        query: &HistoryQuery,
        reason: &'static str,
    ) -> Result<HistoryPage, (ErrorCode, String)> {
        let node = &self.node;
        let policy = node.config.namespace(channel.namespace()).history();
        let page = node.broker.history(channel.as_str(), policy, query).await;
        node.metrics.history_read(reason, page.is_ok());
        page.map_err(|BrokerError::Unavailable(error)| {
            tracing::warn!(message = "history read failed", channel = %channel, %error, connection_id = %self.connection_id);
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
        if !self.may_read(channel) {
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
        if let Some(i) = self.subscriptions.iter().position(|c| c == channel) {
            self.subscriptions.swap_remove(i);
            if self.subscriptions.is_empty() {
                self.subscriptions = Vec::new();
            }
            self.resumed.retain(|r| *r.channel != *channel.as_str());
            self.leave(channel).await;
        }
        Ok(json!({}))
    }

    /// Drops one subscription: hub, broker, presence and the `leave` event.
    async fn leave(&mut self, channel: &ChannelName) {
        let node = &self.node;
        node.metrics.unsubscribed(channel.as_str());
        let namespace = node.config.namespace(channel.namespace());
        node.occupancy
            .unsubscribed(channel.as_str(), &self.claims.user, namespace.presence);
        if node.hub.unsubscribe(channel.as_str(), self.handle.id) {
            if let Err(error) = node.broker.unsubscribe(channel.as_str()).await {
                tracing::warn!(message = "broker unsubscribe failed", channel = %channel, %error, connection_id = %self.connection_id);
            }
        }
        if !namespace.presence {
            return;
        }
        if let Err(error) = node
            .presence
            .leave(channel.as_str(), &self.connection_id)
            .await
        {
            tracing::warn!(message = "presence leave failed", channel = %channel, %error, connection_id = %self.connection_id);
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
                tracing::warn!(message = "leave event not published", channel = %channel, %error, connection_id = %self.connection_id);
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
                tracing::warn!(message = "publish failed", channel = %channel, %error, connection_id = %self.connection_id);
                Err((
                    ErrorCode::Internal,
                    "message not published: broker unavailable".into(),
                ))
            }
        }
    }

    async fn presence(&mut self, channel: &ChannelName) -> Result<Value, (ErrorCode, String)> {
        if !self.may_read(channel) {
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
                tracing::warn!(message = "presence read failed", channel = %channel, %error, connection_id = %self.connection_id);
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
            tracing::info!(message = "refresh refused", reason = "other_user", connection_id = %self.connection_id);
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
/// one that does not answer pings. The timer is made (boxed) only when the
/// write does not complete at once, so the usual write carries none in the
/// session's state.
async fn bounded_write<F>(limit: Duration, mut write: Pin<&mut F>) -> Result<(), End>
where
    F: Future<Output = Result<(), WsError>> + ?Sized,
{
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let result = poll_fn(|cx| {
        if let Poll::Ready(result) = write.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await;
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(error)) => Err(End::Gone(ws_error_reason(&error))),
        None => Err(End::Close(
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

/// Frames gathered per vectored write (two slices each): a whole
/// [`WRITE_BATCH`] in one system call.
const FRAMES_PER_WRITE: usize = WRITE_BATCH;

/// Writes an unmasked, final text frame header for `len` payload bytes
/// (RFC 6455 §5.2); returns its length.
fn text_header(len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x81;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Writes `frames` as text frames; `done` counts the bytes already written
/// (headers included) across calls, so a write that returns pending
/// resumes where it stopped.
fn poll_write_frames<W>(
    io: &mut W,
    cx: &mut Context<'_>,
    frames: &[Utf8Bytes],
    done: &mut usize,
    writes: &mut usize,
) -> Poll<io::Result<()>>
where
    W: AsyncWrite + Unpin,
{
    loop {
        // The first frame not written in full, and how far into it.
        let mut skip = *done;
        let mut first = 0;
        while let Some(frame) = frames.get(first) {
            let len = frame.len();
            let size = text_header(len, &mut [0; 10]) + len;
            if skip < size {
                break;
            }
            skip -= size;
            first += 1;
        }
        if first == frames.len() {
            return Poll::Ready(Ok(()));
        }
        let chunk = &frames[first..frames.len().min(first + FRAMES_PER_WRITE)];
        let mut headers = [[0u8; 10]; FRAMES_PER_WRITE];
        let mut header_lens = [0usize; FRAMES_PER_WRITE];
        for ((frame, header), header_len) in chunk.iter().zip(&mut headers).zip(&mut header_lens) {
            *header_len = text_header(frame.len(), header);
        }
        let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
        let mut count = 0;
        for (k, frame) in chunk.iter().enumerate() {
            let mut header = &headers[k][..header_lens[k]];
            let mut payload = frame.as_bytes();
            if k == 0 {
                let cut = skip.min(header.len());
                header = &header[cut..];
                payload = &payload[skip - cut..];
            }
            for part in [header, payload] {
                if !part.is_empty() {
                    slices[count] = IoSlice::new(part);
                    count += 1;
                }
            }
        }
        let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
        *writes += 1;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *done += written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

    /// A session's state: the WebSocket (328 bytes of it is tungstenite's),
    /// claims, timers and buckets, in the one box every connection holds.
    const SESSION_STATE_BOUND: usize = 704;

    #[test]
    fn the_session_state_stays_small() {
        let size = std::mem::size_of::<Session<Io>>();
        assert!(
            size <= SESSION_STATE_BOUND,
            "a session's state is {size} bytes, over {SESSION_STATE_BOUND}"
        );
    }

    #[test]
    fn text_headers_follow_rfc_6455() {
        let header = |len| {
            let mut out = [0; 10];
            let n = text_header(len, &mut out);
            out[..n].to_vec()
        };
        assert_eq!(header(5), [0x81, 5]);
        assert_eq!(header(126), [0x81, 126, 0, 126]);
        assert_eq!(header(65_535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(header(70_000), [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn rate_buckets_hold_a_burst_then_refill() {
        let now = Instant::now();
        let mut tat = now;
        for _ in 0..3 {
            assert!(Rate::take(&mut tat, now, 10, 3));
        }
        assert!(!Rate::take(&mut tat, now, 10, 3), "the burst is spent");
        let later = now + Duration::from_millis(100);
        assert!(Rate::take(&mut tat, later, 10, 3), "one token per 100 ms");
        assert!(!Rate::take(&mut tat, later, 10, 3));
    }

    /// Frames written through a socket that takes a few bytes at a time
    /// arrive whole and in order.
    #[tokio::test]
    async fn frames_survive_short_writes() {
        let (client, mut server) = tokio::io::duplex(7);
        let frames = vec![
            Utf8Bytes::from("a".repeat(3)),
            Utf8Bytes::from("b".repeat(200)),
            Utf8Bytes::from("c".repeat(70_000)),
        ];
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut all = Vec::new();
            server.read_to_end(&mut all).await.map(|_| all)
        });
        let mut client = client;
        let mut done = 0;
        poll_fn(|cx| poll_write_frames(&mut client, cx, &frames, &mut done, &mut 0))
            .await
            .unwrap();
        drop(client);
        let all = reader.await.unwrap().unwrap();
        let mut expected = Vec::new();
        for frame in &frames {
            let mut header = [0; 10];
            let n = text_header(frame.len(), &mut header);
            expected.extend_from_slice(&header[..n]);
            expected.extend_from_slice(frame.as_bytes());
        }
        assert_eq!(done, expected.len());
        assert!(all == expected, "the bytes differ");
    }
}
