//! The cluster broker on Redis Pub/Sub.
//!
//! Publishes go through a deadpool connection pool. Each node holds one
//! dedicated Pub/Sub connection, owned by one task, which SUBSCRIBEs to
//! `sb:ch:<channel>` when the channel's first local subscriber arrives and
//! UNSUBSCRIBEs when the last one leaves (the hub keeps the refcount; never
//! PSUBSCRIBE, never one subscription per client). Frames travel already
//! encoded, so a node hands the received bytes to the hub as they are.
//!
//! When the Pub/Sub connection drops, the node turns not-ready, reconnects
//! with backoff and resubscribes every channel the hub still needs; local
//! clients stay connected meanwhile.
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Pool, Runtime};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_protocol::close;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use switchboard_protocol::{MessageParts, Position, ServerFrame};

use crate::broker::{Broker, BrokerError, Health};
use crate::history::{
    HistoryPage, HistoryPolicy, HistoryQuery, Relay, Tracker, DEFAULT_HISTORY_TTL, MAX_HISTORY_SIZE,
};
use crate::hub::{Delivery, Hub};
use crate::metrics::{Metrics, RedisLink};
use crate::redis_history::{self, Payload};

/// The Pub/Sub channel carrying a Switchboard channel's frames.
pub const CHANNEL_PREFIX: &str = "sb:ch:";
/// The Pub/Sub channel every node listens to for cluster-wide commands.
pub const CONTROL_CHANNEL: &str = "sb:ctl";
/// A Redis command that takes longer than this counts as failed.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle Pub/Sub connection is pinged to find half-open sockets.
const PUBSUB_PING: Duration = Duration::from_secs(5);

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

    pub fn health(&self) -> Health {
        let pubsub = self.pubsub_up.load(Ordering::Relaxed);
        let lease = self.lease_ok.load(Ordering::Relaxed);
        if pubsub && lease {
            return Health::Ready;
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
        Health::NotReady(if last.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {last}")
        })
    }
}

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

/// Builds the pool for a Redis URL.
pub fn pool(url: &str) -> Result<Pool, String> {
    let mut config = deadpool_redis::Config::from_url(url);
    let mut pool = deadpool_redis::PoolConfig::new(32);
    pool.timeouts.wait = Some(REDIS_TIMEOUT);
    pool.timeouts.create = Some(REDIS_TIMEOUT);
    pool.timeouts.recycle = Some(REDIS_TIMEOUT);
    config.pool = Some(pool);
    config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|error| format!("cannot create the Redis pool: {error}"))
}

/// Runs one Redis command with the standard time limit.
pub async fn query<T: redis::FromRedisValue + Send>(
    pool: &Pool,
    command: &redis::Cmd,
) -> Result<T, String> {
    with_connection(pool, async |conn| command.query_async::<T>(conn).await).await
}

/// Runs a pipeline with the standard time limit.
pub async fn query_pipe<T: redis::FromRedisValue + Send>(
    pool: &Pool,
    pipe: &redis::Pipeline,
) -> Result<T, String> {
    with_connection(pool, async |conn| pipe.query_async::<T>(conn).await).await
}

/// Runs a Lua script (EVALSHA, loading it on first use) with the standard time limit.
pub async fn run_script<T: redis::FromRedisValue + Send>(
    pool: &Pool,
    invocation: &redis::ScriptInvocation<'_>,
) -> Result<T, String> {
    with_connection(pool, async |conn| invocation.invoke_async::<T>(conn).await).await
}

/// Takes a pooled connection and runs `work` on it, all within [`REDIS_TIMEOUT`].
async fn with_connection<T>(
    pool: &Pool,
    work: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
) -> Result<T, String> {
    let run = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        work(&mut conn).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(REDIS_TIMEOUT, run)
        .await
        .map_err(|_| "redis timed out".to_owned())?
}

