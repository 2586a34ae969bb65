//! Batch publishing: the `messages` list of a `publish_batch` command (and
//! of the server API's `POST /api/batch` body), read entry by entry.
//!
//! The list as a whole must be an array of 1 to [`MAX_BATCH_MESSAGES`]
//! entries, else the whole command (or request) is refused. Each entry is
//! then read on its own, exactly as a single `publish` frame's `channel` and
//! `data` are: an entry that is not an object, names an invalid channel,
//! lacks `data` or nests it too deeply gets its own error, with the same
//! message a single `publish` would get, and the other entries are not
//! affected. What the gateway checks next (grants, rate, size, the broker)
//! is its own business.
//!
//! The list is read without allocating per element beyond the limit: past
//! [`MAX_BATCH_MESSAGES`] the rest is only counted.

use std::fmt;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::channel::ChannelName;
use crate::json::{nesting_depth, present, MAX_DATA_DEPTH};

/// The most messages one batch may carry (`publish_batch`, `POST /api/batch`).
pub const MAX_BATCH_MESSAGES: usize = 1000;

/// One message of a batch that decoded: where it goes and its raw `data`.
#[derive(Debug, Clone)]
pub struct Publication<'a> {
    pub channel: ChannelName,
    pub data: &'a RawValue,
}

/// One entry of a batch's `messages`, decoded or not.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The length of the entry's JSON text as sent, in bytes.
    pub bytes: usize,
    /// The message, or why it is invalid (a `bad_request` message, the same
    /// as a single `publish` frame would get).
    pub message: Result<Publication<'a>, String>,
}

/// A batch entry as a client writes it.
#[derive(Debug, Clone, Serialize)]
pub struct BatchMessage<'a> {
    pub channel: &'a str,
    pub data: &'a Value,
}

/// The error of a `messages` field that is not an array.
pub const NOT_AN_ARRAY: &str = "messages must be an array of {\"channel\", \"data\"} objects";

/// The error of a batch with no message or more than [`MAX_BATCH_MESSAGES`].
pub fn count_error() -> String {
    format!("messages must hold 1 to {MAX_BATCH_MESSAGES} messages")
}

/// Reads a batch's `messages`: the entries in order, or why the list as a
/// whole is refused (a `bad_request` message).
pub fn decode_messages(raw: &RawValue) -> Result<Vec<Entry<'_>>, String> {
    let list: Bounded<'_> = serde_json::from_str(raw.get()).map_err(|_| NOT_AN_ARRAY.to_owned())?;
    if list.items.is_empty() || list.total > MAX_BATCH_MESSAGES {
        return Err(count_error());
    }
    Ok(list
        .items
        .into_iter()
        .map(|raw| Entry {
            bytes: raw.get().len(),
            message: entry(raw),
        })
        .collect())
}

/// Reads one entry `{"channel": "...", "data": <JSON>}`.
fn entry(raw: &RawValue) -> Result<Publication<'_>, String> {
    #[derive(Deserialize)]
    struct RawEntry<'a> {
        #[serde(borrow)]
        channel: Option<&'a RawValue>,
        /// `null` is data, as in a single `publish`.
        #[serde(borrow, default, deserialize_with = "present")]
        data: Option<&'a RawValue>,
    }
    let text = raw.get();
    if !text.trim_start().starts_with('{') {
        return Err("message must be a JSON object {\"channel\", \"data\"}".to_owned());
    }
    let fields: RawEntry<'_> = serde_json::from_str(text)
        .map_err(|e| format!("message is not a valid JSON object: {e}"))?;
    let channel = fields
        .channel
        .ok_or_else(|| "missing field channel".to_owned())?;
    let name: String =
        serde_json::from_str(channel.get()).map_err(|_| "channel must be a string".to_owned())?;
    let channel = ChannelName::parse(&name).map_err(|e| format!("invalid channel: {e}"))?;
    let data = fields.data.ok_or_else(|| "missing field data".to_owned())?;
    if nesting_depth(data.get()) > MAX_DATA_DEPTH {
        return Err(format!(
            "data is nested deeper than {MAX_DATA_DEPTH} levels"
        ));
    }
    Ok(Publication { channel, data })
}

/// A JSON array's first [`MAX_BATCH_MESSAGES`] elements, raw, and how many
/// it holds in all.
struct Bounded<'a> {
    items: Vec<&'a RawValue>,
    total: usize,
}

