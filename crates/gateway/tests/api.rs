//! The server API over real sockets: bearer-key authentication (and the API
//! closed without a key), publishing to WebSocket subscribers, presence
//! listings, disconnecting a user's connections with close code 4003, and
//! the refusals (bad channel, malformed JSON, oversized body, unknown route,
//! wrong method) with their exact bodies.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};
use switchboard_client::{Connection, Frame, Incoming};

const API_KEY: &str = "api-key-0123456789abcdef";

/// A gateway with the server API enabled.
fn gateway_with_api() -> Gateway {
    Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start()
}

/// An HTTP response: status, lower-cased headers, body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts a 200 publish acknowledgement with the message's offset (the
    /// channel has history) and an epoch.
    fn assert_published(&self, offset: u64) {
        let body = self.json();
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(
            (&body["ok"], &body["offset"]),
            (&json!(true), &json!(offset)),
            "{body}"
        );
        assert!(body["epoch"].is_string(), "{body}");
    }

    /// Asserts the status and the exact JSON body.
    fn assert(&self, status: u16, body: Value) {
        assert_eq!((self.status, self.json()), (status, body), "{}", self.body);
    }
}

/// One HTTP/1.1 request over a fresh TCP connection, with an optional
/// bearer key and body.
async fn http(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
    let auth = key.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let body = std::str::from_utf8(body).unwrap();
    let (status, headers, body) = http_exchange(addr, method, path, &headers, body).await;
    Reply {
        status,
        headers,
        body,
    }
}

async fn post(gateway: &Gateway, path: &str, body: &str) -> Reply {
    http(gateway.addr, "POST", path, Some(API_KEY), body.as_bytes()).await
}

async fn get(gateway: &Gateway, path: &str) -> Reply {
    http(gateway.addr, "GET", path, Some(API_KEY), b"").await
}

/// Proves nothing is queued for `conn`: a ping's reply is the next frame.
async fn assert_nothing_pending(conn: &mut Connection) {
    conn.send_text(r#"{"type":"ping","id":999}"#).await.unwrap();
    match within(conn.next_frame()).await.unwrap() {
        Frame::Incoming(Incoming::Reply { id: 999, .. }) => {}
        other => panic!("expected only the ping reply, got {other:?}"),
    }
}

fn unauthorized() -> Value {
    json!({ "error": "unauthorized", "message": "missing or invalid API key" })
}

#[tokio::test]
async fn requests_without_the_key_are_refused_before_routing() {
    let gateway = gateway_with_api();
    let addr = gateway.addr;
    let body = br#"{"channel":"chat:lobby","data":1}"#;

    http(addr, "POST", "/api/publish", None, body)
        .await
        .assert(401, unauthorized());
    http(
        addr,
        "POST",
        "/api/publish",
        Some("api-key-0123456789abcdeX"),
        body,
    )
    .await
    .assert(401, unauthorized());
    http(addr, "POST", "/api/publish", Some("api-key"), body)
        .await
        .assert(401, unauthorized());
    http(addr, "GET", "/api/presence/chat:lobby", None, b"")
        .await
        .assert(401, unauthorized());
    // Unauthenticated callers learn nothing about routes or methods.
    http(addr, "GET", "/api/nope", None, b"")
        .await
        .assert(401, unauthorized());
    http(
        addr,
        "DELETE",
        "/api/publish",
        Some("wrong-key-0123456789"),
        b"",
    )
    .await
    .assert(401, unauthorized());

    gateway
        .wait_log(|e| {
            e["message"] == "server API request refused"
                && e["reason"] == "invalid_key"
                && e["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:"))
        })
        .await;
}

