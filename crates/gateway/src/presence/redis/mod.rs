//! Cluster-wide presence and connection state in Redis, kept honest by a
//! node lease.
//!
//! Every write is O(1) in the channel's size (HSET/HDEL on the channel's
//! hash, SADD/SREM on this node's index), so large channels stay cheap. Each
//! node renews a short lease key; `members` filters out entries whose node
//! has no lease, so a crashed node's members vanish from every answer as soon
//! as its lease expires, and a live node reaps the dead node's entries
//! (publishing their `leave` events) shortly after.
//!
//! Here: [`RedisPresence`] and its [`Presence`] operations, the keys and the
//! writes they share with the lease task. The lease task itself (renewal,
//! rewriting what Redis lost, retrying failed removals, reaping dead nodes,
//! retiring) is in [`lease`].
//!
//! It keeps no copy of what it wrote: when Redis lost the node's state, the
//! lease task rewrites it from what the node holds anyway ([`Holdings`]: the
//! hub's subscriptions in presence, with their `info`, and its sessions), so
//! a subscription costs no bytes here, only the connections still opening
//! and the writes that failed while Redis was away ([`Outstanding`]).
//!
//! Redis keys (docs/architecture.md lists them with types and TTLs):
//! - `sb:nodes` SET of node ids with state in Redis
//! - `sb:node:<node>` STRING lease, TTL [`LEASE`](lease::LEASE)
//! - `sb:node:<node>:presence` SET of `<connection_id> <channel>` this node wrote
//! - `sb:node:<node>:conns` SET of this node's connection ids
//! - `sb:conn:<connection_id>` HASH `user`, `node`
//! - `sb:user:<user>` HASH connection id → node: the user's connections on
//!   every node, for the cluster-wide per-user cap
//! - `sb:presence:<channel>` HASH connection id → `{"user","info","node"}`
//! - `sb:reap:<node>` STRING lock while one node reaps another, TTL 30 s
//! - `sb:node:<node>:figures` STRING, the node's figures for the admin UI
//!   (JSON, [`Report`]), written with each lease renewal, TTL 10 s

pub mod lease;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::occupancy::redis::RedisOccupancy;
use crate::presence::{ConnectionId, Member, Presence, PresenceError};
use crate::redis::health::RedisHealth;
use crate::redis::link::Link;

const NODES: &str = "sb:nodes";

fn lease_key(node: &str) -> String {
    format!("sb:node:{node}")
}
fn figures_key(node: &str) -> String {
    format!("sb:node:{node}:figures")
}
fn index_key(node: &str) -> String {
    format!("sb:node:{node}:presence")
}
fn conns_key(node: &str) -> String {
    format!("sb:node:{node}:conns")
}
fn conn_key(connection_id: &str) -> String {
    format!("sb:conn:{connection_id}")
}
fn presence_key(channel: &str) -> String {
    format!("sb:presence:{channel}")
}
fn user_key(user: &str) -> String {
    format!("sb:user:{user}")
}

/// Records a connection in its user's hash unless the user already holds
/// `max` connections, in one atomic step so concurrent handshakes on several
/// nodes cannot overshoot. Entries of the dead nodes passed in (nodes in
/// `sb:nodes` whose lease has expired) are dropped on the way: their
/// connections are gone. The script touches one key, so it runs on a Redis
/// Cluster too; whether a node is alive is a lookup across slots, so each
/// node keeps that list from its once-a-second scan of the leases
/// ([`RedisPresence::reap_dead_nodes`]) instead of reading leases here. A
/// node that died less than a lease ago still counts, which errs towards
/// refusing, never towards overshooting. KEYS: user hash. ARGV: connection
/// id, node, max, dead node ids... Returns 1 when recorded, 0 when the user
/// is at the cap.
const ADMIT_CONNECTION: &str = r"
local dead = {}
for i = 4, #ARGV do
  dead[ARGV[i]] = true
end
local held = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #held, 2 do
  if dead[held[i + 1]] then
    redis.call('HDEL', KEYS[1], held[i])
  else
    live = live + 1
  end
end
if live >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// A presence entry as stored in a channel's hash.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    info: Option<Box<RawValue>>,
    node: String,
}

