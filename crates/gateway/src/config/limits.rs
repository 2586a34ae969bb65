//! Admission and message-rate limits (`[limits]` and `max_connections`;
//! docs/security.md explains each): how fast and how many connections a
//! client address, a user and the node accept, and how many frames a
//! connection may send.
//!
//! Every limit is a whole number from 1 to 10,000,000.

use serde::Deserialize;

use crate::config::env::{check_range, env_parse, ConfigError, Env, Key};

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_CONN_RATE_PER_IP: u32 = 20;
pub const DEFAULT_CONN_BURST_PER_IP: u32 = 40;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 50;
pub const DEFAULT_MSG_RATE: u32 = 50;
pub const DEFAULT_MSG_BURST: u32 = 100;
pub const DEFAULT_MSG_CLOSE_AFTER: u32 = 50;

const MAX_CONNECTIONS: Key = Key::new("max_connections", "SWITCHBOARD_MAX_CONNECTIONS");
const CONN_RATE_PER_IP: Key = Key::new("limits.conn_rate_per_ip", "SWITCHBOARD_CONN_RATE_PER_IP");
const CONN_BURST_PER_IP: Key =
    Key::new("limits.conn_burst_per_ip", "SWITCHBOARD_CONN_BURST_PER_IP");
const MAX_CONNECTIONS_PER_IP: Key = Key::new(
    "limits.max_connections_per_ip",
    "SWITCHBOARD_MAX_CONNECTIONS_PER_IP",
);
const MAX_CONNECTIONS_PER_USER: Key = Key::new(
    "limits.max_connections_per_user",
    "SWITCHBOARD_MAX_CONNECTIONS_PER_USER",
);
const MSG_RATE: Key = Key::new("limits.msg_rate", "SWITCHBOARD_MSG_RATE");
const MSG_BURST: Key = Key::new("limits.msg_burst", "SWITCHBOARD_MSG_BURST");
const MSG_CLOSE_AFTER: Key = Key::new("limits.msg_close_after", "SWITCHBOARD_MSG_CLOSE_AFTER");

/// Admission and message-rate limits (docs/security.md explains each).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// New connections per second per client IP (token bucket refill).
    pub conn_rate_per_ip: u32,
    /// New connections a client IP may open at once (bucket size).
    pub conn_burst_per_ip: u32,
    /// Concurrent connections per client IP on this node.
    pub max_connections_per_ip: usize,
    /// Concurrent connections per user, counted over the whole cluster.
    pub max_connections_per_user: usize,
    /// Client frames per second per connection (bucket refill).
    pub msg_rate: u32,
    /// Client frames a connection may send at once (bucket size).
    pub msg_burst: u32,
    /// Rate-limited frames tolerated in a burst (refilling at `msg_rate`)
    /// before the connection is closed with 1008.
    pub msg_close_after: u32,
}

/// The `[limits]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    conn_rate_per_ip: Option<u32>,
    conn_burst_per_ip: Option<u32>,
    max_connections_per_ip: Option<usize>,
    max_connections_per_user: Option<usize>,
    msg_rate: Option<u32>,
    msg_burst: Option<u32>,
    msg_close_after: Option<u32>,
}

/// Concurrent connections on this node.
pub(super) fn max_connections(
    env: &dyn Env,
    from_file: Option<usize>,
) -> Result<usize, ConfigError> {
    let max_connections = env_parse(env, &MAX_CONNECTIONS, "a whole number")?
        .or(from_file)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    check_range(&MAX_CONNECTIONS, max_connections, 1, 10_000_000)
}

/// The `[limits]` settings.
pub(super) fn limits_config(env: &dyn Env, file: FileLimits) -> Result<LimitsConfig, ConfigError> {
    let rate = |key: &Key, file: Option<u32>, default: u32| {
        let value = env_parse(env, key, "a whole number")?
            .or(file)
            .unwrap_or(default);
        check_range(key, value, 1, 10_000_000)
    };
    let cap = |key: &Key, file: Option<usize>, default: usize| {
        let value = env_parse(env, key, "a whole number")?
            .or(file)
            .unwrap_or(default);
        check_range(key, value, 1, 10_000_000)
    };
    Ok(LimitsConfig {
        conn_rate_per_ip: rate(
            &CONN_RATE_PER_IP,
            file.conn_rate_per_ip,
            DEFAULT_CONN_RATE_PER_IP,
        )?,
        conn_burst_per_ip: rate(
            &CONN_BURST_PER_IP,
            file.conn_burst_per_ip,
            DEFAULT_CONN_BURST_PER_IP,
        )?,
        max_connections_per_ip: cap(
            &MAX_CONNECTIONS_PER_IP,
            file.max_connections_per_ip,
            DEFAULT_MAX_CONNECTIONS_PER_IP,
        )?,
        max_connections_per_user: cap(
            &MAX_CONNECTIONS_PER_USER,
            file.max_connections_per_user,
            DEFAULT_MAX_CONNECTIONS_PER_USER,
        )?,
        msg_rate: rate(&MSG_RATE, file.msg_rate, DEFAULT_MSG_RATE)?,
        msg_burst: rate(&MSG_BURST, file.msg_burst, DEFAULT_MSG_BURST)?,
        msg_close_after: rate(
            &MSG_CLOSE_AFTER,
            file.msg_close_after,
            DEFAULT_MSG_CLOSE_AFTER,
        )?,
    })
}
