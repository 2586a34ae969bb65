//! The connections and sessions of a node: handshakes accepted and refused,
//! sessions open and how they ended, the commands clients send and the
//! frames written back to their sockets.
//!
//! The label values come from fixed sets: [`Refusal`], [`Closed`] and the
//! protocol's command types. A command answered `ok` is counted through a
//! child resolved at start-up, since every client frame takes that path.

use http::StatusCode;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use switchboard_protocol::{close, ErrorCode};

use crate::metrics::registry::{counter, counter_vec, gauge, gauge_vec};

/// Why a WebSocket handshake was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not a valid WebSocket upgrade.
    BadRequest,
    /// 401: missing or invalid token.
    Unauthorized,
    /// 403: `Origin` not allowed.
    ForbiddenOrigin,
    /// 429: connection rate limit.
    RateLimited,
    /// 503: the node is at a connection cap.
    NodeFull,
    /// 503: the node is shutting down.
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::BadRequest,
        Refusal::Unauthorized,
        Refusal::ForbiddenOrigin,
        Refusal::RateLimited,
        Refusal::NodeFull,
        Refusal::Draining,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::Unauthorized => "unauthorized",
            Refusal::ForbiddenOrigin => "forbidden_origin",
            Refusal::RateLimited => "rate_limited",
            Refusal::NodeFull => "node_full",
            Refusal::Draining => "draining",
        }
    }

    /// Classifies a refusal by the status it answers with, so every refusal
    /// the handshake can produce is counted without a list to keep in step.
    /// `reason` (the log's reason) only splits 503 into draining and full.
    pub fn from_status(status: StatusCode, reason: &str) -> Refusal {
        match status {
            StatusCode::UNAUTHORIZED => Refusal::Unauthorized,
            StatusCode::FORBIDDEN => Refusal::ForbiddenOrigin,
            StatusCode::TOO_MANY_REQUESTS => Refusal::RateLimited,
            StatusCode::SERVICE_UNAVAILABLE if reason == "draining" => Refusal::Draining,
            StatusCode::SERVICE_UNAVAILABLE => Refusal::NodeFull,
            _ => Refusal::BadRequest,
        }
    }
}

/// How a session ended (the `code` label of closed sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The server closed with this close code.
    Server(u16),
    /// The client sent a close frame.
    Client,
    /// The socket broke or ended without a close frame.
    Lost,
}

impl Closed {
    /// The label: the close code the server sent, `client` or `lost`.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::Lost => "lost",
            Closed::Server(code) => match code {
                close::NORMAL => "1000",
                close::GOING_AWAY => "1001",
                1002 => "1002",
                close::INVALID_DATA => "1007",
                close::POLICY => "1008",
                close::TOO_BIG => "1009",
                close::INTERNAL => "1011",
                close::DRAINING => "1012",
                close::SLOW_CONSUMER => "1013",
                close::TOKEN_EXPIRED => "4001",
                close::DISCONNECTED => "4003",
                _ => "other",
            },
        }
    }
}

/// What a session speaks over (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket (`/ws`).
    WebSocket,
    /// A server-sent events stream (`/sse`), commands over HTTP.
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Sse];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// The per-transport series of one transport, resolved once.
#[derive(Debug)]
struct ByTransport {
    open: IntGauge,
    received: IntCounter,
    received_bytes: IntCounter,
    sent: IntCounter,
    sent_bytes: IntCounter,
}

/// The command label values: the protocol's command types, and `invalid`
/// for frames that do not decode (which is never `ok`).
const COMMANDS: [&str; 9] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "publish_batch",
    "presence",
    "refresh",
    "history",
    "ping",
    "invalid",
];

