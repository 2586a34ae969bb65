//! The reconnecting client against a scripted WebSocket server: bearer
//! tokens from a provider, giving up after refusals, resuming subscriptions
//! with `since`, dropping duplicates, and refreshing before expiry.

#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use switchboard_client::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use switchboard_client::{Client, ClientConfig, Event, Message, Position};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TcpStream>;

/// Accepts one upgrade and returns it with its `Authorization` header;
/// with `refuse`, answers 401 with that message instead.
async fn accept(listener: &TcpListener, refuse: Option<&str>) -> (Option<Ws>, Option<String>) {
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    let mut auth = None;
    let callback = |request: &Request, response: Response| {
        auth = request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        match refuse {
            None => Ok(response),
            Some(message) => {
                let body = json!({"error": "unauthorized", "message": message}).to_string();
                let refusal: ErrorResponse = http::Response::builder()
                    .status(401)
                    .body(Some(body))
                    .unwrap();
                Err(refusal)
            }
        }
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .ok();
    (ws, auth)
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

async fn welcome(ws: &mut Ws, expires_in: u64) {
    send(
        ws,
        json!({"type": "welcome", "connection_id": "c", "node_id": "n", "user": "u", "expires_in": expires_in}),
    )
    .await;
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn close(ws: &mut Ws, code: u16) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "bye".into(),
    };
    ws.send(Message::Close(Some(frame))).await.unwrap();
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no event")
        .expect("client ended")
}

/// A provider handing out `t1`, `t2`, ... and counting its calls.
fn config(url: String, calls: &Arc<AtomicUsize>) -> ClientConfig {
    let calls = Arc::clone(calls);
    let mut config = ClientConfig::new(url).with_token_provider(move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok(format!("t{n}")) }
    });
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    config
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    (listener, url)
}

#[tokio::test]
async fn gives_up_after_three_refusals() {
    let (listener, url) = listen().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (_client, mut events) = Client::start(config(url, &calls));
    for n in 1..=3 {
        let (_, auth) = accept(&listener, Some("token expired")).await;
        assert_eq!(auth.as_deref(), Some(format!("Bearer t{n}").as_str()));
        assert_eq!(next(&mut events).await, Event::Refused { status: 401 });
    }
    assert_eq!(
        next(&mut events).await,
        Event::Disconnected {
            code: None,
            reason: "unauthorized: token expired".into()
        }
    );
    assert!(events.recv().await.is_none(), "client ended");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "a new token per attempt");
}

#[tokio::test]
async fn gives_up_when_the_provider_keeps_failing() {
    let mut config = ClientConfig::new("ws://127.0.0.1:9/ws")
        .with_token_provider(|| async { Err::<String, _>("vault sealed".to_owned()) });
    config.backoff_min = Duration::from_millis(1);
    let (_client, mut events) = Client::start(config);
    assert_eq!(
        next(&mut events).await,
        Event::Disconnected {
            code: None,
            reason: "token provider failed: vault sealed".into()
        }
    );
}

