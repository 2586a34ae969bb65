//! The channels a session holds: one small entry per subscription, with
//! what its subscribe's reply covered while that still matters.
//!
//! An entry ([`Subscription`], 40 bytes) shares the hub's name of its
//! channel (`hub::Joined`) instead of holding a copy, and carries the
//! subscribe's [`Resume`] until the first frame of the channel beyond the
//! reply's position (on a quiet channel, for the whole connection: hence
//! its compact epoch). The list is a boxed slice, exactly as long as the
//! channels held: subscribes and unsubscribes are rare (and
//! `session.max_channels` bounds the list), so each resizes it rather than
//! the session keeping spare slots, or a capacity, in every connection.
//!
//! [`Subscriptions::admit`] runs for every queued frame: a count of the
//! entries still holding a resume lets it return at once when none does,
//! so a session scans its list per frame only right after a subscribe.
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

/// The session's subscriptions, in no particular order. 24 bytes in the
/// session's state.
#[derive(Debug, Default)]
pub struct Subscriptions {
    entries: Box<[Subscription]>,
    /// How many entries hold a resume: zero on almost every frame, which
    /// [`Subscriptions::admit`] lets through without a scan.
    resuming: u32,
}

impl Subscriptions {
    /// Channels held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the session holds `channel`.
    pub fn contains(&self, channel: &str) -> bool {
        self.position(channel).is_some()
    }

    fn position(&self, channel: &str) -> Option<usize> {
        self.entries.iter().position(|s| *s.channel == *channel)
    }

    /// Adds a subscription, with what its reply covered; a channel already
    /// held keeps its entry and takes the new `resume` in place of the old.
    /// The list grows by one slot: five subscriptions hold five.
    pub fn add(&mut self, channel: Arc<str>, resume: Option<Resume>) {
        if let Some(i) = self.position(&channel) {
            self.set_resume(i, resume);
            return;
        }
        self.resuming += u32::from(resume.is_some());
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        entries.reserve_exact(1);
        entries.push(Subscription { channel, resume });
        self.entries = entries.into_boxed_slice();
    }

    fn set_resume(&mut self, i: usize, resume: Option<Resume>) {
        let entry = &mut self.entries[i];
        self.resuming -= u32::from(entry.resume.is_some());
        self.resuming += u32::from(resume.is_some());
        entry.resume = resume;
    }

    /// Drops the channel's entry (and its resume); its name, if it was
    /// held. The list shrinks by the slot (to nothing with the last one).
    pub fn remove(&mut self, channel: &str) -> Option<Arc<str>> {
        let i = self.position(channel)?;
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        let entry = entries.swap_remove(i);
        self.entries = entries.into_boxed_slice();
        self.resuming -= u32::from(entry.resume.is_some());
        Some(entry.channel)
    }

    /// Every channel held, leaving none (the session ends).
    pub fn take_all(&mut self) -> impl Iterator<Item = Arc<str>> + use<> {
        self.resuming = 0;
        std::mem::take(&mut self.entries)
            .into_vec()
            .into_iter()
            .map(|s| s.channel)
    }

    /// Whether a queued delivery goes out: false for what the reply of a
    /// subscribe (or its replay) already covered. Costs one comparison
    /// unless an entry holds a resume; a resume lives until the first frame
    /// of its channel beyond the position it recorded.
    pub fn admit(&mut self, delivery: &Delivery) -> bool {
        if self.resuming == 0 {
            return true;
        }
        let Some((offset, epoch)) = &delivery.position else {
            return true;
        };
        let Some(i) = self.position(&delivery.channel) else {
            return true;
        };
        match &self.entries[i].resume {
            None => true,
            Some(resume) if resume.covers(*offset, epoch) => false,
            Some(_) => {
                self.set_resume(i, None);
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
        // In every session's state: the list and the count of resumes.
        assert_eq!(std::mem::size_of::<Subscriptions>(), 24);
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
        assert_eq!(held.resuming, 1);
        assert!(held.admit(&delivery("chat:a", Some((11, "e")))));
        assert_eq!(held.resuming, 0, "the first newer frame ends the resume");
        assert!(held.admit(&delivery("chat:a", Some((10, "e")))));
        assert!(held.admit(&delivery("chat:a", Some((12, "e")))));
        assert!(held.contains("chat:a"), "the subscription stays");
    }

    #[test]
    fn a_new_epoch_ends_the_resume() {
        let mut held = Subscriptions::default();
        held.add(Arc::from("chat:a"), at_ten());
        assert!(held.admit(&delivery("chat:a", Some((1, "f")))));
        assert_eq!(held.resuming, 0);
        assert!(held.admit(&delivery("chat:a", Some((2, "e")))));
    }

    #[test]
    fn a_channel_keeps_one_entry_until_removed() {
        let mut held = Subscriptions::default();
        held.add(Arc::from("chat:a"), at_ten());
        held.add(Arc::from("chat:a"), Some(Resume::new(12, "e")));
        held.add(Arc::from("chat:b"), at_ten());
        assert_eq!((held.len(), held.resuming), (2, 2));
        assert!(
            !held.admit(&delivery("chat:a", Some((12, "e")))),
            "the newer resume replaced the older"
        );
        held.add(Arc::from("chat:a"), None);
        assert_eq!((held.len(), held.resuming), (2, 1));
        assert!(held.admit(&delivery("chat:a", Some((1, "e")))));
        assert_eq!(held.remove("chat:b").as_deref(), Some("chat:b"));
        assert_eq!(held.remove("chat:b"), None, "removing twice is harmless");
        assert_eq!((held.len(), held.resuming), (1, 0));
        assert!(held.admit(&delivery("chat:b", Some((1, "e")))));
    }

    #[test]
    fn an_unsubscribe_forgets_the_resume() {
        let mut held = Subscriptions::default();
        held.add(Arc::from("chat:a"), at_ten());
        held.remove("chat:a");
        assert_eq!(held.resuming, 0);
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
        // A boxed slice: its length is its allocation.
        assert_eq!(held.len(), 5, "five subscriptions, five slots");
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
        assert_eq!((held.len(), held.resuming), (0, 0));
        assert!(held.admit(&delivery("chat:a", Some((3, "e")))));
    }
}
