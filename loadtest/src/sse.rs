//! The server-sent events client side of a load connection: open a socket
//! from a chosen loopback source address, send `GET /sse?...` by hand, read
//! the response head, then hand out the event stream's lines one by one.
//!
//! Written over a raw TCP socket rather than an HTTP client so that a load
//! process can hold 10k streams cheaply: one socket and one small buffer per
//! stream, nothing else. It parses only what the load tool needs
//! (docs/protocol.md, "Server-sent events"): `data:` lines (each holds one
//! server frame on one line), `id:` lines, comments (`: ping`) and blank
//! lines, over a body that ends with the connection or is chunked.
//!
//! Its own module beside `conn` (the WebSocket side), below the subscriber.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The socket read buffer of a stream (events here are small); it grows
/// for a longer line.
const READ_BUFFER: usize = 4 * 1024;
/// A response head or a line longer than this is an error, not a reason to
/// grow without bound.
const MAX_HEAD: usize = 16 * 1024;
const MAX_LINE: usize = 1024 * 1024;
/// How much of a refusal's body is quoted in the error.
const MAX_REFUSAL: usize = 512;

/// One line of an event stream, as the load tool reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// `data:` with its value (one server frame).
    Data(&'a str),
    /// `id:` with its value (the stream's position after the event).
    Id(&'a str),
    /// A comment such as the heartbeat `: ping`.
    Comment,
    /// The blank line that ends an event.
    Blank,
    /// Any other field (`event:`, `retry:`), not used here.
    Other,
}

/// Reads one line of the stream (without its line end) as SSE does: the
/// field name up to the first colon, and one space after it dropped.
pub fn classify(line: &str) -> Line<'_> {
    if line.is_empty() {
        return Line::Blank;
    }
    if line.starts_with(':') {
        return Line::Comment;
    }
    let (field, value) = line.split_once(':').unwrap_or((line, ""));
    let value = value.strip_prefix(' ').unwrap_or(value);
    match field {
        "data" => Line::Data(value),
        "id" => Line::Id(value),
        _ => Line::Other,
    }
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Waiting for a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(usize),
    /// After a chunk's data, waiting for its CRLF.
    End,
    /// The last (zero-size) chunk came: the body is over.
    Done,
}

/// Moves the body bytes of a chunked transfer from `raw` into `body`, as far
/// as `raw` goes; returns whether the last chunk came.
fn dechunk(state: &mut Chunk, raw: &mut BytesMut, body: &mut BytesMut) -> Result<bool, String> {
    loop {
        match *state {
            Chunk::Done => return Ok(true),
            Chunk::Size => {
                let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
                    if raw.len() > 64 {
                        return Err("chunk size line too long".into());
                    }
                    return Ok(false);
                };
                let line = std::str::from_utf8(&raw[..end])
                    .map_err(|_| "chunk size is not text".to_owned())?;
                let hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                raw.advance(end + 2);
                *state = if size == 0 {
                    Chunk::Done
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if raw.is_empty() {
                    return Ok(false);
                }
                let n = left.min(raw.len());
                body.extend_from_slice(&raw[..n]);
                raw.advance(n);
                *state = if n == left {
                    Chunk::End
                } else {
                    Chunk::Data(left - n)
                };
            }
            Chunk::End => {
                if raw.len() < 2 {
                    return Ok(false);
                }
                if &raw[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                raw.advance(2);
                *state = Chunk::Size;
            }
        }
    }
}

/// The response head: status, and the two headers that shape the body.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
    event_stream: bool,
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
        chunked: false,
        content_length: None,
        event_stream: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            parsed.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("content-type") {
            parsed.event_stream = value.to_ascii_lowercase().starts_with("text/event-stream");
        }
    }
    Ok(parsed)
}

/// An open event stream.
pub struct Stream {
    socket: TcpStream,
    /// Bytes read from the socket and not yet moved to `body` (chunked), or
    /// the body itself (`chunk` is `None`).
    raw: BytesMut,
    /// The chunked body's state; `None` when the body is the rest of the
    /// connection.
    chunk: Option<Chunk>,
    /// Decoded body bytes of a chunked body, not yet handed out as lines.
    body: BytesMut,
}

impl Stream {
    /// Reads more of the body into the buffer; `Ok(false)` when nothing more
    /// can come (the server closed the connection, or its last chunk was
    /// read before). Lines already buffered stay readable either way.
    pub async fn fill(&mut self) -> Result<bool, String> {
        if self.chunk == Some(Chunk::Done) {
            return Ok(false);
        }
        if self.raw.capacity() - self.raw.len() < READ_BUFFER / 4 {
            self.raw.reserve(READ_BUFFER);
        }
        let n = self
            .socket
            .read_buf(&mut self.raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if let Some(state) = self.chunk.as_mut() {
            dechunk(state, &mut self.raw, &mut self.body)?;
        }
        Ok(n > 0)
    }

    /// The next complete line of the body, without its line end, when one
    /// is buffered.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, String> {
        let buffer = if self.chunk.is_some() {
            &mut self.body
        } else {
            &mut self.raw
        };
        let Some(end) = buffer.iter().position(|&b| b == b'\n') else {
            if buffer.len() > MAX_LINE {
                return Err(format!("a line of over {MAX_LINE} bytes"));
            }
            return Ok(None);
        };
        let mut line = buffer.split_to(end + 1).freeze();
        line.truncate(end);
        if line.last() == Some(&b'\r') {
            line.truncate(end - 1);
        }
        Ok(Some(line))
    }

