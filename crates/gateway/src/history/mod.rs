//! Per-channel history: the bounded stream of a channel's recent messages,
//! with consecutive offsets and an epoch, that lets a client resume where it
//! left off and lets a node repair gaps in its own Pub/Sub feed.
//!
//! This module holds what both brokers share: the namespace policy, the
//! shape of a read ([`HistoryQuery`], [`HistoryPage`]), the rule that picks
//! which stored messages a read returns ([`select`], mirrored by the Redis
//! script), the in-memory store of the single node ([`MemoryHistory`]) and
//! the node-side gap detector ([`Tracker`]). Offsets are assigned where the
//! message is stored, in the same step that publishes it: under the
//! channel's lock in memory, inside one Lua script on Redis
//! (`history::redis`).
//!
//! A read may be bounded in bytes as well as in messages
//! ([`HistoryQuery::max_bytes`], [`fitting`]): a subscribe's replay is
//! bounded by the send queue's byte cap, and the store stops there, so a
//! node never even reads more than that for one connection.
//!
//! It also says what a history read answers a client ([`reply`],
//! [`beyond_top`], [`disabled`]): the `history` command of a session and
//! the server API's `GET /api/history` give the same answer, so both take
//! it from here.

pub mod redis;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use switchboard_protocol::{ChannelName, ErrorCode, Position};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::namespaces::{HistoryPolicy, HISTORY_META_TTL};
use crate::config::session::QUEUE_ENTRY_OVERHEAD;

/// Messages a `history` command returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// A new random epoch: 16 hex digits, so two streams never share one by chance.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What a read asks for: the newest `limit` messages, or (with `since`) the
/// messages after that position, oldest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub since: Option<Position>,
    pub limit: usize,
    /// With a value, the read returns only the first of the selected
    /// messages (oldest first) whose costs ([`frame_cost`]) sum to at most
    /// this many bytes: a prefix, so it still continues after `since`.
    pub max_bytes: Option<usize>,
}

/// What a stored frame costs against a byte bound: its length plus the
/// overhead a send queue charges for it (`QUEUE_ENTRY_OVERHEAD`), so a
/// replay and live traffic are counted alike. The Redis read script counts
/// the same way.
pub fn frame_cost(len: usize) -> usize {
    len.saturating_add(QUEUE_ENTRY_OVERHEAD)
}

/// How many of the frames whose lengths `lens` gives, in order, fit in
/// `max_bytes` ([`frame_cost`] each): all of them without a bound.
pub fn fitting(max_bytes: Option<usize>, lens: impl IntoIterator<Item = usize>) -> usize {
    let mut used = 0usize;
    let mut count = 0;
    for len in lens {
        if let Some(max) = max_bytes {
            used = used.saturating_add(frame_cost(len));
            if used > max {
                break;
            }
        }
        count += 1;
    }
    count
}

/// What a read returns.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's latest offset and its epoch.
    pub top: Position,
    /// The offset of the oldest message still stored (`top + 1` when none is).
    pub first: u64,
    /// `(offset, frame)`, oldest first, consecutive.
    pub messages: Vec<(u64, Utf8Bytes)>,
}

impl HistoryPage {
    /// Whether this page continues exactly after `since`: same epoch, and
    /// nothing between `since` and the first message returned was lost.
    pub fn continues(&self, since: &Position) -> bool {
        since.epoch == self.top.epoch
            && since.offset <= self.top.offset
            && since.offset.saturating_add(1) >= self.first
    }

    /// Whether `since` names an offset this stream has not reached yet.
    pub fn is_beyond_top(&self, since: &Position) -> bool {
        since.epoch == self.top.epoch && since.offset > self.top.offset
    }
}

/// The inclusive offset range a read returns from a stream whose newest
/// offset is `top` and which holds `len` messages: `None` when it returns
/// nothing. The Redis script computes the same range.
pub fn select(top: u64, len: u64, epoch: &str, query: &HistoryQuery) -> Option<(u64, u64)> {
    let first = top + 1 - len.min(top);
    let limit = query.limit.max(1) as u64;
    let from = match &query.since {
        None => first.max((top + 1).saturating_sub(limit)),
        Some(since) if since.epoch == epoch => first.max(since.offset.saturating_add(1)),
        Some(_) => first,
    };
    if len == 0 || from > top {
        return None;
    }
    Some((from, top.min(from + limit - 1)))
}

