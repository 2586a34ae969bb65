//! The WebSocket client side over a raw TCP socket, for subscribers that
//! negotiate permessage-deflate (RFC 7692): tokio-tungstenite cannot read
//! frames with RSV1 set, so this module writes the upgrade request by hand,
//! offers `permessage-deflate; client_no_context_takeover;
//! server_no_context_takeover`, checks the 101, then reads frames itself
//! and inflates each compressed message on its own (raw DEFLATE with
//! `00 00 ff ff` appended, a fresh window per message: the server takes no
//! context over).
//!
//! Like `sse` for event streams, it holds one socket and one buffer per
//! connection and parses only what a load subscriber needs: data messages
//! (fragmented or not, compressed or not), pings (answered with a pong),
//! and the close frame. It counts every byte read from the socket, so a run
//! reports what crossed the wire, compressed. Client frames go uncompressed
//! (the contract lets a client choose), masked as RFC 6455 requires.
//!
//! Its own module beside `conn` and `sse`, below the subscriber.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::plan::Format;

/// The socket read buffer (it grows for a larger frame).
const READ_BUFFER: usize = 8 * 1024;
const MAX_HEAD: usize = 16 * 1024;
/// A message larger than this (after inflation) is an error.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The key of every upgrade request and the accept the server must answer
/// with (RFC 6455, section 1.3): the key only proves the server speaks
/// WebSocket, and a fixed one saves a SHA-1 per connection.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// What a subscriber offers.
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";
/// The tail RFC 7692 strips from every compressed message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What the reader hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole data message, inflated: text (`binary: false`) or binary.
    Message { binary: bool, payload: Vec<u8> },
    /// The server's close frame, with its code if it had one.
    Close(Option<u16>),
}

/// One frame's header.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    /// Header bytes before the payload.
    len: usize,
    payload: usize,
}

/// Parses a server frame's header from the front of `buf`; `Ok(None)` when
/// more bytes are needed.
fn header(buf: &[u8]) -> Result<Option<Header>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x30 != 0 {
        return Err("a frame with RSV2 or RSV3 set".into());
    }
    if b1 & 0x80 != 0 {
        return Err("a masked frame from the server".into());
    }
    let (len, payload) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(n);
            (10, usize::try_from(n).unwrap_or(usize::MAX))
        }
        126 | 127 => return Ok(None),
        n => (2, usize::from(n)),
    };
    if payload > MAX_MESSAGE {
        return Err(format!("a frame of {payload} bytes"));
    }
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0f,
        len,
        payload,
    }))
}

/// A client frame: FIN set, masked with `mask`.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Inflates one compressed message (its frames' payloads joined) with a
/// fresh window.
pub fn inflate(inflater: &mut Decompress, compressed: &[u8]) -> Result<Vec<u8>, String> {
    inflater.reset(false);
    let mut input = Vec::with_capacity(compressed.len() + TAIL.len());
    input.extend_from_slice(compressed);
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity((compressed.len() * 4).clamp(256, MAX_MESSAGE));
    loop {
        let consumed = inflater.total_in() as usize;
        let status = inflater
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("inflate: {e}"))?;
        let done = inflater.total_in() as usize >= input.len();
        if status == Status::StreamEnd || (done && out.len() < out.capacity()) {
            return Ok(out);
        }
        if out.len() >= MAX_MESSAGE {
            return Err(format!("a message inflating past {MAX_MESSAGE} bytes"));
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        } else if status == Status::BufError {
            return Err("inflate: no progress".into());
        }
    }
}

/// The response head: status and the headers the client checks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    status: u16,
    accept: Option<String>,
    extensions: Option<String>,
    protocol: Option<String>,
}

fn parse_head(head: &str) -> Result<Head, String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP/1 status line: {status_line:?}"))?;
    let mut parsed = Head {
        status,
        ..Head::default()
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = Some(value.trim().to_owned());
        match name.trim().to_ascii_lowercase().as_str() {
            "sec-websocket-accept" => parsed.accept = value,
            "sec-websocket-extensions" => parsed.extensions = value,
            "sec-websocket-protocol" => parsed.protocol = value,
            _ => {}
        }
    }
    Ok(parsed)
}

/// Whether the 101's extensions accept permessage-deflate with no context
/// takeover on the server's side (the one this reader relies on).
fn deflate_accepted(extensions: Option<&str>) -> bool {
    extensions.is_some_and(|value| {
        value.split(',').any(|extension| {
            let mut params = extension.split(';').map(str::trim);
            params.next() == Some("permessage-deflate")
                && params.any(|p| p == "server_no_context_takeover")
        })
    })
}

/// The frame-reading state of a connection: bytes read and not yet
/// parsed, the message being assembled, pongs owed.
struct Frames {
    buf: BytesMut,
    inflater: Decompress,
    /// The message being assembled from fragments: (binary, compressed).
    partial: Option<(bool, bool)>,
    message: Vec<u8>,
    /// Pongs owed, sent by [`Socket::flush`].
    pongs: Vec<Vec<u8>>,
}

