//! Prometheus metrics of one gateway node, served as text on `/metrics`.
//!
//! Operators answer every incident question from here: how many clients,
//! how fast messages flow, whether anything is dropped, whether Redis is
//! healthy, who is refused and why. Each [`Node`](crate::node::Node) owns one
//! [`Metrics`] with its own registry (never the process-wide default), so
//! several nodes in one process, as in tests, never mix their numbers.
//!
//! Every call site is one typed method call. Label values come only from
//! small fixed sets (reasons, close codes, commands, routes, statuses) or from
//! the channel namespaces configured in `[namespaces.*]`; every other
//! namespace is counted as `other`. A channel name, user or connection id is
//! never a label. The per-message paths (fan-out, publish) use children
//! resolved at start-up, so counting costs a few atomic additions and no
//! lock. docs/operations.md lists every metric.

pub mod webhooks;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use switchboard_protocol::channel::namespace;
use switchboard_protocol::{close, ErrorCode};

/// The `Content-Type` of the text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The namespace label of channels whose namespace is not configured.
pub const OTHER_NAMESPACE: &str = "other";

/// Buckets for in-process work (fan-out, queueing): 1 µs to 100 ms.
const FAST_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01, 0.025, 0.1,
];
/// Buckets for round trips to Redis or an API request: 100 µs to 2.5 s.
const IO_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Buckets for a backend's answer (the subscribe proxy): 1 ms to 30 s,
/// the longest timeout it may have.
const BACKEND_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How the subscribe proxy's backend answered (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyResult {
    Allow,
    Deny,
    /// No usable answer: a timeout, a connection error, a status other
    /// than 200 or a body not in the contract.
    Error,
}

impl ProxyResult {
    pub const ALL: [ProxyResult; 3] = [ProxyResult::Allow, ProxyResult::Deny, ProxyResult::Error];

    pub fn label(self) -> &'static str {
        match self {
            ProxyResult::Allow => "allow",
            ProxyResult::Deny => "deny",
            ProxyResult::Error => "error",
        }
    }
}

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

/// Presence operations (the `op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceOp {
    Join,
    Leave,
    Members,
    Connected,
    Disconnected,
}

impl PresenceOp {
    pub fn label(self) -> &'static str {
        match self {
            PresenceOp::Join => "join",
            PresenceOp::Leave => "leave",
            PresenceOp::Members => "members",
            PresenceOp::Connected => "connected",
            PresenceOp::Disconnected => "disconnected",
        }
    }
}

/// Which Redis link a connection-state gauge describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisLink {
    /// The node's dedicated Pub/Sub connection.
    PubSub,
    /// Commands through the pool, as shown by the lease renewal each second.
    Commands,
}

impl RedisLink {
    pub fn label(self) -> &'static str {
        match self {
            RedisLink::PubSub => "pubsub",
            RedisLink::Commands => "commands",
        }
    }
}

/// The command label values: the protocol's command types, and `invalid`
/// for frames that do not decode (which is never `ok`).
const COMMANDS: [&str; 8] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "refresh",
    "history",
    "ping",
    "invalid",
];

/// The message flow of one namespace label, resolved once.
#[derive(Debug, Clone)]
struct Flow {
    published: IntCounter,
    published_bytes: IntCounter,
    received: IntCounter,
    received_bytes: IntCounter,
    delivered: IntCounter,
    delivered_bytes: IntCounter,
    dropped: IntCounter,
    subscriptions: IntGauge,
    channels: IntGauge,
}

/// Counts an open session until dropped.
#[derive(Debug)]
#[must_use = "the session counts as open while the guard lives"]
pub struct OpenSession(IntGauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Collects the fan-out of one message; see [`Metrics::fanout`].
#[derive(Debug)]
pub struct FanoutTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
    latency: prometheus::local::LocalHistogram,
}

