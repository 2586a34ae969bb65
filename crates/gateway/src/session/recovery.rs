//! Recovery: what a `subscribe` answers on a channel with history, and which
//! frames the client gets after the reply.
//!
//! A `subscribe` on a channel with history joins the hub first, then reads
//! the channel's history, answers with the position it read and (with
//! `since`) writes the missed messages right after the reply. Live frames
//! queued meanwhile that the reply's position already covers are dropped
//! when they come off the queue ([`Resume`], kept in the subscription's
//! entry by `subscriptions`), so the client sees every message after its
//! `since` exactly once, in order.
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
use crate::metrics::history::RecoveryOutcome;

/// What the reply of a subscribe on a channel with history covered: live
/// frames of the channel at or below `offset` in `epoch` were queued before
/// it and are dropped ([`Resume::covers`]). The subscription's entry holds
/// it until the first frame beyond (`session::subscriptions`). 24 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    offset: u64,
    epoch: Epoch,
}

/// A stream's epoch, held compactly: one made by `history::new_epoch`
/// (exactly 16 lowercase hex digits) as its value, any other (older data,
/// other writers) as written. A string is `Hex` only when it is that
/// value's one spelling, so comparing with an epoch string stays exact.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Epoch {
    Hex(u64),
    /// Boxed twice (a thin pointer) so the enum is 16 bytes; rare.
    Text(Box<Box<str>>),
}

impl Epoch {
    fn new(epoch: &str) -> Epoch {
        match hex_epoch(epoch) {
            Some(value) => Epoch::Hex(value),
            None => Epoch::Text(Box::new(epoch.into())),
        }
    }

    /// Whether this is the epoch spelled `epoch`.
    fn is(&self, epoch: &str) -> bool {
        match self {
            Epoch::Hex(value) => hex_epoch(epoch) == Some(*value),
            Epoch::Text(text) => ***text == *epoch,
        }
    }
}

/// The value of an epoch spelled as `new_epoch` spells them: 16 lowercase
/// hex digits, nothing else (no sign, no upper case, no other length).
fn hex_epoch(epoch: &str) -> Option<u64> {
    let hex = epoch.len() == 16
        && epoch
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return None;
    }
    u64::from_str_radix(epoch, 16).ok()
}

impl Resume {
    /// What a reply at `offset` of `epoch` covers.
    pub fn new(offset: u64, epoch: &str) -> Resume {
        Resume {
            offset,
            epoch: Epoch::new(epoch),
        }
    }

