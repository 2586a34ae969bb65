//! JSON text frames: decoding client commands, encoding server frames, and
//! the owned forms a client uses to read what the server sends.
//!
//! Decoding is two-step so errors are precise and still carry the command's
//! `id`: the frame is first split into borrowed raw fields, then each field is
//! read and checked. `data` stays raw JSON ([`RawValue`]) and is spliced into
//! the outgoing `message` frame without being re-parsed or re-encoded.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use thiserror::Error;

use crate::batch::{decode_messages, BatchMessage, Entry};
use crate::channel::ChannelName;
use crate::codes::ErrorCode;
pub use crate::json::{nesting_depth, present, MAX_DATA_DEPTH};
use crate::position::{valid_epoch, Position, MAX_EPOCH_LEN, MAX_HISTORY_LIMIT};

/// A decoded client command with its optional `id`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub id: Option<u64>,
    pub command: Command<'a>,
}

/// What a client asks for. `data` borrows from the frame it was decoded from.
#[derive(Debug, Clone)]
pub enum Command<'a> {
    /// With `since`, the client resumes from that position of the channel's
    /// stream (recovery).
    Subscribe {
        channel: ChannelName,
        since: Option<Position>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Publish {
        channel: ChannelName,
        data: &'a RawValue,
    },
    /// Many publishes in one command; each entry decoded on its own (see
    /// [`crate::batch`]).
    PublishBatch {
        messages: Vec<Entry<'a>>,
    },
    Presence {
        channel: ChannelName,
    },
    Refresh {
        token: String,
    },
    /// Reads stored messages: the newest `limit`, or those after `since`.
    History {
        channel: ChannelName,
        since: Option<Position>,
        limit: Option<usize>,
    },
    Ping,
}

impl Command<'_> {
    /// The command's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::PublishBatch { .. } => "publish_batch",
            Command::Presence { .. } => "presence",
            Command::Refresh { .. } => "refresh",
            Command::History { .. } => "history",
            Command::Ping => "ping",
        }
    }
}

/// A frame that could not be decoded into a command. `id` is set when the
/// frame carried a valid one, so the error goes back as that command's reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl CommandError {
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> CommandError {
        CommandError {
            id,
            code,
            message: message.into(),
        }
    }

    fn bad(id: Option<u64>, message: impl Into<String>) -> CommandError {
        CommandError::new(id, ErrorCode::BadRequest, message)
    }
}

/// The fields of a command frame, each still raw JSON.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    /// `null` is data like any other: present, unlike a missing field.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
}

fn describe_json_error(error: &serde_json::Error) -> String {
    // serde_json's messages name the line and column but never echo input.
    format!("frame is not a valid JSON object: {error}")
}

/// Decodes one client text frame.
pub fn decode_command(text: &str) -> Result<Request<'_>, CommandError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(CommandError::bad(None, "frame must be a JSON object"));
    }
    let raw: RawCommand<'_> =
        serde_json::from_str(text).map_err(|e| CommandError::bad(None, describe_json_error(&e)))?;

    let id = match raw.id {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => Some(
            serde_json::from_str::<u64>(v.get())
                .map_err(|_| CommandError::bad(None, "id must be a non-negative integer"))?,
        ),
    };
    let kind: String = match raw.kind {
        None => return Err(CommandError::bad(id, "missing field type")),
        Some(v) => serde_json::from_str(v.get())
            .map_err(|_| CommandError::bad(id, "type must be a string"))?,
    };
    let channel = || -> Result<ChannelName, CommandError> {
        let raw = raw
            .channel
            .ok_or_else(|| CommandError::bad(id, "missing field channel"))?;
        let name: String = serde_json::from_str(raw.get())
            .map_err(|_| CommandError::bad(id, "channel must be a string"))?;
        ChannelName::parse(&name)
            .map_err(|e| CommandError::bad(id, format!("invalid channel: {e}")))
    };
    let command = match kind.as_str() {
        "subscribe" => Command::Subscribe {
            channel: channel()?,
            since: raw.since.map(|v| parse_since(id, v)).transpose()?,
        },
        "history" => Command::History {
            channel: channel()?,
            since: raw.since.map(|v| parse_since(id, v)).transpose()?,
            limit: raw.limit.map(|v| parse_limit(id, v)).transpose()?,
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: channel()?,
        },
        "presence" => Command::Presence {
            channel: channel()?,
        },
        "publish" => {
            let channel = channel()?;
            let data = raw
                .data
                .ok_or_else(|| CommandError::bad(id, "missing field data"))?;
            if nesting_depth(data.get()) > MAX_DATA_DEPTH {
                return Err(CommandError::bad(
                    id,
                    format!("data is nested deeper than {MAX_DATA_DEPTH} levels"),
                ));
            }
            Command::Publish { channel, data }
        }
        "publish_batch" => {
            let raw = raw
                .messages
                .ok_or_else(|| CommandError::bad(id, "missing field messages"))?;
            let messages =
                decode_messages(raw).map_err(|message| CommandError::bad(id, message))?;
            Command::PublishBatch { messages }
        }
        "refresh" => {
            let raw = raw
                .token
                .ok_or_else(|| CommandError::bad(id, "missing field token"))?;
            let token: String = serde_json::from_str(raw.get())
                .map_err(|_| CommandError::bad(id, "token must be a string"))?;
            Command::Refresh { token }
        }
        "ping" => Command::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(CommandError::bad(
                id,
                format!("unknown command type {shown:?}"),
            ));
        }
    };
    Ok(Request { id, command })
}