impl FanoutTimer<'_> {
    /// One subscriber got the frame queued now.
    pub fn queued(&self) {
        self.latency.observe(self.started.elapsed().as_secs_f64());
    }

    /// The fan-out is over: `delivered` queues took the frame, `dropped`
    /// were full.
    pub fn finish(self, channel: &str, bytes: usize, delivered: usize, dropped: usize) {
        let flow = self.metrics.flow(channel);
        flow.received.inc();
        flow.received_bytes.inc_by(bytes as u64);
        if delivered + dropped == 0 {
            return;
        }
        self.metrics
            .fanout_duration
            .observe(self.started.elapsed().as_secs_f64());
        self.latency.flush();
        flow.delivered.inc_by(delivered as u64);
        flow.delivered_bytes.inc_by((delivered * bytes) as u64);
        if dropped > 0 {
            flow.dropped.inc_by(dropped as u64);
        }
    }
}

/// Every metric of one node, in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    flows: HashMap<Box<str>, Flow>,
    other: Flow,
    connections_open: IntGauge,
    connections_max: IntGauge,
    connections_accepted: IntCounter,
    connections_refused: IntCounterVec,
    sessions_closed: IntCounterVec,
    slow_consumers: IntCounter,
    draining: IntGauge,
    client_messages: IntCounter,
    client_bytes: IntCounter,
    commands: IntCounterVec,
    /// The `ok` child of each of [`COMMANDS`], resolved once (the hot path).
    commands_ok: Vec<IntCounter>,
    commands_rate_limited: IntCounter,
    fanout_duration: Histogram,
    delivery_latency: Histogram,
    send_queue_bytes: IntGauge,
    socket_writes: IntCounter,
    frames_written: IntCounter,
    redis_publish_duration: Histogram,
    redis_publish_errors: IntCounter,
    redis_reconnects: IntCounter,
    history_appends: IntCounter,
    history_reads: IntCounterVec,
    recoveries: IntCounterVec,
    replayed: IntCounterVec,
    gaps_repaired: IntCounter,
    stream_resets: IntCounter,
    relay_duplicates: IntCounter,
    redis_connected: IntGaugeVec,
    presence_ops: IntCounterVec,
    presence_duration: HistogramVec,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    proxy_requests: IntCounterVec,
    proxy_cache_hits: IntCounter,
    proxy_duration: Histogram,
}

impl Default for Metrics {
    /// Metrics with no configured namespace and no connection cap, for
    /// parts used on their own (unit tests).
    fn default() -> Metrics {
        Metrics::new(std::iter::empty::<&str>(), 0)
    }
}

/// Registers a collector and hands it back.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    // The definitions are constants and each name is registered once per
    // registry, so this only fails on a programming error (a unit test
    // builds the whole set).
    registry
        .register(Box::new(collector.clone()))
        .expect("metric definitions are valid and unique");
    collector
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric name");
    register(registry, counter)
}

pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    register(registry, counter)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric name");
    register(registry, gauge)
}

pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
    register(registry, gauge)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric name");
    register(registry, histogram)
}

pub(crate) fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let histogram = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric name");
    register(registry, histogram)
}

