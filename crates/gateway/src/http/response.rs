//! JSON HTTP responses: the refusal body of the public contract
//! (`{"error": "<code>", "message": "..."}`) and small status documents.
//! Details of internal failures go to the log, never into a body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde_json::json;
use tokio::io::DuplexStream;
use tokio_util::io::poll_read_buf;

/// A response body: bytes known up front (every answer but two), a
/// server-sent events stream's events as its session writes them into a
/// pipe (a stream opened on a reused keep-alive connection, which hyper
/// keeps serving; see `http::stream`), or chunks a stream yields (the admin
/// UI's live tail: dropped with the body when the client goes, so what it
/// holds is released at once).
#[derive(Debug, Default)]
pub struct Body(Kind);

/// Chunks of a body as they come, until the stream ends.
pub type Chunks = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

#[derive(Default)]
enum Kind {
    #[default]
    Empty,
    Bytes(Bytes),
    /// The pipe, and the buffer its reads go into (each read's bytes are
    /// split off as one frame; the rest of its capacity serves the next).
    Stream(DuplexStream, BytesMut),
    Chunks(Chunks),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Empty => f.write_str("Empty"),
            Kind::Bytes(bytes) => f.debug_tuple("Bytes").field(bytes).finish(),
            Kind::Stream(pipe, _) => f.debug_tuple("Stream").field(pipe).finish(),
            Kind::Chunks(_) => f.write_str("Chunks"),
        }
    }
}

/// The most a stream's body takes from its pipe per frame.
const STREAM_CHUNK: usize = 8 * 1024;

impl Body {
    pub fn new(bytes: Bytes) -> Body {
        Body(Kind::Bytes(bytes))
    }

    /// A body read from `pipe` until its writer closes it.
    pub fn stream(pipe: DuplexStream) -> Body {
        Body(Kind::Stream(pipe, BytesMut::new()))
    }

    /// A body of the chunks `chunks` yields, until it ends.
    pub fn chunks(chunks: Chunks) -> Body {
        Body(Kind::Chunks(chunks))
    }

    /// The bytes of a body known up front (none for a stream).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Kind::Empty => Some(&[]),
            Kind::Bytes(bytes) => Some(bytes),
            Kind::Stream(..) | Kind::Chunks(_) => None,
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let kind = &mut self.get_mut().0;
        match kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Bytes(_) => match std::mem::take(kind) {
                Kind::Bytes(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                _ => Poll::Ready(None),
            },
            Kind::Stream(pipe, buf) => {
                if buf.capacity() == 0 {
                    buf.reserve(STREAM_CHUNK);
                }
                match poll_read_buf(Pin::new(pipe), cx, buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
                    Poll::Ready(Ok(0)) => Poll::Ready(None),
                    Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(Frame::data(buf.split().freeze())))),
                }
            }
            Kind::Chunks(chunks) => chunks
                .as_mut()
                .poll_next(cx)
                .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Kind::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Bytes(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Stream(..) | Kind::Chunks(_) => SizeHint::default(),
        }
    }
}

/// The `Retry-After` of a 503 `unavailable` (a node at its cap or draining,
/// Redis away): seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A JSON response with a status.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    json_text(status, body.to_string())
}

/// A response whose body is JSON already encoded (a frame, say).
pub fn json_text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal: `{"error": code, "message": message}`, with `Retry-After` when given.
pub fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_secs: Option<u64>,
) -> Response<Body> {
    let mut response = json(status, &json!({ "error": code, "message": message }));
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// A `200` carrying server-sent events: `text/event-stream`, never cached,
/// and not buffered by NGINX (`X-Accel-Buffering: no`). A client's stream
/// and the admin UI's live tail answer with it.
pub fn event_stream(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `204 No Content`, marked not to be cached.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
