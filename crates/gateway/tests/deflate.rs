//! permessage-deflate (RFC 7692) against a real gateway, from a raw TCP
//! client that writes and reads frames by hand and compresses with flate2
//! as a browser would: what the 101 answers to each offer, which frames
//! arrive compressed (RSV1) and what they inflate to, compressed frames
//! from the client, and the closes for an inflation bomb (1009) and data
//! that does not inflate (1007). See docs/protocol.md, "Compression".

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A node with permessage-deflate on, and the `docs` namespace opted in.
fn deflating() -> Gateway {
    Gateway::builder()
        .env("SWITCHBOARD_DEFLATE", "true")
        .toml("[namespaces.docs]\ndeflate = true\n")
        .start()
}

/// One frame from the server.
#[derive(Debug)]
struct Received {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Received {
    /// The payload as text, inflated when RSV1 is set.
    fn text(&self) -> String {
        let bytes = if self.rsv1 {
            inflate(&self.payload)
        } else {
            self.payload.clone()
        };
        String::from_utf8(bytes).unwrap()
    }
}

/// A WebSocket client over a raw socket.
struct Raw {
    socket: TcpStream,
}

impl Raw {
    /// Upgrades with a `Sec-WebSocket-Extensions` header per entry of
    /// `offers`; returns the 101's `Sec-WebSocket-Extensions`, if any, and
    /// the client, after the welcome.
    async fn open(gateway: &Gateway, user: &str, offers: &[&str]) -> (Raw, Option<String>) {
        let mut socket = TcpStream::connect(gateway.addr).await.unwrap();
        let mut request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            token(user),
            gateway.addr
        );
        for offer in offers {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        within(async {
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                socket.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
        })
        .await;
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions: Vec<String> = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, value)| value.trim().to_owned())
            .collect();
        assert!(extensions.len() <= 1, "{head}");
        let mut raw = Raw { socket };
        let welcome = raw.frame().await.unwrap();
        assert!(welcome.text().contains("\"welcome\""), "{welcome:?}");
        (raw, extensions.into_iter().next())
    }

    /// Sends `text` in one text frame, compressed or not.
    async fn send(&mut self, text: &str, compressed: bool) {
        let bytes = if compressed {
            frame(FIN | RSV1 | OP_TEXT, &deflate(text.as_bytes()))
        } else {
            frame(FIN | OP_TEXT, text.as_bytes())
        };
        self.socket.write_all(&bytes).await.unwrap();
    }

    /// The next frame; `None` once the server closed the socket.
    async fn frame(&mut self) -> Option<Received> {
        within(async {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).await.ok()?;
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut ext = [0u8; 2];
                    self.socket.read_exact(&mut ext).await.unwrap();
                    u16::from_be_bytes(ext) as usize
                }
                127 => {
                    let mut ext = [0u8; 8];
                    self.socket.read_exact(&mut ext).await.unwrap();
                    u64::from_be_bytes(ext) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0; len];
            self.socket.read_exact(&mut payload).await.unwrap();
            Some(Received {
                rsv1: head[0] & RSV1 != 0,
                opcode: head[0] & 0x0f,
                payload,
            })
        })
        .await
    }

    /// The next text frame.
    async fn text(&mut self) -> Received {
        let frame = self.frame().await.expect("a frame");
        assert_eq!(frame.opcode, OP_TEXT, "{frame:?}");
        frame
    }

    /// Sends a command and returns the `result` of its reply, skipping
    /// anything before it.
    async fn command(&mut self, command: Value, compressed: bool) -> Value {
        let id = command["id"].clone();
        self.send(&command.to_string(), compressed).await;
        loop {
            let reply: Value = serde_json::from_str(&self.text().await.text()).unwrap();
            if reply["type"] == "reply" && reply["id"] == id {
                assert!(reply.get("error").is_none(), "{reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The server's close frame (code, reason), after any other frames,
    /// then the end of the stream.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let frame = self.frame().await.expect("a close frame");
            if frame.opcode == OP_CLOSE {
                assert!(!frame.rsv1, "control frames are never compressed");
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                let reason = String::from_utf8(frame.payload[2..].to_vec()).unwrap();
                return (code, reason);
            }
        }
    }
}

/// A masked client frame of any length.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else if let Ok(len) = u16::try_from(payload.len()) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One message compressed as a client does: raw DEFLATE, sync flush, the
/// tail removed (RFC 7692 §7.2.1).
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::new(9), false);
    let mut out = Vec::with_capacity(payload.len() + 1024);
    loop {
        let consumed = compressor.total_in() as usize;
        compressor
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .unwrap();
        if compressor.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&SYNC_TAIL));
    out.truncate(out.len() - SYNC_TAIL.len());
    out
}

