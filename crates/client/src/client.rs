//! A reconnecting client for long-lived use: one background task connects
//! (with a token from a [`TokenProvider`] if configured), resubscribes on
//! every connect from each channel's last position, refreshes the token
//! before it expires, reconnects with jittered backoff, and reports what
//! happens as [`Event`]s.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchboard_protocol::{close, ErrorBody, Incoming, Outgoing, Position};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::auth::{AuthFailures, CurrentToken, Refreshed, Refresher, TokenProvider};
use crate::backoff::backoff_delay;
use crate::connection::{Connection, Frame, Welcome};
use crate::format::Format;
use crate::subscriptions::Subscriptions;
use crate::ClientError;

/// How long [`Client::stop`] waits for the server to confirm the close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Settings of a [`Client`].
#[derive(Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws`, with `?token=<JWT>` when there is no `token` provider.
    pub url: String,
    /// Extra headers for the upgrade request (for example `Origin`).
    pub headers: http::HeaderMap,
    /// Where tokens come from. When set, each connect sends
    /// `Authorization: Bearer <token>` and the token is refreshed before it
    /// expires; see [`Client::start`].
    pub token: Option<TokenProvider>,
    /// Consecutive 401 refusals (or provider errors) after which the client
    /// gives up for good (default 3).
    pub max_auth_failures: u32,
    /// The delay cap of the first reconnect attempt (default 100 ms).
    pub backoff_min: Duration,
    /// The largest delay cap (default 10 s); also caps an honoured `Retry-After`.
    pub backoff_max: Duration,
    /// Events buffered before the client stops reading the socket (default 1024).
    pub event_queue: usize,
    /// The wire format (default JSON); see [`Format`].
    pub format: Format,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            headers: http::HeaderMap::new(),
            token: None,
            max_auth_failures: 3,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            event_queue: 1024,
            format: Format::Json,
        }
    }

    /// Gets tokens from `provider`, called as `provider().await` whenever the
    /// client needs a new token, for example
    /// `config.with_token_provider(move || { let n = n.clone(); async move { sign(&n) } })`.
    pub fn with_token_provider<F, Fut>(mut self, provider: F) -> ClientConfig
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token = Some(Arc::new(move || Box::pin(provider())));
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("token", &self.token.as_ref().map(|_| "<provider>"))
            .field("max_auth_failures", &self.max_auth_failures)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("event_queue", &self.event_queue)
            .field("format", &self.format)
            .finish()
    }
}

/// What a [`Client`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection is up; the subscriptions are being restored.
    Connected(Welcome),
    /// The server answered a subscribe (one per channel per connection).
    /// `recovered` is `None` when the subscribe carried no `since`,
    /// `Some(true)` when the missed messages follow, and `Some(false)` when
    /// they are lost: the application should reload the channel's state.
    /// `position` is the reply's `{offset, epoch}` (`None` on channels
    /// without history). A failed subscribe arrives as [`Event::Error`].
    Subscribed {
        channel: String,
        recovered: Option<bool>,
        position: Option<Position>,
    },
    /// A message; `offset` is set on channels with history. Never a
    /// duplicate of one already reported on this channel.
    Message {
        channel: String,
        offset: Option<u64>,
        data: Value,
    },
    /// The channel's stream lost messages this client may not have seen: the
    /// application should reload the channel's state. The stream continues
    /// after `position`.
    Reset { channel: String, position: Position },
    Join {
        channel: String,
        user: String,
        connection_id: String,
        info: Option<Value>,
    },
    Leave {
        channel: String,
        user: String,
        connection_id: String,
    },
    /// A command sent by the client failed (an `error` frame or error reply),
    /// for example a forbidden subscribe, a rate-limited publish or a
    /// refused token refresh.
    Error(ErrorBody),
    /// A connection ended. `code` is the server's close code, `None` if it
    /// ended without one, `Some(1000)` after [`Client::stop`]. The final one
    /// of a client that gave up has `code: None` and a reason starting with
    /// `"unauthorized:"` or `"token provider failed:"`.
    Disconnected { code: Option<u16>, reason: String },
    /// The server refused a connection attempt with this HTTP status.
    Refused { status: u16 },
}

