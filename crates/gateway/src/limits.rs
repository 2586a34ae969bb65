//! Admission limits, decided before any JWT work: how fast one client
//! address may open connections (a token bucket), and how many connections
//! one address and one user may hold at once on this node. Who the client
//! is (the peer, or the address a trusted proxy forwarded) is decided by
//! `config::proxies`. Also the admin UI's login attempts per address
//! ([`LoginAttempts`]), a bucket of the same kind, so guessing the admin
//! key costs a minute per five guesses.
//!
//! The buckets are governor's GCRA limiters; the concurrent counts are plain
//! maps of counters released by RAII guards, because no crate counts
//! "currently held" per key with a guard. The cluster-wide per-user count
//! lives in Redis (`RedisPresence::connected`); the local one here backs it
//! up when Redis is away and is the whole check in single-node mode.
//!
//! The per-user map is also where a cluster node's occupancy reads a
//! user's connections ([`UserSessions`]): beside the admission slots each
//! entry counts the user's running sessions (from the hub's register to
//! its unregister, as occupancy reports them), in the same 8 bytes the
//! slot count took alone, so no second map of users exists.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::limits::LimitsConfig;
use crate::occupancy::UserSessions;

/// Why admission refused a connection, with when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// The address opened connections faster than its bucket allows.
    ConnectionRate { retry_after: Duration },
    /// The address holds its maximum of concurrent connections.
    AddressConnections { max: usize },
    /// The user holds its maximum of concurrent connections.
    UserConnections { max: usize },
}

impl Limited {
    /// The stable reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Limited::ConnectionRate { .. } => "ip_rate",
            Limited::AddressConnections { .. } => "ip_connections",
            Limited::UserConnections { .. } => "user_connections",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Limited::ConnectionRate { .. } => {
                "too many new connections from this address; retry later".to_owned()
            }
            Limited::AddressConnections { max } => {
                format!("this address already holds {max} connections")
            }
            Limited::UserConnections { max } => {
                format!("this user already holds {max} connections")
            }
        }
    }

    /// Whole seconds for `Retry-After`, at least one.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Limited::ConnectionRate { retry_after } => retry_after_secs(*retry_after),
            // Held connections free up when someone disconnects; a short
            // wait with the client's own backoff is the best hint we have.
            _ => 5,
        }
    }
}

/// One key's counts; the entry goes when both are zero.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Units held through [`Held`] guards.
    held: u32,
    /// Sessions running (users on a cluster node only; see [`UserSessions`]).
    running: u32,
}

/// Counts held per key; a [`Held`] guard gives its unit back when dropped.
#[derive(Debug)]
pub struct Counts<K: Eq + Hash> {
    held: Mutex<HashMap<K, Tally>>,
}

