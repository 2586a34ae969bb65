//! What a session talks to its client over: a WebSocket ([`Socket`]) or a
//! server-sent events stream ([`EventStream`](super::events::EventStream)).
//!
//! The session's logic (commands, subscriptions, recovery, limits, the
//! timers, the drain, the send queue and its byte cap) is the same for
//! both; a wire decides only how a frame is put on the connection (a
//! WebSocket text frame header, or an SSE event with its id), what comes
//! back from the client on it (WebSocket frames; on a stream, nothing but
//! its end: a stream's commands arrive over HTTP through the session's
//! queue) and how liveness and the close are carried. The session is
//! generic over it, so each transport compiles to its own code with no
//! dispatch on the per-frame path.

use std::sync::Arc;

use bytes::Bytes;
use std::task::{Context, Poll};
use std::time::Duration;

use switchboard_protocol::{ChannelName, Position};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::formats::{self, Mode};

use super::socket::{Inflates, Socket};
use crate::hub::Delivery;
use crate::metrics::sessions::Transport;
use crate::node::Node;

/// How long a close handshake may take before the socket is dropped.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A session's connection to its client.
#[allow(async_fn_in_trait)] // used with concrete wires only; Send is checked where the task is spawned
pub trait Wire: Unpin {
    /// The byte stream frames are written to directly.
    type Io: AsyncWrite + Unpin;
    /// The metrics' `transport` label, and what the session does
    /// differently (pings, the close, command replies).
    const TRANSPORT: Transport;

    /// What the client sent: WebSocket messages; for a stream, only its end
    /// (`None`) or an I/O error.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>>;

    /// Writes out what the wire itself holds (a WebSocket pong or close
    /// echo) before the session writes frames to [`Wire::io`].
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>>;

    /// The byte stream, for the session's own writes.
    fn io(&mut self) -> &mut Self::Io;

    /// Writes the header that goes before a frame of `len` bytes into
    /// `out`; returns its length (0 when frames need none).
    fn header(len: usize, out: &mut [u8; 10]) -> usize;

    /// The connection's format and compression (a stream's is always
    /// uncompressed JSON).
    fn mode(&self) -> Mode {
        Mode::default()
    }

    /// The compressed bytes read and the bytes they inflated to since the
    /// last call (a compressed WebSocket's; 0 otherwise).
    fn take_inflated(&mut self) -> (u64, u64) {
        (0, 0)
    }

    /// The bytes that carry a frame the hub queued for the client.
    fn delivery(&mut self, delivery: &Delivery, node: &Node) -> Bytes;

    /// The bytes that carry a frame the session wrote itself (a reply, the
    /// welcome, an error).
    fn frame(&self, text: String, node: &Node) -> Bytes;

    /// The bytes that carry a JSON frame already shared (a replayed
    /// message).
    fn shared(&self, frame: Utf8Bytes, node: &Node) -> Bytes {
        self.frame(frame.as_str().to_owned(), node)
    }

    /// A WebSocket ping; on a stream, the heartbeat is written as a frame
    /// instead (see [`Wire::heartbeat`]) and this does nothing.
    async fn ping(&mut self) -> Result<(), WsError>;

    /// The bytes written on a stream at each ping interval; `None` on a
    /// WebSocket (it pings).
    fn heartbeat() -> Option<Bytes>;

    /// Ends the connection with `code`: a WebSocket sends its close frame
    /// and waits (briefly, bounded by the caller) for the client's; a
    /// stream returns its last event for the session to write.
    async fn close(&mut self, frame: CloseFrame) -> Option<Bytes>;

    /// Writes out a close the client started (a WebSocket's queued echo).
    async fn flush(&mut self) -> Result<(), WsError>;

    /// The channels a stream's request named, to subscribe as it opens,
    /// each with the position its `Last-Event-ID` gave (none on a
    /// WebSocket: its client subscribes with commands).
    fn opening_channels(&self) -> Vec<(ChannelName, Option<Position>)> {
        Vec::new()
    }

    /// Sets the position in the `index`th opening channel that the next
    /// positioned frame's id carries (a stream's event ids).
    fn set_position(&mut self, _index: usize, _position: Option<(u64, Arc<str>)>) {}

    /// The bytes that carry a frame the session wrote itself that moves a
    /// position (a stream's `subscription` event and replayed messages,
    /// with their id).
    fn positioned(&self, text: String, node: &Node) -> Bytes {
        self.frame(text, node)
    }
}

impl<S> Wire for Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Inflates,
{
    type Io = S;
    const TRANSPORT: Transport = Transport::WebSocket;

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        futures_util::Stream::poll_next(std::pin::Pin::new(self), cx)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Socket::poll_flush(self, cx)
    }

    fn io(&mut self) -> &mut S {
        self.get_mut()
    }

    fn header(len: usize, out: &mut [u8; 10]) -> usize {
        text_header(len, out)
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn take_inflated(&mut self) -> (u64, u64) {
        Socket::take_inflated(self)
    }

    fn delivery(&mut self, delivery: &Delivery, node: &Node) -> Bytes {
        self.mode.delivery(delivery, node)
    }

    fn frame(&self, text: String, node: &Node) -> Bytes {
        self.mode.frame(text, node)
    }

    fn shared(&self, frame: Utf8Bytes, node: &Node) -> Bytes {
        self.mode.shared(frame, node)
    }

    async fn ping(&mut self) -> Result<(), WsError> {
        self.send(Message::Ping(Default::default())).await
    }

    fn heartbeat() -> Option<Bytes> {
        None
    }

    async fn close(&mut self, frame: CloseFrame) -> Option<Bytes> {
        use futures_util::StreamExt;
        use tokio::time::timeout;
        let _ = timeout(CLOSE_TIMEOUT, Socket::close(self, Some(frame))).await;
        let _ = timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.next().await {}
        })
        .await;
        None
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        Socket::flush(self).await
    }
}

/// Writes an unmasked, final text frame header for `len` payload bytes
/// (RFC 6455 §5.2); returns its length.
pub(super) fn text_header(len: usize, out: &mut [u8; 10]) -> usize {
    formats::frame_header(formats::TEXT, len, out)
}

/// No header: the frame is whole already (see [`formats`]), or a stream's
/// event, which carries its own framing.
pub(super) fn no_header(_len: usize, _out: &mut [u8; 10]) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_headers_follow_rfc_6455() {
        let header = |len| {
            let mut out = [0; 10];
            let n = text_header(len, &mut out);
            out[..n].to_vec()
        };
        assert_eq!(header(5), [0x81, 5]);
        assert_eq!(header(126), [0x81, 126, 0, 126]);
        assert_eq!(header(65_535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(header(70_000), [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
