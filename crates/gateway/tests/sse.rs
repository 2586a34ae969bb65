//! Server-sent events streams over real sockets: `GET /sse` and its
//! commands (`POST /sse/command`), read as raw HTTP the way a proxy or a
//! browser sees them. Refusals with their exact status and body, commands
//! bound to the stream's session, resume with `Last-Event-ID` after a cut
//! (cluster mode, history in a real Redis), the drain on SIGTERM, a reader
//! that cannot keep up, a stream on a reused keep-alive connection, and the
//! metrics by transport.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One event of a stream: its id, its frame, or a comment (heartbeat).
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Frame { id: Option<String>, frame: Value },
    Comment(String),
}

/// A stream read off a raw connection.
struct Stream {
    socket: TcpStream,
    buf: Vec<u8>,
    headers: HashMap<String, String>,
}

impl Stream {
    /// Opens `GET path` on a fresh connection and expects 200.
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
        let socket = TcpStream::connect(addr).await.unwrap();
        Stream::open_on(socket, addr, path, headers).await
    }

    async fn open_on(
        mut socket: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Stream {
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut stream = Stream {
            socket,
            buf: Vec::new(),
            headers: HashMap::new(),
        };
        let head = within(stream.read_until(b"\r\n\r\n")).await.unwrap();
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().to_owned();
        assert!(status.starts_with("HTTP/1.1 200"), "{head}");
        stream.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        stream
    }

    /// Reads until `end` (included); `None` when the connection ends first.
    async fn read_until(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                let rest = self.buf.split_off(at + end.len());
                return Some(std::mem::replace(&mut self.buf, rest));
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next event (comments included); `None` at the stream's end.
    async fn next(&mut self) -> Option<Event> {
        let block = within(self.read_until(b"\n\n")).await?;
        Some(parse_event(&String::from_utf8(block).unwrap()))
    }

    /// The next event that is not a comment.
    async fn frame(&mut self) -> (Option<String>, Value) {
        loop {
            match self.next().await {
                Some(Event::Frame { id, frame }) => return (id, frame),
                Some(Event::Comment(_)) => continue,
                None => panic!("the stream ended"),
            }
        }
    }

    /// The next frame of `kind`, skipping others (join events, say).
    async fn frame_of(&mut self, kind: &str) -> (Option<String>, Value) {
        loop {
            let (id, frame) = self.frame().await;
            if frame["type"] == kind {
                return (id, frame);
            }
        }
    }
}

fn parse_event(block: &str) -> Event {
    let mut id = None;
    let mut data = None;
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            return Event::Comment(comment.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(value).unwrap());
        } else if !line.is_empty() {
            panic!("unexpected line {line:?} in {block:?}");
        }
    }
    Event::Frame {
        id,
        frame: data.expect("an event with data"),
    }
}

/// A command for a stream: (status, body as JSON, or null when empty).
async fn command(gateway: &Gateway, connection: &str, token: &str, body: &str) -> (u16, Value) {
    let path = format!("/sse/command?connection={connection}");
    let auth = format!("Bearer {token}");
    let (status, body) = http_request(
        gateway.addr,
        "POST",
        &path,
        &[("Authorization", &auth)],
        body,
    )
    .await;
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap()
    };
    (status, value)
}

fn refusal(code: &str, message: &str) -> Value {
    json!({ "error": code, "message": message })
}

