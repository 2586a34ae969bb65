//! The `switchboard.msgpack` format against the real gateway
//! (docs/protocol.md, "Formats and compression"): a MessagePack client and
//! a JSON client on one channel each get every message in their own format
//! (binary frames and text frames), whoever published it (either of them or
//! the server API), on one node and across two cluster nodes on a real
//! redis-server; frames with no JSON form and binary frames that are not a
//! map are refused with the documented messages and publish nothing; the
//! subprotocol negotiation (first of the two in the client's order, 400 for
//! a list with neither); the welcome's `"format":"msgpack"`; and `batch=1`
//! ignored on a MessagePack connection.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, Format, IntoClientRequest};
use switchboard_protocol::msgpack;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const MSGPACK: &str = "switchboard.msgpack";

/// A frame as it came: binary (MessagePack, shown as its JSON) or text.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Binary(Value),
    Text(Value),
}

/// A WebSocket read frame by frame, so a test sees each frame's kind.
struct Raw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Whether commands go as MessagePack.
    msgpack: bool,
    next_id: u64,
}

impl Raw {
    /// Connects to `gateway` as `user` with `Sec-WebSocket-Protocol:
    /// protocols` (none when empty) and `query` after the token; returns
    /// the socket, the 101's subprotocol and the welcome frame.
    async fn connect(
        gateway: &Gateway,
        user: &str,
        protocols: &str,
        query: &str,
    ) -> (Raw, Option<String>, Frame) {
        let url = format!("{}{query}", gateway.ws_url(&token(user)));
        let mut request = url.into_client_request().unwrap();
        if !protocols.is_empty() {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", protocols.parse().unwrap());
        }
        let (ws, response) = within(tokio_tungstenite::connect_async(request))
            .await
            .unwrap();
        let answered = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut raw = Raw {
            ws,
            msgpack: answered.as_deref() == Some(MSGPACK),
            next_id: 1,
        };
        let welcome = raw.next().await;
        assert_eq!(body(&welcome)["type"], "welcome", "{welcome:?}");
        (raw, answered, welcome)
    }

    async fn msgpack(gateway: &Gateway, user: &str) -> Raw {
        let (raw, answered, _) = Raw::connect(gateway, user, MSGPACK, "").await;
        assert_eq!(answered.as_deref(), Some(MSGPACK));
        raw
    }

    async fn json(gateway: &Gateway, user: &str) -> Raw {
        let (raw, answered, _) = Raw::connect(gateway, user, "", "").await;
        assert_eq!(answered, None);
        raw
    }

    /// The next data frame, skipping pings.
    async fn next(&mut self) -> Frame {
        loop {
            match within(self.ws.next()).await.unwrap().unwrap() {
                Message::Binary(bytes) => {
                    let text = msgpack::to_json(&bytes)
                        .unwrap_or_else(|e| panic!("a binary frame that is not MessagePack: {e}"));
                    return Frame::Binary(serde_json::from_str(&text).unwrap());
                }
                Message::Text(text) => return Frame::Text(serde_json::from_str(&text).unwrap()),
                Message::Close(close) => panic!("closed: {close:?}"),
                _ => continue,
            }
        }
    }

    async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    /// Sends `command` in the connection's format.
    async fn send(&mut self, command: Value) {
        let text = command.to_string();
        let message = if self.msgpack {
            Message::binary(msgpack::to_msgpack(&text).unwrap())
        } else {
            Message::text(text)
        };
        self.ws.send(message).await.unwrap();
    }

    /// Sends `command` with the next id and returns its reply (pushes
    /// read meanwhile are not expected).
    async fn request(&mut self, mut command: Value) -> Frame {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send(command).await;
        let reply = self.next().await;
        assert_eq!(body(&reply)["type"], "reply", "{reply:?}");
        assert_eq!(body(&reply)["id"], id, "{reply:?}");
        reply
    }

    async fn subscribe(&mut self, channel: &str) {
        let reply = self
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert!(body(&reply).get("error").is_none(), "{reply:?}");
        self.assert_format(&reply);
    }

    async fn publish(&mut self, channel: &str, data: Value) {
        let reply = self
            .request(json!({"type": "publish", "channel": channel, "data": data}))
            .await;
        assert!(body(&reply).get("error").is_none(), "{reply:?}");
    }

    /// Every frame a connection gets is in its format.
    fn assert_format(&self, frame: &Frame) {
        match frame {
            Frame::Binary(_) => assert!(self.msgpack, "a binary frame on a JSON connection"),
            Frame::Text(_) => assert!(
                !self.msgpack,
                "a text frame on a msgpack connection: {frame:?}"
            ),
        }
    }

    /// The next frame, which must be a message in the connection's format;
    /// returns its data.
    async fn expect_message(&mut self, channel: &str) -> Value {
        let frame = self.next().await;
        self.assert_format(&frame);
        let frame = body(&frame);
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["channel"], channel, "{frame}");
        frame["data"].clone()
    }
}

