//! Occupancy: how many connections each user holds and how many
//! subscriptions each user has to each channel, on this node, for the
//! cluster-wide counts in Redis; and the channel listing's types.
//!
//! Sessions report every connect, disconnect, subscribe and unsubscribe
//! here; the call only marks the count as changed under a lock and never
//! waits on Redis, so it costs the session nothing. The counts are not
//! kept here: when `occupancy::redis` writes the changed ones (in batches,
//! to where the cluster-wide sums live and where the transitions, a user's
//! first connection or a channel's last subscriber, become webhook events)
//! it reads their values from the node's own records: a user's running
//! sessions from the admission limits' per-user map ([`UserSessions`]), a
//! user's subscriptions to a channel by one walk of the changed channel's
//! hub entries ([`ChannelSubscribers`]). So neither a connection nor a
//! subscription costs an entry here. A report comes after the change is in
//! those records, so the write that takes its mark reads the change. A
//! single node keeps nothing here (it has no webhooks) and lists its
//! channels from the hub's subscriber lists (`Hub::list`).
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

/// Where a cluster node reads its users' connection counts: the per-user
/// map admission keeps anyway (`limits::ConnectionLimits`, implemented
/// there: `limits` sits above this module), which also counts each user's
/// running sessions, so occupancy keeps no second map of users.
pub trait UserSessions: Send + Sync {
    /// Adds `delta` to the sessions `user` runs on this node.
    fn add_running(&self, user: &Arc<str>, delta: i32);
    /// The sessions `user` runs on this node.
    fn running(&self, user: &str) -> u32;
    /// Every user running a session on this node.
    fn running_users(&self) -> Vec<Arc<str>>;
}

/// Where a cluster node reads its subscription counts: the hub's
/// subscriber entries (implemented by `Hub`, which imports this module),
/// so occupancy keeps no map of channels.
pub trait ChannelSubscribers: Send + Sync {
    /// Calls `visit` with the user of each local subscription to `channel`.
    fn each_subscriber(&self, channel: &str, visit: &mut dyn FnMut(&Arc<str>));
    /// Calls `visit` with each local subscription's channel and user.
    fn each_subscription(&self, visit: &mut dyn FnMut(&str, &Arc<str>));
}

/// What a cluster node's counts are read from when they are written.
struct Sources {
    users: Arc<dyn UserSessions>,
    subscribers: Arc<dyn ChannelSubscribers>,
}

/// This node's occupancy: which counts changed since Redis took them. The
/// counts themselves are read from the node's own records when written.
pub struct Occupancy {
    /// Cluster mode: where the counts are; `None` on a single node, where
    /// every report is a no-op.
    sources: Option<Sources>,
    /// Counts changed since Redis last took them.
    dirty: Mutex<HashSet<Count>>,
    changed: Notify,
}

impl std::fmt::Debug for Occupancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Occupancy")
            .field("cluster", &self.sources.is_some())
            .finish_non_exhaustive()
    }
}