async fn get_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = http_request(addr, "GET", path, headers, "").await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn a_stream_gets_its_channels_and_runs_commands_over_http() {
    let gateway = Gateway::start();
    let user_token = sign(&json!({
        "sub": "alice", "exp": now() + 3600,
        "channels": ["chat:*"], "publish": ["chat:*"]
    }));
    let path = format!("/sse?channel=chat:a&channel=admin:x&channel=chat:a&token={user_token}");
    let mut stream = Stream::open(gateway.addr, &path, &[]).await;
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["cache-control"], "no-store");
    assert_eq!(stream.headers["x-accel-buffering"], "no");

    let (id, welcome) = stream.frame().await;
    assert_eq!(id, None);
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["transport"], "sse");
    assert_eq!(welcome["user"], "alice");
    let connection = welcome["connection_id"].as_str().unwrap().to_owned();

    // One event per channel, in order (the repeated name counts once): the
    // granted one with its position, the other refused.
    let (id, first) = stream.frame().await;
    let epoch = first["result"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        first,
        json!({"type":"subscription","channel":"chat:a","result":{"epoch":epoch,"offset":0}})
    );
    assert_eq!(id.as_deref(), Some(format!("0:{epoch},").as_str()));
    let (id, second) = stream.frame().await;
    assert_eq!(
        second,
        json!({"type":"subscription","channel":"admin:x","error":{
            "code":"forbidden","message":"token does not grant subscribing to admin:x"}})
    );
    assert_eq!(id.as_deref(), Some(format!("0:{epoch},").as_str()));

    // Publish through the stream's session: the reply answers the request,
    // the message arrives on the stream with the stream's new position.
    let (status, reply) = command(
        &gateway,
        &connection,
        &user_token,
        r#"{"type":"publish","channel":"chat:a","data":{"text":"hi"},"id":4}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        json!({"type":"reply","id":4,"result":{"epoch":epoch,"offset":1}})
    );
    let (id, message) = stream.frame_of("message").await;
    assert_eq!(
        message,
        json!({"type":"message","channel":"chat:a","offset":1,"data":{"text":"hi"}})
    );
    assert_eq!(id.as_deref(), Some(format!("1:{epoch},").as_str()));

    // Presence counts the stream once, as a member like any other.
    let (status, reply) = command(
        &gateway,
        &connection,
        &user_token,
        r#"{"type":"presence","channel":"chat:a","id":5}"#,
    )
    .await;
    assert_eq!(status, 200);
    let members = reply["result"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{reply}");
    assert_eq!(members[0]["connection_id"], connection.as_str());

    // History, a ping without id (204), a subscribe (refused: a stream's
    // channels are its request's), a frame that does not decode.
    let (status, reply) = command(
        &gateway,
        &connection,
        &user_token,
        r#"{"type":"history","channel":"chat:a","id":6}"#,
    )
    .await;
    assert_eq!(
        (status, reply["result"]["messages"][0]["offset"].clone()),
        (200, json!(1))
    );
    assert_eq!(
        command(&gateway, &connection, &user_token, r#"{"type":"ping"}"#).await,
        (204, Value::Null)
    );
    assert_eq!(
        command(
            &gateway,
            &connection,
            &user_token,
            r#"{"type":"subscribe","channel":"chat:b","id":7}"#
        )
        .await,
        (
            200,
            json!({"type":"reply","id":7,"error":{"code":"bad_request",
                "message":"a stream's channels are named when it opens; open a new stream to add one"}})
        )
    );
    assert_eq!(
        command(&gateway, &connection, &user_token, "not json").await,
        (
            200,
            json!({"type":"error","error":{"code":"bad_request","message":"frame must be a JSON object"}})
        )
    );

    // Refusals of the request itself.
    let other = token("mallory");
    assert_eq!(
        command(&gateway, &connection, &other, r#"{"type":"ping","id":1}"#).await,
        (
            404,
            refusal("not_found", &format!("no stream {connection} on this node"))
        )
    );
    assert_eq!(
        command(
            &gateway,
            "node-x.1",
            &user_token,
            r#"{"type":"ping","id":1}"#
        )
        .await,
        (404, refusal("not_found", "no stream node-x.1 on this node"))
    );
    let (status, body) = http_request(
        gateway.addr,
        "POST",
        "/sse/command",
        &[("Authorization", &format!("Bearer {user_token}"))],
        "{}",
    )
    .await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            400,
            refusal(
                "bad_request",
                "connection=<connection id of the stream> is required"
            )
        )
    );
    assert_eq!(
        command(&gateway, &connection, "not.a.jwt", "{}").await,
        (401, refusal("unauthorized", "malformed token"))
    );
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(
        command(&gateway, &connection, &user_token, &big).await,
        (413, refusal("bad_request", "command exceeds 65536 bytes"))
    );
    let (status, body) = http_request(
        gateway.addr,
        "GET",
        &format!("/sse/command?connection={connection}"),
        &[("Authorization", &format!("Bearer {user_token}"))],
        "",
    )
    .await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (405, refusal("bad_request", "use POST"))
    );

    // Unsubscribe: the stream leaves the channel and gets nothing more of it.
    assert_eq!(
        command(
            &gateway,
            &connection,
            &user_token,
            r#"{"type":"unsubscribe","channel":"chat:a","id":8}"#
        )
        .await,
        (200, json!({"type":"reply","id":8,"result":{}}))
    );
    let (status, reply) = command(
        &gateway,
        &connection,
        &user_token,
        r#"{"type":"presence","channel":"chat:a","id":9}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["result"]["members"], json!([]), "{reply}");
}

