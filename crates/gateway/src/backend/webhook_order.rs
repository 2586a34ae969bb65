//! The order webhook events are guaranteed to arrive in (docs/protocol.md,
//! "Order"), as a checker over the events a receiver got, in arrival order.
//!
//! The stream is read as a receiver does: an event whose `id` was seen
//! before is a duplicate (at-least-once delivery) and is skipped. Then, for
//! every channel, user and pair of them:
//!
//! - transitions alternate: `user_online`/`user_offline`,
//!   `member_added`/`member_removed`, `channel_occupied`/`channel_vacated`;
//! - a channel with presence: its first `member_added` comes before its
//!   `channel_occupied`, with no other event of that channel between them;
//!   its members are added and removed only while it is occupied (that
//!   first one aside); its last `member_removed` comes before its
//!   `channel_vacated`;
//! - a user's `user_online` comes before any of their `member_added`, and
//!   their `user_offline` after their last `member_removed`, on every
//!   channel;
//! - a channel without presence has no member events.
//!
//! Every rule looks only at what came before, so the property holds for a
//! stream exactly when it holds for each of its prefixes, and a violation
//! is reported at the first event that breaks it: [`check`] on what has
//! arrived so far is the check of that prefix.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::backend::webhooks::Event;

/// The first event that breaks the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Its position in the stream checked (duplicates included).
    pub index: usize,
    /// `name channel user` of the event (`-` for a field it lacks).
    pub event: String,
    /// The rule it breaks.
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event {} ({}): {}", self.index, self.event, self.rule)
    }
}

impl std::error::Error for Violation {}

/// `name channel user` of an event, `-` for a missing field.
pub fn describe(event: &Event) -> String {
    format!(
        "{} {} {}",
        event.name,
        event.channel.as_deref().unwrap_or("-"),
        event.user.as_deref().unwrap_or("-")
    )
}

#[derive(Debug, Default)]
struct Channel {
    occupied: bool,
    members: BTreeSet<String>,
}

/// The order checked one event at a time; what [`check`] runs.
pub struct OrderCheck<P> {
    presence: P,
    seen: HashMap<String, Event>,
    online: HashSet<String>,
    channels: HashMap<String, Channel>,
    index: usize,
}

impl<P: Fn(&str) -> bool> OrderCheck<P> {
    /// `presence` says whether a channel's namespace has presence (and so
    /// member events), as the gateway's configuration does.
    pub fn new(presence: P) -> OrderCheck<P> {
        OrderCheck {
            presence,
            seen: HashMap::new(),
            online: HashSet::new(),
            channels: HashMap::new(),
            index: 0,
        }
    }

    /// Takes the next event to arrive.
    pub fn push(&mut self, event: &Event) -> Result<(), Violation> {
        let index = self.index;
        self.index += 1;
        let fail = |rule: String| Violation {
            index,
            event: describe(event),
            rule,
        };
        if let Some(first) = self.seen.get(&event.id) {
            if first == event {
                return Ok(());
            }
            return Err(fail(format!(
                "id {} was first {}",
                event.id,
                describe(first)
            )));
        }
        self.seen.insert(event.id.clone(), event.clone());
        self.apply(event).map_err(fail)
    }

