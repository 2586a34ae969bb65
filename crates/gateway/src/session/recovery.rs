//! Recovery: what a `subscribe` answers on a channel with history, and which
//! frames the client gets after the reply.
//!
//! A `subscribe` on a channel with history joins the hub first, then reads
//! the channel's history, answers with the position it read and (with
//! `since`) writes the missed messages right after the reply. Live frames
//! queued meanwhile that the reply's position already covers are dropped
//! when they come off the queue ([`Resume`], [`admit`]), so the client sees
//! every message after its `since` exactly once, in order.
//!
//! Everything here is pure: the session makes the read and the writes, this
//! module turns the page read into the reply, the replay and what to drop,
//! so the rules are tested without a socket or a broker.

use serde_json::{json, Value};
use switchboard_protocol::{ErrorCode, Position};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::namespaces::MAX_HISTORY_SIZE;
use crate::history::{self, HistoryPage, HistoryQuery};
use crate::hub::Delivery;

/// A channel this session just (re)subscribed to with history: live frames
/// queued before its reply that the reply's position already covers.
#[derive(Debug)]
pub struct Resume {
    channel: Box<str>,
    offset: u64,
    epoch: Box<str>,
}

/// What a subscribe on a channel with history answers.
#[derive(Debug)]
pub struct Recovery {
    /// The reply's result: `{offset, epoch}`, and `recovered` when the
    /// subscribe named `since`.
    pub result: Value,
    /// With `since`: whether the replay continues right after it.
    pub recovered: Option<bool>,
    /// The stored messages the client missed, written right after the
    /// reply (none unless `recovered`).
    pub replay: Vec<Utf8Bytes>,
    /// Which queued live frames the reply already covers.
    pub resume: Resume,
}

/// The history read of a subscribe. Without `since` only the position is
/// needed: read one message, not the whole history, on every plain
/// subscribe.
pub fn query(since: Option<Position>) -> HistoryQuery {
    HistoryQuery {
        limit: if since.is_some() { MAX_HISTORY_SIZE } else { 1 },
        since,
    }
}

/// A subscribe's answer from the page read after joining the channel: the
/// position read, and with `since` whether the stream continues after it
/// (then its messages are replayed) or not (the client missed messages no
/// longer stored, or the stream restarted in another epoch: no replay). A
/// `since` ahead of the stream is refused.
pub fn recover(
    channel: &str,
    since: Option<&Position>,
    page: HistoryPage,
) -> Result<Recovery, (ErrorCode, String)> {
    let (recovered, replay) = match since {
        None => (None, Vec::new()),
        Some(since) if page.is_beyond_top(since) => {
            return Err(history::beyond_top(since, &page));
        }
        Some(since) => {
            let recovered = page.continues(since);
            let replay: Vec<Utf8Bytes> = if recovered {
                page.messages.into_iter().map(|(_, frame)| frame).collect()
            } else {
                Vec::new()
            };
            (Some(recovered), replay)
        }
    };
    let mut result = json!({ "offset": page.top.offset, "epoch": page.top.epoch });
    if let Some(recovered) = recovered {
        result["recovered"] = json!(recovered);
    }
    let resume = Resume {
        channel: channel.into(),
        offset: page.top.offset,
        epoch: page.top.epoch.as_str().into(),
    };
    Ok(Recovery {
        result,
        recovered,
        replay,
        resume,
    })
}

/// A subscribe's result on a channel without history: nothing can be
/// recovered, and the client is told so when it asked.
pub fn without_history(since: Option<&Position>) -> Value {
    match since {
        Some(_) => json!({ "recovered": false }),
        None => json!({}),
    }
}

/// Records what a subscribe's reply covered, replacing the channel's
/// previous entry.
pub fn record(resumed: &mut Vec<Resume>, resume: Resume) {
    forget(resumed, &resume.channel);
    resumed.reserve_exact(1);
    resumed.push(resume);
}

/// Drops the channel's entry (an unsubscribe, a subscribe that failed).
pub fn forget(resumed: &mut Vec<Resume>, channel: &str) {
    resumed.retain(|r| *r.channel != *channel);
}

