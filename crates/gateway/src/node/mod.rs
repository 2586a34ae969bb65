//! The state one gateway node shares between its HTTP handlers and its
//! sessions: configuration, token verifier, hub, broker, presence, the
//! subscribe proxy, the connection cap and the shutdown signal; and the
//! operations both the sessions and the server API run on it (publishing a
//! batch, listing channels, and the admin UI's node list and a user's
//! connections, over the cluster in cluster mode).
//!
//! `figures`: what the node reports about itself for the admin UI.

pub mod figures;

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
use crate::presence::redis::{HeldEntry, Holdings, RedisPresence, Report};
use crate::presence::{CountedPresence, LocalEntry, MemoryPresence, Presence, Roster};
use crate::redis::health::RedisHealth;
use crate::redis::link::Link;
use crate::redis::shards;
use crate::redis::target::{Mode, Target};
use figures::{unix_now, Figures, Snapshot};

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
    /// This node's figures (the admin UI's node list).
    pub figures: Arc<Figures>,
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

/// One node in the admin UI's node list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ListedNode {
    pub node_id: String,
    pub version: String,
    pub started_at: u64,
    pub uptime_s: u64,
    pub connections: u64,
    pub subscriptions: u64,
    pub messages_in_per_s: f64,
    pub messages_out_per_s: f64,
    pub redis: figures::RedisFigures,
    pub draining: bool,
    pub this_node: bool,
}

impl ListedNode {
    fn of(snapshot: Snapshot, this_node: bool, now: u64) -> ListedNode {
        ListedNode {
            uptime_s: now.saturating_sub(snapshot.started_at),
            node_id: snapshot.node_id,
            version: snapshot.version,
            started_at: snapshot.started_at,
            connections: snapshot.connections,
            subscriptions: snapshot.subscriptions,
            messages_in_per_s: snapshot.messages_in_per_s,
            messages_out_per_s: snapshot.messages_out_per_s,
            redis: snapshot.redis,
            draining: snapshot.draining,
            this_node,
        }
    }
}

