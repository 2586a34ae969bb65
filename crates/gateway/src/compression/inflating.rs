//! The server side of a connection with permessage-deflate, below
//! tungstenite: [`Inflating`] reads the client's frames and hands
//! tungstenite each compressed message inflated, as one plain frame.
//!
//! Why a stream layer: tungstenite refuses any frame with RSV1 set and has
//! no hook for extensions. So the bytes are parsed on their way up. A frame
//! without RSV1 passes on untouched, byte for byte, as do control frames and
//! anything malformed (tungstenite must see it to refuse it: RSV1 on a
//! control or continuation frame, RSV2 or RSV3, an unmasked frame, a frame
//! out of place). A text or binary frame with RSV1 starts a compressed
//! message: its payload and its continuations' payloads are unmasked and
//! collected (control frames between them pass on at once), and when the
//! final frame has arrived the message is inflated (RFC 7692 §7.2.2, with
//! the thread's inflater: no context takeover, so no window per
//! connection) and handed on as one final frame of the message's opcode,
//! RSV1 clear, masked with a zero key.
//!
//! Bounds: the collected compressed bytes and the inflated bytes are each
//! limited to the session's `max_frame_bytes`; inflation stops as soon as
//! its output passes it. A failure is returned by `poll_read` as an
//! `io::Error` of kind `InvalidData` holding an [`InflateError`], after the
//! bytes that came before it, and every read after it fails the same way.
//!
//! A data frame without RSV1 inside a compressed message is a protocol
//! violation tungstenite cannot see (it has not seen the message start):
//! an empty non-final frame of the message's opcode goes before it, so
//! tungstenite refuses it as it would a new message inside a fragmented one.
//!
//! Memory: an idle connection holds the parse state inline (the current
//! frame's header and position, about 40 bytes); buffers exist only while
//! a compressed message is in flight or its inflated frame waits to be read,
//! and are freed after.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{inflate, InflateError};

/// The longest client frame header: 2 bytes, an 8-byte length, a 4-byte
/// mask key.
const MAX_HEADER: usize = 14;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV_ALL: u8 = 0x70;
const MASKED: u8 = 0x80;
const CONTINUATION: u8 = 0x0;

/// The server's side of an upgraded connection on which permessage-deflate
/// was negotiated: writes pass through, reads inflate compressed messages.
pub struct Inflating<S> {
    inner: S,
    /// Buffers, only while a message is collected or bytes wait to be read.
    busy: Option<Box<Busy>>,
    /// Payload bytes left in the current frame.
    remaining: u64,
    /// The current frame's header, as far as it has been read.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Where in its mask key the current collected frame's payload is.
    mask_at: u8,
    phase: Phase,
    message: Message,
    /// The error every read returns once a message was refused.
    failed: Option<InflateError>,
    max_bytes: u32,
    /// Compressed payload bytes and inflated bytes of the compressed
    /// messages handed on since [`Inflating::take_counts`].
    compressed_in: u32,
    inflated_out: u32,
}

/// Where the reader is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A frame header, passed on as it is read.
    Header,
    /// A frame header held back: the frame may belong to a compressed
    /// message.
    HeldHeader,
    /// A payload passed on.
    Pass,
    /// A compressed message's payload, collected.
    Collect,
    /// Everything passed on unread: tungstenite has been handed a frame it
    /// refuses, and reads no further.
    Opaque,
}

/// The fragmented message in flight, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    None,
    /// Uncompressed: tungstenite reads its continuations.
    Plain,
    /// Compressed, with its opcode (text or binary).
    Compressed(u8),
}

/// What the parser does with the frame a header's first byte starts.
enum Start {
    Pass,
    Hold,
    /// A data frame inside a compressed message (of this opcode).
    Intrusion(u8),
    /// A frame tungstenite refuses.
    Refused,
}

#[derive(Default)]
struct Busy {
    /// The compressed message's payloads so far, unmasked.
    compressed: Vec<u8>,
    /// Bytes the next reads return first (an inflated frame), from
    /// `ready_at`.
    ready: Vec<u8>,
    ready_at: usize,
    /// Bytes read from the stream that are not parsed yet (they followed a
    /// frame that `ready` had to be put before), from `backlog_at`.
    backlog: Vec<u8>,
    backlog_at: usize,
}

