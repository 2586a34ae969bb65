//! Whether this node's Redis links work: the Pub/Sub connection (the
//! broker's), the commands connection (presence's lease renewal) and, on a
//! Redis Cluster, whether every slot has a primary that answers (`shards`),
//! for `/readyz` and the `switchboard_redis_connected` gauges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::redis_links::RedisLink;
use crate::metrics::Metrics;

/// Connectivity shared by the broker, presence and the shard check, for
/// `/readyz` and the `switchboard_redis_connected` gauges.
#[derive(Debug)]
pub struct RedisHealth {
    pubsub_up: AtomicBool,
    lease_ok: AtomicBool,
    /// Why the Pub/Sub connection broke or could not be made, last.
    pubsub_error: Mutex<String>,
    /// The last failed command (the lease renewal, a publish).
    command_error: Mutex<String>,
    /// On a Redis Cluster: what the shard check found wrong, `None` when
    /// every slot has a primary that answers (and in the other modes).
    shards: Mutex<Option<String>>,
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
            pubsub_error: Mutex::default(),
            command_error: Mutex::default(),
            shards: Mutex::default(),
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

    /// On a Redis Cluster: the slots without a primary that answers, and
    /// why (`None`: every slot has one).
    pub fn set_shards(&self, problem: Option<String>) {
        self.metrics
            .redis_link(RedisLink::Shards, problem.is_none());
        *self.shards.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Why the Pub/Sub connection is down, for `/readyz`.
    pub fn record_pubsub_error(&self, error: impl std::fmt::Display) {
        *self.pubsub_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
    }

    /// Why a command failed (the lease renewal, a publish), for `/readyz`
    /// while the lease is not renewed.
    pub fn record_command_error(&self, error: impl std::fmt::Display) {
        *self.command_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
    }

    /// `None` when every link works; else what is wrong, for `/readyz`: a
    /// shard without a primary first (the cause, when a shard failed), then
    /// a broken link.
    pub fn problem(&self) -> Option<String> {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (shards, self.link_problem()) {
            (None, None) => None,
            (Some(problem), None) | (None, Some(problem)) => Some(problem),
            (Some(shards), Some(link)) => Some(format!("{shards}; {link}")),
        }
    }

    /// What is wrong with the Pub/Sub connection or the lease.
    fn link_problem(&self) -> Option<String> {
        let pubsub = self.pubsub_up.load(Ordering::Relaxed);
        let lease = self.lease_ok.load(Ordering::Relaxed);
        if pubsub && lease {
            return None;
        }
        let (what, last) = if pubsub {
            ("redis lease not renewed", &self.command_error)
        } else {
            ("redis pub/sub disconnected", &self.pubsub_error)
        };
        let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(if last.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {last}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> RedisHealth {
        RedisHealth::new(Arc::new(Metrics::new(Vec::<&str>::new(), 10)))
    }

    #[test]
    fn a_shard_without_a_primary_comes_first_and_each_link_gives_its_own_error() {
        let health = health();
        health.set_pubsub(true);
        health.set_lease(true);
        assert_eq!(health.problem(), None);
        health.set_shards(Some("redis cluster: slots 0-5460: no primary".into()));
        assert_eq!(
            health.problem().as_deref(),
            Some("redis cluster: slots 0-5460: no primary")
        );
        health.set_pubsub(false);
        health.record_command_error("Moved: 10597 127.0.0.1:22604");
        health.record_pubsub_error("a redis cluster shard connection dropped; resubscribing");
        assert_eq!(
            health.problem().as_deref(),
            Some("redis cluster: slots 0-5460: no primary; redis pub/sub disconnected: a redis cluster shard connection dropped; resubscribing")
        );
        health.set_shards(None);
        health.set_pubsub(true);
        assert_eq!(health.problem(), None);
        health.set_lease(false);
        assert_eq!(
            health.problem().as_deref(),
            Some("redis lease not renewed: Moved: 10597 127.0.0.1:22604")
        );
    }
}