/// The error for a `since` ahead of the channel's stream.
pub fn beyond_top(since: &Position, page: &HistoryPage) -> (ErrorCode, String) {
    (
        ErrorCode::BadRequest,
        format!(
            "since.offset {} is beyond the channel's latest offset {}",
            since.offset, page.top.offset
        ),
    )
}

/// The error for history on a namespace without it.
pub fn disabled(channel: &ChannelName) -> (ErrorCode, String) {
    (
        ErrorCode::BadRequest,
        format!(
            "history is disabled for namespace {:?}",
            channel.namespace()
        ),
    )
}

/// The result of a `history` command or `GET /api/history`:
/// `{offset, epoch, messages, recovered?}`. With `since`, `recovered`
/// says whether `messages` continue right after it; when not, the
/// messages are what history still holds.
pub fn reply(query: &HistoryQuery, page: HistoryPage) -> Result<Value, (ErrorCode, String)> {
    let recovered = match &query.since {
        Some(since) if page.is_beyond_top(since) => return Err(beyond_top(since, &page)),
        Some(since) => Some(page.continues(since)),
        None => None,
    };
    // Stored frames are the `message` frames subscribers got; a bounded
    // read (at most MAX_HISTORY_LIMIT) is parsed back to sit in the reply.
    let messages = page
        .messages
        .iter()
        .map(|(_, frame)| serde_json::from_str::<Value>(frame))
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|error| {
            tracing::warn!(message = "stored frames are not JSON", %error);
            (ErrorCode::Internal, "history unavailable".to_owned())
        })?;
    let mut result = json!({
        "offset": page.top.offset,
        "epoch": page.top.epoch,
        "messages": messages,
    });
    if let Some(recovered) = recovered {
        result["recovered"] = json!(recovered);
    }
    Ok(result)
}

/// One channel's stream in memory.
#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    top: u64,
    frames: VecDeque<Utf8Bytes>,
    policy: HistoryPolicy,
    last_publish: Instant,
    /// The last publish or read: a stream never published is kept for
    /// `policy.ttl` after it was last read, so its readers can resume.
    last_used: Instant,
}

impl Stream {
    fn new(policy: HistoryPolicy, now: Instant) -> Stream {
        Stream {
            epoch: Arc::from(new_epoch()),
            top: 0,
            frames: VecDeque::new(),
            policy,
            last_publish: now,
            last_used: now,
        }
    }

    /// Forgets what expired: the messages after the policy's TTL, the whole
    /// stream (a new epoch) after [`HISTORY_META_TTL`].
    fn expire(&mut self, now: Instant) {
        let idle = now.saturating_duration_since(self.last_publish);
        if idle >= HISTORY_META_TTL {
            *self = Stream::new(self.policy, now);
        } else if idle >= self.policy.ttl {
            self.frames.clear();
        }
    }

