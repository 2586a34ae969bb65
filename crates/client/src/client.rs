//! A reconnecting client for long-lived use: one background task connects,
//! resubscribes on every connect, reconnects with jittered backoff, and
//! reports what happens as [`Event`]s.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use switchboard_protocol::{close, ErrorBody, Incoming, Outgoing};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::backoff::backoff_delay;
use crate::connection::{Connection, Frame, Welcome};
use crate::ClientError;

/// How long [`Client::stop`] waits for the server to confirm the close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws?token=<JWT>`.
    pub url: String,
    /// Extra headers for the upgrade request (for example `Authorization` or `Origin`).
    pub headers: http::HeaderMap,
    /// The delay cap of the first reconnect attempt (default 100 ms).
    pub backoff_min: Duration,
    /// The largest delay cap (default 10 s); also caps an honoured `Retry-After`.
    pub backoff_max: Duration,
    /// Events buffered before the client stops reading the socket (default 1024).
    pub event_queue: usize,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            headers: http::HeaderMap::new(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            event_queue: 1024,
        }
    }
}

/// What a [`Client`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection is up; the subscriptions are being restored.
    Connected(Welcome),
    Message {
        channel: String,
        data: Value,
    },
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
    /// for example a forbidden subscribe or a rate-limited publish.
    Error(ErrorBody),
    /// A connection ended. `code` is the server's close code, `None` if it
    /// ended without one, `Some(1000)` after [`Client::stop`].
    Disconnected {
        code: Option<u16>,
        reason: String,
    },
    /// The server refused a connection attempt with this HTTP status.
    Refused {
        status: u16,
    },
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
    /// socket, as a slow real client would. Any close, error or refusal leads
    /// to a reconnect after a jittered backoff delay, except close code 4001
    /// (token expired), 4003 (disconnected by the server API), an invalid URL,
    /// or [`Client::stop`]: then the task ends with a final
    /// [`Event::Disconnected`] (none if no connection was up at the time) and
    /// the receiver yields `None`.
    pub fn start(config: ClientConfig) -> (Client, mpsc::Receiver<Event>) {
        let (events, receiver) = mpsc::channel(config.event_queue.max(1));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let task = Task {
            config,
            commands: command_rx,
            events,
            channels: BTreeSet::new(),
        };
        tokio::spawn(task.run());
        (Client { commands }, receiver)
    }

    /// Subscribes to `channel` now if connected, and again after every reconnect.
    /// A failure arrives as [`Event::Error`].
    pub fn subscribe(&self, channel: impl Into<String>) {
        self.send(Command::Subscribe(channel.into()));
    }

    /// Unsubscribes from `channel` and stops restoring it on reconnect.
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

/// The event a pushed or failed frame becomes, if any.
fn event_for(frame: Incoming) -> Option<Event> {
    match frame {
        Incoming::Message { channel, data } => Some(Event::Message { channel, data }),
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
        Incoming::Reply { .. } | Incoming::Welcome { .. } => None,
    }
}

/// Whether a connection closed with `code` may be retried.
fn reconnects_after(code: Option<u16>) -> bool {
    !matches!(code, Some(close::TOKEN_EXPIRED | close::DISCONNECTED))
}

/// A command frame without id: success is silent, failure is an `error` frame.
fn encode(kind: &str, channel: &str, data: Option<&Value>) -> String {
    Outgoing {
        kind,
        id: None,
        channel: Some(channel),
        data,
        token: None,
    }
    .encode()
}

/// Why a live connection ended.
enum End {
    Closed { code: Option<u16>, reason: String },
    Stopped,
}

struct Task {
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    /// The channels to (re)subscribe; owned by the task, changed by commands.
    channels: BTreeSet<String>,
}

