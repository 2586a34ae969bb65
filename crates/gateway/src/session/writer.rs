//! How frames reach a session's socket: the replies and the frames the hub
//! queued are written straight to the socket as vectored writes of their
//! shared payloads, a burst coalesced into one write.
//!
//! Adaptive write coalescing: a frame waits only when waiting batches. A
//! connection starts holding frames once a write finds it behind (at least
//! [`START_HOLDING`] frames queued when it writes), and keeps holding while
//! each held window gathers at least [`KEEP_HOLDING`]: frames then arrive
//! faster than the window, so it holds each new frame until
//! `session.write_coalesce` after its last write (or until its queue
//! reaches its flush size) and writes everything queued in one vectored
//! write. Otherwise a frame is written at once: a quiet connection, or one
//! receiving a frame per window or less (100 msg/s at the 10 ms default),
//! never waits, and a backlog goes out at once in one write (waiting would
//! delay frames that are already late). `0s` turns coalescing off.
//! A text frame's header is written here (RFC 6455 §5.2) next to its
//! payload, so a payload is never copied and no write buffer stays at a
//! burst's size; a client that asked for batched frames gets a burst as one
//! frame, one message per line.
//!
//! A write that cannot complete within the pong timeout closes the session
//! as a slow consumer (1013). The write state (`out`, `out_done`, the write
//! timer) lives in the session's state, so the futures here stay pointers.
//! These are methods of the session; the main loop in `mod.rs` calls them.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use switchboard_protocol::close;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::clock::Moment;
use super::wire::Wire;
use super::{ws_error_reason, End, Session};
use crate::hub::{Delivery, Outbound, StreamCommand, SLOW_CONSUMER_REASON};
use crate::metrics::sessions::Transport;

/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// Frames a write must find queued (the connection fell behind) for the
/// frames after it to wait for the coalescing window: frames arrive faster
/// than they are written one at a time.
const START_HOLDING: usize = 3;
/// Frames a held window must gather for the connection to keep holding:
/// one frame per window means waiting saved nothing.
const KEEP_HOLDING: usize = 2;

impl<W: Wire> Session<W> {
    /// When held frames go out.
    pub(super) fn flush_at(&self) -> Moment {
        self.last_write + self.node.config.session.write_coalesce
    }

    /// A frame for the client. Adaptive write coalescing: a connection
    /// whose last write of queued frames showed frames arriving faster than
    /// the window (`batching`) holds the frame if it wrote less than
    /// `write_coalesce` ago, and writes everything queued by the end of the
    /// window (or once the queue reaches its flush size) in one vectored
    /// write. Any other frame is written at once, with whatever is queued
    /// behind it: a quiet connection, or one that gets a frame per window,
    /// never waits. No timer exists unless a flush is pending, so an idle
    /// connection costs nothing more. Returns whether to write now (the
    /// frame is in `out` either way).
    pub(super) fn stage(&mut self, first: Arc<Delivery>) -> bool {
        // Sized to the backlog: a single frame goes inline, a batch gets
        // its list at once.
        let backlog = self.handle.queued_items().min(WRITE_BATCH - 1);
        self.out.reserve(1 + backlog);
        if self.subscriptions.admit(&first) {
            let frame = self.ws.delivery(&first, &self.node);
            self.out.push(frame);
        }
        if !self.batching || Moment::now() >= self.flush_at() {
            return true;
        }
        self.node.metrics.coalesce_wait();
        self.handle.set_holding(true);
        false
    }

    /// Writes `first` (if any), the frames held back and whatever else is
    /// queued (up to [`WRITE_BATCH`] frames) in one vectored write, then
    /// flushes once. The immediate write and the end of a coalescing window
    /// share this one future, so the session task stays its size.
    pub(super) async fn write_batch(&mut self) -> Result<(), End> {
        let held = self.handle.holding();
        self.handle.set_holding(false);
        let (close_after, command) = self.collect_more();
        // Counted before batched frames are joined into one.
        let enough = if held { KEEP_HOLDING } else { START_HOLDING };
        self.batching = self.out.len() >= enough;
        self.write_out().await?;
        if self.handle.is_slow() {
            return Err(End::Close(
                close::SLOW_CONSUMER,
                SLOW_CONSUMER_REASON.into(),
            ));
        }
        if let Some(command) = command {
            Box::pin(self.on_command(command)).await?;
        }
        close_after.map_or(Ok(()), Err)
    }