/// Reads `since: {"offset": <u64>, "epoch": "<epoch>"}`; `null` counts as absent
/// for `serde`, so it never reaches here.
pub fn parse_since(id: Option<u64>, raw: &RawValue) -> Result<Position, CommandError> {
    #[derive(Deserialize)]
    struct RawSince<'a> {
        #[serde(borrow)]
        offset: Option<&'a RawValue>,
        #[serde(borrow)]
        epoch: Option<&'a RawValue>,
    }
    let fields: RawSince<'_> = serde_json::from_str(raw.get())
        .map_err(|_| CommandError::bad(id, "since must be an object {\"offset\", \"epoch\"}"))?;
    let offset = fields
        .offset
        .ok_or_else(|| CommandError::bad(id, "missing field since.offset"))?;
    let offset: u64 = serde_json::from_str(offset.get())
        .map_err(|_| CommandError::bad(id, "since.offset must be a non-negative integer"))?;
    let epoch = fields
        .epoch
        .ok_or_else(|| CommandError::bad(id, "missing field since.epoch"))?;
    let epoch: String = serde_json::from_str(epoch.get())
        .ok()
        .filter(|e: &String| valid_epoch(e))
        .ok_or_else(|| {
            CommandError::bad(
                id,
                format!("since.epoch must be a string of 1 to {MAX_EPOCH_LEN} letters, digits, '-' or '_'"),
            )
        })?;
    Ok(Position { offset, epoch })
}

/// Reads `limit`: a whole number from 1 to [`MAX_HISTORY_LIMIT`].
fn parse_limit(id: Option<u64>, raw: &RawValue) -> Result<usize, CommandError> {
    serde_json::from_str::<usize>(raw.get())
        .ok()
        .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
        .ok_or_else(|| {
            CommandError::bad(
                id,
                format!("limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}"),
            )
        })
}

