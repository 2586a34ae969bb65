//! Presence: which connections of which users are subscribed to a channel,
//! with the `info` from their tokens.
//!
//! [`MemoryPresence`] serves a single node: it keeps nothing of its own and
//! answers from the node's record of its subscriptions (a [`Roster`], the
//! hub). The Redis presence (cluster mode) implements the same trait so
//! `presence` answers for the whole cluster.
//! [`CountedPresence`] wraps either and counts every operation in the
//! node's metrics.

pub mod redis;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
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
    async fn leave(
        &self,
        channel: &str,
        connection_id: ConnectionId<'_>,
    ) -> Result<(), PresenceError>;
    /// Everyone present in a channel, in no particular order.
    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError>;
    /// Records an open connection unless its user already holds
    /// `max_per_user` connections in the cluster; false when at the cap.
    /// (A single node's cap is checked by `limits::ConnectionLimits`; cluster mode
    /// counts every node's connections in Redis.)
    async fn connected(
        &self,
        _connection_id: ConnectionId<'_>,
        _user: &Arc<str>,
        _max_per_user: usize,
    ) -> Result<bool, PresenceError> {
        Ok(true)
    }
    /// The connection's session is running (registered in the hub): from
    /// now on the node finds it there, not in presence's own records.
    fn opened(&self, _connection_id: ConnectionId<'_>) {}
    /// Forgets a closed connection of `user`.
    async fn disconnected(
        &self,
        _connection_id: ConnectionId<'_>,
        _user: &Arc<str>,
    ) -> Result<(), PresenceError> {
        Ok(())
    }
}

/// A connection's id: `<instance>.<session number>`, where the instance is
/// the node id plus a run id (`Node::instance`).
///
/// Nothing per connection keeps it as text: the session number is in the
/// session's hub handle and the instance is the node's, so this is a view
/// of the two, formatted only where text is needed (the welcome, Redis,
/// the subscribe proxy, `join`/`leave` events, logs), never per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId<'a> {
    pub instance: &'a str,
    pub session: u64,
}

impl ConnectionId<'_> {
    pub fn new(instance: &str, session: u64) -> ConnectionId<'_> {
        ConnectionId { instance, session }
    }
}

impl fmt::Display for ConnectionId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.instance, self.session)
    }
}

/// A connection's id as shared text (for a [`Member`]).
pub fn connection_id(instance: &str, session: u64) -> Arc<str> {
    Arc::from(ConnectionId::new(instance, session).to_string())
}

/// One subscription in a channel's presence on this node: session number,
/// user, `info`.
pub type LocalEntry = (u64, Arc<str>, Option<Arc<RawValue>>);

/// What a single node's presence is read from: the node's own record of
/// which subscriptions entered presence, with which `info` (the hub's
/// subscriber entries; the hub and presence sit on the same layer, so
/// `node.rs` ties them together).
pub trait Roster: Send + Sync {
    /// The subscriptions in `channel`'s presence on this node, in no
    /// particular order.
    fn present_in(&self, channel: &str) -> Vec<LocalEntry>;
}

/// Single-node presence, read from the node's [`Roster`]. It stores
/// nothing per subscription: the session records the subscription's
/// presence (`Hub::set_present`) before it calls [`Presence::join`], and
/// unsubscribing from the hub removes it before [`Presence::leave`], so
/// `join` and `leave` have nothing left to do.
pub struct MemoryPresence {
    roster: Arc<dyn Roster>,
    /// The node's instance id, which connection ids are built from.
    instance: String,
}

impl MemoryPresence {
    pub fn new(roster: Arc<dyn Roster>, instance: String) -> MemoryPresence {
        MemoryPresence { roster, instance }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn join(&self, _channel: &str, _member: &Member) -> Result<(), PresenceError> {
        Ok(())
    }

    async fn leave(
        &self,
        _channel: &str,
        _connection_id: ConnectionId<'_>,
    ) -> Result<(), PresenceError> {
        Ok(())
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        Ok(self
            .roster
            .present_in(channel)
            .into_iter()
            .map(|(session, user, info)| Member {
                user,
                connection_id: connection_id(&self.instance, session),
                info,
            })
            .collect())
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

    async fn leave(
        &self,
        channel: &str,
        connection_id: ConnectionId<'_>,
    ) -> Result<(), PresenceError> {
        self.count(PresenceOp::Leave, self.inner.leave(channel, connection_id))
            .await
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        self.count(PresenceOp::Members, self.inner.members(channel))
            .await
    }

    async fn connected(
        &self,
        connection_id: ConnectionId<'_>,
        user: &Arc<str>,
        max_per_user: usize,
    ) -> Result<bool, PresenceError> {
        self.count(
            PresenceOp::Connected,
            self.inner.connected(connection_id, user, max_per_user),
        )
        .await
    }

    fn opened(&self, connection_id: ConnectionId<'_>) {
        self.inner.opened(connection_id);
    }

    async fn disconnected(
        &self,
        connection_id: ConnectionId<'_>,
        user: &Arc<str>,
    ) -> Result<(), PresenceError> {
        self.count(
            PresenceOp::Disconnected,
            self.inner.disconnected(connection_id, user),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<LocalEntry>);

    impl Roster for Fixed {
        fn present_in(&self, channel: &str) -> Vec<LocalEntry> {
            if channel == "c" {
                self.0.clone()
            } else {
                Vec::new()
            }
        }
    }

    #[tokio::test]
    async fn memory_presence_lists_the_roster_with_connection_ids() {
        let info: Arc<RawValue> = Arc::from(RawValue::from_string("{\"k\":1}".into()).unwrap());
        let roster = Fixed(vec![
            (7, Arc::from("alice"), Some(Arc::clone(&info))),
            (2, Arc::from("bob"), None),
        ]);
        let presence = MemoryPresence::new(Arc::new(roster), "n.abc123".into());
        let member = Member {
            user: Arc::from("carol"),
            connection_id: connection_id("n.abc123", 9),
            info: None,
        };
        presence.join("c", &member).await.unwrap();
        presence
            .leave("c", ConnectionId::new("n.abc123", 7))
            .await
            .unwrap();
        let members = presence.members("c").await.unwrap();
        assert_eq!(
            serde_json::to_value(&members).unwrap(),
            serde_json::json!([
                {"user": "alice", "connection_id": "n.abc123.7", "info": {"k": 1}},
                {"user": "bob", "connection_id": "n.abc123.2", "info": null},
            ]),
            "the roster alone decides: join and leave change nothing"
        );
        assert!(presence.members("d").await.unwrap().is_empty());
    }

    #[test]
    fn a_connection_id_is_the_instance_and_the_session_number() {
        let id = ConnectionId::new("gw-1.0a1b2c", 42);
        assert_eq!(id.to_string(), "gw-1.0a1b2c.42");
        assert_eq!(&*connection_id("gw-1.0a1b2c", 42), "gw-1.0a1b2c.42");
    }
}