/// One open connection of a user, with the channels it is subscribed to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserConnection {
    pub connection_id: String,
    pub node_id: String,
    pub channels: Vec<String>,
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
        let (shutdown, figures) = Node::local_figures(&config, &hub, &instance);
        Node::build(
            config,
            hub,
            broker,
            Arc::new(presence),
            (limits, Arc::new(Occupancy::single())),
            (instance, shutdown, figures),
            None,
        )
    }

    /// A single node's figures, and the shutdown token they watch.
    fn local_figures(
        config: &Config,
        hub: &Arc<Hub>,
        instance: &str,
    ) -> (CancellationToken, Arc<Figures>) {
        let shutdown = CancellationToken::new();
        let figures = Figures::new(
            config.node_id.clone(),
            instance.to_owned(),
            Arc::clone(hub),
            None,
            shutdown.clone(),
        );
        (shutdown, Arc::new(figures))
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
        let shutdown = CancellationToken::new();
        let figures = Arc::new(Figures::new(
            config.node_id.clone(),
            instance.clone(),
            Arc::clone(&hub),
            Some((target.mode(), Arc::clone(&health))),
            shutdown.clone(),
        ));
        let presence = RedisPresence::new(
            link,
            config.clone(),
            instance,
            health,
            Arc::clone(&writer),
            Arc::clone(&hub) as Arc<dyn Holdings>,
            Arc::clone(&figures) as Arc<dyn Report>,
        );
        tokio::spawn(Arc::clone(&presence).maintain(background.clone()));
        let instance = presence.instance().to_owned();
        Node::build(
            config,
            hub,
            Arc::new(broker),
            Arc::clone(&presence) as Arc<dyn Presence>,
            (limits, occupancy),
            (instance, shutdown, figures),
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
        let (shutdown, figures) = Node::local_figures(&config, &hub, &instance);
        Node::build(
            config,
            hub,
            broker,
            presence,
            (limits, Arc::new(Occupancy::single())),
            (instance, shutdown, figures),
            None,
        )
    }

    fn build(
        config: Config,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        // The admission limits, and the occupancy that (in cluster mode)
        // reads their per-user map.
        (limits, occupancy): (ConnectionLimits, Arc<Occupancy>),
        // The node's instance id, its shutdown token, and the figures that
        // report both.
        (instance, shutdown, figures): (String, CancellationToken, Arc<Figures>),
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
            shutdown,
            figures,
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

    /// Every live node's figures, sorted by node id, this node's marked
    /// (by its instance, so a restarted predecessor's are not):
    /// in cluster mode as each node last wrote them to Redis (this node's
    /// from memory if its own are not there yet), else this node alone.
    pub async fn list_nodes(&self) -> Result<Vec<ListedNode>, String> {
        let now = unix_now();
        let mut nodes = Vec::new();
        if let Some(redis) = &self.redis {
            for text in redis.presence.figures().await? {
                // A node writes its own figures; one this version cannot
                // read is left out rather than failing the list.
                match serde_json::from_str::<Snapshot>(&text) {
                    Ok(snapshot) => {
                        let this = snapshot.instance == self.instance;
                        nodes.push(ListedNode::of(snapshot, this, now));
                    }
                    Err(error) => tracing::debug!(message = "unreadable node figures", %error),
                }
            }
        }
        if !nodes.iter().any(|n| n.this_node) {
            nodes.push(ListedNode::of(self.figures.snapshot(), true, now));
        }
        nodes.sort_by(|a, b| (&a.node_id, a.started_at).cmp(&(&b.node_id, b.started_at)));
        Ok(nodes)
    }

    /// Every open connection of `user`, sorted by node and connection id,
    /// with its channels (sorted). This node's come from its hub. In
    /// cluster mode the others' come from what Redis records: the user's
    /// connections (`sb:user:<user>`, live nodes only), the user's channels
    /// on each node (occupancy), and per connection its presence entries.
    /// A channel without presence is known per node and user, not per
    /// connection: it is listed under each of the user's connections on
    /// that node when they all hold it, and left out when only some do
    /// (Redis does not say which).
    pub async fn user_connections(&self, user: &str) -> Result<Vec<UserConnection>, String> {
        let mut connections: Vec<UserConnection> = self
            .hub
            .user_subscriptions(user)
            .into_iter()
            .map(|(session, channels)| UserConnection {
                connection_id: crate::presence::connection_id(&self.instance, session).to_string(),
                node_id: self.config.node_id.clone(),
                channels,
            })
            .collect();
        if let Some(redis) = &self.redis {
            let mut by_node: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (id, node) in redis.presence.user_connections(user).await? {
                if node != self.instance {
                    by_node.entry(node).or_default().push(id);
                }
            }
            for (node, ids) in by_node {
                let held = redis.occupancy.user_channels(&node, user).await?;
                let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let mut channels: Vec<Vec<String>> = vec![Vec::new(); ids.len()];
                for (channel, presence, count) in held {
                    if presence {
                        let present = redis.presence.present_in(&channel, &id_refs).await?;
                        for (list, present) in channels.iter_mut().zip(present) {
                            if present {
                                list.push(channel.clone());
                            }
                        }
                    } else if count >= ids.len() as u64 {
                        for list in &mut channels {
                            list.push(channel.clone());
                        }
                    }
                }
                // An instance is `<node_id>.<run>`.
                let node_id = node.rsplit_once('.').map_or(node.as_str(), |(id, _)| id);
                for (id, mut list) in ids.into_iter().zip(channels) {
                    list.sort_unstable();
                    connections.push(UserConnection {
                        connection_id: id,
                        node_id: node_id.to_owned(),
                        channels: list,
                    });
                }
            }
        }
        connections
            .sort_by(|a, b| (&a.node_id, &a.connection_id).cmp(&(&b.node_id, &b.connection_id)));
        Ok(connections)
    }

    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
