//! The state one gateway node shares between its HTTP handlers and its
//! sessions: configuration, token verifier, hub, broker, presence, the
//! subscribe proxy, the connection cap and the shutdown signal; and the
//! operations both the sessions and the server API run on it (publishing a
//! batch, listing channels).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::value::RawValue;
use switchboard_protocol::{ChannelName, Position};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::backend::subscribe_proxy::SubscribeProxy;
use crate::backend::webhooks;
use crate::broker::redis::RedisBroker;
use crate::broker::{self, Broker, BrokerError, MemoryBroker};
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::ConnectionLimits;
use crate::metrics::webhooks::WebhookMetrics;
use crate::metrics::Metrics;
use crate::occupancy::redis::{EventQueue, RedisOccupancy};
use crate::occupancy::{ChannelCounts, ChannelPage, ChannelSubscribers, ListQuery, Occupancy};
use crate::presence::redis::{HeldEntry, Holdings, RedisPresence};
use crate::presence::{CountedPresence, LocalEntry, MemoryPresence, Presence, Roster};
use crate::redis::health::RedisHealth;
use crate::redis::link::Link;
use crate::redis::shards;
use crate::redis::target::{Mode, Target};

#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub verifier: TokenVerifier,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    /// Connections per user and subscriptions per channel on this node.
    pub occupancy: Arc<Occupancy>,
    /// Per-address and per-user admission limits.
    pub limits: ConnectionLimits,
    /// Asks the backend about subscribes the token does not grant, in
    /// namespaces with `subscribe_proxy` (None when no namespace has one).
    pub subscribe_proxy: Option<SubscribeProxy>,
    /// This node's Prometheus metrics (shared with the hub).
    pub metrics: Arc<Metrics>,
    /// One permit per open session (`max_connections`).
    pub capacity: Arc<Semaphore>,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection and session task, awaited on shutdown.
    pub tasks: TaskTracker,
    /// This process's identity: the node id plus a random run id, so a node
    /// restarted under the same id never mixes its state with its previous
    /// run's. Connection ids and Redis state are keyed by it.
    pub instance: String,
    /// Cancelled after the sessions are gone: stops the broker and lease tasks.
    pub background: CancellationToken,
    /// Cluster mode's state in Redis, retired at a clean exit.
    redis: Option<RedisState>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for dyn Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Broker({})", self.kind())
    }
}

impl std::fmt::Debug for dyn Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presence")
    }
}

/// The hub is what cluster presence rewrites from when Redis lost the
/// node's state (presence keeps no copy of it; the hub and presence sit on
/// the same layer, so the node ties them together).
impl Holdings for Hub {
    fn present(&self) -> Vec<HeldEntry> {
        self.presence_entries()
    }

    fn sessions(&self) -> Vec<(u64, Arc<str>)> {
        self.session_users()
    }
}

/// A single node's presence answers from the hub (it keeps no copy either).
impl Roster for Hub {
    fn present_in(&self, channel: &str) -> Vec<LocalEntry> {
        self.channel_presence(channel)
    }
}

/// What a cluster node keeps in Redis besides messages.
#[derive(Debug)]
struct RedisState {
    presence: Arc<RedisPresence>,
    /// The writer of occupancy (and webhook events).
    occupancy: Arc<RedisOccupancy>,
}

/// `<node_id>.<6 hex digits>`, unique per process.
fn instance_id(node_id: &str) -> String {
    format!("{node_id}.{:06x}", rand::random::<u32>() & 0xff_ffff)
}

impl Node {
    /// A single node on the in-memory broker, with presence read from the
    /// hub's subscriber entries.
    pub fn in_memory(config: Config) -> Result<Arc<Node>, String> {
        let hub = Arc::new(Hub::with_metrics(Arc::new(Metrics::new(
            config.namespace_names(),
            config.max_connections,
        ))));
        let broker = Arc::new(MemoryBroker::new(Arc::clone(&hub)));
        let instance = instance_id(&config.node_id);
        let presence = MemoryPresence::new(Arc::clone(&hub) as Arc<dyn Roster>, instance.clone());
        let limits = ConnectionLimits::new(&config.limits);
        Node::build(
            config,
            hub,
            broker,
            Arc::new(presence),
            instance,
            (limits, Arc::new(Occupancy::single())),
            None,
        )
    }

    /// How long the webhook queue keeps an event: its `max_age`, plus as
    /// long again (at least 10 minutes) for the deliverer to dead-letter it
    /// rather than lose it to trimming.
    fn queue_retention(max_age: std::time::Duration) -> std::time::Duration {
        max_age + max_age.max(std::time::Duration::from_secs(600))
    }