/// What one pass of the parser over newly read bytes left: the first
/// `kept` bytes go on; bytes from `used` on are parsed later.
struct Step {
    kept: usize,
    used: usize,
    outcome: Outcome,
}

enum Outcome {
    /// Every byte was parsed.
    Done,
    /// These bytes, from the index, go on next (before the unused bytes).
    Insert(Vec<u8>, usize),
    Fail(InflateError),
}

impl<S> Inflating<S> {
    /// Wraps the server side of an upgraded connection; compressed messages
    /// may be at most `max_bytes` long, compressed and inflated.
    pub fn new(inner: S, max_bytes: usize) -> Self {
        Inflating {
            inner,
            busy: None,
            remaining: 0,
            header: [0; MAX_HEADER],
            header_len: 0,
            mask_at: 0,
            phase: Phase::Header,
            message: Message::None,
            failed: None,
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            compressed_in: 0,
            inflated_out: 0,
        }
    }

    /// The compressed payload bytes received and the bytes they inflated
    /// to, over the compressed messages handed to tungstenite since the
    /// last call; both 0 when none was. Each message is at most
    /// `max_bytes`, so counts taken after every message never saturate.
    pub fn take_counts(&mut self) -> (u64, u64) {
        let counts = (self.compressed_in.into(), self.inflated_out.into());
        self.compressed_in = 0;
        self.inflated_out = 0;
        counts
    }

    /// Parses newly read bytes in place: bytes that go on are moved to the
    /// front, collected bytes are taken out.
    fn parse(&mut self, data: &mut [u8]) -> Step {
        let (mut read, mut kept) = (0, 0);
        while read < data.len() {
            let available = data.len() - read;
            match self.phase {
                Phase::Opaque => {
                    if kept != read {
                        data.copy_within(read.., kept);
                    }
                    kept += available;
                    read += available;
                }
                Phase::Pass => {
                    let n = take(&mut self.remaining, available);
                    if kept != read {
                        data.copy_within(read..read + n, kept);
                    }
                    kept += n;
                    read += n;
                    if self.remaining == 0 {
                        self.next_frame();
                    }
                }
                Phase::Collect => {
                    let n = take(&mut self.remaining, available);
                    self.collect(&data[read..read + n]);
                    read += n;
                    if self.remaining == 0 {
                        if let Some(outcome) = self.end_collected() {
                            return Step {
                                kept,
                                used: read,
                                outcome,
                            };
                        }
                    }
                }
                Phase::Header | Phase::HeldHeader => {
                    let byte = data[read];
                    if self.header_len == 0 {
                        match self.start(byte) {
                            Start::Pass => self.phase = Phase::Header,
                            Start::Hold => self.phase = Phase::HeldHeader,
                            Start::Refused => {
                                self.give_up();
                                continue;
                            }
                            Start::Intrusion(opcode) => {
                                self.give_up();
                                // An empty first fragment: tungstenite then
                                // refuses the data frame that follows.
                                let fragment = vec![opcode, MASKED, 0, 0, 0, 0];
                                return Step {
                                    kept,
                                    used: read,
                                    outcome: Outcome::Insert(fragment, 0),
                                };
                            }
                        }
                    }
                    read += 1;
                    self.header[usize::from(self.header_len)] = byte;
                    self.header_len += 1;
                    if self.phase == Phase::Header {
                        data[kept] = byte;
                        kept += 1;
                    }
                    if let Some(len) = self.header_complete() {
                        if let Some(outcome) = self.end_header(len) {
                            return Step {
                                kept,
                                used: read,
                                outcome,
                            };
                        }
                    }
                }
            }
        }
        Step {
            kept,
            used: read,
            outcome: Outcome::Done,
        }
    }

