//! What a client command does, decided without a socket: the rules of the
//! contract that turn a command into the work a session runs, or into the
//! error its client gets.
//!
//! [`decide`] reads the token's grants, the session's subscriptions and the
//! node's configuration (namespace features, `session.max_channels`) and
//! returns an [`Effect`] for the session to run against the hub, the broker,
//! presence, history or the subscribe proxy, or a [`Refusal`]. The message
//! rate ([`Rate`]), a `refresh` ([`refresh`]) and the reply frame of a
//! command's result ([`reply_frame`]) are decided here too.
//!
//! Message rate: every frame the client sends (text, binary or ping) takes a
//! token from a per-connection bucket (`limits.msg_rate`, `limits.msg_burst`).
//! A frame over the rate gets a `rate_limited` error and is not executed;
//! those refusals take from a second bucket (`limits.msg_close_after`,
//! refilling at the same rate), and a client that empties it too, i.e. keeps
//! sending at more than twice its rate, is closed with 1008.
//!
//! Pure: no I/O, no node, no clock read (the caller passes `now`), so every
//! rule is tested here without a socket.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_protocol::position::MAX_HISTORY_LIMIT;
use switchboard_protocol::{close, ChannelName, Command, ErrorCode, Position, ServerFrame};
use tokio::time::Instant;

use crate::auth::{AuthError, Claims};
use crate::config::Config;
use crate::history::{self, HistoryQuery, DEFAULT_HISTORY_LIMIT};

/// Why a command was not run: the error code and message its client gets.
pub type Refusal = (ErrorCode, String);

/// What a command's verdict depends on about the session that sent it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub claims: &'a Claims,
    pub subscriptions: &'a [ChannelName],
}

impl Caller<'_> {
    /// Whether `presence` and `history` may read a channel: the token
    /// grants it, or the session subscribed to it (the backend allowed it).
    pub fn may_read(&self, channel: &ChannelName) -> bool {
        self.claims.channels.allows(channel.as_str()) || self.subscriptions.contains(channel)
    }
}

/// The work a command asks of the session once the rules allow it.
#[derive(Debug)]
pub enum Effect<'a> {
    /// Nothing to run: answer with this result (`ping`, a subscribe to a
    /// channel already held, an unsubscribe from one not held).
    Reply(Value),
    /// Join the channel; `info` goes into its presence entry and `join`.
    Subscribe {
        channel: ChannelName,
        since: Option<Position>,
        info: Option<Arc<RawValue>>,
    },
    /// The token does not grant the subscribe but the namespace has a
    /// subscribe proxy: ask the backend, then check [`subscription_room`]
    /// and subscribe.
    AskBackend {
        channel: ChannelName,
        since: Option<Position>,
    },
    /// Leave a channel the session holds.
    Unsubscribe { channel: ChannelName },
    Publish {
        channel: ChannelName,
        data: &'a RawValue,
    },
    /// List the channel's members.
    Presence { channel: ChannelName },
    /// Read the channel's stored messages.
    History {
        channel: ChannelName,
        query: HistoryQuery,
    },
    /// Verify the token, then [`refresh`].
    Refresh { token: String },
}

/// What `command` does for `caller` under `config`: the effect to run, or
/// why it is refused.
pub fn decide<'a>(
    command: Command<'a>,
    caller: &Caller<'_>,
    config: &Config,
) -> Result<Effect<'a>, Refusal> {
    match command {
        Command::Subscribe { channel, since } => subscribe(channel, since, caller, config),
        Command::Unsubscribe { channel } => Ok(if caller.subscriptions.contains(&channel) {
            Effect::Unsubscribe { channel }
        } else {
            Effect::Reply(json!({}))
        }),
        Command::Publish { channel, data } => {
            if !caller.claims.publish.allows(channel.as_str()) {
                return Err((
                    ErrorCode::Forbidden,
                    format!("token does not grant publishing to {channel}"),
                ));
            }
            Ok(Effect::Publish { channel, data })
        }
        Command::Presence { channel } => {
            readable(&channel, caller)?;
            if !config.namespace(channel.namespace()).presence {
                return Err((
                    ErrorCode::BadRequest,
                    format!(
                        "presence is disabled for namespace {:?}",
                        channel.namespace()
                    ),
                ));
            }
            Ok(Effect::Presence { channel })
        }
        Command::History {
            channel,
            since,
            limit,
        } => {
            readable(&channel, caller)?;
            if !config.namespace(channel.namespace()).history().enabled() {
                return Err(history::disabled(&channel));
            }
            let query = HistoryQuery {
                since,
                limit: limit
                    .unwrap_or(DEFAULT_HISTORY_LIMIT)
                    .min(MAX_HISTORY_LIMIT),
            };
            Ok(Effect::History { channel, query })
        }
        Command::Refresh { token } => Ok(Effect::Refresh { token }),
        Command::Ping => Ok(Effect::Reply(json!({}))),
    }
}

