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
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::channel::namespace;
use switchboard_protocol::ServerFrame;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::occupancy::redis::RedisOccupancy;
use crate::presence::{Member, Presence, PresenceError};
use crate::redis::health::RedisHealth;
use crate::redis::link::Link;
use crate::redis::pubsub::{publish_command, pubsub_channel};

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
    link: Link,
    node: String,
    config: Config,
    health: Arc<RedisHealth>,
    mirror: Mutex<Mirror>,
    /// Nodes in `sb:nodes` whose lease had expired at the last scan.
    dead: Mutex<Vec<String>>,
    /// Occupancy is rewritten and reaped with the rest of the node's state.
    occupancy: Arc<RedisOccupancy>,
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
    ) -> Arc<RedisPresence> {
        Arc::new(RedisPresence {
            link,
            node: instance,
            config,
            health,
            mirror: Mutex::new(Mirror::default()),
            dead: Mutex::default(),
            occupancy,
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
        let renewed: Option<String> = self.link.query(&renew).await?;
        if renewed.is_some() {
            return Ok(());
        }
        let (presence, connections) = {
            let mirror = self.mirror();
            (mirror.presence.clone(), mirror.connections.clone())
        };
        // The lease first, so no reaper starts on this node's entries while
        // they are rewritten. Not a MULTI: on a cluster the keys live in
        // many slots; a rewrite cut short is redone at the next renewal.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(lease_key(&self.node))
            .arg(1)
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .ignore();
        pipe.cmd("SADD").arg(NODES).arg(&self.node).ignore();
        for ((channel, connection_id), entry) in &presence {
            self.add_entry(&mut pipe, channel, connection_id, entry);
        }
        for (connection_id, user) in &connections {
            self.add_connection(&mut pipe, connection_id, user);
        }
        if let Err(error) = self.link.query_pipe::<()>(&pipe).await {
            // Give the lease back, so the next renewal rewrites everything.
            let _ = self
                .link
                .query::<()>(redis::cmd("DEL").arg(lease_key(&self.node)))
                .await;
            return Err(error);
        }
        self.occupancy.resend_all();
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
            if let Err(error) = self.link.query_pipe::<()>(&pipe).await {
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
        let nodes: Vec<String> = self.link.query(redis::cmd("SMEMBERS").arg(NODES)).await?;
        let others: HashSet<&str> = nodes
            .iter()
            .map(String::as_str)
            .filter(|n| *n != self.node)
            .collect();
        let live = self.live_nodes(&others).await?;
        let dead: Vec<String> = others
            .into_iter()
            .filter(|n| !live.contains(*n))
            .map(str::to_owned)
            .collect();
        *self.dead.lock().unwrap_or_else(|e| e.into_inner()) = dead.clone();
        for node in dead {
            let mut lock = redis::cmd("SET");
            lock.arg(format!("sb:reap:{node}"))
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(REAP_LOCK.as_millis() as u64);
            let locked: Option<String> = self.link.query(&lock).await?;
            if locked.is_some() {
                self.reap(&node).await?;
            }
        }
        Ok(())
    }

    async fn reap(&self, node: &str) -> Result<(), String> {
        let entries: Vec<String> = self
            .link
            .query(redis::cmd("SMEMBERS").arg(index_key(node)))
            .await?;
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
            let stored: Vec<Option<String>> = self.link.query_pipe(&read).await?;
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
                    let mode = self.link.mode();
                    write
                        .cmd(publish_command(mode))
                        .arg(pubsub_channel(mode, channel))
                        .arg(frame)
                        .ignore();
                    leaves += 1;
                }
            }
            self.link.query_pipe::<()>(&write).await?;
        }
        let connections: Vec<String> = self
            .link
            .query(redis::cmd("SMEMBERS").arg(conns_key(node)))
            .await?;
        // Its users' departures (and their webhook events) before the node
        // leaves `sb:nodes`: if this fails, the next reaper does it again.
        self.occupancy.reap(node).await?;
        let mut cleanup = redis::pipe();
        for chunk in connections.chunks(256) {
            let mut users = redis::pipe();
            for connection_id in chunk {
                users.cmd("HGET").arg(conn_key(connection_id)).arg("user");
            }
            let users: Vec<Option<String>> = self.link.query_pipe(&users).await?;
            for (connection_id, user) in chunk.iter().zip(users) {
                if let Some(user) = user {
                    cleanup
                        .cmd("HDEL")
                        .arg(user_key(&user))
                        .arg(connection_id)
                        .ignore();
                }
            }
            // One key per DEL: on a cluster the keys are in different slots.
            for connection_id in chunk {
                cleanup.cmd("DEL").arg(conn_key(connection_id)).ignore();
            }
        }
        cleanup.cmd("DEL").arg(index_key(node)).ignore();
        cleanup.cmd("DEL").arg(conns_key(node)).ignore();
        cleanup.cmd("SREM").arg(NODES).arg(node).ignore();
        self.link.query_pipe::<()>(&cleanup).await?;
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

    /// Gives up this node's lease at a clean shutdown (after its sessions
    /// have left).
    pub async fn retire(&self) {
        // Only the lease goes: if sessions outlived the grace period, their
        // entries stay indexed and a live node (or the next to start) reaps
        // them with their leave events, as for a crash.
        if let Err(error) = self
            .link
            .query::<()>(redis::cmd("DEL").arg(lease_key(&self.node)))
            .await
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
        self.link.query_pipe(&pipe).await.map_err(unavailable)
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
                self.mirror().connections.remove(connection_id);
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
