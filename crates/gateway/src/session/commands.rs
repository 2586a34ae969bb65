//! What a client command does, decided without a socket: the rules of the
//! contract that turn a command into the work a session runs, or into the
//! error its client gets.
//!
//! [`decide`] reads the token's grants, the session's subscriptions and the
//! node's configuration (namespace features, `session.max_channels`) and
//! returns an [`Effect`] for the session to run against the hub, the broker,
//! presence, history or the subscribe proxy, or a [`Refusal`]. A `refresh`
//! ([`refresh`]) and the reply frame of a command's result
//! ([`reply_frame`]) are decided here too; the message rate is `rate`'s.
//!
//! Pure: no I/O, no node, no clock read (the caller passes `now`), so every
//! rule is tested here without a socket.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_protocol::batch::Publication;
use switchboard_protocol::position::MAX_HISTORY_LIMIT;
use switchboard_protocol::{ChannelName, Command, ErrorCode, Position, ServerFrame};

use super::subscriptions::Subscriptions;
use crate::auth::{AuthError, Claims};
use crate::config::Config;
use crate::history::{self, HistoryQuery, DEFAULT_HISTORY_LIMIT};

/// Why a command was not run: the error code and message its client gets.
pub type Refusal = (ErrorCode, String);

/// What a command's verdict depends on about the session that sent it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub claims: &'a Claims,
    pub subscriptions: &'a Subscriptions,
}

