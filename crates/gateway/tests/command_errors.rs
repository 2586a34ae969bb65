//! Every error of every client command, produced against running nodes and
//! checked against the table "Errors of each command" in docs/protocol.md.
//!
//! The table is the contract a client developer reads; this test parses it
//! and holds the binary to it both ways: each error a case provokes must be
//! a row of the table (a new error the docs do not list fails here), and
//! each row must be provoked by some case (a row nothing produces fails
//! here too). Every case also asserts its exact code and message.
//!
//! Three nodes: one in memory with namespaces for each refusal, one with a
//! message rate of 1/s, and one in cluster mode whose real `redis-server`
//! is killed, for the `internal` errors.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::sync::Arc;

use common::*;
use receiver::{Answer, Receiver, Request};
use serde_json::{json, Value};
use switchboard_client::{Connection, Frame, Incoming, Message};

/// One row of the docs table.
#[derive(Debug)]
struct Row {
    /// The commands it names, or empty for "every command".
    commands: Vec<String>,
    /// A `publish_batch` entry's error rather than the reply's.
    entry: bool,
    code: String,
    message: String,
}

/// The rows of "### Errors of each command" in docs/protocol.md.
fn documented() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let text = std::fs::read_to_string(path).unwrap();
    let section = text
        .split("\n### Errors of each command\n")
        .nth(1)
        .expect("docs/protocol.md has a section \"Errors of each command\"");
    let section = section.split("\n#").next().unwrap();
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells[0] == "command" || cells.len() < 3 {
            continue;
        }
        let unquote = |s: &str| s.trim_matches('`').to_owned();
        let entry = cells[0].ends_with(" entry");
        let commands = if cells[0] == "every command" {
            Vec::new()
        } else {
            cells[0]
                .trim_end_matches(" entry")
                .split(", ")
                .map(unquote)
                .collect()
        };
        rows.push(Row {
            commands,
            entry,
            code: unquote(cells[1]),
            message: unquote(cells[2]),
        });
    }
    assert!(rows.len() > 40, "the table was not read: {rows:?}");
    rows
}

/// Whether `message` is an instance of `pattern`, where each `<...>` of the
/// pattern stands for any non-empty text.
fn instance_of(pattern: &str, message: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else {
            break;
        };
        literals.push(&rest[..start]);
        rest = &rest[start + end + 1..];
    }
    literals.push(rest);
    if literals.len() == 1 {
        return pattern == message;
    }
    let (first, last) = (literals[0], literals[literals.len() - 1]);
    let Some(mut middle) = message.strip_prefix(first) else {
        return false;
    };
    for literal in &literals[1..literals.len() - 1] {
        // Each placeholder takes at least one character.
        let Some(at) = middle.get(1..).and_then(|m| m.find(literal)) else {
            return false;
        };
        middle = &middle[at + 1 + literal.len()..];
    }
    middle.len() > last.len() && middle.ends_with(last)
}

#[test]
fn placeholders_match_any_non_empty_text() {
    assert!(instance_of(
        "missing field channel",
        "missing field channel"
    ));
    assert!(!instance_of("missing field channel", "missing field data"));
    assert!(instance_of(
        "unknown command type \"<type>\"",
        "unknown command type \"dance\""
    ));
    assert!(!instance_of(
        "unknown command type \"<type>\"",
        "unknown command type \"\""
    ));
    assert!(instance_of("<why>", "malformed token"));
    assert!(instance_of(
        "since.offset <n> is beyond the channel's latest offset <latest>",
        "since.offset 99 is beyond the channel's latest offset 0"
    ));
    assert!(!instance_of(
        "since.offset <n> is beyond the channel's latest offset <latest>",
        "since.offset 99 is beyond the channel's latest"
    ));
}

/// An error a case provoked.
#[derive(Debug)]
struct Seen {
    command: String,
    entry: bool,
    code: String,
    message: String,
}

#[derive(Default)]
struct Cases {
    seen: Vec<Seen>,
    next_id: u64,
}