/// What the handle asks of the background task.
enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, Value),
    Stop,
}

/// A handle on a reconnecting connection. Clones share the connection; when
/// every clone is dropped, the client stops as with [`Client::stop`].
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
}

impl Client {
    /// Starts the background task (call inside a Tokio runtime). Events arrive
    /// on the receiver; when its queue is full the task stops reading the
    /// socket, as a slow real client would.
    ///
    /// Any close, error or refusal leads to a reconnect after a jittered
    /// backoff delay, except: close code 4003 (disconnected by the server
    /// API); close code 4001 (token expired) unless there is a token
    /// provider, which is then asked for a new token; `max_auth_failures`
    /// 401 refusals in a row (or provider errors in a row); an invalid URL;
    /// or [`Client::stop`]. Then the task ends with a final
    /// [`Event::Disconnected`] (none if stopped while no connection was up)
    /// and the receiver yields `None`.
    ///
    /// With a token provider, the client asks it for a token before its first
    /// connect, after a 401 refusal, after a 4001 close, and when the token
    /// in hand is known to have expired. While connected, at about 80% of the
    /// lifetime the server announced (`expires_in` of the welcome or of the
    /// last refresh reply) it sends a `refresh` with a new token, retrying
    /// failures with backoff until the token expires.
    pub fn start(config: ClientConfig) -> (Client, mpsc::Receiver<Event>) {
        let (events, receiver) = mpsc::channel(config.event_queue.max(1));
        let (commands, command_rx) = mpsc::unbounded_channel();
        tokio::spawn(Task::new(config, command_rx, events).run());
        (Client { commands }, receiver)
    }

    /// Subscribes to `channel` now if connected, and again after every
    /// reconnect, resuming from the last position seen. The reply arrives as
    /// [`Event::Subscribed`], a failure as [`Event::Error`].
    pub fn subscribe(&self, channel: impl Into<String>) {
        self.send(Command::Subscribe(channel.into()));
    }

    /// Unsubscribes from `channel`, forgets its position, and stops
    /// restoring it on reconnect.
    pub fn unsubscribe(&self, channel: impl Into<String>) {
        self.send(Command::Unsubscribe(channel.into()));
    }

    /// Publishes `data` to `channel`, fire and forget: without a reply, and
    /// dropped if no connection is up. A failure arrives as [`Event::Error`].
    pub fn publish(&self, channel: impl Into<String>, data: Value) {
        self.send(Command::Publish(channel.into(), data));
    }

    /// Closes the connection (code 1000) and ends the task; no reconnect.
    pub fn stop(&self) {
        self.send(Command::Stop);
    }

    fn send(&self, command: Command) {
        // The task is gone only after a stop or a final close: nothing to do then.
        let _ = self.commands.send(command);
    }
}

/// The event a push or a failure without a pending command becomes, if any.
fn event_for(frame: Incoming) -> Option<Event> {
    match frame {
        Incoming::Message {
            channel,
            offset,
            data,
        } => Some(Event::Message {
            channel,
            offset,
            data,
        }),
        Incoming::Reset {
            channel,
            offset,
            epoch,
        } => Some(Event::Reset {
            channel,
            position: Position { offset, epoch },
        }),
        Incoming::Join {
            channel,
            user,
            connection_id,
            info,
        } => Some(Event::Join {
            channel,
            user,
            connection_id,
            info,
        }),
        Incoming::Leave {
            channel,
            user,
            connection_id,
        } => Some(Event::Leave {
            channel,
            user,
            connection_id,
        }),
        Incoming::Error { error }
        | Incoming::Reply {
            error: Some(error), ..
        } => Some(Event::Error(error)),
        // A WebSocket connection gets no `subscription` or `close` frame
        // (they belong to server-sent events streams).
        Incoming::Reply { .. }
        | Incoming::Welcome { .. }
        | Incoming::Subscription { .. }
        | Incoming::Close { .. } => None,
    }
}