    fn page(&self, query: &HistoryQuery) -> HistoryPage {
        let len = self.frames.len() as u64;
        let first = self.top + 1 - len;
        let mut messages: Vec<(u64, Utf8Bytes)> = select(self.top, len, &self.epoch, query)
            .map(|(from, to)| {
                (from..=to)
                    .filter_map(|offset| {
                        let index = usize::try_from(offset - first).ok()?;
                        Some((offset, self.frames.get(index)?.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let fit = fitting(query.max_bytes, messages.iter().map(|(_, f)| f.len()));
        messages.truncate(fit);
        HistoryPage {
            top: Position::new(self.top, &*self.epoch),
            first,
            messages,
        }
    }
}

/// Publishes between two sweeps of expired streams.
const SWEEP_EVERY: u64 = 4096;

/// The single node's history: a bounded ring of frames per channel, each
/// behind its own lock so that assigning an offset, storing and delivering
/// happen as one step per channel without serialising other channels.
#[derive(Debug, Default)]
pub struct MemoryHistory {
    streams: Mutex<HashMap<Box<str>, Arc<Mutex<Stream>>>>,
    publishes: std::sync::atomic::AtomicU64,
}

impl MemoryHistory {
    fn stream(&self, channel: &str, policy: HistoryPolicy, now: Instant) -> Arc<Mutex<Stream>> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            streams
                .entry(channel.into())
                .or_insert_with(|| Arc::new(Mutex::new(Stream::new(policy, now)))),
        )
    }

    /// Stores the frame `build(offset)` under the next offset and, still
    /// holding the channel's lock, hands it to `deliver`, so every
    /// subscriber sees the channel's messages in offset order.
    pub fn append(
        &self,
        channel: &str,
        policy: HistoryPolicy,
        build: impl FnOnce(u64) -> String,
        deliver: impl FnOnce(u64, &Arc<str>, &Utf8Bytes),
    ) -> Position {
        let now = Instant::now();
        self.maybe_sweep(now);
        let stream = self.stream(channel, policy, now);
        let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.expire(now);
        stream.policy = policy;
        stream.last_publish = now;
        stream.last_used = now;
        stream.top += 1;
        let offset = stream.top;
        let frame = Utf8Bytes::from(build(offset));
        stream.frames.push_back(frame.clone());
        while stream.frames.len() > policy.size {
            stream.frames.pop_front();
        }
        deliver(offset, &stream.epoch, &frame);
        Position::new(offset, &*stream.epoch)
    }

    /// Reads a page; a channel never published gets a stream (and an epoch)
    /// now, so a client can resume from its very first message.
    pub fn read(&self, channel: &str, policy: HistoryPolicy, query: &HistoryQuery) -> HistoryPage {
        let now = Instant::now();
        let stream = self.stream(channel, policy, now);
        let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.expire(now);
        stream.last_used = now;
        stream.page(query)
    }

    /// Drops streams whose position expired, streams never published and not
    /// read for their TTL, and the messages of idle ones, every
    /// [`SWEEP_EVERY`] publishes: memory stays bounded by live channels.
    fn maybe_sweep(&self, now: Instant) {
        let n = self
            .publishes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.retain(|_, stream| {
            let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
            stream.expire(now);
            stream.top > 0 || now.saturating_duration_since(stream.last_used) < stream.policy.ttl
        });
    }

    /// Streams held (for tests).
    pub fn len(&self) -> usize {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the node should do with a message its Pub/Sub feed delivered, given
/// the last position it relayed for the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// The next offset (or the first one seen): deliver it.
    Next,
    /// Already relayed (it came through a repair): drop it.
    Duplicate,
    /// Offsets after `after` are missing: repair them from history first.
    Gap { after: u64 },
    /// The stream's epoch changed: its past is lost.
    NewEpoch,
}

#[derive(Debug, Clone)]
struct Tracked {
    offset: u64,
    epoch: Arc<str>,
    /// Whether a message was relayed since the position was seeded.
    relayed: bool,
}

/// The last position this node relayed per channel it holds; what makes a
/// gap in the Pub/Sub feed visible.
#[derive(Debug, Default)]
pub struct Tracker {
    channels: HashMap<Box<str>, Tracked>,
}

impl Tracker {
    /// A session read the channel's position after the node subscribed to
    /// it: until a message is relayed, the lowest such position is where the
    /// node's promise starts (every later message must reach the hub).
    pub fn seed(&mut self, channel: &str, position: &Position) {
        match self.channels.get_mut(channel) {
            Some(tracked) if tracked.relayed => {}
            Some(tracked) if *tracked.epoch == *position.epoch => {
                tracked.offset = tracked.offset.min(position.offset);
            }
            _ => {
                self.channels.insert(
                    channel.into(),
                    Tracked {
                        offset: position.offset,
                        epoch: Arc::from(position.epoch.as_str()),
                        relayed: false,
                    },
                );
            }
        }
    }

    pub fn check(&self, channel: &str, offset: u64, epoch: &str) -> Relay {
        match self.channels.get(channel) {
            None => Relay::Next,
            Some(tracked) if *tracked.epoch != *epoch => Relay::NewEpoch,
            Some(tracked) if offset <= tracked.offset => Relay::Duplicate,
            Some(tracked) if offset == tracked.offset + 1 => Relay::Next,
            Some(tracked) => Relay::Gap {
                after: tracked.offset,
            },
        }
    }

    /// Records that everything up to `offset` of `epoch` was relayed; returns
    /// the epoch shared by the channel's deliveries. Allocates only for a
    /// channel or an epoch it has not seen: this runs for every message.
    pub fn advance(&mut self, channel: &str, offset: u64, epoch: &str) -> Arc<str> {
        let Some(tracked) = self.channels.get_mut(channel) else {
            let epoch: Arc<str> = Arc::from(epoch);
            self.channels.insert(
                channel.into(),
                Tracked {
                    offset,
                    epoch: Arc::clone(&epoch),
                    relayed: true,
                },
            );
            return epoch;
        };
        if *tracked.epoch != *epoch {
            tracked.epoch = Arc::from(epoch);
        }
        tracked.offset = offset;
        tracked.relayed = true;
        Arc::clone(&tracked.epoch)
    }

    /// [`Tracker::check`], and when the message is the next one, records it
    /// as relayed at once (one lookup under one lock for the common case):
    /// the epoch to deliver it with, or why not to deliver it now.
    pub fn accept(&mut self, channel: &str, offset: u64, epoch: &str) -> Result<Arc<str>, Relay> {
        match self.check(channel, offset, epoch) {
            Relay::Next => Ok(self.advance(channel, offset, epoch)),
            other => Err(other),
        }
    }

    /// The last position relayed or seeded.
    pub fn position(&self, channel: &str) -> Option<Position> {
        self.channels
            .get(channel)
            .map(|t| Position::new(t.offset, &*t.epoch))
    }

    /// Every channel with a position (to repair after a reconnect).
    pub fn positions(&self) -> Vec<(String, Position)> {
        self.channels
            .iter()
            .map(|(c, t)| (c.to_string(), Position::new(t.offset, &*t.epoch)))
            .collect()
    }

    /// The node stopped holding the channel.
    pub fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn query(since: Option<(u64, &str)>, limit: usize) -> HistoryQuery {
        HistoryQuery {
            since: since.map(|(o, e)| Position::new(o, e)),
            limit,
            max_bytes: None,
        }
    }

    #[test]
    fn selection() {
        // top 10, 5 stored: offsets 6..=10.
        assert_eq!(select(10, 5, "e", &query(None, 100)), Some((6, 10)));
        assert_eq!(select(10, 5, "e", &query(None, 2)), Some((9, 10)));
        assert_eq!(
            select(10, 5, "e", &query(Some((7, "e")), 100)),
            Some((8, 10))
        );
        assert_eq!(select(10, 5, "e", &query(Some((7, "e")), 2)), Some((8, 9)));
        assert_eq!(
            select(10, 5, "e", &query(Some((2, "e")), 100)),
            Some((6, 10))
        );
        assert_eq!(select(10, 5, "e", &query(Some((10, "e")), 100)), None);
        assert_eq!(select(10, 5, "e", &query(Some((12, "e")), 100)), None);
        assert_eq!(
            select(10, 5, "x", &query(Some((9, "x")), 100)),
            Some((10, 10))
        );
        assert_eq!(
            select(10, 5, "e", &query(Some((9, "old")), 100)),
            Some((6, 10))
        );
        assert_eq!(select(0, 0, "e", &query(None, 100)), None);
        assert_eq!(select(10, 0, "e", &query(Some((3, "e")), 100)), None);
    }

    #[test]
    fn a_byte_bound_keeps_the_frames_that_fit_in_order() {
        let cost = frame_cost;
        assert_eq!(
            cost(10),
            10 + QUEUE_ENTRY_OVERHEAD,
            "counted as a queue counts"
        );
        assert_eq!(fitting(None, [1 << 30, 1 << 30]), 2, "no bound");
        assert_eq!(fitting(Some(cost(10) + cost(20)), [10, 20, 30]), 2);
        assert_eq!(fitting(Some(cost(10) + cost(20) - 1), [10, 20, 30]), 1);
        assert_eq!(
            fitting(Some(cost(10) + cost(20) + cost(1)), [10, 20, 30, 1]),
            2,
            "a prefix: a small frame after one that does not fit is not taken"
        );
        assert_eq!(fitting(Some(cost(10) - 1), [10]), 0);
        assert_eq!(fitting(Some(0), std::iter::empty()), 0);
        assert_eq!(fitting(Some(100), [usize::MAX, 1]), 0, "no overflow");
    }

    #[test]
    fn memory_history_stops_a_read_at_its_byte_bound() {
        let history = MemoryHistory::default();
        let policy = HistoryPolicy {
            size: 10,
            ttl: Duration::from_secs(60),
        };
        let epoch = history.read("c", policy, &query(None, 1)).top.epoch;
        for n in 1..=5 {
            history.append("c", policy, |o| format!("m{n}@{o}"), |_, _, _| {});
        }
        let mut bounded = query(Some((1, &epoch)), 100);
        bounded.max_bytes = Some(2 * frame_cost("m2@2".len()));
        let page = history.read("c", policy, &bounded);
        let offsets: Vec<u64> = page.messages.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [2, 3], "the oldest after since, within the bound");
        assert_eq!(page.top.offset, 5, "the top is the stream's, not the cut's");
        assert!(page.continues(&Position::new(1, &epoch)));
    }

    #[test]
    fn continuity() {
        let page = HistoryPage {
            top: Position::new(10, "e"),
            first: 6,
            messages: Vec::new(),
        };
        assert!(page.continues(&Position::new(5, "e")));
        assert!(page.continues(&Position::new(10, "e")));
        assert!(!page.continues(&Position::new(4, "e")), "offset 5 is gone");
        assert!(!page.continues(&Position::new(7, "f")), "another epoch");
        assert!(!page.continues(&Position::new(11, "e")));
        assert!(page.is_beyond_top(&Position::new(11, "e")));
        assert!(!page.is_beyond_top(&Position::new(11, "f")));
        let expired = HistoryPage {
            top: Position::new(10, "e"),
            first: 11,
            messages: Vec::new(),
        };
        assert!(expired.continues(&Position::new(10, "e")), "missed nothing");
        assert!(!expired.continues(&Position::new(9, "e")));
    }

    #[test]
    fn a_history_reply_carries_the_position_and_the_messages() {
        let page = |messages: &[u64]| HistoryPage {
            top: Position::new(10, "e"),
            first: 6,
            messages: messages
                .iter()
                .map(|o| (*o, Utf8Bytes::from(format!(r#"{{"offset":{o}}}"#))))
                .collect(),
        };
        assert_eq!(
            reply(&query(None, 2), page(&[9, 10])),
            Ok(json!({
                "offset": 10,
                "epoch": "e",
                "messages": [{ "offset": 9 }, { "offset": 10 }],
            }))
        );
        let resumed = reply(&query(Some((8, "e")), 100), page(&[9, 10])).unwrap();
        assert_eq!(resumed["recovered"], json!(true));
        let trimmed = reply(&query(Some((2, "e")), 100), page(&[6, 7])).unwrap();
        assert_eq!(
            trimmed["recovered"],
            json!(false),
            "offsets 3 to 5 are gone"
        );
        assert_eq!(
            reply(&query(Some((11, "e")), 100), page(&[])),
            Err((
                ErrorCode::BadRequest,
                "since.offset 11 is beyond the channel's latest offset 10".to_owned()
            ))
        );
        let channel = ChannelName::parse("quiet:a").unwrap();
        assert_eq!(
            disabled(&channel),
            (
                ErrorCode::BadRequest,
                "history is disabled for namespace \"quiet\"".to_owned()
            )
        );
    }

    const POLICY: HistoryPolicy = HistoryPolicy {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    fn publish(history: &MemoryHistory, channel: &str, n: u64) -> Position {
        let mut delivered = None;
        let position = history.append(
            channel,
            POLICY,
            |offset| format!("m{n}@{offset}"),
            |offset, _, frame| delivered = Some((offset, frame.to_string())),
        );
        assert_eq!(
            delivered,
            Some((position.offset, format!("m{n}@{}", position.offset)))
        );
        position
    }

    #[tokio::test(start_paused = true)]
    async fn memory_history_keeps_the_newest_and_expires() {
        let history = MemoryHistory::default();
        let empty = history.read("c", POLICY, &query(None, 10));
        assert_eq!((empty.top.offset, empty.first), (0, 1));
        let epoch = empty.top.epoch.clone();
        for n in 1..=5 {
            let position = publish(&history, "c", n);
            assert_eq!(position, Position::new(n, &epoch));
        }
        let page = history.read("c", POLICY, &query(Some((1, &epoch)), 10));
        assert_eq!(page.first, 3);
        assert!(!page.continues(&Position::new(1, &epoch)));
        let offsets: Vec<u64> = page.messages.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!(&*page.messages[0].1, "m3@3");
        let page = history.read("c", POLICY, &query(Some((3, &epoch)), 10));
        assert!(page.continues(&Position::new(3, &epoch)));
        assert_eq!(page.messages.len(), 2);

        // Idle past the TTL: the messages go, the position stays.
        tokio::time::advance(Duration::from_secs(61)).await;
        let page = history.read("c", POLICY, &query(Some((5, &epoch)), 10));
        assert!(page.messages.is_empty() && page.continues(&Position::new(5, &epoch)));
        assert!(!page.continues(&Position::new(4, &epoch)));
        // Idle past the position's TTL: a new epoch.
        tokio::time::advance(HISTORY_META_TTL).await;
        let page = history.read("c", POLICY, &query(None, 10));
        assert_ne!(page.top.epoch, epoch);
        assert_eq!(page.top.offset, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_forgets_streams_nobody_published_to() {
        let history = MemoryHistory::default();
        history.read("ghost", POLICY, &query(None, 10));
        publish(&history, "live", 1);
        assert_eq!(history.len(), 2);
        tokio::time::advance(POLICY.ttl).await;
        for n in 2..=SWEEP_EVERY {
            publish(&history, "live", n);
        }
        assert_eq!(history.len(), 1, "a read-only stream goes after its TTL");
        let page = history.read("live", POLICY, &query(None, 10));
        assert_eq!(page.top.offset, SWEEP_EVERY, "a published one stays");
    }

    #[test]
    fn tracker_finds_gaps_duplicates_and_new_epochs() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.check("c", 7, "e"), Relay::Next, "nothing known yet");
        tracker.seed("c", &Position::new(5, "e"));
        tracker.seed("c", &Position::new(4, "e"));
        assert_eq!(tracker.position("c"), Some(Position::new(4, "e")));
        assert_eq!(tracker.check("c", 5, "e"), Relay::Next);
        assert_eq!(tracker.check("c", 4, "e"), Relay::Duplicate);
        assert_eq!(tracker.check("c", 7, "e"), Relay::Gap { after: 4 });
        assert_eq!(tracker.check("c", 1, "f"), Relay::NewEpoch);
        assert_eq!(tracker.accept("c", 7, "e"), Err(Relay::Gap { after: 4 }));
        assert_eq!(tracker.accept("c", 5, "e").as_deref(), Ok("e"));
        assert_eq!(
            tracker.check("c", 5, "e"),
            Relay::Duplicate,
            "accepted is relayed"
        );
        tracker.seed("c", &Position::new(2, "e"));
        assert_eq!(
            tracker.position("c"),
            Some(Position::new(5, "e")),
            "a relayed position is never seeded back"
        );
        tracker.forget("c");
        assert_eq!(tracker.position("c"), None);
    }
}
