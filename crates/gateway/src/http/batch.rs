//! `POST /api/batch`: many publishes in one server API request, each with
//! its own answer.
//!
//! The body is `{"messages": [{"channel", "data"}, ...]}` with 1 to
//! `MAX_BATCH_MESSAGES` (1000) messages, at most [`body_limit`] bytes. The
//! request as a whole is refused only for what the `api` module refuses in
//! any body (size, JSON) and for a missing or malformed list; every message
//! is then checked as a single `POST /api/publish` body would be (its size
//! against `session.max_frame_bytes`, its channel, its `data`), the good
//! ones are handed to the broker together (`Node::publish_all`: in list
//! order, concurrently), and the 200 answer lists, in order, each message's
//! `POST /api/publish` success body or its own error body.

use serde_json::{json, Value};
use switchboard_protocol::batch::Entry;
use switchboard_protocol::Position;

use crate::broker::BrokerError;
use crate::node::Node;

/// The largest `POST /api/batch` body: this many times
/// `session.max_frame_bytes`, so a batch holds many messages of the size a
/// single publish allows...
pub const BODY_FRAMES: usize = 64;
/// ...but never more than this (16 MiB), whatever the frame limit.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The body limit of `POST /api/batch` for a node whose frame limit is
/// `max_frame_bytes` (4 MiB with the default 64 KiB); never below one frame.
pub fn body_limit(max_frame_bytes: usize) -> usize {
    max_frame_bytes
        .saturating_mul(BODY_FRAMES)
        .min(MAX_BODY_BYTES)
        .max(max_frame_bytes)
}

/// Publishes the good messages of `entries`; the answer's body.
pub async fn publish(node: &Node, entries: Vec<Entry<'_>>) -> Value {
    let max = node.config.session.max_frame_bytes;
    let checked: Vec<Result<_, Value>> = entries
        .into_iter()
        .map(|entry| {
            if entry.bytes > max {
                return Err(error("too_large", &format!("message exceeds {max} bytes")));
            }
            entry
                .message
                .map_err(|message| error("bad_request", &message))
        })
        .collect();
    let good: Vec<_> = checked
        .iter()
        .flatten()
        .map(|m| (&m.channel, m.data))
        .collect();
    let published = node.publish_all(&good).await;
    if let Some(Err(error)) = published.iter().find(|p| p.is_err()) {
        let failed = published.iter().filter(|p| p.is_err()).count();
        tracing::warn!(message = "server API batch publish failed", failed, %error);
    }
    let mut published = published.into_iter();
    let replies: Vec<Value> = checked
        .into_iter()
        .map(|message| match message {
            Err(error) => error,
            Ok(_) => reply(published.next()),
        })
        .collect();
    json!({ "replies": replies })
}

/// What `POST /api/publish` answers for a message the broker took (or not).
fn reply(published: Option<Result<Option<Position>, BrokerError>>) -> Value {
    match published {
        Some(Ok(Some(p))) => json!({ "ok": true, "offset": p.offset, "epoch": p.epoch }),
        Some(Ok(None)) => json!({ "ok": true }),
        Some(Err(_)) | None => error("unavailable", "message not published: broker unavailable"),
    }
}

/// The contract's error body.
fn error(code: &str, message: &str) -> Value {
    json!({ "error": code, "message": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_limit_follows_the_frame_limit_up_to_a_ceiling() {
        assert_eq!(body_limit(64 * 1024), 4 * 1024 * 1024);
        assert_eq!(body_limit(1024), 64 * 1024);
        assert_eq!(body_limit(1024 * 1024), MAX_BODY_BYTES);
        assert_eq!(
            body_limit(32 * 1024 * 1024),
            32 * 1024 * 1024,
            "never below a frame"
        );
    }

    #[test]
    fn replies_are_the_single_publish_bodies() {
        assert_eq!(
            reply(Some(Ok(Some(Position::new(3, "E"))))),
            json!({"ok": true, "offset": 3, "epoch": "E"})
        );
        assert_eq!(reply(Some(Ok(None))), json!({"ok": true}));
        assert_eq!(
            reply(Some(Err(BrokerError::Unavailable("x".into())))),
            json!({"error": "unavailable", "message": "message not published: broker unavailable"})
        );
    }
}
