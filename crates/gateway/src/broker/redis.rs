//! The cluster broker on Redis Pub/Sub.
//!
//! Publishes go through the node's [`Link`] (a pool, or the cluster
//! connection). On one server or under Sentinel each node holds one
//! dedicated Pub/Sub connection, owned by one task, which SUBSCRIBEs to
//! `sb:ch:<channel>` when the channel's first local subscriber arrives and
//! UNSUBSCRIBEs when the last one leaves (the hub keeps the refcount; never
//! PSUBSCRIBE, never one subscription per client). On a Redis Cluster the
//! channel is the shard channel `sb:ch:{<channel>}`, SSUBSCRIBEd on the
//! shard that owns its slot (the slot of the channel's history keys) and
//! published with SPUBLISH, so each message crosses one shard instead of
//! being broadcast to every Redis node. Frames travel already encoded, so a
//! node hands the received bytes to the hub as they are.
//!
//! When the Pub/Sub connection drops, the node turns not-ready, reconnects
//! with backoff (under Sentinel, to the master the sentinels name now) and
//! resubscribes every channel the hub still needs; local clients stay
//! connected meanwhile. On a cluster the redis crate reconnects a shard and
//! moves its subscriptions after a failover by itself; the node watches for
//! the drop, stays not-ready until every primary answers again, and repairs
//! the channels as they are resubscribed.
//!
//! Gap repair: messages of channels with history arrive as
//! `<offset>:<epoch>:<frame>` (see `redis_history`). The node remembers the
//! last offset it relayed per channel ([`Tracker`]); when Pub/Sub hands it a
//! later offset than the next one, or the link comes back after a drop, it
//! reads the missing range from history and delivers it, in order, before
//! anything newer, so local subscribers never see the gap. When history
//! cannot fill it (the epoch changed: Redis lost its data), the channel's
//! local subscribers get a `reset` frame with the new position instead of a
//! silent loss.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_protocol::close;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use switchboard_protocol::{MessageParts, Position, ServerFrame};

use crate::broker::{Broker, BrokerError, Health};
use crate::config::namespaces::{HistoryPolicy, DEFAULT_HISTORY_TTL, MAX_HISTORY_SIZE};
use crate::history::redis::{self as redis_history, Payload};
use crate::history::{HistoryPage, HistoryQuery, Relay, Tracker};
use crate::hub::{Delivery, Hub};
use crate::redis::health::RedisHealth;
use crate::redis::link::Link;
use crate::redis::pubsub::{channel_of, publish_command, pubsub_channel, CONTROL_CHANNEL};
use crate::redis::target::{Mode, Target, REDIS_TIMEOUT};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Short enough that a node finds a new master within about two seconds of
/// the sentinels' switch.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle Pub/Sub connection is pinged to find half-open sockets.
const PUBSUB_PING: Duration = Duration::from_secs(5);

/// Cluster-wide commands on the control channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Control {
    Disconnect { user: String },
}

