//! Presence: which connections of which users are subscribed to a channel,
//! with the `info` from their tokens.
//!
//! [`MemoryPresence`] serves a single node; the Redis presence (cluster mode)
//! implements the same trait so `presence` answers for the whole cluster.
//! [`CountedPresence`] wraps either and counts every operation in the
//! node's metrics.

pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::metrics::presence::PresenceOp;
use crate::metrics::Metrics;

/// One connection present in a channel.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user: Arc<str>,
    pub connection_id: Arc<str>,
    pub info: Option<Arc<RawValue>>,
}

#[derive(Debug, Clone, Error)]
pub enum PresenceError {
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Presence: Send + Sync {
    /// Records a connection as present in a channel.
    async fn join(&self, channel: &str, member: &Member) -> Result<(), PresenceError>;
    /// Removes a connection from a channel.
    async fn leave(&self, channel: &str, connection_id: &str) -> Result<(), PresenceError>;
    /// Everyone present in a channel, in no particular order.
    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError>;
    /// Records an open connection unless its user already holds
    /// `max_per_user` connections in the cluster; false when at the cap.
    /// (A single node's cap is checked by `limits::ConnectionLimits`; cluster mode
    /// counts every node's connections in Redis.)
    async fn connected(
        &self,
        _connection_id: &Arc<str>,
        _user: &Arc<str>,
        _max_per_user: usize,
    ) -> Result<bool, PresenceError> {
        Ok(true)
    }
    /// The connection's session is running (registered in the hub): from
    /// now on the node finds it there, not in presence's own records.
    fn opened(&self, _connection_id: &Arc<str>) {}
    /// Forgets a closed connection of `user`.
    async fn disconnected(
        &self,
        _connection_id: &Arc<str>,
        _user: &Arc<str>,
    ) -> Result<(), PresenceError> {
        Ok(())
    }
}

/// A connection's id: `<instance>.<session number>`, where the instance is
/// the node id plus a run id (`Node::instance`).
pub fn connection_id(instance: &str, session: u64) -> Arc<str> {
    Arc::from(format!("{instance}.{session}"))
}

/// Single-node presence in a map.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<String, IndexMap<Arc<str>, Member>>>,
}

impl MemoryPresence {
    pub fn new() -> MemoryPresence {
        MemoryPresence::default()
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn join(&self, channel: &str, member: &Member) -> Result<(), PresenceError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(channel.to_owned())
            .or_default()
            .insert(Arc::clone(&member.connection_id), member.clone());
        Ok(())
    }

    async fn leave(&self, channel: &str, connection_id: &str) -> Result<(), PresenceError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = channels.get_mut(channel) {
            members.swap_remove(connection_id);
            if members.is_empty() {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        Ok(channels
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }
}

/// A presence that counts and times every operation of the one it wraps.
pub struct CountedPresence {
    inner: Arc<dyn Presence>,
    metrics: Arc<Metrics>,
}

impl CountedPresence {
    pub fn new(inner: Arc<dyn Presence>, metrics: Arc<Metrics>) -> CountedPresence {
        CountedPresence { inner, metrics }
    }

    async fn count<T>(
        &self,
        op: PresenceOp,
        work: impl Future<Output = Result<T, PresenceError>>,
    ) -> Result<T, PresenceError> {
        let started = Instant::now();
        let result = work.await;
        self.metrics.presence(op, started.elapsed(), result.is_ok());
        result
    }
}

#[async_trait]
impl Presence for CountedPresence {
    async fn join(&self, channel: &str, member: &Member) -> Result<(), PresenceError> {
        self.count(PresenceOp::Join, self.inner.join(channel, member))
            .await
    }

    async fn leave(&self, channel: &str, connection_id: &str) -> Result<(), PresenceError> {
        self.count(PresenceOp::Leave, self.inner.leave(channel, connection_id))
            .await
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        self.count(PresenceOp::Members, self.inner.members(channel))
            .await
    }

    async fn connected(
        &self,
        connection_id: &Arc<str>,
        user: &Arc<str>,
        max_per_user: usize,
    ) -> Result<bool, PresenceError> {
        self.count(
            PresenceOp::Connected,
            self.inner.connected(connection_id, user, max_per_user),
        )
        .await
    }

    fn opened(&self, connection_id: &Arc<str>) {
        self.inner.opened(connection_id);
    }

    async fn disconnected(
        &self,
        connection_id: &Arc<str>,
        user: &Arc<str>,
    ) -> Result<(), PresenceError> {
        self.count(
            PresenceOp::Disconnected,
            self.inner.disconnected(connection_id, user),
        )
        .await
    }
}