    /// Decides from a frame's first byte whether it passes or may be part
    /// of a compressed message, following the fragmented message in flight.
    fn start(&mut self, first: u8) -> Start {
        let opcode = first & 0x0f;
        let fin = first & FIN != 0;
        if opcode & 0x08 != 0 {
            // A control frame, even one tungstenite refuses (RSV1 set).
            return Start::Pass;
        }
        match (self.message, opcode, first & RSV_ALL) {
            (Message::None, 1 | 2, RSV1) => Start::Hold,
            (Message::None, 1 | 2, 0) => {
                if !fin {
                    self.message = Message::Plain;
                }
                Start::Pass
            }
            (Message::Plain, CONTINUATION, 0) => {
                if fin {
                    self.message = Message::None;
                }
                Start::Pass
            }
            (Message::Compressed(_), CONTINUATION, 0) => Start::Hold,
            (Message::Compressed(opcode), 1 | 2, 0) => Start::Intrusion(opcode),
            // Reserved bits, an unknown opcode, or a frame out of place.
            _ => Start::Refused,
        }
    }

    /// The payload length once the whole header has been read.
    fn header_complete(&self) -> Option<u64> {
        let have = usize::from(self.header_len);
        if have < 2 {
            return None;
        }
        let second = self.header[1];
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & MASKED != 0 { 4 } else { 0 };
        if have < 2 + extended + mask {
            return None;
        }
        let len = match extended {
            0 => u64::from(second & 0x7f),
            _ => self.header[2..2 + extended]
                .iter()
                .fold(0, |len, &byte| len << 8 | u64::from(byte)),
        };
        Some(len)
    }

    /// A header has been read: its payload is passed on or collected.
    fn end_header(&mut self, len: u64) -> Option<Outcome> {
        self.remaining = len;
        if self.phase == Phase::Header {
            self.phase = Phase::Pass;
            if len == 0 {
                self.next_frame();
            }
            return None;
        }
        if self.header[1] & MASKED == 0 {
            // Unmasked: the held header goes on, for tungstenite to refuse.
            let header = self.header[..usize::from(self.header_len)].to_vec();
            self.give_up();
            return Some(Outcome::Insert(header, 0));
        }
        let collected = self.busy.as_ref().map_or(0, |busy| busy.compressed.len());
        if collected as u64 + len > u64::from(self.max_bytes) {
            return Some(Outcome::Fail(InflateError::TooBig));
        }
        if self.message == Message::None {
            self.message = Message::Compressed(self.header[0] & 0x0f);
        }
        // The buffer grows as the payload arrives, not to what the header
        // claims: a stalled client holds no more than it sent.
        self.busy.get_or_insert_default();
        self.phase = Phase::Collect;
        self.mask_at = 0;
        if len == 0 {
            return self.end_collected();
        }
        None
    }

    /// Unmasks and keeps a piece of a compressed message's payload.
    fn collect(&mut self, piece: &[u8]) {
        let at = usize::from(self.header_len) - 4;
        let key: [u8; 4] = [
            self.header[at],
            self.header[at + 1],
            self.header[at + 2],
            self.header[at + 3],
        ];
        let start = usize::from(self.mask_at);
        let busy = self.busy.get_or_insert_default();
        busy.compressed.extend(
            piece
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ key[(start + i) & 3]),
        );
        self.mask_at = ((start + piece.len()) & 3) as u8;
    }

    /// A collected frame's payload is complete; after the message's final
    /// frame, its inflated frame goes on next.
    fn end_collected(&mut self) -> Option<Outcome> {
        let Message::Compressed(opcode) = self.message else {
            // Frames are collected only within a compressed message.
            self.give_up();
            return None;
        };
        let fin = self.header[0] & FIN != 0;
        self.next_frame();
        if !fin {
            return None;
        }
        self.message = Message::None;
        let mut compressed = self
            .busy
            .as_mut()
            .map(|busy| std::mem::take(&mut busy.compressed))
            .unwrap_or_default();
        let received = compressed.len();
        let max = self.max_bytes as usize;
        match inflate(&mut compressed, max, MAX_HEADER) {
            Ok(mut frame) => {
                let len = frame.len() - MAX_HEADER;
                self.compressed_in = self.compressed_in.saturating_add(received as u32);
                self.inflated_out = self.inflated_out.saturating_add(len as u32);
                let at = write_header(&mut frame, FIN | opcode, len);
                Some(Outcome::Insert(frame, at))
            }
            Err(error) => Some(Outcome::Fail(error)),
        }
    }

    fn next_frame(&mut self) {
        self.phase = Phase::Header;
        self.header_len = 0;
    }

    /// Stops parsing: what follows goes on untouched, for tungstenite to
    /// refuse. A compressed message in flight is dropped.
    fn give_up(&mut self) {
        self.phase = Phase::Opaque;
        self.message = Message::None;
        if let Some(busy) = self.busy.as_mut() {
            busy.compressed = Vec::new();
        }
    }

    /// Frees the buffers once nothing is in them.
    fn tidy(&mut self) {
        if let Some(busy) = &self.busy {
            if !matches!(self.message, Message::Compressed(_))
                && busy.ready_at >= busy.ready.len()
                && busy.backlog_at >= busy.backlog.len()
            {
                self.busy = None;
            }
        }
    }

    fn waiting(&self) -> bool {
        self.busy.as_ref().is_some_and(|busy| {
            busy.ready_at < busy.ready.len() || busy.backlog_at < busy.backlog.len()
        })
    }
}

