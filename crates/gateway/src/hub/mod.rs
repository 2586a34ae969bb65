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
//!
//! Each subscriber entry also says whether the subscription entered the
//! channel's presence, with which `info`: the one record of it on the node.
//! A single node answers presence from it ([`Hub::channel_presence`]), and
//! cluster presence rewrites Redis from it when Redis lost it
//! ([`Hub::presence_entries`]); neither keeps a copy of its own.
//!
//! The hub keeps one name per channel (an `Arc<str>` key) and hands it to
//! each session that subscribes ([`Joined`]): a subscription's entry in its
//! session shares it instead of holding a copy of the name.
//!
//! A channel's subscribers are an `IndexSet` of [`Subscriber`]s keyed by
//! the session number their handle already holds (looked up through a
//! [`SessionId`]), not a map from a second copy of it: 8 bytes less per
//! subscription, and the fan-out still walks one dense list in order.
//!
//! Beside the subscribers, a channel may have *tails* (the admin UI's live
//! tail, [`Hub::watch`]): readers that get a copy of each `message` frame
//! and nothing else. A tail is not a subscriber: it is in no subscriber
//! list, so it is never in presence, occupancy, the channel listing, the
//! metrics or a disconnect; it only keeps the node's broker subscription
//! alive (`first`/`last` and [`Hub::has_subscribers`] count it), so
//! messages published on other nodes reach it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use indexmap::set::MutableValues;
use indexmap::{Equivalent, IndexSet};
use serde_json::value::RawValue;
use switchboard_protocol::close::SLOW_CONSUMER;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::session::QUEUE_ENTRY_OVERHEAD;
use crate::metrics::Metrics;
use crate::occupancy::{ChannelCounts, ChannelPage, ChannelSubscribers, ListQuery};

/// One frame for every local subscriber of a channel, shared by all of them.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Box<str>,
    /// `(offset, epoch)` of a history message or of a `reset` frame: what
    /// lets a session drop what it already sent while resuming.
    pub position: Option<(u64, Arc<str>)>,
    pub frame: Utf8Bytes,
    /// The frame in the other formats and compressions, each made once on
    /// the node by the first session that sends it (`session::formats`).
    pub encoded: Encoded,
}

/// A delivery's frame as whole WebSocket frames (header included) for
/// connections that do not take the JSON text as it is: empty until a
/// session of that kind sends it.
#[derive(Debug, Default)]
pub struct Encoded {
    /// JSON text, for permessage-deflate connections (compressed when the
    /// namespace and the threshold say so).
    pub json: OnceLock<Bytes>,
    /// MessagePack, uncompressed.
    pub msgpack: OnceLock<Bytes>,
    /// MessagePack, for permessage-deflate connections.
    pub msgpack_deflate: OnceLock<Bytes>,
}

impl Delivery {
    /// A frame outside history (join, leave, a channel without history).
    pub fn plain(channel: &str, frame: Utf8Bytes) -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: channel.into(),
            position: None,
            frame,
            encoded: Encoded::default(),
        })
    }

    /// A frame at `offset` of the stream `epoch`.
    pub fn at(channel: &str, offset: u64, epoch: &Arc<str>, frame: Utf8Bytes) -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: channel.into(),
            position: Some((offset, Arc::clone(epoch))),
            frame,
            encoded: Encoded::default(),
        })
    }
}

/// What the hub (or the server API) hands a session to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame shared with every other recipient.
    Frame(Arc<Delivery>),
    /// Close the connection with this code and reason (shared by every
    /// session of a disconnected user; as small as a `&'static str`).
    Close(u16, Arc<str>),
    /// The node drains: close with 1012 after this delay.
    Drain(Duration),
    /// A command sent over HTTP for a server-sent events stream, run by
    /// the stream's session in order with its other work.
    Command(Arc<StreamCommand>),
}

/// A command frame a client sent over HTTP (`POST /sse/command`) for its
/// stream, and where its answer goes: the frame the WebSocket would have
/// written (`None` when a command without `id` succeeded). Shared (`Arc`)
/// only because queue items are `Clone`; the answer is taken once.
#[derive(Debug)]
pub struct StreamCommand {
    pub text: Box<str>,
    answer: Mutex<Option<tokio::sync::oneshot::Sender<Option<String>>>>,
}

impl StreamCommand {
    /// A command and the receiver its answer arrives on (closed unanswered
    /// when the session ends first).
    pub fn new(
        text: Box<str>,
    ) -> (
        Arc<StreamCommand>,
        tokio::sync::oneshot::Receiver<Option<String>>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = StreamCommand {
            text,
            answer: Mutex::new(Some(tx)),
        };
        (Arc::new(command), rx)
    }

    /// Hands the answer to the waiting request (the first answer wins).
    pub fn answer(&self, frame: Option<String>) {
        let sender = self.answer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sender) = sender {
            let _ = sender.send(frame);
        }
    }
}

/// A queue that grew past this many slots is given back when it empties,
/// so a burst does not stay resident.
const QUEUE_KEEP_SLOTS: usize = 8;

impl Outbound {
    /// Bytes charged to a queue while this item waits in it.
    pub fn cost(&self) -> usize {
        match self {
            Outbound::Frame(delivery) => delivery.frame.len() + QUEUE_ENTRY_OVERHEAD,
            Outbound::Command(command) => command.text.len() + QUEUE_ENTRY_OVERHEAD,
            Outbound::Close(..) | Outbound::Drain(_) => 0,
        }
    }
}

