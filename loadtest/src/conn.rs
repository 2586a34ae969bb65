//! The WebSocket client side every load connection shares: open a socket
//! from a chosen loopback source address, upgrade it, wait for the welcome,
//! read text frames, and parse the few frame fields the load tool needs.
//!
//! Subscribers and WebSocket publishers both connect this way; keeping it
//! here, below both, means a publisher does not import the subscriber.
//!
//! In the MessagePack format (`Sec-WebSocket-Protocol: switchboard.msgpack`)
//! commands go as binary maps and binary frames are read back as their JSON
//! text, so everything above parses JSON either way. The socket under the
//! WebSocket counts the bytes read from it ([`Counted`]), so a run can
//! report bytes on the wire per delivery.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_protocol::msgpack;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

use crate::plan::Format;

pub type Ws = WebSocketStream<Counted>;

/// The subprotocol of the MessagePack format.
pub const MSGPACK_PROTOCOL: &str = "switchboard.msgpack";

/// A TCP stream that counts the bytes read from it since the last
/// [`Counted::take_read`].
pub struct Counted {
    inner: TcpStream,
    read: u64,
}

impl Counted {
    pub fn new(inner: TcpStream) -> Counted {
        Counted { inner, read: 0 }
    }

    /// Bytes read since the last call.
    pub fn take_read(&mut self) -> u64 {
        std::mem::take(&mut self.read)
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_ready() {
            this.read += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The message carrying command `json` in `format`.
pub fn command(format: Format, json: String) -> Result<Message, String> {
    match format {
        Format::Json => Ok(Message::text(json)),
        Format::MsgPack => msgpack::to_msgpack(&json)
            .map(Message::binary)
            .map_err(|e| format!("command has no MessagePack form: {e}")),
    }
}

/// The JSON text of a binary (MessagePack) frame.
pub fn binary_text(bytes: &[u8]) -> Result<String, String> {
    msgpack::to_json(bytes).map_err(|e| e.to_string())
}

/// The socket read buffer of a load connection (frames here are small).
const READ_BUFFER: usize = 4 * 1024;

/// A frame from the gateway, with only the fields the load tool reads.
#[derive(Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub channel: Option<&'a str>,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
    /// A `close` event's code (server-sent events only; a WebSocket gets a
    /// close frame instead).
    #[serde(default)]
    pub code: Option<u16>,
}

/// Opens a WebSocket to `target` from `source`, authenticated by `token`,
/// speaking `format`. With `batch`, the gateway may send several messages
/// per text frame, one per line (`?batch=1`).
pub async fn connect(
    source: SocketAddr,
    target: SocketAddr,
    token: &str,
    batch: bool,
    format: Format,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(source)
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let url = format!(
        "ws://{target}/ws?token={token}{}",
        if batch { "&batch=1" } else { "" }
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    if format == Format::MsgPack {
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(MSGPACK_PROTOCOL),
        );
    }
    let (ws, _) = client_async_with_config(request, Counted::new(stream), Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(response) => format!("refused: HTTP {}", response.status()),
            other => format!("handshake: {other}"),
        })?;
    Ok(ws)
}

/// Reads the next data frame as JSON text (a binary frame is MessagePack),
/// skipping pings and pongs.
pub async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Binary(bytes))) => return binary_text(&bytes),
            Some(Ok(Message::Close(frame))) => {
                return Err(close_reason(frame.map(|f| u16::from(f.code))))
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(format!("read: {error}")),
            None => return Err("closed".into()),
        }
    }
}

/// How a close frame (with its code, if any) is reported.
pub fn close_reason(code: Option<u16>) -> String {
    code.map_or_else(|| "close".to_owned(), |c| format!("close {c}"))
}

/// Waits for the welcome frame.
pub async fn welcome(ws: &mut Ws) -> Result<(), String> {
    let text = next_text(ws).await?;
    match serde_json::from_str::<ServerFrame<'_>>(&text) {
        Ok(frame) if frame.kind == "welcome" => Ok(()),
        _ => Err(format!("expected a welcome, got {text}")),
    }
}
