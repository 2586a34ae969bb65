//! The broker carries published frames to every node that has subscribers
//! for the channel. This node tells it which channels it needs (one
//! subscription per channel per node, refcounted by the hub) and hands
//! received frames to the hub.
//!
//! [`MemoryBroker`] serves a single node; the Redis broker (cluster mode)
//! implements the same trait.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_protocol::close;
use thiserror::Error;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::Hub;

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
    /// Publishes an encoded frame to every subscriber of `channel` on every node.
    async fn publish(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BrokerError>;
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

/// The single-node broker: publishing is delivering to the local hub.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> MemoryBroker {
        MemoryBroker { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BrokerError> {
        self.hub.metrics().published(channel, frame.len());
        self.hub.deliver(channel, &frame);
        Ok(())
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
