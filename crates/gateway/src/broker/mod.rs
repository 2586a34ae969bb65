//! The broker carries published frames to every node that has subscribers
//! for the channel. This node tells it which channels it needs (one
//! subscription per channel per node, refcounted by the hub) and hands
//! received frames to the hub.
//!
//! Messages of channels with history go through [`Broker::publish_stored`]:
//! the broker assigns the next offset, stores the frame and publishes it as
//! one step, so an acknowledgement means stored and published, and every
//! node relays a channel's messages in offset order. [`Broker::history`]
//! reads what is stored (recovery, `history`, the node's own gap repair).
//!
//! [`MemoryBroker`] serves a single node; the Redis broker (cluster mode)
//! implements the same trait. The memory broker fans out off the
//! publisher's path: a publish stores the message (taking its offset) and
//! queues it to one fan-out task, so the publisher's reply never waits for
//! a thousand enqueues, and one task keeps every channel's order.

pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::value::RawValue;
use switchboard_protocol::{MessageParts, Position, ServerFrame};
use thiserror::Error;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::namespaces::HistoryPolicy;
use crate::history::{HistoryPage, HistoryQuery, MemoryHistory};
use crate::hub::{Delivery, Hub};

/// A broker operation that failed; the frame was not published.
#[derive(Debug, Clone, Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Whether the broker can carry messages now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady(String),
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes an encoded frame to every subscriber of `channel` on every
    /// node, outside history (join/leave events, channels without history).
    async fn publish(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BrokerError>;
    /// Stores a message in the channel's history under the next offset and
    /// publishes it, as one step; returns its position. The message is the
    /// broker's to keep (the Redis broker hands it to its publisher task).
    async fn publish_stored(
        &self,
        channel: &str,
        message: MessageParts,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError>;
    /// Reads the channel's history. A channel never published gets its
    /// stream (and epoch) now, so a client may resume from offset 0.
    async fn history(
        &self,
        channel: &str,
        policy: HistoryPolicy,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError>;
    /// A session of this node read `channel` at `position` after subscribing:
    /// every later message must reach it (the cluster broker tracks this to
    /// repair gaps in its feed).
    fn holding(&self, _channel: &str, _position: &Position) {}
    /// Starts receiving `channel` on this node (its first local subscriber).
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Stops receiving `channel` on this node (its last local subscriber left).
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Closes every session of `user` on every node with close `code`
    /// and `reason` (the server API's default is 4003
    /// `disconnected by the server`).
    async fn disconnect(&self, user: &str, code: u16, reason: &str) -> Result<(), BrokerError>;
    /// Readiness, for `/readyz`.
    fn health(&self) -> Health;
    /// A short name for logs.
    fn kind(&self) -> &'static str;
}

/// The close reason of a disconnect that names none (with close code
/// 4003, `close::DISCONNECTED`).
pub const DISCONNECT_REASON: &str = "disconnected by the server";

/// Publishes a client's or the server API's message: stored under the next
/// offset when the channel's namespace keeps history (its position is
/// returned), as a plain frame otherwise.
pub async fn publish_message(
    broker: &dyn Broker,
    channel: &str,
    data: &RawValue,
    policy: HistoryPolicy,
) -> Result<Option<Position>, BrokerError> {
    if policy.enabled() {
        let message = MessageParts::new(channel, data);
        return broker
            .publish_stored(channel, message, policy)
            .await
            .map(Some);
    }
    let frame = ServerFrame::Message {
        channel,
        offset: None,
        data,
    }
    .encode();
    broker
        .publish(channel, Utf8Bytes::from(frame))
        .await
        .map(|()| None)
}

/// Messages a single node may have published but not yet fanned out;
/// beyond it publishers wait (backpressure instead of a growing queue).
pub const FANOUT_BACKLOG: usize = 8192;
/// Messages the fan-out task takes per wake-up.
const FANOUT_BATCH: usize = 64;

/// The single-node broker: publishing is delivering to the local hub
/// through one fan-out task, and history is a ring per channel in memory.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    history: MemoryHistory,
    fanout: mpsc::UnboundedSender<(Arc<Delivery>, OwnedSemaphorePermit)>,
    backlog: Arc<Semaphore>,
}

impl MemoryBroker {
    /// Starts the fan-out task, so it must be called inside the runtime.
    pub fn new(hub: Arc<Hub>) -> MemoryBroker {
        let (fanout, queue) = mpsc::unbounded_channel();
        tokio::spawn(fan_out(Arc::clone(&hub), queue));
        MemoryBroker {
            hub,
            history: MemoryHistory::default(),
            fanout,
            backlog: Arc::new(Semaphore::new(FANOUT_BACKLOG)),
        }
    }

    /// A slot in the fan-out backlog (waits while it is full).
    async fn slot(&self) -> Result<OwnedSemaphorePermit, BrokerError> {
        Arc::clone(&self.backlog)
            .acquire_owned()
            .await
            .map_err(|_| BrokerError::Unavailable("the node is shutting down".into()))
    }

    fn queue(&self, delivery: Arc<Delivery>, slot: OwnedSemaphorePermit) {
        self.hub
            .metrics()
            .published(&delivery.channel, delivery.frame.len());
        // The task ends only with the broker; a send cannot fail before.
        let _ = self.fanout.send((delivery, slot));
    }
}

/// Delivers queued messages to the hub, in the order they were published.
async fn fan_out(
    hub: Arc<Hub>,
    mut queue: mpsc::UnboundedReceiver<(Arc<Delivery>, OwnedSemaphorePermit)>,
) {
    let mut batch = Vec::with_capacity(FANOUT_BATCH);
    while queue.recv_many(&mut batch, FANOUT_BATCH).await > 0 {
        for (delivery, _slot) in batch.drain(..) {
            hub.deliver(&delivery);
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BrokerError> {
        let slot = self.slot().await?;
        self.queue(Delivery::plain(channel, frame), slot);
        Ok(())
    }

    async fn publish_stored(
        &self,
        channel: &str,
        message: MessageParts,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let slot = self.slot().await?;
        // Queued under the channel's history lock: the fan-out sees each
        // channel's messages in offset order.
        let position = self.history.append(
            channel,
            policy,
            |offset| message.with_offset(offset),
            |offset, epoch, frame| {
                self.queue(Delivery::at(channel, offset, epoch, frame.clone()), slot);
            },
        );
        self.hub.metrics().history_appended();
        Ok(position)
    }

    async fn history(
        &self,
        channel: &str,
        policy: HistoryPolicy,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        Ok(self.history.read(channel, policy, query))
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn disconnect(&self, user: &str, code: u16, reason: &str) -> Result<(), BrokerError> {
        self.hub.disconnect_user(user, code, reason);
        Ok(())
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
