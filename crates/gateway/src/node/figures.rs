//! This node's figures for the admin UI's node list: version, start time,
//! connections, subscriptions, messages in and out per second, the Redis
//! mode and its health, and whether it drains.
//!
//! In cluster mode the lease task writes them to Redis with every renewal
//! (once a second, `presence::redis::Report`), so any node can list every
//! live node; a single node answers with its own, read from memory. The
//! rates are computed from the node's own counters (`Metrics::totals`:
//! frames published to the broker, frames queued to local subscribers)
//! over the time since the previous sample, at least half a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::presence::redis::Report;
use crate::redis::health::RedisHealth;
use crate::redis::target::Mode;

/// A rate is taken over at least this long; a sample sooner reuses it.
const MIN_WINDOW: Duration = Duration::from_millis(500);

/// One node's figures, as written to Redis (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The configured node id, as the welcome frame names it.
    pub node_id: String,
    /// The process's instance id (`<node_id>.<run>`), as connection ids and
    /// Redis name it: tells this node's figures from a restarted
    /// predecessor's under the same id.
    pub instance: String,
    pub version: String,
    /// Unix seconds.
    pub started_at: u64,
    pub connections: u64,
    pub subscriptions: u64,
    pub messages_in_per_s: f64,
    pub messages_out_per_s: f64,
    pub redis: RedisFigures,
    pub draining: bool,
}

/// Which Redis the node uses, and whether it is healthy now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisFigures {
    /// `none`, `single`, `sentinel` or `cluster`.
    pub mode: String,
    pub healthy: bool,
}

/// The counters at the last sample, and the rates it found.
#[derive(Debug)]
struct Sample {
    at: Instant,
    published: u64,
    delivered: u64,
    in_per_s: f64,
    out_per_s: f64,
}

/// What a node's figures are read from.
pub struct Figures {
    node_id: String,
    instance: String,
    started_at: u64,
    hub: Arc<Hub>,
    redis: Option<(Mode, Arc<RedisHealth>)>,
    shutdown: CancellationToken,
    last: Mutex<Sample>,
}

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Figures")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A rate in messages per second, to a tenth.
fn per_second(count: u64, over: Duration) -> f64 {
    (count as f64 / over.as_secs_f64() * 10.0).round() / 10.0
}

impl Figures {
    /// The figures of the node `node_id` running as `instance`, whose
    /// counters are its hub's metrics; `redis` is its Redis mode and health
    /// (None: single node).
    pub fn new(
        node_id: String,
        instance: String,
        hub: Arc<Hub>,
        redis: Option<(Mode, Arc<RedisHealth>)>,
        shutdown: CancellationToken,
    ) -> Figures {
        let totals = hub.metrics().totals();
        Figures {
            node_id,
            instance,
            started_at: unix_now(),
            hub,
            redis,
            shutdown,
            last: Mutex::new(Sample {
                at: Instant::now(),
                published: totals.published,
                delivered: totals.delivered,
                in_per_s: 0.0,
                out_per_s: 0.0,
            }),
        }
    }

    /// The figures now (a new rate sample when the last is old enough).
    pub fn snapshot(&self) -> Snapshot {
        let totals = self.hub.metrics().totals();
        let (in_per_s, out_per_s) = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let over = now.duration_since(last.at);
            if over >= MIN_WINDOW {
                last.in_per_s = per_second(totals.published.saturating_sub(last.published), over);
                last.out_per_s = per_second(totals.delivered.saturating_sub(last.delivered), over);
                last.at = now;
                last.published = totals.published;
                last.delivered = totals.delivered;
            }
            (last.in_per_s, last.out_per_s)
        };
        let redis = match &self.redis {
            None => RedisFigures {
                mode: "none".into(),
                healthy: true,
            },
            Some((mode, health)) => RedisFigures {
                mode: match mode {
                    Mode::Server => "single",
                    Mode::Sentinel => "sentinel",
                    Mode::Cluster => "cluster",
                }
                .into(),
                healthy: health.problem().is_none(),
            },
        };
        Snapshot {
            node_id: self.node_id.clone(),
            instance: self.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.started_at,
            connections: self.hub.session_count() as u64,
            subscriptions: totals.subscriptions,
            messages_in_per_s: in_per_s,
            messages_out_per_s: out_per_s,
            redis,
            draining: self.shutdown.is_cancelled(),
        }
    }
}

/// The lease task writes these figures with every renewal.
impl Report for Figures {
    fn report(&self) -> String {
        serde_json::to_string(&self.snapshot()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::SessionHandle;

    #[test]
    fn a_single_nodes_figures() {
        let hub = Arc::new(Hub::new());
        let shutdown = CancellationToken::new();
        let figures = Figures::new(
            "gw".into(),
            "gw.abc123".into(),
            Arc::clone(&hub),
            None,
            shutdown.clone(),
        );
        let session = Arc::new(SessionHandle::new(1, Arc::from("u"), 1024));
        hub.register(&session);
        let snapshot = figures.snapshot();
        assert_eq!(
            (snapshot.node_id.as_str(), snapshot.instance.as_str()),
            ("gw", "gw.abc123")
        );
        assert_eq!(snapshot.connections, 1);
        assert_eq!(
            snapshot.redis,
            RedisFigures {
                mode: "none".into(),
                healthy: true
            }
        );
        assert!(!snapshot.draining);
        shutdown.cancel();
        assert!(figures.snapshot().draining);
        let text = figures.report();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            Snapshot {
                draining: true,
                ..snapshot
            }
        );
    }

    #[test]
    fn rates_are_per_second_to_a_tenth() {
        assert_eq!(per_second(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_second(1, Duration::from_secs(3)), 0.3);
        assert_eq!(per_second(0, Duration::from_secs(1)), 0.0);
    }
}