impl Task {
    async fn run(mut self) {
        let mut request = match self.config.url.as_str().into_client_request() {
            Ok(request) => request,
            Err(e) => return self.finish(None, format!("invalid url: {e}")).await,
        };
        request.headers_mut().extend(self.config.headers.clone());
        let mut attempt: u32 = 0;
        loop {
            let mut retry_after = None;
            match self
                .offline(Connection::connect_request(request.clone()))
                .await
            {
                None => return,
                Some(Ok((connection, welcome))) => {
                    attempt = 0;
                    self.emit(Event::Connected(welcome)).await;
                    match self.online(connection).await {
                        End::Stopped => {
                            return self.finish(Some(close::NORMAL), "stopped".to_owned()).await
                        }
                        End::Closed { code, reason } if !reconnects_after(code) => {
                            return self.finish(code, reason).await
                        }
                        End::Closed { code, reason } => {
                            tracing::debug!(?code, %reason, "disconnected; reconnecting");
                            self.emit(Event::Disconnected { code, reason }).await;
                        }
                    }
                }
                Some(Err(ClientError::Refused {
                    status,
                    retry_after: after,
                    ..
                })) => {
                    tracing::debug!(status, "connection refused");
                    retry_after = after
                        .and_then(|s| s.trim().parse().ok())
                        .map(Duration::from_secs);
                    self.emit(Event::Refused { status }).await;
                }
                Some(Err(ClientError::WebSocket(e @ tungstenite::Error::Url(_)))) => {
                    return self.finish(None, format!("cannot connect: {e}")).await
                }
                Some(Err(e)) => tracing::debug!(error = %e, "connect failed"),
            }
            let (min, max) = (self.config.backoff_min, self.config.backoff_max);
            let jittered = backoff_delay(attempt, min, max, &mut rand::rng());
            let delay = jittered.max(retry_after.unwrap_or_default().min(max));
            attempt = attempt.saturating_add(1);
            if self.offline(tokio::time::sleep(delay)).await.is_none() {
                return;
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
                        if self.apply(command).is_some() {
                            tracing::debug!("not connected; publish dropped");
                        }
                    }
                },
            }
        }
    }

    /// Serves one connection: restores subscriptions, then forwards frames as
    /// events and commands as frames until it ends.
    async fn online(&mut self, mut connection: Connection) -> End {
        for channel in &self.channels {
            if let Err(e) = connection
                .send_text(encode("subscribe", channel, None))
                .await
            {
                return End::Closed {
                    code: None,
                    reason: e.to_string(),
                };
            }
        }
        loop {
            tokio::select! {
                frame = connection.next_frame() => match frame {
                    Ok(Frame::Incoming(frame)) => {
                        if let Some(event) = event_for(frame) {
                            self.emit(event).await;
                        }
                    }
                    Ok(Frame::Closed { code, reason }) => return End::Closed { code, reason },
                    Err(ClientError::Protocol(e)) => tracing::warn!(error = %e, "ignoring frame"),
                    Err(e) => return End::Closed { code: None, reason: e.to_string() },
                },
                command = self.commands.recv() => match command {
                    None | Some(Command::Stop) => {
                        let _ = tokio::time::timeout(CLOSE_WAIT, connection.close()).await;
                        return End::Stopped;
                    }
                    Some(command) => {
                        let Some(text) = self.apply(command) else { continue };
                        if let Err(e) = connection.send_text(text).await {
                            return End::Closed { code: None, reason: e.to_string() };
                        }
                    }
                },
            }
        }
    }

    /// Records a command; returns the frame to send if it needs one.
    fn apply(&mut self, command: Command) -> Option<String> {
        match command {
            Command::Subscribe(channel) => self
                .channels
                .insert(channel.clone())
                .then(|| encode("subscribe", &channel, None)),
            Command::Unsubscribe(channel) => self
                .channels
                .remove(&channel)
                .then(|| encode("unsubscribe", &channel, None)),
            Command::Publish(channel, data) => Some(encode("publish", &channel, Some(&data))),
            Command::Stop => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(text: &str) -> Option<Event> {
        event_for(Incoming::decode(text).unwrap())
    }

    #[test]
    fn pushes_and_failures_become_events() {
        assert_eq!(
            event(r#"{"type":"message","channel":"a","data":{"n":1}}"#),
            Some(Event::Message {
                channel: "a".into(),
                data: json!({"n": 1})
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
            assert!(reconnects_after(code), "{code:?}");
        }
        assert!(!reconnects_after(Some(close::TOKEN_EXPIRED)));
        assert!(!reconnects_after(Some(close::DISCONNECTED)));
    }

    #[test]
    fn commands_update_subscriptions() {
        let (_tx, commands) = mpsc::unbounded_channel();
        let (events, _rx) = mpsc::channel(1);
        let mut task = Task {
            config: ClientConfig::new("ws://x/ws"),
            commands,
            events,
            channels: BTreeSet::new(),
        };
        let sub = task.apply(Command::Subscribe("a".into())).unwrap();
        assert_eq!(sub, r#"{"type":"subscribe","channel":"a"}"#);
        assert_eq!(
            task.apply(Command::Subscribe("a".into())),
            None,
            "already subscribed"
        );
        assert!(task.apply(Command::Unsubscribe("a".into())).is_some());
        assert_eq!(task.apply(Command::Unsubscribe("a".into())), None);
        assert!(task.channels.is_empty());
        let publish = task
            .apply(Command::Publish("b".into(), json!([1])))
            .unwrap();
        assert_eq!(publish, r#"{"type":"publish","channel":"b","data":[1]}"#);
    }
}