/// One presence entry the node holds: channel, session number, user, `info`.
pub type HeldEntry = (String, u64, Arc<str>, Option<Arc<RawValue>>);

/// What this node holds now, read by the lease task when Redis lost the
/// node's state: presence keeps no copy of the entries it wrote, it asks
/// the node (the hub's subscriptions and sessions) at the rare rewrite.
pub trait Holdings: Send + Sync {
    /// Every subscription in presence.
    fn present(&self) -> Vec<HeldEntry>;
    /// Every running session's number and user.
    fn sessions(&self) -> Vec<(u64, Arc<str>)>;
}

/// What the node reports about itself with each lease renewal: its
/// figures for the admin UI's node list, as JSON (`node::figures`
/// implements it; presence only stores the text).
pub trait Report: Send + Sync {
    fn report(&self) -> String;
}

/// The little this node keeps beside the hub: connections not yet (or no
/// longer) in it, and writes to retry. Each set holds only what is in
/// flight or failed while Redis was away; nothing per subscription.
#[derive(Debug, Default)]
struct Outstanding {
    /// connection id → user, from `connected` until the session is in the
    /// hub (`opened`): the upgrade in between must not escape a rewrite.
    opening: HashMap<Arc<str>, Arc<str>>,
    /// Removals that failed while Redis was away, retried by the lease task.
    pending_leaves: HashSet<(String, Arc<str>)>,
    /// connection id → user.
    pending_disconnects: HashMap<Arc<str>, Arc<str>>,
    /// Connections admitted while Redis was away, written when it is back:
    /// connection id → user.
    pending_connects: HashMap<Arc<str>, Arc<str>>,
}

/// Presence of a node in cluster mode.
pub struct RedisPresence {
    link: Link,
    node: String,
    config: Config,
    health: Arc<RedisHealth>,
    outstanding: Mutex<Outstanding>,
    /// What the node holds (its hub), for the rewrite.
    holdings: Arc<dyn Holdings>,
    /// Nodes in `sb:nodes` whose lease had expired at the last scan.
    dead: Mutex<Vec<String>>,
    /// Occupancy is rewritten and reaped with the rest of the node's state.
    occupancy: Arc<RedisOccupancy>,
    /// The node's figures, written with each renewal.
    report: Arc<dyn Report>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: String) -> PresenceError {
    PresenceError::Unavailable(error)
}

impl RedisPresence {
    /// `instance` names this process in Redis (the node id plus a run id).
    pub fn new(
        link: Link,
        config: Config,
        instance: String,
        health: Arc<RedisHealth>,
        occupancy: Arc<RedisOccupancy>,
        holdings: Arc<dyn Holdings>,
        report: Arc<dyn Report>,
    ) -> Arc<RedisPresence> {
        Arc::new(RedisPresence {
            link,
            node: instance,
            config,
            health,
            outstanding: Mutex::new(Outstanding::default()),
            holdings,
            dead: Mutex::default(),
            occupancy,
            report,
        })
    }