/// An error as it appears inside a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Frames the server sends, borrowing their parts; encode with [`ServerFrame::encode`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        connection_id: &'a str,
        node_id: &'a str,
        user: &'a str,
        /// Seconds until the token expires (send `refresh` before then).
        expires_in: u64,
        /// Present (true) when the client asked for batched frames: a text
        /// frame may then carry several messages, one per line.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        batch: bool,
        /// `"sse"` on a server-sent events stream; absent on WebSocket.
        #[serde(skip_serializing_if = "Option::is_none")]
        transport: Option<&'a str>,
        /// `"msgpack"` on a `switchboard.msgpack` connection; absent on JSON.
        #[serde(skip_serializing_if = "Option::is_none")]
        format: Option<&'a str>,
    },
    Reply {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    /// An error for a frame that had no usable `id`.
    Error { error: ErrorBody },
    /// `offset` is set on channels with history.
    Message {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        data: &'a RawValue,
    },
    Join {
        channel: &'a str,
        user: &'a str,
        connection_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
    },
    Leave {
        channel: &'a str,
        user: &'a str,
        connection_id: &'a str,
    },
    /// The channel's stream lost messages this subscriber may not have seen
    /// (its epoch changed, or a gap could not be repaired from history): the
    /// application should reload its state. The stream continues after
    /// `{offset, epoch}`.
    Reset {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
    },
    /// A server-sent events stream: the outcome of subscribing one of the
    /// channels its request named (what a `subscribe` reply would carry).
    Subscription {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    /// A server-sent events stream's last event: why it ends, with the
    /// WebSocket close code and reason.
    Close { code: u16, reason: &'a str },
}

/// A `message` frame of a channel with history, split around its offset:
/// `head + offset + tail` is the frame. The offset is assigned where the
/// message is stored (in Redis, inside the publish script), so the frame is
/// encoded once here and completed there without re-encoding `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageParts {
    pub head: String,
    pub tail: String,
}

impl MessageParts {
    pub fn new(channel: &str, data: &RawValue) -> MessageParts {
        // A channel name is validated ASCII without quotes or backslashes,
        // but encode it through serde anyway so this stays correct for any
        // string.
        let channel = serde_json::to_string(channel).unwrap_or_else(|_| "\"\"".to_owned());
        MessageParts {
            head: format!("{{\"type\":\"message\",\"channel\":{channel},\"offset\":"),
            tail: format!(",\"data\":{}}}", data.get()),
        }
    }

    /// The length of the frame with `offset`, in bytes.
    pub fn frame_len(&self, offset: u64) -> usize {
        let digits = offset.checked_ilog10().map_or(1, |d| d as usize + 1);
        self.head.len() + digits + self.tail.len()
    }

    /// The frame with its offset.
    pub fn with_offset(&self, offset: u64) -> String {
        let mut frame = String::with_capacity(self.head.len() + 20 + self.tail.len());
        frame.push_str(&self.head);
        frame.push_str(&offset.to_string());
        frame.push_str(&self.tail);
        frame
    }
}

impl ServerFrame<'_> {
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every field is a string, an
        // integer, or JSON that was already validated.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","error":{"code":"internal","message":"encoding failed"}}"#.to_owned()
        })
    }

    /// The frame answering a failed command: a `reply` when it had an id,
    /// else an `error` frame.
    pub fn failure(id: Option<u64>, code: ErrorCode, message: &str) -> String {
        let error = ErrorBody {
            code: code.as_str().to_owned(),
            message: message.to_owned(),
        };
        match id {
            Some(id) => ServerFrame::Reply {
                id,
                result: None,
                error: Some(error),
            },
            None => ServerFrame::Error { error },
        }
        .encode()
    }
}

/// A frame as a client reads it (owned, every type the server may send).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Incoming {
    Welcome {
        connection_id: String,
        node_id: String,
        user: String,
        #[serde(default)]
        expires_in: Option<u64>,
        #[serde(default)]
        batch: bool,
        #[serde(default)]
        transport: Option<String>,
        #[serde(default)]
        format: Option<String>,
    },
    Reply {
        id: u64,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<ErrorBody>,
    },
    Error {
        error: ErrorBody,
    },
    Message {
        channel: String,
        #[serde(default)]
        offset: Option<u64>,
        data: Value,
    },
    Join {
        channel: String,
        user: String,
        connection_id: String,
        #[serde(default)]
        info: Option<Value>,
    },
    Leave {
        channel: String,
        user: String,
        connection_id: String,
    },
    Reset {
        channel: String,
        offset: u64,
        epoch: String,
    },
    Subscription {
        channel: String,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<ErrorBody>,
    },
    Close {
        code: u16,
        reason: String,
    },
}

