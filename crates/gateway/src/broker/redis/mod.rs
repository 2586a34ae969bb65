//! The cluster broker on Redis Pub/Sub.
//!
//! Publishes go through the node's [`Link`] (one shared, pipelined
//! connection, or the cluster connection). On one server or under Sentinel
//! they queue for the node's next call (`publisher`), which stores and
//! publishes every message with history that arrived meanwhile in one
//! history script call and sends the others as one pipeline of PUBLISHes;
//! on a cluster only those with history queue (per channel), the others go
//! straight to their shard. On one server or under Sentinel each node holds one
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
//! and resubscribes every channel the hub still needs, then fills from
//! history what its channels missed; local clients stay connected
//! meanwhile.
//!
//! Here: [`RedisBroker`], the [`Broker`] the node calls, and the control
//! commands it publishes. The Pub/Sub task is in `subscriber` (one server
//! or Sentinel) and `sharded` (Redis Cluster); what arrives, and the gap
//! repair that keeps each channel's stream in order, in `feed`.

mod feed;
mod publisher;
mod sharded;
mod subscriber;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use switchboard_protocol::{MessageParts, Position};

use crate::broker::redis::feed::{lock, Control, Feed};
use crate::broker::redis::publisher::Publisher;
use crate::broker::redis::subscriber::{Subscriber, SubscriptionOp};
use crate::broker::{Broker, BrokerError, Health};
use crate::config::namespaces::HistoryPolicy;
use crate::history::redis as redis_history;
use crate::history::{HistoryPage, HistoryQuery, Tracker};
use crate::hub::Hub;
use crate::redis::health::RedisHealth;
use crate::redis::link::Link;
use crate::redis::pubsub::{publish_command, pubsub_channel, CONTROL_CHANNEL};
use crate::redis::target::{Mode, Target};

/// The broker of a node in cluster mode.
pub struct RedisBroker {
    link: Link,
    publisher: Publisher,
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
            hub: Arc::clone(&hub),
            health: Arc::clone(&health),
            feed: Feed::new(
                target.mode(),
                link.clone(),
                Arc::clone(&hub),
                Arc::clone(&tracker),
            ),
        };
        if target.mode() == Mode::Cluster {
            tokio::spawn(subscriber.run_sharded(rx, shutdown));
        } else {
            tokio::spawn(subscriber.run(rx, shutdown));
        }
        let publisher = Publisher::start(link.clone(), Arc::clone(hub.metrics()));
        Ok(RedisBroker {
            link,
            publisher,
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
        let started = std::time::Instant::now();
        let length = frame.len();
        let published = if self.link.mode() == Mode::Cluster {
            // A cluster pipeline runs command by command anyway (each on
            // its shard): the queue would only add its own cost.
            let mut command = redis::cmd(publish_command(Mode::Cluster));
            command
                .arg(pubsub_channel(Mode::Cluster, channel))
                .arg(frame.as_bytes());
            self.link.query::<i64>(&command).await.map(drop)
        } else {
            self.publisher.publish(channel, frame).await
        };
        let metrics = self.hub.metrics();
        metrics.redis_published(started.elapsed(), published.is_ok());
        if published.is_ok() {
            metrics.published(channel, length);
        }
        published.map_err(|error| {
            self.health.record_command_error(&error);
            BrokerError::Unavailable(error)
        })
    }

    async fn publish_stored(
        &self,
        channel: &str,
        message: MessageParts,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let started = std::time::Instant::now();
        let stored = self.publisher.append(channel, message, policy).await;
        let metrics = self.hub.metrics();
        metrics.redis_published(started.elapsed(), stored.is_ok());
        match stored {
            Ok((position, length)) => {
                metrics.history_appended();
                metrics.published(channel, length);
                Ok(position)
            }
            Err(error) => {
                self.health.record_command_error(&error);
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
        redis_history::read(&self.link, channel, query, policy.ttl, Some(policy.size))
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

    async fn disconnect(&self, user: &str, code: u16, reason: &str) -> Result<(), BrokerError> {
        let payload = serde_json::to_string(&Control::Disconnect {
            user: user.to_owned(),
            code: Some(code),
            reason: Some(reason.to_owned()),
        })
        .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut command = redis::cmd("PUBLISH");
        command.arg(CONTROL_CHANNEL).arg(payload);
        let published = self.link.query::<i64>(&command).await;
        // Local sessions close even when Redis is away.
        self.hub.disconnect_user(user, code, reason);
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
