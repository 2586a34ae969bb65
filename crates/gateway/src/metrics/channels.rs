//! The message flow per channel namespace: frames published, received from
//! the broker, queued to subscribers and dropped, the subscriptions and
//! local channels, and the timing of each fan-out.
//!
//! A namespace is a label only when it is configured in `[namespaces.*]`;
//! every other channel counts as [`OTHER_NAMESPACE`], so the series stay
//! bounded whatever channel names clients use. The children of each label
//! are resolved at start-up (a `Flow` each), so the per-message paths (publish,
//! fan-out) cost a map lookup and a few atomic additions, and no lock.

use std::collections::HashMap;
use std::time::Instant;

use prometheus::{Histogram, IntCounter, IntGauge, Registry};
use switchboard_protocol::channel::namespace;

use crate::metrics::registry::{counter_vec, gauge_vec, histogram};

/// The namespace label of channels whose namespace is not configured.
pub const OTHER_NAMESPACE: &str = "other";

/// Buckets for in-process work (fan-out, queueing): 1 µs to 100 ms.
const FAST_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01, 0.025, 0.1,
];

/// The node's message flow summed over its namespaces (the admin UI's
/// node figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Frames this node published to the broker (`messages in`).
    pub published: u64,
    /// Frames queued to local subscribers (`messages out`).
    pub delivered: u64,
    /// Open subscriptions of the node's sessions.
    pub subscriptions: u64,
}

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

/// Collects the fan-out of one message; see
/// [`Metrics::fanout`](crate::metrics::Metrics::fanout).
#[derive(Debug)]
pub struct FanoutTimer<'a> {
    metrics: &'a ChannelMetrics,
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

/// The per-namespace metrics of one node.
#[derive(Debug)]
pub(super) struct ChannelMetrics {
    flows: HashMap<Box<str>, Flow>,
    other: Flow,
    fanout_duration: Histogram,
    delivery_latency: Histogram,
}

impl ChannelMetrics {
    /// Registers the flow metrics, with one label per configured namespace
    /// (an empty name is never its own label) and [`OTHER_NAMESPACE`].
    pub(super) fn new<'a>(
        r: &Registry,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> ChannelMetrics {
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

        ChannelMetrics {
            flows,
            other,
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
        }
    }

    fn flow(&self, channel: &str) -> &Flow {
        self.flows.get(namespace(channel)).unwrap_or(&self.other)
    }

    pub(super) fn namespace_label<'a>(&'a self, channel: &'a str) -> &'a str {
        let ns = namespace(channel);
        match self.flows.get_key_value(ns) {
            Some((label, _)) => label,
            None => OTHER_NAMESPACE,
        }
    }

    pub(super) fn subscribed(&self, channel: &str) {
        self.flow(channel).subscriptions.inc();
    }

    pub(super) fn unsubscribed(&self, channel: &str) {
        self.flow(channel).subscriptions.dec();
    }

    pub(super) fn opened(&self, channel: &str) {
        self.flow(channel).channels.inc();
    }

    pub(super) fn closed(&self, channel: &str) {
        self.flow(channel).channels.dec();
    }

    pub(super) fn published(&self, channel: &str, bytes: usize) {
        let flow = self.flow(channel);
        flow.published.inc();
        flow.published_bytes.inc_by(bytes as u64);
    }

    /// Every namespace's frames published and delivered, and the open
    /// subscriptions, summed.
    pub(super) fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for flow in self.flows.values().chain(std::iter::once(&self.other)) {
            totals.published += flow.published.get();
            totals.delivered += flow.delivered.get();
            totals.subscriptions += flow.subscriptions.get().max(0) as u64;
        }
        totals
    }

    pub(super) fn fanout(&self) -> FanoutTimer<'_> {
        FanoutTimer {
            metrics: self,
            started: Instant::now(),
            latency: self.delivery_latency.local(),
        }
    }
}