/// A server message inflated (RFC 7692 §7.2.2).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&SYNC_TAIL);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(inflater.total_in() as usize, input.len());
    out
}

/// Data whose message frame is well over the 256-byte threshold.
fn big_data(n: usize) -> Value {
    json!({
        "title": "quarterly report",
        "rows": (0..n).map(|i| json!({"id": i, "name": format!("row-{i}"), "ok": true})).collect::<Vec<_>>(),
    })
}

/// The `message` frame a subscriber receives for `data` published on
/// `channel` at `offset`: the data spliced in as the publisher wrote it.
fn message_frame(channel: &str, offset: &Value, data: &Value) -> String {
    format!(r#"{{"type":"message","channel":"{channel}","offset":{offset},"data":{data}}}"#)
}

#[tokio::test]
async fn the_101_answers_each_offer() {
    let gateway = deflating();
    let cases: [(&[&str], Option<&str>); 8] = [
        (&[], None),
        (&["permessage-deflate"], Some(ACCEPTED)),
        (
            &["permessage-deflate; client_max_window_bits"],
            Some(ACCEPTED),
        ),
        (
            &["permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits"],
            Some(ACCEPTED),
        ),
        (
            &[
                "permessage-deflate; server_max_window_bits=10",
                "permessage-deflate; server_no_context_takeover",
            ],
            Some(ACCEPTED),
        ),
        (&["permessage-deflate; mystery"], None),
        (&["permessage-deflate; server_max_window_bits=10"], None),
        (&["x-webkit-deflate-frame"], None),
    ];
    for (offers, expected) in cases {
        let (_, answer) = Raw::open(&gateway, "negotiator", offers).await;
        assert_eq!(answer.as_deref(), expected, "{offers:?}");
    }

    // A node with deflate off (the default) never answers with it.
    let plain = Gateway::start();
    let (_, answer) = Raw::open(&plain, "negotiator", &["permessage-deflate"]).await;
    assert_eq!(answer, None);
}

#[tokio::test]
async fn messages_of_a_deflate_namespace_are_compressed_above_the_threshold() {
    let gateway = deflating();
    let (mut raw, answer) = Raw::open(&gateway, "reader", &["permessage-deflate"]).await;
    assert_eq!(answer.as_deref(), Some(ACCEPTED));
    raw.command(
        json!({"type": "subscribe", "channel": "docs:report", "id": 1}),
        false,
    )
    .await;
    raw.command(
        json!({"type": "subscribe", "channel": "chat:room", "id": 2}),
        false,
    )
    .await;
    // A subscriber that did not negotiate compression gets plain frames.
    let (mut plain, _) = gateway.connect("plain").await;
    within(plain.subscribe("docs:report")).await.unwrap();
    let (mut publisher, _) = gateway.connect("publisher").await;

    // Above the threshold: compressed, inflating to the exact frame.
    let big = big_data(40);
    let reply = within(publisher.publish("docs:report", &big))
        .await
        .unwrap();
    let got = raw.text().await;
    assert!(
        got.rsv1,
        "a {}-byte message is compressed",
        got.text().len()
    );
    assert!(got.payload.len() < got.text().len() / 2);
    assert_eq!(
        got.text(),
        message_frame("docs:report", &reply["offset"], &big)
    );
    assert_eq!(
        within(plain.expect_message()).await.unwrap(),
        ("docs:report".to_owned(), big.clone())
    );

    // Below the threshold: uncompressed.
    let small = json!({"text": "hi"});
    let reply = within(publisher.publish("docs:report", &small))
        .await
        .unwrap();
    let got = raw.text().await;
    assert!(!got.rsv1);
    assert_eq!(
        got.text(),
        message_frame("docs:report", &reply["offset"], &small)
    );

    // A namespace without `deflate = true`: uncompressed at any size.
    let reply = within(publisher.publish("chat:room", &big)).await.unwrap();
    let got = raw.text().await;
    assert!(!got.rsv1);
    assert_eq!(
        got.text(),
        message_frame("chat:room", &reply["offset"], &big)
    );
}

#[tokio::test]
async fn compressed_frames_from_the_client_are_read() {
    let gateway = deflating();
    let (mut raw, answer) = Raw::open(&gateway, "writer", &["permessage-deflate"]).await;
    assert_eq!(answer.as_deref(), Some(ACCEPTED));
    let (mut subscriber, _) = gateway.connect("subscriber").await;
    within(subscriber.subscribe("chat:room")).await.unwrap();

    let big = big_data(100);
    let result = raw
        .command(
            json!({"type": "publish", "channel": "chat:room", "data": big, "id": 1}),
            true,
        )
        .await;
    assert!(result["offset"].is_u64(), "{result}");
    assert_eq!(
        within(subscriber.expect_message()).await.unwrap(),
        ("chat:room".to_owned(), big)
    );
    // A short command, compressed, and one not compressed, on one connection.
    raw.command(json!({"type": "ping", "id": 2}), true).await;
    raw.command(json!({"type": "ping", "id": 3}), false).await;

    // A compressed message in three fragments, a ping between two of them:
    // the pong comes first, then the publish's reply.
    let data = big_data(60);
    let command = json!({"type": "publish", "channel": "chat:room", "data": data, "id": 4});
    let compressed = deflate(command.to_string().as_bytes());
    let third = compressed.len() / 3;
    let bytes = [
        frame(RSV1 | OP_TEXT, &compressed[..third]),
        frame(FIN | OP_PING, b"between"),
        frame(0x0, &compressed[third..2 * third]),
        frame(FIN, &compressed[2 * third..]),
    ]
    .concat();
    raw.socket.write_all(&bytes).await.unwrap();
    let pong = raw.frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"between"[..])
    );
    let reply: Value = serde_json::from_str(&raw.text().await.text()).unwrap();
    assert_eq!(reply["id"], 4, "{reply}");
    assert!(reply["result"]["offset"].is_u64(), "{reply}");
    assert_eq!(
        within(subscriber.expect_message()).await.unwrap(),
        ("chat:room".to_owned(), data)
    );
}

