//! The node's links to Redis: whether each works, how often the Pub/Sub
//! connection came back, and the round trip of every PUBLISH.
//!
//! `redis::health` sets the link gauges (both down until shown to work);
//! the Redis broker counts its publishes and reconnects.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGaugeVec, Registry};

use crate::metrics::registry::{counter, gauge_vec, histogram, IO_BUCKETS};

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

/// The Redis link metrics of one node.
#[derive(Debug)]
pub(super) struct RedisLinkMetrics {
    publish_duration: Histogram,
    publish_errors: IntCounter,
    reconnects: IntCounter,
    connected: IntGaugeVec,
}

impl RedisLinkMetrics {
    pub(super) fn new(r: &Registry) -> RedisLinkMetrics {
        RedisLinkMetrics {
            publish_duration: histogram(
                r,
                "switchboard_redis_publish_duration_seconds",
                "Time of a PUBLISH to Redis, including waiting for a pooled connection.",
                IO_BUCKETS,
            ),
            publish_errors: counter(
                r,
                "switchboard_redis_publish_errors_total",
                "PUBLISH commands to Redis that failed or timed out (the message was not published).",
            ),
            reconnects: counter(
                r,
                "switchboard_redis_pubsub_reconnects_total",
                "Times the Pub/Sub connection was re-established after it was lost.",
            ),
            connected: gauge_vec(
                r,
                "switchboard_redis_connected",
                "1 when the Redis link works, 0 when not: pubsub (the Pub/Sub connection) or commands (the last lease renewal).",
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

    pub(super) fn reconnected(&self) {
        self.reconnects.inc();
    }

    pub(super) fn set(&self, link: RedisLink, up: bool) {
        self.connected
            .with_label_values(&[link.label()])
            .set(i64::from(up));
    }
}
