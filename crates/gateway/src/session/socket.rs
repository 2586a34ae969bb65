//! The session's WebSocket: tungstenite's protocol state over the upgraded
//! connection, driven by the session's one task.
//!
//! Why not tokio-tungstenite's `WebSocketStream`: its reading and writing
//! may run on two tasks, so it wraps the socket in two `Arc` waker proxies
//! that pass a wake-up on to both: two 64-byte blocks, 80 bytes each from
//! glibc, allocated for every connection. A session reads and writes from
//! one task, so one waker is enough: it lives inline in [`Io`] (16 bytes,
//! where the two proxies' pointers were), so each connection costs 160
//! bytes and two allocations less. Each poll sets it from the task's
//! `Context`, which clones nothing while the waker is unchanged.
//!
//! The semantics are tokio-tungstenite's (0.30): a socket that would block
//! is `Pending`; the messages end (`None`) once the connection is closed,
//! and after any other error has been returned once; a send first finishes
//! the flush of a send that was dropped before it flushed, queues the
//! message and flushes it; a flush that completes the close handshake
//! succeeds.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, WebSocket};

use super::formats::Mode;
use crate::compression::inflating::Inflating;

/// What a socket reads from: the upgraded connection, or the same under
/// the layer that inflates a compressed connection's messages, which tells
/// what it inflated (for the metrics).
pub trait Inflates {
    /// The compressed bytes read and the bytes they inflated to since the
    /// last call.
    fn take_inflated(&mut self) -> (u64, u64) {
        (0, 0)
    }
}

impl Inflates for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

#[cfg(test)]
impl Inflates for tokio::io::DuplexStream {}

impl<S> Inflates for Inflating<S> {
    fn take_inflated(&mut self) -> (u64, u64) {
        self.take_counts()
    }
}

/// A WebSocket over an async stream, read and written by one task.
pub struct Socket<S> {
    ws: WebSocket<Io<S>>,
    /// The connection closed, or an error was returned: no more messages.
    ended: bool,
    /// A send queued its message but was dropped before its flush
    /// completed: the next send flushes first.
    unflushed: bool,
    /// The format and compression the handshake chose.
    pub(super) mode: Mode,
}

/// The async stream as the blocking `Read` and `Write` tungstenite wants:
/// each call polls the stream once with the task's waker, and `Pending`
/// becomes `WouldBlock`.
struct Io<S> {
    inner: S,
    /// The waker of the last `Context` a call into tungstenite came with.
    waker: Waker,
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps a stream on which the handshake is done.
    pub fn new(stream: S, role: Role, config: WebSocketConfig) -> Self {
        let io = Io {
            inner: stream,
            waker: Waker::noop().clone(),
        };
        Socket {
            ws: WebSocket::from_raw_socket(io, role, Some(config)),
            ended: false,
            unflushed: false,
            mode: Mode::default(),
        }
    }

    /// Sets the format and compression the handshake chose.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// What the stream inflated since the last call (see [`Inflates`]).
    pub fn take_inflated(&mut self) -> (u64, u64)
    where
        S: Inflates,
    {
        self.ws.get_mut().inner.take_inflated()
    }

    /// The stream itself, for writes that bypass tungstenite.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.ws.get_mut().inner
    }

    /// Sends a message and flushes it.
    pub async fn send(&mut self, message: Message) -> Result<(), WsError> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        match self.ws.write(message) {
            Ok(()) => {}
            // Queued; the flush below sends it.
            Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                self.unflushed = true;
            }
            Err(error) => return Err(error),
        }
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Starts the close handshake with `frame` and flushes it.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        self.send(Message::Close(frame)).await
    }

    /// Writes out what tungstenite holds (a queued pong or close echo, say).
    pub async fn flush(&mut self) -> Result<(), WsError> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Finishes the flush of a send that was dropped before it flushed.
    /// Unlike [`Self::poll_flush`], a closed connection is an error here.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        self.set_waker(cx);
        let result = ready!(would_block(self.ws.flush()));
        self.unflushed = false;
        Poll::Ready(result)
    }

    /// Writes out what tungstenite holds; the writer calls it before it
    /// writes frames to the stream itself, so frames never interleave.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.set_waker(cx);
        let result = ready!(would_block(self.ws.flush()));
        self.unflushed = false;
        match result {
            // The flush completed the close handshake: not an error.
            Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }

    /// Points the stream's polls at this task, cloning the waker only when
    /// it changed.
    fn set_waker(&mut self, cx: &Context<'_>) {
        let waker = &mut self.ws.get_mut().waker;
        if !waker.will_wake(cx.waker()) {
            waker.clone_from(cx.waker());
        }
    }
}

/// The messages, ending (`None`) once the connection has closed or after
/// an error. Cancel-safe: dropping `next()` loses no message.
impl<S> Stream for Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        self.set_waker(cx);
        match ready!(would_block(self.ws.read())) {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Err(error) => {
                self.ended = true;
                Poll::Ready(Some(Err(error)))
            }
        }
    }
}

