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

/// Every text frame a raw WebSocket client receives until `count` messages
/// (lines) have arrived.
async fn raw_frames(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    count: usize,
) -> Vec<String> {
    use futures_util::StreamExt;
    let mut frames = Vec::new();
    let mut lines = 0;
    while lines < count {
        let message = within(socket.next()).await.unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            lines += text.split('\n').count();
            frames.push(text.to_string());
        }
    }
    frames
}

/// A raw client subscribed to `channel`, with or without `&batch=1`.
async fn raw_subscriber(
    gateway: &Gateway,
    channel: &str,
    batch: bool,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures_util::SinkExt;
    let mut url = gateway.ws_url(&token("raw"));
    if batch {
        url.push_str("&batch=1");
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = raw_frames(&mut socket, 1).await;
    let welcome: serde_json::Value = serde_json::from_str(&welcome[0]).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome.get("batch"), batch.then_some(&json!(true)));
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "subscribe", "channel": channel, "id": 1}).to_string(),
        ))
        .await
        .unwrap();
    let reply = raw_frames(&mut socket, 1).await;
    assert!(reply[0].contains(r#""type":"reply""#), "{reply:?}");
    socket
}

#[tokio::test]
async fn a_client_that_asked_for_batched_frames_gets_several_messages_per_frame() {
    let gateway = node("1s");
    let (mut publisher, _) = gateway.connect("publisher").await;
    let mut batched = raw_subscriber(&gateway, "news:batch", true).await;
    let mut plain = raw_subscriber(&gateway, "news:batch", false).await;
    burst(&mut publisher, "news:batch", 10).await;

    let frames = raw_frames(&mut batched, 10).await;
    assert_eq!(
        frames.len(),
        1,
        "held within the window, sent as one frame: {frames:?}"
    );
    let messages: Vec<serde_json::Value> = frames[0]
        .split('\n')
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for (k, message) in messages.iter().enumerate() {
        assert_eq!(message["type"], "message");
        assert_eq!(message["data"], json!({ "k": k }));
    }

    // A client that did not ask never gets a frame with more than one.
    let frames = raw_frames(&mut plain, 10).await;
    assert_eq!(frames.len(), 10);
    assert!(frames.iter().all(|f| !f.contains('\n')), "{frames:?}");
}

#[tokio::test]
async fn the_rust_client_reads_batched_frames_as_single_messages() {
    let gateway = node("1s");
    let (mut publisher, _) = gateway.connect("publisher").await;
    let url = format!("{}&batch=1", gateway.ws_url(&token("reader")));
    let (mut reader, welcome) = switchboard_client::Connection::connect(&url).await.unwrap();
    assert!(welcome.batch);
    within(reader.subscribe("news:client")).await.unwrap();
    burst(&mut publisher, "news:client", 10).await;
    for k in 0..10 {
        let (channel, data) = within(reader.expect_message()).await.unwrap();
        assert_eq!((channel.as_str(), data), ("news:client", json!({ "k": k })));
    }
    // Commands still get their replies after a batch.
    within(reader.ping()).await.unwrap();
}

#[tokio::test]
async fn a_bad_batch_value_is_refused_before_the_upgrade() {
    let gateway = node("5ms");
    let url = format!("{}&batch=maybe", gateway.ws_url(&token("x")));
    match switchboard_client::Connection::connect(&url).await {
        Err(switchboard_client::ClientError::Refused { status, body, .. }) => {
            assert_eq!(status, 400);
            assert_eq!(
                body,
                json!({"error": "bad_request", "message": "batch must be 1 (several messages per frame, one per line) or 0"})
            );
        }
        Err(other) => panic!("expected a 400 refusal, got {other}"),
        Ok(_) => panic!("connected despite batch=maybe"),
    }
}
