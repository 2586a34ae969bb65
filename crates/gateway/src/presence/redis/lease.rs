//! The node lease: renewed each second, so other nodes know this one is
//! alive, and the upkeep that rides on it. When the lease had lapsed (Redis
//! restarted, or the node was cut off long enough to be reaped) the node
//! rewrites everything it owns from what the node holds (the hub, through
//! [`Holdings`](super::Holdings)); removals that failed while
//! Redis was away are retried; nodes without a lease are reaped, one reaper
//! per dead node, with their members' `leave` events; at a clean shutdown
//! the lease is given back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::channel::namespace;
use switchboard_protocol::ServerFrame;
use tokio_util::sync::CancellationToken;

use crate::presence::connection_id;
use crate::presence::redis::{
    conn_key, conns_key, figures_key, index_key, lease_key, presence_key, user_key, Entry,
    RedisPresence, NODES,
};
use crate::redis::pubsub::{publish_command, pubsub_channel};

/// How long a node's lease lives without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the lease is renewed and dead nodes are looked for.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
const REAP_LOCK: Duration = Duration::from_secs(30);
/// How long a node's figures stay after its last renewal.
pub const FIGURES_TTL: Duration = Duration::from_secs(10);

impl RedisPresence {
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
                    self.health.record_command_error(&error);
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

    /// Renews the lease and writes the node's figures beside it (one
    /// round trip); if the lease had lapsed (Redis restarted, or this node
    /// was cut off long enough to be reaped) rewrites everything this node
    /// owns.
    async fn renew(&self) -> Result<(), String> {
        let mut renew = redis::pipe();
        renew
            .cmd("SET")
            .arg(lease_key(&self.node))
            .arg(1)
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .arg("XX");
        renew
            .cmd("SET")
            .arg(figures_key(&self.node))
            .arg(self.report.report())
            .arg("PX")
            .arg(FIGURES_TTL.as_millis() as u64)
            .ignore();
        let renewed: Vec<Option<String>> = self.link.query_pipe(&renew).await?;
        if renewed.first().is_some_and(Option::is_some) {
            return Ok(());
        }
        // The connections still opening first, then the hub: a session
        // leaves `opening` only once it is in the hub, so none is missed.
        let mut connections: Vec<(Arc<str>, Arc<str>)> = self
            .outstanding()
            .opening
            .iter()
            .map(|(id, user)| (Arc::clone(id), Arc::clone(user)))
            .collect();
        connections.extend(
            self.holdings
                .sessions()
                .into_iter()
                .map(|(session, user)| (connection_id(&self.node, session), user)),
        );
        let presence = self.holdings.present();
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
        for (channel, session, user, info) in &presence {
            let entry = self.encode_entry(user, info.as_deref());
            let id = connection_id(&self.node, *session);
            self.add_entry(&mut pipe, channel, &id, &entry);
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
        self.occupancy
            .resend_all(|channel| self.config.namespace(namespace(channel)).presence);
        tracing::info!(
            message = "redis lease acquired",
            entries = presence.len(),
            connections = connections.len()
        );
        Ok(())
    }

    async fn retry_pending(&self) -> Result<(), String> {
        let (leaves, disconnects, connects) = {
            let mut outstanding = self.outstanding();
            let connects: Vec<(Arc<str>, Arc<str>)> =
                std::mem::take(&mut outstanding.pending_connects)
                    .into_iter()
                    .collect();
            (
                std::mem::take(&mut outstanding.pending_leaves),
                std::mem::take(&mut outstanding.pending_disconnects),
                connects,
            )
        };
        if !connects.is_empty() {
            let mut pipe = redis::pipe();
            for (connection_id, user) in &connects {
                self.add_connection(&mut pipe, connection_id, user);
            }
            if let Err(error) = self.link.query_pipe::<()>(&pipe).await {
                self.outstanding().pending_connects.extend(connects);
                return Err(error);
            }
        }
        for (channel, connection_id) in &leaves {
            if let Err(error) = self.remove_entry(channel, connection_id).await {
                self.outstanding()
                    .pending_leaves
                    .extend(leaves.iter().cloned());
                return Err(error);
            }
        }
        for (connection_id, user) in &disconnects {
            if let Err(error) = self.remove_connection(connection_id, user).await {
                self.outstanding().pending_disconnects.extend(
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

    /// Gives up this node's lease at a clean shutdown (after its sessions
    /// have left).
    pub async fn retire(&self) {
        // Only the lease (and the figures) go: if sessions outlived the
        // grace period, their entries stay indexed and a live node (or the
        // next to start) reaps them with their leave events, as for a
        // crash. One key per DEL: on a cluster they are in different slots.
        let mut retire = redis::pipe();
        retire.cmd("DEL").arg(lease_key(&self.node)).ignore();
        retire.cmd("DEL").arg(figures_key(&self.node)).ignore();
        if let Err(error) = self.link.query_pipe::<()>(&retire).await {
            tracing::warn!(message = "could not retire the node's redis lease", %error);
        }
    }
}
