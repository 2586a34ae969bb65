//! `GET /admin/api/tail?channel=<channel>`: a live tail of one channel, as
//! server-sent events: one `data:` event per `message` frame delivered to
//! the channel on this node from now on (the frame's JSON, as subscribers
//! get it), and `: ping` every 15 s (one at once, so the client knows it
//! is open).
//!
//! A tail reads the node's hub and is nothing else ([`Hub::watch`]): not a
//! session, not a member, not in presence, occupancy, the channel listing
//! or the metrics, and it sends no webhook. It does hold the node's broker
//! subscription to the channel while it is open, so messages published on
//! other nodes reach it; the last of a channel's tails and subscribers to
//! go lets it go. At most 16 tails per node: 503 beyond.
//!
//! The tail lives in the response body: when the client goes, hyper drops
//! the body, and with it the tail's hub entry (`Watch`). It also ends when
//! the node shuts down, and when it falls behind by more than a session's
//! send queue (`session.send_queue_bytes`), as a slow subscriber would.
//!
//! [`Hub::watch`]: crate::hub::Hub::watch

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Response, StatusCode};
use switchboard_protocol::ChannelName;
use tokio::time::{Instant, Sleep};

use crate::http::response::{self, Body};
use crate::hub::{Outbound, SessionHandle};
use crate::node::Node;

/// The most tails one node serves at once.
pub const MAX_TAILS: usize = 16;
/// How often an idle tail sends `: ping`.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// Frames one chunk of the body carries at most.
const FRAMES_PER_CHUNK: usize = 64;
/// The user a tail's hub handle names (it is never a session's).
const TAIL_USER: &str = "";

const PING: &[u8] = b": ping\n\n";

/// The tail's place in the hub: removed when the body is dropped, and the
/// broker's subscription let go when it was the channel's last reader.
struct Watch {
    node: Arc<Node>,
    channel: Box<str>,
    id: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.node.hub.unwatch(&self.channel, self.id) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let node = Arc::clone(&self.node);
        let channel = std::mem::take(&mut self.channel);
        runtime.spawn(async move {
            if let Err(error) = node.broker.unsubscribe(&channel).await {
                tracing::warn!(message = "broker unsubscribe failed", channel = %channel, %error);
            }
        });
    }
}

/// The body's events.
struct Tail {
    handle: Arc<SessionHandle>,
    _watch: Watch,
    ping: Pin<Box<Sleep>>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    opened: bool,
}

/// One `data:` event for a frame (a line each, should the frame's `data`
/// keep a publisher's line breaks: the reader joins them back).
fn push_event(chunk: &mut Vec<u8>, frame: &str) {
    for line in frame.split(['\n', '\r']) {
        chunk.extend_from_slice(b"data: ");
        chunk.extend_from_slice(line.as_bytes());
        chunk.push(b'\n');
    }
    chunk.push(b'\n');
}

impl Stream for Tail {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        if !this.opened {
            this.opened = true;
            return Poll::Ready(Some(Bytes::from_static(PING)));
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        let mut chunk = Vec::new();
        let mut frames = 0;
        while frames < FRAMES_PER_CHUNK {
            let item = if frames == 0 {
                match this.handle.poll_next(cx) {
                    Poll::Ready(item) => item,
                    Poll::Pending => break,
                }
            } else {
                match this.handle.try_next() {
                    Some(item) => item,
                    None => break,
                }
            };
            match item {
                Outbound::Frame(delivery) => {
                    push_event(&mut chunk, &delivery.frame);
                    frames += 1;
                }
                // Fell behind (the hub marked it slow), or asked to close.
                Outbound::Close(..) | Outbound::Drain(_) if chunk.is_empty() => {
                    return Poll::Ready(None)
                }
                Outbound::Close(..) | Outbound::Drain(_) => break,
                // Never queued to a tail.
                Outbound::Command(command) => command.answer(None),
            }
        }
        if !chunk.is_empty() {
            this.ping.as_mut().reset(Instant::now() + PING_EVERY);
            return Poll::Ready(Some(Bytes::from(chunk)));
        }
        if this.ping.as_mut().poll(cx).is_ready() {
            this.ping.as_mut().reset(Instant::now() + PING_EVERY);
            return Poll::Ready(Some(Bytes::from_static(PING)));
        }
        Poll::Pending
    }
}

fn bad_request(message: &str) -> Response<Body> {
    response::error(StatusCode::BAD_REQUEST, "bad_request", message, None)
}

fn unavailable(message: &str) -> Response<Body> {
    response::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        message,
        Some(response::RETRY_AFTER_SECS),
    )
}

/// The value of `name` in a query string, percent-decoded (the first one).
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Opens a tail of the query's `channel`: `200 text/event-stream`, or 400
/// for a missing or invalid channel, 503 when the node has 16 tails, is
/// draining, or the broker cannot subscribe.
pub async fn tail(node: &Arc<Node>, query: &str) -> Response<Body> {
    let Some(name) = query_param(query, "channel") else {
        return bad_request("channel=<channel> is required");
    };
    let channel = match ChannelName::parse(&name) {
        Ok(channel) => channel,
        Err(error) => return bad_request(&format!("invalid channel: {error}")),
    };
    if node.is_draining() {
        return unavailable("the node is shutting down");
    }
    let handle = Arc::new(SessionHandle::new(
        node.next_session_id(),
        Arc::from(TAIL_USER),
        node.config.session.send_queue_bytes,
    ));
    let Some(first) = node.hub.watch(channel.as_str(), &handle, MAX_TAILS) else {
        return unavailable("too many live tails on this node (at most 16)");
    };
    let watch = Watch {
        node: Arc::clone(node),
        channel: channel.as_str().into(),
        id: handle.id,
    };
    if first {
        if let Err(error) = node.broker.subscribe(channel.as_str()).await {
            tracing::warn!(message = "broker subscribe failed", channel = %channel, %error);
            drop(watch);
            return unavailable("tail failed: broker unavailable");
        }
    }
    tracing::debug!(message = "admin tail opened", channel = %channel, tails = node.hub.tail_count());
    let shutdown = node.shutdown.clone();
    let tail = Tail {
        handle,
        _watch: watch,
        ping: Box::pin(tokio::time::sleep(PING_EVERY)),
        shutdown: Box::pin(async move { shutdown.cancelled().await }),
        opened: false,
    };
    response::event_stream(Body::chunks(Box::pin(tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_per_frame_a_line_per_line() {
        let mut chunk = Vec::new();
        push_event(&mut chunk, r#"{"type":"message","data":1}"#);
        push_event(&mut chunk, "{\"a\":\n1}");
        assert_eq!(
            String::from_utf8(chunk).unwrap(),
            "data: {\"type\":\"message\",\"data\":1}\n\ndata: {\"a\":\ndata: 1}\n\n"
        );
    }
}