#[tokio::test]
async fn the_api_is_disabled_without_a_configured_key() {
    let gateway = Gateway::start();
    let disabled = json!({
        "error": "unauthorized",
        "message": "the server API is disabled: set SWITCHBOARD_API_KEY"
    });
    post(&gateway, "/api/publish", r#"{"channel":"a","data":1}"#)
        .await
        .assert(401, disabled.clone());
    http(gateway.addr, "GET", "/api/presence/a", None, b"")
        .await
        .assert(401, disabled);
    gateway
        .wait_log(|e| e["message"] == "server API request refused" && e["reason"] == "api_disabled")
        .await;
}

#[tokio::test]
async fn publish_reaches_websocket_subscribers_and_no_one_else() {
    let gateway = gateway_with_api();
    let (mut a, _) = gateway.connect("a").await;
    let (mut b, _) = gateway.connect("b").await;
    let (mut other, _) = gateway.connect("c").await;
    within(a.subscribe("chat:lobby")).await.unwrap();
    within(b.subscribe("chat:lobby")).await.unwrap();
    within(other.subscribe("chat:other")).await.unwrap();

    let data = json!({ "text": "from the backend", "n": [1, 2.5, null, "x"] });
    let body = json!({ "channel": "chat:lobby", "data": data }).to_string();
    let reply = post(&gateway, "/api/publish", &body).await;
    reply.assert_published(1);
    assert_eq!(reply.headers["content-type"], "application/json");

    for conn in [&mut a, &mut b] {
        let (channel, got) = within(conn.expect_message()).await.unwrap();
        assert_eq!((channel.as_str(), got), ("chat:lobby", data.clone()));
    }
    assert_nothing_pending(&mut other).await;

    // Publishing to a channel nobody listens to is not an error.
    post(
        &gateway,
        "/api/publish",
        r#"{"channel":"empty","data":"x"}"#,
    )
    .await
    .assert_published(1);
    gateway
        .wait_log(|e| {
            e["message"] == "server API request" && e["route"] == "publish" && e["status"] == 200
        })
        .await;
}

#[tokio::test]
async fn publish_refuses_bad_channels_and_malformed_bodies() {
    let gateway = gateway_with_api();
    let bad = |message: &str| json!({ "error": "bad_request", "message": message });

    post(&gateway, "/api/publish", r#"{"channel":"a b","data":1}"#)
        .await
        .assert(
            400,
            bad("invalid channel: channel name contains ' '; allowed are letters, digits and _ - : . @ / = +"),
        );
    post(&gateway, "/api/publish", r#"{"channel":"chat:*","data":1}"#)
        .await
        .assert(400, bad("invalid channel: '*' may only end a pattern"));
    post(&gateway, "/api/publish", r#"{"data":1}"#)
        .await
        .assert(400, bad("missing field channel"));
    post(&gateway, "/api/publish", r#"{"channel":7,"data":1}"#)
        .await
        .assert(400, bad("channel must be a string"));
    post(&gateway, "/api/publish", r#"{"channel":"a"}"#)
        .await
        .assert(400, bad("missing field data"));
    post(&gateway, "/api/publish", "[1]")
        .await
        .assert(400, bad("body must be a JSON object"));
    post(&gateway, "/api/publish", "")
        .await
        .assert(400, bad("body must be a JSON object"));

    let malformed = post(&gateway, "/api/publish", r#"{"channel":"a","data":"#).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["error"], "bad_request");
    let message = malformed.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("body is not a valid JSON object: "),
        "{message}"
    );

    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    post(
        &gateway,
        "/api/publish",
        &format!(r#"{{"channel":"a","data":{deep}}}"#),
    )
    .await
    .assert(400, bad("data is nested deeper than 32 levels"));
}

#[tokio::test]
async fn publish_refuses_bodies_over_the_frame_limit() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_MAX_FRAME_BYTES", "1024")
        .start();
    let (mut conn, _) = gateway.connect("a").await;
    within(conn.subscribe("big")).await.unwrap();

    let body_of = |len: usize| {
        let shell = r#"{"channel":"big","data":""}"#.len();
        format!(
            r#"{{"channel":"big","data":"{}"}}"#,
            "x".repeat(len - shell)
        )
    };
    let at_limit = body_of(1024);
    assert_eq!(at_limit.len(), 1024);
    post(&gateway, "/api/publish", &at_limit)
        .await
        .assert_published(1);
    let (_, data) = within(conn.expect_message()).await.unwrap();
    assert_eq!(data.as_str().map(str::len), Some(1024 - 27));

    post(&gateway, "/api/publish", &body_of(1025)).await.assert(
        413,
        json!({ "error": "too_large", "message": "body exceeds 1024 bytes" }),
    );
    post(&gateway, "/api/publish", &body_of(200_000))
        .await
        .assert(
            413,
            json!({ "error": "too_large", "message": "body exceeds 1024 bytes" }),
        );
    assert_nothing_pending(&mut conn).await;
}

const PRESENCE_CONFIG: &str = r#"
[namespaces.quiet]
presence = false
"#;

#[tokio::test]
async fn presence_lists_connected_subscribers() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(PRESENCE_CONFIG)
        .start();
    let mut c = claims("alice");
    c["info"] = json!({ "name": "Alice" });
    let (mut alice, alice_welcome) = gateway.connect_token(&sign(&c)).await;
    let (mut bob, bob_welcome) = gateway.connect("bob").await;
    let (_carol, _) = gateway.connect("carol").await;
    within(alice.subscribe("chat:room")).await.unwrap();
    within(bob.subscribe("chat:room")).await.unwrap();

    let reply = get(&gateway, "/api/presence/chat:room").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut members = reply.json()["members"].as_array().unwrap().clone();
    members.sort_by_key(|m| m["user"].as_str().unwrap().to_owned());
    assert_eq!(
        members,
        vec![
            json!({ "user": "alice", "connection_id": alice_welcome.connection_id, "info": { "name": "Alice" } }),
            json!({ "user": "bob", "connection_id": bob_welcome.connection_id, "info": null }),
        ]
    );

    // A percent-encoded channel is the same channel.
    let encoded = get(&gateway, "/api/presence/chat%3Aroom").await;
    assert_eq!(encoded.json()["members"].as_array().unwrap().len(), 2);

    within(bob.unsubscribe("chat:room")).await.unwrap();
    let reply = get(&gateway, "/api/presence/chat:room").await;
    assert_eq!(
        reply.json(),
        json!({ "members": [{ "user": "alice", "connection_id": alice_welcome.connection_id, "info": { "name": "Alice" } }] })
    );
    get(&gateway, "/api/presence/nobody:here")
        .await
        .assert(200, json!({ "members": [] }));

    let bad = |message: &str| json!({ "error": "bad_request", "message": message });
    get(&gateway, "/api/presence/a%20b").await.assert(
        400,
        bad("invalid channel: channel name contains ' '; allowed are letters, digits and _ - : . @ / = +"),
    );
    get(&gateway, "/api/presence/")
        .await
        .assert(400, bad("invalid channel: channel name is empty"));
    get(&gateway, "/api/presence/a%zz").await.assert(
        400,
        bad("channel in the path is not valid percent-encoding"),
    );
    get(&gateway, "/api/presence/quiet:room")
        .await
        .assert(400, bad("presence is disabled for namespace \"quiet\""));
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user() {
    let gateway = gateway_with_api();
    let (mut first, _) = gateway.connect("mallory").await;
    let (mut second, _) = gateway.connect("mallory").await;
    let (mut bob, _) = gateway.connect("bob").await;
    within(first.subscribe("chat:lobby")).await.unwrap();

    post(&gateway, "/api/disconnect", r#"{"user":"mallory"}"#)
        .await
        .assert(200, json!({ "ok": true }));
    for conn in [&mut first, &mut second] {
        let (code, reason) = within(conn.wait_closed()).await.unwrap();
        assert_eq!(
            (code, reason.as_str()),
            (Some(4003), "disconnected by the server")
        );
    }
    assert_eq!(within(bob.ping()).await.unwrap(), json!({}));

    // Disconnecting a user with no connections is not an error.
    post(&gateway, "/api/disconnect", r#"{"user":"nobody"}"#)
        .await
        .assert(200, json!({ "ok": true }));
    let bad = |message: &str| json!({ "error": "bad_request", "message": message });
    post(&gateway, "/api/disconnect", "{}")
        .await
        .assert(400, bad("missing field user"));
    post(&gateway, "/api/disconnect", r#"{"user":""}"#)
        .await
        .assert(400, bad("user must not be empty"));
    post(&gateway, "/api/disconnect", r#"{"user":["bob"]}"#)
        .await
        .assert(400, bad("user must be a string"));
    assert_eq!(within(bob.ping()).await.unwrap(), json!({}));
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_refused() {
    let gateway = gateway_with_api();
    let not_found = json!({ "error": "not_found", "message": "no such route" });
    get(&gateway, "/api/nope")
        .await
        .assert(404, not_found.clone());
    get(&gateway, "/api/presence")
        .await
        .assert(404, not_found.clone());
    post(&gateway, "/api/publish/extra", "{}")
        .await
        .assert(404, not_found);

    let reply = get(&gateway, "/api/publish").await;
    reply.assert(
        405,
        json!({ "error": "bad_request", "message": "use POST" }),
    );
    assert_eq!(reply.headers["allow"], "POST");
    let reply = get(&gateway, "/api/disconnect").await;
    reply.assert(
        405,
        json!({ "error": "bad_request", "message": "use POST" }),
    );
    let reply = post(&gateway, "/api/presence/chat:lobby", "{}").await;
    reply.assert(405, json!({ "error": "bad_request", "message": "use GET" }));
    assert_eq!(reply.headers["allow"], "GET");
}