#[tokio::test]
async fn a_stream_is_refused_as_a_websocket_handshake_is() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_ALLOWED_ORIGINS", "https://app.example.com")
        .env("SWITCHBOARD_MAX_CHANNELS", "2")
        .start();
    let good = token("alice");
    assert_eq!(
        get_json(gateway.addr, "/sse?channel=a", &[]).await,
        (
            401,
            refusal(
                "unauthorized",
                "missing token: pass ?token= or Authorization: Bearer"
            )
        )
    );
    assert_eq!(
        get_json(gateway.addr, "/sse?channel=a&token=not.a.jwt", &[]).await,
        (401, refusal("unauthorized", "malformed token"))
    );
    assert_eq!(
        get_json(
            gateway.addr,
            &format!("/sse?channel=a&token={good}"),
            &[("Origin", "https://evil.example.com")]
        )
        .await,
        (403, refusal("forbidden_origin", "origin is not allowed"))
    );
    assert_eq!(
        get_json(gateway.addr, &format!("/sse?channel=bad%20name&token={good}"), &[]).await,
        (
            400,
            refusal(
                "bad_request",
                "channel \"bad name\": channel name contains ' '; allowed are letters, digits and _ - : . @ / = +"
            )
        )
    );
    assert_eq!(
        get_json(
            gateway.addr,
            &format!("/sse?channel=a&channel=b&channel=c&token={good}"),
            &[]
        )
        .await,
        (
            400,
            refusal(
                "bad_request",
                "a stream names at most 2 channels (session.max_channels); this one names 3"
            )
        )
    );
    assert_eq!(
        get_json(
            gateway.addr,
            &format!("/sse?channel=a&channel=b&token={good}"),
            &[("Last-Event-ID", "5:e1")]
        )
        .await,
        (
            400,
            refusal(
                "bad_request",
                "Last-Event-ID names 1 positions for 2 channels"
            )
        )
    );
    assert_eq!(
        get_json(
            gateway.addr,
            &format!("/sse?channel=a&last_event_id=x&token={good}"),
            &[]
        )
        .await,
        (
            400,
            refusal(
                "bad_request",
                "Last-Event-ID position \"x\" is not <offset>:<epoch> (or empty)"
            )
        )
    );
    // An allowed origin streams, and may read the answer.
    let stream = Stream::open(
        gateway.addr,
        &format!("/sse?channel=a&token={good}"),
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(
        stream.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // A preflight for a cross-origin command.
    let (status, headers, _) = http_exchange(
        gateway.addr,
        "OPTIONS",
        "/sse/command",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        headers["access-control-allow-headers"],
        "authorization, content-type, last-event-id"
    );
    let (status, _, body) = http_exchange(
        gateway.addr,
        "OPTIONS",
        "/sse",
        &[("Origin", "https://evil.example.com")],
        "",
    )
    .await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (403, refusal("forbidden_origin", "origin is not allowed"))
    );
}

