//! Whether this node's Redis links work: the Pub/Sub connection (the
//! broker's) and the commands connection (presence's lease renewal), for
//! `/readyz` and the `switchboard_redis_connected` gauges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::redis_links::RedisLink;
use crate::metrics::Metrics;

/// Connectivity shared by the broker and presence, for `/readyz` and the
/// `switchboard_redis_connected` gauges.
#[derive(Debug)]
pub struct RedisHealth {
    pubsub_up: AtomicBool,
    lease_ok: AtomicBool,
    last_error: Mutex<String>,
    metrics: Arc<Metrics>,
}

impl RedisHealth {
    /// Both links down until they are shown to work.
    pub fn new(metrics: Arc<Metrics>) -> RedisHealth {
        metrics.redis_link(RedisLink::PubSub, false);
        metrics.redis_link(RedisLink::Commands, false);
        RedisHealth {
            pubsub_up: AtomicBool::new(false),
            lease_ok: AtomicBool::new(false),
            last_error: Mutex::default(),
            metrics,
        }
    }

    pub fn set_pubsub(&self, up: bool) {
        self.pubsub_up.store(up, Ordering::Relaxed);
        self.metrics.redis_link(RedisLink::PubSub, up);
    }

    pub fn set_lease(&self, ok: bool) {
        self.lease_ok.store(ok, Ordering::Relaxed);
        self.metrics.redis_link(RedisLink::Commands, ok);
    }

    pub fn record_error(&self, error: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
    }

    /// `None` when both links work; else what is wrong, for `/readyz`.
    pub fn problem(&self) -> Option<String> {
        let pubsub = self.pubsub_up.load(Ordering::Relaxed);
        let lease = self.lease_ok.load(Ordering::Relaxed);
        if pubsub && lease {
            return None;
        }
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let what = if pubsub {
            "redis lease not renewed"
        } else {
            "redis pub/sub disconnected"
        };
        Some(if last.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {last}")
        })
    }
}