/// Counts an open session until dropped.
#[derive(Debug)]
#[must_use = "the session counts as open while the guard lives"]
pub struct OpenSession(IntGauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The session metrics of one node.
#[derive(Debug)]
pub(super) struct SessionMetrics {
    connections_open: IntGauge,
    connections_accepted: IntCounter,
    connections_refused: IntCounterVec,
    sessions_closed: IntCounterVec,
    slow_consumers: IntCounter,
    client_messages: IntCounter,
    client_bytes: IntCounter,
    commands: IntCounterVec,
    /// The `ok` child of each of [`COMMANDS`], resolved once (the hot path).
    commands_ok: Vec<IntCounter>,
    commands_rate_limited: IntCounter,
    send_queue_bytes: IntGauge,
    socket_writes: IntCounter,
    frames_written: IntCounter,
    coalesce_waits: IntCounter,
    /// Indexed by `Transport as usize`.
    by_transport: [ByTransport; 2],
}

impl SessionMetrics {
    /// Registers the session metrics of a node capped at `max_connections`
    /// sessions; every refusal reason is exposed at 0 from the start.
    pub(super) fn new(r: &Registry, max_connections: usize) -> SessionMetrics {
        let connections_refused = counter_vec(
            r,
            "switchboard_connections_refused_total",
            "WebSocket handshakes refused before the upgrade, by reason.",
            &["reason"],
        );
        for refusal in Refusal::ALL {
            connections_refused.with_label_values(&[refusal.label()]);
        }
        let commands = counter_vec(
            r,
            "switchboard_commands_total",
            "Client commands by type and result (ok or the error code answered).",
            &["command", "result"],
        );
        // `invalid` is last and never `ok`.
        let commands_ok = COMMANDS[..COMMANDS.len() - 1]
            .iter()
            .map(|command| commands.with_label_values(&[command, "ok"]))
            .collect();
        let connections_max = gauge(
            r,
            "switchboard_connections_max",
            "The node's cap on open sessions (max_connections).",
        );
        connections_max.set(max_connections as i64);

        let transport = |name: &str, help: &str| {
            let family = counter_vec(r, name, help, &["transport"]);
            Transport::ALL.map(|t| family.with_label_values(&[t.label()]))
        };
        let open = gauge_vec(
            r,
            "switchboard_transport_connections_open",
            "Open sessions on this node by transport (websocket, sse).",
            &["transport"],
        );
        let received = transport(
            "switchboard_transport_received_total",
            "Commands received from clients, by transport (WebSocket text frames, or HTTP commands of streams).",
        );
        let received_bytes = transport(
            "switchboard_transport_received_bytes_total",
            "Bytes of the commands received from clients, by transport.",
        );
        let sent = transport(
            "switchboard_transport_sent_total",
            "Frames (WebSocket) or events (server-sent events) written to clients, by transport; heartbeats not included.",
        );
        let sent_bytes = transport(
            "switchboard_transport_sent_bytes_total",
            "Bytes written to clients by sessions, framing included, by transport.",
        );
        let by_transport = Transport::ALL.map(|t| {
            let i = t as usize;
            ByTransport {
                open: open.with_label_values(&[t.label()]),
                received: received[i].clone(),
                received_bytes: received_bytes[i].clone(),
                sent: sent[i].clone(),
                sent_bytes: sent_bytes[i].clone(),
            }
        });

        SessionMetrics {
            by_transport,
            connections_open: gauge(
                r,
                "switchboard_connections_open",
                "Open WebSocket sessions on this node.",
            ),
            connections_accepted: counter(
                r,
                "switchboard_connections_accepted_total",
                "WebSocket handshakes accepted (upgraded to a session).",
            ),
            connections_refused,
            sessions_closed: counter_vec(
                r,
                "switchboard_sessions_closed_total",
                "Sessions ended, by the close code the server sent, or client (the client closed) or lost (the socket broke).",
                &["code"],
            ),
            slow_consumers: counter(
                r,
                "switchboard_slow_consumer_disconnects_total",
                "Sessions closed with 1013 because they could not keep up (queue full or a write timed out).",
            ),
            client_messages: counter(
                r,
                "switchboard_client_messages_received_total",
                "Text frames (commands) received from clients.",
            ),
            client_bytes: counter(
                r,
                "switchboard_client_messages_received_bytes_total",
                "Bytes of the text frames received from clients.",
            ),
            commands,
            commands_ok,
            commands_rate_limited: counter(
                r,
                "switchboard_commands_rate_limited_total",
                "Client commands refused by the per-connection message rate.",
            ),
            socket_writes: counter(
                r,
                "switchboard_socket_writes_total",
                "Vectored writes of server frames to client sockets (system calls); with write coalescing, fewer than frames written.",
            ),
            frames_written: counter(
                r,
                "switchboard_frames_written_total",
                "Server frames (messages, replies, events) written to client sockets.",
            ),
            coalesce_waits: counter(
                r,
                "switchboard_coalesce_waits_total",
                "Frames held back to be written with the ones that follow (adaptive write coalescing waited: the connection's last writes showed frames arriving faster than the window).",
            ),
            send_queue_bytes: gauge(
                r,
                "switchboard_send_queue_bytes",
                "Bytes waiting in the send queues of all sessions on this node.",
            ),
        }
    }

    pub(super) fn accepted(&self) {
        self.connections_accepted.inc();
    }

    pub(super) fn refused(&self, reason: Refusal) {
        self.connections_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    pub(super) fn opened(&self) -> OpenSession {
        self.connections_open.inc();
        OpenSession(self.connections_open.clone())
    }

    pub(super) fn closed(&self, how: Closed) {
        self.sessions_closed.with_label_values(&[how.label()]).inc();
        if how == Closed::Server(close::SLOW_CONSUMER) {
            self.slow_consumers.inc();
        }
    }

    pub(super) fn client_message(&self, transport: Transport, bytes: usize) {
        self.client_messages.inc();
        self.client_bytes.inc_by(bytes as u64);
        let by = &self.by_transport[transport as usize];
        by.received.inc();
        by.received_bytes.inc_by(bytes as u64);
    }

    pub(super) fn transport_opened(&self, transport: Transport) {
        self.by_transport[transport as usize].open.inc();
    }

    pub(super) fn transport_closed(&self, transport: Transport) {
        self.by_transport[transport as usize].open.dec();
    }

    pub(super) fn sent(&self, transport: Transport, frames: usize, bytes: usize) {
        let by = &self.by_transport[transport as usize];
        by.sent.inc_by(frames as u64);
        by.sent_bytes.inc_by(bytes as u64);
    }

    /// A command outside [`COMMANDS`] is not counted; a success is counted
    /// through its resolved `ok` child.
    pub(super) fn command(&self, command: &str, error: Option<ErrorCode>) {
        let Some(index) = COMMANDS.iter().position(|c| *c == command) else {
            return;
        };
        match error {
            None => {
                if let Some(ok) = self.commands_ok.get(index) {
                    ok.inc();
                }
            }
            Some(code) => self
                .commands
                .with_label_values(&[COMMANDS[index], code.as_str()])
                .inc(),
        }
    }

    pub(super) fn command_rate_limited(&self) {
        self.commands_rate_limited.inc();
    }

    pub(super) fn frames_written(&self, frames: usize, writes: usize) {
        self.frames_written.inc_by(frames as u64);
        self.socket_writes.inc_by(writes as u64);
    }

    pub(super) fn coalesce_wait(&self) {
        self.coalesce_waits.inc();
    }

    pub(super) fn set_send_queue_bytes(&self, bytes: usize) {
        self.send_queue_bytes.set(bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_by_status() {
        let cases = [
            (
                StatusCode::BAD_REQUEST,
                "not_websocket",
                Refusal::BadRequest,
            ),
            (StatusCode::UNAUTHORIZED, "expired", Refusal::Unauthorized),
            (StatusCode::FORBIDDEN, "origin", Refusal::ForbiddenOrigin),
            (StatusCode::TOO_MANY_REQUESTS, "ip", Refusal::RateLimited),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity",
                Refusal::NodeFull,
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                Refusal::Draining,
            ),
        ];
        for (status, reason, expected) in cases {
            assert_eq!(Refusal::from_status(status, reason), expected);
        }
    }
}
