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
//! The replay is bounded by the same byte budget as live traffic, the send
//! queue's cap (`session.send_queue_bytes`), and the read itself stops
//! there ([`query`]): a connection never makes the node hold more than that
//! for its replay, however many messages it missed. A replay that does not
//! fit is cut after the messages that do, and the reply says so:
//! `recovered: false` (what a client that knows nothing of the cut must
//! see: it reloads instead of believing it has everything) and
//! `replayed_to`, the offset the replay ends at; the client pages the rest,
//! up to the reply's `offset`, through `history`. Live frames at or below
//! the reply's `offset` are still dropped, as after a full replay: history
//! holds them, and live frames after it come exactly once.
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
use crate::metrics::history::RecoveryOutcome;

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
    /// subscribe named `since` (and `replayed_to` when the replay is cut).
    pub result: Value,
    /// With `since`: how the recovery went.
    pub outcome: Option<RecoveryOutcome>,
    /// The stored messages the client missed, written right after the
    /// reply: all of them when recovered, the first ones (those within the
    /// byte budget) when partial, none otherwise.
    pub replay: Vec<Utf8Bytes>,
    /// Which queued live frames the reply already covers.
    pub resume: Resume,
}

/// The history read of a subscribe. Without `since` only the position is
/// needed: read one message, not the whole history, on every plain
/// subscribe. With `since`, what the client missed, up to `budget` bytes
/// (the send queue's cap, counted as the queue counts frames).
pub fn query(since: Option<Position>, budget: usize) -> HistoryQuery {
    match since {
        Some(since) => HistoryQuery {
            limit: MAX_HISTORY_SIZE,
            since: Some(since),
            max_bytes: Some(budget),
        },
        None => HistoryQuery {
            limit: 1,
            since: None,
            max_bytes: None,
        },
    }
}