/// tungstenite's `WouldBlock` is the stream's `Pending`.
fn would_block<T>(result: Result<T, WsError>) -> Poll<Result<T, WsError>> {
    match result {
        Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl<S> Io<S> {
    fn poll<T>(
        &mut self,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T>
    where
        S: Unpin,
    {
        let mut cx = Context::from_waker(&self.waker);
        match poll(Pin::new(&mut self.inner), &mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S> Read for Io<S>
where
    S: AsyncRead + Unpin,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        self.poll(|inner, cx| inner.poll_read(cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl<S> Write for Io<S>
where
    S: AsyncWrite + Unpin,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll(|inner, cx| inner.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll(|inner, cx| inner.poll_flush(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    /// Our socket as the server, a tokio-tungstenite client on the other
    /// end of an in-memory pipe of `buffer` bytes.
    async fn pair(buffer: usize) -> (Socket<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(buffer);
        let config = WebSocketConfig::default().read_buffer_size(128);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (Socket::new(server, Role::Server, config), client)
    }

    /// A stuck poll (a lost wake-up) fails the test instead of hanging it.
    async fn within<F: Future>(test: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), test)
            .await
            .expect("the exchange stalled")
    }

    fn frame(code: CloseCode, reason: &'static str) -> CloseFrame {
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    #[tokio::test]
    async fn messages_pings_and_our_close() {
        let (mut server, mut client) = pair(1024).await;
        within(async {
            client.send(Message::text("hello")).await.unwrap();
            assert_eq!(
                server.next().await.unwrap().unwrap(),
                Message::text("hello")
            );
            server.send(Message::text("world")).await.unwrap();
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::text("world")
            );

            // Our ping, the client's pong.
            server.send(Message::Ping("p".into())).await.unwrap();
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::Ping("p".into())
            );
            client.flush().await.unwrap();
            assert_eq!(
                server.next().await.unwrap().unwrap(),
                Message::Pong("p".into())
            );

            // The client's ping: tungstenite queues the pong, a flush sends it.
            client.send(Message::Ping("q".into())).await.unwrap();
            assert_eq!(
                server.next().await.unwrap().unwrap(),
                Message::Ping("q".into())
            );
            server.flush().await.unwrap();
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::Pong("q".into())
            );

            // Our close, its echo, then the end of the messages.
            server
                .close(Some(frame(CloseCode::Again, "later")))
                .await
                .unwrap();
            let got = client.next().await.unwrap().unwrap();
            assert_eq!(got, Message::Close(Some(frame(CloseCode::Again, "later"))));
            client.flush().await.unwrap();
            let echo = server.next().await.unwrap().unwrap();
            assert_eq!(echo, Message::Close(Some(frame(CloseCode::Again, "later"))));
            assert!(server.next().await.is_none());
            assert!(server.next().await.is_none(), "the messages stay ended");
            drop(server);
            assert!(client.next().await.is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn the_clients_close_is_echoed_by_a_flush() {
        let (mut server, mut client) = pair(1024).await;
        within(async {
            client
                .close(Some(frame(CloseCode::Normal, "done")))
                .await
                .unwrap();
            let got = server.next().await.unwrap().unwrap();
            assert_eq!(got, Message::Close(Some(frame(CloseCode::Normal, "done"))));
            // The flush completes the handshake: not an error.
            server.flush().await.unwrap();
            let echo = client.next().await.unwrap().unwrap();
            assert_eq!(echo, Message::Close(Some(frame(CloseCode::Normal, "done"))));
            assert!(server.next().await.is_none());
            assert!(server.send(Message::text("late")).await.is_err());
        })
        .await;
    }

    /// A pipe far smaller than the messages: every read and write blocks
    /// many times, and only the task's waker, passed through `Io`, moves
    /// the exchange on (the client runs in a task of its own).
    #[tokio::test]
    async fn a_blocked_socket_wakes_its_task() {
        let (mut server, mut client) = pair(64).await;
        let big = "x".repeat(100_000);
        let sent = big.clone();
        let peer = tokio::spawn(async move {
            client.send(Message::text(sent)).await.unwrap();
            let echo = client.next().await.unwrap().unwrap();
            client.close(None).await.unwrap();
            let close_echo = client.next().await.unwrap().unwrap();
            (echo, close_echo)
        });
        within(async {
            let got = server.next().await.unwrap().unwrap();
            assert_eq!(got, Message::text(big.clone()));
            server.send(got).await.unwrap();
            assert!(matches!(
                server.next().await,
                Some(Ok(Message::Close(None)))
            ));
            server.flush().await.unwrap();
            let (echo, close_echo) = peer.await.unwrap();
            assert_eq!(echo, Message::text(big));
            assert_eq!(close_echo, Message::Close(None));
        })
        .await;
    }

    /// One inline waker where tokio-tungstenite keeps two `Arc` pointers:
    /// the socket is no bigger, and allocates nothing of its own.
    #[test]
    fn the_socket_is_no_bigger_than_tokio_tungstenites() {
        type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;
        let ours = std::mem::size_of::<Socket<Upgraded>>();
        let theirs = std::mem::size_of::<WebSocketStream<Upgraded>>();
        assert!(ours <= theirs, "{ours} bytes against {theirs}");
    }

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The socket keeps the task's waker (the stream registers it), and a
    /// poll with the same waker leaves it in place.
    #[tokio::test]
    async fn the_stream_wakes_the_polling_task() {
        let (mut server, mut client) = pair(1024).await;
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        assert!(server.poll_next_unpin(&mut cx).is_pending());
        assert!(server.ws.get_ref().waker.will_wake(&waker));
        assert!(server.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        client.send(Message::text("wake")).await.unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        let got = server.poll_next_unpin(&mut cx);
        assert!(matches!(got, Poll::Ready(Some(Ok(Message::Text(text)))) if text == "wake"));
    }
}
