//! Occupancy: how many connections each user holds and how many
//! subscriptions each user has to each channel, on this node, for the
//! cluster-wide counts in Redis; and the channel listing's types.
//!
//! Sessions report every connect, disconnect, subscribe and unsubscribe
//! here; the call only updates counters under a lock and never waits on
//! Redis, so it costs the session nothing. The node remembers which counts
//! changed, and `occupancy::redis` writes their new values to Redis in
//! batches, where the cluster-wide sums live and where the transitions (a
//! user's first connection, a channel's last subscriber) become webhook
//! events. A single node keeps nothing here (it has no webhooks) and lists
//! its channels from the hub's subscriber lists (`Hub::list`), so an idle
//! connection costs it no entry.
//!
//! The node sends absolute values, not increments, so a write that timed
//! out can be sent again without counting twice.

pub mod redis;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::Notify;

/// The most channels one listing page returns.
pub const MAX_LIST_LIMIT: usize = 1000;
/// A listing page's size when the caller names none.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// One of this node's counts, as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Count {
    /// A user's open connections on this node.
    Online(Arc<str>),
    /// A user's subscriptions to a channel on this node. `presence` says
    /// the channel's namespace lists members (and so has member events).
    Subscribed {
        channel: Arc<str>,
        user: Arc<str>,
        presence: bool,
    },
}

/// A channel's counts, as the listing shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelCounts {
    pub channel: String,
    /// Subscriptions (connections subscribed), over the cluster.
    pub subscribers: u64,
    /// Distinct users among them.
    pub users: u64,
}

/// One page of the channel listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelPage {
    pub channels: Vec<ChannelCounts>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What a listing asks for: channels starting with `prefix`, after
/// `cursor` (the last channel of the previous page), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    pub cursor: Option<String>,
    pub limit: usize,
}

impl ListQuery {
    /// Where the page starts: after the cursor, or at the prefix when the
    /// cursor is missing or sorts before it.
    pub fn start(&self) -> Bound<&str> {
        match &self.cursor {
            Some(cursor) if cursor.as_str() >= self.prefix.as_str() => {
                Bound::Excluded(cursor.as_str())
            }
            _ => Bound::Included(self.prefix.as_str()),
        }
    }

    /// Builds the page from up to `limit + 1` channels read in order: the
    /// extra one only says that another page follows.
    pub fn page(&self, mut channels: Vec<ChannelCounts>) -> ChannelPage {
        let next_cursor = if channels.len() > self.limit {
            channels.truncate(self.limit);
            channels.last().map(|c| c.channel.clone())
        } else {
            None
        };
        ChannelPage {
            channels,
            next_cursor,
        }
    }
}

#[derive(Debug, Default)]
struct ChannelCount {
    users: HashMap<Arc<str>, u32>,
    /// The namespace lists members (fixed by the configuration).
    presence: bool,
}

#[derive(Debug, Default)]
struct Local {
    online: HashMap<Arc<str>, u32>,
    channels: HashMap<Arc<str>, ChannelCount>,
    /// Counts changed since Redis last took them (cluster mode only).
    dirty: HashSet<Count>,
}

impl Local {
    fn value(&self, count: &Count) -> u32 {
        match count {
            Count::Online(user) => self.online.get(user).copied().unwrap_or(0),
            Count::Subscribed { channel, user, .. } => self
                .channels
                .get(channel)
                .and_then(|c| c.users.get(user))
                .copied()
                .unwrap_or(0),
        }
    }
}

/// This node's occupancy counters.
#[derive(Debug)]
pub struct Occupancy {
    local: Mutex<Local>,
    /// Cluster mode: count, and remember changes for Redis.
    track: bool,
    changed: Notify,
}

/// Adds `delta` to a counter kept only while positive.
fn bump(map: &mut HashMap<Arc<str>, u32>, key: &Arc<str>, delta: i32) -> u32 {
    let value = map
        .get(key)
        .copied()
        .unwrap_or(0)
        .saturating_add_signed(delta);
    if value == 0 {
        map.remove(key);
    } else if let Some(slot) = map.get_mut(key) {
        *slot = value;
    } else {
        map.insert(Arc::clone(key), value);
    }
    value
}

