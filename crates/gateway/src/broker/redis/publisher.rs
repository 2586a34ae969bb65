//! Messages on their way to Redis: publishes that arrive while a call is in
//! flight go together in the next one, in arrival order: those on channels
//! with history stored and published by one history script call, the
//! others as one pipeline of PUBLISHes beside it.
//!
//! One script call per message cost Redis about as much again as the work
//! itself (a round trip, a script start), and one Redis serves the whole
//! cluster. Here each node keeps one call in flight and gathers what
//! arrives meanwhile into the next, up to [`MAX_BATCH`] messages: a lone
//! publish goes out at once, and under load the calls grow instead of
//! queueing; once calls carry several, the next waits up to [`LINGER`] for
//! as many as the last (see `gather`). Arrival order is the order of the queue, so offsets on a
//! channel are assigned in publish order and a publisher sees its own
//! messages in order; a caller is queued before its first `.await` (the
//! batch API relies on that to keep a batch's order).
//!
//! On a Redis Cluster every key of one script call must share a slot, so
//! a gathered batch is split per channel and the channels' calls run side
//! by side, each on its shard; the broker sends PUBLISHes without history
//! straight to their shard there, as a cluster pipeline is no pipeline.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_protocol::{MessageParts, Position};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::namespaces::HistoryPolicy;
use crate::history::redis::{self as redis_history, Append};
use crate::metrics::Metrics;
use crate::redis::link::Link;
use crate::redis::pubsub::{publish_command, pubsub_channel};
use crate::redis::target::Mode;

/// The most messages one script call stores.
pub const MAX_BATCH: usize = 256;

/// The longest a publish waits for others to share its script call.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// A message waiting for the next call.
struct Pending {
    channel: Arc<str>,
    message: Message,
}

/// What to do with it: store and publish (the history script), or only
/// publish (PUBLISH, on channels without history).
enum Message {
    Stored {
        parts: MessageParts,
        policy: HistoryPolicy,
        reply: oneshot::Sender<Result<(Position, usize), String>>,
    },
    Plain {
        frame: Utf8Bytes,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The queue in front of the node's history script calls.
pub struct Publisher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Publisher {
    /// Starts the task that runs the calls; it ends with the publisher.
    pub fn start(link: Link, metrics: Arc<Metrics>) -> Publisher {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(link, metrics, rx));
        Publisher { queue }
    }

    /// Stores and publishes one message; returns its position and the
    /// length of its frame. The message is queued when this is called,
    /// before the returned future is polled.
    pub fn append(
        &self,
        channel: &str,
        parts: MessageParts,
        policy: HistoryPolicy,
    ) -> impl std::future::Future<Output = Result<(Position, usize), String>> + Send + 'static {
        self.enqueue(channel, move |reply| Message::Stored {
            parts,
            policy,
            reply,
        })
    }

    /// Publishes a frame on a channel without history, in the same queue
    /// (so the PUBLISHes a node sends together share one pipeline, in
    /// arrival order). Queued when this is called.
    pub fn publish(
        &self,
        channel: &str,
        frame: Utf8Bytes,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        self.enqueue(channel, move |reply| Message::Plain { frame, reply })
    }

    /// Queues the message `make` builds around its reply sender, now; the
    /// future waits for the reply.
    fn enqueue<T: Send + 'static>(
        &self,
        channel: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Message,
    ) -> impl std::future::Future<Output = Result<T, String>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Pending {
            channel: Arc::from(channel),
            message: make(reply),
        });
        async move {
            queued.map_err(|_| "the publisher stopped".to_owned())?;
            answer
                .await
                .map_err(|_| "the publisher stopped".to_owned())?
        }
    }
}

async fn run(link: Link, metrics: Arc<Metrics>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // How many the last call carried: under load, the next one waits for
    // as many (at most LINGER) before it goes.
    let mut last = 0;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if last >= 2 {
            gather(&mut rx, &mut batch, last).await;
        }
        last = batch.len();
        if link.mode() == Mode::Cluster {
            let calls = per_channel(std::mem::take(&mut batch))
                .into_iter()
                .map(|group| call(&link, &metrics, group));
            futures_util::future::join_all(calls).await;
        } else {
            call(&link, &metrics, std::mem::take(&mut batch)).await;
        }
    }
}

