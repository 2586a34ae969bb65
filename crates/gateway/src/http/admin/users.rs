//! `GET /admin/api/user?id=<user>`: a user's open connections, each with
//! its node and the channels it is subscribed to, over the whole cluster in
//! cluster mode (`Node::user_connections` says what Redis can tell), sorted
//! by node and connection id so the page does not jump between reloads.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde::Serialize;

use crate::http::response::{self, Body};
use crate::node::{Node, UserConnection};

/// The longest user id looked up (a token's `sub` is far shorter).
const MAX_USER_BYTES: usize = 1024;

#[derive(Serialize)]
struct Answer {
    user: String,
    connections: Vec<UserConnection>,
}

/// The value of `name` in a query string, percent-decoded (the first one).
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// `{"user", "connections": [{"connection_id", "node_id", "channels"}]}`;
/// 400 without an `id`, 503 when Redis cannot be read.
pub async fn user(node: &Arc<Node>, query: &str) -> Response<Body> {
    let Some(user) =
        query_param(query, "id").filter(|u| !u.is_empty() && u.len() <= MAX_USER_BYTES)
    else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "id=<user> is required (at most 1024 bytes)",
            None,
        );
    };
    let connections = match node.user_connections(&user).await {
        Ok(connections) => connections,
        Err(error) => {
            tracing::warn!(message = "admin user lookup failed", %error);
            return response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "user lookup unavailable",
                Some(response::RETRY_AFTER_SECS),
            );
        }
    };
    match serde_json::to_string(&Answer { user, connections }) {
        Ok(text) => response::json_text(StatusCode::OK, text),
        Err(error) => {
            tracing::warn!(message = "admin user answer not encoded", %error);
            response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
                None,
            )
        }
    }
}
