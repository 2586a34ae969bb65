//! The HTTP/1.1 client side of the server API: one keep-alive connection
//! per worker, and a request that returns the status and the whole body.
//! The API publishers and the history check both use it.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Sender = SendRequest<Full<Bytes>>;

/// Opens a keep-alive HTTP/1.1 connection to `target`.
pub async fn connect(target: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("api connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("api handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request with the API key (`auth` is the whole `Authorization`
/// value) and reads the whole answer. An `Err` means the connection failed
/// and should not be reused.
pub async fn request(
    sender: &mut Sender,
    target: SocketAddr,
    auth: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, Bytes), String> {
    sender.ready().await.map_err(|e| format!("api: {e}"))?;
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, target.to_string())
        .header(header::AUTHORIZATION, auth);
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
        .map_err(|e| format!("api request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("api: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("api body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// `channel` as one path segment: everything but unreserved characters
/// percent-encoded (so `bench:room.1` is `bench%3Aroom.1`).
pub fn path_segment(channel: &str) -> String {
    let mut out = String::with_capacity(channel.len() + 8);
    for byte in channel.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_percent_encoded_as_one_segment() {
        assert_eq!(path_segment("bench:room.1"), "bench%3Aroom.1");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
