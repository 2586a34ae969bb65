//! The WebSocket client side every load connection shares: open a socket
//! from a chosen loopback source address, upgrade it, wait for the welcome,
//! read text frames, and parse the few frame fields the load tool needs.
//!
//! Subscribers and WebSocket publishers both connect this way; keeping it
//! here, below both, means a publisher does not import the subscriber.

use std::net::SocketAddr;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

pub type Ws = WebSocketStream<TcpStream>;

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

/// Opens a WebSocket to `target` from `source`, authenticated by `token`.
/// With `batch`, the gateway may send several messages per text frame,
/// one per line (`?batch=1`).
pub async fn connect(
    source: SocketAddr,
    target: SocketAddr,
    token: &str,
    batch: bool,
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
    let (ws, _) = client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(response) => format!("refused: HTTP {}", response.status()),
            other => format!("handshake: {other}"),
        })?;
    Ok(ws)
}

/// Reads the next text frame, skipping pings and pongs.
pub async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
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