/// A subscribe's answer from the page read after joining the channel: the
/// position read, and with `since` whether the stream continues after it
/// (then its messages are replayed, as many as fit in `budget` bytes) or
/// not (the client missed messages no longer stored, or the stream
/// restarted in another epoch: no replay). A `since` ahead of the stream is
/// refused.
pub fn recover(
    channel: &str,
    since: Option<&Position>,
    page: HistoryPage,
    budget: usize,
) -> Result<Recovery, (ErrorCode, String)> {
    let mut result = json!({ "offset": page.top.offset, "epoch": page.top.epoch });
    let (outcome, replay) = match since {
        None => (None, Vec::new()),
        Some(since) if page.is_beyond_top(since) => {
            return Err(history::beyond_top(since, &page));
        }
        Some(since) if !page.continues(since) => {
            result["recovered"] = json!(false);
            (Some(RecoveryOutcome::NotRecovered), Vec::new())
        }
        Some(since) => {
            let mut messages = page.messages;
            // The store already stopped at the budget; the rule is applied
            // here too, so what is written never depends on the store.
            let fit = history::fitting(Some(budget), messages.iter().map(|(_, f)| f.len()));
            messages.truncate(fit);
            let end = messages.last().map_or(since.offset, |(offset, _)| *offset);
            let outcome = if end >= page.top.offset {
                result["recovered"] = json!(true);
                RecoveryOutcome::Recovered
            } else {
                result["recovered"] = json!(false);
                result["replayed_to"] = json!(end);
                RecoveryOutcome::Partial
            };
            let replay = messages.into_iter().map(|(_, frame)| frame).collect();
            (Some(outcome), replay)
        }
    };
    let resume = Resume {
        channel: channel.into(),
        offset: page.top.offset,
        epoch: page.top.epoch.as_str().into(),
    };
    Ok(Recovery {
        result,
        outcome,
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

    /// A budget every test page fits in.
    const BUDGET: usize = 1 << 20;

    /// What one of the test frames (`m8`, `m9`, `m10`: 2 or 3 bytes)
    /// costs against a budget.
    fn cost(frame: &str) -> usize {
        history::frame_cost(frame.len())
    }

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
        let plain = query(None, BUDGET);
        assert_eq!((plain.limit, plain.max_bytes), (1, None));
        let since = Position::new(3, "e");
        let read = query(Some(since.clone()), BUDGET);
        assert_eq!(
            (read.limit, read.since, read.max_bytes),
            (MAX_HISTORY_SIZE, Some(since), Some(BUDGET)),
            "what the client missed, read up to the send queue's cap"
        );
    }

    #[test]
    fn without_since_only_the_position() {
        let recovery = recover("chat:a", None, page(&[10]), BUDGET).unwrap();
        assert_eq!(recovery.result, json!({ "offset": 10, "epoch": "e" }));
        assert_eq!(recovery.outcome, None);
        assert!(
            recovery.replay.is_empty(),
            "a plain subscribe replays nothing"
        );
    }

    #[test]
    fn a_since_the_stream_continues_is_recovered_and_replayed() {
        let since = Position::new(7, "e");
        let recovery = recover("chat:a", Some(&since), page(&[8, 9, 10]), BUDGET).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": true })
        );
        assert_eq!(recovery.outcome, Some(RecoveryOutcome::Recovered));
        assert_eq!(replayed(&recovery), ["m8", "m9", "m10"]);
        let at_top = recover("chat:a", Some(&Position::new(10, "e")), page(&[]), BUDGET).unwrap();
        assert_eq!(
            at_top.outcome,
            Some(RecoveryOutcome::Recovered),
            "nothing missed"
        );
        assert!(at_top.replay.is_empty());
    }

    #[test]
    fn a_replay_over_the_budget_is_cut_and_the_reply_says_where() {
        let since = Position::new(7, "e");
        // Room for m8 and m9, one byte short of m10.
        let budget = cost("m8") + cost("m9") + cost("m10") - 1;
        let recovery = recover("chat:a", Some(&since), page(&[8, 9, 10]), budget).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false, "replayed_to": 9 }),
            "never recovered: true for a partial replay"
        );
        assert_eq!(recovery.outcome, Some(RecoveryOutcome::Partial));
        assert_eq!(replayed(&recovery), ["m8", "m9"]);

        let exact = recover("chat:a", Some(&since), page(&[8, 9, 10]), budget + 1).unwrap();
        assert_eq!(
            exact.outcome,
            Some(RecoveryOutcome::Recovered),
            "it just fits"
        );
        assert_eq!(replayed(&exact), ["m8", "m9", "m10"]);
    }

    #[test]
    fn a_replay_of_which_nothing_fits_says_it_ends_at_since() {
        let since = Position::new(7, "e");
        let recovery = recover("chat:a", Some(&since), page(&[8, 9, 10]), cost("m8") - 1).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false, "replayed_to": 7 })
        );
        assert_eq!(recovery.outcome, Some(RecoveryOutcome::Partial));
        assert!(recovery.replay.is_empty());
    }

    #[test]
    fn a_page_the_store_cut_at_the_budget_is_a_partial_replay() {
        // The store stopped after 8: the replay ends there, below the top.
        let since = Position::new(7, "e");
        let recovery = recover("chat:a", Some(&since), page(&[8]), BUDGET).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false, "replayed_to": 8 })
        );
        assert_eq!(replayed(&recovery), ["m8"]);
    }

    #[test]
    fn after_a_partial_replay_live_frames_above_the_reply_come_once() {
        let since = Position::new(7, "e");
        let recovery = recover("chat:a", Some(&since), page(&[8]), BUDGET).unwrap();
        let mut resumed = Vec::new();
        record(&mut resumed, recovery.resume);
        // 9 and 10 were queued live while the subscribe read history: the
        // reply's `replayed_to` and `offset` tell the client to page them
        // through `history`, so they are not written twice.
        assert!(!admit(&mut resumed, &delivery("chat:a", Some((9, "e")))));
        assert!(!admit(&mut resumed, &delivery("chat:a", Some((10, "e")))));
        assert!(admit(&mut resumed, &delivery("chat:a", Some((11, "e")))));
        assert!(admit(&mut resumed, &delivery("chat:a", Some((12, "e")))));
    }

    #[test]
    fn a_since_trimmed_or_in_an_older_epoch_is_not_recovered() {
        let trimmed = Position::new(2, "e");
        let recovery = recover("chat:a", Some(&trimmed), page(&[6, 7, 8, 9, 10]), BUDGET).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false })
        );
        assert!(recovery.replay.is_empty(), "offsets 3 to 5 are gone");
        let older = Position::new(9, "old");
        let recovery = recover("chat:a", Some(&older), page(&[6, 7, 8, 9, 10]), BUDGET).unwrap();
        assert_eq!(recovery.outcome, Some(RecoveryOutcome::NotRecovered));
        assert!(recovery.replay.is_empty(), "another epoch's offsets");
    }

    #[test]
    fn a_since_beyond_the_top_is_refused() {
        let since = Position::new(12, "e");
        let error = recover("chat:a", Some(&since), page(&[]), BUDGET).unwrap_err();
        assert_eq!(
            error,
            (
                ErrorCode::BadRequest,
                "since.offset 12 is beyond the channel's latest offset 10".to_owned()
            )
        );
        let other_epoch = Position::new(12, "f");
        assert!(
            recover("chat:a", Some(&other_epoch), page(&[]), BUDGET).is_ok(),
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
        let recovery = recover("chat:a", None, page(&[10]), BUDGET).unwrap();
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
            recover("chat:a", None, page(&[]), BUDGET).unwrap().resume,
        );
        assert!(admit(&mut resumed, &delivery("chat:a", Some((1, "f")))));
        assert!(resumed.is_empty());
    }

    #[test]
    fn a_channel_keeps_one_entry_until_forgotten() {
        let mut resumed = Vec::new();
        record(
            &mut resumed,
            recover("chat:a", None, page(&[]), BUDGET).unwrap().resume,
        );
        record(
            &mut resumed,
            recover("chat:a", None, page(&[]), BUDGET).unwrap().resume,
        );
        record(
            &mut resumed,
            recover("chat:b", None, page(&[]), BUDGET).unwrap().resume,
        );
        assert_eq!(resumed.len(), 2);
        forget(&mut resumed, "chat:a");
        assert_eq!(resumed.len(), 1);
        assert!(admit(&mut resumed, &delivery("chat:a", Some((1, "e")))));
    }
}
