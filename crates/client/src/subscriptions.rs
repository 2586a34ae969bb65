//! The channels a [`crate::Client`] keeps subscribed and where it stands in
//! each one's stream, with no I/O: what to send on (re)subscribe, what a
//! subscribe reply means, and which pushed messages to surface.
//!
//! A position is set from a subscribe reply's `{offset, epoch}`, advanced by
//! every `message` with an `offset`, and replaced by a `reset` frame. Messages
//! carry no epoch: they belong to the epoch of the position they follow.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;
use switchboard_protocol::position::valid_epoch;
use switchboard_protocol::{ErrorCode, Outgoing, Position};

/// What a successful subscribe reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubscribeReply {
    /// Set only when the subscribe carried `since`.
    pub recovered: Option<bool>,
    /// Set only on channels with history.
    pub position: Option<Position>,
}

impl SubscribeReply {
    /// Reads a reply `result`. Anything malformed reads as "no position", so
    /// a broken reply costs recovery on the next reconnect, nothing more.
    pub fn parse(result: &Value) -> SubscribeReply {
        #[derive(Deserialize)]
        struct Raw {
            offset: Option<u64>,
            epoch: Option<String>,
            recovered: Option<bool>,
        }
        let Ok(raw) = Raw::deserialize(result) else {
            tracing::warn!(%result, "malformed subscribe reply");
            return SubscribeReply {
                recovered: None,
                position: None,
            };
        };
        // An epoch the server would refuse in `since` would make every later
        // resubscribe fail; better to resubscribe without one.
        let position = match (raw.offset, raw.epoch) {
            (Some(offset), Some(epoch)) if valid_epoch(&epoch) => Some(Position { offset, epoch }),
            (None, None) => None,
            _ => {
                tracing::warn!(%result, "subscribe reply without a usable position");
                None
            }
        };
        SubscribeReply {
            recovered: raw.recovered,
            position,
        }
    }
}

/// The subscribed channels, their positions, and the subscribes awaiting a reply.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// Channel -> the last position seen (`None` before a reply named one,
    /// and on channels without history).
    channels: BTreeMap<String, Option<Position>>,
    /// Subscribe id -> (channel, whether it carried `since`). At most one
    /// entry per subscribed channel: entries go on reply, on unsubscribe and
    /// on reconnect.
    pending: HashMap<u64, (String, bool)>,
}

impl Subscriptions {
    /// Records `channel`; `false` if it was already subscribed.
    pub fn add(&mut self, channel: &str) -> bool {
        if self.channels.contains_key(channel) {
            return false;
        }
        self.channels.insert(channel.to_owned(), None);
        true
    }

