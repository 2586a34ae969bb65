//! Running a `publish_batch`: the message rate per message, then every
//! message that passed handed to the broker at once (`Node::publish_all`),
//! then one reply listing each message's result or error in order.
//!
//! What each message may do was decided by `commands::decide` (grant,
//! channel, data), exactly as for a single `publish`. Here each message
//! after the first takes a token of the connection's message rate (the
//! frame's own token paid for the first), so a batch counts as many
//! publishes as it holds; a message over the rate gets `rate_limited` in
//! its place and is not published. The reply's `result` is
//! `{"replies": [...]}`, one entry per message: what a single `publish`
//! reply's `result` would be (`{"offset", "epoch"}` or `{}`), or
//! `{"error": {"code", "message"}}`.

use serde_json::{json, Value};
use switchboard_protocol::batch::Publication;
use switchboard_protocol::{ErrorBody, ErrorCode, Position};

use super::clock::Moment;
use super::commands::Refusal;
use super::rate::Rate;
use super::Session;
use crate::broker::BrokerError;
use crate::config::Config;

impl<W: super::Wire> Session<W> {
    /// Publishes the messages that passed and the rate; the reply's result.
    pub(super) async fn publish_batch(
        &mut self,
        messages: Vec<Result<Publication<'_>, Refusal>>,
    ) -> Result<Value, Refusal> {
        let node = &self.node;
        let messages = throttle(messages, &mut self.rate, Moment::now(), &node.config);
        let good: Vec<_> = messages
            .iter()
            .flatten()
            .map(|m| (&m.channel, m.data))
            .collect();
        let published = node.publish_all(&good).await;
        let failed = published.iter().filter(|p| p.is_err()).count();
        if let Some(Err(error)) = published.iter().find(|p| p.is_err()) {
            tracing::warn!(message = "batch publish failed", failed, %error, connection_id = %self.connection_id());
        }
        Ok(result(&messages, published))
    }
}

/// Each message after the first takes a token of the message rate, in list
/// order, whether it passed the rules or not (as each single `publish`
/// frame would); one over the rate is replaced by its refusal.
fn throttle<'a>(
    messages: Vec<Result<Publication<'a>, Refusal>>,
    rate: &mut Rate,
    now: Moment,
    config: &Config,
) -> Vec<Result<Publication<'a>, Refusal>> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            if i > 0 {
                rate.take_message(now, config)?;
            }
            message
        })
        .collect()
}

/// The reply's result: `published` holds, in order, the outcome of each
/// message of `messages` that passed.
fn result(
    messages: &[Result<Publication<'_>, Refusal>],
    published: Vec<Result<Option<Position>, BrokerError>>,
) -> Value {
    let mut published = published.into_iter();
    let replies: Vec<Value> = messages
        .iter()
        .map(|message| match message {
            Err(refusal) => error(refusal),
            Ok(_) => match published.next() {
                Some(Ok(Some(p))) => json!({ "offset": p.offset, "epoch": p.epoch }),
                Some(Ok(None)) => json!({}),
                Some(Err(_)) | None => error(&(
                    ErrorCode::Unavailable,
                    "message not published: broker unavailable".into(),
                )),
            },
        })
        .collect();
    json!({ "replies": replies })
}

fn error((code, message): &Refusal) -> Value {
    json!({ "error": ErrorBody { code: code.as_str().to_owned(), message: message.clone() } })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::value::RawValue;
    use switchboard_protocol::ChannelName;

    use super::*;

    fn config() -> Config {
        let env: HashMap<String, String> = [(
            "SWITCHBOARD_JWT_HS256_SECRET".to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
        )]
        .into_iter()
        .collect();
        Config::from_toml("[limits]\nmsg_rate = 10\nmsg_burst = 3\n", &env).unwrap()
    }

    fn good(data: &RawValue) -> Result<Publication<'_>, Refusal> {
        Ok(Publication {
            channel: ChannelName::parse("chat:a").unwrap(),
            data,
        })
    }

    #[test]
    fn every_message_after_the_first_takes_a_token() {
        let data = RawValue::from_string("1".into()).unwrap();
        let config = config();
        let now = Moment::now();
        let mut rate = Rate::new(now);
        // The frame took one of the burst of 3.
        assert_eq!(
            rate.check(now, &config),
            super::super::rate::RateVerdict::Run
        );
        let bad = Err((ErrorCode::Forbidden, "no".to_owned()));
        let messages = vec![good(&data), bad.clone(), good(&data), good(&data)];
        let out = throttle(messages, &mut rate, now, &config);
        assert!(out[0].is_ok(), "paid by the frame");
        assert_eq!(
            out[1].as_ref().err(),
            bad.as_ref().err(),
            "a refused message still counts"
        );
        assert!(out[2].is_ok(), "the burst's last token");
        assert_eq!(
            out[3].as_ref().err().map(|(code, _)| *code),
            Some(ErrorCode::RateLimited)
        );
    }

    #[test]
    fn replies_keep_the_list_order() {
        let data = RawValue::from_string("1".into()).unwrap();
        let messages = vec![
            good(&data),
            Err((
                ErrorCode::Forbidden,
                "token does not grant publishing to x:a".into(),
            )),
            good(&data),
            good(&data),
        ];
        let published = vec![
            Ok(Some(Position::new(9, "E"))),
            Ok(None),
            Err(BrokerError::Unavailable("down".into())),
        ];
        assert_eq!(
            result(&messages, published),
            json!({"replies": [
                {"offset": 9, "epoch": "E"},
                {"error": {"code": "forbidden", "message": "token does not grant publishing to x:a"}},
                {},
                {"error": {"code": "unavailable", "message": "message not published: broker unavailable"}},
            ]})
        );
    }
}
