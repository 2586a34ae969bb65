//! Prometheus metrics of one gateway node, served as text on `/metrics`.
//!
//! Operators answer every incident question from here: how many clients,
//! how fast messages flow, whether anything is dropped, whether Redis is
//! healthy, who is refused and why. Each [`Node`](crate::node::Node) owns one
//! [`Metrics`] with its own registry (never the process-wide default), so
//! several nodes in one process, as in tests, never mix their numbers.
//!
//! Every call site is one typed method call on [`Metrics`]. Label values
//! come only from small fixed sets (reasons, close codes, commands, routes,
//! statuses) or from the channel namespaces configured in `[namespaces.*]`;
//! every other namespace is counted as `other`. A channel name, user or
//! connection id is never a label. The per-message paths (fan-out, publish)
//! use children resolved at start-up, so counting costs a few atomic
//! additions and no lock. docs/operations.md lists every metric.
//!
//! The metrics are defined by area, each with its label types: `sessions`
//! (connections, commands, frames written), `channels` (the per-namespace
//! message flow and fan-out), `redis_links`, `history`, `presence`, `api`
//! (the server API), `subscribe_proxy`, and `webhooks` (a handle of its
//! own, built only when webhooks are on). This module holds them together
//! in one registry and keeps the one method per event that callers use;
//! `registry` has the constructors every area shares.

pub mod api;
pub mod channels;
pub mod formats;
pub mod history;
pub mod presence;
pub mod redis_links;
mod registry;
pub mod sessions;
pub mod subscribe_proxy;
pub mod webhooks;

use std::time::Duration;

use http::StatusCode;
use prometheus::{IntGauge, Registry, TextEncoder};
use switchboard_protocol::ErrorCode;

use crate::metrics::api::ApiMetrics;
use crate::metrics::channels::{ChannelMetrics, FanoutTimer};
use crate::metrics::history::HistoryMetrics;
use crate::metrics::presence::{PresenceMetrics, PresenceOp};
use crate::metrics::redis_links::{RedisLink, RedisLinkMetrics};
use crate::metrics::registry::{gauge, gauge_vec};
use crate::metrics::sessions::{Closed, OpenSession, Refusal, SessionMetrics, Transport};
use crate::metrics::subscribe_proxy::{ProxyResult, SubscribeProxyMetrics};

/// The `Content-Type` of the text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric of one node, in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    draining: IntGauge,
    sessions: SessionMetrics,
    formats: formats::FormatMetrics,
    channels: ChannelMetrics,
    redis_links: RedisLinkMetrics,
    history: HistoryMetrics,
    presence: PresenceMetrics,
    api: ApiMetrics,
    subscribe_proxy: SubscribeProxyMetrics,
}