/// Takes up to `available` bytes off `remaining`.
fn take(remaining: &mut u64, available: usize) -> usize {
    let n = usize::try_from(*remaining).map_or(available, |left| left.min(available));
    *remaining -= n as u64;
    n
}

/// Writes a final, masked (zero key) frame header for `len` payload bytes
/// into the `MAX_HEADER` bytes before the payload, ending where it starts;
/// returns where the header starts.
fn write_header(frame: &mut [u8], first: u8, len: usize) -> usize {
    let mut header = [0u8; MAX_HEADER];
    header[0] = first;
    let mut n = 2;
    if len < 126 {
        header[1] = MASKED | len as u8;
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = MASKED | 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        n = 4;
    } else {
        header[1] = MASKED | 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        n = 10;
    }
    // The zero mask key leaves the payload as it is.
    n += 4;
    let at = MAX_HEADER - n;
    frame[at..MAX_HEADER].copy_from_slice(&header[..n]);
    at
}

impl<S> AsyncRead for Inflating<S>
where
    S: AsyncRead + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.failed {
            return Poll::Ready(Err(error.into()));
        }
        let start = buf.filled().len();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // An inflated frame goes on before anything read after it.
            if let Some(busy) = this.busy.as_deref_mut() {
                if busy.ready_at < busy.ready.len() {
                    let n = buf.remaining().min(busy.ready.len() - busy.ready_at);
                    buf.put_slice(&busy.ready[busy.ready_at..busy.ready_at + n]);
                    busy.ready_at += n;
                    if busy.ready_at == busy.ready.len() {
                        busy.ready = Vec::new();
                        busy.ready_at = 0;
                        this.tidy();
                    }
                    continue;
                }
            }
            // New bytes: the backlog's, else the stream's.
            let before = buf.filled().len();
            let mut from_backlog = false;
            if let Some(busy) = this.busy.as_deref_mut() {
                if busy.backlog_at < busy.backlog.len() {
                    let n = buf.remaining().min(busy.backlog.len() - busy.backlog_at);
                    buf.put_slice(&busy.backlog[busy.backlog_at..busy.backlog_at + n]);
                    busy.backlog_at += n;
                    from_backlog = true;
                }
            }
            if !from_backlog {
                let produced = buf.filled().len() > start;
                match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Pending if produced => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    // The bytes before an error go on; the error comes again.
                    Poll::Ready(Err(_)) if produced => return Poll::Ready(Ok(())),
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    // The end of the stream.
                    Poll::Ready(Ok(())) if buf.filled().len() == before => {
                        return Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => {}
                }
            }
            let end = buf.filled().len();
            let step = this.parse(&mut buf.filled_mut()[before..]);
            let unused = before + step.used..end;
            if !unused.is_empty() {
                let busy = this.busy.get_or_insert_default();
                if from_backlog {
                    busy.backlog_at -= unused.len();
                } else {
                    busy.backlog = buf.filled()[unused].to_vec();
                    busy.backlog_at = 0;
                }
            }
            buf.set_filled(before + step.kept);
            match step.outcome {
                Outcome::Done => {}
                Outcome::Insert(bytes, at) => {
                    let busy = this.busy.get_or_insert_default();
                    busy.ready = bytes;
                    busy.ready_at = at;
                }
                Outcome::Fail(error) => {
                    this.failed = Some(error);
                    this.busy = None;
                    if buf.filled().len() > start {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(error.into()));
                }
            }
            this.tidy();
            if buf.filled().len() > start && !this.waiting() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S> AsyncWrite for Inflating<S>