impl Occupancy {
    /// A single node's: it keeps and reports nothing.
    pub fn single() -> Occupancy {
        Occupancy {
            sources: None,
            dirty: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// A cluster node's: changed counts are remembered for
    /// `occupancy::redis` to write, their values read from `users` (the
    /// admission limits' per-user map) and `subscribers` (the hub).
    pub fn cluster(
        users: Arc<dyn UserSessions>,
        subscribers: Arc<dyn ChannelSubscribers>,
    ) -> Occupancy {
        Occupancy {
            sources: Some(Sources { users, subscribers }),
            dirty: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn dirty(&self) -> MutexGuard<'_, HashSet<Count>> {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a count as changed. Called after the change is in the record
    /// the count is read from, so a write that takes the mark reads it.
    fn touched(&self, count: Count) {
        self.dirty().insert(count);
        self.changed.notify_one();
    }

    /// A connection of `user` opened (its session is in the hub).
    pub fn connected(&self, user: &Arc<str>) {
        self.online(user, 1);
    }

    /// A connection of `user` closed (its session left the hub).
    pub fn disconnected(&self, user: &Arc<str>) {
        self.online(user, -1);
    }

    fn online(&self, user: &Arc<str>, delta: i32) {
        let Some(sources) = &self.sources else {
            return;
        };
        sources.users.add_running(user, delta);
        self.touched(Count::Online(Arc::clone(user)));
    }

    /// A connection of `user` subscribed to `channel` (it is in the hub's
    /// subscribers).
    pub fn subscribed(&self, channel: &str, user: &Arc<str>, presence: bool) {
        self.subscription(channel, user, presence);
    }

    /// A connection of `user` left `channel` (unsubscribed, closed, or a
    /// subscribe undone), after its hub entry was removed.
    pub fn unsubscribed(&self, channel: &str, user: &Arc<str>, presence: bool) {
        self.subscription(channel, user, presence);
    }

    fn subscription(&self, channel: &str, user: &Arc<str>, presence: bool) {
        if self.sources.is_none() {
            return;
        }
        self.touched(Count::Subscribed {
            channel: Arc::from(channel),
            user: Arc::clone(user),
            presence,
        });
    }

    /// The counts changed since the last call, with their values now: a
    /// user's running sessions from the limits' map, a user's subscriptions
    /// to a channel by one walk of each changed channel's hub entries.
    pub fn take_changes(&self) -> Vec<(Count, u32)> {
        let Some(sources) = &self.sources else {
            return Vec::new();
        };
        let dirty = std::mem::take(&mut *self.dirty());
        let mut changes = Vec::with_capacity(dirty.len());
        let mut channels: HashMap<Arc<str>, Vec<Count>> = HashMap::new();
        for count in dirty {
            match &count {
                Count::Online(user) => {
                    let value = sources.users.running(user);
                    changes.push((count, value));
                }
                Count::Subscribed { channel, .. } => {
                    channels.entry(Arc::clone(channel)).or_default().push(count)
                }
            }
        }
        for (channel, counts) in channels {
            let mut users: HashMap<Arc<str>, u32> = counts
                .iter()
                .filter_map(|count| match count {
                    Count::Subscribed { user, .. } => Some((Arc::clone(user), 0)),
                    Count::Online(_) => None,
                })
                .collect();
            sources.subscribers.each_subscriber(&channel, &mut |user| {
                if let Some(value) = users.get_mut(user) {
                    *value += 1;
                }
            });
            for count in counts {
                let value = match &count {
                    Count::Subscribed { user, .. } => users.get(user).copied().unwrap_or(0),
                    Count::Online(_) => 0,
                };
                changes.push((count, value));
            }
        }
        changes
    }

    /// Marks counts as changed again, after a write to Redis failed; their
    /// values are read afresh when next taken.
    pub fn retry(&self, counts: impl IntoIterator<Item = Count>) {
        self.dirty().extend(counts);
    }

    /// Marks every count as changed: Redis lost them, or this node's share
    /// was removed while it was cut off. `presence` tells whether a
    /// channel's namespace lists members (the configuration's answer).
    pub fn resend_all(&self, presence: impl Fn(&str) -> bool) {
        let Some(sources) = &self.sources else {
            return;
        };
        let mut all: Vec<Count> = sources
            .users
            .running_users()
            .into_iter()
            .map(Count::Online)
            .collect();
        let mut last: Option<(Arc<str>, bool)> = None;
        sources.subscribers.each_subscription(&mut |channel, user| {
            let (channel, presence) = match &last {
                Some((name, presence)) if &**name == channel => (Arc::clone(name), *presence),
                _ => {
                    let entry = (Arc::<str>::from(channel), presence(channel));
                    last = Some(entry.clone());
                    entry
                }
            };
            all.push(Count::Subscribed {
                channel,
                user: Arc::clone(user),
                presence,
            });
        });
        self.dirty().extend(all);
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

    /// A node's records as occupancy reads them: the limits' running
    /// sessions per user and the hub's subscriptions.
    #[derive(Default)]
    struct Records {
        running: Mutex<HashMap<Arc<str>, u32>>,
        subscriptions: Mutex<Vec<(String, Arc<str>)>>,
    }

    impl UserSessions for Records {
        fn add_running(&self, user: &Arc<str>, delta: i32) {
            let mut running = self.running.lock().unwrap();
            let count = running.entry(Arc::clone(user)).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                running.remove(user);
            }
        }
        fn running(&self, user: &str) -> u32 {
            self.running.lock().unwrap().get(user).copied().unwrap_or(0)
        }
        fn running_users(&self) -> Vec<Arc<str>> {
            self.running.lock().unwrap().keys().cloned().collect()
        }
    }

    impl ChannelSubscribers for Records {
        fn each_subscriber(&self, channel: &str, visit: &mut dyn FnMut(&Arc<str>)) {
            for (c, user) in self.subscriptions.lock().unwrap().iter() {
                if c == channel {
                    visit(user);
                }
            }
        }
        fn each_subscription(&self, visit: &mut dyn FnMut(&str, &Arc<str>)) {
            for (channel, user) in self.subscriptions.lock().unwrap().iter() {
                visit(channel, user);
            }
        }
    }

    impl Records {
        fn subscribe(&self, channel: &str, user: &Arc<str>) {
            let entry = (channel.to_owned(), Arc::clone(user));
            self.subscriptions.lock().unwrap().push(entry);
        }
        fn unsubscribe(&self, channel: &str, user: &Arc<str>) {
            let mut subscriptions = self.subscriptions.lock().unwrap();
            if let Some(i) = subscriptions
                .iter()
                .position(|(c, u)| c == channel && u == user)
            {
                subscriptions.swap_remove(i);
            }
        }
    }

    fn cluster() -> (Occupancy, Arc<Records>) {
        let records = Arc::new(Records::default());
        let occupancy = Occupancy::cluster(
            Arc::clone(&records) as Arc<dyn UserSessions>,
            Arc::clone(&records) as Arc<dyn ChannelSubscribers>,
        );
        (occupancy, records)
    }

    #[test]
    fn changes_carry_the_latest_absolute_values() {
        let (occupancy, hub) = cluster();
        let alice: Arc<str> = Arc::from("alice");
        occupancy.connected(&alice);
        occupancy.connected(&alice);
        hub.subscribe("chat:a", &alice);
        occupancy.subscribed("chat:a", &alice, true);
        hub.subscribe("chat:a", &alice);
        occupancy.subscribed("chat:a", &alice, true);
        hub.unsubscribe("chat:a", &alice);
        occupancy.unsubscribed("chat:a", &alice, true);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["online alice 2", "sub chat:a alice true 1"]
        );
        assert!(occupancy.take_changes().is_empty());
        hub.unsubscribe("chat:a", &alice);
        occupancy.unsubscribed("chat:a", &alice, true);
        occupancy.disconnected(&alice);
        occupancy.disconnected(&alice);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["online alice 0", "sub chat:a alice true 0"]
        );
        assert!(hub.running_users().is_empty(), "no zero counts are kept");
        // A subscribe undone before it was counted reads as what the hub
        // holds: nothing (the script skips an unchanged count).
        occupancy.unsubscribed("chat:none", &alice, false);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["sub chat:none alice false 0"]
        );
    }

    #[test]
    fn a_changed_channel_is_counted_per_user_in_one_walk() {
        let (occupancy, hub) = cluster();
        let (alice, bob): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("bob"));
        hub.subscribe("chat:a", &bob);
        hub.subscribe("chat:a", &alice);
        hub.subscribe("chat:b", &alice);
        hub.subscribe("chat:a", &alice);
        occupancy.subscribed("chat:a", &alice, true);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["sub chat:a alice true 2"],
            "only the changed count is read"
        );
    }

    #[test]
    fn a_failed_write_is_retried_and_everything_can_be_resent() {
        let (occupancy, hub) = cluster();
        let bob: Arc<str> = Arc::from("bob");
        occupancy.connected(&bob);
        hub.subscribe("feed", &bob);
        occupancy.subscribed("feed", &bob, false);
        let taken = occupancy.take_changes();
        occupancy.retry(taken.into_iter().map(|(count, _)| count));
        occupancy.connected(&bob);
        assert_eq!(
            sorted(occupancy.take_changes()),
            ["online bob 2", "sub feed bob false 1"]
        );
        hub.subscribe("chat:x", &bob);
        hub.subscribe("chat:x", &bob);
        occupancy.resend_all(|channel| channel.starts_with("chat:"));
        assert_eq!(
            sorted(occupancy.take_changes()),
            [
                "online bob 2",
                "sub chat:x bob true 2",
                "sub feed bob false 1"
            ]
        );
    }

    #[test]
    fn a_single_node_keeps_nothing() {
        let occupancy = Occupancy::single();
        let carol: Arc<str> = Arc::from("carol");
        occupancy.connected(&carol);
        occupancy.subscribed("chat:a", &carol, true);
        occupancy.resend_all(|_| true);
        assert!(occupancy.take_changes().is_empty());
        assert!(occupancy.dirty().is_empty());
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