impl Cases {
    /// Sends `frame` (with an `id` added when it is an object without one)
    /// and asserts the error it gets.
    async fn expect(
        &mut self,
        conn: &mut Connection,
        command: &str,
        frame: Value,
        code: &str,
        message: &str,
    ) {
        let text = self.with_id(frame);
        conn.send_text(text.clone()).await.unwrap();
        let (got_code, got_message) = self.error_of(conn).await;
        assert_eq!(
            (got_code.as_str(), got_message.as_str()),
            (code, message),
            "{command}: {text}"
        );
        self.record(command, false, code, message);
    }

    /// Sends a raw text frame that gets an `error` frame or a reply.
    async fn expect_raw(
        &mut self,
        conn: &mut Connection,
        command: &str,
        raw: Message,
        code: &str,
        message: &str,
    ) {
        conn.send_message(raw).await.unwrap();
        let (got_code, got_message) = self.error_of(conn).await;
        assert_eq!(
            (got_code.as_str(), got_message.as_str()),
            (code, message),
            "{command}"
        );
        self.record(command, false, code, message);
    }

    /// Sends a one-message `publish_batch` and asserts its entry's error.
    async fn expect_entry(
        &mut self,
        conn: &mut Connection,
        entry: Value,
        code: &str,
        message: &str,
    ) {
        self.expect_entries(conn, json!([entry]), 0, code, message)
            .await;
    }

    /// Sends a `publish_batch` of `messages` and asserts entry `at`'s error.
    async fn expect_entries(
        &mut self,
        conn: &mut Connection,
        messages: Value,
        at: usize,
        code: &str,
        message: &str,
    ) {
        let text = self.with_id(json!({ "type": "publish_batch", "messages": messages }));
        conn.send_text(text.clone()).await.unwrap();
        let result = loop {
            match within(conn.next_frame()).await.unwrap() {
                Frame::Incoming(Incoming::Reply {
                    result: Some(result),
                    ..
                }) => break result,
                Frame::Incoming(Incoming::Message { .. }) => {}
                other => panic!("expected the batch's reply to {text}, got {other:?}"),
            }
        };
        let error = &result["replies"][at]["error"];
        assert_eq!(
            (error["code"].as_str(), error["message"].as_str()),
            (Some(code), Some(message)),
            "publish_batch entry {at}: {text} got {result}"
        );
        self.record("publish_batch", true, code, message);
    }

    fn with_id(&mut self, mut frame: Value) -> String {
        if let Some(object) = frame.as_object_mut() {
            if !object.contains_key("id") {
                self.next_id += 1;
                object.insert("id".into(), json!(self.next_id));
            }
        }
        frame.to_string()
    }

