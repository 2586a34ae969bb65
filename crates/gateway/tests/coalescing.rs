//! Adaptive write coalescing, on a real gateway with real sockets: a burst
//! that arrives within the window after a write goes out in one system call
//! (counted by `switchboard_socket_writes_total`), in order; a quiet
//! connection is written to at once; and order holds under a long stream.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A counter's value from /metrics.
async fn counter(gateway: &Gateway, name: &str) -> u64 {
    let (_, _, body) = http_get(gateway.addr, "/metrics", &[]).await;
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} not exposed")) as u64
}

fn node(coalesce: &str) -> Gateway {
    Gateway::builder()
        .env("SWITCHBOARD_WRITE_COALESCE", coalesce)
        .start()
}

/// Sends `n` publishes without ids (no replies) in one go.
async fn burst(publisher: &mut switchboard_client::Connection, channel: &str, n: usize) {
    for k in 0..n {
        publisher
            .send_text(json!({"type": "publish", "channel": channel, "data": {"k": k}}).to_string())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_burst_within_the_window_goes_out_in_one_write_in_order() {
    let gateway = node("1s");
    let (mut publisher, _) = gateway.connect("publisher").await;
    let (mut subscriber, _) = gateway.connect("subscriber").await;
    // The reply to this subscribe is a write: the window starts now.
    within(subscriber.subscribe("news:burst")).await.unwrap();
    let writes = counter(&gateway, "switchboard_socket_writes_total").await;
    let frames = counter(&gateway, "switchboard_frames_written_total").await;

    burst(&mut publisher, "news:burst", 10).await;
    for k in 0..10 {
        let (channel, data) = within(subscriber.expect_message()).await.unwrap();
        assert_eq!((channel.as_str(), data), ("news:burst", json!({ "k": k })));
    }
    assert_eq!(
        counter(&gateway, "switchboard_frames_written_total").await - frames,
        10
    );
    assert_eq!(
        counter(&gateway, "switchboard_socket_writes_total").await - writes,
        1,
        "ten frames held within the window go out in one write"
    );
}

#[tokio::test]
async fn a_quiet_connection_is_written_to_at_once() {
    let gateway = node("1s");
    let (mut publisher, _) = gateway.connect("publisher").await;
    let (mut subscriber, _) = gateway.connect("subscriber").await;
    within(subscriber.subscribe("news:quiet")).await.unwrap();
    // Longer than the window since the subscriber's last write.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let sent = Instant::now();
    burst(&mut publisher, "news:quiet", 1).await;
    within(subscriber.expect_message()).await.unwrap();
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "a frame to a connection quiet for longer than the window waited {took:?}, as if held"
    );
}

#[tokio::test]
async fn order_holds_and_writes_are_fewer_than_frames_under_a_stream() {
    let gateway = node("5ms");
    let (mut publisher, _) = gateway.connect("publisher").await;
    let (mut subscriber, _) = gateway.connect("subscriber").await;
    within(subscriber.subscribe("news:stream")).await.unwrap();
    let writes = counter(&gateway, "switchboard_socket_writes_total").await;
    for round in 0..20 {
        burst(&mut publisher, "news:stream", 25).await;
        for k in 0..25 {
            let (_, data) = within(subscriber.expect_message()).await.unwrap();
            assert_eq!(data, json!({ "k": k }), "round {round}");
        }
    }
    let used = counter(&gateway, "switchboard_socket_writes_total").await - writes;
    assert!(used < 500, "500 frames took {used} writes");
}