    /// The figures of every node whose figures have not expired (JSON, as
    /// each node wrote them), in no particular order.
    pub async fn figures(&self) -> Result<Vec<String>, String> {
        let nodes: Vec<String> = self.link.query(redis::cmd("SMEMBERS").arg(NODES)).await?;
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("GET").arg(figures_key(node));
        }
        let figures: Vec<Option<String>> = self.link.query_pipe(&pipe).await?;
        Ok(figures.into_iter().flatten().collect())
    }

    /// The open connections of `user` on every live node: (connection id,
    /// node), from the user's hash (`sb:user:<user>`).
    pub async fn user_connections(&self, user: &str) -> Result<Vec<(String, String)>, String> {
        let held: HashMap<String, String> = self
            .link
            .query(redis::cmd("HGETALL").arg(user_key(user)))
            .await?;
        let nodes: HashSet<&str> = held.values().map(String::as_str).collect();
        let live = self.live_nodes(&nodes).await?;
        Ok(held
            .iter()
            .filter(|(_, node)| live.contains(node.as_str()))
            .map(|(id, node)| (id.clone(), node.clone()))
            .collect())
    }

    /// Which of `connection_ids` have an entry in `channel`'s presence.
    pub async fn present_in(
        &self,
        channel: &str,
        connection_ids: &[&str],
    ) -> Result<Vec<bool>, String> {
        if connection_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut command = redis::cmd("HMGET");
        command.arg(presence_key(channel));
        for id in connection_ids {
            command.arg(*id);
        }
        let found: Vec<Option<String>> = self.link.query(&command).await?;
        Ok(found.iter().map(Option::is_some).collect())
    }

    pub fn instance(&self) -> &str {
        &self.node
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, Outstanding> {
        self.outstanding.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A presence entry as this node writes it to a channel's hash.
    fn encode_entry(&self, user: &str, info: Option<&RawValue>) -> String {
        serde_json::json!({
            "user": user,
            "info": info,
            "node": self.node,
        })
        .to_string()
    }

    /// Queues the writes recording one presence entry of this node.
    fn add_entry(
        &self,
        pipe: &mut redis::Pipeline,
        channel: &str,
        connection_id: &str,
        entry: &str,
    ) {
        pipe.cmd("HSET")
            .arg(presence_key(channel))
            .arg(connection_id)
            .arg(entry)
            .ignore();
        pipe.cmd("SADD")
            .arg(index_key(&self.node))
            .arg(format!("{connection_id} {channel}"))
            .ignore();
    }

    /// Queues the writes recording one connection of this node.
    fn add_connection(&self, pipe: &mut redis::Pipeline, connection_id: &str, user: &str) {
        pipe.cmd("HSET")
            .arg(conn_key(connection_id))
            .arg("user")
            .arg(user)
            .arg("node")
            .arg(&self.node)
            .ignore();
        pipe.cmd("SADD")
            .arg(conns_key(&self.node))
            .arg(connection_id)
            .ignore();
        pipe.cmd("HSET")
            .arg(user_key(user))
            .arg(connection_id)
            .arg(&self.node)
            .ignore();
    }

    async fn remove_entry(&self, channel: &str, connection_id: &str) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL")
            .arg(presence_key(channel))
            .arg(connection_id)
            .ignore();
        pipe.cmd("SREM")
            .arg(index_key(&self.node))
            .arg(format!("{connection_id} {channel}"))
            .ignore();
        self.link.query_pipe(&pipe).await
    }

    async fn remove_connection(&self, connection_id: &str, user: &str) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(conn_key(connection_id)).ignore();
        pipe.cmd("HDEL")
            .arg(user_key(user))
            .arg(connection_id)
            .ignore();
        pipe.cmd("SREM")
            .arg(conns_key(&self.node))
            .arg(connection_id)
            .ignore();
        self.link.query_pipe(&pipe).await
    }

    /// Nodes that hold a lease now, among `nodes`.
    async fn live_nodes(&self, nodes: &HashSet<&str>) -> Result<HashSet<String>, String> {
        if nodes.is_empty() {
            return Ok(HashSet::new());
        }
        let mut pipe = redis::pipe();
        let nodes: Vec<&str> = nodes.iter().copied().collect();
        for node in &nodes {
            pipe.cmd("EXISTS").arg(lease_key(node));
        }
        let alive: Vec<bool> = self.link.query_pipe(&pipe).await?;
        Ok(nodes
            .into_iter()
            .zip(alive)
            .filter(|(_, a)| *a)
            .map(|(n, _)| n.to_owned())
            .collect())
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn join(&self, channel: &str, member: &Member) -> Result<(), PresenceError> {
        // The hub already holds this subscription (`Hub::set_present`), so
        // nothing is kept here for a rewrite.
        let entry = self.encode_entry(&member.user, member.info.as_deref());
        let mut pipe = redis::pipe();
        self.add_entry(&mut pipe, channel, &member.connection_id, &entry);
        self.link.query_pipe(&pipe).await.map_err(unavailable)
    }

    async fn leave(
        &self,
        channel: &str,
        connection_id: ConnectionId<'_>,
    ) -> Result<(), PresenceError> {
        let connection_id = connection_id.to_string();
        if let Err(error) = self.remove_entry(channel, &connection_id).await {
            let key = (channel.to_owned(), Arc::<str>::from(connection_id));
            self.outstanding().pending_leaves.insert(key);
            return Err(unavailable(error));
        }
        Ok(())
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        let stored: HashMap<String, String> = self
            .link
            .query(redis::cmd("HGETALL").arg(presence_key(channel)))
            .await
            .map_err(unavailable)?;
        let entries: Vec<(String, Entry)> = stored
            .into_iter()
            .filter_map(|(id, text)| serde_json::from_str::<Entry>(&text).ok().map(|e| (id, e)))
            .collect();
        let nodes: HashSet<&str> = entries.iter().map(|(_, e)| e.node.as_str()).collect();
        let live = self.live_nodes(&nodes).await.map_err(unavailable)?;
        Ok(entries
            .into_iter()
            .filter(|(_, e)| live.contains(&e.node))
            .map(|(id, e)| Member {
                user: Arc::from(e.user),
                connection_id: Arc::from(id),
                info: e.info.map(Arc::from),
            })
            .collect())
    }

    async fn connected(
        &self,
        connection_id: ConnectionId<'_>,
        user: &Arc<str>,
        max_per_user: usize,
    ) -> Result<bool, PresenceError> {
        let connection_id: Arc<str> = Arc::from(connection_id.to_string());
        let connection_id = &connection_id;
        // Noted first: if Redis is away the connection is admitted on the
        // local cap alone, and the lease task writes it when Redis is back
        // (without re-checking the cap: the client is already connected).
        // Until its session is in the hub, a rewrite finds it here.
        self.outstanding()
            .opening
            .insert(Arc::clone(connection_id), Arc::clone(user));
        // The bookkeeping the reaper goes by comes first: should this node
        // die before the script runs, its entry is still found and removed.
        let mut bookkeeping = redis::pipe();
        bookkeeping
            .cmd("HSET")
            .arg(conn_key(connection_id))
            .arg("user")
            .arg(user.as_ref())
            .arg("node")
            .arg(&self.node)
            .ignore();
        bookkeeping
            .cmd("SADD")
            .arg(conns_key(&self.node))
            .arg(connection_id.as_ref())
            .ignore();
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let script = redis::Script::new(ADMIT_CONNECTION);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(user_key(user))
            .arg(connection_id.as_ref())
            .arg(&self.node)
            .arg(max_per_user)
            .arg(dead);
        let admitted = match self.link.query_pipe::<()>(&bookkeeping).await {
            Ok(()) => self.link.run_script::<i64>(&invocation).await,
            Err(error) => Err(error),
        };
        match admitted {
            Ok(1) => Ok(true),
            Ok(_) => {
                self.outstanding().opening.remove(connection_id);
                let mut undo = redis::pipe();
                undo.cmd("DEL").arg(conn_key(connection_id)).ignore();
                undo.cmd("SREM")
                    .arg(conns_key(&self.node))
                    .arg(connection_id.as_ref())
                    .ignore();
                if let Err(error) = self.link.query_pipe::<()>(&undo).await {
                    tracing::warn!(message = "could not undo a refused connection's record", %error);
                }
                Ok(false)
            }
            Err(error) => {
                self.outstanding()
                    .pending_connects
                    .insert(Arc::clone(connection_id), Arc::clone(user));
                Err(unavailable(error))
            }
        }
    }

    fn opened(&self, connection_id: ConnectionId<'_>) {
        let connection_id = connection_id.to_string();
        self.outstanding().opening.remove(connection_id.as_str());
    }

    async fn disconnected(
        &self,
        connection_id: ConnectionId<'_>,
        user: &Arc<str>,
    ) -> Result<(), PresenceError> {
        let connection_id: Arc<str> = Arc::from(connection_id.to_string());
        let connection_id = &connection_id;
        {
            let mut outstanding = self.outstanding();
            outstanding.opening.remove(connection_id);
            outstanding.pending_connects.remove(connection_id);
        }
        if let Err(error) = self.remove_connection(connection_id, user).await {
            self.outstanding()
                .pending_disconnects
                .insert(Arc::clone(connection_id), Arc::clone(user));
            return Err(unavailable(error));
        }
        Ok(())
    }
}
