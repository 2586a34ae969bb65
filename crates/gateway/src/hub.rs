//! The hub: which local sessions listen to which channel, and fan-out of one
//! encoded frame to all of them.
//!
//! A frame is encoded once per node and every subscriber's queue gets a
//! reference-counted clone of the same bytes. Queues are bounded: a session
//! whose queue is full is marked slow (the session then closes itself with
//! 1013) and the frame is dropped for it alone, never blocking the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use indexmap::IndexMap;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

/// What the hub (or the server API) hands a session to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, shared with every other recipient.
    Frame(Utf8Bytes),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// The hub's side of one session: its queue and a slow-consumer flag.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    tx: mpsc::Sender<Outbound>,
    slow: AtomicBool,
}

impl SessionHandle {
    pub fn new(id: u64, tx: mpsc::Sender<Outbound>) -> SessionHandle {
        SessionHandle {
            id,
            tx,
            slow: AtomicBool::new(false),
        }
    }

    /// Queues without waiting; a full queue marks the session slow.
    pub fn offer(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.store(true, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the session to close. A full queue means the session is already
    /// being closed as slow; the flag makes sure it closes either way.
    pub fn close(&self, code: u16, reason: &'static str) {
        if !self.offer(Outbound::Close(code, reason)) {
            self.slow.store(true, Ordering::Relaxed);
        }
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

    /// Queues one frame to every local subscriber of a channel.
    pub fn deliver(&self, channel: &str, frame: &Utf8Bytes) -> Fanout {
        let timer = self.metrics.fanout();
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let mut fanout = Fanout::default();
        if let Some(subscribers) = channels.get(channel) {
            for session in subscribers.values() {
                if session.offer(Outbound::Frame(frame.clone())) {
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
        timer.finish(channel, frame.len(), fanout.delivered, fanout.dropped);
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

    fn session(id: u64, queue: usize) -> (Arc<SessionHandle>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        (Arc::new(SessionHandle::new(id, tx)), rx)
    }

    #[test]
    fn first_and_last_subscriber() {
        let hub = Hub::new();
        let (a, _ra) = session(1, 4);
        let (b, _rb) = session(2, 4);
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
        let (fast, mut fast_rx) = session(1, 8);
        let (slow, _slow_rx) = session(2, 1);
        hub.subscribe("c", &fast);
        hub.subscribe("c", &slow);
        let frame = Utf8Bytes::from_static("{\"type\":\"message\"}");
        assert_eq!(
            hub.deliver("c", &frame),
            Fanout {
                delivered: 2,
                dropped: 0
            }
        );
        assert_eq!(
            hub.deliver("c", &frame),
            Fanout {
                delivered: 1,
                dropped: 1
            }
        );
        assert!(slow.is_slow() && !fast.is_slow());
        assert_eq!(hub.dropped_total(), 1);
        for _ in 0..2 {
            match fast_rx.try_recv() {
                Ok(Outbound::Frame(bytes)) => {
                    assert_eq!(bytes.as_str().as_ptr(), frame.as_str().as_ptr())
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(hub.deliver("nobody", &frame), Fanout::default());
    }
}