/// Whether a connection closed with `code` may be retried. An expired token
/// can be replaced only by a provider.
fn reconnects_after(code: Option<u16>, has_provider: bool) -> bool {
    match code {
        Some(close::DISCONNECTED) => false,
        Some(close::TOKEN_EXPIRED) => has_provider,
        _ => true,
    }
}

/// A command frame without id: success is silent, failure is an `error` frame.
fn encode(kind: &str, channel: &str, data: Option<&Value>) -> String {
    Outgoing {
        channel: Some(channel),
        data,
        ..Outgoing::new(kind)
    }
    .encode()
}

/// The `Authorization` header carrying `token`.
fn bearer(token: &str) -> Result<http::HeaderValue, String> {
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "token is not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// The server's explanation in a refusal body (`{"error", "message"}`).
fn refusal_message(body: &Value) -> String {
    match body.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => body.to_string(),
    }
}

/// Why a live connection ended.
enum End {
    Closed { code: Option<u16>, reason: String },
    Stopped,
}

impl End {
    fn failed(error: ClientError) -> End {
        End::Closed {
            code: None,
            reason: error.to_string(),
        }
    }
}

/// What to do after one connection attempt.
enum Step {
    /// A connection was up and ended: reconnect with a fresh backoff.
    Reconnect,
    /// The attempt failed: retry after a backoff, at least `Retry-After`.
    Retry(Option<Duration>),
    /// Give up with a final [`Event::Disconnected`].
    Finish(Option<u16>, String),
    /// Stopped while not connected: end quietly.
    Stop,
}

struct Task {
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    /// The channels to (re)subscribe and their positions.
    subs: Subscriptions,
    /// The id of the last command sent with one (subscribe, refresh).
    last_id: u64,
    /// The provider's token in use (only with a provider).
    token: CurrentToken,
    failures: AuthFailures,
}

