//! Presence operations by operation and result, and how long each took.
//! `presence::CountedPresence` counts every call of the node's presence,
//! in memory or in Redis.

use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, Registry};

use crate::metrics::registry::{counter_vec, histogram_vec, IO_BUCKETS};

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

/// The presence metrics of one node.
#[derive(Debug)]
pub(super) struct PresenceMetrics {
    ops: IntCounterVec,
    duration: HistogramVec,
}

impl PresenceMetrics {
    pub(super) fn new(r: &Registry) -> PresenceMetrics {
        PresenceMetrics {
            ops: counter_vec(
                r,
                "switchboard_presence_operations_total",
                "Presence operations by operation and result (ok or error).",
                &["op", "result"],
            ),
            duration: histogram_vec(
                r,
                "switchboard_presence_operation_duration_seconds",
                "Time of a presence operation.",
                &["op"],
                IO_BUCKETS,
            ),
        }
    }

    pub(super) fn observe(&self, op: PresenceOp, elapsed: Duration, ok: bool) {
        let op = op.label();
        self.ops
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .inc();
        self.duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }
}
