//! The error type of every client operation.

use serde_json::Value;
use switchboard_protocol::ErrorBody;
use thiserror::Error;
use tokio_tungstenite::tungstenite;

/// Why a client operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered the upgrade request with an HTTP error.
    /// `body` is the JSON body (`{"error":..,"message":..}`), a JSON string
    /// holding the text if it was not JSON, or `null` if it was empty.
    #[error("handshake refused with http status {status}: {body}")]
    Refused {
        status: u16,
        body: Value,
        retry_after: Option<String>,
    },
    /// The WebSocket failed (connect, I/O, protocol).
    #[error("websocket error: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The connection closed while a reply or frame was awaited.
    #[error("connection closed ({}): {reason}", describe_close(*.code))]
    Closed { code: Option<u16>, reason: String },
    /// The server sent a frame this client cannot decode or did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered the command with an error reply.
    #[error("command failed: {}: {}", .0.code, .0.message)]
    Reply(ErrorBody),
}

fn describe_close(code: Option<u16>) -> String {
    code.map_or_else(|| "no close code".to_owned(), |c| format!("code {c}"))
}

impl ClientError {
    /// Turns a handshake failure into [`ClientError::Refused`] when the server
    /// answered with an HTTP response.
    pub(crate) fn handshake(error: tungstenite::Error) -> ClientError {
        let tungstenite::Error::Http(response) = error else {
            return ClientError::WebSocket(error);
        };
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match response.body().as_deref() {
            None | Some([]) => Value::Null,
            Some(bytes) => serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
        };
        ClientError::Refused {
            status: response.status().as_u16(),
            body,
            retry_after,
        }
    }

    /// The `error.code` of a [`ClientError::Reply`], for assertions.
    pub fn reply_code(&self) -> Option<&str> {
        match self {
            ClientError::Reply(body) => Some(&body.code),
            _ => None,
        }
    }
}
