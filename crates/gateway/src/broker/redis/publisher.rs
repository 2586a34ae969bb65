//! Messages with history on their way to Redis: publishes that arrive while
//! a history script call is in flight are stored and published together by
//! the next call, in arrival order.
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
//! by side, each on its shard.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_protocol::{MessageParts, Position};
use tokio::sync::{mpsc, oneshot};

use crate::config::namespaces::HistoryPolicy;
use crate::history::redis::{self as redis_history, Append};
use crate::metrics::Metrics;
use crate::redis::link::Link;
use crate::redis::target::Mode;

/// The most messages one script call stores.
pub const MAX_BATCH: usize = 256;

/// The longest a publish waits for others to share its script call.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// A message waiting for the next script call.
struct Pending {
    channel: Arc<str>,
    message: MessageParts,
    policy: HistoryPolicy,
    reply: oneshot::Sender<Result<Position, String>>,
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

    /// Stores and publishes one message; returns its position. The message
    /// is queued when this is called, before the returned future is polled.
    pub fn append(
        &self,
        channel: &str,
        message: &MessageParts,
        policy: HistoryPolicy,
    ) -> impl std::future::Future<Output = Result<Position, String>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Pending {
            channel: Arc::from(channel),
            message: message.clone(),
            policy,
            reply,
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

/// One script call for `group`; every message gets its position, or the
/// call's error.
async fn call(link: &Link, metrics: &Metrics, group: Vec<Pending>) {
    metrics.redis_batched(group.len());
    let appends: Vec<Append<'_>> = group
        .iter()
        .map(|pending| Append {
            channel: &pending.channel,
            message: &pending.message,
            policy: pending.policy,
        })
        .collect();
    let stored = redis_history::append(link, &appends).await;
    drop(appends);
    match stored {
        Ok(positions) => {
            for (pending, position) in group.into_iter().zip(positions) {
                let _ = pending.reply.send(Ok(position));
            }
        }
        Err(error) => {
            for pending in group {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(channel: &str, n: u64) -> Pending {
        Pending {
            channel: Arc::from(channel),
            message: MessageParts {
                head: n.to_string(),
                tail: String::new(),
            },
            policy: HistoryPolicy {
                size: 1,
                ttl: std::time::Duration::from_secs(1),
            },
            reply: oneshot::channel().0,
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
                    .map(|p| (p.channel.to_string(), p.message.head))
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