fn body(frame: &Frame) -> &Value {
    match frame {
        Frame::Binary(value) | Frame::Text(value) => value,
    }
}

/// Data with every JSON type, so the translation both ways is exercised.
fn data(from: &str) -> Value {
    json!({
        "from": from,
        "text": "héllo ✓",
        "n": 42,
        "neg": -7,
        "big": 18_000_000_000u64,
        "pi": 3.25,
        "ok": true,
        "none": null,
        "list": [1, "two", [3.5], {"four": false}],
    })
}

/// Both clients subscribed to `channel`, messages published by the
/// msgpack client, the JSON client and the server API (through `api_node`):
/// each client gets all three, in order, in its own format.
async fn each_gets_every_message_in_its_format(
    api_node: &Gateway,
    msgpack_client: &mut Raw,
    json_client: &mut Raw,
    channel: &str,
) {
    msgpack_client.subscribe(channel).await;
    json_client.subscribe(channel).await;

    msgpack_client.publish(channel, data("msgpack")).await;
    assert_eq!(
        msgpack_client.expect_message(channel).await,
        data("msgpack")
    );
    assert_eq!(json_client.expect_message(channel).await, data("msgpack"));

    json_client.publish(channel, data("json")).await;
    assert_eq!(json_client.expect_message(channel).await, data("json"));
    assert_eq!(msgpack_client.expect_message(channel).await, data("json"));

    let body = json!({"channel": channel, "data": data("api")}).to_string();
    let (status, answer) = api(api_node, "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(msgpack_client.expect_message(channel).await, data("api"));
    assert_eq!(json_client.expect_message(channel).await, data("api"));
}

#[tokio::test]
async fn msgpack_and_json_clients_each_get_every_message_in_their_format_on_one_node() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut m = Raw::msgpack(&gateway, "ann").await;
    let mut j = Raw::json(&gateway, "bob").await;
    each_gets_every_message_in_its_format(&gateway, &mut m, &mut j, "chat:formats").await;
}

#[tokio::test]
async fn msgpack_and_json_clients_each_get_every_message_in_their_format_across_two_nodes() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    // The msgpack client on A and the JSON client on B, then the other way.
    let mut m = Raw::msgpack(&a, "ann").await;
    let mut j = Raw::json(&b, "bob").await;
    each_gets_every_message_in_its_format(&a, &mut m, &mut j, "chat:across").await;
    let mut m = Raw::msgpack(&b, "cat").await;
    let mut j = Raw::json(&a, "dan").await;
    each_gets_every_message_in_its_format(&b, &mut m, &mut j, "chat:across.2").await;
}