/// The hub's side of one session: its queue, the bytes waiting in it and a
/// slow-consumer flag.
///
/// The queue is a locked `VecDeque` plus a waker rather than a channel: it
/// costs nothing while empty (an idle session allocates no queue block), and
/// it is given back after a burst.
///
/// 112 bytes, so its `Arc` block (16 bytes of counts more) fits jemalloc's
/// 128-byte size class rather than the 160 one: `max_bytes` is a `u32`
/// beside the flags (`session.send_queue_bytes` is at most 1 GiB).
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    /// The session's user (for disconnects by user).
    pub user: Arc<str>,
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    queued: AtomicUsize,
    max_bytes: u32,
    slow: AtomicBool,
    /// The session holds its writes back (write coalescing): it waits for
    /// its window to end or its queue to fill, not for the next frame.
    holding: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// False once the session ended: nothing is queued any more.
    closed: bool,
}

impl SessionHandle {
    /// A handle whose queue holds at most `max_bytes` of frames (at most
    /// `u32::MAX`: the configuration allows 1 GiB).
    pub fn new(id: u64, user: Arc<str>, max_bytes: usize) -> SessionHandle {
        SessionHandle {
            id,
            user,
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            queued: AtomicUsize::new(0),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            slow: AtomicBool::new(false),
            holding: AtomicBool::new(false),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item and wakes the session; false when it has ended.
    /// Queues an item; wakes the session only when it may be waiting for
    /// one: the queue was empty (a session with items queued is running, or
    /// holding them back on purpose while it coalesces writes), `urgent`
    /// (the queue just reached [`SessionHandle::flush_bytes`], or a close or
    /// drain). One wake per burst instead of one per frame.
    fn push(&self, item: Outbound, urgent: bool) -> bool {
        let was_empty = {
            let mut queue = self.queue();
            if queue.closed {
                return false;
            }
            let was_empty = queue.items.is_empty();
            queue.items.push_back(item);
            was_empty
        };
        if was_empty || urgent {
            self.waker.wake();
        }
        true
    }

    /// Queued bytes at which a session holding its writes back writes at
    /// once: a quarter of its queue bound, at most 64 KiB, so coalescing
    /// never runs a queue into its slow-consumer limit.
    pub fn flush_bytes(&self) -> usize {
        (self.max_bytes() / 4).min(FLUSH_BYTES_MAX)
    }

    /// The queue's bound in bytes.
    fn max_bytes(&self) -> usize {
        self.max_bytes as usize
    }

    /// Whether the session holds its writes back.
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::Relaxed)
    }