where
    S: AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    use super::*;
    use crate::compression::tests::client_compress;
    use crate::compression::INFLATER;
    use crate::session::socket::Socket;

    const LIMIT: usize = 64 * 1024;
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const PING: u8 = 0x9;

    type Server = Socket<Inflating<DuplexStream>>;

    /// Our socket over `Inflating` as the server; the client's end of an
    /// in-memory pipe of `buffer` bytes, on which the tests write frames by
    /// hand. What the server writes (pongs) is read and dropped.
    fn pair(buffer: usize) -> (Server, DuplexStream) {
        let (server, client) = tokio::io::duplex(buffer);
        let config = WebSocketConfig::default()
            .read_buffer_size(128)
            .max_frame_size(Some(LIMIT))
            .max_message_size(Some(LIMIT));
        (
            Socket::new(Inflating::new(server, LIMIT), Role::Server, config),
            client,
        )
    }

    /// Writes `bytes` to the client's end in a task of its own, reading
    /// (and dropping) what the server sends, so a small pipe never stalls.
    fn send(client: DuplexStream, bytes: Vec<u8>) {
        let (mut reader, mut writer) = tokio::io::split(client);
        tokio::spawn(async move {
            let mut sink = vec![0; 1024];
            while matches!(reader.read(&mut sink).await, Ok(1..)) {}
        });
        tokio::spawn(async move {
            writer.write_all(&bytes).await.unwrap();
            // Hold the pipe open: the end of the stream is no test's subject.
            std::future::pending::<()>().await;
        });
    }

    /// A client frame: `first` is FIN, RSV and opcode; the payload masked.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = header(first, payload.len(), true);
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = header(first, payload.len(), false);
        out.extend_from_slice(payload);
        out
    }

    fn header(first: u8, len: usize, masked: bool) -> Vec<u8> {
        let mask = if masked { MASKED } else { 0 };
        let mut out = vec![first];
        if len < 126 {
            out.push(mask | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            out.push(mask | 126);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(mask | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out
    }

    fn deflated(payload: &[u8]) -> Vec<u8> {
        client_compress(payload, 6)
    }

    fn json(items: usize) -> String {
        let items: Vec<String> = (0..items)
            .map(|i| format!(r#"{{"id":{i},"name":"item-{i}","ok":true}}"#))
            .collect();
        format!(
            r#"{{"type":"publish","channel":"chat:lobby","data":[{}]}}"#,
            items.join(",")
        )
    }

    /// A stuck read fails the test instead of hanging it.
    async fn within<F: Future>(test: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), test)
            .await
            .expect("the exchange stalled")
    }

    async fn next(server: &mut Server) -> Result<Message, WsError> {
        within(server.next()).await.expect("the messages ended")
    }

    fn protocol_error(result: Result<Message, WsError>) -> ProtocolError {
        match result {
            Err(WsError::Protocol(error)) => error,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    fn inflate_error(result: Result<Message, WsError>) -> InflateError {
        match result {
            Err(WsError::Io(error)) => {
                assert_eq!(error.kind(), io::ErrorKind::InvalidData);
                *error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<InflateError>())
                    .expect("an InflateError inside")
            }
            other => panic!("expected an inflate error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn compressed_text_and_binary() {
        let (mut server, client) = pair(1 << 20);
        let text = json(20);
        let binary: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8).collect();
        // All in one write: the frames after each compressed one wait in
        // the backlog while its inflated frame is read.
        let mut bytes = frame(FIN | RSV1 | TEXT, &deflated(text.as_bytes()));
        bytes.extend(frame(FIN | RSV1 | BINARY, &deflated(&binary)));
        bytes.extend(frame(FIN | TEXT, b"plain"));
        bytes.extend(frame(FIN | RSV1 | TEXT, &deflated(b"")));
        send(client, bytes);
        assert_eq!(
            next(&mut server).await.unwrap(),
            Message::text(text.clone())
        );
        assert_eq!(
            next(&mut server).await.unwrap(),
            Message::binary(binary.clone())
        );
        assert_eq!(next(&mut server).await.unwrap(), Message::text("plain"));
        assert_eq!(next(&mut server).await.unwrap(), Message::text(""));
        let compressed =
            deflated(text.as_bytes()).len() + deflated(&binary).len() + deflated(b"").len();
        assert_eq!(
            server.get_mut().take_counts(),
            (compressed as u64, (text.len() + binary.len()) as u64)
        );
        assert_eq!(server.get_mut().take_counts(), (0, 0));
        assert!(
            server.get_mut().busy.is_none(),
            "no buffer kept between messages"
        );
    }

    #[tokio::test]
    async fn a_fragmented_compressed_message_with_a_ping_inside() {
        let (mut server, client) = pair(1 << 20);
        let text = json(50);
        let compressed = deflated(text.as_bytes());
        let third = compressed.len() / 3;
        let mut bytes = frame(RSV1 | TEXT, &compressed[..third]);
        bytes.extend(frame(FIN | PING, b"p"));
        bytes.extend(frame(CONTINUATION, &compressed[third..2 * third]));
        bytes.extend(frame(CONTINUATION, b""));
        bytes.extend(frame(FIN | CONTINUATION, &compressed[2 * third..]));
        send(client, bytes);
        assert_eq!(next(&mut server).await.unwrap(), Message::Ping("p".into()));
        assert_eq!(
            next(&mut server).await.unwrap(),
            Message::text(text.clone())
        );
        assert_eq!(
            server.get_mut().take_counts(),
            (compressed.len() as u64, text.len() as u64)
        );
    }

    #[tokio::test]
    async fn uncompressed_messages_are_unchanged() {
        let (mut server, client) = pair(1 << 20);
        let mut bytes = frame(FIN | TEXT, b"one");
        bytes.extend(frame(BINARY, b"tw"));
        bytes.extend(frame(FIN | PING, b""));
        bytes.extend(frame(FIN | CONTINUATION, b"o"));
        bytes.extend(frame(FIN | TEXT, json(100).as_bytes()));
        send(client, bytes);
        assert_eq!(next(&mut server).await.unwrap(), Message::text("one"));
        assert_eq!(next(&mut server).await.unwrap(), Message::Ping("".into()));
        assert_eq!(
            next(&mut server).await.unwrap(),
            Message::binary(&b"two"[..])
        );
        assert_eq!(next(&mut server).await.unwrap(), Message::text(json(100)));
        assert_eq!(server.get_mut().take_counts(), (0, 0));
    }

    /// Frames without RSV1, and anything tungstenite must refuse, reach it
    /// byte for byte: read straight from `Inflating` through a 3-byte pipe.
    #[tokio::test]
    async fn frames_without_rsv1_pass_byte_for_byte() {
        let plain = [
            frame(FIN | TEXT, b"one"),
            frame(TEXT, json(10).as_bytes()),
            frame(FIN | PING, b"ping"),
            frame(CONTINUATION, b""),
            frame(FIN | CONTINUATION, b"end"),
            frame(FIN | 0xA, b"pong"),
            frame(FIN | BINARY, &[0; 70_000]),
        ]
        .concat();
        let refused = [
            frame(FIN | RSV1 | PING, b"compressed ping"),
            frame(FIN | 0x20 | TEXT, b"rsv2"),
            // Held back as a possible compressed message, then handed on.
            unmasked(FIN | RSV1 | TEXT, &deflated(b"unmasked")),
            frame(FIN | RSV1 | CONTINUATION, b"stray"),
            frame(FIN | 0x8, &[0x03, 0xe8]),
        ];
        let mut streams = vec![plain.clone()];
        for bad in &refused {
            streams.push([&plain[..], bad, &refused.concat(), &plain].concat());
            streams.push([bad.as_slice(), &plain].concat());
        }
        for (i, bytes) in streams.into_iter().enumerate() {
            let (server, mut client) = tokio::io::duplex(3);
            let sent = bytes.clone();
            tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
            });
            let mut got = Vec::new();
            within(Inflating::new(server, LIMIT).read_to_end(&mut got))
                .await
                .unwrap();
            assert!(got == bytes, "stream {i} changed");
        }
    }

    #[tokio::test]
    async fn misplaced_rsv1_and_other_violations_are_refused_by_tungstenite() {
        let compressed = deflated(json(10).as_bytes());
        type Expected = fn(&ProtocolError) -> bool;
        let cases: Vec<(Vec<Vec<u8>>, Expected)> = vec![
            // RSV1 on a continuation of an uncompressed message.
            (
                vec![frame(TEXT, b"a"), frame(FIN | RSV1 | CONTINUATION, b"b")],
                |e| matches!(e, ProtocolError::NonZeroReservedBits),
            ),
            // RSV1 on a continuation of a compressed message.
            (
                vec![
                    frame(RSV1 | TEXT, &compressed[..5]),
                    frame(FIN | RSV1 | CONTINUATION, &compressed[5..]),
                ],
                |e| matches!(e, ProtocolError::NonZeroReservedBits),
            ),
            // RSV1 on a control frame.
            (vec![frame(FIN | RSV1 | PING, b"p")], |e| {
                matches!(e, ProtocolError::NonZeroReservedBits)
            }),
            // RSV2 and RSV3.
            (vec![frame(FIN | 0x20 | TEXT, b"x")], |e| {
                matches!(e, ProtocolError::NonZeroReservedBits)
            }),
            (vec![frame(FIN | RSV1 | 0x10 | TEXT, &compressed)], |e| {
                matches!(e, ProtocolError::NonZeroReservedBits)
            }),
            // An unmasked compressed frame, first or continuing.
            (vec![unmasked(FIN | RSV1 | TEXT, &compressed)], |e| {
                matches!(e, ProtocolError::UnmaskedFrameFromClient)
            }),
            (
                vec![
                    frame(RSV1 | BINARY, &compressed[..5]),
                    unmasked(FIN | CONTINUATION, &compressed[5..]),
                ],
                |e| matches!(e, ProtocolError::UnmaskedFrameFromClient),
            ),
            // A new message inside a compressed one, with or without RSV1.
            (
                vec![
                    frame(RSV1 | TEXT, &compressed[..5]),
                    frame(FIN | TEXT, b"x"),
                ],
                |e| matches!(e, ProtocolError::ExpectedFragment(_)),
            ),
            (
                vec![
                    frame(RSV1 | TEXT, &compressed[..5]),
                    frame(FIN | RSV1 | BINARY, &compressed),
                ],
                |e| matches!(e, ProtocolError::NonZeroReservedBits),
            ),
            // A continuation with no message.
            (vec![frame(FIN | CONTINUATION, b"x")], |e| {
                matches!(e, ProtocolError::UnexpectedContinueFrame)
            }),
            // A compressed message with a reserved opcode.
            (vec![frame(FIN | RSV1 | 0x3, &compressed)], |e| {
                matches!(e, ProtocolError::InvalidOpcode(3))
            }),
        ];
        for (i, (frames, expected)) in cases.into_iter().enumerate() {
            let (mut server, client) = pair(1 << 20);
            send(client, frames.concat());
            let error = protocol_error(next(&mut server).await);
            assert!(expected(&error), "case {i}: {error:?}");
            assert!(within(server.next()).await.is_none(), "case {i}");
        }
    }

    /// 10 MB of zeros compressed to about 10 KB, against a 64 KiB limit:
    /// refused once the inflated bytes pass the limit, and no further.
    #[tokio::test]
    async fn an_inflation_bomb_is_too_big() {
        let (mut server, client) = pair(1 << 20);
        let bomb = client_compress(&vec![0; 10 << 20], 9);
        assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
        let mut bytes = frame(FIN | TEXT, b"before");
        bytes.extend(frame(FIN | RSV1 | BINARY, &bomb));
        bytes.extend(frame(FIN | TEXT, b"after"));
        send(client, bytes);
        assert_eq!(next(&mut server).await.unwrap(), Message::text("before"));
        assert_eq!(inflate_error(next(&mut server).await), InflateError::TooBig);
        // This test's one thread did the inflating.
        let inflated = INFLATER.with(|inflater| inflater.borrow().total_out());
        assert!(inflated <= LIMIT as u64 + 1, "{inflated} bytes inflated");
        assert!(within(server.next()).await.is_none());
        // The read side stays failed.
        let mut rest = [0; 16];
        let error = server.get_mut().read(&mut rest).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(server.get_mut().busy.is_none());
    }

    /// A compressed message whose compressed bytes pass the limit is
    /// refused at the header that passes it, before its payload arrives.
    #[tokio::test]
    async fn compressed_bytes_over_the_limit_are_too_big() {
        let (mut server, client) = pair(1 << 20);
        let mut bytes = frame(RSV1 | TEXT, &[0; 40_000]);
        let mut second = header(FIN | CONTINUATION, 30_000, true);
        second.extend_from_slice(&[0; 4]);
        bytes.extend(second);
        send(client, bytes);
        assert_eq!(inflate_error(next(&mut server).await), InflateError::TooBig);
    }

    #[tokio::test]
    async fn corrupt_data_does_not_inflate() {
        let (mut server, client) = pair(1 << 20);
        let mut bytes = frame(FIN | RSV1 | TEXT, &deflated(b"fine"));
        bytes.extend(frame(FIN | RSV1 | TEXT, &[0xff, 0xff, 0xff, 0xff]));
        send(client, bytes);
        assert_eq!(next(&mut server).await.unwrap(), Message::text("fine"));
        assert_eq!(
            inflate_error(next(&mut server).await),
            InflateError::Corrupt
        );
        assert!(within(server.next()).await.is_none());
    }

    /// A 3-byte pipe: every read is partial, headers (held or passed)
    /// arrive in pieces, and every byte waits for the task's waker.
    #[tokio::test]
    async fn a_tiny_pipe_splits_every_frame() {
        let (mut server, client) = pair(3);
        let big = json(600);
        assert!(big.len() > 16_000);
        let compressed = deflated(big.as_bytes());
        let half = compressed.len() / 2;
        let mut bytes = frame(FIN | RSV1 | TEXT, &compressed);
        bytes.extend(frame(FIN | PING, b"p"));
        bytes.extend(frame(RSV1 | BINARY, &compressed[..half]));
        bytes.extend(frame(FIN | PING, b"q"));
        bytes.extend(frame(FIN | CONTINUATION, &compressed[half..]));
        bytes.extend(frame(FIN | TEXT, big.as_bytes()));
        bytes.extend(frame(FIN | RSV1 | TEXT, &deflated(b"last")));
        send(client, bytes);
        within(async {
            assert_eq!(next(&mut server).await.unwrap(), Message::text(big.clone()));
            assert_eq!(next(&mut server).await.unwrap(), Message::Ping("p".into()));
            assert_eq!(next(&mut server).await.unwrap(), Message::Ping("q".into()));
            assert_eq!(
                next(&mut server).await.unwrap(),
                Message::binary(big.clone().into_bytes())
            );
            assert_eq!(next(&mut server).await.unwrap(), Message::text(big.clone()));
            assert_eq!(next(&mut server).await.unwrap(), Message::text("last"));
        })
        .await;
    }

    /// The parse state an idle connection carries, inline: the product
    /// counts bytes per connection.
    #[test]
    fn the_idle_state_is_small() {
        type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;
        let added = std::mem::size_of::<Inflating<Upgraded>>() - std::mem::size_of::<Upgraded>();
        println!("Inflating adds {added} bytes");
        assert!(added <= 48, "{added} bytes");
    }
}