impl Incoming {
    pub fn decode(text: &str) -> Result<Incoming, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A command as a client writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Outgoing<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<&'a Position>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The entries of a `publish_batch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<&'a [BatchMessage<'a>]>,
}

impl<'a> Outgoing<'a> {
    /// A command of `kind` with nothing else set.
    pub fn new(kind: &'a str) -> Outgoing<'a> {
        Outgoing {
            kind,
            id: None,
            channel: None,
            data: None,
            token: None,
            since: None,
            limit: None,
            messages: None,
        }
    }
}

impl Outgoing<'_> {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> CommandError {
        decode_command(text).unwrap_err()
    }

    #[test]
    fn decodes_every_command() {
        let r = decode_command(r#"{"type":"subscribe","channel":"chat:lobby","id":1}"#).unwrap();
        assert_eq!(r.id, Some(1));
        assert_eq!(r.command.kind(), "subscribe");
        let r = decode_command(r#"{"type":"publish","channel":"a","data":{"x":[1,2]}}"#).unwrap();
        assert_eq!(r.id, None);
        match r.command {
            Command::Publish { data, .. } => assert_eq!(data.get(), r#"{"x":[1,2]}"#),
            other => panic!("unexpected {other:?}"),
        }
        let r = decode_command(r#"{"type":"refresh","token":"abc","id":5}"#).unwrap();
        assert!(matches!(r.command, Command::Refresh { token } if token == "abc"));
        let r = decode_command(r#"{"type":"ping","id":null}"#).unwrap();
        assert!(r.id.is_none() && matches!(r.command, Command::Ping));
    }

    #[test]
    fn precise_errors_keep_the_id() {
        assert_eq!(err("[1]").message, "frame must be a JSON object");
        assert_eq!(err("nope").id, None);
        assert!(err("{\"type\":")
            .message
            .starts_with("frame is not a valid JSON object"));
        assert_eq!(
            err(r#"{"type":"ping","id":-1}"#).message,
            "id must be a non-negative integer"
        );
        assert_eq!(err(r#"{"type":"ping","id":1.5}"#).id, None);
        let e = err(r#"{"id":7}"#);
        assert_eq!((e.id, e.message.as_str()), (Some(7), "missing field type"));
        let e = err(r#"{"type":"dance","id":8}"#);
        assert_eq!(
            (e.id, e.message.as_str()),
            (Some(8), "unknown command type \"dance\"")
        );
        let e = err(r#"{"type":"subscribe","id":9}"#);
        assert_eq!(e.message, "missing field channel");
        let e = err(r#"{"type":"subscribe","channel":"a b","id":9}"#);
        assert!(e.message.starts_with("invalid channel"), "{}", e.message);
        let e = err(r#"{"type":"publish","channel":"a","id":10}"#);
        assert_eq!(e.message, "missing field data");
        let e = err(r#"{"type":"subscribe","channel":5,"id":11}"#);
        assert_eq!(e.message, "channel must be a string");
        assert!(err(r#"{"type":"ping","type":"ping"}"#)
            .message
            .contains("duplicate"));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = err(&format!(
            r#"{{"type":"publish","channel":"a","data":{deep},"id":3}}"#
        ));
        assert_eq!((e.id, e.code), (Some(3), ErrorCode::BadRequest));
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let e = err(&format!(
            r#"{{"type":"publish","channel":"a","data":{deep},"id":3}}"#
        ));
        assert_eq!(
            (e.id, e.message.as_str()),
            (Some(3), "data is nested deeper than 32 levels")
        );
    }

    #[test]
    fn encodes_server_frames() {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let m = ServerFrame::Message {
            channel: "chat:lobby",
            offset: None,
            data: &data,
        }
        .encode();
        assert_eq!(
            m,
            r#"{"type":"message","channel":"chat:lobby","data":{"text":"hi"}}"#
        );
        let ok = ServerFrame::Reply {
            id: 1,
            result: Some(&Value::Object(Default::default())),
            error: None,
        };
        assert_eq!(ok.encode(), r#"{"type":"reply","id":1,"result":{}}"#);
        assert_eq!(
            ServerFrame::failure(Some(2), ErrorCode::Forbidden, "no"),
            r#"{"type":"reply","id":2,"error":{"code":"forbidden","message":"no"}}"#
        );
        assert_eq!(
            ServerFrame::failure(None, ErrorCode::BadRequest, "x"),
            r#"{"type":"error","error":{"code":"bad_request","message":"x"}}"#
        );
        let incoming = Incoming::decode(&m).unwrap();
        assert!(matches!(incoming, Incoming::Message { offset: None, .. }));
        let reset = ServerFrame::Reset {
            channel: "a",
            offset: 4,
            epoch: "e1",
        }
        .encode();
        assert_eq!(
            reset,
            r#"{"type":"reset","channel":"a","offset":4,"epoch":"e1"}"#
        );
    }

    #[test]
    fn message_parts_make_the_same_frame_as_the_encoder() {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let parts = MessageParts::new("chat:lobby", &data);
        let whole = ServerFrame::Message {
            channel: "chat:lobby",
            offset: Some(42),
            data: &data,
        }
        .encode();
        assert_eq!(parts.with_offset(42), whole);
        for offset in [0, 9, 10, 42, 999, 1000, u64::MAX] {
            assert_eq!(parts.frame_len(offset), parts.with_offset(offset).len());
        }
        assert_eq!(
            whole,
            r#"{"type":"message","channel":"chat:lobby","offset":42,"data":{"text":"hi"}}"#
        );
        match Incoming::decode(&whole).unwrap() {
            Incoming::Message { offset, .. } => assert_eq!(offset, Some(42)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn since_and_limit() {
        let r = decode_command(
            r#"{"type":"subscribe","channel":"a","since":{"offset":7,"epoch":"e-1"},"id":1}"#,
        )
        .unwrap();
        match r.command {
            Command::Subscribe { since, .. } => assert_eq!(since, Some(Position::new(7, "e-1"))),
            other => panic!("unexpected {other:?}"),
        }
        let r = decode_command(r#"{"type":"subscribe","channel":"a","since":null}"#).unwrap();
        assert!(matches!(r.command, Command::Subscribe { since: None, .. }));
        let r = decode_command(r#"{"type":"history","channel":"a","limit":5,"id":2}"#).unwrap();
        assert!(matches!(
            r.command,
            Command::History {
                limit: Some(5),
                since: None,
                ..
            }
        ));
        let cases = [
            (
                r#""since":5"#,
                "since must be an object {\"offset\", \"epoch\"}",
            ),
            (r#""since":{"epoch":"e"}"#, "missing field since.offset"),
            (r#""since":{"offset":1}"#, "missing field since.epoch"),
            (
                r#""since":{"offset":-1,"epoch":"e"}"#,
                "since.offset must be a non-negative integer",
            ),
            (
                r#""since":{"offset":"3","epoch":"e"}"#,
                "since.offset must be a non-negative integer",
            ),
            (
                r#""since":{"offset":1.5,"epoch":"e"}"#,
                "since.offset must be a non-negative integer",
            ),
            (
                r#""since":{"offset":1,"epoch":""}"#,
                "since.epoch must be a string of 1 to 64 letters, digits, '-' or '_'",
            ),
            (
                r#""since":{"offset":1,"epoch":7}"#,
                "since.epoch must be a string of 1 to 64 letters, digits, '-' or '_'",
            ),
        ];
        for (field, message) in cases {
            let e = err(&format!(
                r#"{{"type":"subscribe","channel":"a",{field},"id":4}}"#
            ));
            assert_eq!((e.id, e.message.as_str()), (Some(4), message), "{field}");
        }
        for limit in ["0", "1001", "-1", "\"5\"", "2.5"] {
            let e = err(&format!(
                r#"{{"type":"history","channel":"a","limit":{limit},"id":5}}"#
            ));
            assert_eq!(
                (e.id, e.message.as_str()),
                (Some(5), "limit must be a whole number from 1 to 1000"),
                "{limit}"
            );
        }
    }

    #[test]
    fn outgoing_since() {
        let since = Position::new(3, "ep");
        let command = Outgoing {
            id: Some(1),
            channel: Some("a"),
            since: Some(&since),
            ..Outgoing::new("subscribe")
        };
        assert_eq!(
            command.encode(),
            r#"{"type":"subscribe","id":1,"channel":"a","since":{"offset":3,"epoch":"ep"}}"#
        );
    }
}