impl Task {
    fn new(
        config: ClientConfig,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Task {
        let failures = AuthFailures::new(config.max_auth_failures);
        Task {
            config,
            commands,
            events,
            subs: Subscriptions::default(),
            last_id: 0,
            token: CurrentToken::default(),
            failures,
        }
    }

    async fn run(mut self) {
        let mut request = match self.config.url.as_str().into_client_request() {
            Ok(request) => request,
            Err(e) => return self.finish(None, format!("invalid url: {e}")).await,
        };
        request.headers_mut().extend(self.config.headers.clone());
        let mut attempt: u32 = 0;
        loop {
            let retry_after = match self.attempt(&request).await {
                Step::Stop => return,
                Step::Finish(code, reason) => return self.finish(code, reason).await,
                Step::Reconnect => {
                    attempt = 0;
                    None
                }
                Step::Retry(retry_after) => retry_after,
            };
            let (min, max) = (self.config.backoff_min, self.config.backoff_max);
            let jittered = backoff_delay(attempt, min, max, &mut rand::rng());
            let delay = jittered.max(retry_after.unwrap_or_default().min(max));
            attempt = attempt.saturating_add(1);
            if self.offline(tokio::time::sleep(delay)).await.is_none() {
                return;
            }
        }
    }

    /// One connection attempt, and the connection's life if it comes up.
    async fn attempt(&mut self, base: &http::Request<()>) -> Step {
        let mut request = base.clone();
        if let Some(provider) = self.config.token.clone() {
            match self.authorization(&provider).await {
                Ok(value) => {
                    request
                        .headers_mut()
                        .insert(http::header::AUTHORIZATION, value);
                }
                Err(step) => return step,
            }
        }
        let connected = match self
            .offline(Connection::connect_request_with(
                request,
                self.config.format,
            ))
            .await
        {
            None => return Step::Stop,
            Some(connected) => connected,
        };
        match connected {
            Ok((connection, welcome)) => {
                self.failures.connected();
                let expires_in = welcome.expires_in;
                self.emit(Event::Connected(welcome)).await;
                match self.online(connection, expires_in).await {
                    End::Stopped => Step::Finish(Some(close::NORMAL), "stopped".to_owned()),
                    End::Closed { code, reason } => {
                        if !reconnects_after(code, self.config.token.is_some()) {
                            return Step::Finish(code, reason);
                        }
                        if code == Some(close::TOKEN_EXPIRED) {
                            self.token.discard();
                        }
                        tracing::debug!(?code, %reason, "disconnected; reconnecting");
                        self.emit(Event::Disconnected { code, reason }).await;
                        Step::Reconnect
                    }
                }
            }
            Err(ClientError::Refused {
                status,
                body,
                retry_after,
            }) => {
                tracing::debug!(status, "connection refused");
                self.emit(Event::Refused { status }).await;
                if status == http::StatusCode::UNAUTHORIZED.as_u16() {
                    self.token.discard();
                    if self.failures.refused() {
                        let reason = format!("unauthorized: {}", refusal_message(&body));
                        return Step::Finish(None, reason);
                    }
                }
                Step::Retry(
                    retry_after
                        .and_then(|s| s.trim().parse().ok())
                        .map(Duration::from_secs),
                )
            }
            Err(ClientError::WebSocket(e @ tungstenite::Error::Url(_))) => {
                Step::Finish(None, format!("cannot connect: {e}"))
            }
            Err(e) => {
                tracing::debug!(error = %e, "connect failed");
                Step::Retry(None)
            }
        }
    }

    /// The `Authorization` header for the next connect: the token in hand if
    /// still usable, else a new one from the provider. A provider error is a
    /// failed attempt (retried with backoff, or final after too many).
    async fn authorization(&mut self, provider: &TokenProvider) -> Result<http::HeaderValue, Step> {
        if let Some(token) = self.token.usable(Instant::now()) {
            // Checked when fetched, so this always succeeds.
            if let Ok(value) = bearer(token) {
                return Ok(value);
            }
        }
        let fetched = self.offline(provider()).await.ok_or(Step::Stop)?;
        match fetched.and_then(|token| bearer(&token).map(|value| (token, value))) {
            Ok((token, value)) => {
                self.failures.provider_succeeded();
                self.token.set(token);
                Ok(value)
            }
            Err(e) => {
                tracing::warn!(error = %e, "token provider failed");
                if self.failures.provider_failed() {
                    return Err(Step::Finish(None, format!("token provider failed: {e}")));
                }
                Err(Step::Retry(None))
            }
        }
    }

    /// Runs `work` while no connection is up, recording subscription changes.
    /// `None` means the client was stopped.
    async fn offline<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Some(output),
                command = self.commands.recv() => match command {
                    None | Some(Command::Stop) => return None,
                    Some(command) => {
                        self.apply(command, false);
                    }
                },
            }
        }
    }

    /// Serves one connection: restores subscriptions, then forwards frames as
    /// events, commands as frames, and refreshes the token, until it ends.
    async fn online(&mut self, mut connection: Connection, expires_in: Option<u64>) -> End {
        let backoff = (self.config.backoff_min, self.config.backoff_max);
        let mut refresher = self
            .config
            .token
            .clone()
            .map(|provider| Refresher::new(provider, backoff));
        if let Some(refresher) = &mut refresher {
            let expires_at = refresher.lifetime(Instant::now(), expires_in);
            self.token.expires(expires_at);
        }
        for channel in self.subs.reconnected() {
            let id = self.next_id();
            let Some(frame) = self.subs.subscribe_frame(&channel, id) else {
                continue;
            };
            if let Err(e) = connection.send_command(frame).await {
                return End::failed(e);
            }
        }
        loop {
            tokio::select! {
                frame = connection.next_frame() => match frame {
                    Ok(Frame::Incoming(frame)) => {
                        if let Some(event) = self.handle(frame, refresher.as_mut()) {
                            self.emit(event).await;
                        }
                    }
                    Ok(Frame::Closed { code, reason }) => return End::Closed { code, reason },
                    Err(ClientError::Protocol(e)) => tracing::warn!(error = %e, "ignoring frame"),
                    Err(e) => return End::failed(e),
                },
                command = self.commands.recv() => match command {
                    None | Some(Command::Stop) => {
                        let _ = tokio::time::timeout(CLOSE_WAIT, connection.close()).await;
                        return End::Stopped;
                    }
                    Some(command) => {
                        let Some(text) = self.apply(command, true) else { continue };
                        if let Err(e) = connection.send_command(text).await {
                            return End::failed(e);
                        }
                    }
                },
                fetched = refresh_due(refresher.as_mut()) => match (fetched, refresher.as_mut()) {
                    (Ok(token), Some(refresher)) => {
                        let id = self.next_id();
                        let frame = Outgoing {
                            id: Some(id),
                            token: Some(&token),
                            ..Outgoing::new("refresh")
                        };
                        if let Err(e) = connection.send_command(frame.encode()).await {
                            return End::failed(e);
                        }
                        refresher.sent(id, token);
                    }
                    (Err(e), _) => tracing::warn!(error = %e, "token provider failed; refresh retried"),
                    (Ok(_), None) => {}
                },
            }
        }
    }

    /// What a frame read on a live connection changes, and the event it
    /// becomes, if any.
    fn handle(&mut self, frame: Incoming, refresher: Option<&mut Refresher>) -> Option<Event> {
        match frame {
            Incoming::Reply { id, result, error } => {
                if let Some((channel, sent_since)) = self.subs.take_pending(id) {
                    if let Some(error) = error {
                        self.subs
                            .subscribe_failed(&channel, sent_since, &error.code);
                        return Some(Event::Error(error));
                    }
                    let result = result.unwrap_or(Value::Null);
                    let reply = self.subs.subscribed(&channel, sent_since, &result);
                    return Some(Event::Subscribed {
                        channel,
                        recovered: reply.recovered,
                        position: reply.position,
                    });
                }
                let ok = match &error {
                    None => Some(result.as_ref().unwrap_or(&Value::Null)),
                    Some(_) => None,
                };
                let refreshed = refresher.and_then(|r| r.replied(id, Instant::now(), ok));
                if let Some(Refreshed::Accepted { token, expires_at }) = refreshed {
                    self.token.set(token);
                    self.token.expires(expires_at);
                }
                error.map(Event::Error)
            }
            // A duplicate is dropped here; accepted messages fall through.
            Incoming::Message {
                ref channel,
                offset,
                ..
            } if !self.subs.accept_message(channel, offset) => None,
            Incoming::Reset {
                ref channel,
                offset,
                ref epoch,
            } => {
                self.subs
                    .reset(channel, &Position::new(offset, epoch.as_str()));
                event_for(frame)
            }
            other => event_for(other),
        }
    }

    /// Records a command; returns the frame to send when `online`.
    fn apply(&mut self, command: Command, online: bool) -> Option<String> {
        match command {
            Command::Subscribe(channel) => {
                if !self.subs.add(&channel) || !online {
                    return None;
                }
                let id = self.next_id();
                self.subs.subscribe_frame(&channel, id)
            }
            Command::Unsubscribe(channel) => (self.subs.remove(&channel) && online)
                .then(|| encode("unsubscribe", &channel, None)),
            Command::Publish(channel, data) => {
                if !online {
                    tracing::debug!("not connected; publish dropped");
                    return None;
                }
                Some(encode("publish", &channel, Some(&data)))
            }
            Command::Stop => None,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.last_id = self.last_id.wrapping_add(1);
        self.last_id
    }

    async fn emit(&self, event: Event) {
        // A dropped receiver only means nobody listens; keep serving commands.
        let _ = self.events.send(event).await;
    }

    async fn finish(&self, code: Option<u16>, reason: String) {
        tracing::debug!(?code, %reason, "client finished");
        self.emit(Event::Disconnected { code, reason }).await;
    }
}

