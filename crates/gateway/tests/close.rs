//! The close handshake (RFC 6455 §5.5.1, §7.4), over raw TCP sockets with
//! hand-written masked frames: every client close frame is answered with a
//! close frame (a valid code echoed, 1002 for an invalid code or a 1-byte
//! payload, 1007 for a reason that is not UTF-8), then the socket closes;
//! frames after the client's close are ignored. Each test runs twice: on a
//! plain connection, and on one that negotiated permessage-deflate, whose
//! frames pass through the gateway's inflating layer before tungstenite.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A gateway, and whether its connections negotiate permessage-deflate.
struct Node {
    gateway: Gateway,
    deflate: bool,
}

fn gateway(deflate: bool) -> Node {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_CONN_RATE_PER_IP", "1000000")
        .env("SWITCHBOARD_CONN_BURST_PER_IP", "1000000")
        .env("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "100000")
        .env("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "100000")
        .env(
            "SWITCHBOARD_DEFLATE",
            if deflate { "true" } else { "false" },
        )
        .start();
    Node { gateway, deflate }
}

/// A masked client frame (FIN set) with a payload under 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// Opens an authenticated WebSocket over a raw socket and reads the welcome.
async fn open(node: &Node) -> TcpStream {
    let gateway = &node.gateway;
    let mut socket = TcpStream::connect(gateway.addr).await.unwrap();
    let offer = if node.deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
        token("closer"),
        gateway.addr
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        node.deflate,
        "{head}"
    );
    let (opcode, payload) = read_frame(&mut socket).await.unwrap();
    assert_eq!(opcode, OP_TEXT);
    assert!(String::from_utf8(payload).unwrap().contains("\"welcome\""));
    socket
}

/// Reads one server frame (unmasked); `None` at the end of the stream.
async fn read_frame(socket: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    if socket.read_exact(&mut head).await.is_err() {
        return None;
    }
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            socket.read_exact(&mut ext).await.unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            socket.read_exact(&mut ext).await.unwrap();
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    socket.read_exact(&mut payload).await.unwrap();
    Some((head[0] & 0x0f, payload))
}

/// Sends `bytes` after the welcome and returns the frames the server sends
/// until it closes the socket.
async fn exchange(gateway: &Node, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut socket = open(gateway).await;
    socket.write_all(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut frames = Vec::new();
        while let Some(frame) = read_frame(&mut socket).await {
            frames.push(frame);
        }
        frames
    })
    .await
    .expect("the server closed the socket after its close frame")
}

/// The code of the close frame the server answered with, checking that it
/// is the only frame and that the socket then closed.
async fn answer(gateway: &Node, bytes: &[u8]) -> (u16, Vec<u8>) {
    let frames = exchange(gateway, bytes).await;
    assert_eq!(frames.len(), 1, "one close frame, then the end: {frames:?}");
    let (opcode, payload) = &frames[0];
    assert_eq!(*opcode, OP_CLOSE, "{frames:?}");
    assert!(payload.len() >= 2, "{payload:?}");
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        payload[2..].to_vec(),
    )
}

/// Runs `check` for every code, a few connections at a time.
async fn for_codes(
    codes: Vec<u16>,
    check: impl Fn(u16) -> futures_util::future::BoxFuture<'static, ()>,
) {
    stream::iter(codes.into_iter().map(check))
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_close_code_is_echoed() {
    every_valid_close_code_is_echoed_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_close_code_is_echoed_with_deflate() {
    every_valid_close_code_is_echoed_on(true).await;
}

async fn every_valid_close_code_is_echoed_on(deflate: bool) {
    let gateway = std::sync::Arc::new(gateway(deflate));
    let codes: Vec<u16> = (1000..=1003)
        .chain(1007..=1011)
        .chain(3000..=4999)
        .collect();
    for_codes(codes, |code| {
        let gateway = std::sync::Arc::clone(&gateway);
        Box::pin(async move {
            let sent = client_frame(OP_CLOSE, &close_payload(code, b"bye"));
            assert_eq!(
                answer(&gateway, &sent).await,
                (code, b"bye".to_vec()),
                "code {code}"
            );
        })
    })
    .await;
    // A close frame without a code is answered with one without a code.
    let frames = exchange(&gateway, &client_frame(OP_CLOSE, &[])).await;
    assert_eq!(frames, vec![(OP_CLOSE, Vec::new())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_close_code_and_a_one_byte_payload_get_1002() {
    every_invalid_close_code_and_a_one_byte_payload_get_1002_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_close_code_and_a_one_byte_payload_get_1002_with_deflate() {
    every_invalid_close_code_and_a_one_byte_payload_get_1002_on(true).await;
}

async fn every_invalid_close_code_and_a_one_byte_payload_get_1002_on(deflate: bool) {
    let gateway = std::sync::Arc::new(gateway(deflate));
    let codes: Vec<u16> = (0..=999)
        .chain(1004..=1006)
        .chain(1015..=2999)
        .chain((5000..=u16::MAX).step_by(97))
        .chain([u16::MAX])
        .collect();
    for_codes(codes, |code| {
        let gateway = std::sync::Arc::clone(&gateway);
        Box::pin(async move {
            let sent = client_frame(OP_CLOSE, &close_payload(code, b""));
            assert_eq!(answer(&gateway, &sent).await.0, 1002, "code {code}");
        })
    })
    .await;
    assert_eq!(
        answer(&gateway, &client_frame(OP_CLOSE, &[0x03])).await.0,
        1002
    );
}

#[tokio::test]
async fn a_reason_that_is_not_utf8_gets_1007() {
    a_reason_that_is_not_utf8_gets_1007_on(false).await;
}

#[tokio::test]
async fn a_reason_that_is_not_utf8_gets_1007_with_deflate() {
    a_reason_that_is_not_utf8_gets_1007_on(true).await;
}

async fn a_reason_that_is_not_utf8_gets_1007_on(deflate: bool) {
    let gateway = gateway(deflate);
    let sent = client_frame(OP_CLOSE, &close_payload(1000, &[0xff, 0xfe, 0xfd]));
    assert_eq!(answer(&gateway, &sent).await.0, 1007);
}

#[tokio::test]
async fn frames_after_the_clients_close_are_ignored() {
    frames_after_the_clients_close_are_ignored_on(false).await;
}

#[tokio::test]
async fn frames_after_the_clients_close_are_ignored_with_deflate() {
    frames_after_the_clients_close_are_ignored_on(true).await;
}

async fn frames_after_the_clients_close_are_ignored_on(deflate: bool) {
    let gateway = gateway(deflate);
    let mut sent = client_frame(OP_CLOSE, &close_payload(1000, b""));
    sent.extend(client_frame(OP_PING, b"still there?"));
    sent.extend(client_frame(OP_TEXT, br#"{"type":"ping","id":1}"#));
    let frames = exchange(&gateway, &sent).await;
    assert_eq!(frames, vec![(OP_CLOSE, close_payload(1000, b""))]);
    assert!(!frames.iter().any(|(opcode, _)| *opcode == OP_PONG));
    // The node counts it as a close by the client.
    let (_, _, metrics) = http_get(gateway.gateway.addr, "/metrics", &[]).await;
    assert!(
        metrics.contains("switchboard_sessions_closed_total{code=\"client\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("sessions_closed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
