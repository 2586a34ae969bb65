//! The subscribe proxy (`backend::subscribe_proxy`): how the application's
//! backend answered, how long it took, and how many subscribes a cached
//! answer decided. Every result is exposed at 0 from the start.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};

use crate::metrics::registry::{counter, counter_vec, histogram};

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

/// The subscribe proxy metrics of one node.
#[derive(Debug)]
pub(super) struct SubscribeProxyMetrics {
    requests: IntCounterVec,
    cache_hits: IntCounter,
    duration: Histogram,
}

impl SubscribeProxyMetrics {
    pub(super) fn new(r: &Registry) -> SubscribeProxyMetrics {
        let requests = counter_vec(
            r,
            "switchboard_subscribe_proxy_requests_total",
            "Subscribes asked of the subscribe proxy's backend, by result: allow, deny or error (no usable answer in time; the subscribe was refused with unavailable).",
            &["result"],
        );
        for result in ProxyResult::ALL {
            requests.with_label_values(&[result.label()]);
        }
        SubscribeProxyMetrics {
            requests,
            cache_hits: counter(
                r,
                "switchboard_subscribe_proxy_cache_hits_total",
                "Subscribes decided by a cached answer of the subscribe proxy's backend, without asking it.",
            ),
            duration: histogram(
                r,
                "switchboard_subscribe_proxy_duration_seconds",
                "Time of a request to the subscribe proxy's backend, errors and timeouts included.",
                BACKEND_BUCKETS,
            ),
        }
    }

    pub(super) fn answered(&self, result: ProxyResult, elapsed: Duration) {
        self.requests.with_label_values(&[result.label()]).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub(super) fn cache_hit(&self) {
        self.cache_hits.inc();
    }
}