impl Default for Metrics {
    /// Metrics with no configured namespace and no connection cap, for
    /// parts used on their own (unit tests).
    fn default() -> Metrics {
        Metrics::new(std::iter::empty::<&str>(), 0)
    }
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
            draining: gauge(
                r,
                "switchboard_node_draining",
                "1 while the node is shutting down and refusing new connections.",
            ),
            sessions: SessionMetrics::new(r, max_connections),
            formats: formats::FormatMetrics::new(r),
            channels: ChannelMetrics::new(r, namespaces),
            redis_links: RedisLinkMetrics::new(r),
            history: HistoryMetrics::new(r),
            presence: PresenceMetrics::new(r),
            api: ApiMetrics::new(r),
            subscribe_proxy: SubscribeProxyMetrics::new(r),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(error) = metrics.registry.register(Box::new(process)) {
                tracing::warn!(message = "process metrics unavailable", %error);
            }
        }
        metrics
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

    // Connections and sessions (`sessions`).

    /// A handshake was accepted.
    pub fn accepted(&self) {
        self.sessions.accepted();
    }

    /// A handshake was refused.
    pub fn refused(&self, reason: Refusal) {
        self.sessions.refused(reason);
    }

    /// A session started; it counts as open until the guard drops.
    pub fn session_opened(&self) -> OpenSession {
        self.sessions.opened()
    }

    /// A session ended; 1013 also counts as a slow-consumer disconnect.
    pub fn session_closed(&self, how: Closed) {
        self.sessions.closed(how);
    }

    // The methods called per message are `#[inline]`: each only forwards
    // to its area, and the call costs nothing more than before the split.

    /// A command of `bytes` arrived from a client (a WebSocket text frame,
    /// or a stream's HTTP command).
    #[inline]
    pub fn client_message(&self, transport: Transport, bytes: usize) {
        self.sessions.client_message(transport, bytes);
    }

    /// A session over `transport` opened (counted until
    /// [`Self::transport_closed`]).
    pub fn transport_opened(&self, transport: Transport) {
        self.sessions.transport_opened(transport);
    }

    /// A session over `transport` ended.
    pub fn transport_closed(&self, transport: Transport) {
        self.sessions.transport_closed(transport);
    }

    /// A session over `transport` wrote `frames` frames (or events) of
    /// `bytes` bytes on the wire.
    #[inline]
    pub fn sent(&self, transport: Transport, frames: usize, bytes: usize) {
        self.sessions.sent(transport, frames, bytes);
    }

    /// A WebSocket session of `format` wrote `plain` bytes of uncompressed
    /// frames and `compressed` bytes of compressed ones (headers included).
    pub fn wire_sent(&self, format: formats::Format, plain: usize, compressed: usize) {
        self.formats.sent(format, plain, compressed);
    }

    /// A WebSocket data frame of `bytes` on the wire came in.
    pub fn wire_received(&self, format: formats::Format, compressed: bool, bytes: usize) {
        self.formats.received(format, compressed, bytes);
    }

    /// A message of `raw` bytes was deflated to (or inflated from)
    /// `compressed` bytes.
    pub fn deflated(&self, direction: formats::Direction, raw: usize, compressed: usize) {
        self.formats.deflated(direction, raw, compressed);
    }

    /// A client command of type `command` (a protocol command type, or
    /// `invalid`) was answered with `error` (None: success).
    #[inline]
    pub fn command(&self, command: &str, error: Option<ErrorCode>) {
        self.sessions.command(command, error);
    }

    /// A client command was refused by the per-connection message rate.
    pub fn command_rate_limited(&self) {
        self.sessions.command_rate_limited();
    }

    /// A session wrote `frames` frames in `writes` system calls.
    #[inline]
    pub fn frames_written(&self, frames: usize, writes: usize) {
        self.sessions.frames_written(frames, writes);
    }

    /// A session held a frame back to write it with the ones that follow.
    #[inline]
    pub fn coalesce_wait(&self) {
        self.sessions.coalesce_wait();
    }

    /// The bytes waiting in every session's send queue, read from the hub
    /// at scrape time (so the per-frame path touches no shared counter).
    pub fn set_send_queue_bytes(&self, bytes: usize) {
        self.sessions.set_send_queue_bytes(bytes);
    }

    // Channels and the message flow (`channels`).

    /// The namespace label a channel is counted under.
    pub fn namespace_label<'a>(&'a self, channel: &'a str) -> &'a str {
        self.channels.namespace_label(channel)
    }

    /// A subscription of a session to `channel` started.
    pub fn subscribed(&self, channel: &str) {
        self.channels.subscribed(channel);
    }

    /// A subscription of a session to `channel` ended.
    pub fn unsubscribed(&self, channel: &str) {
        self.channels.unsubscribed(channel);
    }

    /// `channel` got its first local subscriber.
    pub fn channel_opened(&self, channel: &str) {
        self.channels.opened(channel);
    }

    /// `channel` lost its last local subscriber.
    pub fn channel_closed(&self, channel: &str) {
        self.channels.closed(channel);
    }

    /// A frame of `bytes` for `channel` was published to the broker.
    #[inline]
    pub fn published(&self, channel: &str, bytes: usize) {
        self.channels.published(channel, bytes);
    }

    /// The flow summed over every namespace.
    pub fn totals(&self) -> channels::Totals {
        self.channels.totals()
    }

    /// Starts timing the fan-out of one frame the broker just handed over.
    #[inline]
    pub fn fanout(&self) -> FanoutTimer<'_> {
        self.channels.fanout()
    }

    // Redis (`redis_links`).

    /// A PUBLISH to Redis took `elapsed` and succeeded or not.
    #[inline]
    pub fn redis_published(&self, elapsed: Duration, ok: bool) {
        self.redis_links.published(elapsed, ok);
    }

    /// One history script call stored and published `messages`.
    pub fn redis_batched(&self, messages: usize) {
        self.redis_links.batched(messages);
    }

    /// The Pub/Sub connection came back after being lost.
    pub fn redis_reconnected(&self) {
        self.redis_links.reconnected();
    }

    /// Sets whether a Redis link works.
    pub fn redis_link(&self, link: RedisLink, up: bool) {
        self.redis_links.set(link, up);
    }

    // History and recovery (`history`).

    /// A message was stored in history and published.
    #[inline]
    pub fn history_appended(&self) {
        self.history.appended();
    }

    /// A history read for `reason` (subscribe, history, api, repair) succeeded or not.
    pub fn history_read(&self, reason: &'static str, ok: bool) {
        self.history.read(reason, ok);
    }

    /// How a subscribe with `since` ended.
    pub fn recovery(&self, outcome: history::RecoveryOutcome) {
        self.history.recovery(outcome);
    }

    /// `count` messages were delivered from history, `by` a session or the node.
    pub fn replayed(&self, by: &'static str, count: usize) {
        self.history.replayed(by, count);
    }

    /// A gap in the Pub/Sub feed was filled from history.
    pub fn gap_repaired(&self) {
        self.history.gap_repaired();
    }

    /// Subscribers of a channel were sent a reset frame.
    pub fn stream_reset(&self) {
        self.history.stream_reset();
    }

    /// A Pub/Sub message was already delivered by a repair.
    pub fn relay_duplicate(&self) {
        self.history.relay_duplicate();
    }

    // Presence (`presence`), the server API (`api`) and the subscribe proxy
    // (`subscribe_proxy`).

    /// A presence operation took `elapsed` and succeeded or not.
    pub fn presence(&self, op: PresenceOp, elapsed: Duration, ok: bool) {
        self.presence.observe(op, elapsed, ok);
    }

    /// A server API request on `route` (a fixed route name) was answered
    /// with `status` after `elapsed`.
    pub fn api_request(&self, route: &'static str, status: StatusCode, elapsed: Duration) {
        self.api.request(route, status, elapsed);
    }

    /// The subscribe proxy's backend was asked and answered `result` after `elapsed`.
    pub fn subscribe_proxy(&self, result: ProxyResult, elapsed: Duration) {
        self.subscribe_proxy.answered(result, elapsed);
    }

    /// A subscribe was decided by a cached answer of the backend.
    pub fn subscribe_proxy_cache_hit(&self) {
        self.subscribe_proxy.cache_hit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::channels::OTHER_NAMESPACE;
    use switchboard_protocol::close;

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
