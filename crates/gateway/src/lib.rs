//! The Switchboard gateway node as a library: the `switchboard` binary is a
//! thin `main` over [`run`], and integration tests drive the same code.
//!
//! Map (docs/architecture.md has the whole code map): `config` (file and
//! environment, one module per section), `metrics` (Prometheus),
//! `compression` (permessage-deflate, below the session), `redis`
//! (which Redis, the shared link, Pub/Sub names, link health), `hub`
//! (local fan-out), `history`, `presence` and `occupancy` (each a shared
//! part in `mod.rs`, its Redis form in `redis`), `broker` (cross-node
//! delivery, in memory or on Redis), `auth` (JWT), `limits` (admission),
//! `backend` (webhooks, subscribe proxy), `node` (the shared state),
//! `session` (one task per WebSocket), `http` (accept loop, handshake,
//! server API). Dependencies run one way, in that order, bottom first;
//! `scripts/check-layers.py` keeps it so.

pub mod auth;
pub mod backend;
pub mod broker;
pub mod compression;
pub mod config;
pub mod history;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod occupancy;
pub mod presence;
pub mod redis;
pub mod session;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::Node;

/// Starts a node (cluster mode when a Redis URL is configured), serves until
/// `node.shutdown` is cancelled, then waits up to the shutdown grace period
/// for sessions to close.
pub async fn run(config: Config, listener: TcpListener) -> Result<(), String> {
    serve(start(config)?, listener).await;
    Ok(())
}

/// Builds the node the configuration asks for; call inside the runtime.
pub fn start(config: Config) -> Result<Arc<Node>, String> {
    match config.redis.clone() {
        Some(target) => Node::cluster(config, &target),
        None => Node::in_memory(config),
    }
}

/// Serves a built node on a bound listener until shutdown completes: once
/// `node.shutdown` is cancelled, sessions close over the drain window, and
/// the grace period after it bounds how long their last writes may take.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    http::server::serve(Arc::clone(&node), listener).await;
    node.tasks.close();
    let grace = node.config.drain_window + node.config.shutdown_grace;
    if tokio::time::timeout(grace, node.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            message = "shutdown grace period ended with tasks still running",
            grace_ms = grace.as_millis() as u64,
            remaining = node.tasks.len()
        );
    }
    node.retire().await;
}