    /// The next line, reading from the socket as needed; an error when the
    /// stream ends first.
    pub async fn read_line(&mut self) -> Result<Bytes, String> {
        loop {
            if let Some(line) = self.next_line()? {
                return Ok(line);
            }
            if !self.fill().await? {
                return Err("the stream ended".into());
            }
        }
    }

    /// The next `data:` value (a server frame), skipping ids, comments and
    /// blank lines.
    pub async fn next_data(&mut self) -> Result<String, String> {
        loop {
            let line = self.read_line().await?;
            let text = std::str::from_utf8(&line).map_err(|_| "a line that is not UTF-8")?;
            if let Line::Data(data) = classify(text) {
                return Ok(data.to_owned());
            }
        }
    }
}

/// Opens an event stream to `target` from `source`: `GET <path>` where
/// `path` holds the query (`/sse?channel=...&token=...`). A refusal (any
/// status but 200) is an error quoting the status and the JSON body.
pub async fn connect(source: SocketAddr, target: SocketAddr, path: &str) -> Result<Stream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(source)
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut socket = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = socket.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = BytesMut::with_capacity(READ_BUFFER);
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if raw.len() > MAX_HEAD {
            return Err("response head too long".into());
        }
        if socket
            .read_buf(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?
            == 0
        {
            return Err("closed before the response head".into());
        }
    };
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "response head is not text")?;
    let head = parse_head(head)?;
    raw.advance(end + 4);
    let mut stream = Stream {
        socket,
        raw,
        chunk: head.chunked.then_some(Chunk::Size),
        body: BytesMut::new(),
    };
    if head.status != 200 {
        return Err(stream.refusal(head.status, head.content_length).await);
    }
    if !head.event_stream {
        return Err("a 200 answer that is not text/event-stream".into());
    }
    if let Some(state) = stream.chunk.as_mut() {
        dechunk(state, &mut stream.raw, &mut stream.body)?;
    }
    Ok(stream)
}

impl Stream {
    /// Reads a refusal's body (bounded) and says what it was.
    async fn refusal(&mut self, status: u16, length: Option<usize>) -> String {
        let want = length.unwrap_or(MAX_REFUSAL).min(MAX_REFUSAL);
        let read = async {
            loop {
                if let Some(state) = self.chunk.as_mut() {
                    if dechunk(state, &mut self.raw, &mut self.body).is_err()
                        || *state == Chunk::Done
                    {
                        break;
                    }
                }
                let have = if self.chunk.is_some() {
                    &self.body
                } else {
                    &self.raw
                };
                if have.len() >= want {
                    break;
                }
                match self.socket.read_buf(&mut self.raw).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
        let body = if self.chunk.is_some() {
            &self.body
        } else {
            &self.raw
        };
        let body = String::from_utf8_lossy(&body[..body.len().min(want)]);
        format!("refused: HTTP {status}: {}", body.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_as_sse_fields() {
        assert_eq!(
            classify(r#"data: {"type":"welcome"}"#),
            Line::Data(r#"{"type":"welcome"}"#)
        );
        assert_eq!(classify("data:x"), Line::Data("x"));
        assert_eq!(classify("data"), Line::Data(""));
        assert_eq!(
            classify("id: 9:5f1c2a9e07b3d468,"),
            Line::Id("9:5f1c2a9e07b3d468,")
        );
        assert_eq!(classify(": ping"), Line::Comment);
        assert_eq!(classify(""), Line::Blank);
        assert_eq!(classify("event: message"), Line::Other);
        assert_eq!(classify("retry: 1000"), Line::Other);
    }

    #[test]
    fn a_chunked_body_is_decoded_across_reads() {
        let mut state = Chunk::Size;
        let mut body = BytesMut::new();
        let mut raw = BytesMut::new();
        for piece in [
            &b"6\r\ndata: "[..],
            b"\r",
            b"\ne;ext=1\r\n{\"a\":1}\n\n: p\r",
            b"\n\r\n4\r\nid: \r\n0\r\n\r\n",
        ] {
            raw.extend_from_slice(piece);
            let over = dechunk(&mut state, &mut raw, &mut body).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(over, state == Chunk::Done);
        }
        assert_eq!(state, Chunk::Done);
        assert_eq!(&body[..], b"data: {\"a\":1}\n\n: p\r\nid: ");
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert!(dechunk(&mut Chunk::Size, &mut bad, &mut body).is_err());
    }

    #[test]
    fn the_head_gives_status_and_framing() {
        let head = parse_head(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            head,
            Head {
                status: 200,
                chunked: true,
                content_length: None,
                event_stream: true
            }
        );
        let head = parse_head("HTTP/1.1 429 Too Many Requests\r\nContent-Length: 55")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((head.status, head.content_length), (429, Some(55)));
        assert!(parse_head("SSH-2.0-OpenSSH").is_err());
    }
}
