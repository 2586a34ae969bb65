//! Hostile input over real sockets, beyond the malformed-frame cases in
//! tests/session.rs: invalid UTF-8, ids reused or left out, channel names that
//! break the rules, JSON nested far past any parser's comfort, and
//! handshakes with a 100 KB token or header. Each gets a clear error or
//! refusal, and the node stays healthy for everyone else.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard_client::{Connection, Frame, Incoming};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

async fn next(conn: &mut Connection) -> Incoming {
    match within(conn.next_frame()).await.unwrap() {
        Frame::Incoming(incoming) => incoming,
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends a frame and returns the error it gets (code, message, reply id).
async fn error_for(conn: &mut Connection, frame: &str) -> (String, String, Option<u64>) {
    conn.send_text(frame).await.unwrap();
    match next(conn).await {
        Incoming::Reply {
            id,
            error: Some(error),
            ..
        } => (error.code, error.message, Some(id)),
        Incoming::Error { error } => (error.code, error.message, None),
        other => panic!("expected an error for {frame}, got {other:?}"),
    }
}

async fn healthy(gateway: &Gateway) {
    let (status, _, body) = http_get(gateway.addr, "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (mut conn, _) = gateway.connect("witness").await;
    within(conn.ping()).await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let gateway = Gateway::start();
    let (mut conn, _) = gateway.connect("alice").await;
    let bytes = b"{\"type\":\"ping\",\"id\":1,\"x\":\"\xff\xfe\"}".to_vec();
    let frame = WsFrame::message(bytes, OpCode::Data(Data::Text), true);
    conn.send_message(Message::Frame(frame)).await.unwrap();
    let (code, reason) = within(conn.wait_closed()).await.unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (Some(1007), "text frame is not valid UTF-8")
    );
    healthy(&gateway).await;
}

#[tokio::test]
async fn ids_reused_or_missing() {
    let gateway = Gateway::start();
    let (mut conn, _) = gateway.connect("alice").await;
    // The same id twice: each command gets its own reply.
    conn.send_text(r#"{"type":"ping","id":7}"#).await.unwrap();
    conn.send_text(r#"{"type":"ping","id":7}"#).await.unwrap();
    for _ in 0..2 {
        let Incoming::Reply {
            id: 7, error: None, ..
        } = next(&mut conn).await
        else {
            panic!("expected a reply to id 7")
        };
    }
    // No id: a command that succeeds is answered by its effect alone...
    conn.send_text(r#"{"type":"subscribe","channel":"quiet"}"#)
        .await
        .unwrap();
    conn.publish("quiet", &json!("hello")).await.unwrap();
    assert_eq!(
        within(conn.expect_message()).await.unwrap(),
        ("quiet".to_owned(), json!("hello"))
    );
    // ...and one that fails gets an error frame without an id.
    assert_eq!(
        error_for(&mut conn, r#"{"type":"subscribe","channel":"a b"}"#).await,
        (
            "bad_request".to_owned(),
            "invalid channel: channel name contains ' '; allowed are letters, digits and _ - : . @ / = +".to_owned(),
            None
        )
    );
    // Ids must be whole numbers a client can match.
    // (`"id": null` counts as no id.)
    for id in ["-1", "1.5", "\"7\"", "18446744073709551616", "[1]"] {
        let frame = format!(r#"{{"type":"ping","id":{id}}}"#);
        let (code, message, reply_id) = error_for(&mut conn, &frame).await;
        assert_eq!(
            (code.as_str(), message.as_str(), reply_id),
            ("bad_request", "id must be a non-negative integer", None),
            "for id {id}"
        );
    }
}

#[tokio::test]
async fn channel_names_that_break_the_rules() {
    let gateway = Gateway::start();
    let (mut conn, _) = gateway.connect("alice").await;
    let too_long = "a".repeat(201);
    let cases: &[(&str, &str)] = &[
        ("", "invalid channel: channel name is empty"),
        (&too_long, "invalid channel: channel name is longer than 200 bytes"),
        ("chat:*", "invalid channel: '*' may only end a pattern"),
        ("*", "invalid channel: '*' may only end a pattern"),
        ("caf\u{e9}", "invalid channel: channel name contains '\u{e9}'; allowed are letters, digits and _ - : . @ / = +"),
        ("new\nline", "invalid channel: channel name contains '\\n'; allowed are letters, digits and _ - : . @ / = +"),
        ("nul\u{0}", "invalid channel: channel name contains '\\0'; allowed are letters, digits and _ - : . @ / = +"),
    ];
    for (n, (channel, message)) in cases.iter().enumerate() {
        for command in ["subscribe", "publish", "presence", "unsubscribe"] {
            let frame =
                json!({"type": command, "channel": channel, "data": 1, "id": n}).to_string();
            assert_eq!(
                error_for(&mut conn, &frame).await,
                (
                    "bad_request".to_owned(),
                    (*message).to_owned(),
                    Some(n as u64)
                ),
                "{command} {channel:?}"
            );
        }
    }
    let (code, message, _) =
        error_for(&mut conn, r#"{"type":"subscribe","channel":42,"id":1}"#).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("bad_request", "channel must be a string")
    );
    within(conn.ping()).await.unwrap();
}

#[tokio::test]
async fn json_nested_thousands_deep_is_an_error_not_a_crash() {
    let gateway = Gateway::start();
    let (mut conn, _) = gateway.connect("alice").await;
    // 20,000 levels in 40 KB: past serde_json's recursion limit and far past
    // what a recursive parser's stack would survive.
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let (code, _, _) = error_for(
        &mut conn,
        &format!(r#"{{"type":"publish","channel":"a","data":{deep},"id":1}}"#),
    )
    .await;
    assert_eq!(code, "bad_request");
    let (code, message, _) = error_for(&mut conn, &deep).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("bad_request", "frame must be a JSON object")
    );
    let deep_object = format!("{}{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let (code, _, _) = error_for(&mut conn, &deep_object).await;
    assert_eq!(code, "bad_request");
    within(conn.ping()).await.unwrap();
    healthy(&gateway).await;
}

/// Sends a raw handshake with one huge part and returns (status, body).
async fn huge_handshake(gateway: &Gateway, path: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut headers = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    headers.extend_from_slice(extra);
    let (status, _, body) = http_get(gateway.addr, path, &headers).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn handshakes_with_a_100_kb_token_or_header_are_refused() {
    let gateway = Gateway::start();
    let huge = "A".repeat(100 * 1024);
    // hyper refuses a request head that overflows its 16 KiB buffer before
    // routing: 431 with no body, and the connection is closed.
    let (status, _) = huge_handshake(&gateway, &format!("/ws?token={huge}"), &[]).await;
    assert_eq!(status, 431);
    let (status, _) = huge_handshake(
        &gateway,
        "/ws",
        &[("Authorization", &format!("Bearer {huge}"))],
    )
    .await;
    assert_eq!(status, 431);
    let (status, _) = huge_handshake(&gateway, "/ws", &[("X-Junk", &huge)]).await;
    assert_eq!(status, 431);
    // A long token that fits in the head is refused by its length, before
    // any decoding.
    let long = "B".repeat(10 * 1024);
    let (status, body) = huge_handshake(&gateway, &format!("/ws?token={long}"), &[]).await;
    assert_eq!(
        (status, body),
        (
            401,
            json!({"error": "unauthorized", "message": "token is longer than 8192 bytes"})
        )
    );
    healthy(&gateway).await;
}