    fn apply(&mut self, event: &Event) -> Result<(), String> {
        let user = || event.user.clone().ok_or_else(|| "no user".to_owned());
        let channel = || event.channel.clone().ok_or_else(|| "no channel".to_owned());
        match event.name.as_str() {
            "user_online" => {
                let user = user()?;
                if !self.online.insert(user.clone()) {
                    return Err(format!("{user} is online already"));
                }
            }
            "user_offline" => {
                let user = user()?;
                if !self.online.remove(&user) {
                    return Err(format!("{user} is not online"));
                }
                let mut still: Vec<&String> = self
                    .channels
                    .iter()
                    .filter(|(_, c)| c.members.contains(&user))
                    .map(|(name, _)| name)
                    .collect();
                still.sort();
                if let Some(channel) = still.first() {
                    return Err(format!(
                        "user_offline before member_removed {channel} {user}"
                    ));
                }
            }
            "member_added" => {
                let (channel, user) = (channel()?, user()?);
                if !(self.presence)(&channel) {
                    return Err(format!("{channel} has no presence"));
                }
                if !self.online.contains(&user) {
                    return Err(format!("member_added before user_online {user}"));
                }
                let state = self.channels.entry(channel.clone()).or_default();
                if !state.occupied {
                    if let Some(first) = state.members.first() {
                        return Err(format!(
                            "another member_added before channel_occupied {channel} (which follows member_added {channel} {first})"
                        ));
                    }
                }
                if !state.members.insert(user.clone()) {
                    return Err(format!("{user} is a member of {channel} already"));
                }
            }
            "member_removed" => {
                let (channel, user) = (channel()?, user()?);
                if !(self.presence)(&channel) {
                    return Err(format!("{channel} has no presence"));
                }
                let state = self.channels.entry(channel.clone()).or_default();
                if !state.members.remove(&user) {
                    return Err(format!("{user} is not a member of {channel}"));
                }
                if !state.occupied {
                    return Err(format!(
                        "member_removed while {channel} is not occupied (before channel_occupied, or after channel_vacated)"
                    ));
                }
            }
            "channel_occupied" => {
                let channel = channel()?;
                let presence = (self.presence)(&channel);
                let state = self.channels.entry(channel.clone()).or_default();
                if state.occupied {
                    return Err(format!("{channel} is occupied already"));
                }
                if presence && state.members.is_empty() {
                    return Err(format!(
                        "channel_occupied before any member_added {channel}"
                    ));
                }
                state.occupied = true;
            }
            "channel_vacated" => {
                let channel = channel()?;
                let state = self.channels.entry(channel.clone()).or_default();
                if !state.occupied {
                    return Err(format!("{channel} is not occupied"));
                }
                if let Some(member) = state.members.first() {
                    return Err(format!(
                        "channel_vacated before member_removed {channel} {member}"
                    ));
                }
                self.channels.remove(&channel);
            }
            other => return Err(format!("unknown event {other:?}")),
        }
        Ok(())
    }

    /// What the stream says holds now: users online, then channels
    /// occupied and their members; empty when everyone has left.
    pub fn standing(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .online
            .iter()
            .map(|user| format!("online {user}"))
            .collect();
        for (name, channel) in &self.channels {
            if channel.occupied {
                out.push(format!("occupied {name}"));
            }
            for member in &channel.members {
                out.push(format!("member {name} {member}"));
            }
        }
        out.sort();
        out
    }

    /// Distinct events taken so far (duplicates not counted).
    pub fn distinct(&self) -> usize {
        self.seen.len()
    }
}