/// The broker of a node in cluster mode.
pub struct RedisBroker {
    pool: Pool,
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
        url: &str,
        pool: Pool,
        hub: Arc<Hub>,
        health: Arc<RedisHealth>,
        shutdown: CancellationToken,
    ) -> Result<RedisBroker, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        let (ops, rx) = mpsc::unbounded_channel();
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let subscriber = Subscriber {
            client,
            pool: pool.clone(),
            hub: Arc::clone(&hub),
            health: Arc::clone(&health),
            tracker: Arc::clone(&tracker),
        };
        tokio::spawn(subscriber.run(rx, shutdown));
        Ok(RedisBroker {
            pool,
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
        let mut command = redis::cmd("PUBLISH");
        command
            .arg(format!("{CHANNEL_PREFIX}{channel}"))
            .arg(frame.as_bytes());
        let started = std::time::Instant::now();
        let published = query::<i64>(&self.pool, &command).await;
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
        let stored = redis_history::append(&self.pool, channel, message, policy).await;
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
        redis_history::read(&self.pool, channel, query, policy.ttl)
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
        let published = query::<i64>(&self.pool, &command).await;
        // Local sessions close even when Redis is away.
        self.hub
            .disconnect_user(user, close::DISCONNECTED, "disconnected by the server");
        published.map(drop).map_err(BrokerError::Unavailable)
    }

    fn health(&self) -> Health {
        self.health.health()
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
    client: redis::Client,
    /// For gap repair reads.
    pool: Pool,
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
                Ok(Ok((sink, stream))) => {
                    let since = tokio::time::Instant::now();
                    self.health.set_pubsub(true);
                    if !std::mem::take(&mut first) {
                        self.hub.metrics().redis_reconnected();
                    }
                    tracing::info!(
                        message = "redis pub/sub connected",
                        channels = self.hub.channel_count()
                    );
                    // Messages published while the link was down are in
                    // history; they go out before anything newer (the
                    // stream buffers what arrives meanwhile).
                    self.repair_all().await;
                    let error = self.serve(sink, stream, &mut ops, &shutdown).await;
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
            self.health.set_pubsub(false);
            self.health.record_error(&error);
            tracing::warn!(message = "redis pub/sub unavailable; retrying", %error, backoff_ms = backoff.as_millis() as u64);
            // Subscribes asked for meanwhile fail now rather than hang; the
            // hub keeps the channel, so it is resubscribed on reconnect.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut sleep => break,
                    op = ops.recv() => match op {
                        Some(SubscriptionOp::Subscribe(_, reply)) => {
                            let _ = reply.send(Err(BrokerError::Unavailable(format!("redis pub/sub disconnected: {error}"))));
                        }
                        Some(SubscriptionOp::Unsubscribe(_)) => {}
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Connects and subscribes to the control channel and every channel the hub needs.
    async fn connect(&self) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), String> {
        let pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(CONTROL_CHANNEL)
            .await
            .map_err(|e| e.to_string())?;
        let channels: Vec<String> = self
            .hub
            .channels()
            .into_iter()
            .map(|c| format!("{CHANNEL_PREFIX}{c}"))
            .collect();
        for chunk in channels.chunks(512) {
            sink.subscribe(chunk).await.map_err(|e| e.to_string())?;
        }
        Ok((sink, stream))
    }

    /// Serves one connection; `None` on shutdown, else why it broke.
    async fn serve(
        &self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        ops: &mut mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                message = stream.next() => match message {
                    Some(message) => self.on_message(&message).await,
                    None => return Some("pub/sub connection closed".into()),
                },
                op = ops.recv() => match op {
                    None => return None,
                    Some(SubscriptionOp::Subscribe(channel, reply)) => {
                        let key = format!("{CHANNEL_PREFIX}{channel}");
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
                            let key = format!("{CHANNEL_PREFIX}{channel}");
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
                }
            }
        }
    }

    async fn on_message(&self, message: &redis::Msg) {
        let name = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if let Some(channel) = name.strip_prefix(CHANNEL_PREFIX) {
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
        let page = match redis_history::read(&self.pool, channel, &query, DEFAULT_HISTORY_TTL).await
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
