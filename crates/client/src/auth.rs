//! Tokens for a [`crate::Client`]: the provider it asks for them, when it
//! refreshes a connection's token, and when it gives up on authentication.
//!
//! The schedule is plain arithmetic on instants (only the refresher's `due`
//! waits), so it is tested without sockets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::backoff::backoff_delay;

/// What a [`TokenProvider`] returns: a token, or why none could be had.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Hands out a fresh token (a JWT) each time it is called. The client calls
/// it before connecting and when the server's token runs out, so it should
/// return a new token, not a cached one close to expiry.
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// The soonest a refresh happens after the lifetime was announced, so a
/// server announcing tiny lifetimes cannot make the client spin.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// How long after learning a token's lifetime the client refreshes it:
/// about 80% of the lifetime, at least [`MIN_REFRESH_DELAY`].
pub fn refresh_delay(lifetime: Duration) -> Duration {
    // 80% as `lifetime - lifetime / 5`, which cannot overflow.
    (lifetime - lifetime / 5).max(MIN_REFRESH_DELAY)
}

/// `now + delay`, or `None` when that is too far to represent: an absurd
/// lifetime from the server means "never", not a panic.
fn after(now: Instant, delay: Duration) -> Option<Instant> {
    now.checked_add(delay)
}

/// When to retry a failed refresh: after a backoff `delay`, if that is still
/// before the token expires; `None` means stop retrying (the server will
/// close the connection with 4001 and the client reconnects with a new token).
pub fn retry_at(now: Instant, delay: Duration, expires_at: Option<Instant>) -> Option<Instant> {
    let at = after(now, delay)?;
    match expires_at {
        Some(expires_at) if at >= expires_at => None,
        _ => Some(at),
    }
}

/// Counts consecutive authentication failures so the client gives up
/// instead of retrying forever with a bad or expired token.
#[derive(Debug)]
pub(crate) struct AuthFailures {
    max: u32,
    /// 401 refusals since the last connection that was welcomed.
    refusals: u32,
    /// Provider errors since its last token.
    provider_errors: u32,
}

impl AuthFailures {
    /// `max` failures in a row end the client (0 counts as 1).
    pub fn new(max: u32) -> AuthFailures {
        AuthFailures {
            max: max.max(1),
            refusals: 0,
            provider_errors: 0,
        }
    }

    /// Records a 401 refusal; `true` means give up. Only a welcomed
    /// connection clears the count: other failures in between (a 503, a
    /// network error) do not make a bad token good.
    pub fn refused(&mut self) -> bool {
        self.refusals = self.refusals.saturating_add(1);
        self.refusals >= self.max
    }

    /// A connection was welcomed: the token works.
    pub fn connected(&mut self) {
        self.refusals = 0;
    }

    /// Records a provider error; `true` means give up.
    pub fn provider_failed(&mut self) -> bool {
        self.provider_errors = self.provider_errors.saturating_add(1);
        self.provider_errors >= self.max
    }

    /// The provider returned a token.
    pub fn provider_succeeded(&mut self) {
        self.provider_errors = 0;
    }
}

/// The token a client connects with, while it has a provider.
#[derive(Debug, Default)]
pub(crate) struct CurrentToken {
    value: Option<String>,
    /// When the server said it expires (from the welcome or a refresh reply).
    expires_at: Option<Instant>,
}

impl CurrentToken {
    /// The token to connect with, unless a new one must be fetched first:
    /// there is none, it was refused, or it is known to have expired.
    pub fn usable(&self, now: Instant) -> Option<&str> {
        match self.expires_at {
            Some(expires_at) if now >= expires_at => None,
            _ => self.value.as_deref(),
        }
    }

    /// A token fresh from the provider; its lifetime is learned on connect.
    pub fn set(&mut self, token: String) {
        self.value = Some(token);
        self.expires_at = None;
    }

    /// The server refused the token or closed because it expired.
    pub fn discard(&mut self) {
        self.value = None;
        self.expires_at = None;
    }

    /// The server announced the token's lifetime.
    pub fn expires(&mut self, expires_at: Option<Instant>) {
        self.expires_at = expires_at;
    }
}

/// The refresh cycle of one connection.
enum State {
    /// No lifetime known, or retries ran out: nothing to do.
    Idle,
    /// Fetch a token at this instant.
    Waiting(Instant),
    /// Asking the provider.
    Fetching(TokenFuture),
    /// `refresh` sent with this id and token; awaiting its reply.
    Sent { id: u64, token: String },
}

/// Refreshes one connection's token before it expires: at about 80% of the
/// announced lifetime it fetches a token and has it sent as `refresh`; a
/// failure (provider error or error reply) is retried with backoff until
/// the token expires.
pub(crate) struct Refresher {
    provider: TokenProvider,
    state: State,
    expires_at: Option<Instant>,
    /// Failed refreshes in a row, for the backoff.
    attempt: u32,
    backoff: (Duration, Duration),
}