enum SubscriptionOp {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

/// The broker of a node in cluster mode.
pub struct RedisBroker {
    link: Link,
    hub: Arc<Hub>,
    health: Arc<RedisHealth>,
    ops: mpsc::UnboundedSender<SubscriptionOp>,
    tracker: Arc<Mutex<Tracker>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Starts the Pub/Sub task; it runs until `shutdown`.
    pub fn start(
        target: &Target,
        link: Link,
        hub: Arc<Hub>,
        health: Arc<RedisHealth>,
        shutdown: CancellationToken,
    ) -> Result<RedisBroker, String> {
        let (ops, rx) = mpsc::unbounded_channel();
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let subscriber = Subscriber {
            target: target.clone(),
            link: link.clone(),
            hub: Arc::clone(&hub),
            health: Arc::clone(&health),
            tracker: Arc::clone(&tracker),
        };
        if target.mode() == Mode::Cluster {
            tokio::spawn(subscriber.run_sharded(rx, shutdown));
        } else {
            tokio::spawn(subscriber.run(rx, shutdown));
        }
        Ok(RedisBroker {
            link,
            hub,
            health,
            ops,
            tracker,
        })
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BrokerError> {
        let mode = self.link.mode();
        let mut command = redis::cmd(publish_command(mode));
        command
            .arg(pubsub_channel(mode, channel))
            .arg(frame.as_bytes());
        let started = std::time::Instant::now();
        let published = self.link.query::<i64>(&command).await;
        let metrics = self.hub.metrics();
        metrics.redis_published(started.elapsed(), published.is_ok());
        if published.is_ok() {
            metrics.published(channel, frame.len());
        }
        published.map(drop).map_err(|error| {
            self.health.record_error(&error);
            BrokerError::Unavailable(error)
        })
    }

    async fn publish_stored(
        &self,
        channel: &str,
        message: &MessageParts,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let started = std::time::Instant::now();
        let stored = redis_history::append(&self.link, channel, message, policy).await;
        let metrics = self.hub.metrics();
        metrics.redis_published(started.elapsed(), stored.is_ok());
        match stored {
            Ok(position) => {
                metrics.history_appended();
                metrics.published(channel, message.frame_len(position.offset));
                Ok(position)
            }
            Err(error) => {
                self.health.record_error(&error);
                Err(BrokerError::Unavailable(error))
            }
        }
    }

    async fn history(
        &self,
        channel: &str,
        policy: HistoryPolicy,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        redis_history::read(&self.link, channel, query, policy.ttl)
            .await
            .map_err(BrokerError::Unavailable)
    }

    fn holding(&self, channel: &str, position: &Position) {
        if self.hub.has_subscribers(channel) {
            lock(&self.tracker).seed(channel, position);
        }
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(SubscriptionOp::Subscribe(channel.to_owned(), tx))
            .map_err(|_| BrokerError::Unavailable("subscriber stopped".into()))?;
        rx.await
            .map_err(|_| BrokerError::Unavailable("subscriber stopped".into()))?
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.ops
            .send(SubscriptionOp::Unsubscribe(channel.to_owned()))
            .map_err(|_| BrokerError::Unavailable("subscriber stopped".into()))
    }

    async fn disconnect(&self, user: &str) -> Result<(), BrokerError> {
        let payload = serde_json::to_string(&Control::Disconnect {
            user: user.to_owned(),
        })
        .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut command = redis::cmd("PUBLISH");
        command.arg(CONTROL_CHANNEL).arg(payload);
        let published = self.link.query::<i64>(&command).await;
        // Local sessions close even when Redis is away.
        self.hub
            .disconnect_user(user, close::DISCONNECTED, "disconnected by the server");
        published.map(drop).map_err(BrokerError::Unavailable)
    }

    fn health(&self) -> Health {
        self.health
            .problem()
            .map_or(Health::Ready, Health::NotReady)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

/// The task that owns the node's Pub/Sub connection.
struct Subscriber {
    target: Target,
    /// For gap repair reads.
    link: Link,
    hub: Arc<Hub>,
    health: Arc<RedisHealth>,
    tracker: Arc<Mutex<Tracker>>,
}

impl Subscriber {
    async fn run(
        self,
        mut ops: mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = tokio::time::timeout(REDIS_TIMEOUT, self.connect()) => connected,
            };
            let error = match connected {
                Ok(Ok((sink, stream, server))) => {
                    let since = tokio::time::Instant::now();
                    self.health.set_pubsub(true);
                    if !std::mem::take(&mut first) {
                        self.hub.metrics().redis_reconnected();
                    }
                    tracing::info!(
                        message = "redis pub/sub connected",
                        server = %server,
                        channels = self.hub.channel_count()
                    );
                    // Messages published while the link was down are in
                    // history; they go out before anything newer (the
                    // stream buffers what arrives meanwhile).
                    self.repair_all().await;
                    let error = self.serve(sink, stream, &server, &mut ops, &shutdown).await;
                    self.health.set_pubsub(false);
                    // A connection that held for a while earns a quick retry;
                    // one that breaks at once keeps backing off.
                    if since.elapsed() > BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                    match error {
                        None => return,
                        Some(error) => error,
                    }
                }
                Ok(Err(error)) => error,
                Err(_) => "connect timed out".to_owned(),
            };
            if !self
                .wait_to_retry(&error, backoff, &mut ops, &shutdown)
                .await
            {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// After a failed connect: not ready with `error`, then waits `backoff`.
    /// Subscribes asked for meanwhile fail now rather than hang; the hub
    /// keeps the channel, so it is subscribed on reconnect. False on
    /// shutdown.
    async fn wait_to_retry(
        &self,
        error: &str,
        backoff: Duration,
        ops: &mut mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: &CancellationToken,
    ) -> bool {
        self.health.set_pubsub(false);
        self.health.record_error(error);
        tracing::warn!(message = "redis pub/sub unavailable; retrying", %error, backoff_ms = backoff.as_millis() as u64);
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = &mut sleep => return true,
                op = ops.recv() => match op {
                    Some(SubscriptionOp::Subscribe(_, reply)) => {
                        let _ = reply.send(Err(BrokerError::Unavailable(format!("redis pub/sub disconnected: {error}"))));
                    }
                    Some(SubscriptionOp::Unsubscribe(_)) => {}
                    None => return false,
                },
            }
        }
    }

    /// The Pub/Sub task on a Redis Cluster: sharded subscriptions on one
    /// RESP3 cluster connection, whose pushes arrive on a channel.
    async fn run_sharded(
        self,
        mut ops: mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: CancellationToken,
    ) {
        let (push, mut pushes) = mpsc::unbounded_channel();
        let client = match self.target.cluster_client(Some(push)) {
            Some(Ok(client)) => client,
            Some(Err(error)) => {
                let error = self.target.explain(&error);
                self.health.record_error(&error);
                tracing::error!(message = "redis cluster client refused its settings", %error);
                return;
            }
            None => return,
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = tokio::time::timeout(REDIS_TIMEOUT, self.connect_sharded(&client)) => connected,
            };
            let error = match connected {
                Ok(Ok(conn)) => {
                    self.health.set_pubsub(true);
                    tracing::info!(
                        message = "redis cluster pub/sub connected",
                        channels = self.hub.channel_count()
                    );
                    self.repair_all().await;
                    // From here the connection lasts: the redis crate
                    // reconnects shards, and `serve_sharded` makes sure
                    // every channel is subscribed on its shard again.
                    self.serve_sharded(conn, &mut pushes, &mut ops, &shutdown)
                        .await;
                    return;
                }
                Ok(Err(error)) => error,
                Err(_) => "connect timed out".to_owned(),
            };
            if !self
                .wait_to_retry(&error, backoff, &mut ops, &shutdown)
                .await
            {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens the cluster connection and subscribes to the control channel
    /// and, on their shards, every channel the hub needs.
    async fn connect_sharded(
        &self,
        client: &redis::cluster::ClusterClient,
    ) -> Result<redis::cluster_async::ClusterConnection, String> {
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|e| format!("redis cluster: {}", self.target.explain(&e)))?;
        conn.subscribe(CONTROL_CHANNEL)
            .await
            .map_err(|e| e.to_string())?;
        for channel in self.hub.channels() {
            conn.ssubscribe(pubsub_channel(Mode::Cluster, &channel))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(conn)
    }

    /// Subscribes again, concurrently and within a second, to the channels
    /// still `pending` after a shard connection dropped (`""` stands for the
    /// control channel); each is routed by the slot map as it is now, so it
    /// lands on the shard's new primary once the cluster has promoted one (a
    /// repeated subscription is only confirmed again). Confirmed ones, and
    /// channels no longer needed, leave the set.
    async fn resubscribe_sharded(
        &self,
        conn: &redis::cluster_async::ClusterConnection,
        pending: &mut HashSet<String>,
    ) {
        pending.retain(|channel| channel.is_empty() || self.hub.has_subscribers(channel));
        let attempts = pending.iter().map(|channel| {
            let mut conn = conn.clone();
            async move {
                let done = if channel.is_empty() {
                    conn.subscribe(CONTROL_CHANNEL).await
                } else {
                    conn.ssubscribe(pubsub_channel(Mode::Cluster, channel))
                        .await
                };
                done.is_ok().then(|| channel.clone())
            }
        });
        let confirmed = tokio::time::timeout(
            Duration::from_secs(1),
            futures_util::future::join_all(attempts),
        )
        .await
        .unwrap_or_default();
        for channel in confirmed.into_iter().flatten() {
            pending.remove(&channel);
        }
    }

    /// Serves the cluster connection until shutdown.
    ///
    /// When a shard connection drops (a RESP3 `Disconnection` push, or a
    /// failed PING of the primaries), the node turns not-ready and, every
    /// second, subscribes again to every channel it needs until each is
    /// confirmed by the shard that owns it now: during a shard failover
    /// that is once the cluster has promoted the replica. Then it repairs
    /// what the channels missed from history and is ready again.
    async fn serve_sharded(
        &self,
        mut conn: redis::cluster_async::ClusterConnection,
        pushes: &mut mpsc::UnboundedReceiver<redis::PushInfo>,
        ops: &mut mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: &CancellationToken,
    ) {
        // Some while degraded: what still waits for its confirmation.
        let mut pending: Option<HashSet<String>> = None;
        let mut check = tokio::time::interval(PUBSUB_PING);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut degrade = None;
            tokio::select! {
                () = shutdown.cancelled() => return,
                push = pushes.recv() => match push {
                    None => return,
                    Some(push) => match push.kind {
                        redis::PushKind::Message | redis::PushKind::SMessage => {
                            if let [redis::Value::BulkString(name), redis::Value::BulkString(payload)] = push.data.as_slice() {
                                if let Ok(name) = std::str::from_utf8(name) {
                                    self.on_message(name, payload).await;
                                }
                            }
                        }
                        redis::PushKind::Disconnection => {
                            degrade = Some("a redis cluster shard connection dropped; resubscribing".to_owned());
                        }
                        _ => {}
                    },
                },
                op = ops.recv() => match op {
                    None => return,
                    Some(SubscriptionOp::Subscribe(channel, reply)) => {
                        let name = pubsub_channel(Mode::Cluster, &channel);
                        let result = match tokio::time::timeout(REDIS_TIMEOUT, conn.ssubscribe(&name)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(BrokerError::Unavailable(error.to_string())),
                            Err(_) => Err(BrokerError::Unavailable("subscribe timed out".into())),
                        };
                        let _ = reply.send(result);
                    }
                    Some(SubscriptionOp::Unsubscribe(channel)) => {
                        if !self.hub.has_subscribers(&channel) {
                            lock(&self.tracker).forget(&channel);
                            let name = pubsub_channel(Mode::Cluster, &channel);
                            if let Ok(Err(error)) = tokio::time::timeout(REDIS_TIMEOUT, conn.sunsubscribe(&name)).await {
                                tracing::warn!(message = "redis cluster unsubscribe failed", channel, %error);
                            }
                        }
                    }
                },
                _ = check.tick() => match &mut pending {
                    Some(waiting) => {
                        self.resubscribe_sharded(&conn, waiting).await;
                        if waiting.is_empty() {
                            pending = None;
                            self.health.set_pubsub(true);
                            self.hub.metrics().redis_reconnected();
                            tracing::info!(message = "redis cluster: every channel is subscribed on its shard again");
                            check = tokio::time::interval(PUBSUB_PING);
                            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            check.reset();
                            self.repair_all().await;
                        } else {
                            self.health.record_error(format!(
                                "redis cluster: {} channels wait for their shard",
                                waiting.len()
                            ));
                        }
                    }
                    None => {
                        let ping = redis::cmd("PING");
                        let all = redis::cluster_routing::RoutingInfo::MultiNode((
                            redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                            Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                        ));
                        match tokio::time::timeout(REDIS_TIMEOUT, conn.route_command(ping, all)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(error)) => degrade = Some(format!("redis cluster: {error}")),
                            Err(_) => degrade = Some("redis cluster: a primary did not answer PING".to_owned()),
                        }
                    }
                },
            }
            if let (Some(reason), None) = (degrade, &pending) {
                self.health.set_pubsub(false);
                self.health.record_error(&reason);
                tracing::warn!(message = "redis cluster degraded", %reason);
                let mut waiting: HashSet<String> = self.hub.channels().into_iter().collect();
                waiting.insert(String::new());
                pending = Some(waiting);
                check = tokio::time::interval(Duration::from_secs(1));
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first attempt a second from now: give the cluster a moment.
                check.reset();
            }
        }
    }

    /// Connects (under Sentinel, to the master named now) and subscribes to
    /// the control channel and every channel the hub needs. Also returns the
    /// server's address.
    async fn connect(
        &self,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream, String), String> {
        let client = self.target.pubsub_client().await?;
        let server = client.get_connection_info().addr().to_string();
        let pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| self.target.explain(&e))?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(CONTROL_CHANNEL)
            .await
            .map_err(|e| e.to_string())?;
        let channels: Vec<String> = self
            .hub
            .channels()
            .into_iter()
            .map(|c| pubsub_channel(self.target.mode(), &c))
            .collect();
        for chunk in channels.chunks(512) {
            sink.subscribe(chunk).await.map_err(|e| e.to_string())?;
        }
        Ok((sink, stream, server))
    }

    /// Serves one connection; `None` on shutdown, else why it broke.
    async fn serve(
        &self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        server: &str,
        ops: &mut mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                message = stream.next() => match message {
                    Some(message) => self.on_message(message.get_channel_name(), message.get_payload_bytes()).await,
                    None => return Some("pub/sub connection closed".into()),
                },
                op = ops.recv() => match op {
                    None => return None,
                    Some(SubscriptionOp::Subscribe(channel, reply)) => {
                        let key = pubsub_channel(self.target.mode(), &channel);
                        let result = tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(&key)).await;
                        match result {
                            Ok(Ok(())) => {
                                let _ = reply.send(Ok(()));
                            }
                            Ok(Err(error)) => {
                                let _ = reply.send(Err(BrokerError::Unavailable(error.to_string())));
                                return Some(error.to_string());
                            }
                            Err(_) => {
                                let _ = reply.send(Err(BrokerError::Unavailable("subscribe timed out".into())));
                                return Some("subscribe timed out".into());
                            }
                        }
                    }
                    Some(SubscriptionOp::Unsubscribe(channel)) => {
                        // Decided now, not when asked: a subscriber may have
                        // arrived since, and then the subscription stays.
                        if !self.hub.has_subscribers(&channel) {
                            lock(&self.tracker).forget(&channel);
                            let key = pubsub_channel(self.target.mode(), &channel);
                            match tokio::time::timeout(REDIS_TIMEOUT, sink.unsubscribe(&key)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(error)) => return Some(error.to_string()),
                                Err(_) => return Some("unsubscribe timed out".into()),
                            }
                        }
                    }
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Some(error.to_string()),
                        Err(_) => return Some("ping timed out".into()),
                    }
                    if let Some(moved) = self.master_moved(server).await {
                        return Some(moved);
                    }
                }
            }
        }
    }

    /// Under Sentinel: whether the sentinels now name another master than
    /// the one this Pub/Sub connection is on (a failover that left the old
    /// master running, demoted), and which.
    async fn master_moved(&self, server: &str) -> Option<String> {
        if self.target.mode() != Mode::Sentinel {
            return None;
        }
        let client = self.target.pubsub_client().await.ok()?;
        let now = client.get_connection_info().addr().to_string();
        (now != server).then(|| format!("the sentinels name a new master: {now} (was {server})"))
    }

    async fn on_message(&self, name: &str, payload: &[u8]) {
        let mode = self.target.mode();
        if let Some(channel) = channel_of(mode, name) {
            match redis_history::parse_payload(payload) {
                Some(Payload::Plain(text)) => {
                    self.hub
                        .deliver(&Delivery::plain(channel, Utf8Bytes::from(text)));
                }
                Some(Payload::Stored {
                    offset,
                    epoch,
                    frame,
                }) => self.relay(channel, offset, epoch, frame).await,
                None => tracing::warn!(message = "dropped a malformed payload from redis", channel),
            }
        } else if name == CONTROL_CHANNEL {
            match serde_json::from_slice::<Control>(payload) {
                Ok(Control::Disconnect { user }) => {
                    let closed = self.hub.disconnect_user(
                        &user,
                        close::DISCONNECTED,
                        "disconnected by the server",
                    );
                    tracing::info!(message = "disconnect by server API", closed);
                }
                Err(error) => tracing::warn!(message = "unknown control message", %error),
            }
        }
    }

    /// Delivers a stored message in offset order, repairing a gap first.
    async fn relay(&self, channel: &str, offset: u64, epoch: &str, frame: &str) {
        let accepted = lock(&self.tracker).accept(channel, offset, epoch);
        let shared = match accepted {
            Ok(shared) => shared,
            Err(Relay::Duplicate) => {
                self.hub.metrics().relay_duplicate();
                return;
            }
            Err(_) => {
                if self.repair(channel).await.is_err() {
                    // History is out of reach: say so, then go on from here.
                    self.reset(channel, offset.saturating_sub(1), epoch);
                }
                let accepted = lock(&self.tracker).accept(channel, offset, epoch);
                match accepted {
                    Ok(shared) => shared,
                    Err(_) => {
                        // The repair delivered it (it was stored before published).
                        self.hub.metrics().relay_duplicate();
                        return;
                    }
                }
            }
        };
        self.hub.deliver(&Delivery::at(
            channel,
            offset,
            &shared,
            Utf8Bytes::from(frame),
        ));
    }

    /// Delivers what history holds after the last position relayed for
    /// `channel`. When that does not continue the stream (a new epoch, or
    /// messages trimmed or expired before they could be read), the channel's
    /// subscribers get a `reset` first. Errs when history cannot be read.
    async fn repair(&self, channel: &str) -> Result<(), ()> {
        let Some(known) = lock(&self.tracker).position(channel) else {
            return Ok(());
        };
        let query = HistoryQuery {
            since: Some(known.clone()),
            limit: MAX_HISTORY_SIZE,
        };
        let metrics = self.hub.metrics();
        // The channel was read (or published) before, so its position
        // exists; should it have vanished, the default TTL bounds the new one.
        let page = match redis_history::read(&self.link, channel, &query, DEFAULT_HISTORY_TTL).await
        {
            Ok(page) => page,
            Err(error) => {
                metrics.history_read("repair", false);
                tracing::warn!(message = "gap repair failed", channel, %error);
                return Err(());
            }
        };
        metrics.history_read("repair", true);
        if page.continues(&known) {
            if !page.messages.is_empty() {
                metrics.gap_repaired();
            }
        } else {
            let base = page
                .messages
                .first()
                .map_or(page.top.offset, |(offset, _)| offset - 1);
            tracing::warn!(
                message = "messages lost from history; subscribers told to reload",
                channel,
                known_offset = known.offset,
                known_epoch = %known.epoch,
                epoch = %page.top.epoch,
                offset = base
            );
            self.reset(channel, base, &page.top.epoch);
        }
        metrics.replayed("node", page.messages.len());
        for (offset, frame) in page.messages {
            let epoch = lock(&self.tracker).advance(channel, offset, &page.top.epoch);
            self.hub
                .deliver(&Delivery::at(channel, offset, &epoch, frame));
        }
        Ok(())
    }

    /// Tells the channel's local subscribers that messages up to `offset` of
    /// `epoch` may be lost; the stream continues after it.
    fn reset(&self, channel: &str, offset: u64, epoch: &str) {
        let frame = ServerFrame::Reset {
            channel,
            offset,
            epoch,
        }
        .encode();
        let epoch = lock(&self.tracker).advance(channel, offset, epoch);
        self.hub.metrics().stream_reset();
        self.hub.deliver(&Delivery::at(
            channel,
            offset,
            &epoch,
            Utf8Bytes::from(frame),
        ));
    }

    /// After a reconnect: repairs every channel the node still holds.
    async fn repair_all(&self) {
        let positions = lock(&self.tracker).positions();
        for (channel, _) in positions {
            if !self.hub.has_subscribers(&channel) {
                lock(&self.tracker).forget(&channel);
                continue;
            }
            if self.repair(&channel).await.is_err() {
                // The link is likely down again; the next message or
                // reconnect retries.
                return;
            }
        }
    }
}