#[tokio::test]
async fn an_inflation_bomb_closes_with_1009_and_the_node_carries_on() {
    let gateway = deflating();
    let (mut other, _) = gateway.connect("other").await;
    within(other.subscribe("chat:room")).await.unwrap();
    let (mut raw, _) = Raw::open(&gateway, "bomber", &["permessage-deflate"]).await;

    // 10 MB of zeros (inside a JSON string) compress to about 10 KB.
    let mut text = br#"{"type":"publish","channel":"chat:room","data":""#.to_vec();
    text.resize(10 << 20, b'0');
    text.extend_from_slice(br#""}"#);
    let bomb = deflate(&text);
    assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
    raw.socket
        .write_all(&frame(FIN | RSV1 | OP_TEXT, &bomb))
        .await
        .unwrap();
    assert_eq!(
        raw.closed().await,
        (1009, "frame exceeds 65536 bytes".to_owned())
    );

    let (mut publisher, _) = gateway.connect("publisher").await;
    within(publisher.publish("chat:room", &json!("still here")))
        .await
        .unwrap();
    assert_eq!(
        within(other.expect_message()).await.unwrap().1,
        json!("still here")
    );
}

#[tokio::test]
async fn data_that_does_not_inflate_closes_with_1007() {
    let gateway = deflating();
    let (mut raw, _) = Raw::open(&gateway, "garbler", &["permessage-deflate"]).await;
    // BTYPE 11 is reserved: no DEFLATE stream starts this way.
    raw.socket
        .write_all(&frame(FIN | RSV1 | OP_TEXT, &[0xff, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    assert_eq!(
        raw.closed().await,
        (1007, "compressed frame does not inflate".to_owned())
    );
    // The server then ends the connection.
    tokio::time::timeout(Duration::from_secs(5), async {
        while raw.frame().await.is_some() {}
    })
    .await
    .unwrap();
}

/// RFC 6455's frame rules hold on a compressed connection: a compressed
/// message may be fragmented with a ping between its fragments, a
/// compressed text that is not UTF-8 once inflated closes with 1007, and
/// RSV1 on a continuation frame is a protocol error (RFC 7692 §6.1).
#[tokio::test]
async fn frame_rules_hold_through_the_inflating_layer() {
    const OP_CONTINUATION: u8 = 0x0;
    const OP_PING: u8 = 0x9;
    const OP_PONG: u8 = 0xA;
    let gateway = deflating();

    let (mut raw, _) = Raw::open(&gateway, "fragments", &["permessage-deflate"]).await;
    let command = json!({"type": "ping", "id": 7}).to_string();
    let compressed = deflate(command.as_bytes());
    let (first, rest) = compressed.split_at(compressed.len() / 2);
    let mut bytes = frame(RSV1 | OP_TEXT, first);
    bytes.extend(frame(FIN | OP_PING, b"between"));
    bytes.extend(frame(FIN | OP_CONTINUATION, rest));
    raw.socket.write_all(&bytes).await.unwrap();
    let pong = raw.frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"between"[..])
    );
    let reply: Value = serde_json::from_str(&raw.frame().await.unwrap().text()).unwrap();
    assert_eq!(reply, json!({"type": "reply", "id": 7, "result": {}}));

    let (mut raw, _) = Raw::open(&gateway, "latin1", &["permessage-deflate"]).await;
    let not_utf8 = deflate(&[b'{', 0xff, 0xfe, b'}']);
    raw.socket
        .write_all(&frame(FIN | RSV1 | OP_TEXT, &not_utf8))
        .await
        .unwrap();
    assert_eq!(
        raw.closed().await,
        (1007, "text frame is not valid UTF-8".to_owned())
    );

    let (mut raw, _) = Raw::open(&gateway, "rsv1", &["permessage-deflate"]).await;
    let mut bytes = frame(RSV1 | OP_TEXT, first);
    bytes.extend(frame(FIN | RSV1 | OP_CONTINUATION, rest));
    raw.socket.write_all(&bytes).await.unwrap();
    assert_eq!(
        raw.closed().await,
        (1002, "websocket protocol error".to_owned())
    );
}

/// One compression per message on the node, however many subscribers get
/// it: three compressed subscribers receive the same bytes, and the node's
/// deflate counters grow by one message's size, not three.
#[tokio::test]
async fn a_message_is_compressed_once_for_every_subscriber() {
    let gateway = deflating();
    let mut readers = Vec::new();
    for user in ["r1", "r2", "r3"] {
        let (mut raw, _) = Raw::open(&gateway, user, &["permessage-deflate"]).await;
        raw.command(
            json!({"type": "subscribe", "channel": "docs:shared", "id": 1}),
            false,
        )
        .await;
        readers.push(raw);
    }
    let raw_bytes = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with("switchboard_deflate_raw_bytes_total{direction=\"sent\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |v| v.parse().unwrap())
    };
    let (_, _, before) = http_get(gateway.addr, "/metrics", &[]).await;
    let (mut publisher, _) = gateway.connect("publisher").await;
    let big = big_data(60);
    let reply = within(publisher.publish("docs:shared", &big))
        .await
        .unwrap();
    let expected = message_frame("docs:shared", &reply["offset"], &big);
    let mut payloads = Vec::new();
    for reader in &mut readers {
        let got = reader.text().await;
        assert!(got.rsv1);
        assert_eq!(got.text(), expected);
        payloads.push(got.payload);
    }
    assert!(payloads.iter().all(|p| *p == payloads[0]), "the same bytes");
    let (_, _, after) = http_get(gateway.addr, "/metrics", &[]).await;
    assert_eq!(
        raw_bytes(&after) - raw_bytes(&before),
        expected.len() as u64,
        "compressed once: {}",
        after
            .lines()
            .filter(|l| l.contains("deflate") || l.contains("wire_sent"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(after.contains("switchboard_compression_ratio{direction=\"sent\"}"));
}
