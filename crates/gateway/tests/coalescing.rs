//! Adaptive write coalescing, on a real gateway with real sockets: a frame
//! waits only when waiting batches. A connection that gets a frame at a
//! time is written to at once, never held (counted by
//! `switchboard_coalesce_waits_total`), however recently it wrote; a
//! backlog goes out at once in one system call (counted by
//! `switchboard_socket_writes_total`, and seen as one batched frame), in
//! order, and makes the next frame wait for the window, until a window
//! gathers a single frame; and order holds under a long stream.
//!
//! A backlog is made without racing the scheduler: the subscriber's session
//! is kept busy by a subscribe that waits for the backend (the subscribe
//! proxy, answering only when the test lets it), so the frames published
//! meanwhile all wait in its queue.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use receiver::*;
use serde_json::json;

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

/// The sum of a labelled counter's series from /metrics.
async fn counter_sum(gateway: &Gateway, name: &str) -> u64 {
    let (_, _, body) = http_get(gateway.addr, "/metrics", &[]).await;
    body.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A backend for the subscribe proxy that holds each request until the
/// test releases it: the session that asked waits meanwhile, taking nothing
/// off its queue.
struct Backend {
    receiver: Receiver,
    asked: Arc<AtomicBool>,
    release: mpsc::Sender<()>,
}

impl Backend {
    fn start() -> Backend {
        let receiver = Receiver::start();
        let asked = Arc::new(AtomicBool::new(false));
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let flag = Arc::clone(&asked);
        receiver.set_handler(Arc::new(move |_: &Request| {
            flag.store(true, Ordering::SeqCst);
            // Bounded, so a failing test still ends.
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
            Answer::Json(200, json!({ "allow": true }))
        }));
        Backend {
            receiver,
            asked,
            release,
        }
    }

    /// A gateway (at `write_coalesce`, or the default) whose `stall`
    /// namespace asks this backend about subscribes.
    fn gateway(&self, write_coalesce: Option<&str>) -> Gateway {
        let mut builder = Gateway::builder();
        if let Some(window) = write_coalesce {
            builder = builder.env("SWITCHBOARD_WRITE_COALESCE", window);
        }
        builder
            .env(
                "SWITCHBOARD_BACKEND_SECRET",
                "backend-secret-backend-secret-0123456789",
            )
            .env("SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT", "30s")
            .toml(&format!(
                "[namespaces.stall]\nsubscribe_proxy = \"{}\"\n",
                self.receiver.url("/subscribe")
            ))
            .start()
    }

    /// Waits until the backend was asked.
    async fn asked(&self) {
        within(async {
            while !self.asked.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

/// A token for channels under `news:` only (`stall:` channels are asked
/// of the backend).
fn news_token(user: &str) -> String {
    sign(
        &json!({ "sub": user, "exp": now() + 3600, "channels": ["news:*"], "publish": ["news:*"] }),
    )
}

/// Keeps `socket`'s session busy with a subscribe the backend holds, has
/// `n` messages published to `channel` (which `socket` and `others` more
/// hold) queued behind it, then lets the backend answer and reads the
/// subscribe's reply. Returns the node's socket writes, frames written and
/// coalescing waits just before the release.
async fn publish_behind_a_busy_session(
    gateway: &Gateway,
    backend: &Backend,
    socket: &mut RawSocket,
    publisher: &mut switchboard_client::Connection,
    (channel, n, others): (&str, u64, u64),
) -> (u64, u64, u64) {
    use futures_util::SinkExt;
    let delivered = counter_sum(gateway, "switchboard_messages_delivered_total").await;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "subscribe", "channel": "stall:1", "id": 2}).to_string(),
        ))
        .await
        .unwrap();
    backend.asked().await;
    burst(publisher, channel, n as usize).await;
    // Every frame is in the session's queue (counted when queued).
    within(async {
        while counter_sum(gateway, "switchboard_messages_delivered_total").await
            < delivered + n * (1 + others)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let writes = counter(gateway, "switchboard_socket_writes_total").await;
    let frames = counter(gateway, "switchboard_frames_written_total").await;
    let waits = counter(gateway, "switchboard_coalesce_waits_total").await;
    backend.release.send(()).unwrap();
    let reply = raw_frames(socket, 1).await.remove(0);
    assert!(
        reply.contains(r#""type":"reply""#) && reply.contains(r#""id":2"#),
        "{reply}"
    );
    (writes, frames, waits)
}

#[tokio::test]
async fn a_backlog_goes_out_in_one_write_then_frames_wait_until_a_window_gathers_one() {
    let backend = Backend::start();
    let gateway = backend.gateway(Some("1s"));
    let (mut publisher, _) = gateway.connect_token(&news_token("publisher")).await;
    let mut subscriber =
        raw_subscriber(&gateway, &news_token("subscriber"), "news:burst", false).await;
    let (writes, frames, waits) = publish_behind_a_busy_session(
        &gateway,
        &backend,
        &mut subscriber,
        &mut publisher,
        ("news:burst", 10, 0),
    )
    .await;
    // The ten frames queued behind the reply go out at once, in one write,
    // in order.
    let received = raw_frames(&mut subscriber, 10).await;
    for (k, frame) in received.iter().enumerate() {
        let message: serde_json::Value = serde_json::from_str(frame).unwrap();
        assert_eq!(message["channel"], "news:burst");
        assert_eq!(message["data"], json!({ "k": k }));
    }
    // That write found the connection behind: the next frame waits for the
    // window (1 s after that write) to gather what follows. It gathers only
    // itself, so the frame after it is written at once.
    for _ in 0..2 {
        burst(&mut publisher, "news:burst", 1).await;
        let frame = raw_frames(&mut subscriber, 1).await;
        assert!(frame[0].contains(r#""data":{"k":0}"#), "{frame:?}");
    }
    // Counted when a write returns, which the client may beat.
    let (mut used, mut written) = (0, 0);
    for _ in 0..100 {
        written = counter(&gateway, "switchboard_frames_written_total").await - frames;
        used = counter(&gateway, "switchboard_socket_writes_total").await - writes;
        if written >= 13 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(written, 13, "the reply, ten frames, then two");
    assert_eq!(
        used, 4,
        "the reply, the ten queued frames in one write, then one write each"
    );
    assert_eq!(
        counter(&gateway, "switchboard_coalesce_waits_total").await - waits,
        1,
        "only the frame after the backlog waited"
    );
}

#[tokio::test]
async fn a_connection_getting_a_frame_at_a_time_is_never_held() {
    // The longest window: the old fixed window would hold every one of these
    // frames, since each arrives within a second of the previous write.
    let gateway = node("1s");
    let (mut publisher, _) = gateway.connect("publisher").await;
    let (mut subscriber, _) = gateway.connect("subscriber").await;
    // The reply to this subscribe is a write: each frame below comes within
    // the window of the one before.
    within(subscriber.subscribe("news:quiet")).await.unwrap();
    let waits = counter(&gateway, "switchboard_coalesce_waits_total").await;
    let writes = counter(&gateway, "switchboard_socket_writes_total").await;
    for k in 0..5 {
        publisher
            .send_text(
                json!({"type": "publish", "channel": "news:quiet", "data": {"k": k}}).to_string(),
            )
            .await
            .unwrap();
        let (_, data) = within(subscriber.expect_message()).await.unwrap();
        assert_eq!(data, json!({ "k": k }));
    }
    assert_eq!(
        counter(&gateway, "switchboard_coalesce_waits_total").await - waits,
        0,
        "a frame with nothing queued behind it, after a write that carried one, is written at once"
    );
    assert_eq!(
        counter(&gateway, "switchboard_socket_writes_total").await - writes,
        5
    );
}

#[tokio::test]
async fn order_holds_under_a_long_stream() {
    let gateway = node("5ms");
    let (mut publisher, _) = gateway.connect("publisher").await;
    let (mut subscriber, _) = gateway.connect("subscriber").await;
    within(subscriber.subscribe("news:stream")).await.unwrap();
    let frames = counter(&gateway, "switchboard_frames_written_total").await;
    for round in 0..20 {
        burst(&mut publisher, "news:stream", 25).await;
        for k in 0..25 {
            let (_, data) = within(subscriber.expect_message()).await.unwrap();
            assert_eq!(data, json!({ "k": k }), "round {round}");
        }
    }
    let written = counter(&gateway, "switchboard_frames_written_total").await - frames;
    assert!(written >= 500, "500 frames received, {written} counted");
}

/// Every text frame a raw WebSocket client receives until `count` messages
/// (lines) have arrived.
async fn raw_frames(socket: &mut RawSocket, count: usize) -> Vec<String> {
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

/// A raw client with `token`, subscribed to `channel`, with or without
/// `&batch=1`.
async fn raw_subscriber(gateway: &Gateway, token: &str, channel: &str, batch: bool) -> RawSocket {
    use futures_util::SinkExt;
    let mut url = gateway.ws_url(token);
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
    let backend = Backend::start();
    let gateway = backend.gateway(None);
    let (mut publisher, _) = gateway.connect_token(&news_token("publisher")).await;
    let mut batched = raw_subscriber(&gateway, &news_token("batched"), "news:batch", true).await;
    let mut plain = raw_subscriber(&gateway, &news_token("plain"), "news:batch", false).await;
    publish_behind_a_busy_session(
        &gateway,
        &backend,
        &mut batched,
        &mut publisher,
        ("news:batch", 10, 1),
    )
    .await;

    let frames = raw_frames(&mut batched, 10).await;
    assert_eq!(
        frames.len(),
        1,
        "queued behind each other, sent as one frame: {frames:?}"
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
