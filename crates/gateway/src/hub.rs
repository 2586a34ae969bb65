//! The hub: which local sessions listen to which channel, and fan-out of one
//! encoded frame to all of them.
//!
//! A frame is encoded once per node and every subscriber's queue gets a
//! reference-counted clone of the same bytes. Queues are bounded in bytes
//! (`session.send_queue_bytes`): a session whose queue would overflow is
//! marked slow (the session then closes itself with 1013) and the frame is
//! dropped for it alone, never blocking the others. Counting bytes rather
//! than frames bounds memory whatever the message size: a shared frame is
//! charged in full to every queue it sits in, so the bound holds even for a
//! queue that outlives the other recipients' copies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use indexmap::IndexMap;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

/// One frame for every local subscriber of a channel, shared by all of them.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Box<str>,
    /// `(offset, epoch)` of a history message or of a `reset` frame: what
    /// lets a session drop what it already sent while resuming.
    pub position: Option<(u64, Arc<str>)>,
    pub frame: Utf8Bytes,
}

impl Delivery {
    /// A frame outside history (join, leave, a channel without history).
    pub fn plain(channel: &str, frame: Utf8Bytes) -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: channel.into(),
            position: None,
            frame,
        })
    }

    /// A frame at `offset` of the stream `epoch`.
    pub fn at(channel: &str, offset: u64, epoch: &Arc<str>, frame: Utf8Bytes) -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: channel.into(),
            position: Some((offset, Arc::clone(epoch))),
            frame,
        })
    }
}

/// What the hub (or the server API) hands a session to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame shared with every other recipient.
    Frame(Arc<Delivery>),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// What one queued frame costs beyond its bytes: the queue slot and the
/// shared buffer's header, rounded up.
pub const QUEUE_ENTRY_OVERHEAD: usize = 64;

impl Outbound {
    /// Bytes charged to a queue while this item waits in it.
    pub fn cost(&self) -> usize {
        match self {
            Outbound::Frame(delivery) => delivery.frame.len() + QUEUE_ENTRY_OVERHEAD,
            Outbound::Close(..) => 0,
        }
    }
}

/// The hub's side of one session: its queue, the bytes waiting in it and a
/// slow-consumer flag.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    tx: mpsc::UnboundedSender<Outbound>,
    queued: AtomicUsize,
    max_bytes: usize,
    slow: AtomicBool,
}

impl SessionHandle {
    /// A handle whose queue holds at most `max_bytes` of frames.
    pub fn new(id: u64, max_bytes: usize) -> (SessionHandle, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = SessionHandle {
            id,
            tx,
            queued: AtomicUsize::new(0),
            max_bytes,
            slow: AtomicBool::new(false),
        };
        (handle, rx)
    }