/// Whether a queued delivery goes out: false for what a recovery or the
/// reply of a subscribe already covered. Costs nothing unless a subscribe
/// just happened; an entry lives until the first frame of its channel
/// beyond the position it recorded.
pub fn admit(resumed: &mut Vec<Resume>, delivery: &Delivery) -> bool {
    if resumed.is_empty() {
        return true;
    }
    let Some((offset, epoch)) = &delivery.position else {
        return true;
    };
    let Some(i) = resumed.iter().position(|r| r.channel == delivery.channel) else {
        return true;
    };
    let resume = &resumed[i];
    if *resume.epoch == **epoch && *offset <= resume.offset {
        return false;
    }
    resumed.swap_remove(i);
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A stream at offset 10 of epoch `e` that still stores 6..=10.
    fn page(messages: &[u64]) -> HistoryPage {
        HistoryPage {
            top: Position::new(10, "e"),
            first: 6,
            messages: messages
                .iter()
                .map(|o| (*o, Utf8Bytes::from(format!("m{o}"))))
                .collect(),
        }
    }

    fn replayed(recovery: &Recovery) -> Vec<&str> {
        recovery.replay.iter().map(|f| f.as_str()).collect()
    }

    #[test]
    fn a_subscribe_reads_one_message_unless_it_resumes() {
        assert_eq!(query(None).limit, 1);
        let since = Position::new(3, "e");
        let read = query(Some(since.clone()));
        assert_eq!((read.limit, read.since), (MAX_HISTORY_SIZE, Some(since)));
    }

    #[test]
    fn without_since_only_the_position() {
        let recovery = recover("chat:a", None, page(&[10])).unwrap();
        assert_eq!(recovery.result, json!({ "offset": 10, "epoch": "e" }));
        assert_eq!(recovery.recovered, None);
        assert!(
            recovery.replay.is_empty(),
            "a plain subscribe replays nothing"
        );
    }

    #[test]
    fn a_since_the_stream_continues_is_recovered_and_replayed() {
        let since = Position::new(7, "e");
        let recovery = recover("chat:a", Some(&since), page(&[8, 9, 10])).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": true })
        );
        assert_eq!(recovery.recovered, Some(true));
        assert_eq!(replayed(&recovery), ["m8", "m9", "m10"]);
        let at_top = recover("chat:a", Some(&Position::new(10, "e")), page(&[])).unwrap();
        assert_eq!(at_top.recovered, Some(true), "nothing missed");
        assert!(at_top.replay.is_empty());
    }

    #[test]
    fn a_since_trimmed_or_in_an_older_epoch_is_not_recovered() {
        let trimmed = Position::new(2, "e");
        let recovery = recover("chat:a", Some(&trimmed), page(&[6, 7, 8, 9, 10])).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false })
        );
        assert!(recovery.replay.is_empty(), "offsets 3 to 5 are gone");
        let older = Position::new(9, "old");
        let recovery = recover("chat:a", Some(&older), page(&[6, 7, 8, 9, 10])).unwrap();
        assert_eq!(recovery.recovered, Some(false));
        assert!(recovery.replay.is_empty(), "another epoch's offsets");
    }

    #[test]
    fn a_since_beyond_the_top_is_refused() {
        let since = Position::new(12, "e");
        let error = recover("chat:a", Some(&since), page(&[])).unwrap_err();
        assert_eq!(
            error,
            (
                ErrorCode::BadRequest,
                "since.offset 12 is beyond the channel's latest offset 10".to_owned()
            )
        );
        let other_epoch = Position::new(12, "f");
        assert!(
            recover("chat:a", Some(&other_epoch), page(&[])).is_ok(),
            "an offset of another epoch is not ahead"
        );
    }

    #[test]
    fn without_history_nothing_is_recovered() {
        assert_eq!(without_history(None), json!({}));
        assert_eq!(
            without_history(Some(&Position::new(1, "e"))),
            json!({ "recovered": false })
        );
    }

    fn delivery(channel: &str, position: Option<(u64, &str)>) -> Delivery {
        Delivery {
            channel: channel.into(),
            position: position.map(|(o, e)| (o, Arc::from(e))),
            frame: Utf8Bytes::from_static("m"),
        }
    }

    #[test]
    fn live_frames_the_reply_covered_are_dropped_once() {
        let mut resumed = Vec::new();
        let recovery = recover("chat:a", None, page(&[10])).unwrap();
        record(&mut resumed, recovery.resume);
        assert!(admit(&mut resumed, &delivery("chat:b", Some((3, "e")))));
        assert!(
            admit(&mut resumed, &delivery("chat:a", None)),
            "no position"
        );
        assert!(!admit(&mut resumed, &delivery("chat:a", Some((9, "e")))));
        assert!(!admit(&mut resumed, &delivery("chat:a", Some((10, "e")))));
        assert_eq!(resumed.len(), 1);
        assert!(admit(&mut resumed, &delivery("chat:a", Some((11, "e")))));
        assert!(resumed.is_empty(), "the first newer frame ends the entry");
        assert!(admit(&mut resumed, &delivery("chat:a", Some((10, "e")))));
    }

    #[test]
    fn a_new_epoch_ends_the_entry() {
        let mut resumed = Vec::new();
        record(
            &mut resumed,
            recover("chat:a", None, page(&[])).unwrap().resume,
        );
        assert!(admit(&mut resumed, &delivery("chat:a", Some((1, "f")))));
        assert!(resumed.is_empty());
    }

    #[test]
    fn a_channel_keeps_one_entry_until_forgotten() {
        let mut resumed = Vec::new();
        record(
            &mut resumed,
            recover("chat:a", None, page(&[])).unwrap().resume,
        );
        record(
            &mut resumed,
            recover("chat:a", None, page(&[])).unwrap().resume,
        );
        record(
            &mut resumed,
            recover("chat:b", None, page(&[])).unwrap().resume,
        );
        assert_eq!(resumed.len(), 2);
        forget(&mut resumed, "chat:a");
        assert_eq!(resumed.len(), 1);
        assert!(admit(&mut resumed, &delivery("chat:a", Some((1, "e")))));
    }
}
