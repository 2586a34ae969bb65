//! `GET /admin/api/nodes`: every live node of the cluster with its figures
//! (version, uptime, connections, subscriptions, messages in and out per
//! second, the Redis mode and health, draining), this node marked
//! `this_node`. In cluster mode they are read from Redis, where each node
//! writes its own every second with its lease (gone 10 s after its last
//! write, or at once when it exits); a single node lists itself.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde::Serialize;

use crate::http::response::{self, Body};
use crate::node::{ListedNode, Node};

#[derive(Serialize)]
struct Answer {
    nodes: Vec<ListedNode>,
}

/// `{"nodes": [...]}`, sorted by node id; 503 `unavailable` when Redis
/// cannot be read.
pub async fn nodes(node: &Arc<Node>) -> Response<Body> {
    match node.list_nodes().await {
        Ok(nodes) => match serde_json::to_string(&Answer { nodes }) {
            Ok(text) => response::json_text(StatusCode::OK, text),
            Err(error) => {
                tracing::warn!(message = "admin node list not encoded", %error);
                internal()
            }
        },
        Err(error) => {
            tracing::warn!(message = "admin node list failed", %error);
            response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "node list unavailable",
                Some(response::RETRY_AFTER_SECS),
            )
        }
    }
}

fn internal() -> Response<Body> {
    response::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
        None,
    )
}
