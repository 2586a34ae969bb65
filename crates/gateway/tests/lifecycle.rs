//! Session lifetimes: token expiry and refresh, dead clients, and SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_client::{ClientError, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn short_lived(user: &str, secs: u64) -> String {
    let mut c = claims(user);
    c["exp"] = json!(now() + secs);
    sign(&c)
}

#[tokio::test]
async fn expiry_closes_with_4001() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_JWT_LEEWAY", "0s")
        .start();
    let (mut conn, _) = gateway.connect_token(&short_lived("alice", 2)).await;
    let (code, reason) = tokio::time::timeout(Duration::from_secs(6), conn.wait_closed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((code, reason.as_str()), (Some(4001), "token expired"));
}

#[tokio::test]
async fn refresh_extends_the_session_and_is_checked() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_JWT_LEEWAY", "0s")
        .start();
    let (mut conn, _) = gateway.connect_token(&short_lived("alice", 2)).await;

    match within(conn.refresh(&short_lived("mallory", 3600))).await {
        Err(ClientError::Reply(error)) => {
            assert_eq!(
                (error.code.as_str(), error.message.as_str()),
                ("forbidden", "token belongs to another user")
            )
        }
        other => panic!("{other:?}"),
    }
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 100);
    match within(conn.refresh(&sign(&expired))).await {
        Err(ClientError::Reply(error)) => {
            assert_eq!(
                (error.code.as_str(), error.message.as_str()),
                ("token_expired", "token has expired")
            )
        }
        other => panic!("{other:?}"),
    }
    match within(conn.refresh("garbage")).await {
        Err(ClientError::Reply(error)) => {
            assert_eq!(
                (error.code.as_str(), error.message.as_str()),
                ("unauthorized", "malformed token")
            )
        }
        other => panic!("{other:?}"),
    }

    let result = within(conn.refresh(&short_lived("alice", 3600)))
        .await
        .unwrap();
    assert!(result["expires_in"].as_u64().unwrap() > 3500, "{result}");
    // Past the first token's expiry the session is still open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    within(conn.ping())
        .await
        .expect("refreshed session stays open");
}

#[tokio::test]
async fn dead_client_is_closed_and_live_one_kept() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_PING_INTERVAL", "200ms")
        .env("SWITCHBOARD_PONG_TIMEOUT", "300ms")
        .start();

    // A client that completes the handshake and then never reads, so it never pongs.
    let mut dead = TcpStream::connect(gateway.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token("ghost"),
        gateway.addr
    );
    dead.write_all(request.as_bytes()).await.unwrap();

    // A client that keeps reading answers pings by itself.
    let (mut live, _) = gateway.connect("alive").await;
    let reading = tokio::time::timeout(Duration::from_millis(1500), live.next_frame()).await;
    assert!(
        reading.is_err(),
        "the live client gets no frames, only pings: {reading:?}"
    );

    // The dead client's socket: handshake, welcome, pings, then a 1001 close and EOF.
    let mut received = Vec::new();
    within(dead.read_to_end(&mut received)).await.unwrap();
    let close = [0x88u8, 0x18, 0x03, 0xE9];
    assert!(
        received.windows(4).any(|w| w == close),
        "no close frame with 1001 in {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(String::from_utf8_lossy(&received).contains("no pong within timeout"));
    within(live.ping())
        .await
        .expect("the live client is still connected");
    gateway
        .wait_log(|e| e["message"] == "session closed" && e["reason"] == "no pong within timeout")
        .await;
}

#[tokio::test]
async fn sigterm_closes_sessions_with_1012_and_exits() {
    let mut gateway = Gateway::start();
    let (mut a, _) = gateway.connect("a").await;
    let (mut b, _) = gateway.connect("b").await;
    within(a.subscribe("chat:x")).await.unwrap();
    gateway.signal("TERM");
    for conn in [&mut a, &mut b] {
        match within(conn.next_frame()).await.unwrap() {
            Frame::Closed { code, reason } => {
                assert_eq!((code, reason.as_str()), (Some(1012), "node shutting down"))
            }
            other => panic!("{other:?}"),
        }
    }
    let status = gateway.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    assert!(gateway.logs().iter().any(|e| e["message"] == "stopped"));
}

#[tokio::test]
async fn sigterm_drains_sessions_over_the_window() {
    let mut gateway = Gateway::builder()
        .env("SWITCHBOARD_DRAIN_WINDOW", "3s")
        .start();
    let mut sessions = Vec::new();
    for n in 0..10 {
        let (conn, _) = gateway.connect(&format!("user{n}")).await;
        sessions.push(conn);
    }
    wait_ready(&gateway, 200).await;
    gateway.signal("TERM");
    // At once: not ready, and new sessions are refused, while the listener
    // still answers.
    let ready = wait_ready(&gateway, 503).await;
    assert_eq!(ready["reason"], "draining");
    let refused = within(switchboard_client::Connection::connect(
        &gateway.ws_url(&token("late")),
    ))
    .await;
    match refused {
        Err(ClientError::Refused {
            status,
            body,
            retry_after,
        }) => {
            assert_eq!(status, 503);
            assert_eq!(
                body["message"],
                "node is draining; reconnect to another node"
            );
            assert_eq!(retry_after.as_deref(), Some("1"));
        }
        Err(other) => panic!("expected 503, got {other}"),
        Ok(_) => panic!("expected 503, got a session"),
    }
    // Every session gets its 1012 within the window (plus slack).
    for conn in &mut sessions {
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.next_frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            closed,
            Frame::Closed {
                code: Some(1012),
                reason: "node shutting down".to_owned()
            }
        );
    }
    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    let log = gateway
        .logs()
        .into_iter()
        .find(|l| l["message"] == "shutdown signal received; draining")
        .unwrap();
    assert_eq!(log["drain_window_ms"], 3000);
}
