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
//! implements the same trait.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::value::RawValue;
use switchboard_protocol::{close, MessageParts, Position, ServerFrame};
use thiserror::Error;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::history::{HistoryPage, HistoryPolicy, HistoryQuery, MemoryHistory};
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
    /// publishes it, as one step; returns its position.
    async fn publish_stored(
        &self,
        channel: &str,
        message: &MessageParts,
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
    /// Closes every session of `user` on every node with close code 4003.
    async fn disconnect(&self, user: &str) -> Result<(), BrokerError>;
    /// Readiness, for `/readyz`.
    fn health(&self) -> Health;
    /// A short name for logs.
    fn kind(&self) -> &'static str;
}

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
            .publish_stored(channel, &message, policy)
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

/// The single-node broker: publishing is delivering to the local hub, and
/// history is a ring per channel in memory.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    history: MemoryHistory,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> MemoryBroker {
        MemoryBroker {
            hub,
            history: MemoryHistory::default(),
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BrokerError> {
        self.hub.metrics().published(channel, frame.len());
        self.hub.deliver(&Delivery::plain(channel, frame));
        Ok(())
    }

    async fn publish_stored(
        &self,
        channel: &str,
        message: &MessageParts,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let hub = &self.hub;
        let position = self.history.append(
            channel,
            policy,
            |offset| message.with_offset(offset),
            |offset, epoch, frame| {
                hub.metrics().published(channel, frame.len());
                hub.deliver(&Delivery::at(channel, offset, epoch, frame.clone()));
            },
        );
        hub.metrics().history_appended();
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

    async fn disconnect(&self, user: &str) -> Result<(), BrokerError> {
        self.hub
            .disconnect_user(user, close::DISCONNECTED, "disconnected by the server");
        Ok(())
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