/// MessagePack encoding by hand, for frames `to_msgpack` cannot make.
fn fixstr(s: &str) -> Vec<u8> {
    assert!(s.len() < 32);
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// `{"type":"publish","channel":<channel>,"id":<id>,"data":{"image":<bin 1 2 3>}}`.
fn publish_with_bin(channel: &str, id: u8) -> Vec<u8> {
    let mut out = vec![0x84];
    out.extend(fixstr("type"));
    out.extend(fixstr("publish"));
    out.extend(fixstr("channel"));
    out.extend(fixstr(channel));
    out.extend(fixstr("id"));
    out.push(id);
    out.extend(fixstr("data"));
    out.push(0x81);
    out.extend(fixstr("image"));
    out.extend([0xc4, 3, 1, 2, 3]);
    out
}

/// The `error` of a refusal: an error reply to `id`, or an `error` frame.
fn refusal(frame: &Frame) -> Value {
    let frame = body(frame);
    match frame["type"].as_str() {
        Some("reply") | Some("error") => frame["error"].clone(),
        _ => panic!("expected a refusal, got {frame}"),
    }
}

#[tokio::test]
async fn a_value_with_no_json_form_is_refused_and_nothing_is_published() {
    let gateway = Gateway::start();
    let mut m = Raw::msgpack(&gateway, "ann").await;
    let mut j = Raw::json(&gateway, "bob").await;
    j.subscribe("chat:bin").await;

    m.send_bytes(publish_with_bin("chat:bin", 9)).await;
    let answer = m.next().await;
    m.assert_format(&answer);
    assert_eq!(
        refusal(&answer),
        json!({"code": "bad_request", "message": "frame has no JSON form: bin value at data.image; send binary data as a base64 string"})
    );

    // The connection stays open, and the JSON subscriber's next message is
    // the one published after: the refused frame reached nobody.
    m.publish("chat:bin", json!({"image": "AQID"})).await;
    assert_eq!(j.expect_message("chat:bin").await, json!({"image": "AQID"}));
}

#[tokio::test]
async fn a_binary_frame_that_is_not_a_map_is_refused() {
    let gateway = Gateway::start();
    let mut m = Raw::msgpack(&gateway, "ann").await;
    // An array, a lone string, a reserved byte, a map with bytes after it.
    for bytes in [
        vec![0x93, 1, 2, 3],
        fixstr("publish"),
        vec![0xc1],
        vec![0x80, 0x80],
    ] {
        m.send_bytes(bytes.clone()).await;
        let answer = m.next().await;
        m.assert_format(&answer);
        let error = refusal(&answer);
        assert_eq!(error["code"], "bad_request", "{bytes:?}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with("frame is not a valid MessagePack map: "),
            "{bytes:?}: {message}"
        );
    }
    // Still open and working.
    m.subscribe("chat:after").await;
}

#[tokio::test]
async fn the_first_known_subprotocol_in_the_clients_order_is_chosen() {
    let gateway = Gateway::start();
    for (asked, chosen) in [
        ("switchboard.msgpack", Some("switchboard.msgpack")),
        ("switchboard.json", Some("switchboard.json")),
        (
            "chat, switchboard.json, switchboard.msgpack",
            Some("switchboard.json"),
        ),
        (
            "x, switchboard.msgpack, switchboard.json",
            Some("switchboard.msgpack"),
        ),
    ] {
        let (mut raw, answered, welcome) = Raw::connect(&gateway, "ann", asked, "").await;
        assert_eq!(answered.as_deref(), chosen, "{asked}");
        raw.assert_format(&welcome);
        raw.subscribe("chat:negotiated").await;
    }
}

#[tokio::test]
async fn a_subprotocol_list_with_neither_protocol_is_refused_with_400() {
    let gateway = Gateway::start();
    let mut request = gateway.ws_url(&token("ann")).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    let refused = within(Connection::connect_request(request)).await;
    match refused {
        Err(ClientError::Refused { status, body, .. }) => {
            assert_eq!(status, 400);
            assert_eq!(
                body,
                json!({"error": "bad_request", "message": "unsupported subprotocol; this server speaks switchboard.json and switchboard.msgpack"})
            );
        }
        other => panic!("expected a 400, got {:?}", other.map(|(_, w)| w)),
    }
}

#[tokio::test]
async fn the_welcome_names_the_msgpack_format_and_only_it() {
    let gateway = Gateway::start();
    let (_, _, welcome) = Raw::connect(&gateway, "ann", MSGPACK, "").await;
    let Frame::Binary(welcome) = welcome else {
        panic!("a msgpack welcome is binary: {welcome:?}")
    };
    assert_eq!(welcome["format"], "msgpack", "{welcome}");
    let (_, _, welcome) = Raw::connect(&gateway, "bob", "", "").await;
    let Frame::Text(welcome) = welcome else {
        panic!("a JSON welcome is text: {welcome:?}")
    };
    assert!(welcome.get("format").is_none(), "{welcome}");
    // A client that names switchboard.json is a JSON client too.
    let (_, _, welcome) = Raw::connect(&gateway, "cat", "switchboard.json", "").await;
    assert!(body(&welcome).get("format").is_none(), "{welcome:?}");
}

#[tokio::test]
async fn batch_is_ignored_on_a_msgpack_connection() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let (mut m, _, welcome) = Raw::connect(&gateway, "ann", MSGPACK, "&batch=1").await;
    assert!(body(&welcome).get("batch").is_none(), "{welcome:?}");
    m.subscribe("chat:batch").await;
    // Published back to back through the batch API: each arrives as its own
    // binary frame holding one map (a batch could not be one map anyway).
    let messages: Vec<Value> = (0..20)
        .map(|n| json!({"channel": "chat:batch", "data": {"n": n}}))
        .collect();
    let body_text = json!({ "messages": messages }).to_string();
    let (status, answer) = api(&gateway, "POST", "/api/batch", &body_text).await;
    assert_eq!(status, 200, "{answer}");
    for n in 0..20 {
        assert_eq!(m.expect_message("chat:batch").await, json!({"n": n}));
    }
}

/// The Rust client in MessagePack against the real gateway: the same
/// requests and pushes as a JSON client, history included.
#[tokio::test]
async fn the_rust_client_speaks_msgpack_to_the_gateway() {
    let gateway = Gateway::start();
    let url = gateway.ws_url(&token("ann"));
    let (mut m, _) = within(Connection::connect_with(&url, Format::MsgPack))
        .await
        .unwrap();
    assert_eq!(m.format(), Format::MsgPack);
    let (mut j, _) = gateway.connect("bob").await;
    within(m.subscribe("chat:client")).await.unwrap();
    within(j.subscribe("chat:client")).await.unwrap();
    within(m.publish("chat:client", &data("client")))
        .await
        .unwrap();
    assert_eq!(
        within(m.expect_message()).await.unwrap(),
        ("chat:client".to_owned(), data("client"))
    );
    assert_eq!(
        within(j.expect_message()).await.unwrap(),
        ("chat:client".to_owned(), data("client"))
    );
    let history = within(m.history("chat:client", None, Some(10)))
        .await
        .unwrap();
    assert_eq!(history["messages"][0]["data"], data("client"), "{history}");
}
