//! The node's links to Redis: whether each works, how often the Pub/Sub
//! connection came back, the round trip of every PUBLISH and how many
//! messages each history script call carried.
//!
//! `redis::health` sets the link gauges (both down until shown to work);
//! the Redis broker counts its publishes and reconnects.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGaugeVec, Registry};

use crate::metrics::registry::{counter, gauge_vec, histogram, IO_BUCKETS};

/// Messages per history script call.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Which Redis link a connection-state gauge describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisLink {
    /// The node's dedicated Pub/Sub connection.
    PubSub,
    /// Commands through the shared link, as shown by the lease renewal each second.
    Commands,
    /// On a Redis Cluster: every slot has a primary that answers (`redis::shards`).
    Shards,
}

impl RedisLink {
    pub fn label(self) -> &'static str {
        match self {
            RedisLink::PubSub => "pubsub",
            RedisLink::Commands => "commands",
            RedisLink::Shards => "shards",
        }
    }
}

/// The Redis link metrics of one node.
#[derive(Debug)]
pub(super) struct RedisLinkMetrics {
    publish_duration: Histogram,
    publish_errors: IntCounter,
    publish_batch: Histogram,
    reconnects: IntCounter,
    connected: IntGaugeVec,
}

impl RedisLinkMetrics {
    pub(super) fn new(r: &Registry) -> RedisLinkMetrics {
        RedisLinkMetrics {
            publish_duration: histogram(
                r,
                "switchboard_redis_publish_duration_seconds",
                "Time from handing a message to Redis (PUBLISH, or the history script) to its answer, including the wait for the call before it on a channel with history.",
                IO_BUCKETS,
            ),
            publish_errors: counter(
                r,
                "switchboard_redis_publish_errors_total",
                "PUBLISH commands to Redis that failed or timed out (the message was not published).",
            ),
            publish_batch: histogram(
                r,
                "switchboard_redis_publish_batch_messages",
                "Messages stored and published by one history script call: the publishes that arrived while the call before was in flight.",
                BATCH_BUCKETS,
            ),
            reconnects: counter(
                r,
                "switchboard_redis_pubsub_reconnects_total",
                "Times the Pub/Sub connection was re-established after it was lost.",
            ),
            connected: gauge_vec(
                r,
                "switchboard_redis_connected",
                "1 when the Redis link works, 0 when not: pubsub (the Pub/Sub connection), commands (the last lease renewal) or, on a Redis Cluster, shards (every slot has a primary that answers).",
                &["link"],
            ),
        }
    }

    pub(super) fn published(&self, elapsed: Duration, ok: bool) {
        self.publish_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.publish_errors.inc();
        }
    }

    pub(super) fn batched(&self, messages: usize) {
        self.publish_batch.observe(messages as f64);
    }

    pub(super) fn reconnected(&self) {
        self.reconnects.inc();
    }

    pub(super) fn set(&self, link: RedisLink, up: bool) {
        self.connected
            .with_label_values(&[link.label()])
            .set(i64::from(up));
    }
}