    pub fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Relaxed);
    }

    /// What the session waits for: the next item (`Some`), or, while it
    /// holds writes back, for the queue to fill (`None`: write now).
    pub fn poll_outbound(&self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if self.holding() {
            self.poll_full(cx).map(|()| None)
        } else {
            self.poll_next(cx).map(Some)
        }
    }

    /// Ready when the queued bytes reached [`SessionHandle::flush_bytes`] or
    /// the session turned slow (for a session holding writes back).
    pub fn poll_full(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_full() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_full() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn is_full(&self) -> bool {
        self.is_slow() || self.queued.load(Ordering::Relaxed) >= self.flush_bytes()
    }

    /// Queues a frame without waiting. A frame that would take the queue
    /// past its byte bound is dropped and marks the session slow, and the
    /// session is woken to close with 1013; once slow, nothing more is
    /// queued (the session is closing).
    pub fn offer(&self, item: Outbound) -> bool {
        if self.is_slow() {
            return false;
        }
        let cost = item.cost();
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.max_bytes() {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.slow.store(true, Ordering::Release);
            self.waker.wake();
            return false;
        }
        let flush = self.flush_bytes();
        let urgent = cost == 0 || (before < flush && before + cost >= flush);
        if !self.push(item, urgent) {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a command for a stream's session: refused (false) when it
    /// would take the queue past its bound or the session is closing, but,
    /// unlike a frame, without marking the session slow: the client that
    /// sent it gets 503 and the stream goes on.
    pub fn offer_command(&self, command: Arc<StreamCommand>) -> bool {
        let item = Outbound::Command(command);
        let cost = item.cost();
        if self.is_slow() {
            return false;
        }
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.max_bytes() || !self.push(item, true) {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Takes the next item off the queue (the session's side).
    pub fn try_next(&self) -> Option<Outbound> {
        let item = {
            let mut queue = self.queue();
            let item = queue.items.pop_front();
            if queue.items.is_empty() && queue.items.capacity() > QUEUE_KEEP_SLOTS {
                queue.items = VecDeque::new();
            }
            item
        };
        if let Some(item) = &item {
            self.taken(item.cost());
        }
        item
    }

    /// Takes up to `max` items off the queue under one lock, handing each to
    /// `take` in order until it returns false: a backlog costs one lock, not
    /// one per frame.
    pub fn take_batch(&self, max: usize, mut take: impl FnMut(Outbound) -> bool) {
        let mut freed = 0;
        {
            let mut queue = self.queue();
            for _ in 0..max {
                let Some(item) = queue.items.pop_front() else {
                    break;
                };
                freed += item.cost();
                if !take(item) {
                    break;
                }
            }
            if queue.items.is_empty() && queue.items.capacity() > QUEUE_KEEP_SLOTS {
                queue.items = VecDeque::new();
            }
        }
        if freed > 0 {
            self.queued.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// The next item, waiting for one. A slow session gets its 1013 close
    /// first, whatever else is queued (a close request included): the
    /// frames it already missed cannot be made up for on this connection.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        if let Some(item) = self.next_or_slow() {
            return Poll::Ready(item);
        }
        // Register, then look again: an item queued (or an overflow) in
        // between is not missed.
        self.waker.register(cx.waker());
        match self.next_or_slow() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    fn next_or_slow(&self) -> Option<Outbound> {
        if self.is_slow() {
            return Some(Outbound::Close(
                SLOW_CONSUMER,
                Arc::from(SLOW_CONSUMER_REASON),
            ));
        }
        self.try_next()
    }

    /// Items waiting in the queue.
    pub fn queued_items(&self) -> usize {
        self.queue().items.len()
    }

    /// The session took an item costing `cost` bytes off its queue.
    fn taken(&self, cost: usize) {
        if cost > 0 {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
        }
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Asks the session to close. Close requests are never refused for
    /// space: they cost nothing and must reach even a slow session.
    pub fn close(&self, code: u16, reason: Arc<str>) {
        self.push(Outbound::Close(code, reason), true);
    }

    /// Asks the session to close with 1012 after `delay`.
    pub fn drain(&self, delay: Duration) {
        self.push(Outbound::Drain(delay), true);
    }

    /// The session ended: what is queued is dropped and nothing more is taken.
    pub fn finish(&self) {
        let items = {
            let mut queue = self.queue();
            queue.closed = true;
            std::mem::take(&mut queue.items)
        };
        // Commands dropped here are answered by their closed channel.
        for item in &items {
            self.taken(item.cost());
        }
    }

    /// Whether a frame was dropped because the queue was full.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }
}

/// The most queued bytes a session holds back while coalescing writes.
pub const FLUSH_BYTES_MAX: usize = 64 * 1024;

/// The reason a session whose queue overflowed closes with.
pub const SLOW_CONSUMER_REASON: &str = "slow consumer: send queue overflowed";

/// How one fan-out went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    pub delivered: usize,
    pub dropped: usize,
}

/// One local subscription: the session, and, once it entered the
/// channel's presence, the `info` it entered with (the token's, or the
/// subscribe proxy's). A single node lists presence from these, and cluster
/// mode rewrites presence from them when Redis lost it, so the presence
/// layer keeps no copy of its own.
///
/// 24 bytes: `present` is `None` until the subscription entered presence,
/// then its `info`, or the node's one shared JSON `null` when it has none
/// (written to Redis as `"info":null` either way), rather than a third
/// state that would take another 8 bytes in every subscriber entry.
///
/// A subscriber is its session: it hashes and compares by the session's
/// number alone (`present` may change in place, through
/// [`MutableValues`], without moving it), so the set of a channel's
/// subscribers needs no key beside it. Its slot in the set is 32 bytes
/// (the stored hash and the subscriber), where a map from the number took
/// 40.
#[derive(Debug)]
struct Subscriber {
    session: Arc<SessionHandle>,
    present: Option<Arc<RawValue>>,
}

impl Hash for Subscriber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        SessionId(self.session.id).hash(state);
    }
}

impl PartialEq for Subscriber {
    fn eq(&self, other: &Subscriber) -> bool {
        self.session.id == other.session.id
    }
}

impl Eq for Subscriber {}

/// A session's number, to look its [`Subscriber`] up: it hashes as the
/// subscriber does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SessionId(u64);

impl Equivalent<Subscriber> for SessionId {
    fn equivalent(&self, subscriber: &Subscriber) -> bool {
        self.0 == subscriber.session.id
    }
}

/// An open session in the hub's set of them: its handle alone, hashed and
/// compared by the handle's number, so the set is looked up by that number
/// (`Borrow<u64>`) without storing it twice. An 8-byte slot instead of a
/// map's 16 (about 13 B per connection at 10k).
#[derive(Debug)]
struct Registered(Arc<SessionHandle>);

impl Hash for Registered {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialEq for Registered {
    fn eq(&self, other: &Registered) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Registered {}

impl std::borrow::Borrow<u64> for Registered {
    fn borrow(&self) -> &u64 {
        &self.0.id
    }
}

/// The `info` of a subscription in presence without one.
static NO_INFO: LazyLock<Arc<RawValue>> = LazyLock::new(|| {
    let null: Box<RawValue> = serde_json::from_str("null").unwrap_or_else(|_| unreachable!());
    Arc::from(null)
});

/// A channel's local subscribers, in subscribe order (a removal moving the
/// last into its place).
type Subscribers = IndexSet<Subscriber>;

/// One presence entry this node holds: channel, session number, user, `info`.
pub type PresentEntry = (String, u64, Arc<str>, Option<Arc<RawValue>>);

/// One subscription in a channel's presence: session number, user, `info`.
pub type ChannelEntry = (u64, Arc<str>, Option<Arc<RawValue>>);

/// What [`Hub::subscribe`] hands the session.
#[derive(Debug)]
pub struct Joined {
    /// The hub's name of the channel, shared: it outlives the hub's entry
    /// when the last subscriber leaves (a later subscribe makes a new one).
    pub channel: Arc<str>,
    /// The channel's first subscriber on this node.
    pub first: bool,
}

/// Channel → local subscribers, and every local session (by id; a
/// disconnect by user scans them, which is rare, rather than keeping a map
/// per user).
#[derive(Debug, Default)]
pub struct Hub {
    /// Keyed by the channel's one name on this node: every local
    /// subscription's entry in its session shares it (looked up by `&str`).
    channels: RwLock<HashMap<Arc<str>, Subscribers>>,
    sessions: RwLock<HashSet<Registered>>,
    /// Channel → its tails. Always locked after `channels` (never the
    /// other way round), so a first/last decision sees both.
    tails: RwLock<HashMap<Arc<str>, Vec<Arc<SessionHandle>>>>,
    /// Tails open on the node: the fan-out looks at `tails` only when some
    /// exist, so a node without tails pays one atomic read per delivery.
    tail_count: AtomicUsize,
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
            sessions: RwLock::default(),
            tails: RwLock::default(),
            tail_count: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            metrics,
        }
    }

    /// The node's metrics (the brokers count through the hub they feed).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Adds a subscriber: the channel's name as the hub keeps it (the
    /// session's subscription entry shares it instead of holding a copy),
    /// and whether it is the channel's first subscriber on this node (the
    /// broker must then start listening to the channel).
    pub fn subscribe(&self, channel: &str, session: &Arc<SessionHandle>) -> Joined {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        // Two lookups on a known channel (std has no `get_key_value_mut`);
        // a subscribe is rare next to the fan-out's reads.
        if let Some(name) = channels.get_key_value(channel).map(|(k, _)| Arc::clone(k)) {
            if let Some(subscribers) = channels.get_mut(channel) {
                // A session already subscribed keeps its entry (and its
                // presence): the set leaves it in place.
                subscribers.insert(Subscriber::new(session));
            }
            return Joined {
                channel: name,
                first: false,
            };
        }
        let name: Arc<str> = Arc::from(channel);
        let mut subscribers = Subscribers::with_capacity(1);
        subscribers.insert(Subscriber::new(session));
        channels.insert(Arc::clone(&name), subscribers);
        self.metrics.channel_opened(channel);
        // A tail of the channel already holds the broker's subscription.
        let first = !self.is_tailed(channel);
        Joined {
            channel: name,
            first,
        }
    }

    /// Removes a subscriber; true when the channel has no local subscriber
    /// left (the broker may stop listening).
    pub fn unsubscribe(&self, channel: &str, session_id: u64) -> bool {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = channels.get_mut(channel) else {
            return false;
        };
        if !subscribers.swap_remove(&SessionId(session_id)) {
            return false;
        }
        if subscribers.is_empty() {
            channels.remove(channel);
            self.metrics.channel_closed(channel);
            // A tail still needs the broker's subscription.
            return !self.is_tailed(channel);
        }
        false
    }

    /// Whether `channel` has a tail (called with `channels` locked).
    fn is_tailed(&self, channel: &str) -> bool {
        self.tail_count.load(Ordering::Acquire) > 0
            && self
                .tails
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(channel)
    }

    /// Adds a tail of `channel`: a reader that gets every `message` frame
    /// delivered to the channel on this node and is nothing else (no
    /// subscriber, no presence, no occupancy). `None` when the node already
    /// has `max` tails; otherwise whether the channel had neither a
    /// subscriber nor a tail (the broker must then start listening).
    pub fn watch(&self, channel: &str, tail: &Arc<SessionHandle>, max: usize) -> Option<bool> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let mut tails = self.tails.write().unwrap_or_else(|e| e.into_inner());
        if self.tail_count.load(Ordering::Acquire) >= max {
            return None;
        }
        let first = !channels.contains_key(channel) && !tails.contains_key(channel);
        tails
            .entry(Arc::from(channel))
            .or_default()
            .push(Arc::clone(tail));
        self.tail_count.fetch_add(1, Ordering::AcqRel);
        Some(first)
    }

    /// Removes a tail; true when the channel has neither a subscriber nor a
    /// tail left (the broker may stop listening).
    pub fn unwatch(&self, channel: &str, tail_id: u64) -> bool {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let mut tails = self.tails.write().unwrap_or_else(|e| e.into_inner());
        let Some(list) = tails.get_mut(channel) else {
            return false;
        };
        let Some(at) = list.iter().position(|t| t.id == tail_id) else {
            return false;
        };
        list.swap_remove(at).finish();
        self.tail_count.fetch_sub(1, Ordering::AcqRel);
        if !list.is_empty() {
            return false;
        }
        tails.remove(channel);
        !channels.contains_key(channel)
    }

    /// Tails open on this node.
    pub fn tail_count(&self) -> usize {
        self.tail_count.load(Ordering::Acquire)
    }

    /// Open sessions on this node.
    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The channels each open session of `user` is subscribed to, by
    /// session number, each list sorted (for the admin UI; O(the node's
    /// subscriptions), never on a message path).
    pub fn user_subscriptions(&self, user: &str) -> Vec<(u64, Vec<String>)> {
        let mut held: HashMap<u64, Vec<String>> = {
            let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
            sessions
                .iter()
                .filter(|Registered(session)| &*session.user == user)
                .map(|Registered(session)| (session.id, Vec::new()))
                .collect()
        };
        if held.is_empty() {
            return Vec::new();
        }
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        for (channel, subscribers) in channels.iter() {
            for subscriber in subscribers {
                if let Some(list) = held.get_mut(&subscriber.session.id) {
                    list.push(channel.to_string());
                }
            }
        }
        let mut held: Vec<(u64, Vec<String>)> = held.into_iter().collect();
        for (_, list) in &mut held {
            list.sort_unstable();
        }
        held.sort_unstable_by_key(|(id, _)| *id);
        held
    }

    /// Records that a subscription entered the channel's presence with
    /// `info` (before presence is written, so a rewrite after Redis lost
    /// the node's state includes it even when that write failed). Nothing
    /// when the session is not subscribed.
    pub fn set_present(&self, channel: &str, session_id: u64, info: Option<Arc<RawValue>>) {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        if let Some(subscriber) = channels
            .get_mut(channel)
            .and_then(|s| s.get_full_mut2(&SessionId(session_id)))
            .map(|(_, subscriber)| subscriber)
        {
            subscriber.present = Some(info.unwrap_or_else(|| Arc::clone(&NO_INFO)));
        }
    }

    /// Every subscription in presence on this node, for the rewrite of
    /// cluster state (rare: O(subscriptions)).
    pub fn presence_entries(&self) -> Vec<PresentEntry> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let mut present = Vec::new();
        for (channel, subscribers) in channels.iter() {
            for subscriber in subscribers {
                if let Some(info) = &subscriber.present {
                    let info = (!Arc::ptr_eq(info, &NO_INFO)).then(|| Arc::clone(info));
                    present.push((
                        channel.to_string(),
                        subscriber.session.id,
                        Arc::clone(&subscriber.session.user),
                        info,
                    ));
                }
            }
        }
        present
    }

    /// One channel's subscriptions in presence on this node, as session
    /// number, user and `info`, in the hub's order (subscribe order, a
    /// removal moving the last entry into its place): what a single node
    /// answers presence from. O(the channel's local subscribers).
    pub fn channel_presence(&self, channel: &str) -> Vec<ChannelEntry> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = channels.get(channel) else {
            return Vec::new();
        };
        subscribers
            .iter()
            .filter_map(|subscriber| {
                let info = subscriber.present.as_ref()?;
                let info = (!Arc::ptr_eq(info, &NO_INFO)).then(|| Arc::clone(info));
                Some((
                    subscriber.session.id,
                    Arc::clone(&subscriber.session.user),
                    info,
                ))
            })
            .collect()
    }

    /// Every open session's number and user, for the rewrite of cluster state.
    pub fn session_users(&self) -> Vec<(u64, Arc<str>)> {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        sessions
            .iter()
            .map(|Registered(session)| (session.id, Arc::clone(&session.user)))
            .collect()
    }

    /// Queues one frame to every local subscriber of its channel.
    pub fn deliver(&self, delivery: &Arc<Delivery>) -> Fanout {
        let timer = self.metrics.fanout();
        let channel = &*delivery.channel;
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let mut fanout = Fanout::default();
        if let Some(subscribers) = channels.get(channel) {
            for Subscriber { session, .. } in subscribers {
                if session.offer(Outbound::Frame(Arc::clone(delivery))) {
                    timer.queued();
                    fanout.delivered += 1;
                } else {
                    fanout.dropped += 1;
                }
            }
        }
        if self.tail_count.load(Ordering::Acquire) > 0 && is_message(&delivery.frame) {
            let tails = self.tails.read().unwrap_or_else(|e| e.into_inner());
            for tail in tails.get(channel).into_iter().flatten() {
                // A tail that cannot keep up is marked slow and ends; it
                // is not a subscriber, so it is not counted as one.
                tail.offer(Outbound::Frame(Arc::clone(delivery)));
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

    /// Records an open session (for disconnects by user and the drain).
    pub fn register(&self, session: &Arc<SessionHandle>) {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        sessions.replace(Registered(Arc::clone(session)));
    }

    /// The open session numbered `session_id` (a stream's commands find
    /// their session here).
    pub fn session(&self, session_id: u64) -> Option<Arc<SessionHandle>> {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&session_id)
            .map(|Registered(session)| Arc::clone(session))
    }

    /// Forgets a closed session.
    pub fn unregister(&self, session_id: u64) {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if let Some(Registered(session)) = sessions.take(&session_id) {
            session.finish();
        }
        if sessions.is_empty() && sessions.capacity() > 64 {
            sessions.shrink_to_fit();
        }
    }

    /// Asks every local session of `user` to close with `code` and
    /// `reason`; returns how many.
    pub fn disconnect_user(&self, user: &str, code: u16, reason: &str) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        let reason: Arc<str> = Arc::from(reason);
        let mut closed = 0;
        for Registered(session) in sessions.iter().filter(|s| &*s.0.user == user) {
            session.close(code, Arc::clone(&reason));
            closed += 1;
        }
        closed
    }

    /// Asks every local session to close with 1012 at a moment `delay`
    /// picks for it (the node drains). A session registered after this
    /// walk sees the node draining itself.
    pub fn drain(&self, mut delay: impl FnMut() -> Duration) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        for Registered(session) in sessions.iter() {
            session.drain(delay());
        }
        sessions.len()
    }

    /// Whether a channel has a local subscriber or a tail (whether the
    /// node needs the broker's subscription to it).
    pub fn has_subscribers(&self, channel: &str) -> bool {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        channels.contains_key(channel) || self.is_tailed(channel)
    }

    /// Bytes waiting in the send queues of every open session (for the
    /// metrics scrape; O(sessions), never on the per-frame path).
    pub fn queued_bytes(&self) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        sessions
            .iter()
            .map(|Registered(session)| session.queued_bytes())
            .sum()
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The channels this node needs from the broker (to resubscribe): those
    /// with a local subscriber or a tail.
    pub fn channels(&self) -> Vec<String> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let mut needed: Vec<String> = channels.keys().map(|c| c.to_string()).collect();
        if self.tail_count.load(Ordering::Acquire) > 0 {
            let tails = self.tails.read().unwrap_or_else(|e| e.into_inner());
            needed.extend(
                tails
                    .keys()
                    .filter(|c| !channels.contains_key(&***c))
                    .map(|c| c.to_string()),
            );
        }
        needed
    }

    /// A page of this node's channels with their subscribers and distinct
    /// users, for a single node's `GET /api/channels`: counted from the
    /// subscriber lists on demand, so a subscription costs nothing extra.
    /// Linear in the node's channels, which one node bounds.
    pub fn list(&self, query: &ListQuery) -> ChannelPage {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let start = query.start();
        let mut names: Vec<&str> = channels
            .keys()
            .map(|c| &**c)
            .filter(|c| c.starts_with(query.prefix.as_str()))
            .filter(|c| match start {
                Bound::Excluded(after) => *c > after,
                Bound::Included(from) => *c >= from,
                Bound::Unbounded => true,
            })
            .collect();
        names.sort_unstable();
        names.truncate(query.limit + 1);
        let page = names
            .into_iter()
            .map(|name| counts(name, channels.get(name)))
            .collect();
        query.page(page)
    }

    /// One channel's local subscribers and distinct users.
    pub fn counts(&self, channel: &str) -> ChannelCounts {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        counts(channel, channels.get(channel))
    }

    /// Frames dropped for full queues since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A cluster node's occupancy counts a user's subscriptions to a channel
/// from the subscriber entries, when it writes a changed count (one walk of
/// the changed channel), rather than keeping a map of its own.
impl ChannelSubscribers for Hub {
    fn each_subscriber(&self, channel: &str, visit: &mut dyn FnMut(&Arc<str>)) {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        for subscriber in channels.get(channel).into_iter().flat_map(|s| s.iter()) {
            visit(&subscriber.session.user);
        }
    }

    fn each_subscription(&self, visit: &mut dyn FnMut(&str, &Arc<str>)) {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        for (channel, subscribers) in channels.iter() {
            for subscriber in subscribers {
                visit(channel, &subscriber.session.user);
            }
        }
    }
}

impl Subscriber {
    fn new(session: &Arc<SessionHandle>) -> Subscriber {
        Subscriber {
            session: Arc::clone(session),
            present: None,
        }
    }
}

/// Whether a frame is a `message` (what a tail shows), not a `join`,
/// `leave` or `reset`: every frame the node encodes starts with its type.
fn is_message(frame: &str) -> bool {
    frame.starts_with("{\"type\":\"message\"")
}

fn counts(channel: &str, subscribers: Option<&Subscribers>) -> ChannelCounts {
    let users: HashSet<&str> = subscribers
        .into_iter()
        .flat_map(|s| s.iter())
        .map(|subscriber| &*subscriber.session.user)
        .collect();
    ChannelCounts {
        channel: channel.to_owned(),
        subscribers: subscribers.map_or(0, |s| s.len() as u64),
        users: users.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64, max_bytes: usize) -> (Arc<SessionHandle>, Arc<SessionHandle>) {
        let handle = Arc::new(SessionHandle::new(id, Arc::from("u"), max_bytes));
        (Arc::clone(&handle), handle)
    }

    #[test]
    fn first_and_last_subscriber() {
        let hub = Hub::new();
        let (a, _ra) = session(1, 1024);
        let (b, _rb) = session(2, 1024);
        let first = hub.subscribe("c", &a);
        assert!(first.first);
        let second = hub.subscribe("c", &b);
        assert!(!second.first);
        assert!(
            Arc::ptr_eq(&first.channel, &second.channel),
            "every subscription shares the hub's name of the channel"
        );
        assert!(
            !hub.subscribe("c", &b).first,
            "subscribing twice is one subscription"
        );
        assert!(!hub.unsubscribe("c", 1));
        assert!(!hub.unsubscribe("c", 1), "unsubscribing twice is harmless");
        assert!(hub.unsubscribe("c", 2));
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(&*first.channel, "c", "a name outlives the hub's entry");
        let again = hub.subscribe("c", &a);
        assert!(again.first && !Arc::ptr_eq(&again.channel, &first.channel));
    }

    #[test]
    fn a_tail_reads_messages_and_holds_the_broker_but_is_no_subscriber() {
        let hub = Hub::new();
        let (tail, _rt) = session(100, 4096);
        let (a, _ra) = session(1, 4096);
        assert_eq!(hub.watch("c", &tail, 2), Some(true), "nobody held c");
        assert!(hub.has_subscribers("c") && hub.channels() == vec!["c".to_owned()]);
        assert!(!hub.subscribe("c", &a).first, "the tail holds the broker");
        assert_eq!(hub.counts("c").subscribers, 1, "the tail is not counted");
        hub.set_present("c", 1, None);
        assert_eq!(hub.channel_presence("c").len(), 1);
        let message = Delivery::plain(
            "c",
            Utf8Bytes::from_static("{\"type\":\"message\",\"channel\":\"c\",\"data\":1}"),
        );
        let join = Delivery::plain(
            "c",
            Utf8Bytes::from_static("{\"type\":\"join\",\"channel\":\"c\"}"),
        );
        assert_eq!(hub.deliver(&join).delivered, 1, "subscribers only");
        assert_eq!(hub.deliver(&message).delivered, 1, "subscribers only");
        assert_eq!(tail.queued_items(), 1, "the tail gets the message alone");
        assert_eq!(a.queued_items(), 2);
        assert!(!hub.unsubscribe("c", 1), "the tail still needs the broker");
        let (other, _ro) = session(101, 4096);
        let (third, _rt3) = session(102, 4096);
        assert_eq!(hub.watch("c", &other, 2), Some(false));
        assert_eq!(hub.watch("d", &third, 2), None, "two tails at most here");
        assert_eq!(hub.tail_count(), 2);
        assert!(!hub.unwatch("c", 100));
        assert!(!hub.unwatch("c", 100), "unwatching twice is harmless");
        assert!(hub.unwatch("c", 101), "the last reader of c");
        assert_eq!(hub.tail_count(), 0);
        assert!(!hub.has_subscribers("c") && hub.channels().is_empty());
    }

    #[test]
    fn a_users_subscriptions_by_session() {
        let hub = Hub::new();
        let alice = |id| Arc::new(SessionHandle::new(id, Arc::from("alice"), 1024));
        let (a1, a2) = (alice(1), alice(2));
        let (bob, _rb) = session(3, 1024);
        for s in [&a1, &a2, &bob] {
            hub.register(s);
        }
        hub.subscribe("z", &a1);
        hub.subscribe("b", &a1);
        hub.subscribe("b", &bob);
        assert_eq!(
            hub.user_subscriptions("alice"),
            vec![(1, vec!["b".to_owned(), "z".to_owned()]), (2, vec![])]
        );
        assert!(hub.user_subscriptions("carol").is_empty());
        assert_eq!(hub.session_count(), 3);
    }

    /// A session's handle lives in an `Arc` block: 16 bytes of counts plus
    /// the handle. At 112 bytes that block takes jemalloc's 128-byte size
    /// class; 8 more and it takes the 160 one (32 bytes more per connection).
    const SESSION_HANDLE_BOUND: usize = 112;

    #[test]
    fn a_session_handle_fits_the_128_byte_class() {
        let size = std::mem::size_of::<SessionHandle>();
        assert!(
            size <= SESSION_HANDLE_BOUND,
            "a session handle is {size} bytes, over {SESSION_HANDLE_BOUND}"
        );
    }

    #[test]
    fn a_subscriber_entry_stays_small() {
        // Every subscription on the node holds one, in both modes, in a
        // slot beside its stored hash: 32 bytes, with no key of its own.
        assert_eq!(std::mem::size_of::<Subscriber>(), 24);
    }

    #[test]
    fn a_subscriber_is_found_by_its_session_number() {
        let (a, _ra) = session(7, 1024);
        use std::hash::BuildHasher;
        let hasher = std::hash::RandomState::new();
        assert_eq!(
            hasher.hash_one(Subscriber::new(&a)),
            hasher.hash_one(SessionId(7)),
            "a subscriber hashes as its session's number"
        );
        let mut subscribers = Subscribers::default();
        assert!(subscribers.insert(Subscriber::new(&a)));
        if let Some((_, subscriber)) = subscribers.get_full_mut2(&SessionId(7)) {
            subscriber.present = Some(Arc::clone(&NO_INFO));
        }
        assert!(
            !subscribers.insert(Subscriber::new(&a)),
            "one entry per session"
        );
        assert!(
            subscribers
                .get(&SessionId(7))
                .is_some_and(|s| s.present.is_some()),
            "the first entry stays, changed in place"
        );
        assert!(subscribers.get(&SessionId(8)).is_none());
        assert!(subscribers.swap_remove(&SessionId(7)) && subscribers.is_empty());
    }

    #[test]
    fn presence_entries_are_the_subscriptions_that_entered_presence() {
        let hub = Hub::new();
        let (a, _ra) = session(1, 1024);
        let (b, _rb) = session(2, 1024);
        hub.register(&a);
        hub.register(&b);
        hub.subscribe("c", &a);
        hub.subscribe("c", &b);
        hub.subscribe("d", &a);
        assert!(
            hub.presence_entries().is_empty(),
            "subscribed is not yet present (a subscribe may still fail)"
        );
        let info: Arc<RawValue> = Arc::from(RawValue::from_string("{\"k\":1}".into()).unwrap());
        hub.set_present("c", 1, Some(Arc::clone(&info)));
        hub.set_present("d", 1, None);
        hub.set_present("e", 2, None);
        hub.subscribe("c", &a);
        let mut entries: Vec<_> = hub
            .presence_entries()
            .into_iter()
            .map(|(channel, id, user, info)| (channel, id, user, info.map(|i| i.get().to_owned())))
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            vec![
                (
                    "c".to_owned(),
                    1,
                    Arc::from("u"),
                    Some("{\"k\":1}".to_owned())
                ),
                ("d".to_owned(), 1, Arc::from("u"), None),
            ],
            "subscribing again keeps the entry; a channel not subscribed gets none"
        );
        hub.unsubscribe("c", 1);
        assert_eq!(hub.presence_entries().len(), 1);
        let mut users = hub.session_users();
        users.sort();
        assert_eq!(users, vec![(1, Arc::from("u")), (2, Arc::from("u"))]);
    }

    #[test]
    fn channel_presence_lists_one_channels_present_subscriptions() {
        let hub = Hub::new();
        let (a, _ra) = session(1, 1024);
        let (b, _rb) = session(2, 1024);
        let (c, _rc) = session(3, 1024);
        for s in [&a, &b, &c] {
            hub.subscribe("c", s);
        }
        hub.subscribe("d", &a);
        assert!(
            hub.channel_presence("c").is_empty(),
            "none entered presence yet"
        );
        let info: Arc<RawValue> = Arc::from(RawValue::from_string("{\"k\":1}".into()).unwrap());
        hub.set_present("c", 1, Some(Arc::clone(&info)));
        hub.set_present("c", 3, None);
        hub.set_present("d", 1, None);
        let listed = |channel: &str| -> Vec<(u64, String, Option<String>)> {
            hub.channel_presence(channel)
                .into_iter()
                .map(|(id, user, info)| (id, user.to_string(), info.map(|i| i.get().to_owned())))
                .collect()
        };
        assert_eq!(
            listed("c"),
            vec![
                (1, "u".to_owned(), Some("{\"k\":1}".to_owned())),
                (3, "u".to_owned(), None),
            ],
            "subscribed but not present (session 2) is left out; no info reads as None"
        );
        assert_eq!(listed("d"), vec![(1, "u".to_owned(), None)]);
        assert!(listed("nowhere").is_empty());
        hub.unsubscribe("c", 1);
        assert_eq!(listed("c"), vec![(3, "u".to_owned(), None)]);
        hub.unsubscribe("c", 3);
        hub.unsubscribe("c", 2);
        assert!(listed("c").is_empty());
    }

    #[test]
    fn fanout_shares_bytes_and_drops_for_full_queues_only() {
        let hub = Hub::new();
        let frame = Delivery::plain("c", Utf8Bytes::from_static("{\"type\":\"message\"}"));
        let one = frame.frame.len() + QUEUE_ENTRY_OVERHEAD;
        let (fast, fast_rx) = session(1, 8 * one);
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
            match fast_rx.try_next() {
                Some(Outbound::Frame(delivery)) => {
                    assert!(Arc::ptr_eq(&delivery, &frame))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(fast.queued_bytes(), 0);
        // Once slow, a session gets nothing more but a close still reaches it.
        slow.close(1013, Arc::from("slow"));
        assert_eq!(hub.deliver(&frame).dropped, 1);
        let elsewhere = Delivery::plain("nobody", frame.frame.clone());
        assert_eq!(hub.deliver(&elsewhere), Fanout::default());
    }

    #[test]
    fn the_node_total_follows_every_queue_and_forgets_a_closed_one() {
        let hub = Hub::new();
        let (a, _ra) = session(1, 10_000);
        let (b, _rb) = session(2, 10_000);
        hub.register(&a);
        hub.register(&b);
        let frame = Delivery::plain("c", Utf8Bytes::from("x".repeat(100)));
        let cost = frame.frame.len() + QUEUE_ENTRY_OVERHEAD;
        assert!(a.offer(Outbound::Frame(frame.clone())));
        assert!(a.offer(Outbound::Frame(frame.clone())));
        assert!(b.offer(Outbound::Frame(frame.clone())));
        assert_eq!(hub.queued_bytes(), 3 * cost);
        assert!(a.try_next().is_some());
        assert_eq!(hub.queued_bytes(), 2 * cost);
        hub.unregister(1);
        assert_eq!(
            hub.queued_bytes(),
            cost,
            "a closed session's backlog leaves the total"
        );
        hub.unregister(2);
        assert_eq!(hub.queued_bytes(), 0);
    }

    #[test]
    fn a_batch_takes_in_order_under_one_lock_and_gives_the_bytes_back() {
        let (handle, _) = session(1, 10_000);
        let frames: Vec<_> = (0..4)
            .map(|n| Delivery::plain("c", Utf8Bytes::from(n.to_string())))
            .collect();
        for frame in &frames[..2] {
            assert!(handle.offer(Outbound::Frame(Arc::clone(frame))));
        }
        handle.close(4003, Arc::from("bye"));
        for frame in &frames[2..] {
            assert!(handle.offer(Outbound::Frame(Arc::clone(frame))));
        }
        let mut taken = Vec::new();
        handle.take_batch(10, |item| match item {
            Outbound::Frame(delivery) => {
                taken.push(delivery.frame.to_string());
                true
            }
            _ => false,
        });
        assert_eq!(taken, ["0", "1"], "stops at the close request");
        let one = frames[0].frame.len() + QUEUE_ENTRY_OVERHEAD;
        assert_eq!(handle.queued_bytes(), 2 * one, "two frames still queued");
        handle.take_batch(1, |_| true);
        taken.clear();
        handle.take_batch(10, |item| {
            if let Outbound::Frame(delivery) = item {
                taken.push(delivery.frame.to_string());
            }
            true
        });
        assert_eq!(taken, ["3"], "at most max per batch, then the rest");
        assert_eq!(handle.queued_bytes(), 0);
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

    #[test]
    fn an_overflow_wakes_the_session_and_ends_in_1013() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let (handle, _) = session(1, 8192);
        assert!(handle.poll_next(&mut cx).is_pending());
        let big = Delivery::plain("c", Utf8Bytes::from("x".repeat(9000)));
        assert!(!handle.offer(Outbound::Frame(big)));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the drop woke the session"
        );
        match handle.poll_next(&mut cx) {
            Poll::Ready(Outbound::Close(code, reason)) => {
                assert_eq!((code, &*reason), (1013, SLOW_CONSUMER_REASON))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_queue_is_given_back_after_a_burst_and_refused_after_the_end() {
        let (handle, _) = session(1, 1 << 20);
        let frame = Delivery::plain("c", Utf8Bytes::from_static("{}"));
        for _ in 0..100 {
            assert!(handle.offer(Outbound::Frame(frame.clone())));
        }
        while handle.try_next().is_some() {}
        assert_eq!(handle.queue().items.capacity(), 0);
        assert_eq!(handle.queued_bytes(), 0);
        assert!(handle.offer(Outbound::Frame(frame.clone())));
        handle.finish();
        assert_eq!(handle.queued_bytes(), 0, "what was left is uncharged");
        assert!(!handle.offer(Outbound::Frame(frame)));
    }
}