    /// Queues a frame without waiting. A frame that would take the queue
    /// past its byte bound is dropped and marks the session slow; once slow,
    /// nothing more is queued (the session is closing).
    pub fn offer(&self, item: Outbound) -> bool {
        if self.is_slow() {
            return false;
        }
        let cost = item.cost();
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.max_bytes {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.slow.store(true, Ordering::Relaxed);
            return false;
        }
        if self.tx.send(item).is_err() {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The session took a frame off its queue.
    pub fn taken(&self, delivery: &Delivery) {
        self.queued.fetch_sub(
            delivery.frame.len() + QUEUE_ENTRY_OVERHEAD,
            Ordering::Relaxed,
        );
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Asks the session to close. Close requests are never refused for
    /// space: they cost nothing and must reach even a slow session.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.tx.send(Outbound::Close(code, reason));
    }

    /// Whether a frame was dropped because the queue was full.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }
}

/// How one fan-out went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    pub delivered: usize,
    pub dropped: usize,
}

type Subscribers = IndexMap<u64, Arc<SessionHandle>>;

/// Channel → local subscribers, and user → local sessions.
#[derive(Debug, Default)]
pub struct Hub {
    channels: RwLock<HashMap<Box<str>, Subscribers>>,
    users: RwLock<HashMap<Arc<str>, Subscribers>>,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A hub that counts into the node's metrics.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: RwLock::default(),
            users: RwLock::default(),
            dropped: AtomicU64::new(0),
            metrics,
        }
    }

    /// The node's metrics (the brokers count through the hub they feed).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Adds a subscriber; true when it is the channel's first on this node
    /// (the broker must then start listening to the channel).
    pub fn subscribe(&self, channel: &str, session: &Arc<SessionHandle>) -> bool {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        match channels.get_mut(channel) {
            Some(subscribers) => {
                subscribers.insert(session.id, Arc::clone(session));
                false
            }
            None => {
                let mut subscribers = Subscribers::with_capacity(1);
                subscribers.insert(session.id, Arc::clone(session));
                channels.insert(channel.into(), subscribers);
                self.metrics.channel_opened(channel);
                true
            }
        }
    }

    /// Removes a subscriber; true when the channel has no local subscriber
    /// left (the broker may stop listening).
    pub fn unsubscribe(&self, channel: &str, session_id: u64) -> bool {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = channels.get_mut(channel) else {
            return false;
        };
        if subscribers.swap_remove(&session_id).is_none() {
            return false;
        }
        if subscribers.is_empty() {
            channels.remove(channel);
            self.metrics.channel_closed(channel);
            return true;
        }
        false
    }

    /// Queues one frame to every local subscriber of its channel.
    pub fn deliver(&self, delivery: &Arc<Delivery>) -> Fanout {
        let timer = self.metrics.fanout();
        let channel = &*delivery.channel;
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let mut fanout = Fanout::default();
        if let Some(subscribers) = channels.get(channel) {
            for session in subscribers.values() {
                if session.offer(Outbound::Frame(Arc::clone(delivery))) {
                    timer.queued();
                    fanout.delivered += 1;
                } else {
                    fanout.dropped += 1;
                }
            }
        }
        if fanout.dropped > 0 {
            self.dropped
                .fetch_add(fanout.dropped as u64, Ordering::Relaxed);
        }
        timer.finish(
            channel,
            delivery.frame.len(),
            fanout.delivered,
            fanout.dropped,
        );
        fanout
    }

    /// Records an open session of `user` (for disconnects by user).
    pub fn register(&self, user: &Arc<str>, session: &Arc<SessionHandle>) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        users
            .entry(Arc::clone(user))
            .or_default()
            .insert(session.id, Arc::clone(session));
    }

    /// Forgets a closed session.
    pub fn unregister(&self, user: &str, session_id: u64) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if let Some(sessions) = users.get_mut(user) {
            sessions.swap_remove(&session_id);
            if sessions.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Asks every local session of `user` to close with `code`; returns how many.
    pub fn disconnect_user(&self, user: &str, code: u16, reason: &'static str) -> usize {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let Some(sessions) = users.get(user) else {
            return 0;
        };
        for session in sessions.values() {
            session.close(code, reason);
        }
        sessions.len()
    }

    /// Whether a channel has a local subscriber.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(channel)
    }

    /// Bytes waiting in the send queues of every open session (for the
    /// metrics scrape; O(sessions), never on the per-frame path).
    pub fn queued_bytes(&self) -> usize {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users
            .values()
            .flat_map(|sessions| sessions.values())
            .map(|session| session.queued_bytes())
            .sum()
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The channels this node needs from the broker (to resubscribe).
    pub fn channels(&self) -> Vec<String> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        channels.keys().map(|c| c.to_string()).collect()
    }

    /// Frames dropped for full queues since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(
        id: u64,
        max_bytes: usize,
    ) -> (Arc<SessionHandle>, mpsc::UnboundedReceiver<Outbound>) {
        let (handle, rx) = SessionHandle::new(id, max_bytes);
        (Arc::new(handle), rx)
    }

    #[test]
    fn first_and_last_subscriber() {
        let hub = Hub::new();
        let (a, _ra) = session(1, 1024);
        let (b, _rb) = session(2, 1024);
        assert!(hub.subscribe("c", &a));
        assert!(!hub.subscribe("c", &b));
        assert!(
            !hub.subscribe("c", &b),
            "subscribing twice is one subscription"
        );
        assert!(!hub.unsubscribe("c", 1));
        assert!(!hub.unsubscribe("c", 1), "unsubscribing twice is harmless");
        assert!(hub.unsubscribe("c", 2));
        assert_eq!(hub.channel_count(), 0);
    }

    #[test]
    fn fanout_shares_bytes_and_drops_for_full_queues_only() {
        let hub = Hub::new();
        let frame = Delivery::plain("c", Utf8Bytes::from_static("{\"type\":\"message\"}"));
        let one = frame.frame.len() + QUEUE_ENTRY_OVERHEAD;
        let (fast, mut fast_rx) = session(1, 8 * one);
        let (slow, _slow_rx) = session(2, one);
        hub.subscribe("c", &fast);
        hub.subscribe("c", &slow);
        assert_eq!(
            hub.deliver(&frame),
            Fanout {
                delivered: 2,
                dropped: 0
            }
        );
        assert_eq!(
            hub.deliver(&frame),
            Fanout {
                delivered: 1,
                dropped: 1
            }
        );
        assert!(slow.is_slow() && !fast.is_slow());
        assert_eq!(hub.dropped_total(), 1);
        assert_eq!(slow.queued_bytes(), one, "the dropped frame is not charged");
        assert_eq!(fast.queued_bytes(), 2 * one);
        for _ in 0..2 {
            match fast_rx.try_recv() {
                Ok(Outbound::Frame(delivery)) => {
                    fast.taken(&delivery);
                    assert!(Arc::ptr_eq(&delivery, &frame))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(fast.queued_bytes(), 0);
        // Once slow, a session gets nothing more but a close still reaches it.
        slow.close(1013, "slow");
        assert_eq!(hub.deliver(&frame).dropped, 1);
        let elsewhere = Delivery::plain("nobody", frame.frame.clone());
        assert_eq!(hub.deliver(&elsewhere), Fanout::default());
    }

    #[test]
    fn the_node_total_follows_every_queue_and_forgets_a_closed_one() {
        let hub = Hub::new();
        let (a, _ra) = session(1, 10_000);
        let (b, _rb) = session(2, 10_000);
        let user: Arc<str> = Arc::from("u");
        hub.register(&user, &a);
        hub.register(&user, &b);
        let frame = Delivery::plain("c", Utf8Bytes::from("x".repeat(100)));
        let cost = frame.frame.len() + QUEUE_ENTRY_OVERHEAD;
        assert!(a.offer(Outbound::Frame(frame.clone())));
        assert!(a.offer(Outbound::Frame(frame.clone())));
        assert!(b.offer(Outbound::Frame(frame.clone())));
        assert_eq!(hub.queued_bytes(), 3 * cost);
        a.taken(&frame);
        assert_eq!(hub.queued_bytes(), 2 * cost);
        hub.unregister(&user, 1);
        assert_eq!(
            hub.queued_bytes(),
            cost,
            "a closed session's backlog leaves the total"
        );
        hub.unregister(&user, 2);
        assert_eq!(hub.queued_bytes(), 0);
    }

    #[test]
    fn a_byte_bound_holds_whatever_the_frame_size() {
        let (handle, _rx) = session(1, 10_000);
        let big = Delivery::plain("c", Utf8Bytes::from("x".repeat(6_000)));
        assert!(handle.offer(Outbound::Frame(big.clone())));
        assert!(!handle.offer(Outbound::Frame(big)), "12 KB > 10 KB");
        assert!(handle.is_slow());
        assert!(handle.queued_bytes() <= 10_000);
    }
}
