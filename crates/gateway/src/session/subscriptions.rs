//! The channels a session holds: one small entry per subscription, with
//! what its subscribe's reply covered while that still matters.
//!
//! An entry ([`Subscription`], 40 bytes) shares the hub's name of its
//! channel (`hub::Joined`) instead of holding a copy, and carries the
//! subscribe's [`Resume`] until the first frame of the channel beyond the
//! reply's position (on a quiet channel, for the whole connection: hence
//! its compact epoch).
//!
//! The first entry is held inline, in the session's state: most sessions
//! hold one channel, and it then costs no heap block (48 bytes under
//! jemalloc). The others live in a boxed [`Rest`], its slice exactly as
//! long as the channels it holds: subscribes and unsubscribes are rare (and
//! `session.max_channels` bounds the list), so each resizes it rather than
//! the session keeping spare slots, or a capacity, in every connection.
//! Removing an entry moves the last one into its place (the first takes
//! the last of the rest), so the entries keep the order of one list with
//! `swap_remove`.
//!
//! [`Subscriptions::admit`] runs for every queued frame: the first entry's
//! resume is looked at directly and the rest keep a count of the entries
//! still holding one, so it returns at once when none does, and a session
//! scans its list per frame only right after a subscribe.
//!
//! Pure: no I/O, so the rules are tested without a socket.

use std::sync::Arc;

use super::recovery::Resume;
use crate::hub::Delivery;

/// One channel the session holds.
#[derive(Debug)]
pub struct Subscription {
    /// The hub's name of the channel, shared.
    channel: Arc<str>,
    /// What the subscribe's reply covered, until the first frame beyond it
    /// (a channel with history); `None` otherwise.
    resume: Option<Resume>,
}

/// The session's subscriptions, in no particular order. 48 bytes in the
/// session's state: the first entry (40, the `Arc`'s niche holding the
/// `None`) and a pointer to the rest.
///
/// `first` is `None` only when the session holds nothing, and `rest` is
/// `None` unless it holds two entries or more.
#[derive(Debug, Default)]
pub struct Subscriptions {
    first: Option<Subscription>,
    rest: Option<Box<Rest>>,
}

/// The entries after the first (never empty), and how many of them hold a
/// resume: zero on almost every frame, which [`Subscriptions::admit`] lets
/// through without a scan. 24 bytes (a 32-byte block under jemalloc).
#[derive(Debug, Default)]
struct Rest {
    entries: Box<[Subscription]>,
    resuming: u32,
}

impl Rest {
    fn push(&mut self, entry: Subscription) {
        self.resuming += u32::from(entry.resume.is_some());
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        entries.reserve_exact(1);
        entries.push(entry);
        self.entries = entries.into_boxed_slice();
    }

    /// Takes entry `i` out, the last one moving into its place; the slice
    /// shrinks by the slot.
    fn swap_remove(&mut self, i: usize) -> Subscription {
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        let entry = entries.swap_remove(i);
        self.entries = entries.into_boxed_slice();
        self.resuming -= u32::from(entry.resume.is_some());
        entry
    }
}

/// Gives `entry` the resume `resume`, keeping the rest's count (`None` for
/// the first entry, which keeps none) true.
fn set_resume(entry: &mut Subscription, resuming: Option<&mut u32>, resume: Option<Resume>) {
    if let Some(resuming) = resuming {
        *resuming -= u32::from(entry.resume.is_some());
        *resuming += u32::from(resume.is_some());
    }
    entry.resume = resume;
}