impl Frames {
    fn new(buf: BytesMut) -> Frames {
        Frames {
            buf,
            inflater: Decompress::new(false),
            partial: None,
            message: Vec::new(),
            pongs: Vec::new(),
        }
    }

    /// The next complete message or close frame buffered, if any; pings
    /// are queued as pongs owed.
    fn next(&mut self) -> Result<Option<Received>, String> {
        loop {
            let Some(h) = header(&self.buf)? else {
                return Ok(None);
            };
            if self.buf.len() < h.len + h.payload {
                self.buf.reserve(h.len + h.payload - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(h.len);
            let payload = self.buf.split_to(h.payload);
            match h.opcode {
                OP_PING => self.pongs.push(payload.to_vec()),
                OP_PONG => {}
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Received::Close(code)));
                }
                OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                    let (binary, compressed) = match (h.opcode, self.partial) {
                        (OP_CONTINUATION, Some(started)) => started,
                        (OP_CONTINUATION, None) => {
                            return Err("a continuation frame with no message".into())
                        }
                        (_, Some(_)) => return Err("a new message inside a fragmented one".into()),
                        (opcode, None) => (opcode == OP_BINARY, h.rsv1),
                    };
                    if self.message.len() + payload.len() > MAX_MESSAGE {
                        return Err(format!("a message of over {MAX_MESSAGE} bytes"));
                    }
                    self.message.extend_from_slice(&payload);
                    if !h.fin {
                        self.partial = Some((binary, compressed));
                        continue;
                    }
                    self.partial = None;
                    let payload = if compressed {
                        let inflated = inflate(&mut self.inflater, &self.message);
                        self.message.clear();
                        inflated?
                    } else {
                        std::mem::take(&mut self.message)
                    };
                    return Ok(Some(Received::Message { binary, payload }));
                }
                other => return Err(format!("a frame with opcode {other:#x}")),
            }
        }
    }
}

/// An open WebSocket read by hand.
pub struct Socket {
    stream: TcpStream,
    frames: Frames,
    /// Bytes read from the socket since the last [`Socket::take_read`].
    read: u64,
    mask: u32,
}

impl Socket {
    /// Bytes read from the socket since the last call (the upgrade
    /// response included in the first).
    pub fn take_read(&mut self) -> u64 {
        std::mem::take(&mut self.read)
    }

    /// The next complete message or close frame buffered, if any; pings
    /// are queued for [`Socket::flush`].
    pub fn buffered(&mut self) -> Result<Option<Received>, String> {
        self.frames.next()
    }

    /// Reads more from the socket; `Ok(false)` when it closed.
    pub async fn fill(&mut self) -> Result<bool, String> {
        let buf = &mut self.frames.buf;
        if buf.capacity() - buf.len() < READ_BUFFER / 4 {
            buf.reserve(READ_BUFFER);
        }
        let n = self
            .stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        self.read += n as u64;
        Ok(n > 0)
    }

    /// The next message or close frame, reading as needed; pongs owed are
    /// sent on the way.
    pub async fn recv(&mut self) -> Result<Received, String> {
        loop {
            if let Some(received) = self.buffered()? {
                return Ok(received);
            }
            self.flush().await?;
            if !self.fill().await? {
                return Err("closed".into());
            }
        }
    }

    /// Sends the pongs owed.
    pub async fn flush(&mut self) -> Result<(), String> {
        for payload in std::mem::take(&mut self.frames.pongs) {
            self.send(OP_PONG, &payload).await?;
        }
        Ok(())
    }

    /// Sends one uncompressed data message: text JSON, or binary MessagePack.
    pub async fn send_message(&mut self, binary: bool, payload: &[u8]) -> Result<(), String> {
        self.send(if binary { OP_BINARY } else { OP_TEXT }, payload)
            .await
    }

    /// Sends a close frame with code 1000 (the server's answer is not awaited).
    pub async fn close(&mut self) -> Result<(), String> {
        self.send(OP_CLOSE, &1000u16.to_be_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        // A cheap varying mask (a load tool needs no unpredictable one).
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let frame = client_frame(opcode, payload, self.mask.to_be_bytes());
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("send: {e}"))
    }
}