    /// Whether a frame at `offset` of `epoch` is one the reply covered
    /// (dropped); the first one beyond ends the entry.
    pub fn covers(&self, offset: u64, epoch: &str) -> bool {
        self.epoch.is(epoch) && offset <= self.offset
    }
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
    let resume = Resume::new(page.top.offset, page.top.epoch.as_str());
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

#[cfg(test)]
mod tests {
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
        let recovery = recover(None, page(&[10]), BUDGET).unwrap();
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
        let recovery = recover(Some(&since), page(&[8, 9, 10]), BUDGET).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": true })
        );
        assert_eq!(recovery.outcome, Some(RecoveryOutcome::Recovered));
        assert_eq!(replayed(&recovery), ["m8", "m9", "m10"]);
        let at_top = recover(Some(&Position::new(10, "e")), page(&[]), BUDGET).unwrap();
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
        let recovery = recover(Some(&since), page(&[8, 9, 10]), budget).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false, "replayed_to": 9 }),
            "never recovered: true for a partial replay"
        );
        assert_eq!(recovery.outcome, Some(RecoveryOutcome::Partial));
        assert_eq!(replayed(&recovery), ["m8", "m9"]);

        let exact = recover(Some(&since), page(&[8, 9, 10]), budget + 1).unwrap();
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
        let recovery = recover(Some(&since), page(&[8, 9, 10]), cost("m8") - 1).unwrap();
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
        let recovery = recover(Some(&since), page(&[8]), BUDGET).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false, "replayed_to": 8 })
        );
        assert_eq!(replayed(&recovery), ["m8"]);
    }

    #[test]
    fn after_a_partial_replay_live_frames_above_the_reply_come_once() {
        let since = Position::new(7, "e");
        let recovery = recover(Some(&since), page(&[8]), BUDGET).unwrap();
        // 9 and 10 were queued live while the subscribe read history: the
        // reply's `replayed_to` and `offset` tell the client to page them
        // through `history`, so they are not written twice.
        assert_eq!(recovery.resume, Resume::new(10, "e"));
        assert!(recovery.resume.covers(9, "e"));
        assert!(recovery.resume.covers(10, "e"));
        assert!(!recovery.resume.covers(11, "e"));
    }

    #[test]
    fn a_since_trimmed_or_in_an_older_epoch_is_not_recovered() {
        let trimmed = Position::new(2, "e");
        let recovery = recover(Some(&trimmed), page(&[6, 7, 8, 9, 10]), BUDGET).unwrap();
        assert_eq!(
            recovery.result,
            json!({ "offset": 10, "epoch": "e", "recovered": false })
        );
        assert!(recovery.replay.is_empty(), "offsets 3 to 5 are gone");
        let older = Position::new(9, "old");
        let recovery = recover(Some(&older), page(&[6, 7, 8, 9, 10]), BUDGET).unwrap();
        assert_eq!(recovery.outcome, Some(RecoveryOutcome::NotRecovered));
        assert!(recovery.replay.is_empty(), "another epoch's offsets");
    }

    #[test]
    fn a_since_beyond_the_top_is_refused() {
        let since = Position::new(12, "e");
        let error = recover(Some(&since), page(&[]), BUDGET).unwrap_err();
        assert_eq!(
            error,
            (
                ErrorCode::BadRequest,
                "since.offset 12 is beyond the channel's latest offset 10".to_owned()
            )
        );
        let other_epoch = Position::new(12, "f");
        assert!(
            recover(Some(&other_epoch), page(&[]), BUDGET).is_ok(),
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

    #[test]
    fn a_reply_covers_its_position_in_its_epoch_only() {
        let resume = recover(None, page(&[10]), BUDGET).unwrap().resume;
        assert!(resume.covers(3, "e") && resume.covers(10, "e"));
        assert!(!resume.covers(11, "e"), "beyond the reply");
        assert!(!resume.covers(1, "f"), "another epoch's offsets");
    }

    #[test]
    fn epochs_new_epoch_makes_are_held_as_their_value() {
        let made = history::new_epoch();
        let resume = Resume::new(5, &made);
        assert!(matches!(resume.epoch, Epoch::Hex(_)));
        assert!(resume.covers(5, &made), "an exact round trip");
        assert_eq!(hex_epoch("00000000000000ff"), Some(255));
        assert_eq!(hex_epoch("ffffffffffffffff"), Some(u64::MAX));
        // Anything else is held as written, and compared as written.
        for other in [
            "e",
            "00000000000000FF",
            "+0000000000000ff",
            "0000000000000ff",
            "000000000000000ff",
            "00000000000000fg",
        ] {
            assert_eq!(hex_epoch(other), None, "{other}");
            let resume = Resume::new(5, other);
            assert!(matches!(resume.epoch, Epoch::Text(_)), "{other}");
            assert!(resume.covers(5, other), "{other}");
        }
        let hex = Resume::new(5, "00000000000000ff");
        for spelling in ["00000000000000FF", "+0000000000000ff", "ff", "255"] {
            assert!(!hex.covers(5, spelling), "{spelling} is another epoch");
        }
        let upper = Resume::new(5, "00000000000000FF");
        assert!(!upper.covers(5, "00000000000000ff"));
    }

    #[test]
    fn a_resume_stays_small() {
        // Held in every subscription's entry while its reply is pending.
        assert_eq!(std::mem::size_of::<Resume>(), 24);
        assert_eq!(std::mem::size_of::<Option<Resume>>(), 24);
    }
}