/// What the reply to a `refresh` meant.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refreshed {
    /// The token was accepted: connect with it from now on. `expires_at` is
    /// `None` when the reply named no lifetime.
    Accepted {
        token: String,
        expires_at: Option<Instant>,
    },
    /// The server refused it; a retry is scheduled if there is time left.
    Refused,
}

impl Refresher {
    pub fn new(provider: TokenProvider, backoff: (Duration, Duration)) -> Refresher {
        Refresher {
            provider,
            state: State::Idle,
            expires_at: None,
            attempt: 0,
            backoff,
        }
    }

    /// The server announced (at `now`) that the token lives `expires_in`
    /// seconds more (`None`: it never expires). Returns the expiry instant.
    pub fn lifetime(&mut self, now: Instant, expires_in: Option<u64>) -> Option<Instant> {
        self.attempt = 0;
        let Some(secs) = expires_in else {
            self.expires_at = None;
            self.state = State::Idle;
            return None;
        };
        let lifetime = Duration::from_secs(secs);
        self.expires_at = after(now, lifetime);
        self.state = match after(now, refresh_delay(lifetime)) {
            Some(at) => State::Waiting(at),
            None => State::Idle,
        };
        self.expires_at
    }

    /// When the next fetch is due, if one is scheduled (for tests).
    #[cfg(test)]
    pub fn next_fetch(&self) -> Option<Instant> {
        match self.state {
            State::Waiting(at) => Some(at),
            _ => None,
        }
    }

    /// Waits until a refresh must be sent and returns its token, or until a
    /// fetch failed (retry already scheduled) and returns the error. Pending
    /// forever while there is nothing to do. Cancel-safe: a fetch in progress
    /// lives in `self` and continues on the next call.
    pub async fn due(&mut self) -> Result<String, String> {
        loop {
            match &mut self.state {
                State::Idle | State::Sent { .. } => std::future::pending::<()>().await,
                State::Waiting(at) => {
                    tokio::time::sleep_until(*at).await;
                    self.state = State::Fetching((self.provider)());
                }
                State::Fetching(fetch) => {
                    let fetched = fetch.await;
                    // Never poll the finished fetch again; `sent` follows a token.
                    self.state = State::Idle;
                    if fetched.is_err() {
                        self.failed(Instant::now());
                    }
                    return fetched;
                }
            }
        }
    }

    /// The `refresh` carrying `token` was sent with command id `id`.
    pub fn sent(&mut self, id: u64, token: String) {
        self.state = State::Sent { id, token };
    }

    /// Whether `id` is the pending refresh.
    pub fn awaits(&self, id: u64) -> bool {
        matches!(self.state, State::Sent { id: sent, .. } if sent == id)
    }

    /// Applies the reply (at `now`) to the pending refresh; `result` is the
    /// reply's result, or `None` for an error reply. `None` if `id` is not
    /// the pending refresh.
    pub fn replied(&mut self, id: u64, now: Instant, result: Option<&Value>) -> Option<Refreshed> {
        if !self.awaits(id) {
            return None;
        }
        let State::Sent { token, .. } = std::mem::replace(&mut self.state, State::Idle) else {
            return None;
        };
        let Some(result) = result else {
            self.failed(now);
            return Some(Refreshed::Refused);
        };
        #[derive(Deserialize)]
        struct Reply {
            expires_in: Option<u64>,
        }
        let expires_in = Reply::deserialize(result).ok().and_then(|r| r.expires_in);
        if expires_in.is_none() {
            tracing::warn!(%result, "refresh reply without expires_in; not refreshing again");
        }
        let expires_at = self.lifetime(now, expires_in);
        Some(Refreshed::Accepted { token, expires_at })
    }