    /// A cluster node on Redis. Starts the Pub/Sub and lease tasks, so it
    /// must be called inside the runtime.
    pub fn cluster(config: Config, target: &Target) -> Result<Arc<Node>, String> {
        let hub = Arc::new(Hub::with_metrics(Arc::new(Metrics::new(
            config.namespace_names(),
            config.max_connections,
        ))));
        let health = Arc::new(RedisHealth::new(Arc::clone(hub.metrics())));
        let link = Link::new(target)?;
        tracing::info!(message = "cluster mode", redis = %target.describe());
        let background = CancellationToken::new();
        if target.mode() == Mode::Cluster {
            shards::start(target.clone(), Arc::clone(&health), background.clone());
        }
        let broker = RedisBroker::start(
            target,
            link.clone(),
            Arc::clone(&hub),
            Arc::clone(&health),
            background.clone(),
        )?;
        let instance = instance_id(&config.node_id);
        // Occupancy reads a user's connections from the admission limits'
        // per-user map and a channel's subscriptions from the hub.
        let limits = ConnectionLimits::new(&config.limits);
        let occupancy = Arc::new(Occupancy::cluster(
            limits.users(),
            Arc::clone(&hub) as Arc<dyn ChannelSubscribers>,
        ));
        let queue = match &config.webhooks {
            None => None,
            Some(hooks) => {
                let metrics = WebhookMetrics::new(hub.metrics().registry(), hooks.urls.len());
                let secret = config
                    .backend_secret
                    .as_deref()
                    .ok_or("webhooks need SWITCHBOARD_BACKEND_SECRET")?;
                webhooks::start(&link, &instance, hooks, secret, &metrics, &background)?;
                Some(EventQueue {
                    grace: hooks.grace,
                    retention: Node::queue_retention(hooks.max_age),
                    groups: hooks.urls.iter().map(webhooks::group_name).collect(),
                    metrics,
                })
            }
        };
        let writer = RedisOccupancy::new(
            link.clone(),
            instance.clone(),
            Arc::clone(&occupancy),
            queue,
        );
        tokio::spawn(Arc::clone(&writer).maintain(background.clone()));
        let presence = RedisPresence::new(
            link,
            config.clone(),
            instance,
            health,
            Arc::clone(&writer),
            Arc::clone(&hub) as Arc<dyn Holdings>,
        );
        tokio::spawn(Arc::clone(&presence).maintain(background.clone()));
        let instance = presence.instance().to_owned();
        Node::build(
            config,
            hub,
            Arc::new(broker),
            Arc::clone(&presence) as Arc<dyn Presence>,
            instance,
            (limits, occupancy),
            Some((
                background,
                RedisState {
                    presence,
                    occupancy: writer,
                },
            )),
        )
    }

    /// A single node on any broker and presence (under a fresh instance id).
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
    ) -> Result<Arc<Node>, String> {
        let instance = instance_id(&config.node_id);
        let limits = ConnectionLimits::new(&config.limits);
        Node::build(
            config,
            hub,
            broker,
            presence,
            instance,
            (limits, Arc::new(Occupancy::single())),
            None,
        )
    }

    fn build(
        config: Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        instance: String,
        // The admission limits, and the occupancy that (in cluster mode)
        // reads their per-user map.
        (limits, occupancy): (ConnectionLimits, Arc<Occupancy>),
        cluster: Option<(CancellationToken, RedisState)>,
    ) -> Result<Arc<Node>, String> {
        let (background, redis) = match cluster {
            Some((background, redis)) => (background, Some(redis)),
            None => (CancellationToken::new(), None),
        };
        let verifier = TokenVerifier::new(&config.jwt)?;
        let metrics = Arc::clone(hub.metrics());
        let subscribe_proxy = match (&config.backend_secret, config.has_subscribe_proxy()) {
            (_, false) => None,
            (Some(secret), true) => Some(SubscribeProxy::new(
                secret,
                config.subscribe_proxy_timeout,
                Arc::clone(&metrics),
            )?),
            // The configuration refuses a proxy without a secret.
            (None, true) => return Err("a subscribe proxy needs a backend secret".into()),
        };
        Ok(Arc::new(Node {
            subscribe_proxy,
            instance,
            background,
            redis,
            occupancy,
            capacity: Arc::new(Semaphore::new(config.max_connections)),
            limits,
            verifier,
            hub,
            broker,
            presence: Arc::new(CountedPresence::new(presence, Arc::clone(&metrics))),
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_session: AtomicU64::new(1),
            config,
        }))
    }

    /// A node-local session number.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.config.max_connections - self.capacity.available_permits()
    }

    /// After the sessions are gone: removes this node's state from Redis and
    /// stops the background tasks.
    pub async fn retire(&self) {
        // This node's counts are zero by now: take its share away (with its
        // users' departures) before the lease goes. Should this fail, the
        // node that reaps this one does it.
        if let Some(redis) = &self.redis {
            if let Err(error) = redis.occupancy.flush().await {
                tracing::warn!(message = "occupancy not written at exit", %error);
            }
            redis.presence.retire().await;
        }
        self.background.cancel();
    }

    /// Publishes many messages, each as a single publish would be (under
    /// its namespace's history policy), and returns each one's outcome in
    /// the same order. They are handed to the broker in list order and
    /// concurrently: one future per message, first polled in list order by
    /// `join_all`, so a broker that enqueues a message on its first poll
    /// keeps list order on every channel and may send them together (on
    /// Redis: batched script calls).
    ///
    /// The join runs outside tokio's cooperative budget: with it, a
    /// semaphore (the memory broker's backlog slot, a pool) answers
    /// `Pending` to whichever future finds the task's budget spent, even
    /// with permits free, and those futures then go in wake order, not
    /// list order (seen as offsets out of order past ~128 messages). Where
    /// a broker really waits, its waiters queue in first-poll order.
    pub async fn publish_all(
        &self,
        messages: &[(&ChannelName, &RawValue)],
    ) -> Vec<Result<Option<Position>, BrokerError>> {
        let broker = &*self.broker;
        let all = join_all(messages.iter().map(|&(channel, data)| {
            let policy = self.config.namespace(channel.namespace()).history();
            broker::publish_message(broker, channel.as_str(), data, policy)
        }));
        tokio::task::coop::unconstrained(all).await
    }

    /// A page of the channels with subscribers (over the cluster in
    /// cluster mode).
    pub async fn list_channels(&self, query: &ListQuery) -> Result<ChannelPage, String> {
        match &self.redis {
            Some(redis) => redis.occupancy.list(query).await,
            None => Ok(self.hub.list(query)),
        }
    }

    /// One channel's subscribers and distinct users.
    pub async fn channel_counts(&self, channel: &str) -> Result<ChannelCounts, String> {
        match &self.redis {
            Some(redis) => redis.occupancy.channel(channel).await,
            None => Ok(self.hub.counts(channel)),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