impl Occupancy {
    /// `cluster`: counts are kept, for `occupancy::redis` to write; else
    /// every report is a no-op.
    pub fn new(cluster: bool) -> Occupancy {
        Occupancy {
            local: Mutex::default(),
            track: cluster,
            changed: Notify::new(),
        }
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touched(&self, local: &mut Local, count: Count) {
        if self.track {
            local.dirty.insert(count);
            self.changed.notify_one();
        }
    }

    /// A connection of `user` opened.
    pub fn connected(&self, user: &Arc<str>) {
        self.online(user, 1);
    }

    /// A connection of `user` closed.
    pub fn disconnected(&self, user: &Arc<str>) {
        self.online(user, -1);
    }

    fn online(&self, user: &Arc<str>, delta: i32) {
        if !self.track {
            return;
        }
        let mut local = self.local();
        bump(&mut local.online, user, delta);
        self.touched(&mut local, Count::Online(Arc::clone(user)));
    }

    /// A connection of `user` subscribed to `channel`.
    pub fn subscribed(&self, channel: &str, user: &Arc<str>, presence: bool) {
        self.subscription(channel, user, presence, 1);
    }

    /// A connection of `user` left `channel` (unsubscribed or closed).
    pub fn unsubscribed(&self, channel: &str, user: &Arc<str>, presence: bool) {
        self.subscription(channel, user, presence, -1);
    }

    fn subscription(&self, channel: &str, user: &Arc<str>, presence: bool, delta: i32) {
        if !self.track {
            return;
        }
        let mut local = self.local();
        let key = match local.channels.get_key_value(channel) {
            Some((key, _)) => Arc::clone(key),
            None if delta < 0 => return,
            None => Arc::from(channel),
        };
        let counts = local.channels.entry(Arc::clone(&key)).or_default();
        counts.presence = presence;
        bump(&mut counts.users, user, delta);
        if counts.users.is_empty() {
            local.channels.remove(channel);
        }
        self.touched(
            &mut local,
            Count::Subscribed {
                channel: key,
                user: Arc::clone(user),
                presence,
            },
        );
    }

    /// The counts changed since the last call, with their values now.
    pub fn take_changes(&self) -> Vec<(Count, u32)> {
        let mut local = self.local();
        let dirty = std::mem::take(&mut local.dirty);
        dirty
            .into_iter()
            .map(|count| {
                let value = local.value(&count);
                (count, value)
            })
            .collect()
    }

    /// Marks counts as changed again, after a write to Redis failed; their
    /// values are read afresh when next taken.
    pub fn retry(&self, counts: impl IntoIterator<Item = Count>) {
        self.local().dirty.extend(counts);
    }

    /// Marks every count as changed: Redis lost them, or this node's share
    /// was removed while it was cut off.
    pub fn resend_all(&self) {
        let mut local = self.local();
        let online: Vec<Count> = local
            .online
            .keys()
            .map(|u| Count::Online(Arc::clone(u)))
            .collect();
        local.dirty.extend(online);
        let subscribed: Vec<Count> = local
            .channels
            .iter()
            .flat_map(|(channel, counts)| {
                counts.users.keys().map(move |user| Count::Subscribed {
                    channel: Arc::clone(channel),
                    user: Arc::clone(user),
                    presence: counts.presence,
                })
            })
            .collect();
        local.dirty.extend(subscribed);
        self.changed.notify_one();
    }

    /// Waits until some count changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Wakes the writer (for a final flush at shutdown).
    pub fn wake(&self) {
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut changes: Vec<(Count, u32)>) -> Vec<String> {
        let mut out: Vec<String> = changes
            .drain(..)
            .map(|(count, value)| match count {
                Count::Online(user) => format!("online {user} {value}"),
                Count::Subscribed {
                    channel,
                    user,
                    presence,
                } => format!("sub {channel} {user} {presence} {value}"),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn changes_carry_the_latest_absolute_values() {
        let occupancy = Occupancy::new(true);
        let alice: Arc<str> = Arc::from("alice");
        occupancy.connected(&alice);
        occupancy.connected(&alice);
        occupancy.subscribed("chat:a", &alice, true);
        occupancy.subscribed("chat:a", &alice, true);
        occupancy.unsubscribed("chat:a", &alice, true);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["online alice 2", "sub chat:a alice true 1"]
        );
        assert!(occupancy.take_changes().is_empty());
        occupancy.unsubscribed("chat:a", &alice, true);
        occupancy.disconnected(&alice);
        occupancy.disconnected(&alice);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["online alice 0", "sub chat:a alice true 0"]
        );
        // Unknown channels are not counted below zero.
        occupancy.unsubscribed("chat:none", &alice, false);
        assert!(occupancy.take_changes().is_empty());
    }

    #[test]
    fn a_failed_write_is_retried_and_everything_can_be_resent() {
        let occupancy = Occupancy::new(true);
        let bob: Arc<str> = Arc::from("bob");
        occupancy.connected(&bob);
        occupancy.subscribed("feed", &bob, false);
        let taken = occupancy.take_changes();
        occupancy.retry(taken.into_iter().map(|(count, _)| count));
        occupancy.connected(&bob);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["online bob 2", "sub feed bob false 1"]
        );
        occupancy.resend_all();
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["online bob 2", "sub feed bob false 1"]
        );
    }

    #[test]
    fn a_single_node_keeps_nothing() {
        let occupancy = Occupancy::new(false);
        let carol: Arc<str> = Arc::from("carol");
        occupancy.connected(&carol);
        occupancy.subscribed("chat:a", &carol, true);
        occupancy.resend_all();
        assert!(occupancy.take_changes().is_empty());
        assert!(occupancy.local().online.is_empty());
        assert!(occupancy.local().channels.is_empty());
    }

    #[test]
    fn pages_start_after_the_cursor_within_the_prefix() {
        let query = |prefix: &str, cursor: Option<&str>| ListQuery {
            prefix: prefix.into(),
            cursor: cursor.map(str::to_owned),
            limit: 2,
        };
        assert_eq!(query("chat:", None).start(), Bound::Included("chat:"));
        assert_eq!(
            query("chat:", Some("chat:b")).start(),
            Bound::Excluded("chat:b")
        );
        assert_eq!(query("chat:", Some("a")).start(), Bound::Included("chat:"));
        let counts = |name: &str| ChannelCounts {
            channel: name.into(),
            subscribers: 1,
            users: 1,
        };
        let page = query("", None).page(vec![counts("a"), counts("b"), counts("c")]);
        assert_eq!(page.next_cursor.as_deref(), Some("b"));
        assert_eq!(page.channels.len(), 2);
        let last = query("", None).page(vec![counts("a"), counts("b")]);
        assert_eq!(last.next_cursor, None);
    }
}