impl Subscriptions {
    /// Channels held.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.as_ref().map_or(0, |r| r.entries.len())
    }

    /// Whether the session holds `channel`.
    pub fn contains(&self, channel: &str) -> bool {
        self.is_first(channel)
            || self
                .rest
                .as_ref()
                .is_some_and(|r| r.entries.iter().any(|s| *s.channel == *channel))
    }

    fn is_first(&self, channel: &str) -> bool {
        self.first.as_ref().is_some_and(|s| *s.channel == *channel)
    }

    /// The entry of `channel`, with the count of resumes it belongs to
    /// (`None` for the first entry).
    fn entry_mut(&mut self, channel: &str) -> Option<(&mut Subscription, Option<&mut u32>)> {
        if self.is_first(channel) {
            return self.first.as_mut().map(|s| (s, None));
        }
        let Rest { entries, resuming } = self.rest.as_deref_mut()?;
        let entry = entries.iter_mut().find(|s| *s.channel == *channel)?;
        Some((entry, Some(resuming)))
    }

    /// Whether an entry holds a resume: the first's, then the rest's count.
    fn resuming(&self) -> bool {
        self.first.as_ref().is_some_and(|s| s.resume.is_some())
            || self.rest.as_ref().is_some_and(|r| r.resuming > 0)
    }

    /// Adds a subscription, with what its reply covered; a channel already
    /// held keeps its entry and takes the new `resume` in place of the old.
    /// The first is held inline; the rest grow by one slot: five
    /// subscriptions hold four.
    pub fn add(&mut self, channel: Arc<str>, resume: Option<Resume>) {
        if let Some((entry, resuming)) = self.entry_mut(&channel) {
            set_resume(entry, resuming, resume);
            return;
        }
        let entry = Subscription { channel, resume };
        if self.first.is_none() {
            self.first = Some(entry);
        } else {
            self.rest.get_or_insert_with(Box::default).push(entry);
        }
    }

    /// Drops the channel's entry (and its resume); its name, if it was
    /// held. The last entry moves into its place; the rest shrink by the
    /// slot (and are given back with their last entry).
    pub fn remove(&mut self, channel: &str) -> Option<Arc<str>> {
        let removed = if self.is_first(channel) {
            let last = self.pop_rest();
            std::mem::replace(&mut self.first, last)?
        } else {
            let rest = self.rest.as_deref_mut()?;
            let i = rest.entries.iter().position(|s| *s.channel == *channel)?;
            let removed = rest.swap_remove(i);
            if rest.entries.is_empty() {
                self.rest = None;
            }
            removed
        };
        Some(removed.channel)
    }

    /// The last entry of the rest, taken out.
    fn pop_rest(&mut self) -> Option<Subscription> {
        let rest = self.rest.as_deref_mut()?;
        let last = rest.entries.len().checked_sub(1)?;
        let entry = rest.swap_remove(last);
        if rest.entries.is_empty() {
            self.rest = None;
        }
        Some(entry)
    }

    /// Every channel held, leaving none (the session ends).
    pub fn take_all(&mut self) -> impl Iterator<Item = Arc<str>> + use<> {
        let rest = self
            .rest
            .take()
            .map(|r| r.entries.into_vec())
            .unwrap_or_default();
        self.first.take().into_iter().chain(rest).map(|s| s.channel)
    }

    /// Whether a queued delivery goes out: false for what the reply of a
    /// subscribe (or its replay) already covered. Costs two comparisons
    /// unless an entry holds a resume; a resume lives until the first frame
    /// of its channel beyond the position it recorded.
    pub fn admit(&mut self, delivery: &Delivery) -> bool {
        if !self.resuming() {
            return true;
        }
        let Some((offset, epoch)) = &delivery.position else {
            return true;
        };
        let Some((entry, resuming)) = self.entry_mut(&delivery.channel) else {
            return true;
        };
        match &entry.resume {
            None => true,
            Some(resume) if resume.covers(*offset, epoch) => false,
            Some(_) => {
                set_resume(entry, resuming, None);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::*;

    fn delivery(channel: &str, position: Option<(u64, &str)>) -> Delivery {
        Delivery {
            channel: channel.into(),
            position: position.map(|(o, e)| (o, Arc::from(e))),
            frame: Utf8Bytes::from_static("m"),
            encoded: Default::default(),
        }
    }

    impl Subscriptions {
        /// Entries holding a resume, counted one by one, after checking
        /// the layout: the rest's count is true, the rest is never empty,
        /// and the first is empty only when nothing is held.
        fn pending(&self) -> usize {
            if let Some(rest) = &self.rest {
                assert!(self.first.is_some(), "the rest without a first");
                assert!(!rest.entries.is_empty(), "an empty rest is kept");
                let count = rest.entries.iter().filter(|s| s.resume.is_some()).count();
                assert_eq!(rest.resuming as usize, count, "the rest's count");
            }
            self.entries().filter(|s| s.resume.is_some()).count()
        }

        fn entries(&self) -> impl Iterator<Item = &Subscription> {
            let rest = self.rest.as_ref().map_or(&[][..], |r| &r.entries[..]);
            self.first.iter().chain(rest)
        }

        fn channels(&self) -> Vec<String> {
            self.entries().map(|s| s.channel.to_string()).collect()
        }
    }

    /// A subscribe whose reply was at offset 10 of epoch `e`.
    fn at_ten() -> Option<Resume> {
        Some(Resume::new(10, "e"))
    }

    #[test]
    fn an_entry_stays_small() {
        // One per subscription: the shared name and a pending resume.
        assert_eq!(std::mem::size_of::<Subscription>(), 40);
        // In every session's state: the first entry and the rest's pointer
        // (the session box has room for 48 bytes under jemalloc's 640).
        assert_eq!(std::mem::size_of::<Subscriptions>(), 48);
        assert_eq!(std::mem::size_of::<Option<Subscription>>(), 40);
        // The rest's block: its slice and its count of resumes.
        assert_eq!(std::mem::size_of::<Rest>(), 24);
    }

    #[test]
    fn live_frames_the_reply_covered_are_dropped_once() {
        let mut held = Subscriptions::default();
        held.add(Arc::from("chat:a"), at_ten());
        held.add(Arc::from("chat:b"), None);
        assert!(held.admit(&delivery("chat:b", Some((3, "e")))));
        assert!(held.admit(&delivery("chat:c", Some((3, "e")))));
        assert!(held.admit(&delivery("chat:a", None)), "no position");
        assert!(!held.admit(&delivery("chat:a", Some((9, "e")))));
        assert!(!held.admit(&delivery("chat:a", Some((10, "e")))));
        assert_eq!(held.pending(), 1);
        assert!(held.admit(&delivery("chat:a", Some((11, "e")))));
        assert_eq!(held.pending(), 0, "the first newer frame ends the resume");
        assert!(held.admit(&delivery("chat:a", Some((10, "e")))));
        assert!(held.admit(&delivery("chat:a", Some((12, "e")))));
        assert!(held.contains("chat:a"), "the subscription stays");
    }

    #[test]
    fn a_new_epoch_ends_the_resume() {
        let mut held = Subscriptions::default();
        held.add(Arc::from("chat:a"), at_ten());
        assert!(held.admit(&delivery("chat:a", Some((1, "f")))));
        assert_eq!(held.pending(), 0);
        assert!(held.admit(&delivery("chat:a", Some((2, "e")))));
    }

    #[test]
    fn a_channel_keeps_one_entry_until_removed() {
        let mut held = Subscriptions::default();
        held.add(Arc::from("chat:a"), at_ten());
        held.add(Arc::from("chat:a"), Some(Resume::new(12, "e")));
        held.add(Arc::from("chat:b"), at_ten());
        assert_eq!((held.len(), held.pending()), (2, 2));
        assert!(
            !held.admit(&delivery("chat:a", Some((12, "e")))),
            "the newer resume replaced the older"
        );
        held.add(Arc::from("chat:a"), None);
        assert_eq!((held.len(), held.pending()), (2, 1));
        assert!(held.admit(&delivery("chat:a", Some((1, "e")))));
        assert_eq!(held.remove("chat:b").as_deref(), Some("chat:b"));
        assert_eq!(held.remove("chat:b"), None, "removing twice is harmless");
        assert_eq!((held.len(), held.pending()), (1, 0));
        assert!(held.admit(&delivery("chat:b", Some((1, "e")))));
    }

    #[test]
    fn an_unsubscribe_forgets_the_resume() {
        let mut held = Subscriptions::default();
        held.add(Arc::from("chat:a"), at_ten());
        held.remove("chat:a");
        assert_eq!(held.pending(), 0);
        held.add(Arc::from("chat:a"), None);
        assert!(
            held.admit(&delivery("chat:a", Some((3, "e")))),
            "a subscribe again without history drops nothing"
        );
    }

    #[test]
    fn the_list_holds_a_slot_per_channel() {
        let mut held = Subscriptions::default();
        for i in 0..5 {
            held.add(Arc::from(format!("chat:{i}")), None);
        }
        // The first inline, then a boxed slice: its length is its allocation.
        assert_eq!(held.len(), 5, "five subscriptions, five slots");
        assert_eq!(held.rest.as_ref().map(|r| r.entries.len()), Some(4));
        held.add(Arc::from("chat:0"), None);
        assert_eq!(held.len(), 5, "a channel held once");
        for i in 0..5 {
            assert!(held.contains(&format!("chat:{i}")));
            held.remove(&format!("chat:{i}"));
            assert_eq!(held.len(), 4 - i);
        }
        assert!(!held.contains("chat:0"));
        held.add(Arc::from("chat:a"), at_ten());
        let left: Vec<_> = held.take_all().collect();
        assert_eq!(left, [Arc::from("chat:a")]);
        assert_eq!((held.len(), held.pending()), (0, 0));
        assert!(held.admit(&delivery("chat:a", Some((3, "e")))));
    }

    /// Channels `chat:0` .. `chat:{n-1}`, the even ones with a resume.
    fn holding(n: usize) -> (Subscriptions, Vec<String>) {
        let mut held = Subscriptions::default();
        let names: Vec<String> = (0..n).map(|i| format!("chat:{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            held.add(Arc::from(name.as_str()), at_ten().filter(|_| i % 2 == 0));
        }
        (held, names)
    }

    #[test]
    fn one_channel_takes_no_block_and_two_take_one_slot_beyond() {
        let (held, _) = holding(0);
        assert!(held.first.is_none() && held.rest.is_none());
        assert_eq!((held.len(), held.pending()), (0, 0));
        let (held, _) = holding(1);
        assert!(held.rest.is_none(), "the first channel is held inline");
        assert_eq!((held.len(), held.pending()), (1, 1));
        let (held, _) = holding(2);
        assert_eq!(held.rest.as_ref().map(|r| r.entries.len()), Some(1));
        assert_eq!((held.len(), held.pending()), (2, 1));
    }

    #[test]
    fn removals_in_every_position_keep_the_order_of_one_list() {
        for n in [0, 1, 2, 5] {
            // Every order of removal positions for up to 5 entries would be
            // 120; removing at `k`, then always at `k` modulo what is left,
            // reaches every position of every length.
            for k in 0..n.max(1) {
                let (mut held, names) = holding(n);
                let mut model: Vec<(String, bool)> = names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.clone(), i % 2 == 0))
                    .collect();
                assert_eq!(held.channels(), names);
                assert_eq!(held.remove("chat:none"), None);
                while !model.is_empty() {
                    let at = k % model.len();
                    let (name, _) = model.swap_remove(at);
                    assert_eq!(held.remove(&name).as_deref(), Some(name.as_str()));
                    assert_eq!(held.remove(&name), None, "removing twice is harmless");
                    let expected: Vec<_> = model.iter().map(|(c, _)| c.clone()).collect();
                    assert_eq!(held.channels(), expected, "n={n} k={k}");
                    assert_eq!(held.len(), model.len());
                    assert_eq!(held.pending(), model.iter().filter(|(_, r)| *r).count());
                    assert_eq!(held.rest.is_some(), model.len() > 1);
                    for (channel, resuming) in &model {
                        assert!(held.contains(channel));
                        assert_eq!(
                            held.admit(&delivery(channel, Some((10, "e")))),
                            !resuming,
                            "a resume follows its entry wherever it moves"
                        );
                    }
                }
                assert!(held.first.is_none() && held.rest.is_none());
                assert!(held.admit(&delivery("chat:0", Some((3, "e")))));
            }
        }
    }

    #[test]
    fn a_resume_ends_in_any_position() {
        let (mut held, names) = holding(5);
        assert_eq!(held.pending(), 3);
        for name in &names {
            assert!(held.admit(&delivery(name, Some((11, "e")))));
        }
        assert_eq!(held.pending(), 0, "every resume ended");
        held.add(Arc::from("chat:3"), at_ten());
        assert_eq!(held.pending(), 1);
        assert!(!held.admit(&delivery("chat:3", Some((10, "e")))));
        held.add(Arc::from("chat:0"), at_ten());
        held.add(Arc::from("chat:0"), None);
        assert_eq!((held.len(), held.pending()), (5, 1), "record replaces");
        let left: Vec<_> = held.take_all().map(|c| c.to_string()).collect();
        assert_eq!(left, names, "take_all gives them in order");
        assert_eq!((held.len(), held.pending()), (0, 0));
        assert!(held.rest.is_none());
    }
}