#[tokio::test]
async fn streams_count_against_the_address_limits() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "1")
        .start();
    let good = token("alice");
    let _open = Stream::open(gateway.addr, &format!("/sse?token={good}"), &[]).await;
    let (status, headers, body) =
        http_exchange(gateway.addr, "GET", &format!("/sse?token={good}"), &[], "").await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            429,
            refusal("rate_limited", "this address already holds 1 connections")
        )
    );
    assert_eq!(headers["retry-after"], "5");
}

/// A stream cut (its node killed) resumes on another node from its
/// `Last-Event-ID`: every message published meanwhile, once, in order,
/// with `recovered: true`.
#[tokio::test]
async fn a_cut_stream_resumes_from_its_last_event_id_without_loss() {
    let redis = Redis::start();
    let mut first = cluster_node(&redis, "gw-1", "").await;
    let second = cluster_node(&redis, "gw-2", "").await;
    let path = format!(
        "/sse?channel=feed:a&channel=other&token={}",
        token("reader")
    );
    let mut stream = Stream::open(first.addr, &path, &[]).await;
    stream.frame_of("welcome").await;
    stream.frame_of("subscription").await;
    stream.frame_of("subscription").await;
    for n in 1..=3 {
        let body = json!({"channel": "feed:a", "data": n}).to_string();
        assert_eq!(api(&second, "POST", "/api/publish", &body).await.0, 200);
    }
    let mut last_id = None;
    for n in 1..=3u64 {
        let (id, message) = stream.frame_of("message").await;
        assert_eq!(message["offset"], n);
        assert_eq!(message["data"], n);
        last_id = id;
    }
    let last_id = last_id.unwrap();
    assert!(last_id.starts_with("3:"), "{last_id}");

    // The cut: the node dies; messages keep being published.
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).await;
    assert!(
        stream.next().await.is_none(),
        "the stream ends with its node"
    );
    for n in 4..=6 {
        let body = json!({"channel": "feed:a", "data": n}).to_string();
        assert_eq!(api(&second, "POST", "/api/publish", &body).await.0, 200);
    }

    let mut resumed = Stream::open(second.addr, &path, &[("Last-Event-ID", &last_id)]).await;
    let (_, welcome) = resumed.frame_of("welcome").await;
    let (id, subscription) = resumed.frame().await;
    assert_eq!(subscription["channel"], "feed:a");
    assert_eq!(subscription["result"]["recovered"], true);
    assert_eq!(subscription["result"]["offset"], 6);
    assert_eq!(
        id.as_deref(),
        Some(last_id.as_str()),
        "the replay starts where the cut was"
    );
    for n in 4..=6u64 {
        let (id, message) = resumed.frame_of("message").await;
        assert_eq!(
            (message["offset"].clone(), message["data"].clone()),
            (json!(n), json!(n))
        );
        assert!(id.unwrap().starts_with(&format!("{n}:")));
    }
    // The next channel's event follows the first one's replay.
    let (_, other) = resumed.frame().await;
    assert_eq!(other["channel"], "other");
    assert_eq!(other["result"]["recovered"], true);
    // Live messages follow the replay, none twice.
    let body = json!({"channel": "feed:a", "data": 7}).to_string();
    assert_eq!(api(&second, "POST", "/api/publish", &body).await.0, 200);
    let (_, message) = resumed.frame_of("message").await;
    assert_eq!(message["offset"], 7);

    // In the cluster's presence like a WebSocket connection (the killed
    // node's entry stays until its lease is reaped).
    let (status, presence) = api(&second, "GET", "/api/presence/feed:a", "").await;
    assert_eq!(status, 200);
    let member = json!({"connection_id": welcome["connection_id"], "info": null, "user": "reader"});
    assert!(
        presence["members"].as_array().unwrap().contains(&member),
        "{presence}"
    );
}