impl<'de> Deserialize<'de> for Bounded<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bounded<'de>, D::Error> {
        struct Elements;
        impl<'de> Visitor<'de> for Elements {
            type Value = Bounded<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                let mut total = 0;
                while total < MAX_BATCH_MESSAGES {
                    match seq.next_element::<&'de RawValue>()? {
                        Some(item) => items.push(item),
                        None => return Ok(Bounded { items, total }),
                    }
                    total += 1;
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(Bounded { items, total })
            }
        }
        deserializer.deserialize_seq(Elements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn errors(text: &str) -> Vec<Result<(String, String), String>> {
        let raw = raw(text);
        decode_messages(&raw)
            .unwrap()
            .into_iter()
            .map(|e| {
                e.message
                    .map(|p| (p.channel.as_str().to_owned(), p.data.get().to_owned()))
            })
            .collect()
    }

    #[test]
    fn each_entry_is_read_on_its_own() {
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        let text = format!(
            r#"[{{"channel":"chat:a","data":{{"n":1}}}}, 7, {{"channel":"bad name","data":1}},
               {{"data":1}}, {{"channel":3,"data":1}}, {{"channel":"chat:b"}},
               {{"channel":"chat:c","data":null}}, {{"channel":"chat:d","data":{deep}}},
               {{"channel":"chat:e","channel":"chat:f","data":1}}]"#
        );
        let got = errors(&text);
        assert_eq!(got[0], Ok(("chat:a".into(), r#"{"n":1}"#.into())));
        assert_eq!(
            got[1],
            Err(r#"message must be a JSON object {"channel", "data"}"#.into())
        );
        assert!(got[2]
            .as_ref()
            .unwrap_err()
            .starts_with("invalid channel: "));
        assert_eq!(got[3], Err("missing field channel".into()));
        assert_eq!(got[4], Err("channel must be a string".into()));
        assert_eq!(got[5], Err("missing field data".into()));
        assert_eq!(got[6], Ok(("chat:c".into(), "null".into())), "null is data");
        assert_eq!(got[7], Err("data is nested deeper than 32 levels".into()));
        assert!(got[8]
            .as_ref()
            .unwrap_err()
            .starts_with("message is not a valid JSON object: duplicate field `channel`"));
    }

    #[test]
    fn entries_keep_their_size() {
        let raw = raw(r#"[{"channel":"a","data":"xyz"}]"#);
        let entries = decode_messages(&raw).unwrap();
        assert_eq!(entries[0].bytes, r#"{"channel":"a","data":"xyz"}"#.len());
    }

    #[test]
    fn the_list_holds_one_to_a_thousand_messages() {
        let one = r#"{"channel":"a","data":1}"#;
        let list = |n: usize| format!("[{}]", vec![one; n].join(","));
        let many = raw(&list(MAX_BATCH_MESSAGES));
        assert_eq!(decode_messages(&many).unwrap().len(), MAX_BATCH_MESSAGES);
        let count = "messages must hold 1 to 1000 messages".to_owned();
        assert_eq!(
            decode_messages(&raw(&list(MAX_BATCH_MESSAGES + 1))).unwrap_err(),
            count
        );
        assert_eq!(decode_messages(&raw("[]")).unwrap_err(), count);
        for text in [r#"{"channel":"a"}"#, "1", r#""x""#, "null"] {
            assert_eq!(
                decode_messages(&raw(text)).unwrap_err(),
                NOT_AN_ARRAY,
                "{text}"
            );
        }
    }

    #[test]
    fn publish_batch_frames() {
        use crate::frame::{decode_command, Command, Outgoing};
        let request = decode_command(
            r#"{"type":"publish_batch","id":4,"messages":[{"channel":"a","data":1},{"channel":"*"}]}"#,
        )
        .unwrap();
        assert_eq!(request.id, Some(4));
        match request.command {
            Command::PublishBatch { messages } => {
                assert_eq!(messages.len(), 2);
                assert!(messages[0].message.is_ok());
                assert!(messages[1].message.is_err());
            }
            other => panic!("not a batch: {other:?}"),
        }
        for (text, message) in [
            (
                r#"{"type":"publish_batch","id":5}"#,
                "missing field messages",
            ),
            (
                r#"{"type":"publish_batch","id":5,"messages":null}"#,
                "missing field messages",
            ),
            (
                r#"{"type":"publish_batch","id":5,"messages":{}}"#,
                NOT_AN_ARRAY,
            ),
            (
                r#"{"type":"publish_batch","id":5,"messages":[]}"#,
                "messages must hold 1 to 1000 messages",
            ),
        ] {
            let error = decode_command(text).unwrap_err();
            assert_eq!(
                (error.id, error.message.as_str()),
                (Some(5), message),
                "{text}"
            );
        }
        let data = serde_json::json!({"n": 1});
        let messages = [BatchMessage {
            channel: "a",
            data: &data,
        }];
        let frame = Outgoing {
            id: Some(2),
            messages: Some(&messages),
            ..Outgoing::new("publish_batch")
        };
        assert_eq!(
            frame.encode(),
            r#"{"type":"publish_batch","id":2,"messages":[{"channel":"a","data":{"n":1}}]}"#
        );
    }
}
