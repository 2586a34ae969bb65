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
//! Redis keys (docs/architecture.md lists them with types and TTLs):
//! - `sb:nodes` SET of node ids with state in Redis
//! - `sb:node:<node>` STRING lease, TTL [`LEASE`]
//! - `sb:node:<node>:presence` SET of `<connection_id> <channel>` this node wrote
//! - `sb:node:<node>:conns` SET of this node's connection ids
//! - `sb:conn:<connection_id>` HASH `user`, `node`
//! - `sb:user:<user>` HASH connection id → node: the user's connections on
//!   every node, for the cluster-wide per-user cap
//! - `sb:presence:<channel>` HASH connection id → `{"user","info","node"}`
//! - `sb:reap:<node>` STRING lock while one node reaps another, TTL 30 s

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::Pool;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::channel::namespace;
use switchboard_protocol::ServerFrame;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::presence::{Member, Presence, PresenceError};
use crate::redis_broker::{query, query_pipe, run_script, RedisHealth, CHANNEL_PREFIX};

/// How long a node's lease lives without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the lease is renewed and dead nodes are looked for.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
const REAP_LOCK: Duration = Duration::from_secs(30);
const NODES: &str = "sb:nodes";

fn lease_key(node: &str) -> String {
    format!("sb:node:{node}")
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

/// Records a connection unless its user already holds `max` connections on
/// live nodes, in one atomic step so concurrent handshakes on several nodes
/// cannot overshoot. Entries of nodes without a lease are dropped on the way
/// (their connections are gone). KEYS: user hash, connection hash, this
/// node's connection set. ARGV: connection id, node, user, max. Returns 1
/// when recorded, 0 when the user is at the cap.
const ADMIT_CONNECTION: &str = r"
local held = redis.call('HGETALL', KEYS[1])
local live = 0
local alive = {}
for i = 1, #held, 2 do
  local node = held[i + 1]
  if alive[node] == nil then
    alive[node] = redis.call('EXISTS', 'sb:node:' .. node) == 1
  end
  if alive[node] then
    live = live + 1
  else
    redis.call('HDEL', KEYS[1], held[i])
  end
end
if live >= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'user', ARGV[3], 'node', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
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

/// What this node wrote, so it can be rewritten if Redis lost it.
#[derive(Debug, Default)]
struct Mirror {
    /// (channel, connection id) → encoded entry.
    presence: HashMap<(String, Arc<str>), String>,
    /// connection id → user.
    connections: HashMap<Arc<str>, Arc<str>>,
    /// Removals that failed while Redis was away, retried by the lease task.
    pending_leaves: HashSet<(String, Arc<str>)>,
    /// connection id → user.
    pending_disconnects: HashMap<Arc<str>, Arc<str>>,
    /// Connections admitted while Redis was away, written when it is back.
    pending_connects: HashSet<Arc<str>>,
}

/// Presence of a node in cluster mode.
pub struct RedisPresence {
    pool: Pool,
    node: String,
    config: Config,
    health: Arc<RedisHealth>,
    mirror: Mutex<Mirror>,
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
        pool: Pool,
        config: Config,
        instance: String,
        health: Arc<RedisHealth>,
    ) -> Arc<RedisPresence> {
        Arc::new(RedisPresence {
            pool,
            node: instance,
            config,
            health,
            mirror: Mutex::new(Mirror::default()),
        })
    }

    pub fn instance(&self) -> &str {
        &self.node
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews the lease and reaps dead nodes until shutdown, then retires
    /// this node's lease.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.renew().await {
                Ok(()) => self.health.set_lease(true),
                Err(error) => {
                    self.health.set_lease(false);
                    self.health.record_error(&error);
                    tracing::warn!(message = "redis lease not renewed", %error);
                    continue;
                }
            }
            if let Err(error) = self.retry_pending().await {
                tracing::warn!(message = "presence cleanup retry failed", %error);
            }
            if let Err(error) = self.reap_dead_nodes().await {
                tracing::warn!(message = "reaping dead nodes failed", %error);
            }
        }
    }

    /// Renews the lease; if it had lapsed (Redis restarted, or this node was
    /// cut off long enough to be reaped) rewrites everything this node owns.
    async fn renew(&self) -> Result<(), String> {
        let mut renew = redis::cmd("SET");
        renew
            .arg(lease_key(&self.node))
            .arg(1)
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .arg("XX");
        let renewed: Option<String> = query(&self.pool, &renew).await?;
        if renewed.is_some() {
            return Ok(());
        }
        let (presence, connections) = {
            let mirror = self.mirror();
            (mirror.presence.clone(), mirror.connections.clone())
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SADD").arg(NODES).arg(&self.node).ignore();
        for ((channel, connection_id), entry) in &presence {
            self.add_entry(&mut pipe, channel, connection_id, entry);
        }
        for (connection_id, user) in &connections {
            self.add_connection(&mut pipe, connection_id, user);
        }
        pipe.cmd("SET")
            .arg(lease_key(&self.node))
            .arg(1)
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .ignore();
        query_pipe::<()>(&self.pool, &pipe).await?;
        tracing::info!(
            message = "redis lease acquired",
            entries = presence.len(),
            connections = connections.len()
        );
        Ok(())
    }

    async fn retry_pending(&self) -> Result<(), String> {
        let (leaves, disconnects, connects) = {
            let mut mirror = self.mirror();
            let connects: Vec<(Arc<str>, Arc<str>)> = std::mem::take(&mut mirror.pending_connects)
                .into_iter()
                .filter_map(|id| {
                    let user = mirror.connections.get(&id).cloned()?;
                    Some((id, user))
                })
                .collect();
            (
                std::mem::take(&mut mirror.pending_leaves),
                std::mem::take(&mut mirror.pending_disconnects),
                connects,
            )
        };
        if !connects.is_empty() {
            let mut pipe = redis::pipe();
            for (connection_id, user) in &connects {
                self.add_connection(&mut pipe, connection_id, user);
            }
            if let Err(error) = query_pipe::<()>(&self.pool, &pipe).await {
                self.mirror()
                    .pending_connects
                    .extend(connects.into_iter().map(|(id, _)| id));
                return Err(error);
            }
        }
        for (channel, connection_id) in &leaves {
            if let Err(error) = self.remove_entry(channel, connection_id).await {
                self.mirror().pending_leaves.extend(leaves.iter().cloned());
                return Err(error);
            }
        }
        for (connection_id, user) in &disconnects {
            if let Err(error) = self.remove_connection(connection_id, user).await {
                self.mirror().pending_disconnects.extend(
                    disconnects
                        .iter()
                        .map(|(id, user)| (Arc::clone(id), Arc::clone(user))),
                );
                return Err(error);
            }
        }
        Ok(())
    }

    /// Finds nodes without a lease and removes their state, one reaper per
    /// dead node (a lock key), publishing `leave` events where enabled.
    async fn reap_dead_nodes(&self) -> Result<(), String> {
        let nodes: Vec<String> = query(&self.pool, redis::cmd("SMEMBERS").arg(NODES)).await?;
        for node in nodes.into_iter().filter(|n| *n != self.node) {
            let alive: bool = query(&self.pool, redis::cmd("EXISTS").arg(lease_key(&node))).await?;
            if alive {
                continue;
            }
            let mut lock = redis::cmd("SET");
            lock.arg(format!("sb:reap:{node}"))
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(REAP_LOCK.as_millis() as u64);
            let locked: Option<String> = query(&self.pool, &lock).await?;
            if locked.is_some() {
                self.reap(&node).await?;
            }
        }
        Ok(())
    }

    async fn reap(&self, node: &str) -> Result<(), String> {
        let entries: Vec<String> =
            query(&self.pool, redis::cmd("SMEMBERS").arg(index_key(node))).await?;
        let mut leaves = 0usize;
        for chunk in entries.chunks(256) {
            // A big dead node takes many round trips: keep our own lease alive.
            self.renew().await?;
            let parsed: Vec<(&str, &str)> =
                chunk.iter().filter_map(|e| e.split_once(' ')).collect();
            let mut read = redis::pipe();
            for (connection_id, channel) in &parsed {
                read.cmd("HGET")
                    .arg(presence_key(channel))
                    .arg(*connection_id);
            }
            let stored: Vec<Option<String>> = query_pipe(&self.pool, &read).await?;
            let mut write = redis::pipe();
            for ((connection_id, channel), stored) in parsed.iter().zip(stored) {
                let Some(entry) = stored.and_then(|s| serde_json::from_str::<Entry>(&s).ok())
                else {
                    continue;
                };
                if entry.node != node {
                    continue;
                }
                write
                    .cmd("HDEL")
                    .arg(presence_key(channel))
                    .arg(*connection_id)
                    .ignore();
                let namespace = self.config.namespace(namespace(channel));
                if namespace.join_leave {
                    let frame = ServerFrame::Leave {
                        channel,
                        user: &entry.user,
                        connection_id,
                    }
                    .encode();
                    write
                        .cmd("PUBLISH")
                        .arg(format!("{CHANNEL_PREFIX}{channel}"))
                        .arg(frame)
                        .ignore();
                    leaves += 1;
                }
            }
            query_pipe::<()>(&self.pool, &write).await?;
        }
        let connections: Vec<String> =
            query(&self.pool, redis::cmd("SMEMBERS").arg(conns_key(node))).await?;
        let mut cleanup = redis::pipe();
        for chunk in connections.chunks(256) {
            let mut users = redis::pipe();
            for connection_id in chunk {
                users.cmd("HGET").arg(conn_key(connection_id)).arg("user");
            }
            let users: Vec<Option<String>> = query_pipe(&self.pool, &users).await?;
            for (connection_id, user) in chunk.iter().zip(users) {
                if let Some(user) = user {
                    cleanup
                        .cmd("HDEL")
                        .arg(user_key(&user))
                        .arg(connection_id)
                        .ignore();
                }
            }
            let keys: Vec<String> = chunk.iter().map(|c| conn_key(c)).collect();
            cleanup.cmd("DEL").arg(keys).ignore();
        }
        cleanup
            .cmd("DEL")
            .arg(index_key(node))
            .arg(conns_key(node))
            .ignore();
        cleanup.cmd("SREM").arg(NODES).arg(node).ignore();
        query_pipe::<()>(&self.pool, &cleanup).await?;
        tracing::info!(
            message = "reaped a dead node",
            dead_node = node,
            entries = entries.len(),
            connections = connections.len(),
            leaves
        );
        Ok(())
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
        query_pipe(&self.pool, &pipe).await
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
        query_pipe(&self.pool, &pipe).await
    }

    /// Gives up this node's lease at a clean shutdown (after its sessions
    /// have left).
    pub async fn retire(&self) {
        // Only the lease goes: if sessions outlived the grace period, their
        // entries stay indexed and a live node (or the next to start) reaps
        // them with their leave events, as for a crash.
        if let Err(error) =
            query::<()>(&self.pool, redis::cmd("DEL").arg(lease_key(&self.node))).await
        {
            tracing::warn!(message = "could not retire the node's redis lease", %error);
        }
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
        let alive: Vec<bool> = query_pipe(&self.pool, &pipe).await?;
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
        let entry = serde_json::json!({
            "user": member.user,
            "info": member.info,
            "node": self.node,
        })
        .to_string();
        self.mirror().presence.insert(
            (channel.to_owned(), Arc::clone(&member.connection_id)),
            entry.clone(),
        );
        let mut pipe = redis::pipe();
        self.add_entry(&mut pipe, channel, &member.connection_id, &entry);
        query_pipe(&self.pool, &pipe).await.map_err(unavailable)
    }

    async fn leave(&self, channel: &str, connection_id: &str) -> Result<(), PresenceError> {
        // Arc<str> hashes as str, so a fresh key finds the mirror's entry
        // directly: no scan over everything this node holds.
        let key = (channel.to_owned(), Arc::<str>::from(connection_id));
        self.mirror().presence.remove(&key);
        if let Err(error) = self.remove_entry(channel, connection_id).await {
            self.mirror().pending_leaves.insert(key);
            return Err(unavailable(error));
        }
        Ok(())
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        let stored: HashMap<String, String> =
            query(&self.pool, redis::cmd("HGETALL").arg(presence_key(channel)))
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
        connection_id: &Arc<str>,
        user: &Arc<str>,
        max_per_user: usize,
    ) -> Result<bool, PresenceError> {
        // Mirrored first: if Redis is away the connection is admitted on the
        // local cap alone, and the lease task writes it when Redis is back
        // (without re-checking the cap: the client is already connected).
        self.mirror()
            .connections
            .insert(Arc::clone(connection_id), Arc::clone(user));
        let script = redis::Script::new(ADMIT_CONNECTION);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(user_key(user))
            .key(conn_key(connection_id))
            .key(conns_key(&self.node))
            .arg(connection_id.as_ref())
            .arg(&self.node)
            .arg(user.as_ref())
            .arg(max_per_user);
        match run_script::<i64>(&self.pool, &invocation).await {
            Ok(1) => Ok(true),
            Ok(_) => {
                self.mirror().connections.remove(connection_id);
                Ok(false)
            }
            Err(error) => {
                self.mirror()
                    .pending_connects
                    .insert(Arc::clone(connection_id));
                Err(unavailable(error))
            }
        }
    }

    async fn disconnected(&self, connection_id: &Arc<str>) -> Result<(), PresenceError> {
        let Some(user) = self.mirror().connections.remove(connection_id) else {
            return Ok(());
        };
        if let Err(error) = self.remove_connection(connection_id, &user).await {
            self.mirror()
                .pending_disconnects
                .insert(Arc::clone(connection_id), user);
            return Err(unavailable(error));
        }
        Ok(())
    }
}
