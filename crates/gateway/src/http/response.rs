//! JSON HTTP responses: the refusal body of the public contract
//! (`{"error": "<code>", "message": "..."}`) and small status documents.
//! Details of internal failures go to the log, never into a body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde_json::json;
use tokio::io::{AsyncRead, DuplexStream, ReadBuf};

/// A response body: bytes known up front (every answer but one), or a
/// server-sent events stream's events as its session writes them into a
/// pipe (a stream opened on a reused keep-alive connection, which hyper
/// keeps serving; see `http::stream`).
#[derive(Debug, Default)]
pub struct Body(Kind);

#[derive(Debug, Default)]
enum Kind {
    #[default]
    Empty,
    Bytes(Bytes),
    Stream(DuplexStream),
}

/// The most a stream's body takes from its pipe per frame.
const STREAM_CHUNK: usize = 8 * 1024;

impl Body {
    pub fn new(bytes: Bytes) -> Body {
        Body(Kind::Bytes(bytes))
    }

    /// A body read from `pipe` until its writer closes it.
    pub fn stream(pipe: DuplexStream) -> Body {
        Body(Kind::Stream(pipe))
    }

    /// The bytes of a body known up front (none for a stream).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Kind::Empty => Some(&[]),
            Kind::Bytes(bytes) => Some(bytes),
            Kind::Stream(_) => None,
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
            Kind::Stream(pipe) => {
                let mut chunk = BytesMut::zeroed(STREAM_CHUNK);
                let mut buf = ReadBuf::new(&mut chunk);
                match Pin::new(pipe).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            return Poll::Ready(None);
                        }
                        chunk.truncate(n);
                        Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Kind::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Bytes(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// The `Retry-After` of a 503 `unavailable` (a node at its cap or draining,
/// Redis away): seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A JSON response with a status.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(body.to_string())));
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
