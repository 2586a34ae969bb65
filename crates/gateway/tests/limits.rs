//! Abuse limits over real sockets: the per-address connection bucket (429
//! with Retry-After, before any JWT work), per-address and per-user caps
//! (per-user across a Redis cluster), trusted-proxy addresses, the message
//! rate (`rate_limited`, then 1008) and slow consumers (1013 while a fast
//! consumer on the same channel receives everything).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, Frame, Incoming, IntoClientRequest};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Connects with extra request headers; Ok(node of the welcome) or Err((status, body, Retry-After)).
async fn connect_with(
    gateway: &Gateway,
    token: &str,
    headers: &[(&'static str, &str)],
) -> Result<Connection, (u16, Value, Option<String>)> {
    let mut request = gateway.ws_url(token).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match within(Connection::connect_request(request)).await {
        Ok((conn, _)) => Ok(conn),
        Err(ClientError::Refused {
            status,
            body,
            retry_after,
        }) => Err((status, body, retry_after)),
        Err(other) => panic!("unexpected {other}"),
    }
}

fn limited(message: &str, retry_after: &str) -> (u16, Value, Option<String>) {
    (
        429,
        json!({ "error": "rate_limited", "message": message }),
        Some(retry_after.to_owned()),
    )
}

/// Retries a connection until a slot freed by a closing session is back.
async fn connect_eventually(gateway: &Gateway, user: &str, limit: Duration) -> Connection {
    tokio::time::timeout(limit, async {
        loop {
            if let Ok(conn) = connect_with(gateway, &token(user), &[]).await {
                return conn;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no slot came free")
}

#[tokio::test]
async fn connection_bucket_refuses_with_429_before_any_jwt_work() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_CONN_RATE_PER_IP", "1")
        .env("SWITCHBOARD_CONN_BURST_PER_IP", "2")
        .start();
    let _a = gateway.connect("alice").await;
    let _b = gateway.connect("alice").await;
    // A token that would fail verification: the bucket answers first.
    let refusal = connect_with(&gateway, "not-a-jwt", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(
        refusal,
        limited(
            "too many new connections from this address; retry later",
            "1"
        )
    );
    let log = gateway
        .wait_log(|l| l["message"] == "handshake refused" && l["reason"] == "ip_rate")
        .await;
    assert_eq!(log["client"], "127.0.0.1");
    assert!(
        !gateway.logs().iter().any(|l| l["reason"] == "malformed"
            || l["detail"].as_str().is_some_and(|d| d.contains("token"))),
        "the refused request's token was never looked at"
    );
    // The bucket refills: one connection per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _c = gateway.connect("alice").await;
}

#[tokio::test]
async fn concurrent_connections_are_capped_per_address_and_per_user() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "3")
        .env("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "2")
        .start();
    let (alice1, _) = gateway.connect("alice").await;
    let (_alice2, _) = gateway.connect("alice").await;
    assert_eq!(
        connect_with(&gateway, &token("alice"), &[])
            .await
            .err()
            .unwrap(),
        limited("this user already holds 2 connections", "5")
    );
    let (_bob, _) = gateway.connect("bob").await;
    assert_eq!(
        connect_with(&gateway, &token("carol"), &[])
            .await
            .err()
            .unwrap(),
        limited("this address already holds 3 connections", "5")
    );
    gateway.wait_log(|l| l["reason"] == "ip_connections").await;
    // Closing one frees both its address and its user slot.
    alice1.close().await.unwrap();
    let _alice3 = connect_eventually(&gateway, "alice", WAIT).await;
}

#[tokio::test]
async fn per_user_cap_counts_every_node_and_forgets_a_crashed_one() {
    let redis = Redis::start();
    let cap = "[limits]\nmax_connections_per_user = 2\n";
    let a = cluster_node(&redis, "a", cap).await;
    let b = cluster_node(&redis, "b", cap).await;
    let (on_a, _) = a.connect("alice").await;
    let (_on_b, _) = b.connect("alice").await;
    // Node a holds one of alice's connections, below the cap on its own:
    // the refusal comes from the cluster-wide count in Redis.
    for node in [&a, &b] {
        assert_eq!(
            connect_with(node, &token("alice"), &[])
                .await
                .err()
                .unwrap(),
            limited("this user already holds 2 connections", "5")
        );
    }
    let (_bob, _) = a.connect("bob").await;
    on_a.close().await.unwrap();
    let _again_on_a = connect_eventually(&a, "alice", WAIT).await;
    // Node b dies with alice's connection: once its lease lapses, that
    // connection no longer counts.
    b.signal("KILL");
    let lease = Duration::from_secs(5);
    let _after_crash = connect_eventually(&a, "alice", lease + WAIT).await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let strict = [
        ("SWITCHBOARD_CONN_RATE_PER_IP", "1"),
        ("SWITCHBOARD_CONN_BURST_PER_IP", "1"),
    ];
    // No trusted proxy: a spoofed X-Forwarded-For changes nothing.
    let mut builder = Gateway::builder();
    for (k, v) in strict {
        builder = builder.env(k, v);
    }
    let direct = builder.start();
    connect_with(&direct, &token("a"), &[("x-forwarded-for", "198.51.100.1")])
        .await
        .unwrap();
    let refusal = connect_with(&direct, &token("a"), &[("x-forwarded-for", "198.51.100.2")])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal.0, 429);
    let log = direct.wait_log(|l| l["reason"] == "ip_rate").await;
    assert_eq!(log["client"], "127.0.0.1", "the spoofed header was ignored");

    // Behind a trusted proxy: the right-most untrusted forwarded address.
    let mut builder = Gateway::builder().env("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.1/32");
    for (k, v) in strict {
        builder = builder.env(k, v);
    }
    let proxied = builder.start();
    let fake_then_real = [("x-forwarded-for", "6.6.6.6, 198.51.100.1")];
    connect_with(&proxied, &token("a"), &fake_then_real)
        .await
        .unwrap();
    connect_with(
        &proxied,
        &token("a"),
        &[("x-forwarded-for", "198.51.100.2")],
    )
    .await
    .unwrap();
    connect_with(&proxied, &token("a"), &[("x-real-ip", "198.51.100.3")])
        .await
        .unwrap();
    let refusal = connect_with(
        &proxied,
        &token("a"),
        &[("x-forwarded-for", "198.51.100.1")],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refusal.0, 429);
    let log = proxied.wait_log(|l| l["reason"] == "ip_rate").await;
    assert_eq!(log["client"], "198.51.100.1");
    assert_eq!(
        log["peer"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn message_flood_gets_rate_limited_then_closed_with_1008() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MSG_RATE", "5")
        .env("SWITCHBOARD_MSG_BURST", "5")
        .env("SWITCHBOARD_MSG_CLOSE_AFTER", "3")
        .start();
    let (mut conn, _) = gateway.connect("alice").await;
    // Sent back to back, far faster than 5 per second.
    for id in 1..=30 {
        let _ = conn
            .send_text(json!({"type": "ping", "id": id}).to_string())
            .await;
    }
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    let close = loop {
        match within(conn.next_frame()).await.unwrap() {
            Frame::Incoming(Incoming::Reply {
                id, error: None, ..
            }) => ok.push(id),
            Frame::Incoming(Incoming::Reply {
                id,
                error: Some(error),
                ..
            }) => {
                assert_eq!(error.code, "rate_limited");
                assert_eq!(
                    error.message,
                    "message rate limit of 5/s exceeded; command not executed"
                );
                refused.push(id);
            }
            Frame::Closed { code, reason } => break (code, reason),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(&ok[..5], &[1, 2, 3, 4, 5], "the burst is served in order");
    assert!(
        !refused.is_empty(),
        "over the rate: rate_limited errors first"
    );
    assert!(
        ok.len() + refused.len() < 30,
        "not every frame was answered"
    );
    assert_eq!(
        close,
        (
            Some(1008),
            "message rate limit of 5/s exceeded persistently".to_owned()
        )
    );
    // Other clients are unaffected.
    let (mut other, _) = gateway.connect("bob").await;
    within(other.ping()).await.unwrap();
}

#[tokio::test]
async fn server_api_publishes_are_not_rate_limited() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_MSG_RATE", "1")
        .env("SWITCHBOARD_MSG_BURST", "1")
        .start();
    let (mut conn, _) = gateway.connect("alice").await;
    conn.subscribe("news").await.unwrap();
    for n in 0..30 {
        let body = json!({"channel": "news", "data": {"n": n}}).to_string();
        let (status, _) = api(&gateway, "POST", "/api/publish", &body).await;
        assert_eq!(status, 200);
    }
    for n in 0..30 {
        let (_, data) = within(conn.expect_message()).await.unwrap();
        assert_eq!(data, json!({"n": n}));
    }
}

/// A subscriber that completes the handshake with a tiny receive buffer,
/// subscribes, and then reads nothing until told to.
async fn stalled_subscriber(
    gateway: &Gateway,
    channel: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(gateway.ws_url(&token("slow")), stream)
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap(); // welcome
    ws.send(Message::text(
        json!({"type": "subscribe", "channel": channel, "id": 1}).to_string(),
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("\"result\""), "{reply:?}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_closed_with_1013_while_fast_ones_get_everything() {
    const FAST: usize = 20;
    const SLOW: usize = 5;
    const MESSAGES: usize = 300;
    const WINDOW: usize = 10;
    // The default 1 MiB queue.
    let gateway = Gateway::builder().start();
    let mut fast = Vec::new();
    for _ in 0..FAST {
        let (mut conn, _) = gateway.connect("fast").await;
        conn.subscribe("flood").await.unwrap();
        fast.push(conn);
    }
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(stalled_subscriber(&gateway, "flood").await);
    }
    // Fast readers report each message; the publisher keeps at most a
    // window of 10 messages (320 KiB) ahead of the slowest fast reader, so
    // only the stalled clients can overflow.
    let received = Arc::new(Semaphore::new(0));
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut conn| {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                for n in 0..MESSAGES {
                    let (_, data) = within(conn.expect_message()).await.unwrap();
                    assert_eq!(data["n"], n, "in order, nothing missing");
                    received.add_permits(1);
                }
                conn
            })
        })
        .collect();
    let (mut publisher, _) = gateway.connect("publisher").await;
    // 300 x 32 KiB = 9.6 MB per subscriber: more than a stalled socket's
    // kernel buffers plus its 1 MiB queue can hold.
    let filler = "x".repeat(32 * 1024);
    for window in 0..MESSAGES / WINDOW {
        for n in window * WINDOW..(window + 1) * WINDOW {
            publisher
                .publish("flood", &json!({"n": n, "filler": filler}))
                .await
                .unwrap();
        }
        within(received.acquire_many((FAST * WINDOW) as u32))
            .await
            .unwrap()
            .forget();
    }
    for reader in readers {
        reader.await.unwrap();
    }
    // Each stalled client, once it reads, finds a prefix of the flood and
    // then the slow-consumer close.
    for mut ws in slow {
        let (received, close) = within(async {
            let mut received = 0;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => received += 1,
                    Some(Ok(Message::Close(frame))) => {
                        let frame = frame.unwrap();
                        break (received, (u16::from(frame.code), frame.reason.to_string()));
                    }
                    Some(Ok(_)) => {}
                    other => panic!("no close frame: {other:?}"),
                }
            }
        })
        .await;
        assert!(
            received < MESSAGES,
            "a stalled client cannot have taken everything"
        );
        assert_eq!(
            close,
            (1013, "slow consumer: send queue overflowed".to_owned())
        );
    }
    let closed = gateway
        .logs()
        .iter()
        .filter(|l| l["message"] == "session closed" && l["code"] == 1013)
        .count();
    assert_eq!(closed, SLOW);
    let (status, _, _) = http_get(gateway.addr, "/readyz", &[]).await;
    assert_eq!(status, 200);
}

/// A frame larger than a subscriber's whole send queue (here from a node
/// with larger limits, through Redis) is dropped for it, and the session is
/// woken to close with 1013 at once: it never stalls silently.
#[tokio::test]
async fn a_message_larger_than_the_send_queue_closes_the_subscriber_with_1013() {
    let redis = Redis::start();
    let big = cluster_node(&redis, "gw-big", "").await;
    // 8 KiB holds one frame of this node's 4 KiB limit, not a 9,000-byte one.
    let small = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", "gw-small")
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_SEND_QUEUE_BYTES", "8192")
        .env("SWITCHBOARD_MAX_FRAME_BYTES", "4096")
        .start();
    wait_ready(&small, 200).await;
    let (mut subscriber, _) = small.connect("reader").await;
    within(subscriber.subscribe("big:x")).await.unwrap();
    // A small message still arrives.
    let (status, _) = api(
        &big,
        "POST",
        "/api/publish",
        r#"{"channel":"big:x","data":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        within(subscriber.expect_message()).await.unwrap().1,
        json!("hi")
    );

    let data = "x".repeat(9000);
    let body = json!({"channel": "big:x", "data": data}).to_string();
    let (status, _) = api(&big, "POST", "/api/publish", &body).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    match within(subscriber.next_event()).await {
        Err(ClientError::Closed { code, reason }) => {
            assert_eq!(code, Some(1013));
            assert_eq!(reason, "slow consumer: send queue overflowed");
        }
        other => panic!("expected the 1013 close, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed at once, well within the write timeout"
    );
    let (_, _, metrics) = http_get(small.addr, "/metrics", &[]).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "switchboard_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
}