#[tokio::test]
async fn sigterm_ends_a_stream_with_a_last_event() {
    let mut gateway = Gateway::builder()
        .env("SWITCHBOARD_DRAIN_WINDOW", "2s")
        .start();
    let mut stream = Stream::open(
        gateway.addr,
        &format!("/sse?channel=a&token={}", token("a")),
        &[],
    )
    .await;
    stream.frame_of("subscription").await;
    gateway.signal("TERM");
    wait_ready(&gateway, 503).await;
    assert_eq!(
        get_json(gateway.addr, &format!("/sse?token={}", token("late")), &[]).await,
        (
            503,
            refusal("unavailable", "node is draining; reconnect to another node")
        )
    );
    let (id, last) = stream.frame_of("close").await;
    assert_eq!(id, None);
    assert_eq!(
        last,
        json!({"type":"close","code":1012,"reason":"node shutting down"})
    );
    assert!(stream.next().await.is_none(), "the response ends after it");
    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

/// A reader that stops reading: its queue overflows while its socket is
/// full; once it reads again it gets what was written, then a last event
/// saying why the stream ends, never a silent stall.
#[tokio::test]
async fn a_stream_that_cannot_keep_up_is_closed_with_a_last_event() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_SEND_QUEUE_BYTES", "16384")
        .env("SWITCHBOARD_MAX_FRAME_BYTES", "8192")
        .env("SWITCHBOARD_PONG_TIMEOUT", "60s")
        .start();
    let socket = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(gateway.addr).await.unwrap()
    };
    let path = format!("/sse?channel=big&token={}", token("slow"));
    let mut stream = Stream::open_on(socket, gateway.addr, &path, &[]).await;
    stream.frame_of("subscription").await;
    let data = "x".repeat(4000);
    let body = json!({"channel": "big", "data": data}).to_string();
    let mut published = 0;
    let dropped = loop {
        assert_eq!(api(&gateway, "POST", "/api/publish", &body).await.0, 200);
        published += 1;
        if published % 20 == 0 {
            let (_, _, metrics) = http_get(gateway.addr, "/metrics", &[]).await;
            if metrics
                .lines()
                .any(|l| l.starts_with("switchboard_messages_dropped_total") && !l.ends_with(" 0"))
            {
                break true;
            }
        }
        if published >= 5000 {
            break false;
        }
    };
    assert!(
        dropped,
        "the queue never overflowed after {published} messages"
    );
    let mut messages = 0;
    let last = loop {
        match stream.next().await {
            Some(Event::Frame { frame, .. }) if frame["type"] == "message" => messages += 1,
            Some(Event::Frame { frame, .. }) if frame["type"] == "close" => break frame,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("the stream ended without a last event after {messages} messages"),
        }
    };
    assert_eq!(
        last,
        json!({"type":"close","code":1013,"reason":"slow consumer: send queue overflowed"})
    );
    assert!(messages < published, "{messages} of {published}");
    assert!(stream.next().await.is_none());
}