/// Opens a WebSocket to `target` from `source` at `path` (`/ws?token=...`),
/// speaking `format`, offering permessage-deflate when `deflate` is set (it
/// must then be accepted). A refusal is an error quoting the status.
pub async fn connect(
    source: SocketAddr,
    target: SocketAddr,
    path: &str,
    format: Format,
    deflate: bool,
) -> Result<Socket, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(source)
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if format == Format::MsgPack {
        request.push_str("Sec-WebSocket-Protocol: switchboard.msgpack\r\n");
    }
    if deflate {
        request.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut read = 0u64;
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too long".into());
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        read += n as u64;
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not text")?;
    let head = parse_head(head)?;
    if head.status != 101 {
        return Err(format!("refused: HTTP {}", head.status));
    }
    if head.accept.as_deref() != Some(ACCEPT) {
        return Err(format!("a 101 with Sec-WebSocket-Accept {:?}", head.accept));
    }
    let want = (format == Format::MsgPack).then_some("switchboard.msgpack");
    if head.protocol.as_deref() != want {
        return Err(format!(
            "asked for subprotocol {want:?}, the 101 answered {:?}",
            head.protocol
        ));
    }
    if deflate && !deflate_accepted(head.extensions.as_deref()) {
        return Err(format!(
            "the server did not accept permessage-deflate (Sec-WebSocket-Extensions: {:?})",
            head.extensions
        ));
    }
    buf.advance(end + 4);
    Ok(Socket {
        stream,
        frames: Frames::new(buf),
        read,
        mask: u32::from(source.port()) ^ 0x9E37_79B9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A server frame: unmasked, with `rsv1` as given.
    fn server_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 65535 => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    /// `text` compressed as a permessage-deflate sender does it: raw
    /// DEFLATE, sync flush, the `00 00 ff ff` tail stripped.
    fn deflate(text: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        compress
            .compress_vec(text, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// Parses `bytes` as a connection's frames, without a socket.
    fn parse_all(bytes: &[u8]) -> Result<(Vec<Received>, Vec<Vec<u8>>), String> {
        let mut frames = Frames::new(BytesMut::from(bytes));
        let mut out = Vec::new();
        while let Some(received) = frames.next()? {
            out.push(received);
        }
        Ok((out, frames.pongs))
    }

    #[test]
    fn plain_compressed_fragmented_and_control_frames() {
        let text = br#"{"type":"message","channel":"bench:all","data":{"k":1,"ts":2,"text":"hello hello hello hello hello"}}"#;
        let compressed = deflate(text);
        let (half, rest) = compressed.split_at(compressed.len() / 2);
        let mut bytes = Vec::new();
        bytes.extend(server_frame(true, false, OP_TEXT, b"{\"plain\":1}"));
        bytes.extend(server_frame(true, false, OP_PING, b"hb"));
        bytes.extend(server_frame(true, true, OP_TEXT, &compressed));
        // Fragmented: RSV1 on the first frame only, a ping in between.
        bytes.extend(server_frame(false, true, OP_BINARY, half));
        bytes.extend(server_frame(true, false, OP_PING, b""));
        bytes.extend(server_frame(true, false, OP_CONTINUATION, rest));
        bytes.extend(server_frame(true, false, OP_CLOSE, &1001u16.to_be_bytes()));
        // A frame cut short waits for more bytes.
        bytes.extend(&server_frame(true, false, OP_TEXT, b"later")[..3]);
        let (received, pongs) = parse_all(&bytes).unwrap();
        assert_eq!(
            received,
            vec![
                Received::Message {
                    binary: false,
                    payload: b"{\"plain\":1}".to_vec()
                },
                Received::Message {
                    binary: false,
                    payload: text.to_vec()
                },
                Received::Message {
                    binary: true,
                    payload: text.to_vec()
                },
                Received::Close(Some(1001)),
            ]
        );
        assert_eq!(pongs, vec![b"hb".to_vec(), Vec::new()]);
    }

    #[test]
    fn a_large_compressed_message_inflates_whole() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("line {i} of a long document\n").into_bytes())
            .collect();
        let frame = server_frame(true, true, OP_TEXT, &deflate(&text));
        let (received, _) = parse_all(&frame).unwrap();
        assert_eq!(
            received,
            vec![Received::Message {
                binary: false,
                payload: text
            }]
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(parse_all(&server_frame(true, false, 0x3, b"")).is_err());
        assert!(parse_all(&server_frame(true, false, OP_CONTINUATION, b"x")).is_err());
        let mut masked = server_frame(true, false, OP_TEXT, b"x");
        masked[1] |= 0x80;
        assert!(parse_all(&masked).is_err());
        assert!(parse_all(&server_frame(true, true, OP_TEXT, b"\xff\xff\xff")).is_err());
    }

    #[test]
    fn client_frames_are_masked() {
        let frame = client_frame(OP_TEXT, b"abc", [1, 2, 3, 4]);
        assert_eq!(
            frame,
            vec![0x81, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]
        );
        let long = client_frame(OP_BINARY, &[0u8; 300], [0; 4]);
        assert_eq!(&long[..4], &[0x82, 0x80 | 126, 1, 44]);
        assert_eq!(long.len(), 4 + 4 + 300);
    }

    #[test]
    fn the_101_is_read_for_accept_extension_and_protocol() {
        let head = parse_head(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\nSec-WebSocket-Protocol: switchboard.msgpack",
        )
        .unwrap();
        assert_eq!(head.status, 101);
        assert_eq!(head.accept.as_deref(), Some(ACCEPT));
        assert_eq!(head.protocol.as_deref(), Some("switchboard.msgpack"));
        assert!(deflate_accepted(head.extensions.as_deref()));
        assert!(!deflate_accepted(None));
        assert!(!deflate_accepted(Some("permessage-deflate")));
        assert!(!deflate_accepted(Some(
            "x-webkit-deflate-frame; server_no_context_takeover"
        )));
        assert!(parse_head("SSH-2.0").is_err());
    }
}