/// Adds to `batch` what arrives until it holds `target` messages, for at
/// most [`LINGER`]. Each call already gathers what arrived while the one
/// before was in flight, but at a steady rate that is one or two messages,
/// and Redis pays for a call (a read, a reply, a write to every subscribed
/// node, the script's start) about what it pays for three messages in it.
/// Waiting only once the last call carried several, and only for as many
/// as it carried, keeps a lone publish immediate; serial publishers that
/// answer their acks at once fill the call within microseconds, and a
/// steady stream settles on about a millisecond's worth per call.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<Pending>,
    batch: &mut Vec<Pending>,
    target: usize,
) {
    let target = target.min(MAX_BATCH);
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < target {
        let room = MAX_BATCH - batch.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Splits a batch into one group per channel, each in arrival order.
fn per_channel(batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for pending in batch {
        let at = *index
            .entry(Arc::clone(&pending.channel))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[at].push(pending);
    }
    groups
}

/// One round trip for `group`: the history script for its stored
/// messages and one pipeline of PUBLISHes for the others, side by side;
/// every message gets its answer, or its part's error.
async fn call(link: &Link, metrics: &Metrics, group: Vec<Pending>) {
    let mut stored = Vec::new();
    let mut plain = Vec::new();
    for Pending { channel, message } in group {
        match message {
            Message::Stored {
                parts,
                policy,
                reply,
            } => stored.push((channel, parts, policy, reply)),
            Message::Plain { frame, reply } => plain.push((channel, frame, reply)),
        }
    }
    tokio::join!(store(link, metrics, stored), publish(link, plain));
}

type Stored = (
    Arc<str>,
    MessageParts,
    HistoryPolicy,
    oneshot::Sender<Result<(Position, usize), String>>,
);

async fn store(link: &Link, metrics: &Metrics, group: Vec<Stored>) {
    if group.is_empty() {
        return;
    }
    metrics.redis_batched(group.len());
    let appends: Vec<Append<'_>> = group
        .iter()
        .map(|(channel, parts, policy, _)| Append {
            channel,
            message: parts,
            policy: *policy,
        })
        .collect();
    let stored = redis_history::append(link, &appends).await;
    drop(appends);
    match stored {
        Ok(positions) => {
            for ((_, parts, _, reply), position) in group.into_iter().zip(positions) {
                let length = parts.frame_len(position.offset);
                let _ = reply.send(Ok((position, length)));
            }
        }
        Err(error) => {
            for (_, _, _, reply) in group {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

type Plain = (Arc<str>, Utf8Bytes, oneshot::Sender<Result<(), String>>);

async fn publish(link: &Link, group: Vec<Plain>) {
    if group.is_empty() {
        return;
    }
    let mode = link.mode();
    let mut pipe = redis::pipe();
    for (channel, frame, _) in &group {
        pipe.cmd(publish_command(mode))
            .arg(pubsub_channel(mode, channel))
            .arg(frame.as_bytes());
    }
    let published = link.query_pipe::<Vec<i64>>(&pipe).await.map(drop);
    for (_, _, reply) in group {
        let _ = reply.send(published.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(channel: &str, n: u64) -> Pending {
        Pending {
            channel: Arc::from(channel),
            message: Message::Plain {
                frame: Utf8Bytes::from(n.to_string()),
                reply: oneshot::channel().0,
            },
        }
    }

    #[test]
    fn groups_keep_arrival_order_per_channel() {
        let batch = vec![
            pending("a", 1),
            pending("b", 2),
            pending("a", 3),
            pending("c", 4),
            pending("b", 5),
        ];
        let groups: Vec<Vec<(String, String)>> = per_channel(batch)
            .into_iter()
            .map(|group| {
                group
                    .into_iter()
                    .map(|p| match p.message {
                        Message::Plain { frame, .. } => (p.channel.to_string(), frame.to_string()),
                        Message::Stored { parts, .. } => (p.channel.to_string(), parts.head),
                    })
                    .collect()
            })
            .collect();
        let pair = |c: &str, n: &str| (c.to_owned(), n.to_owned());
        assert_eq!(
            groups,
            vec![
                vec![pair("a", "1"), pair("a", "3")],
                vec![pair("b", "2"), pair("b", "5")],
                vec![pair("c", "4")],
            ]
        );
    }
}