    /// Forgets `channel` and its position; `false` if it was not subscribed.
    pub fn remove(&mut self, channel: &str) -> bool {
        self.pending.retain(|_, (c, _)| c != channel);
        self.channels.remove(channel).is_some()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The subscribe frame for `channel` with command id `id`, resuming from
    /// its position when known. `None` if `channel` is not subscribed.
    pub fn subscribe_frame(&mut self, channel: &str, id: u64) -> Option<String> {
        let position = self.channels.get(channel)?;
        let frame = Outgoing {
            id: Some(id),
            channel: Some(channel),
            since: position.as_ref(),
            ..Outgoing::new("subscribe")
        }
        .encode();
        self.pending
            .insert(id, (channel.to_owned(), position.is_some()));
        Some(frame)
    }

    /// A new connection is up: replies to subscribes sent on the old one will
    /// never come. Returns every subscribed channel, to subscribe again.
    pub fn reconnected(&mut self) -> Vec<String> {
        self.pending.clear();
        self.channels.keys().cloned().collect()
    }

    /// Takes the pending subscribe `id`: its channel and whether it carried
    /// `since`. `None` if `id` is not a pending subscribe.
    pub fn take_pending(&mut self, id: u64) -> Option<(String, bool)> {
        self.pending.remove(&id)
    }

    /// Applies the successful reply to a subscribe of `channel`; returns what
    /// to report.
    pub fn subscribed(
        &mut self,
        channel: &str,
        sent_since: bool,
        result: &Value,
    ) -> SubscribeReply {
        let mut reply = SubscribeReply::parse(result);
        if !sent_since {
            // No since, no recovery: only a buggy server would answer one.
            reply.recovered = None;
        }
        if let Some(position) = self.channels.get_mut(channel) {
            // After `recovered: true` the missed messages follow the reply and
            // advance the position themselves; moving it to the reply's
            // (possibly newer) position first would drop them as duplicates.
            if reply.recovered != Some(true) || position.is_none() {
                *position = reply.position.clone();
            }
        }
        reply
    }

    /// Applies the error reply to a subscribe of `channel`. A `since` the
    /// server called malformed (for example beyond the stream's newest
    /// offset) is forgotten, so the next reconnect does not repeat it; other
    /// failures (forbidden, rate limited) keep the position for a retry.
    pub fn subscribe_failed(&mut self, channel: &str, sent_since: bool, code: &str) {
        if sent_since && code == ErrorCode::BadRequest.as_str() {
            if let Some(position) = self.channels.get_mut(channel) {
                tracing::debug!(channel, "since refused; resubscribing without it next time");
                *position = None;
            }
        }
    }

    /// Whether a pushed message should be surfaced. A message at or before
    /// the position already seen is a duplicate and is dropped; any other
    /// advances the position. Messages without an offset, before the first
    /// position, or on channels not subscribed pass through untracked.
    pub fn accept_message(&mut self, channel: &str, offset: Option<u64>) -> bool {
        let (Some(offset), Some(Some(position))) = (offset, self.channels.get_mut(channel)) else {
            return true;
        };
        if offset <= position.offset {
            tracing::debug!(
                channel,
                offset,
                seen = position.offset,
                "dropping duplicate message"
            );
            return false;
        }
        if offset > position.offset + 1 {
            // The server sends `reset` when it knows of a gap; log ours.
            tracing::debug!(channel, offset, seen = position.offset, "offsets skipped");
        }
        position.offset = offset;
        true
    }

    /// Applies a `reset`: the stream continues after `position`.
    pub fn reset(&mut self, channel: &str, position: &Position) {
        if let Some(current) = self.channels.get_mut(channel) {
            // As for replies: never keep an epoch the server would refuse.
            *current = valid_epoch(&position.epoch).then(|| position.clone());
        }
    }

    /// The position of `channel`, if subscribed and known (for tests).
    #[cfg(test)]
    pub fn position(&self, channel: &str) -> Option<&Position> {
        self.channels.get(channel)?.as_ref()
    }

    /// Subscribes awaiting a reply (for tests of the bound).
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(offset: u64, epoch: &str) -> Option<Position> {
        Some(Position::new(offset, epoch))
    }

    #[test]
    fn parses_subscribe_replies() {
        let parse = |v: Value| SubscribeReply::parse(&v);
        assert_eq!(
            parse(json!({"offset": 4, "epoch": "e1"})),
            SubscribeReply {
                recovered: None,
                position: at(4, "e1")
            }
        );
        assert_eq!(
            parse(json!({"offset": 0, "epoch": "e1", "recovered": true})).recovered,
            Some(true)
        );
        let plain = parse(json!({}));
        assert_eq!((plain.recovered, plain.position), (None, None));
        assert_eq!(parse(json!({"recovered": false})).recovered, Some(false));
        for broken in [
            json!(null),
            json!([1]),
            json!({"offset": -1, "epoch": "e"}),
            json!({"offset": 1}),
            json!({"offset": 1, "epoch": "not valid"}),
            json!({"offset": 1, "epoch": ""}),
            json!({"offset": 1, "epoch": 5}),
        ] {
            assert_eq!(parse(broken.clone()).position, None, "{broken}");
        }
    }

    #[test]
    fn subscribes_with_since_once_a_position_is_known() {
        let mut subs = Subscriptions::default();
        assert!(subs.add("a"));
        assert!(!subs.add("a"), "already subscribed");
        assert_eq!(
            subs.subscribe_frame("a", 1).unwrap(),
            r#"{"type":"subscribe","id":1,"channel":"a"}"#
        );
        assert_eq!(subs.subscribe_frame("b", 2), None, "not subscribed");
        assert_eq!(subs.take_pending(1), Some(("a".to_owned(), false)));
        assert_eq!(subs.take_pending(1), None, "taken once");
        subs.subscribed("a", false, &json!({"offset": 7, "epoch": "e1"}));
        assert!(subs.accept_message("a", Some(8)));

        // On reconnect, every channel is subscribed again from where it stood.
        subs.add("plain");
        subs.subscribe_frame("plain", 3);
        assert_eq!(subs.reconnected(), ["a", "plain"]);
        assert_eq!(
            subs.pending_len(),
            0,
            "old connection's subscribes forgotten"
        );
        assert_eq!(
            subs.subscribe_frame("a", 4).unwrap(),
            r#"{"type":"subscribe","id":4,"channel":"a","since":{"offset":8,"epoch":"e1"}}"#
        );
        assert_eq!(
            subs.subscribe_frame("plain", 5).unwrap(),
            r#"{"type":"subscribe","id":5,"channel":"plain"}"#
        );
        assert_eq!(subs.take_pending(4), Some(("a".to_owned(), true)));
    }

    #[test]
    fn pending_subscribes_stay_bounded() {
        let mut subs = Subscriptions::default();
        for id in 0..100 {
            subs.add("a");
            subs.subscribe_frame("a", id);
            subs.remove("a");
        }
        assert_eq!(subs.pending_len(), 0);
        assert!(subs.is_empty());
    }

    #[test]
    fn recovery_keeps_the_position_until_missed_messages_arrive() {
        let mut subs = Subscriptions::default();
        subs.add("a");
        subs.subscribed("a", false, &json!({"offset": 5, "epoch": "e1"}));
        // Resumed from 5; the reply names the newest offset, 9: messages 6..=9
        // follow and must not be dropped.
        let reply = subs.subscribed(
            "a",
            true,
            &json!({"offset": 9, "epoch": "e1", "recovered": true}),
        );
        assert_eq!(reply.recovered, Some(true));
        assert_eq!(reply.position, at(9, "e1"));
        assert_eq!(subs.position("a"), at(5, "e1").as_ref());
        for offset in 6..=10 {
            assert!(subs.accept_message("a", Some(offset)), "{offset}");
        }
        assert!(!subs.accept_message("a", Some(10)), "duplicate");
        assert!(!subs.accept_message("a", Some(3)), "older");

        // Not recovered: the stream continues after the reply's position.
        let reply = subs.subscribed(
            "a",
            true,
            &json!({"offset": 2, "epoch": "e2", "recovered": false}),
        );
        assert_eq!(reply.recovered, Some(false));
        assert_eq!(subs.position("a"), at(2, "e2").as_ref());
        assert!(subs.accept_message("a", Some(3)));

        // A reply to a subscribe without since never claims recovery.
        let reply = subs.subscribed(
            "a",
            false,
            &json!({"offset": 1, "epoch": "e3", "recovered": true}),
        );
        assert_eq!(reply.recovered, None);
        assert_eq!(subs.position("a"), at(1, "e3").as_ref());
    }

    #[test]
    fn dedupes_within_the_current_epoch() {
        let mut subs = Subscriptions::default();
        subs.add("a");
        // Before any position: nothing to compare with.
        assert!(subs.accept_message("a", Some(1)));
        assert!(subs.accept_message("a", Some(1)));
        assert_eq!(subs.position("a"), None);
        subs.subscribed("a", false, &json!({"offset": 3, "epoch": "e1"}));
        assert!(!subs.accept_message("a", Some(3)));
        assert!(subs.accept_message("a", Some(4)));
        assert!(subs.accept_message("a", Some(6)), "a gap is surfaced");
        assert!(!subs.accept_message("a", Some(5)));
        assert!(subs.accept_message("a", None), "no offset: no history");
        assert!(subs.accept_message("other", Some(1)), "not subscribed");

        // A reset moves to another epoch, where offsets start over.
        subs.reset("a", &Position::new(0, "e2"));
        assert_eq!(subs.position("a"), at(0, "e2").as_ref());
        assert!(subs.accept_message("a", Some(1)));
        subs.reset("gone", &Position::new(0, "e2"));
        subs.reset("a", &Position::new(0, "bad epoch"));
        assert_eq!(subs.position("a"), None, "unusable epoch forgotten");
        subs.reset("a", &Position::new(1, "e2"));
        assert_eq!(subs.position("gone"), None, "not subscribed: not tracked");

        // A channel without history forgets any old position.
        subs.subscribed("a", false, &json!({}));
        assert_eq!(subs.position("a"), None);
        assert!(subs.accept_message("a", Some(1)));
    }

    #[test]
    fn a_refused_since_is_not_repeated() {
        let mut subs = Subscriptions::default();
        subs.add("a");
        subs.subscribed("a", false, &json!({"offset": 3, "epoch": "e1"}));
        subs.subscribe_failed("a", true, "rate_limited");
        assert_eq!(subs.position("a"), at(3, "e1").as_ref(), "transient");
        subs.subscribe_failed("a", false, "bad_request");
        assert_eq!(subs.position("a"), at(3, "e1").as_ref(), "not about since");
        subs.subscribe_failed("a", true, "bad_request");
        assert_eq!(subs.position("a"), None);
    }

    #[test]
    fn unsubscribe_forgets_the_position() {
        let mut subs = Subscriptions::default();
        subs.add("a");
        subs.subscribed("a", false, &json!({"offset": 3, "epoch": "e1"}));
        assert!(subs.remove("a"));
        assert!(!subs.remove("a"));
        subs.subscribed("a", false, &json!({"offset": 9, "epoch": "e1"}));
        assert_eq!(
            subs.position("a"),
            None,
            "a late reply does not resurrect it"
        );
        subs.add("a");
        assert_eq!(
            subs.subscribe_frame("a", 1).unwrap(),
            r#"{"type":"subscribe","id":1,"channel":"a"}"#
        );
    }
}