    /// Moves what is queued into `out`, up to [`WRITE_BATCH`] frames in
    /// all; returns a close request met on the way, or a stream's command
    /// (run once the frames before it are written).
    fn collect_more(&mut self) -> (Option<End>, Option<Arc<StreamCommand>>) {
        let room = WRITE_BATCH.saturating_sub(self.out.len());
        self.out.reserve(self.handle.queued_items().min(room));
        let (mut close, mut drain, mut command) = (None, None, None);
        let (out, subscriptions, ws, node) = (
            &mut self.out,
            &mut self.subscriptions,
            &mut self.ws,
            &self.node,
        );
        self.handle.take_batch(room, |item| match item {
            Outbound::Frame(delivery) => {
                if subscriptions.admit(&delivery) {
                    out.push(ws.delivery(&delivery, node));
                }
                true
            }
            Outbound::Command(taken) => {
                command = Some(taken);
                false
            }
            Outbound::Close(code, reason) => {
                close = Some(End::Close(code, String::from(&*reason).into()));
                false
            }
            Outbound::Drain(delay) => {
                drain = Some(delay);
                true
            }
        });
        if let Some(delay) = drain {
            self.drain(delay);
        }
        (close, command)
    }

    /// Writes `out` as text frames straight to the socket: each frame's
    /// header and its shared payload go out in one vectored write, so a
    /// payload is never copied and no write buffer stays at a burst's
    /// high-water mark (tungstenite keeps its buffer's capacity).
    /// Whatever tungstenite still holds (a pong, say) is flushed first, so
    /// frames never interleave. The write state lives in the session, so
    /// this future is a pointer.
    pub(super) async fn write_out(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.batch && self.out.len() > 1 {
            self.join_out();
        }
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// For a client that asked for batched frames: the frames in `out`
    /// become one text frame, one message per line (compact JSON has no raw
    /// newline). This copies the payloads once per connection, which costs
    /// far less than the frame headers and parsing it saves the client.
    fn join_out(&mut self) {
        let frames = self.out.as_slice();
        let len = frames.iter().map(|f| f.len() + 1).sum::<usize>() - 1;
        let mut joined = Vec::with_capacity(len);
        for (i, frame) in frames.iter().enumerate() {
            if i > 0 {
                joined.push(b'\n');
            }
            joined.extend_from_slice(frame);
        }
        self.out.clear();
        self.out.push(Bytes::from(joined));
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        let result = match self.poll_out(cx) {
            Poll::Ready(result) => result.map_err(|error| End::Gone(ws_error_reason(&error))),
            Poll::Pending => {
                // A client that cannot take a write within the pong timeout
                // is as dead as one that does not answer pings.
                let limit = self.node.config.session.pong_timeout;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(timer.as_mut().poll(cx));
                // A frame cut short: no close frame can follow it.
                self.torn = self.out_done > 0;
                Err(End::Close(
                    close::SLOW_CONSUMER,
                    "slow consumer: write timed out".into(),
                ))
            }
        };
        self.write_timer = None;
        self.last_write = Moment::now();
        if result.is_ok() {
            self.node
                .metrics
                .sent(W::TRANSPORT, self.out.len(), self.out_done);
            if W::TRANSPORT == Transport::WebSocket {
                self.count_wire_bytes();
            }
        }
        // A batch's list goes back with the frames: nothing stays resident.
        self.out.clear();
        self.out_done = 0;
        Poll::Ready(result)
    }

    /// Counts a WebSocket write's bytes by format and compression: a whole
    /// frame is compressed when its header has RSV1.
    fn count_wire_bytes(&self) {
        let mode = self.ws.mode();
        let (mut plain, mut compressed) = (self.out_done, 0);
        if mode.deflate {
            compressed = self
                .out
                .as_slice()
                .iter()
                .filter(|frame| frame.first().is_some_and(|b| b & super::formats::RSV1 != 0))
                .map(|frame| frame.len())
                .sum();
            plain -= compressed.min(plain);
        }
        self.node.metrics.wire_sent(mode.format, plain, compressed);
    }

    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.out_done == 0 {
            ready!(self.ws.poll_flush(cx))?;
        }
        let header = if self.ws.mode().whole_frames() {
            super::wire::no_header
        } else {
            W::header
        };
        let io = self.ws.io();
        let mut writes = 0;
        let written = poll_write_frames(
            io,
            cx,
            header,
            self.out.as_slice(),
            &mut self.out_done,
            &mut writes,
        );
        // Counted as they happen: a write that completes later still counts
        // the system calls made before it returned pending.
        self.node.metrics.frames_written(0, writes);
        ready!(written)?;
        self.node.metrics.frames_written(self.out.len(), 0);
        ready!(Pin::new(io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    pub(super) async fn send_text(&mut self, text: String) -> Result<(), End> {
        let frame = self.ws.frame(text, &self.node);
        self.out.push(frame);
        self.write_out().await
    }

    /// Pings the client (a stream writes its heartbeat instead); a ping the
    /// socket cannot take within the pong timeout ends the session like a
    /// missing pong.
    pub(super) async fn send_ping(&mut self) -> Result<(), End> {
        if let Some(heartbeat) = W::heartbeat() {
            self.out.push(heartbeat);
            return self.write_out().await;
        }
        let limit = self.node.config.session.pong_timeout;
        let ping = std::pin::pin!(self.ws.ping());
        bounded_write(limit, ping).await
    }
}

/// A client that cannot take a write within the pong timeout is as dead as
/// one that does not answer pings. The timer is made (boxed) only when the
/// write does not complete at once, so the usual write carries none in the
/// session's state.
async fn bounded_write<F>(limit: Duration, mut write: Pin<&mut F>) -> Result<(), End>
where
    F: Future<Output = Result<(), WsError>> + ?Sized,
{
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let result = poll_fn(|cx| {
        if let Poll::Ready(result) = write.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await;
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(error)) => Err(End::Gone(ws_error_reason(&error))),
        None => Err(End::Close(
            close::SLOW_CONSUMER,
            "slow consumer: write timed out".into(),
        )),
    }
}

/// The frames being written: shared payloads, never copied.
///
/// A single frame (a reply, or one fanned-out message: the usual write)
/// sits inline, so writing it allocates nothing and an idle session holds
/// no block for it; only a batch (a backlog, a replay) uses a list, and
/// that list goes back after its write. Inline costs the session's box 8
/// bytes more than a bare `Vec` (32 against 24), where keeping a one-slot
/// `Vec` between writes cost every idle connection a 48-byte heap block.
#[derive(Debug)]
pub(super) enum Out {
    One(Bytes),
    /// Empty, and holding no buffer, when nothing is staged.
    Many(Vec<Bytes>),
}

impl Default for Out {
    fn default() -> Out {
        Out::Many(Vec::new())
    }
}

impl Out {
    pub(super) fn as_slice(&self) -> &[Bytes] {
        match self {
            Out::One(frame) => std::slice::from_ref(frame),
            Out::Many(frames) => frames,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Room for `additional` more frames: none is made for a lone frame
    /// (it goes inline), a batch's list is made once at its size.
    pub(super) fn reserve(&mut self, additional: usize) {
        match self {
            Out::Many(frames) if frames.is_empty() && additional <= 1 => {}
            Out::Many(frames) => frames.reserve_exact(additional),
            Out::One(_) if additional == 0 => {}
            Out::One(_) => {
                let mut frames = Vec::with_capacity(1 + additional);
                if let Out::One(first) = std::mem::take(self) {
                    frames.push(first);
                }
                *self = Out::Many(frames);
            }
        }
    }

    pub(super) fn push(&mut self, frame: Bytes) {
        match self {
            Out::Many(frames) if frames.capacity() == 0 => *self = Out::One(frame),
            Out::Many(frames) => frames.push(frame),
            Out::One(_) => {
                self.reserve(1);
                if let Out::Many(frames) = self {
                    frames.push(frame);
                }
            }
        }
    }

    /// Empties the list and gives its buffer back.
    pub(super) fn clear(&mut self) {
        *self = Out::default();
    }
}

/// Frames gathered per vectored write (two slices each): a whole
/// [`WRITE_BATCH`] in one system call.
const FRAMES_PER_WRITE: usize = WRITE_BATCH;

/// Writes `frames`, each behind the header `header` makes for it (a
/// WebSocket text frame's; none for a stream's events, which carry their
/// own framing); `done` counts the bytes already written (headers
/// included) across calls, so a write that returns pending resumes where
/// it stopped.
fn poll_write_frames<I>(
    io: &mut I,
    cx: &mut Context<'_>,
    header: fn(usize, &mut [u8; 10]) -> usize,
    frames: &[Bytes],
    done: &mut usize,
    writes: &mut usize,
) -> Poll<io::Result<()>>
where
    I: AsyncWrite + Unpin,
{
    loop {
        // The first frame not written in full, and how far into it.
        let mut skip = *done;
        let mut first = 0;
        while let Some(frame) = frames.get(first) {
            let len = frame.len();
            let size = header(len, &mut [0; 10]) + len;
            if skip < size {
                break;
            }
            skip -= size;
            first += 1;
        }
        if first == frames.len() {
            return Poll::Ready(Ok(()));
        }
        let chunk = &frames[first..frames.len().min(first + FRAMES_PER_WRITE)];
        let mut headers = [[0u8; 10]; FRAMES_PER_WRITE];
        let mut header_lens = [0usize; FRAMES_PER_WRITE];
        let header_of = header;
        for ((frame, header), header_len) in chunk.iter().zip(&mut headers).zip(&mut header_lens) {
            *header_len = header_of(frame.len(), header);
        }
        let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
        let mut count = 0;
        for (k, frame) in chunk.iter().enumerate() {
            let mut header = &headers[k][..header_lens[k]];
            let mut payload = &frame[..];
            if k == 0 {
                let cut = skip.min(header.len());
                header = &header[cut..];
                payload = &payload[skip - cut..];
            }
            for part in [header, payload] {
                if !part.is_empty() {
                    slices[count] = IoSlice::new(part);
                    count += 1;
                }
            }
        }
        let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
        *writes += 1;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *done += written;
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::text_header;
    use super::*;

    #[test]
    fn a_lone_frame_stays_inline_and_a_batch_gives_its_list_back() {
        assert_eq!(std::mem::size_of::<Out>(), 32, "a frame, no tag");
        let mut out = Out::default();
        out.reserve(1);
        out.push(Bytes::from("a"));
        assert!(matches!(out, Out::One(_)), "one frame allocates nothing");
        out.reserve(0);
        assert!(matches!(out, Out::One(_)));
        out.push(Bytes::from("b"));
        out.push(Bytes::from("c"));
        let frames: Vec<&[u8]> = out.as_slice().iter().map(|f| &f[..]).collect();
        assert_eq!(frames, [b"a", b"b", b"c"]);
        out.clear();
        assert!(out.is_empty());
        assert!(matches!(&out, Out::Many(frames) if frames.capacity() == 0));
        out.reserve(3);
        out.push(Bytes::from("d"));
        assert!(matches!(&out, Out::Many(frames) if frames.capacity() == 3));
        assert_eq!(out.len(), 1);
    }

    /// arrive whole and in order.
    #[tokio::test]
    async fn frames_survive_short_writes() {
        let (client, mut server) = tokio::io::duplex(7);
        let frames = vec![
            Bytes::from("a".repeat(3)),
            Bytes::from("b".repeat(200)),
            Bytes::from("c".repeat(70_000)),
        ];
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut all = Vec::new();
            server.read_to_end(&mut all).await.map(|_| all)
        });
        let mut client = client;
        let mut done = 0;
        poll_fn(|cx| poll_write_frames(&mut client, cx, text_header, &frames, &mut done, &mut 0))
            .await
            .unwrap();
        drop(client);
        let all = reader.await.unwrap().unwrap();
        let mut expected = Vec::new();
        for frame in &frames {
            let mut header = [0; 10];
            let n = text_header(frame.len(), &mut header);
            expected.extend_from_slice(&header[..n]);
            expected.extend_from_slice(&frame[..]);
        }
        assert_eq!(done, expected.len());
        assert!(all == expected, "the bytes differ");
    }
}