/// The next token to send as `refresh`; pending forever without a provider.
async fn refresh_due(refresher: Option<&mut Refresher>) -> Result<String, String> {
    match refresher {
        Some(refresher) => refresher.due().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(text: &str) -> Incoming {
        Incoming::decode(text).unwrap()
    }

    fn event(text: &str) -> Option<Event> {
        event_for(decode(text))
    }

    fn task(config: ClientConfig) -> Task {
        let (_tx, commands) = mpsc::unbounded_channel();
        let (events, _rx) = mpsc::channel(1);
        Task::new(config, commands, events)
    }

    #[test]
    fn pushes_and_failures_become_events() {
        assert_eq!(
            event(r#"{"type":"message","channel":"a","data":{"n":1}}"#),
            Some(Event::Message {
                channel: "a".into(),
                offset: None,
                data: json!({"n": 1})
            })
        );
        assert!(matches!(
            event(r#"{"type":"message","channel":"a","offset":3,"data":1}"#),
            Some(Event::Message {
                offset: Some(3),
                ..
            })
        ));
        assert_eq!(
            event(r#"{"type":"reset","channel":"a","offset":4,"epoch":"e1"}"#),
            Some(Event::Reset {
                channel: "a".into(),
                position: Position::new(4, "e1")
            })
        );
        assert!(matches!(
            event(r#"{"type":"join","channel":"a","user":"u","connection_id":"c","info":{}}"#),
            Some(Event::Join { info: Some(_), .. })
        ));
        assert!(matches!(
            event(r#"{"type":"leave","channel":"a","user":"u","connection_id":"c"}"#),
            Some(Event::Leave { .. })
        ));
        let failure = r#"{"code":"rate_limited","message":"slow down"}"#;
        assert!(matches!(
            event(&format!(r#"{{"type":"error","error":{failure}}}"#)),
            Some(Event::Error(_))
        ));
        assert!(matches!(
            event(&format!(r#"{{"type":"reply","id":1,"error":{failure}}}"#)),
            Some(Event::Error(_))
        ));
        assert_eq!(event(r#"{"type":"reply","id":1,"result":{}}"#), None);
    }

    #[test]
    fn reconnects_unless_the_server_said_not_to() {
        for code in [
            None,
            Some(1000),
            Some(1001),
            Some(1011),
            Some(1012),
            Some(1013),
        ] {
            assert!(reconnects_after(code, false), "{code:?}");
        }
        assert!(!reconnects_after(Some(close::TOKEN_EXPIRED), false));
        assert!(
            reconnects_after(Some(close::TOKEN_EXPIRED), true),
            "a provider has a new token"
        );
        assert!(!reconnects_after(Some(close::DISCONNECTED), false));
        assert!(!reconnects_after(Some(close::DISCONNECTED), true));
    }

    #[test]
    fn commands_update_subscriptions() {
        let mut task = task(ClientConfig::new("ws://x/ws"));
        let sub = task.apply(Command::Subscribe("a".into()), true).unwrap();
        assert_eq!(sub, r#"{"type":"subscribe","id":1,"channel":"a"}"#);
        assert_eq!(
            task.apply(Command::Subscribe("a".into()), true),
            None,
            "already subscribed"
        );
        assert!(task.apply(Command::Unsubscribe("a".into()), true).is_some());
        assert_eq!(task.apply(Command::Unsubscribe("a".into()), true), None);
        assert!(task.subs.is_empty());
        let publish = task
            .apply(Command::Publish("b".into(), json!([1])), true)
            .unwrap();
        assert_eq!(publish, r#"{"type":"publish","channel":"b","data":[1]}"#);

        // Offline, changes are recorded and nothing is sent.
        assert_eq!(task.apply(Command::Subscribe("c".into()), false), None);
        assert_eq!(
            task.apply(Command::Publish("c".into(), json!(1)), false),
            None
        );
        assert_eq!(task.subs.reconnected(), ["c"]);
    }

    #[test]
    fn replies_and_pushes_track_positions() {
        let mut task = task(ClientConfig::new("ws://x/ws"));
        task.apply(Command::Subscribe("a".into()), true);
        let reply = decode(r#"{"type":"reply","id":1,"result":{"offset":2,"epoch":"e1"}}"#);
        assert_eq!(
            task.handle(reply, None),
            Some(Event::Subscribed {
                channel: "a".into(),
                recovered: None,
                position: Some(Position::new(2, "e1"))
            })
        );
        let again = decode(r#"{"type":"reply","id":1,"result":{"offset":2,"epoch":"e1"}}"#);
        assert_eq!(task.handle(again, None), None, "not a pending subscribe");

        let message = |offset: u64| {
            decode(&format!(
                r#"{{"type":"message","channel":"a","offset":{offset},"data":{offset}}}"#
            ))
        };
        assert_eq!(task.handle(message(2), None), None, "seen in the reply");
        assert!(matches!(
            task.handle(message(3), None),
            Some(Event::Message {
                offset: Some(3),
                ..
            })
        ));
        assert_eq!(task.handle(message(3), None), None, "duplicate");

        // After a reconnect, the subscribe resumes from the last message.
        let channels = task.subs.reconnected();
        let id = task.next_id();
        assert_eq!(
            task.subs.subscribe_frame(&channels[0], id).unwrap(),
            r#"{"type":"subscribe","id":2,"channel":"a","since":{"offset":3,"epoch":"e1"}}"#
        );
        let failed =
            decode(r#"{"type":"reply","id":2,"error":{"code":"forbidden","message":"no"}}"#);
        assert!(
            matches!(task.handle(failed, None), Some(Event::Error(e)) if e.code == "forbidden")
        );

        let reset = decode(r#"{"type":"reset","channel":"a","offset":9,"epoch":"e2"}"#);
        assert!(matches!(
            task.handle(reset, None),
            Some(Event::Reset { .. })
        ));
        assert_eq!(task.subs.position("a"), Some(&Position::new(9, "e2")));
        assert_eq!(task.handle(message(9), None), None);
        assert!(task.handle(message(10), None).is_some());
    }

    #[test]
    fn accepted_refreshes_become_the_reconnect_token() {
        let config = ClientConfig::new("ws://x/ws")
            .with_token_provider(|| async { Ok::<_, String>("t".to_owned()) });
        let provider = config.token.clone().unwrap();
        let mut task = task(config);
        let mut refresher = Refresher::new(provider, (Duration::ZERO, Duration::ZERO));
        refresher.lifetime(Instant::now(), Some(60));
        refresher.sent(5, "fresh".into());
        let failed =
            decode(r#"{"type":"reply","id":5,"error":{"code":"unauthorized","message":"bad"}}"#);
        assert!(matches!(
            task.handle(failed, Some(&mut refresher)),
            Some(Event::Error(_))
        ));
        assert_eq!(task.token.usable(Instant::now()), None);
        refresher.sent(6, "fresh".into());
        let ok = decode(r#"{"type":"reply","id":6,"result":{"expires_in":60}}"#);
        assert_eq!(task.handle(ok, Some(&mut refresher)), None);
        assert_eq!(task.token.usable(Instant::now()), Some("fresh"));
    }

    #[test]
    fn bearer_headers_and_refusal_messages() {
        assert_eq!(bearer("abc").unwrap(), "Bearer abc");
        assert!(bearer("abc").unwrap().is_sensitive());
        assert!(bearer("a\nb").is_err());
        assert_eq!(
            refusal_message(&json!({"error": "unauthorized", "message": "token expired"})),
            "token expired"
        );
        assert_eq!(refusal_message(&json!("plain")), "\"plain\"");
    }

    #[test]
    fn config_debug_hides_the_provider() {
        let config = ClientConfig::new("ws://x/ws")
            .with_token_provider(|| async { Ok::<_, String>("secret".to_owned()) });
        let shown = format!("{config:?}");
        assert!(shown.contains("<provider>") && !shown.contains("secret"));
        assert_eq!(config.max_auth_failures, 3);
    }
}