/// A stream asked for on a keep-alive connection hyper already serves (a
/// browser reusing a pooled connection) is sent as a chunked body; it ends
/// with its session when the client goes.
#[tokio::test]
async fn a_stream_on_a_reused_connection_is_chunked() {
    let gateway = Gateway::start();
    let mut socket = TcpStream::connect(gateway.addr).await.unwrap();
    let addr = gateway.addr;
    socket
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = Stream {
        socket,
        buf: Vec::new(),
        headers: HashMap::new(),
    };
    let head = within(first.read_until(b"\r\n\r\n")).await.unwrap();
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    within(first.read_until(b"{\"status\":\"ok\"}"))
        .await
        .unwrap();
    assert!(first.buf.is_empty());

    let user = token("kept");
    let mut stream = Stream::open_on(
        first.socket,
        addr,
        &format!("/sse?channel=k&token={user}"),
        &[],
    )
    .await;
    assert_eq!(stream.headers["transfer-encoding"], "chunked");
    // The chunk framing sits around the events: read through it.
    let welcome = within(stream.read_until(b"\n\n")).await.unwrap();
    let welcome = String::from_utf8(welcome).unwrap();
    let connection = welcome
        .split("\"connection_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let (status, reply) = command(
        &gateway,
        &connection,
        &user,
        r#"{"type":"publish","channel":"k","data":"over hyper","id":1}"#,
    )
    .await;
    assert_eq!((status, reply["id"].clone()), (200, json!(1)));
    within(stream.read_until(br#""data":"over hyper"}"#))
        .await
        .unwrap();
    let open = r#"switchboard_transport_connections_open{transport="sse"}"#;
    let (_, _, metrics) = http_get(addr, "/metrics", &[]).await;
    assert!(
        metrics.lines().any(|l| l == format!("{open} 1")),
        "{metrics}"
    );
    drop(stream);
    // The client went: the session ends within a heartbeat or at the pipe's
    // close, and the gauge goes back to 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, metrics) = http_get(addr, "/metrics", &[]).await;
        if metrics.lines().any(|l| l == format!("{open} 0")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive_and_metrics_count_by_transport() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_PING_INTERVAL", "200ms")
        .env("SWITCHBOARD_PONG_TIMEOUT", "200ms")
        .start();
    let mut stream = Stream::open(
        gateway.addr,
        &format!("/sse?channel=a&token={}", token("idle")),
        &[],
    )
    .await;
    stream.frame_of("subscription").await;
    // Well past ping interval + pong timeout: a WebSocket that never
    // answered would be closed with 1001; a stream cannot answer, and its
    // heartbeats go on.
    for _ in 0..4 {
        assert_eq!(stream.next().await, Some(Event::Comment("ping".to_owned())));
    }
    let (_, _, metrics) = http_get(gateway.addr, "/metrics", &[]).await;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(
        value(r#"switchboard_transport_connections_open{transport="sse"}"#),
        1.0
    );
    assert_eq!(
        value(r#"switchboard_transport_connections_open{transport="websocket"}"#),
        0.0
    );
    assert!(value(r#"switchboard_transport_sent_total{transport="sse"}"#) >= 2.0);
    assert!(value(r#"switchboard_transport_sent_bytes_total{transport="sse"}"#) > 100.0);
    assert_eq!(value("switchboard_connections_open"), 1.0);
}

/// A stream's token expires like a WebSocket's: a `refresh` sent over HTTP
/// extends it, and past the new expiry the stream ends with 4001.
#[tokio::test]
async fn a_stream_is_held_to_its_token_and_refreshed_over_http() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_JWT_LEEWAY", "0s")
        .start();
    let short = |secs: u64| sign(&json!({"sub": "tess", "exp": now() + secs, "channels": ["*"]}));
    let first = short(2);
    let mut stream =
        Stream::open(gateway.addr, &format!("/sse?channel=a&token={first}"), &[]).await;
    let (_, welcome) = stream.frame_of("welcome").await;
    let connection = welcome["connection_id"].as_str().unwrap().to_owned();
    let opened = std::time::Instant::now();
    let refresh = json!({"type": "refresh", "token": short(4), "id": 1}).to_string();
    let (status, reply) = command(&gateway, &connection, &first, &refresh).await;
    assert_eq!(status, 200);
    assert!(
        reply["result"]["expires_in"].as_u64().unwrap() >= 3,
        "{reply}"
    );
    let (id, last) = stream.frame_of("close").await;
    assert_eq!(id, None);
    assert_eq!(
        last,
        json!({"type":"close","code":4001,"reason":"token expired"})
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(3),
        "closed at the refreshed expiry, not the first"
    );
    assert!(stream.next().await.is_none());
}