/// A subscribe: a channel already held is answered at once; one the token
/// grants is joined if the session has room; one it does not is asked of
/// the backend where the namespace has a subscribe proxy, refused elsewhere.
fn subscribe<'a>(
    channel: ChannelName,
    since: Option<Position>,
    caller: &Caller<'_>,
    config: &Config,
) -> Result<Effect<'a>, Refusal> {
    if caller.subscriptions.contains(&channel) {
        return Ok(Effect::Reply(json!({})));
    }
    if caller.claims.channels.allows(channel.as_str()) {
        subscription_room(caller.subscriptions.len(), config)?;
        return Ok(Effect::Subscribe {
            channel,
            since,
            info: caller.claims.info.clone(),
        });
    }
    if config
        .namespace(channel.namespace())
        .subscribe_proxy
        .is_some()
    {
        return Ok(Effect::AskBackend { channel, since });
    }
    Err(not_granted(&channel))
}

/// The refusal of a subscribe the token does not grant and no backend may
/// allow.
pub fn not_granted(channel: &ChannelName) -> Refusal {
    (
        ErrorCode::Forbidden,
        format!("token does not grant subscribing to {channel}"),
    )
}

/// Whether a session holding `held` channels may subscribe to one more
/// (`session.max_channels`).
pub fn subscription_room(held: usize, config: &Config) -> Result<(), Refusal> {
    let max = config.session.max_channels;
    if held >= max {
        return Err((
            ErrorCode::BadRequest,
            format!("subscription limit of {max} channels reached"),
        ));
    }
    Ok(())
}

fn readable(channel: &ChannelName, caller: &Caller<'_>) -> Result<(), Refusal> {
    if caller.may_read(channel) {
        return Ok(());
    }
    Err((
        ErrorCode::Forbidden,
        format!("token does not grant access to {channel}"),
    ))
}

/// A `refresh` whose token verified (or not): the new claims and how long
/// the session may now live.
#[derive(Debug)]
pub struct Refreshed {
    pub claims: Claims,
    pub lifetime: Duration,
}

impl Refreshed {
    /// The reply's result: `{expires_in}` in seconds.
    pub fn result(&self) -> Value {
        json!({ "expires_in": self.lifetime.as_secs() })
    }
}

/// The verdict on a `refresh`: a token of another user is forbidden, an
/// expired one is `token_expired`, any other failure `unauthorized`; a valid
/// one gives the session its claims and a lifetime measured from `now`.
pub fn refresh(
    verified: Result<Claims, AuthError>,
    user: &str,
    now: SystemTime,
    leeway: Duration,
) -> Result<Refreshed, Refusal> {
    let claims = verified.map_err(|error| match error {
        AuthError::Expired => (ErrorCode::TokenExpired, error.to_string()),
        _ => (ErrorCode::Unauthorized, error.to_string()),
    })?;
    if *claims.user != *user {
        return Err((ErrorCode::Forbidden, "token belongs to another user".into()));
    }
    let lifetime = claims.lifetime(now, leeway);
    Ok(Refreshed { claims, lifetime })
}

/// The frame that answers a command: a `reply` with its result or error
/// when it had an `id`; without one, only an error is sent (as an `error`
/// frame).
pub fn reply_frame(id: Option<u64>, result: Result<&Value, &Refusal>) -> Option<String> {
    match (result, id) {
        (Ok(value), Some(id)) => Some(
            ServerFrame::Reply {
                id,
                result: Some(value),
                error: None,
            }
            .encode(),
        ),
        (Ok(_), None) => None,
        (Err((code, message)), id) => Some(ServerFrame::failure(id, *code, message)),
    }
}

/// The client's message-rate buckets, as two theoretical arrival times
/// (GCRA, the algorithm governor implements). Written by hand because a
/// governor direct limiter carries its own clock and quota, about 100 bytes
/// each (see the `session_state_stays_small` test), and every session held
/// two; the rate and bursts here come from the node's configuration.
#[derive(Debug)]
pub struct Rate {
    commands: Instant,
    refusals: Instant,
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
    pub fn new(now: Instant) -> Rate {
        Rate {
            commands: now,
            refusals: now,
        }
    }

    /// Takes a frame the client sent at `now` from the buckets of
    /// `config.limits`.
    pub fn check(&mut self, now: Instant, config: &Config) -> RateVerdict {
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

    /// Takes one token from a bucket refilling at `per_second` and holding
    /// at most `burst`; false when it is empty.
    fn take(tat: &mut Instant, now: Instant, per_second: u32, burst: u32) -> bool {
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