impl Metrics {
    /// Builds the metrics of a node whose configuration lists `namespaces`
    /// and caps it at `max_connections` sessions.
    pub fn new<'a>(
        namespaces: impl IntoIterator<Item = &'a str>,
        max_connections: usize,
    ) -> Metrics {
        let registry = Registry::new();
        let r = &registry;

        let published = counter_vec(
            r,
            "switchboard_messages_published_total",
            "Frames this node published to the broker (client and server API publishes, join/leave events).",
            &["namespace"],
        );
        let published_bytes = counter_vec(
            r,
            "switchboard_messages_published_bytes_total",
            "Bytes of the frames this node published to the broker.",
            &["namespace"],
        );
        let received = counter_vec(
            r,
            "switchboard_messages_received_total",
            "Frames this node received from the broker for its local subscribers.",
            &["namespace"],
        );
        let received_bytes = counter_vec(
            r,
            "switchboard_messages_received_bytes_total",
            "Bytes of the frames received from the broker.",
            &["namespace"],
        );
        let delivered = counter_vec(
            r,
            "switchboard_messages_delivered_total",
            "Frames queued to local subscribers' send queues (one per subscriber).",
            &["namespace"],
        );
        let delivered_bytes = counter_vec(
            r,
            "switchboard_messages_delivered_bytes_total",
            "Bytes queued to local subscribers (frame size times subscribers).",
            &["namespace"],
        );
        let dropped = counter_vec(
            r,
            "switchboard_messages_dropped_total",
            "Frames not queued because a subscriber's send queue was full (that subscriber is closed as slow).",
            &["namespace"],
        );
        let subscriptions = gauge_vec(
            r,
            "switchboard_subscriptions_open",
            "Channel subscriptions of the sessions on this node.",
            &["namespace"],
        );
        let channels = gauge_vec(
            r,
            "switchboard_channels_local",
            "Channels with at least one subscriber on this node (one broker subscription each).",
            &["namespace"],
        );
        let flow = |label: &str| Flow {
            published: published.with_label_values(&[label]),
            published_bytes: published_bytes.with_label_values(&[label]),
            received: received.with_label_values(&[label]),
            received_bytes: received_bytes.with_label_values(&[label]),
            delivered: delivered.with_label_values(&[label]),
            delivered_bytes: delivered_bytes.with_label_values(&[label]),
            dropped: dropped.with_label_values(&[label]),
            subscriptions: subscriptions.with_label_values(&[label]),
            channels: channels.with_label_values(&[label]),
        };
        let flows = namespaces
            .into_iter()
            .filter(|ns| !ns.is_empty())
            .map(|ns| (Box::from(ns), flow(ns)))
            .collect();
        let other = flow(OTHER_NAMESPACE);

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

        let build_info = gauge_vec(
            r,
            "switchboard_build_info",
            "Always 1; the labels name the running build.",
            &["version", "commit"],
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("SWITCHBOARD_GIT_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);

        let metrics = Metrics {
            flows,
            other,
            connections_open: gauge(
                r,
                "switchboard_connections_open",
                "Open WebSocket sessions on this node.",
            ),
            connections_max: gauge(
                r,
                "switchboard_connections_max",
                "The node's cap on open sessions (max_connections).",
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
            draining: gauge(
                r,
                "switchboard_node_draining",
                "1 while the node is shutting down and refusing new connections.",
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
            fanout_duration: histogram(
                r,
                "switchboard_fanout_duration_seconds",
                "Time to queue one received frame to every local subscriber of its channel.",
                FAST_BUCKETS,
            ),
            delivery_latency: histogram(
                r,
                "switchboard_delivery_latency_seconds",
                "Per subscriber: time from the broker handing a frame to this node to the frame being queued for that subscriber.",
                FAST_BUCKETS,
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
            send_queue_bytes: gauge(
                r,
                "switchboard_send_queue_bytes",
                "Bytes waiting in the send queues of all sessions on this node.",
            ),
            redis_publish_duration: histogram(
                r,
                "switchboard_redis_publish_duration_seconds",
                "Time of a PUBLISH to Redis, including waiting for a pooled connection.",
                IO_BUCKETS,
            ),
            redis_publish_errors: counter(
                r,
                "switchboard_redis_publish_errors_total",
                "PUBLISH commands to Redis that failed or timed out (the message was not published).",
            ),
            redis_reconnects: counter(
                r,
                "switchboard_redis_pubsub_reconnects_total",
                "Times the Pub/Sub connection was re-established after it was lost.",
            ),
            history_appends: counter(
                r,
                "switchboard_history_appends_total",
                "Messages this node stored in a channel's history (each with its offset) and published.",
            ),
            history_reads: counter_vec(
                r,
                "switchboard_history_reads_total",
                "History reads by reason (subscribe, history, api, repair) and result (ok or error).",
                &["reason", "result"],
            ),
            recoveries: counter_vec(
                r,
                "switchboard_recoveries_total",
                "Subscribes with since, by outcome: recovered (every missed message replayed) or not_recovered (the client was told to reload).",
                &["outcome"],
            ),
            replayed: counter_vec(
                r,
                "switchboard_messages_replayed_total",
                "Messages delivered from history instead of Pub/Sub: by session (a client's recovery) or node (gap repair, per node, before fan-out).",
                &["by"],
            ),
            gaps_repaired: counter(
                r,
                "switchboard_gaps_repaired_total",
                "Gaps in this node's Pub/Sub feed (a skipped offset, or a reconnect) filled from history.",
            ),
            stream_resets: counter(
                r,
                "switchboard_stream_resets_total",
                "Times this node told a channel's subscribers with a reset frame that messages may be lost (epoch changed, or a gap history could not fill).",
            ),
            relay_duplicates: counter(
                r,
                "switchboard_relay_duplicates_total",
                "Pub/Sub messages dropped because a gap repair had already delivered them.",
            ),
            redis_connected: gauge_vec(
                r,
                "switchboard_redis_connected",
                "1 when the Redis link works, 0 when not: pubsub (the Pub/Sub connection) or commands (the last lease renewal).",
                &["link"],
            ),
            presence_ops: counter_vec(
                r,
                "switchboard_presence_operations_total",
                "Presence operations by operation and result (ok or error).",
                &["op", "result"],
            ),
            presence_duration: histogram_vec(
                r,
                "switchboard_presence_operation_duration_seconds",
                "Time of a presence operation.",
                &["op"],
                IO_BUCKETS,
            ),
            api_requests: counter_vec(
                r,
                "switchboard_api_requests_total",
                "Server API requests by route and HTTP status.",
                &["route", "status"],
            ),
            api_duration: histogram_vec(
                r,
                "switchboard_api_request_duration_seconds",
                "Time to answer a server API request.",
                &["route"],
                IO_BUCKETS,
            ),
            proxy_requests: counter_vec(
                r,
                "switchboard_subscribe_proxy_requests_total",
                "Subscribes asked of the subscribe proxy's backend, by result: allow, deny or error (no usable answer in time; the subscribe was refused with unavailable).",
                &["result"],
            ),
            proxy_cache_hits: counter(
                r,
                "switchboard_subscribe_proxy_cache_hits_total",
                "Subscribes decided by a cached answer of the subscribe proxy's backend, without asking it.",
            ),
            proxy_duration: histogram(
                r,
                "switchboard_subscribe_proxy_duration_seconds",
                "Time of a request to the subscribe proxy's backend, errors and timeouts included.",
                BACKEND_BUCKETS,
            ),
            registry,
        };
        for result in ProxyResult::ALL {
            metrics.proxy_requests.with_label_values(&[result.label()]);
        }
        metrics.connections_max.set(max_connections as i64);
        // Exposed at 0 from the start, so rates and the recovery alert work
        // before the first resume.
        for outcome in ["recovered", "not_recovered"] {
            metrics.recoveries.with_label_values(&[outcome]);
        }
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(error) = metrics.registry.register(Box::new(process)) {
                tracing::warn!(message = "process metrics unavailable", %error);
            }
        }
        metrics
    }

    fn flow(&self, channel: &str) -> &Flow {
        self.flows.get(namespace(channel)).unwrap_or(&self.other)
    }

    /// The namespace label a channel is counted under.
    pub fn namespace_label<'a>(&'a self, channel: &'a str) -> &'a str {
        let ns = namespace(channel);
        match self.flows.get_key_value(ns) {
            Some((label, _)) => label,
            None => OTHER_NAMESPACE,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self, draining: bool) -> String {
        self.draining.set(i64::from(draining));
        let mut text = String::new();
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::warn!(message = "metrics encoding failed", %error);
        }
        text
    }

    /// The registry, for collectors added elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    // Connections and sessions.

    /// A handshake was accepted.
    pub fn accepted(&self) {
        self.connections_accepted.inc();
    }

    /// A handshake was refused.
    pub fn refused(&self, reason: Refusal) {
        self.connections_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// A session started; it counts as open until the guard drops.
    pub fn session_opened(&self) -> OpenSession {
        self.connections_open.inc();
        OpenSession(self.connections_open.clone())
    }

    /// A session ended; 1013 also counts as a slow-consumer disconnect.
    pub fn session_closed(&self, how: Closed) {
        self.sessions_closed.with_label_values(&[how.label()]).inc();
        if how == Closed::Server(close::SLOW_CONSUMER) {
            self.slow_consumers.inc();
        }
    }

    /// A subscription of a session to `channel` started.
    pub fn subscribed(&self, channel: &str) {
        self.flow(channel).subscriptions.inc();
    }

    /// A subscription of a session to `channel` ended.
    pub fn unsubscribed(&self, channel: &str) {
        self.flow(channel).subscriptions.dec();
    }

    /// `channel` got its first local subscriber.
    pub fn channel_opened(&self, channel: &str) {
        self.flow(channel).channels.inc();
    }

    /// `channel` lost its last local subscriber.
    pub fn channel_closed(&self, channel: &str) {
        self.flow(channel).channels.dec();
    }

    // Messages.

    /// A text frame of `bytes` arrived from a client.
    pub fn client_message(&self, bytes: usize) {
        self.client_messages.inc();
        self.client_bytes.inc_by(bytes as u64);
    }

    /// A client command of type `command` (a protocol command type, or
    /// `invalid`) was answered with `error` (None: success).
    pub fn command(&self, command: &str, error: Option<ErrorCode>) {
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

    /// A client command was refused by the per-connection message rate.
    pub fn command_rate_limited(&self) {
        self.commands_rate_limited.inc();
    }

    /// A frame of `bytes` for `channel` was published to the broker.
    pub fn published(&self, channel: &str, bytes: usize) {
        let flow = self.flow(channel);
        flow.published.inc();
        flow.published_bytes.inc_by(bytes as u64);
    }

    /// Starts timing the fan-out of one frame the broker just handed over.
    pub fn fanout(&self) -> FanoutTimer<'_> {
        FanoutTimer {
            metrics: self,
            started: Instant::now(),
            latency: self.delivery_latency.local(),
        }
    }

    /// The bytes waiting in every session's send queue, read from the hub
    /// at scrape time (so the per-frame path touches no shared counter).
    /// A session wrote `frames` frames in `writes` system calls.
    pub fn frames_written(&self, frames: usize, writes: usize) {
        self.frames_written.inc_by(frames as u64);
        self.socket_writes.inc_by(writes as u64);
    }

    pub fn set_send_queue_bytes(&self, bytes: usize) {
        self.send_queue_bytes.set(bytes as i64);
    }

    // Redis.

    /// A PUBLISH to Redis took `elapsed` and succeeded or not.
    pub fn redis_published(&self, elapsed: Duration, ok: bool) {
        self.redis_publish_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.redis_publish_errors.inc();
        }
    }

    /// The Pub/Sub connection came back after being lost.
    pub fn redis_reconnected(&self) {
        self.redis_reconnects.inc();
    }

    // History and recovery.

    /// A message was stored in history and published.
    pub fn history_appended(&self) {
        self.history_appends.inc();
    }

    /// A history read for `reason` (subscribe, history, api, repair) succeeded or not.
    pub fn history_read(&self, reason: &'static str, ok: bool) {
        self.history_reads
            .with_label_values(&[reason, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// A subscribe with `since` recovered or not.
    pub fn recovery(&self, recovered: bool) {
        let outcome = if recovered {
            "recovered"
        } else {
            "not_recovered"
        };
        self.recoveries.with_label_values(&[outcome]).inc();
    }

    /// `count` messages were delivered from history, `by` a session or the node.
    pub fn replayed(&self, by: &'static str, count: usize) {
        if count > 0 {
            self.replayed.with_label_values(&[by]).inc_by(count as u64);
        }
    }

    /// A gap in the Pub/Sub feed was filled from history.
    pub fn gap_repaired(&self) {
        self.gaps_repaired.inc();
    }

    /// Subscribers of a channel were sent a reset frame.
    pub fn stream_reset(&self) {
        self.stream_resets.inc();
    }

    /// A Pub/Sub message was already delivered by a repair.
    pub fn relay_duplicate(&self) {
        self.relay_duplicates.inc();
    }

    /// Sets whether a Redis link works.
    pub fn redis_link(&self, link: RedisLink, up: bool) {
        self.redis_connected
            .with_label_values(&[link.label()])
            .set(i64::from(up));
    }

    // Presence and the server API.

    /// A presence operation took `elapsed` and succeeded or not.
    pub fn presence(&self, op: PresenceOp, elapsed: Duration, ok: bool) {
        let op = op.label();
        self.presence_ops
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .inc();
        self.presence_duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// A server API request on `route` (a fixed route name) was answered
    /// with `status` after `elapsed`.
    pub fn api_request(&self, route: &'static str, status: StatusCode, elapsed: Duration) {
        self.api_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.api_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    // The subscribe proxy.

    /// The subscribe proxy's backend was asked and answered `result` after `elapsed`.
    pub fn subscribe_proxy(&self, result: ProxyResult, elapsed: Duration) {
        self.proxy_requests
            .with_label_values(&[result.label()])
            .inc();
        self.proxy_duration.observe(elapsed.as_secs_f64());
    }

    /// A subscribe was decided by a cached answer of the backend.
    pub fn subscribe_proxy_cache_hit(&self) {
        self.proxy_cache_hits.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn namespaces_are_bounded_to_the_configured_ones() {
        let metrics = Metrics::new(["chat", "game"], 10);
        assert_eq!(metrics.namespace_label("chat:lobby"), "chat");
        assert_eq!(metrics.namespace_label("game:1:2"), "game");
        assert_eq!(metrics.namespace_label("news:today"), OTHER_NAMESPACE);
        assert_eq!(metrics.namespace_label("lobby"), OTHER_NAMESPACE);
        assert_eq!(metrics.namespace_label("chatty:x"), OTHER_NAMESPACE);
        for n in 0..100 {
            metrics.published(&format!("user{n}:inbox"), 10);
        }
        metrics.published("chat:lobby", 5);
        let text = metrics.render(false);
        assert_eq!(
            value(
                &text,
                "switchboard_messages_published_total{namespace=\"other\"}"
            ),
            Some(100.0)
        );
        assert_eq!(
            value(
                &text,
                "switchboard_messages_published_bytes_total{namespace=\"chat\"}"
            ),
            Some(5.0)
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("switchboard_messages_published_total{"))
            .count();
        assert_eq!(series, 3, "chat, game and other only:\n{text}");
        assert!(!text.contains("user1"), "no channel name is a label");
    }

    #[test]
    fn an_empty_namespace_is_never_its_own_label() {
        let metrics = Metrics::new([""], 1);
        assert_eq!(metrics.namespace_label("lobby"), OTHER_NAMESPACE);
        assert_eq!(metrics.namespace_label(":x"), OTHER_NAMESPACE);
    }

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

    #[test]
    fn counts_sessions_commands_and_fanout() {
        let metrics = Metrics::default();
        {
            let _open = metrics.session_opened();
            assert_eq!(
                value(&metrics.render(false), "switchboard_connections_open"),
                Some(1.0)
            );
        }
        metrics.session_closed(Closed::Server(close::SLOW_CONSUMER));
        metrics.session_closed(Closed::Client);
        metrics.command("publish", None);
        metrics.command("publish", Some(ErrorCode::Forbidden));
        metrics.command("nonsense", None);
        let timer = metrics.fanout();
        timer.queued();
        timer.queued();
        timer.finish("x", 7, 2, 1);
        let text = metrics.render(true);
        let expect = [
            ("switchboard_connections_open", 0.0),
            ("switchboard_node_draining", 1.0),
            ("switchboard_sessions_closed_total{code=\"1013\"}", 1.0),
            ("switchboard_sessions_closed_total{code=\"client\"}", 1.0),
            ("switchboard_slow_consumer_disconnects_total", 1.0),
            (
                "switchboard_commands_total{command=\"publish\",result=\"ok\"}",
                1.0,
            ),
            (
                "switchboard_commands_total{command=\"publish\",result=\"forbidden\"}",
                1.0,
            ),
            (
                "switchboard_messages_delivered_bytes_total{namespace=\"other\"}",
                14.0,
            ),
            (
                "switchboard_messages_dropped_total{namespace=\"other\"}",
                1.0,
            ),
            ("switchboard_delivery_latency_seconds_count", 2.0),
            ("switchboard_fanout_duration_seconds_count", 1.0),
            (
                "switchboard_connections_refused_total{reason=\"draining\"}",
                0.0,
            ),
        ];
        for (series, want) in expect {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
    }
}
