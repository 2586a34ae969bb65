//! The client's message rate, decided without a clock read (the caller
//! passes `now`).
//!
//! Every frame the client sends (text, binary or ping) takes a token from a
//! per-connection bucket (`limits.msg_rate`, `limits.msg_burst`). A frame
//! over the rate gets a `rate_limited` error and is not executed; those
//! refusals take from a second bucket (`limits.msg_close_after`, refilling
//! at the same rate), and a client that empties it too, i.e. keeps sending
//! at more than twice its rate, is closed with 1008. Each message of a
//! `publish_batch` after its first takes a token too ([`Rate::take_message`]),
//! so a batch counts as many publishes as it holds.

use std::time::Duration;

use switchboard_protocol::{close, ErrorCode};

use super::clock::Moment;
use super::commands::Refusal;
use crate::config::Config;

/// The client's message-rate buckets, as two theoretical arrival times
/// (GCRA, the algorithm governor implements). Written by hand because a
/// governor direct limiter carries its own clock and quota, about 100 bytes
/// each (see the `session_state_stays_small` test), and every session held
/// two; the rate and bursts here come from the node's configuration. The
/// times are [`Moment`]s (8 bytes each, nanoseconds: exact for the
/// `1s / msg_rate` interval at any rate).
#[derive(Debug)]
pub struct Rate {
    commands: Moment,
    refusals: Moment,
}

/// What becomes of a frame the client sent, by its message rate.
#[derive(Debug, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate: run it.
    Run,
    /// Over the rate: not run; a command gets this error.
    Refuse(Refusal),
    /// Over the rate past the refusal allowance: close with this code and
    /// reason.
    Close(u16, String),
}

impl Rate {
    pub fn new(now: Moment) -> Rate {
        Rate {
            commands: now,
            refusals: now,
        }
    }

    /// Takes a frame the client sent at `now` from the buckets of
    /// `config.limits`.
    pub fn check(&mut self, now: Moment, config: &Config) -> RateVerdict {
        let limits = &config.limits;
        let per_second = limits.msg_rate;
        if Rate::take(&mut self.commands, now, per_second, limits.msg_burst) {
            return RateVerdict::Run;
        }
        if !Rate::take(&mut self.refusals, now, per_second, limits.msg_close_after) {
            return RateVerdict::Close(
                close::POLICY,
                format!("message rate limit of {per_second}/s exceeded persistently"),
            );
        }
        RateVerdict::Refuse((
            ErrorCode::RateLimited,
            format!("message rate limit of {per_second}/s exceeded; command not executed"),
        ))
    }

    /// Takes one more message of a `publish_batch` sent at `now` (the
    /// frame's own token paid for its first): a token from the command
    /// bucket, or the refusal that message gets. Such refusals do not count
    /// toward closing the connection: they are one frame's.
    pub fn take_message(&mut self, now: Moment, config: &Config) -> Result<(), Refusal> {
        let limits = &config.limits;
        let per_second = limits.msg_rate;
        if Rate::take(&mut self.commands, now, per_second, limits.msg_burst) {
            return Ok(());
        }
        Err((
            ErrorCode::RateLimited,
            format!("message rate limit of {per_second}/s exceeded; message not published"),
        ))
    }

    /// Takes one token from a bucket refilling at `per_second` and holding
    /// at most `burst`; false when it is empty.
    fn take(tat: &mut Moment, now: Moment, per_second: u32, burst: u32) -> bool {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        let tolerance = interval * burst.max(1);
        let start = (*tat).max(now);
        let next = start + interval;
        if next.saturating_duration_since(now) > tolerance {
            return false;
        }
        *tat = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// 10 frames/s with bursts of 3 and 2 refusals.
    fn config() -> Config {
        let env: HashMap<String, String> = [(
            "SWITCHBOARD_JWT_HS256_SECRET".to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
        )]
        .into_iter()
        .collect();
        let text = "[limits]\nmsg_rate = 10\nmsg_burst = 3\nmsg_close_after = 2\n";
        Config::from_toml(text, &env).unwrap()
    }

    #[test]
    fn rate_buckets_hold_a_burst_then_refill() {
        let now = Moment::now();
        let mut tat = now;
        for _ in 0..3 {
            assert!(Rate::take(&mut tat, now, 10, 3));
        }
        assert!(!Rate::take(&mut tat, now, 10, 3), "the burst is spent");
        let later = now + Duration::from_millis(100);
        assert!(Rate::take(&mut tat, later, 10, 3), "one token per 100 ms");
        assert!(!Rate::take(&mut tat, later, 10, 3));
    }

    #[test]
    fn frames_over_the_rate_are_refused_then_the_connection_closed() {
        let config = config();
        let now = Moment::now();
        let mut rate = Rate::new(now);
        for _ in 0..3 {
            assert_eq!(rate.check(now, &config), RateVerdict::Run, "the burst");
        }
        let refused = RateVerdict::Refuse((
            ErrorCode::RateLimited,
            "message rate limit of 10/s exceeded; command not executed".to_owned(),
        ));
        assert_eq!(rate.check(now, &config), refused);
        assert_eq!(rate.check(now, &config), refused);
        assert_eq!(
            rate.check(now, &config),
            RateVerdict::Close(
                close::POLICY,
                "message rate limit of 10/s exceeded persistently".to_owned()
            ),
            "past the refusal allowance"
        );
        let later = now + Duration::from_millis(100);
        assert_eq!(rate.check(later, &config), RateVerdict::Run, "refilled");
    }

    #[test]
    fn batch_messages_take_from_the_command_bucket_only() {
        let config = config();
        let now = Moment::now();
        let mut rate = Rate::new(now);
        assert_eq!(rate.check(now, &config), RateVerdict::Run, "the frame");
        assert_eq!(rate.take_message(now, &config), Ok(()));
        assert_eq!(rate.take_message(now, &config), Ok(()));
        let refused = Err((
            ErrorCode::RateLimited,
            "message rate limit of 10/s exceeded; message not published".to_owned(),
        ));
        for _ in 0..5 {
            assert_eq!(rate.take_message(now, &config), refused);
        }
        assert!(
            matches!(rate.check(now, &config), RateVerdict::Refuse(_)),
            "the refusal allowance is untouched: the next frame is refused, not closed"
        );
    }
}