    /// The next error, as a reply or an `error` frame; messages, joins and
    /// leaves on the way are skipped.
    async fn error_of(&self, conn: &mut Connection) -> (String, String) {
        loop {
            match within(conn.next_frame()).await.unwrap() {
                Frame::Incoming(Incoming::Reply {
                    error: Some(error), ..
                })
                | Frame::Incoming(Incoming::Error { error }) => return (error.code, error.message),
                Frame::Incoming(
                    Incoming::Message { .. } | Incoming::Join { .. } | Incoming::Leave { .. },
                ) => {}
                // The answer to an earlier frame the case sent first.
                Frame::Incoming(Incoming::Reply {
                    id, error: None, ..
                }) if id != self.next_id => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    }

    fn record(&mut self, command: &str, entry: bool, code: &str, message: &str) {
        self.seen.push(Seen {
            command: command.to_owned(),
            entry,
            code: code.to_owned(),
            message: message.to_owned(),
        });
    }

    /// Each error seen is a row of the table, and each row was seen (for
    /// each command it names).
    fn check_against(&self, rows: &[Row]) {
        let covers = |row: &Row, seen: &Seen| {
            row.entry == seen.entry
                && (row.commands.is_empty() || row.commands.contains(&seen.command))
                && row.code == seen.code
                && instance_of(&row.message, &seen.message)
        };
        for seen in &self.seen {
            assert!(
                rows.iter().any(|row| covers(row, seen)),
                "docs/protocol.md's \"Errors of each command\" does not list {seen:?}"
            );
        }
        for row in rows {
            let commands: Vec<Option<&String>> = if row.commands.is_empty() {
                vec![None]
            } else {
                row.commands.iter().map(Some).collect()
            };
            for command in commands {
                assert!(
                    self.seen.iter().any(|seen| covers(row, seen)
                        && command.is_none_or(|c| *c == seen.command)),
                    "no case produces the documented row {row:?} for {command:?}"
                );
            }
        }
    }
}

const BACKEND_SECRET: &str = "backend-secret-backend-secret-0123456789";

/// Alice may subscribe to and publish on `chat:*` and `quiet:*`.
fn alice() -> String {
    sign(&json!({
        "sub": "alice", "exp": now() + 3600,
        "channels": ["chat:*", "quiet:*"], "publish": ["chat:*", "quiet:*"],
    }))
}

/// Mallory is granted `news:*` only.
fn mallory() -> String {
    sign(&json!({ "sub": "mallory", "exp": now() + 3600, "channels": ["news:*"] }))
}

/// The channel-name errors of a command whose channel is in `channel`.
async fn channel_cases(cases: &mut Cases, conn: &mut Connection, command: &str, extra: Value) {
    let frame = |channel: Option<Value>| {
        let mut frame = json!({ "type": command });
        for (key, value) in extra.as_object().unwrap() {
            frame[key] = value.clone();
        }
        if let Some(channel) = channel {
            frame["channel"] = channel;
        }
        frame
    };
    let long = "c".repeat(201);
    let cases_of = [
        (None, "missing field channel"),
        (Some(Value::Null), "missing field channel"),
        (Some(json!(5)), "channel must be a string"),
        (Some(json!("")), "invalid channel: channel name is empty"),
        (
            Some(json!(long)),
            "invalid channel: channel name is longer than 200 bytes",
        ),
        (
            Some(json!("chat:a b")),
            "invalid channel: channel name contains ' '; allowed are letters, digits and _ - : . @ / = +",
        ),
        (
            Some(json!("chat:*")),
            "invalid channel: '*' may only end a pattern",
        ),
    ];
    for (channel, message) in cases_of {
        cases
            .expect(conn, command, frame(channel), "bad_request", message)
            .await;
    }
}

/// The malformed-`since` errors of `subscribe` and `history`.
async fn since_cases(cases: &mut Cases, conn: &mut Connection, command: &str) {
    let with = |since: Value| json!({ "type": command, "channel": "chat:lobby", "since": since });
    let bad = [
        (json!(5), "since must be an object {\"offset\", \"epoch\"}"),
        (json!({ "epoch": "e1" }), "missing field since.offset"),
        (json!({ "offset": 1 }), "missing field since.epoch"),
        (
            json!({ "offset": -1, "epoch": "e1" }),
            "since.offset must be a non-negative integer",
        ),
        (
            json!({ "offset": 1, "epoch": "" }),
            "since.epoch must be a string of 1 to 64 letters, digits, '-' or '_'",
        ),
    ];
    for (since, message) in bad {
        cases
            .expect(conn, command, with(since), "bad_request", message)
            .await;
    }
}

/// A node in memory: every refusal that needs no broker failure.
async fn refusals(cases: &mut Cases) {
    let receiver = Receiver::start();
    receiver.set_handler(Arc::new(|_: &Request| {
        Answer::Json(
            200,
            json!({ "allow": false, "reason": "not a collaborator" }),
        )
    }));
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET)
        .toml(&format!(
            "[namespaces.quiet]\npresence = false\nhistory_size = 0\n\
             [namespaces.doc]\nsubscribe_proxy = \"{}\"\n\
             [namespaces.gone]\nsubscribe_proxy = \"http://127.0.0.1:{}/subscribe\"\n",
            receiver.url("/subscribe"),
            free_port()
        ))
        .start();
    let (mut conn, _) = gateway.connect_token(&alice()).await;
    let c = &mut conn;

    // What every frame can get.
    let every = "every command";
    cases
        .expect_raw(
            c,
            every,
            Message::text("[1]"),
            "bad_request",
            "frame must be a JSON object",
        )
        .await;
    cases
        .expect_raw(
            c,
            every,
            Message::text(r#"{"type":"ping","id":1,"id":2}"#),
            "bad_request",
            "frame is not a valid JSON object: duplicate field `id` at line 1 column 26",
        )
        .await;
    cases
        .expect(
            c,
            every,
            json!({ "type": "ping", "id": -1 }),
            "bad_request",
            "id must be a non-negative integer",
        )
        .await;
    cases
        .expect(
            c,
            every,
            json!({ "channel": "chat:lobby" }),
            "bad_request",
            "missing field type",
        )
        .await;
    cases
        .expect(
            c,
            every,
            json!({ "type": 7 }),
            "bad_request",
            "type must be a string",
        )
        .await;
    cases
        .expect(
            c,
            every,
            json!({ "type": "dance" }),
            "bad_request",
            "unknown command type \"dance\"",
        )
        .await;
    cases
        .expect_raw(
            c,
            every,
            Message::binary(vec![1u8, 2, 3]),
            "bad_request",
            "binary frames are not supported; send JSON text",
        )
        .await;

    // Channel names, for each command that names one.
    for command in ["subscribe", "unsubscribe", "presence", "history"] {
        channel_cases(cases, c, command, json!({})).await;
    }
    channel_cases(cases, c, "publish", json!({ "data": 1 })).await;
    for command in ["subscribe", "history"] {
        since_cases(cases, c, command).await;
    }

    // A `since` beyond the channel's latest offset, in its current epoch.
    let position = within(c.subscribe("chat:lobby")).await.unwrap();
    within(c.unsubscribe("chat:lobby")).await.unwrap();
    let since = json!({ "offset": 99, "epoch": position["epoch"] });
    for command in ["subscribe", "history"] {
        cases
            .expect(
                c,
                command,
                json!({ "type": command, "channel": "chat:lobby", "since": since }),
                "bad_request",
                "since.offset 99 is beyond the channel's latest offset 0",
            )
            .await;
    }

    // subscribe
    cases
        .expect(
            c,
            "subscribe",
            json!({ "type": "subscribe", "channel": "doc:42" }),
            "forbidden",
            "the backend refused subscribing to doc:42: not a collaborator",
        )
        .await;
    cases
        .expect(
            c,
            "subscribe",
            json!({ "type": "subscribe", "channel": "gone:1" }),
            "unavailable",
            "subscribe authorization unavailable: the backend could not be reached",
        )
        .await;
    for n in 0..128 {
        within(c.subscribe(&format!("chat:c{n}"))).await.unwrap();
    }
    cases
        .expect(
            c,
            "subscribe",
            json!({ "type": "subscribe", "channel": "chat:one-more" }),
            "bad_request",
            "subscription limit of 128 channels reached",
        )
        .await;

    // publish
    cases
        .expect(
            c,
            "publish",
            json!({ "type": "publish", "channel": "chat:lobby" }),
            "bad_request",
            "missing field data",
        )
        .await;
    let deep: Value =
        serde_json::from_str(&format!("{}{}", "[".repeat(33), "]".repeat(33))).unwrap();
    cases
        .expect(
            c,
            "publish",
            json!({ "type": "publish", "channel": "chat:lobby", "data": deep }),
            "bad_request",
            "data is nested deeper than 32 levels",
        )
        .await;

    // publish_batch, as a whole and per entry
    let batch = "publish_batch";
    cases
        .expect(
            c,
            batch,
            json!({ "type": batch }),
            "bad_request",
            "missing field messages",
        )
        .await;
    cases
        .expect(
            c,
            batch,
            json!({ "type": batch, "messages": {} }),
            "bad_request",
            "messages must be an array of {\"channel\", \"data\"} objects",
        )
        .await;
    cases
        .expect(
            c,
            batch,
            json!({ "type": batch, "messages": [] }),
            "bad_request",
            "messages must hold 1 to 1000 messages",
        )
        .await;
    cases
        .expect_entry(
            c,
            json!(5),
            "bad_request",
            "message must be a JSON object {\"channel\", \"data\"}",
        )
        .await;
    cases
        .expect_entries(
            c,
            json!([{ "channel": "chat:lobby", "data": 1 }, { "channel": 5, "data": 1 }]),
            1,
            "bad_request",
            "channel must be a string",
        )
        .await;
    cases
        .expect_entry(
            c,
            json!({ "data": 1 }),
            "bad_request",
            "missing field channel",
        )
        .await;
    cases
        .expect_entry(
            c,
            json!({ "channel": "", "data": 1 }),
            "bad_request",
            "invalid channel: channel name is empty",
        )
        .await;
    cases
        .expect_entry(
            c,
            json!({ "channel": "chat:lobby" }),
            "bad_request",
            "missing field data",
        )
        .await;
    cases
        .expect_entry(
            c,
            json!({ "channel": "chat:lobby", "data": deep }),
            "bad_request",
            "data is nested deeper than 32 levels",
        )
        .await;
    // A duplicate field cannot be written with `json!`: the raw frame.
    c.send_text(
        r#"{"type":"publish_batch","id":900,"messages":[{"channel":"chat:lobby","channel":"chat:x","data":1}]}"#,
    )
    .await
    .unwrap();
    let reply = loop {
        match within(c.next_frame()).await.unwrap() {
            Frame::Incoming(Incoming::Reply {
                id: 900,
                result: Some(result),
                ..
            }) => break result,
            Frame::Incoming(Incoming::Message { .. }) => {}
            other => panic!("expected the batch's reply, got {other:?}"),
        }
    };
    let error = &reply["replies"][0]["error"];
    assert_eq!(error["code"], "bad_request", "{reply}");
    let message = error["message"].as_str().unwrap();
    assert_eq!(
        message,
        "message is not a valid JSON object: duplicate field `channel` at line 1 column 33"
    );
    cases.record(batch, true, "bad_request", message);

    // presence and history
    cases
        .expect(
            c,
            "presence",
            json!({ "type": "presence", "channel": "quiet:1" }),
            "bad_request",
            "presence is disabled for namespace \"quiet\"",
        )
        .await;
    cases
        .expect(
            c,
            "history",
            json!({ "type": "history", "channel": "quiet:1" }),
            "bad_request",
            "history is disabled for namespace \"quiet\"",
        )
        .await;
    cases
        .expect(
            c,
            "history",
            json!({ "type": "history", "channel": "chat:lobby", "limit": 0 }),
            "bad_request",
            "limit must be a whole number from 1 to 1000",
        )
        .await;

    // refresh
    let refresh = "refresh";
    cases
        .expect(
            c,
            refresh,
            json!({ "type": refresh }),
            "bad_request",
            "missing field token",
        )
        .await;
    cases
        .expect(
            c,
            refresh,
            json!({ "type": refresh, "token": 5 }),
            "bad_request",
            "token must be a string",
        )
        .await;
    cases
        .expect(
            c,
            refresh,
            json!({ "type": refresh, "token": "abc" }),
            "unauthorized",
            "malformed token",
        )
        .await;
    let expired = sign(&json!({ "sub": "alice", "exp": now() - 3600 }));
    cases
        .expect(
            c,
            refresh,
            json!({ "type": refresh, "token": expired }),
            "token_expired",
            "token has expired",
        )
        .await;
    cases
        .expect(
            c,
            refresh,
            json!({ "type": refresh, "token": token("bob") }),
            "forbidden",
            "token belongs to another user",
        )
        .await;

    // What a token that grants none of it gets.
    let (mut other, _) = gateway.connect_token(&mallory()).await;
    let m = &mut other;
    let on = |command: &str| json!({ "type": command, "channel": "chat:lobby", "data": 1 });
    cases
        .expect(
            m,
            "subscribe",
            on("subscribe"),
            "forbidden",
            "token does not grant subscribing to chat:lobby",
        )
        .await;
    cases
        .expect(
            m,
            "publish",
            on("publish"),
            "forbidden",
            "token does not grant publishing to chat:lobby",
        )
        .await;
    cases
        .expect_entry(
            m,
            json!({ "channel": "chat:lobby", "data": 1 }),
            "forbidden",
            "token does not grant publishing to chat:lobby",
        )
        .await;
    for command in ["presence", "history"] {
        cases
            .expect(
                m,
                command,
                on(command),
                "forbidden",
                "token does not grant access to chat:lobby",
            )
            .await;
    }
}

/// A node allowing one frame per second: the message rate's errors.
async fn rate(cases: &mut Cases) {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MSG_RATE", "1")
        .env("SWITCHBOARD_MSG_BURST", "1")
        .start();
    let (mut conn, _) = gateway.connect_token(&alice()).await;
    conn.send_text(r#"{"type":"ping","id":0}"#).await.unwrap();
    cases
        .expect(
            &mut conn,
            "every command",
            json!({ "type": "ping" }),
            "rate_limited",
            "message rate limit of 1/s exceeded; command not executed",
        )
        .await;
    // A fresh bucket: the frame pays for the first message, the second
    // finds it empty.
    let (mut conn, _) = gateway.connect_token(&alice()).await;
    let one = json!({ "channel": "chat:lobby", "data": 1 });
    cases
        .expect_entries(
            &mut conn,
            json!([one, one]),
            1,
            "rate_limited",
            "message rate limit of 1/s exceeded; message not published",
        )
        .await;
}

/// A node in cluster mode whose Redis is killed: the `internal` and
/// `unavailable` errors.
async fn redis_down(cases: &mut Cases) {
    let mut redis = Redis::start();
    let gateway = cluster_node(&redis, "down-1", "").await;
    let (mut holder, _) = gateway.connect_token(&alice()).await;
    let (mut conn, _) = gateway.connect_token(&alice()).await;
    // The node holds the channel's Redis subscription through `holder`, so
    // `conn`'s subscribe needs no new one and fails at the history read.
    within(holder.subscribe("chat:held")).await.unwrap();
    redis.stop();
    let c = &mut conn;
    cases
        .expect(
            c,
            "subscribe",
            json!({ "type": "subscribe", "channel": "chat:fresh" }),
            "internal",
            "subscription failed: broker unavailable",
        )
        .await;
    for command in ["subscribe", "history"] {
        cases
            .expect(
                c,
                command,
                json!({ "type": command, "channel": "chat:held" }),
                "internal",
                "history unavailable",
            )
            .await;
    }
    cases
        .expect(
            c,
            "presence",
            json!({ "type": "presence", "channel": "chat:held" }),
            "internal",
            "presence unavailable",
        )
        .await;
    cases
        .expect(
            c,
            "publish",
            json!({ "type": "publish", "channel": "chat:held", "data": 1 }),
            "unavailable",
            "message not published: broker unavailable",
        )
        .await;
    cases
        .expect_entry(
            c,
            json!({ "channel": "chat:held", "data": 1 }),
            "unavailable",
            "message not published: broker unavailable",
        )
        .await;
}

#[tokio::test]
async fn every_command_error_is_documented_and_every_documented_error_occurs() {
    let rows = documented();
    let mut cases = Cases::default();
    refusals(&mut cases).await;
    rate(&mut cases).await;
    redis_down(&mut cases).await;
    cases.check_against(&rows);
}