impl<K: Eq + Hash> Counts<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Tally>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Eq + Hash + Clone> Counts<K> {
    fn new() -> Arc<Counts<K>> {
        Arc::new(Counts {
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one unit for `key` unless it already holds `max`.
    fn try_hold(self: &Arc<Self>, key: K, max: usize) -> Option<Held<K>> {
        let mut held = self.lock();
        let tally = held.entry(key.clone()).or_default();
        if tally.held as usize >= max {
            if tally.held == 0 && tally.running == 0 {
                held.remove(&key);
            }
            return None;
        }
        tally.held += 1;
        Some(Held {
            counts: Arc::clone(self),
            key,
        })
    }

    /// How many units `key` holds.
    pub fn held(&self, key: &K) -> usize {
        self.lock().get(key).map_or(0, |tally| tally.held as usize)
    }

    /// Keys holding at least one unit or running a session (the map never
    /// keeps zeros).
    pub fn keys(&self) -> usize {
        self.lock().len()
    }
}

/// A user's running sessions, kept in the admission entry the user holds
/// anyway (a running session holds its user slot until it is dropped, after
/// occupancy's last report).
impl UserSessions for Counts<Arc<str>> {
    fn add_running(&self, user: &Arc<str>, delta: i32) {
        let mut held = self.lock();
        let tally = held.entry(Arc::clone(user)).or_default();
        tally.running = tally.running.saturating_add_signed(delta);
        if tally.held == 0 && tally.running == 0 {
            held.remove(user);
        }
    }

    fn running(&self, user: &str) -> u32 {
        self.lock().get(user).map_or(0, |tally| tally.running)
    }

    fn running_users(&self) -> Vec<Arc<str>> {
        self.lock()
            .iter()
            .filter(|(_, tally)| tally.running > 0)
            .map(|(user, _)| Arc::clone(user))
            .collect()
    }
}

/// One unit of a [`Counts`], returned on drop.
#[derive(Debug)]
pub struct Held<K: Eq + Hash> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self.counts.lock();
        if let Some(tally) = held.get_mut(&self.key) {
            tally.held = tally.held.saturating_sub(1);
            if tally.held == 0 && tally.running == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// What an admitted connection holds until it closes.
#[derive(Debug)]
pub struct Slots {
    _address: Held<IpAddr>,
    _user: Option<Held<Arc<str>>>,
}

/// Login attempts an address may make in a burst before it waits.
pub const LOGIN_BURST: u32 = 5;
/// How long an address waits for each further attempt.
pub const LOGIN_REFILL: Duration = Duration::from_secs(12);

/// The admin UI's login attempts per client address: a token bucket of
/// [`LOGIN_BURST`], one back every [`LOGIN_REFILL`].
///
/// Every attempt takes a token before the key is compared, right or
/// wrong: an address that spent its bucket is refused even the right key,
/// because a 429 that a right guess escaped would tell the guesser which
/// guess was right. Operators log in a few times a day, so the tokens a
/// right key takes cost nobody anything.
pub struct LoginAttempts {
    rate: DefaultKeyedRateLimiter<IpAddr>,
    started: Instant,
    last_forget_ms: AtomicU64,
}

impl std::fmt::Debug for LoginAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempts").finish_non_exhaustive()
    }
}

impl Default for LoginAttempts {
    fn default() -> LoginAttempts {
        let quota = Quota::with_period(LOGIN_REFILL)
            .unwrap_or_else(|| Quota::per_minute(non_zero(5)))
            .allow_burst(non_zero(LOGIN_BURST));
        LoginAttempts {
            rate: RateLimiter::keyed(quota),
            started: Instant::now(),
            last_forget_ms: AtomicU64::new(0),
        }
    }
}

impl LoginAttempts {
    /// Takes one attempt for `ip`; `Err` with how long to wait when its
    /// bucket is empty.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Duration> {
        forget_idle(&self.rate, self.started, &self.last_forget_ms);
        self.rate
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Whole seconds for a `Retry-After` of `wait`, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// How often idle addresses are dropped from the rate limiter's map.
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// The node's admission limits.
pub struct ConnectionLimits {
    config: LimitsConfig,
    rate: DefaultKeyedRateLimiter<IpAddr>,
    addresses: Arc<Counts<IpAddr>>,
    users: Arc<Counts<Arc<str>>>,
    /// The admin UI's login attempts.
    pub logins: LoginAttempts,
    started: Instant,
    last_forget_ms: AtomicU64,
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn non_zero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

impl ConnectionLimits {
    pub fn new(config: &LimitsConfig) -> ConnectionLimits {
        let quota = Quota::per_second(non_zero(config.conn_rate_per_ip))
            .allow_burst(non_zero(config.conn_burst_per_ip));
        ConnectionLimits {
            config: config.clone(),
            rate: RateLimiter::keyed(quota),
            addresses: Counts::new(),
            users: Counts::new(),
            logins: LoginAttempts::default(),
            started: Instant::now(),
            last_forget_ms: AtomicU64::new(0),
        }
    }

    /// The address checks: the connection-rate bucket, then the concurrent
    /// cap. Runs before the token is even parsed.
    pub fn admit_address(&self, ip: IpAddr) -> Result<Held<IpAddr>, Limited> {
        self.forget_idle();
        if let Err(not_until) = self.rate.check_key(&ip) {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Limited::ConnectionRate { retry_after });
        }
        let max = self.config.max_connections_per_ip;
        self.addresses
            .try_hold(ip, max)
            .ok_or(Limited::AddressConnections { max })
    }

    /// The user's cap on this node (the cluster-wide count is Redis's).
    pub fn admit_user(&self, address: Held<IpAddr>, user: &Arc<str>) -> Result<Slots, Limited> {
        let max = self.config.max_connections_per_user;
        let user = self
            .users
            .try_hold(Arc::clone(user), max)
            .ok_or(Limited::UserConnections { max })?;
        Ok(Slots {
            _address: address,
            _user: Some(user),
        })
    }

    /// The per-user map, where a cluster node's occupancy also counts
    /// each user's running sessions.
    pub fn users(&self) -> Arc<Counts<Arc<str>>> {
        Arc::clone(&self.users)
    }

    pub fn max_connections_per_user(&self) -> usize {
        self.config.max_connections_per_user
    }

    /// Connections held by one address on this node.
    pub fn held_by_address(&self, ip: IpAddr) -> usize {
        self.addresses.held(&ip)
    }

    /// Drops buckets that are full again (their addresses went quiet), at
    /// most once per [`FORGET_EVERY`], so a scan of the whole internet does
    /// not grow the map for ever.
    fn forget_idle(&self) {
        forget_idle(&self.rate, self.started, &self.last_forget_ms);
    }
}

/// Drops a limiter's buckets that are full again (their addresses went
/// quiet), at most once per [`FORGET_EVERY`].
fn forget_idle(
    rate: &DefaultKeyedRateLimiter<IpAddr>,
    started: Instant,
    last_forget_ms: &AtomicU64,
) {
    let now = started.elapsed().as_millis() as u64;
    let last = last_forget_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) < FORGET_EVERY.as_millis() as u64 {
        return;
    }
    if last_forget_ms
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        rate.retain_recent();
        rate.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, per_ip: usize, per_user: usize) -> LimitsConfig {
        LimitsConfig {
            conn_rate_per_ip: rate,
            conn_burst_per_ip: burst,
            max_connections_per_ip: per_ip,
            max_connections_per_user: per_user,
            msg_rate: 10,
            msg_burst: 10,
            msg_close_after: 10,
        }
    }

    #[test]
    fn connection_rate_bucket_per_address() {
        let admission = ConnectionLimits::new(&limits(1, 3, 100, 100));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..3)
            .map(|_| admission.admit_address(a).unwrap())
            .collect();
        match admission.admit_address(a) {
            Err(limited @ Limited::ConnectionRate { .. }) => {
                assert_eq!(limited.retry_after_secs(), 1);
                assert_eq!(limited.reason(), "ip_rate");
            }
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        assert!(
            admission.admit_address(b).is_ok(),
            "buckets are per address"
        );
        assert_eq!(admission.held_by_address(a), 3);
        drop(held);
        assert_eq!(admission.held_by_address(a), 0);
    }

    #[test]
    fn five_login_attempts_then_a_wait_of_about_twelve_seconds() {
        let logins = LoginAttempts::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..LOGIN_BURST {
            assert!(logins.attempt(a).is_ok());
        }
        let wait = logins.attempt(a).unwrap_err();
        assert!(wait <= LOGIN_REFILL, "{wait:?}");
        assert!(retry_after_secs(wait) >= 1);
        assert!(
            logins.attempt("192.0.2.2".parse().unwrap()).is_ok(),
            "buckets are per address"
        );
    }

    #[test]
    fn concurrent_caps_release_on_drop() {
        let admission = ConnectionLimits::new(&limits(1000, 1000, 2, 1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let alice: Arc<str> = Arc::from("alice");
        let first = admission.admit_address(ip).unwrap();
        let second = admission.admit_address(ip).unwrap();
        assert_eq!(
            admission.admit_address(ip).unwrap_err(),
            Limited::AddressConnections { max: 2 }
        );
        let slots = admission.admit_user(first, &alice).unwrap();
        assert_eq!(
            admission.admit_user(second, &alice).unwrap_err(),
            Limited::UserConnections { max: 1 }
        );
        // The refused user's address slot went back with it.
        assert_eq!(admission.held_by_address(ip), 1);
        drop(slots);
        assert_eq!(admission.held_by_address(ip), 0);
        assert_eq!(admission.users.keys(), 0, "no zero counts are kept");
        let again = admission.admit_address(ip).unwrap();
        assert!(admission.admit_user(again, &alice).is_ok());
    }

    #[test]
    fn running_sessions_share_the_users_entries() {
        let admission = ConnectionLimits::new(&limits(1000, 1000, 10, 10));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let alice: Arc<str> = Arc::from("alice");
        let users = admission.users();
        let slots = admission
            .admit_user(admission.admit_address(ip).unwrap(), &alice)
            .unwrap();
        assert_eq!(users.running("alice"), 0, "admitted, not running yet");
        users.add_running(&alice, 1);
        assert_eq!(users.running("alice"), 1);
        assert_eq!(users.running_users(), [Arc::clone(&alice)]);
        assert_eq!(users.keys(), 1, "one entry for both counts");
        users.add_running(&alice, -1);
        assert_eq!(users.keys(), 1, "the slot is still held");
        drop(slots);
        assert_eq!(users.keys(), 0, "no zero counts are kept");
        assert!(users.running_users().is_empty());
    }
}
