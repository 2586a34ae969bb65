//! A session's moments in 8 bytes instead of a `tokio::time::Instant`'s 16.
//!
//! A session keeps seven of them (token expiry, next ping, pong deadline,
//! drain, last write and the two rate buckets), in the one box every
//! connection holds: as [`Moment`]s they take 56 bytes less, which is what
//! brings the box under jemalloc's 640-byte size class (see the
//! `the_session_state_stays_small` test).
//!
//! A [`Moment`] is nanoseconds since a process-wide base `Instant`, so it
//! converts to and from tokio's `Instant` exactly (no rounding: the rate
//! limiter's intervals are nanoseconds of `1s / msg_rate`, and a timer
//! woken at `m.instant()` always finds `Moment::now() >= m`). It is
//! non-zero, so an `Option<Moment>` is 8 bytes too. Arithmetic saturates:
//! `u64` nanoseconds reach 584 years past the base, and a moment further
//! out (a token expiring centuries from now) is "never" either way.
//!
//! The base is taken at first use, one day before that `Instant::now()`
//! (tokio's paused clock, in tests, may run behind a clock read by an
//! earlier test); an `Instant` before the base saturates to the base rather
//! than panicking or wrapping.

use std::num::NonZeroU64;
use std::ops::Add;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// How long before its first use the base is.
const BASE_LEAD: Duration = Duration::from_secs(24 * 60 * 60);

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(BASE_LEAD).unwrap_or(now)
    })
}

/// A moment, as nanoseconds since the process's base `Instant` (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(NonZeroU64);

impl Moment {
    pub fn now() -> Moment {
        Moment::from_instant(Instant::now())
    }

    /// `at`, saturating at the base (and 584 years past it).
    pub fn from_instant(at: Instant) -> Moment {
        Moment::from_nanos(saturating_nanos(at.saturating_duration_since(base())))
    }

    fn from_nanos(nanos: u64) -> Moment {
        Moment(NonZeroU64::new(nanos).unwrap_or(NonZeroU64::MIN))
    }

    /// This moment as tokio's `Instant` (for a timer).
    pub fn instant(self) -> Instant {
        base() + Duration::from_nanos(self.0.get())
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn saturating_duration_since(self, earlier: Moment) -> Duration {
        Duration::from_nanos(self.0.get().saturating_sub(earlier.0.get()))
    }
}

impl Add<Duration> for Moment {
    type Output = Moment;

    /// Saturates 584 years past the base.
    fn add(self, duration: Duration) -> Moment {
        Moment(self.0.saturating_add(saturating_nanos(duration)))
    }
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_is_eight_bytes_even_as_an_option() {
        assert_eq!(std::mem::size_of::<Moment>(), 8);
        assert_eq!(std::mem::size_of::<Option<Moment>>(), 8);
    }

    #[test]
    fn moments_convert_to_and_from_instants_exactly() {
        let now = Instant::now();
        let moment = Moment::from_instant(now);
        assert_eq!(moment.instant(), now);
        assert_eq!(Moment::from_instant(moment.instant()), moment);
        let later = moment + Duration::from_nanos(333);
        assert_eq!(later.instant(), now + Duration::from_nanos(333));
        assert_eq!(
            later.saturating_duration_since(moment),
            Duration::from_nanos(333)
        );
        assert_eq!(moment.saturating_duration_since(later), Duration::ZERO);
        assert!(later > moment);
    }

    #[test]
    fn moments_saturate_instead_of_panicking() {
        let far = Moment::now() + Duration::MAX;
        assert_eq!(far, Moment(NonZeroU64::MAX));
        assert_eq!(far + Duration::from_secs(1), far);
        let early = base().checked_sub(Duration::from_secs(1));
        if let Some(early) = early {
            assert_eq!(Moment::from_instant(early), Moment(NonZeroU64::MIN));
        }
    }
}