/// Checks a stream of events, in the order they arrived, against the
/// guaranteed order. `presence` tells the channels with member events.
pub fn check(events: &[Event], presence: impl Fn(&str) -> bool) -> Result<(), Violation> {
    let mut order = OrderCheck::new(presence);
    events.iter().try_for_each(|event| order.push(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events from `name channel user` lines (`-` for none), ids in order.
    fn stream(lines: &[&str]) -> Vec<Event> {
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| event(&format!("e-{i}"), line))
            .collect()
    }

    fn event(id: &str, line: &str) -> Event {
        let parts: Vec<&str> = line.split(' ').collect();
        let part = |i: usize| parts.get(i).filter(|p| **p != "-").map(|p| (*p).to_owned());
        Event {
            id: id.to_owned(),
            name: parts[0].to_owned(),
            channel: part(1),
            user: part(2),
            time_ms: 1_700_000_000_000,
        }
    }

    fn chat(channel: &str) -> bool {
        channel.starts_with("chat:")
    }

    fn violation(lines: &[&str]) -> Violation {
        check(&stream(lines), chat).expect_err("a violation")
    }

    /// Every prefix of a good stream is good, and the checker ends where
    /// the stream leaves things.
    fn good(lines: &[&str]) -> Vec<String> {
        let events = stream(lines);
        for end in 0..=events.len() {
            if let Err(v) = check(&events[..end], chat) {
                panic!("prefix of {end}: {v}");
            }
        }
        let mut order = OrderCheck::new(chat);
        for e in &events {
            order.push(e).unwrap();
        }
        order.standing()
    }

    #[test]
    fn a_user_who_joins_and_leaves_in_the_documented_order_passes() {
        let standing = good(&[
            "user_online - alice",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "member_removed chat:z alice",
            "channel_vacated chat:z -",
            "user_offline - alice",
        ]);
        assert!(standing.is_empty(), "{standing:?}");
    }

    #[test]
    fn members_come_and_go_while_a_channel_stays_occupied() {
        let standing = good(&[
            "user_online - alice",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "user_online - bob",
            "member_added chat:z bob",
            "member_removed chat:z alice",
            // A comeback within the grace period that cancelled a vacate.
            "member_added chat:z alice",
            "member_removed chat:z bob",
            "user_offline - bob",
            "channel_occupied feed:x -",
            "member_removed chat:z alice",
            "channel_vacated chat:z -",
            // Reopened: the pairs alternate again.
            "member_added chat:z alice",
            "channel_occupied chat:z -",
        ]);
        assert_eq!(
            standing,
            [
                "member chat:z alice",
                "occupied chat:z",
                "occupied feed:x",
                "online alice"
            ]
        );
    }

    #[test]
    fn events_of_other_channels_may_come_between_a_last_member_and_its_vacate() {
        good(&[
            "user_online - alice",
            "user_online - bob",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "member_added chat:y bob",
            "channel_occupied chat:y -",
            "member_removed chat:z alice",
            "member_removed chat:y bob",
            "channel_vacated chat:z -",
            "user_offline - alice",
            "channel_vacated chat:y -",
            "user_offline - bob",
        ]);
    }

    #[test]
    fn duplicates_are_skipped_as_a_receiver_does() {
        let mut events = stream(&[
            "user_online - alice",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "member_removed chat:z alice",
        ]);
        // A batch sent again after later events: the same ids.
        events.push(events[1].clone());
        events.push(events[2].clone());
        events.push(event("e-9", "channel_vacated chat:z -"));
        events.push(events[3].clone());
        assert_eq!(check(&events, chat), Ok(()));
        let mut order = OrderCheck::new(chat);
        for e in &events {
            order.push(e).unwrap();
        }
        assert_eq!(order.distinct(), 5);
        assert_eq!(order.standing(), ["online alice"]);
        // An id reused for another event is not a duplicate.
        let mut reused = events.clone();
        reused.push(event("e-0", "user_offline - alice"));
        let v = check(&reused, chat).unwrap_err();
        assert_eq!(v.index, 8);
        assert_eq!(v.rule, "id e-0 was first user_online - alice");
    }

    #[test]
    fn the_vacate_before_the_last_member_removed_is_caught() {
        // The issue: with a grace period, the vacate was queued first.
        let v = violation(&[
            "user_online - alice",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "channel_vacated chat:z -",
            "member_removed chat:z alice",
            "user_offline - alice",
        ]);
        assert_eq!(v.index, 3);
        assert_eq!(v.event, "channel_vacated chat:z -");
        assert_eq!(v.rule, "channel_vacated before member_removed chat:z alice");
        assert_eq!(
            v.to_string(),
            "event 3 (channel_vacated chat:z -): channel_vacated before member_removed chat:z alice"
        );
    }

    #[test]
    fn an_occupied_before_the_first_member_added_is_caught() {
        let v = violation(&[
            "user_online - alice",
            "channel_occupied chat:z -",
            "member_added chat:z alice",
        ]);
        assert_eq!(
            (v.index, v.rule.as_str()),
            (1, "channel_occupied before any member_added chat:z")
        );
        // The opening member's channel_occupied comes before anything else
        // of that channel.
        let v = violation(&[
            "user_online - alice",
            "user_online - bob",
            "member_added chat:z alice",
            "member_added chat:z bob",
            "channel_occupied chat:z -",
        ]);
        assert_eq!(v.index, 3);
        assert!(v
            .rule
            .starts_with("another member_added before channel_occupied chat:z"));
        let v = violation(&[
            "user_online - alice",
            "member_added chat:z alice",
            "member_removed chat:z alice",
        ]);
        assert_eq!(v.index, 2);
        assert!(v
            .rule
            .starts_with("member_removed while chat:z is not occupied"));
    }

    #[test]
    fn a_member_removed_after_the_vacate_is_caught() {
        let v = violation(&[
            "user_online - alice",
            "user_online - bob",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "member_added chat:z bob",
            "member_removed chat:z alice",
            "channel_vacated chat:z -",
            "member_removed chat:z bob",
        ]);
        assert_eq!(v.index, 6);
        assert_eq!(v.rule, "channel_vacated before member_removed chat:z bob");
    }

    #[test]
    fn an_offline_before_the_users_last_member_removed_is_caught() {
        let v = violation(&[
            "user_online - alice",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "member_added chat:y alice",
            "channel_occupied chat:y -",
            "member_removed chat:y alice",
            "channel_vacated chat:y -",
            "user_offline - alice",
            "member_removed chat:z alice",
        ]);
        assert_eq!(v.index, 7);
        assert_eq!(v.rule, "user_offline before member_removed chat:z alice");
        let v = violation(&["member_added chat:z alice"]);
        assert_eq!(v.rule, "member_added before user_online alice");
    }

    #[test]
    fn transitions_alternate() {
        for (lines, index, rule) in [
            (
                &["user_online - a", "user_online - a"][..],
                1,
                "a is online already",
            ),
            (&["user_offline - a"][..], 0, "a is not online"),
            (
                &["channel_occupied feed:x -", "channel_occupied feed:x -"][..],
                1,
                "feed:x is occupied already",
            ),
            (
                &["channel_vacated feed:x -"][..],
                0,
                "feed:x is not occupied",
            ),
            (
                &[
                    "user_online - a",
                    "member_added chat:z a",
                    "channel_occupied chat:z -",
                    "member_added chat:z a",
                ][..],
                3,
                "a is a member of chat:z already",
            ),
            (
                &[
                    "user_online - a",
                    "member_added chat:z a",
                    "channel_occupied chat:z -",
                    "member_removed chat:z b",
                ][..],
                3,
                "b is not a member of chat:z",
            ),
        ] {
            let v = violation(lines);
            assert_eq!((v.index, v.rule.as_str()), (index, rule), "{lines:?}");
        }
    }

    #[test]
    fn malformed_and_misplaced_events_are_caught() {
        for (lines, rule) in [
            (&["user_online - -"][..], "no user"),
            (&["channel_occupied - -"][..], "no channel"),
            (&["user_renamed - a"][..], "unknown event \"user_renamed\""),
            (
                &["user_online - a", "member_added feed:x a"][..],
                "feed:x has no presence",
            ),
        ] {
            assert_eq!(violation(lines).rule, rule, "{lines:?}");
        }
    }

    #[test]
    fn a_violation_is_reported_in_every_longer_prefix_at_the_same_event() {
        let events = stream(&[
            "user_online - alice",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "channel_vacated chat:z -",
            "member_removed chat:z alice",
            "user_offline - alice",
        ]);
        for end in 0..=3 {
            assert_eq!(check(&events[..end], chat), Ok(()), "{end}");
        }
        for end in 4..=events.len() {
            assert_eq!(check(&events[..end], chat).unwrap_err().index, 3, "{end}");
        }
    }
}