    /// A refresh failed at `now`: retry after a backoff while the token lives.
    fn failed(&mut self, now: Instant) {
        let (min, max) = self.backoff;
        let delay = backoff_delay(self.attempt, min, max, &mut rand::rng());
        self.attempt = self.attempt.saturating_add(1);
        self.state = match retry_at(now, delay, self.expires_at) {
            Some(at) => State::Waiting(at),
            None => {
                tracing::warn!("token refresh failed; no time left to retry before it expires");
                State::Idle
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn refreshes_at_80_percent_and_never_sooner_than_a_second() {
        assert_eq!(refresh_delay(100 * S), 80 * S);
        assert_eq!(refresh_delay(3600 * S), 2880 * S);
        assert_eq!(refresh_delay(5 * S), 4 * S);
        assert_eq!(refresh_delay(S), S);
        assert_eq!(refresh_delay(Duration::ZERO), S);
        assert_eq!(refresh_delay(Duration::from_millis(1100)), S);
        // Absurd lifetimes do not overflow.
        assert_eq!(
            refresh_delay(Duration::MAX),
            Duration::MAX - Duration::MAX / 5
        );
    }

    #[test]
    fn retries_only_before_expiry() {
        let now = Instant::now();
        assert_eq!(retry_at(now, S, Some(now + 10 * S)), Some(now + S));
        assert_eq!(retry_at(now, 10 * S, Some(now + 10 * S)), None);
        assert_eq!(retry_at(now, 11 * S, Some(now + 10 * S)), None);
        assert_eq!(retry_at(now, S, None), Some(now + S));
        assert_eq!(retry_at(now, Duration::MAX, None), None);
    }

    #[test]
    fn gives_up_after_max_consecutive_failures() {
        let mut failures = AuthFailures::new(3);
        assert!(!failures.refused());
        assert!(!failures.refused());
        failures.connected();
        assert!(!failures.refused());
        assert!(!failures.refused());
        assert!(failures.refused(), "third in a row");

        assert!(!failures.provider_failed());
        failures.provider_succeeded();
        assert!(!failures.provider_failed());
        assert!(!failures.provider_failed());
        assert!(failures.provider_failed());

        let mut strict = AuthFailures::new(0);
        assert!(strict.refused(), "0 counts as 1");
    }

    #[test]
    fn current_token_is_dropped_once_expired() {
        let now = Instant::now();
        let mut token = CurrentToken::default();
        assert_eq!(token.usable(now), None);
        token.set("t1".into());
        assert_eq!(token.usable(now), Some("t1"));
        token.expires(Some(now + S));
        assert_eq!(token.usable(now), Some("t1"));
        assert_eq!(token.usable(now + S), None, "expired");
        token.discard();
        assert_eq!(token.usable(now), None);
    }

    fn counting_provider() -> (TokenProvider, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider: TokenProvider = Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                if n == 2 {
                    Err("provider down".to_owned())
                } else {
                    Ok(format!("t{n}"))
                }
            })
        });
        (provider, calls)
    }

    #[test]
    fn schedules_from_each_announced_lifetime() {
        let (provider, _) = counting_provider();
        let mut refresher = Refresher::new(provider, (S, 10 * S));
        let now = Instant::now();
        assert_eq!(refresher.lifetime(now, None), None);
        assert_eq!(refresher.next_fetch(), None);
        assert_eq!(refresher.lifetime(now, Some(100)), Some(now + 100 * S));
        assert_eq!(refresher.next_fetch(), Some(now + 80 * S));
        assert_eq!(refresher.lifetime(now, Some(u64::MAX)), None, "never");
        assert_eq!(refresher.next_fetch(), None);

        refresher.sent(7, "t".into());
        assert!(refresher.awaits(7) && !refresher.awaits(8));
        assert_eq!(refresher.replied(8, now, Some(&json!({}))), None);
        let later = now + 50 * S;
        assert_eq!(
            refresher.replied(7, later, Some(&json!({"expires_in": 10}))),
            Some(Refreshed::Accepted {
                token: "t".into(),
                expires_at: Some(later + 10 * S)
            })
        );
        assert_eq!(refresher.next_fetch(), Some(later + 8 * S));
        assert_eq!(refresher.replied(7, later, None), None, "answered once");

        // An error reply retries within the backoff cap (1 s), before expiry.
        refresher.sent(9, "u".into());
        assert_eq!(refresher.replied(9, later, None), Some(Refreshed::Refused));
        let retry = refresher.next_fetch().unwrap();
        assert!(retry >= later && retry <= later + S, "{retry:?}");
        // Too close to expiry: no retry; the server's 4001 close follows.
        refresher.sent(10, "v".into());
        refresher.replied(10, later + 10 * S, None);
        assert_eq!(refresher.next_fetch(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn due_fetches_when_scheduled_and_retries_provider_errors() {
        let (provider, calls) = counting_provider();
        let mut refresher = Refresher::new(provider, (S, 10 * S));
        let start = Instant::now();
        refresher.lifetime(start, Some(10));
        assert_eq!(refresher.due().await, Ok("t1".into()));
        assert_eq!(Instant::now() - start, 8 * S);
        refresher.sent(1, "t1".into());
        refresher.replied(1, Instant::now(), Some(&json!({"expires_in": 10})));
        let second = Instant::now();
        assert_eq!(refresher.due().await, Err("provider down".into()));
        assert_eq!(Instant::now() - second, 8 * S);
        assert_eq!(refresher.due().await, Ok("t3".into()), "retried");
        assert!(Instant::now() - second <= 9 * S);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        refresher.sent(2, "t3".into());
        let waiting = tokio::time::timeout(100 * S, refresher.due()).await;
        assert!(
            waiting.is_err(),
            "nothing due while a refresh awaits its reply"
        );
    }
}