#[tokio::test]
async fn resumes_from_the_last_offset_without_duplicates() {
    let (listener, url) = listen().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (client, mut events) = Client::start(config(url, &calls));
    client.subscribe("chat:a");

    let (ws, _) = accept(&listener, None).await;
    let mut ws = ws.unwrap();
    welcome(&mut ws, 3600).await;
    assert!(matches!(next(&mut events).await, Event::Connected(w) if w.expires_in == Some(3600)));
    let subscribe = recv(&mut ws).await;
    assert_eq!(subscribe["channel"], "chat:a");
    assert!(subscribe.get("since").is_none());
    let id = subscribe["id"].clone();
    send(
        &mut ws,
        json!({"type": "reply", "id": id, "result": {"offset": 2, "epoch": "e1"}}),
    )
    .await;
    assert_eq!(
        next(&mut events).await,
        Event::Subscribed {
            channel: "chat:a".into(),
            recovered: None,
            position: Some(Position::new(2, "e1"))
        }
    );
    for offset in [2, 3, 3, 4] {
        send(
            &mut ws,
            json!({"type": "message", "channel": "chat:a", "offset": offset, "data": offset}),
        )
        .await;
    }
    for offset in [3, 4] {
        assert_eq!(
            next(&mut events).await,
            Event::Message {
                channel: "chat:a".into(),
                offset: Some(offset),
                data: json!(offset)
            }
        );
    }
    close(&mut ws, 1012).await;
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected {
            code: Some(1012),
            ..
        }
    ));

    let (ws, auth) = accept(&listener, None).await;
    assert_eq!(auth.as_deref(), Some("Bearer t1"), "the token still works");
    let mut ws = ws.unwrap();
    welcome(&mut ws, 3600).await;
    assert!(matches!(next(&mut events).await, Event::Connected(_)));
    let subscribe = recv(&mut ws).await;
    assert_eq!(subscribe["since"], json!({"offset": 4, "epoch": "e1"}));
    let id = subscribe["id"].clone();
    send(&mut ws, json!({"type": "reply", "id": id, "result": {"offset": 6, "epoch": "e1", "recovered": true}})).await;
    assert!(matches!(
        next(&mut events).await,
        Event::Subscribed {
            recovered: Some(true),
            ..
        }
    ));
    for offset in [5, 6] {
        send(
            &mut ws,
            json!({"type": "message", "channel": "chat:a", "offset": offset, "data": offset}),
        )
        .await;
        assert!(matches!(
            next(&mut events).await,
            Event::Message { offset: Some(o), .. } if o == offset
        ));
    }
    send(
        &mut ws,
        json!({"type": "reset", "channel": "chat:a", "offset": 0, "epoch": "e2"}),
    )
    .await;
    assert_eq!(
        next(&mut events).await,
        Event::Reset {
            channel: "chat:a".into(),
            position: Position::new(0, "e2")
        }
    );
    close(&mut ws, 1012).await;
    next(&mut events).await;
    let (ws, _) = accept(&listener, None).await;
    let mut ws = ws.unwrap();
    welcome(&mut ws, 3600).await;
    let subscribe = recv(&mut ws).await;
    assert_eq!(subscribe["since"], json!({"offset": 0, "epoch": "e2"}));
    client.stop();
}

#[tokio::test]
async fn refreshes_before_expiry_and_reconnects_after_4001() {
    let (listener, url) = listen().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (_client, mut events) = Client::start(config(url, &calls));

    let (ws, auth) = accept(&listener, None).await;
    assert_eq!(auth.as_deref(), Some("Bearer t1"));
    let mut ws = ws.unwrap();
    let start = tokio::time::Instant::now();
    welcome(&mut ws, 2).await;
    // 80% of 2 s.
    let refresh = recv(&mut ws).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(1900),
        "{elapsed:?}"
    );
    assert_eq!(
        (refresh["type"].clone(), refresh["token"].clone()),
        (json!("refresh"), json!("t2"))
    );
    send(&mut ws, json!({"type": "reply", "id": refresh["id"], "error": {"code": "unauthorized", "message": "nope"}})).await;
    assert!(matches!(next(&mut events).await, Event::Connected(_)));
    assert!(matches!(next(&mut events).await, Event::Error(e) if e.code == "unauthorized"));
    // Retried with backoff while the token lives.
    let retry = recv(&mut ws).await;
    assert_eq!(retry["token"], "t3");
    send(
        &mut ws,
        json!({"type": "reply", "id": retry["id"], "result": {"expires_in": 3600}}),
    )
    .await;

    // The refreshed token is the one to reconnect with...
    close(&mut ws, 1012).await;
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected {
            code: Some(1012),
            ..
        }
    ));
    let (ws, auth) = accept(&listener, None).await;
    assert_eq!(auth.as_deref(), Some("Bearer t3"));
    let mut ws = ws.unwrap();
    welcome(&mut ws, 3600).await;
    assert!(matches!(next(&mut events).await, Event::Connected(_)));
    // ...until the server says it expired.
    close(&mut ws, 4001).await;
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected {
            code: Some(4001),
            ..
        }
    ));
    let (ws, auth) = accept(&listener, None).await;
    assert_eq!(auth.as_deref(), Some("Bearer t4"));
    assert!(ws.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn without_a_provider_4001_is_final() {
    let (listener, url) = listen().await;
    let (_client, mut events) = Client::start(ClientConfig::new(format!("{url}?token=x")));
    let (ws, auth) = accept(&listener, None).await;
    assert_eq!(auth, None);
    let mut ws = ws.unwrap();
    welcome(&mut ws, 1).await;
    assert!(matches!(next(&mut events).await, Event::Connected(_)));
    close(&mut ws, 4001).await;
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected {
            code: Some(4001),
            ..
        }
    ));
    assert!(events.recv().await.is_none(), "no reconnect");
}
