//! Subscribe authorization by the backend (`subscribe_proxy`), against
//! real gateway processes and a recording HTTP receiver standing in for the
//! backend: allow (with presence info), deny, timeout, errors, caching, and
//! the start-up errors of a bad configuration.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use receiver::*;
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, Frame, Incoming};
use switchboard_gateway::backend;

const BACKEND_SECRET: &str = "backend-secret-backend-secret-0123456789";

/// A gateway whose `doc` namespace asks `receiver` about subscribes.
fn gateway_for(receiver: &Receiver, timeout: &str) -> Gateway {
    Gateway::builder()
        .env("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET)
        .env("SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT", timeout)
        .toml(&format!(
            "[namespaces.doc]\nsubscribe_proxy = \"{}\"\njoin_leave = true\n",
            receiver.url("/switchboard/subscribe")
        ))
        .start()
}

/// A token granting `chat:*` only, with an `info`.
fn chat_token(user: &str) -> String {
    sign(&json!({
        "sub": user,
        "exp": now() + 3600,
        "channels": ["chat:*"],
        "publish": ["chat:*"],
        "info": { "name": user },
    }))
}

fn reply_error(result: Result<Value, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Reply(error)) => (error.code, error.message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn error(code: &str, message: &str) -> (String, String) {
    (code.to_owned(), message.to_owned())
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in the exposition"))
        .trim()
        .parse()
        .unwrap()
}

/// The `info` of `user`'s next `join` (others' joins, bob's own included, are skipped).
async fn next_join(conn: &mut Connection, user: &str) -> Option<Value> {
    loop {
        match within(conn.next_frame()).await.unwrap() {
            Frame::Incoming(Incoming::Join {
                user: who, info, ..
            }) if who == user => return info,
            Frame::Incoming(Incoming::Join { .. }) => {}
            other => panic!("expected {user}'s join, got {other:?}"),
        }
    }
}

async fn metrics(gateway: &Gateway) -> String {
    http_get(gateway.addr, "/metrics", &[]).await.2
}

#[tokio::test]
async fn an_allow_subscribes_with_the_backends_info_after_a_signed_request() {
    let receiver = Receiver::start();
    receiver.set_handler(Arc::new(|request: &Request| {
        if request.json()["user"] == "carol" {
            Answer::Json(200, json!({ "allow": true }))
        } else {
            Answer::Json(200, json!({ "allow": true, "info": { "role": "editor" } }))
        }
    }));
    let gateway = gateway_for(&receiver, "2s");
    // Bob's token grants doc:*: he never causes a backend request.
    let (mut bob, _) = gateway
        .connect_token(&sign(&json!({
            "sub": "bob", "exp": now() + 3600, "channels": ["doc:*"],
        })))
        .await;
    within(bob.subscribe("doc:1")).await.unwrap();
    assert!(
        receiver.requests().is_empty(),
        "a granted channel is never asked"
    );

    let (mut alice, welcome) = gateway.connect_token(&chat_token("alice")).await;
    let reply = within(alice.subscribe("doc:1")).await.unwrap();
    assert_eq!(reply["offset"], 0, "a normal subscribe reply: {reply}");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/switchboard/subscribe");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        backend::verify(
            BACKEND_SECRET.as_bytes(),
            request.header(backend::SIGNATURE_HEADER).unwrap(),
            &request.body,
            now(),
            backend::SIGNATURE_TOLERANCE,
        ),
        Ok(())
    );
    assert_eq!(
        request.json(),
        json!({
            "user": "alice",
            "channel": "doc:1",
            "connection_id": welcome.connection_id,
            "info": { "name": "alice" },
        })
    );

    // The backend's info, not the token's, in the join frame and presence.
    assert_eq!(
        next_join(&mut bob, "alice").await,
        Some(json!({ "role": "editor" }))
    );
    // Presence reads the channel the backend allowed (the token alone does not grant it).
    let members = within(alice.presence("doc:1")).await.unwrap();
    let alice_entry = members.iter().find(|m| m.user == "alice").unwrap();
    assert_eq!(alice_entry.connection_id, welcome.connection_id);
    assert_eq!(alice_entry.info, Some(json!({ "role": "editor" })));

    // An allow without info keeps the token's.
    let (mut carol, _) = gateway.connect_token(&chat_token("carol")).await;
    within(carol.subscribe("doc:1")).await.unwrap();
    let members = within(carol.presence("doc:1")).await.unwrap();
    let carol_entry = members.iter().find(|m| m.user == "carol").unwrap();
    assert_eq!(carol_entry.info, Some(json!({ "name": "carol" })));

    // Messages flow as on any subscription (after the joins alice saw).
    next_join(&mut alice, "carol").await;
    assert_eq!(
        next_join(&mut bob, "carol").await,
        Some(json!({ "name": "carol" }))
    );
    let (mut publisher, _) = gateway.connect("pub").await;
    within(publisher.publish("doc:1", &json!("hi")))
        .await
        .unwrap();
    assert_eq!(
        within(alice.expect_message()).await.unwrap(),
        ("doc:1".to_owned(), json!("hi"))
    );

    let text = metrics(&gateway).await;
    assert_eq!(
        metric(
            &text,
            "switchboard_subscribe_proxy_requests_total{result=\"allow\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_subscribe_proxy_requests_total{result=\"deny\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(&text, "switchboard_subscribe_proxy_duration_seconds_count"),
        2.0
    );
}

#[tokio::test]
async fn an_allow_is_cached_for_its_ttl() {
    let receiver = Receiver::start();
    receiver.set(Answer::Json(200, json!({ "allow": true, "ttl": 1 })));
    let gateway = gateway_for(&receiver, "2s");
    let asked = |n: usize| receiver.requests().len() == n;

    let (mut first, _) = gateway.connect_token(&chat_token("alice")).await;
    within(first.subscribe("doc:2")).await.unwrap();
    assert!(asked(1));
    // Another connection of the same user: decided by the cache.
    let (mut second, _) = gateway.connect_token(&chat_token("alice")).await;
    within(second.subscribe("doc:2")).await.unwrap();
    assert!(asked(1), "{:?}", receiver.requests());
    // Another user, or another channel, is asked.
    let (mut other, _) = gateway.connect_token(&chat_token("bob")).await;
    within(other.subscribe("doc:2")).await.unwrap();
    within(second.subscribe("doc:3")).await.unwrap();
    assert!(asked(3));
    let text = metrics(&gateway).await;
    assert_eq!(
        metric(&text, "switchboard_subscribe_proxy_cache_hits_total"),
        1.0
    );

    // Once the ttl has passed, the backend is asked again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut conn, _) = gateway.connect_token(&chat_token("alice")).await;
        within(conn.subscribe("doc:2")).await.unwrap();
        if asked(4) {
            break;
        }
        assert!(Instant::now() < deadline, "the cached allow never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_deny_is_forbidden_with_the_backends_reason() {
    let receiver = Receiver::start();
    receiver.set_handler(Arc::new(|request: &Request| {
        if request.json()["channel"] == "doc:secret" {
            Answer::Json(
                200,
                json!({ "allow": false, "reason": "not a collaborator", "ttl": 60 }),
            )
        } else {
            Answer::Json(200, json!({ "allow": false }))
        }
    }));
    let gateway = gateway_for(&receiver, "2s");
    let (mut conn, _) = gateway.connect_token(&chat_token("alice")).await;
    for _ in 0..2 {
        assert_eq!(
            reply_error(within(conn.subscribe("doc:secret")).await),
            error(
                "forbidden",
                "the backend refused subscribing to doc:secret: not a collaborator"
            )
        );
    }
    assert_eq!(
        receiver.requests().len(),
        1,
        "a deny with a ttl is cached too"
    );
    assert_eq!(
        reply_error(within(conn.subscribe("doc:other")).await),
        error("forbidden", "the backend refused subscribing to doc:other")
    );
    // Not subscribed: presence and history stay closed.
    assert_eq!(
        reply_error(
            within(conn.presence("doc:secret"))
                .await
                .map(|_| json!(null))
        ),
        error("forbidden", "token does not grant access to doc:secret")
    );
    // A namespace without a proxy refuses as before, without asking.
    receiver.clear();
    assert_eq!(
        reply_error(within(conn.subscribe("secret:1")).await),
        error("forbidden", "token does not grant subscribing to secret:1")
    );
    within(conn.subscribe("chat:1")).await.unwrap();
    assert!(receiver.requests().is_empty());
    let text = metrics(&gateway).await;
    assert_eq!(
        metric(
            &text,
            "switchboard_subscribe_proxy_requests_total{result=\"deny\"}"
        ),
        2.0
    );
}

/// Subscribes to `channel` and expects `unavailable` with `message`; the
/// connection stays open and usable.
async fn expect_unavailable(conn: &mut Connection, channel: &str, message: &str) {
    assert_eq!(
        reply_error(within(conn.subscribe(channel)).await),
        error("unavailable", message)
    );
    within(conn.ping()).await.unwrap();
}

#[tokio::test]
async fn a_timeout_fails_closed_with_unavailable_and_the_connection_stays() {
    let receiver = Receiver::start();
    receiver.set(Answer::Hang);
    let gateway = gateway_for(&receiver, "300ms");
    let (mut conn, _) = gateway.connect_token(&chat_token("alice")).await;
    expect_unavailable(
        &mut conn,
        "doc:5",
        "subscribe authorization unavailable: the backend did not answer within 300 ms",
    )
    .await;
    within(conn.subscribe("chat:1")).await.unwrap();
    let log = gateway
        .wait_log(|e| e["message"] == "subscribe proxy failed")
        .await;
    assert_eq!(log["level"], "WARN", "{log}");
    assert!(
        log["error"]
            .as_str()
            .unwrap()
            .contains(&receiver.url("/switchboard/subscribe")),
        "the log names the backend: {log}"
    );
    // Errors are not cached: the next subscribe asks again.
    receiver.set(Answer::Json(200, json!({ "allow": true })));
    within(conn.subscribe("doc:5")).await.unwrap();
    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test]
async fn backend_errors_fail_closed_with_unavailable() {
    let receiver = Receiver::start();
    let gateway = gateway_for(&receiver, "2s");
    let (mut conn, _) = gateway.connect_token(&chat_token("alice")).await;
    let cases = [
        (Answer::Status(500), "the backend answered with HTTP 500"),
        (
            Answer::Json(403, json!({ "allow": false })),
            "the backend answered with HTTP 403",
        ),
        (
            Answer::Raw(200, "not json".into()),
            "the backend's answer is malformed",
        ),
        (
            Answer::Json(200, json!({ "ok": true })),
            "the backend's answer is malformed",
        ),
        (
            Answer::Json(200, json!({ "allow": true, "info": "admin" })),
            "the backend's answer is malformed",
        ),
    ];
    for (n, (answer, why)) in cases.into_iter().enumerate() {
        receiver.set(answer);
        expect_unavailable(
            &mut conn,
            &format!("doc:{n}"),
            &format!("subscribe authorization unavailable: {why}"),
        )
        .await;
    }
    assert_eq!(receiver.requests().len(), 5);
    let text = metrics(&gateway).await;
    assert_eq!(
        metric(
            &text,
            "switchboard_subscribe_proxy_requests_total{result=\"error\"}"
        ),
        5.0
    );

    // A backend that is not there at all.
    drop(receiver);
    expect_unavailable(
        &mut conn,
        "doc:gone",
        "subscribe authorization unavailable: the backend could not be reached",
    )
    .await;
}

#[test]
fn a_bad_proxy_configuration_stops_start_up_naming_the_key() {
    let secret = ("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            "[namespaces.doc]\nsubscribe_proxy = \"backend/subscribe\"",
            &[secret],
            "switchboard: invalid configuration: namespaces.doc.subscribe_proxy: \"backend/subscribe\" is not a URL: relative URL without a base",
        ),
        (
            "[namespaces.doc]\nsubscribe_proxy = \"ftp://backend/subscribe\"",
            &[secret],
            "switchboard: invalid configuration: namespaces.doc.subscribe_proxy: \"ftp://backend/subscribe\" must be an http:// or https:// URL with a host",
        ),
        (
            "[namespaces.doc]\nsubscribe_proxy = \"http://127.0.0.1:9/subscribe\"",
            &[],
            "switchboard: invalid configuration: SWITCHBOARD_BACKEND_SECRET (backend_secret): namespaces.doc.subscribe_proxy is set but no backend secret is: the subscribe proxy's requests are signed with it",
        ),
        (
            "",
            &[("SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT", "45s")],
            "switchboard: invalid configuration: SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT (subscribe_proxy_timeout): 45s is outside 50ms..=30s",
        ),
    ];
    for (toml, env, expected) in cases {
        assert_eq!(start_up_error(toml, env), (Some(2), expected.to_owned()));
    }
}

#[tokio::test]
async fn the_receiver_records_requests_and_answers_as_told() {
    let receiver = Receiver::start();
    let client = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();

    let response = client
        .post(receiver.url("/hook?x=1"))
        .header("X-Test", "yes")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(status(response), 200);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/hook?x=1");
    assert_eq!(requests[0].header("x-test"), Some("yes"));
    assert_eq!(requests[0].json(), json!({ "a": 1 }));

    receiver.set(Answer::Json(201, json!({ "ok": true })));
    let response = client.post(receiver.url("/")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.text().await.unwrap(), "{\"ok\":true}");

    receiver.set_handler(Arc::new(|request: &Request| {
        if request.path == "/a" {
            Answer::Status(500)
        } else {
            Answer::Raw(200, "not json".into())
        }
    }));
    let a = client.post(receiver.url("/a")).send().await.unwrap();
    assert_eq!(status(a), 500);
    let b = client.post(receiver.url("/b")).send().await.unwrap();
    assert_eq!(b.text().await.unwrap(), "not json");

    receiver.set(Answer::delay(
        Duration::from_millis(100),
        Answer::Status(204),
    ));
    let started = Instant::now();
    let response = client.post(receiver.url("/")).send().await.unwrap();
    assert_eq!(status(response), 204);
    assert!(started.elapsed() >= Duration::from_millis(100));

    receiver.set(Answer::Hang);
    let hung = client
        .post(receiver.url("/hang"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    assert!(
        receiver
            .until(|r| r.iter().any(|r| r.path == "/hang"), WAIT)
            .await
    );

    receiver.clear();
    assert!(receiver.requests().is_empty());
    // The blocking wait, as a sync test uses it: a request from another
    // thread arrives while it waits.
    let addr = receiver.addr;
    let waiter = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(50));
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /late HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        stream
    });
    receiver.set(Answer::Status(200));
    assert!(receiver.wait_for(|r| r.iter().any(|r| r.path == "/late"), WAIT));
    assert!(!receiver.wait_for(|r| r.len() > 1, Duration::from_millis(50)));
    drop(waiter.join().unwrap());
}