impl Caller<'_> {
    /// Whether `presence` and `history` may read a channel: the token
    /// grants it, or the session subscribed to it (the backend allowed it).
    pub fn may_read(&self, channel: &ChannelName) -> bool {
        self.claims.channels.allows(channel.as_str())
            || self.subscriptions.contains(channel.as_str())
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
    /// Publish each message that passed, in list order; the others' errors
    /// go in their places in the reply.
    PublishBatch {
        messages: Vec<Result<Publication<'a>, Refusal>>,
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
        Command::Unsubscribe { channel } => {
            Ok(if caller.subscriptions.contains(channel.as_str()) {
                Effect::Unsubscribe { channel }
            } else {
                Effect::Reply(json!({}))
            })
        }
        Command::Publish { channel, data } => {
            may_publish(&channel, caller)?;
            Ok(Effect::Publish { channel, data })
        }
        // Each message is checked as a single `publish` is; the batch as a
        // whole is never refused here (its list was read by the decoder).
        Command::PublishBatch { messages } => Ok(Effect::PublishBatch {
            messages: messages
                .into_iter()
                .map(|entry| {
                    let message = entry
                        .message
                        .map_err(|error| (ErrorCode::BadRequest, error))?;
                    may_publish(&message.channel, caller)?;
                    Ok(message)
                })
                .collect(),
        }),
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
                max_bytes: None,
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
    if caller.subscriptions.contains(channel.as_str()) {
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

fn may_publish(channel: &ChannelName, caller: &Caller<'_>) -> Result<(), Refusal> {
    if caller.claims.publish.allows(channel.as_str()) {
        return Ok(());
    }
    Err((
        ErrorCode::Forbidden,
        format!("token does not grant publishing to {channel}"),
    ))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::UNIX_EPOCH;

    use switchboard_protocol::{decode_command, PatternSet, Request};

    use super::*;

    /// Two channels per session, 10 frames/s with bursts of 3 and 2
    /// refusals; `quiet` has neither presence nor history, `doc` asks the
    /// backend about subscribes its tokens do not grant.
    fn config() -> Config {
        let env: HashMap<String, String> = [
            (
                "SWITCHBOARD_JWT_HS256_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            (
                "SWITCHBOARD_BACKEND_SECRET",
                "fedcba9876543210fedcba9876543210",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let text = r#"
            [session]
            max_channels = 2
            [limits]
            msg_rate = 10
            msg_burst = 3
            msg_close_after = 2
            [namespaces.quiet]
            presence = false
            history_size = 0
            [namespaces.doc]
            subscribe_proxy = "https://app.example.com/switchboard/subscribe"
        "#;
        Config::from_toml(text, &env).unwrap()
    }

    /// Alice may subscribe to `chat:*` and `quiet:*` and publish to `chat:*`.
    fn claims() -> Claims {
        Claims {
            user: Arc::from("alice"),
            exp: 2_000,
            channels: Arc::new(PatternSet::parse(&["chat:*", "quiet:*"]).unwrap()),
            publish: Arc::new(PatternSet::parse(&["chat:*"]).unwrap()),
            info: Some(Arc::from(
                RawValue::from_string(r#"{"name":"Alice"}"#.into()).unwrap(),
            )),
        }
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn request(text: &str) -> Request<'_> {
        decode_command(text).unwrap()
    }

    /// What `text` decides for alice holding `held`.
    fn verdict<'a>(text: &'a str, held: &[&str]) -> Result<Effect<'a>, Refusal> {
        let claims = claims();
        let mut subscriptions = Subscriptions::default();
        for name in held {
            subscriptions.add(Arc::from(*name), None);
        }
        let caller = Caller {
            claims: &claims,
            subscriptions: &subscriptions,
        };
        decide(request(text).command, &caller, &config())
    }

    fn refused(text: &str, held: &[&str]) -> Refusal {
        match verdict(text, held) {
            Err(refusal) => refusal,
            Ok(effect) => panic!("{text} was not refused: {effect:?}"),
        }
    }

    fn forbidden(message: &str) -> Refusal {
        (ErrorCode::Forbidden, message.to_owned())
    }

    fn bad_request(message: &str) -> Refusal {
        (ErrorCode::BadRequest, message.to_owned())
    }

    #[test]
    fn commands_the_token_does_not_grant_are_forbidden() {
        assert_eq!(
            refused(r#"{"type":"subscribe","channel":"news:a"}"#, &[]),
            forbidden("token does not grant subscribing to news:a")
        );
        assert_eq!(
            refused(r#"{"type":"publish","channel":"quiet:a","data":1}"#, &[]),
            forbidden("token does not grant publishing to quiet:a")
        );
        assert_eq!(
            refused(r#"{"type":"presence","channel":"news:a"}"#, &[]),
            forbidden("token does not grant access to news:a")
        );
        assert_eq!(
            refused(r#"{"type":"history","channel":"news:a"}"#, &[]),
            forbidden("token does not grant access to news:a")
        );
    }

    #[test]
    fn granted_commands_run() {
        match verdict(r#"{"type":"subscribe","channel":"chat:a"}"#, &[]) {
            Ok(Effect::Subscribe {
                channel: c,
                since: None,
                info: Some(info),
            }) => {
                assert_eq!(c, channel("chat:a"));
                assert_eq!(info.get(), r#"{"name":"Alice"}"#, "the token's info");
            }
            other => panic!("not a subscribe: {other:?}"),
        }
        match verdict(
            r#"{"type":"publish","channel":"chat:a","data":{"n":1}}"#,
            &[],
        ) {
            Ok(Effect::Publish { channel: c, data }) => {
                assert_eq!((c, data.get()), (channel("chat:a"), r#"{"n":1}"#));
            }
            other => panic!("not a publish: {other:?}"),
        }
        assert!(matches!(
            verdict(r#"{"type":"presence","channel":"chat:a"}"#, &[]),
            Ok(Effect::Presence { .. })
        ));
        assert!(matches!(
            verdict(r#"{"type":"ping","id":1}"#, &[]),
            Ok(Effect::Reply(value)) if value == json!({})
        ));
    }

    #[test]
    fn a_subscription_lets_presence_and_history_read_what_the_token_does_not_grant() {
        let held = ["doc:a"];
        assert!(matches!(
            verdict(r#"{"type":"presence","channel":"doc:a"}"#, &held),
            Ok(Effect::Presence { .. })
        ));
        assert!(matches!(
            verdict(r#"{"type":"history","channel":"doc:a"}"#, &held),
            Ok(Effect::History { .. })
        ));
        assert_eq!(
            refused(r#"{"type":"presence","channel":"doc:b"}"#, &held),
            forbidden("token does not grant access to doc:b")
        );
    }

    #[test]
    fn a_subscribe_the_token_does_not_grant_asks_the_namespaces_backend() {
        match verdict(
            r#"{"type":"subscribe","channel":"doc:a","since":{"offset":3,"epoch":"e"}}"#,
            &[],
        ) {
            Ok(Effect::AskBackend { channel: c, since }) => {
                assert_eq!(c, channel("doc:a"));
                assert_eq!(since, Some(Position::new(3, "e")));
            }
            other => panic!("the backend is not asked: {other:?}"),
        }
        assert_eq!(
            not_granted(&channel("doc:a")),
            forbidden("token does not grant subscribing to doc:a"),
            "what a subscribe gets when no proxy client is there"
        );
    }

    #[test]
    fn each_message_of_a_batch_is_checked_as_a_single_publish() {
        let text = r#"{"type":"publish_batch","id":1,"messages":[
            {"channel":"chat:a","data":1},
            {"channel":"quiet:a","data":2},
            {"channel":"chat:*","data":3},
            {"channel":"chat:b"},
            {"channel":"chat:a","data":4}]}"#;
        let messages = match verdict(text, &[]) {
            Ok(Effect::PublishBatch { messages }) => messages,
            other => panic!("not a batch: {other:?}"),
        };
        let shown: Vec<_> = messages
            .iter()
            .map(|m| match m {
                Ok(p) => Ok((p.channel.as_str(), p.data.get())),
                Err(refusal) => Err(refusal.clone()),
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                Ok(("chat:a", "1")),
                Err(forbidden("token does not grant publishing to quiet:a")),
                Err(bad_request("invalid channel: '*' may only end a pattern")),
                Err(bad_request("missing field data")),
                Ok(("chat:a", "4")),
            ]
        );
    }

    #[test]
    fn a_channel_already_held_is_answered_at_once() {
        let held = ["chat:a", "doc:a"];
        for text in [
            r#"{"type":"subscribe","channel":"chat:a"}"#,
            r#"{"type":"subscribe","channel":"doc:a"}"#,
        ] {
            assert!(
                matches!(verdict(text, &held), Ok(Effect::Reply(value)) if value == json!({})),
                "{text}: held, even at the limit and without a grant"
            );
        }
        assert!(matches!(
            verdict(r#"{"type":"unsubscribe","channel":"chat:a"}"#, &held),
            Ok(Effect::Unsubscribe { .. })
        ));
        assert!(
            matches!(
                verdict(r#"{"type":"unsubscribe","channel":"chat:b"}"#, &held),
                Ok(Effect::Reply(value)) if value == json!({})
            ),
            "nothing to leave"
        );
    }

    #[test]
    fn namespaces_without_presence_or_history_refuse_them() {
        assert_eq!(
            refused(r#"{"type":"presence","channel":"quiet:a"}"#, &[]),
            bad_request("presence is disabled for namespace \"quiet\"")
        );
        assert_eq!(
            refused(r#"{"type":"history","channel":"quiet:a"}"#, &[]),
            bad_request("history is disabled for namespace \"quiet\"")
        );
        assert!(
            matches!(
                verdict(r#"{"type":"subscribe","channel":"quiet:a"}"#, &[]),
                Ok(Effect::Subscribe { .. })
            ),
            "subscribing needs neither"
        );
    }

    #[test]
    fn the_subscription_limit_is_session_max_channels() {
        let held = ["chat:a", "chat:b"];
        let full = bad_request("subscription limit of 2 channels reached");
        assert_eq!(
            refused(r#"{"type":"subscribe","channel":"chat:c"}"#, &held),
            full
        );
        assert!(matches!(
            verdict(r#"{"type":"subscribe","channel":"chat:c"}"#, &held[..1]),
            Ok(Effect::Subscribe { .. })
        ));
        // A subscribe the backend allowed meets the limit after its answer.
        assert!(matches!(
            verdict(r#"{"type":"subscribe","channel":"doc:a"}"#, &held),
            Ok(Effect::AskBackend { .. })
        ));
        assert_eq!(subscription_room(2, &config()), Err(full));
        assert_eq!(subscription_room(1, &config()), Ok(()));
    }

    #[test]
    fn history_reads_the_newest_hundred_at_most_a_thousand() {
        let query = |text| match verdict(text, &[]) {
            Ok(Effect::History { query, .. }) => query,
            other => panic!("not a history read: {other:?}"),
        };
        let plain = query(r#"{"type":"history","channel":"chat:a"}"#);
        assert_eq!((plain.since, plain.limit), (None, DEFAULT_HISTORY_LIMIT));
        let after = query(
            r#"{"type":"history","channel":"chat:a","since":{"offset":4,"epoch":"e"},"limit":5}"#,
        );
        assert_eq!((after.since, after.limit), (Some(Position::new(4, "e")), 5));
        // The decoder refuses a larger limit; the rule holds without it.
        let claims = claims();
        let caller = Caller {
            claims: &claims,
            subscriptions: &Subscriptions::default(),
        };
        let command = Command::History {
            channel: channel("chat:a"),
            since: None,
            limit: Some(5_000),
        };
        match decide(command, &caller, &config()) {
            Ok(Effect::History { query, .. }) => assert_eq!(query.limit, MAX_HISTORY_LIMIT),
            other => panic!("not a history read: {other:?}"),
        }
    }

    #[test]
    fn a_refresh_keeps_the_user_and_measures_the_new_lifetime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let leeway = Duration::from_secs(5);
        let refreshed = refresh(Ok(claims()), "alice", now, leeway).unwrap();
        assert_eq!(refreshed.lifetime, Duration::from_secs(1_005));
        assert_eq!(refreshed.result(), json!({ "expires_in": 1_005 }));
        assert_eq!(&*refreshed.claims.user, "alice");

        let refusal = refresh(Ok(claims()), "bob", now, leeway).unwrap_err();
        assert_eq!(refusal, forbidden("token belongs to another user"));
        let refusal = refresh(Err(AuthError::Expired), "alice", now, leeway).unwrap_err();
        assert_eq!(
            refusal,
            (ErrorCode::TokenExpired, "token has expired".to_owned())
        );
        let refusal = refresh(Err(AuthError::BadSignature), "alice", now, leeway).unwrap_err();
        assert_eq!(
            refusal,
            (
                ErrorCode::Unauthorized,
                "token signature does not verify".to_owned()
            )
        );
    }

    #[test]
    fn a_command_is_answered_by_id() {
        let value = json!({ "offset": 1 });
        assert_eq!(
            reply_frame(Some(7), Ok(&value)).as_deref(),
            Some(r#"{"type":"reply","id":7,"result":{"offset":1}}"#)
        );
        assert_eq!(reply_frame(None, Ok(&value)), None, "no id, no reply");
        let refusal = forbidden("no");
        assert_eq!(
            reply_frame(Some(8), Err(&refusal)).as_deref(),
            Some(r#"{"type":"reply","id":8,"error":{"code":"forbidden","message":"no"}}"#)
        );
        assert_eq!(
            reply_frame(None, Err(&refusal)).as_deref(),
            Some(r#"{"type":"error","error":{"code":"forbidden","message":"no"}}"#),
            "an error is sent even without an id"
        );
    }
}
