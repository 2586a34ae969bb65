//! The HTTP side of server-sent events streams: `GET /sse` opens a
//! stream (a session whose wire is an
//! [`EventStream`](crate::session::events::EventStream)), `POST
//! /sse/command` hands a stream's session a command and answers with its
//! reply, and `OPTIONS` on both answers CORS preflights for allowed
//! origins.
//!
//! Why a stream usually bypasses hyper: a response hyper serves keeps the
//! connection's 8 KiB read buffer and 8 KiB header buffer for as long as
//! the body runs, about ten times what a whole WebSocket session costs. So
//! a connection whose first bytes are `GET /sse` is taken before hyper
//! sees it ([`starts_stream`]): its request head is read and parsed here
//! (with `httparse`, hyper's own parser), and the session writes its events
//! straight to the socket, `Connection: close` and no length. NGINX opens
//! an upstream connection per request (the shipped config keeps none
//! alive), so behind it every stream goes this way. A stream asked for on a
//! keep-alive connection hyper is already serving (a browser reusing a
//! pooled connection) still works: its session writes into a pipe that
//! hyper streams as a chunked body ([`open_over_hyper`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::handshake::{self, Refusal, StreamChannels};
use crate::http::response::{self, Body};
use crate::hub::StreamCommand;
use crate::node::Node;
use crate::session::events::EventStream;
use crate::session::{self, Opened};

/// The bytes that start a connection whose first request opens a stream.
const STREAM_REQUEST: [&[u8]; 2] = [b"GET /sse?", b"GET /sse "];
/// The longest request head read here; a longer one is answered 431, as
/// hyper answers one over its buffer.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a stream's request may carry.
const MAX_HEADERS: usize = 64;
/// How long a command waits for its stream's session to answer (it runs in
/// turn with the session's writes, each bounded by the pong timeout).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The pipe between a stream's session and hyper's body, on a keep-alive
/// connection: a write that finds it full waits, like a full socket.
const PIPE_BYTES: usize = 16 * 1024;

/// Whether a connection that starts with `head` opens a stream: `Some`
/// once the bytes decide it, `None` while they could still go either way.
pub fn starts_stream(head: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for request in STREAM_REQUEST {
        let n = head.len().min(request.len());
        if head[..n] == request[..n] {
            if n == request.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    if undecided && !head.is_empty() {
        None
    } else {
        Some(false)
    }
}

/// Serves a connection whose first request opens a stream: reads and
/// parses its head, admits it, writes the response head and runs the
/// session on the socket until the stream ends. A refusal is written as a
/// whole response and the connection closed.
///
/// The task's future is what an idle stream holds for its whole life, so
/// everything before the session runs is boxed and gone by then (a test
/// holds the size).
pub fn serve_raw(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    // The request's handling is boxed with its arguments, and the session
    // awaited as one expression: the task keeps nothing else.
    let prepare = Box::pin(prepare(node, stream, peer));
    async move { start(prepare.await).await }
}

/// A stream ready to run: its session's parts, in one box.
struct Prepared {
    node: Arc<Node>,
    wire: EventStream<TcpStream>,
    opened: Opened,
}

fn start(prepared: Option<Box<Prepared>>) -> impl std::future::Future<Output = ()> {
    use futures_util::future::Either;
    match prepared {
        Some(prepared) => {
            let Prepared { node, wire, opened } = *prepared;
            Either::Left(session::run(node, wire, opened))
        }
        None => Either::Right(std::future::ready(())),
    }
}

/// Reads, admits and answers a stream's request; the wire and the
/// admitted connection for its session, or `None` when it was refused or
/// the client left.
async fn prepare(
    node: Arc<Node>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<Box<Prepared>> {
    let node = &node;
    let request = Box::pin(read_head(&mut stream)).await;
    let opened = match request {
        Ok(head) => Box::pin(open(node, head.query.as_deref(), &head.headers, peer))
            .await
            .map_err(Some),
        Err(refusal) => Err(refusal),
    };
    let (opened, channels, origin) = match opened {
        Ok(opened) => opened,
        // Closed, broken or too slow: there is no one to answer.
        Err(None) => return None,
        Err(Some(response)) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                stream.write_all(&serialize(response, true)),
            )
            .await;
            let _ = stream.shutdown().await;
            return None;
        }
    };
    // The head only: the body is the events, ended by the close.
    let head = serialize(stream_response(Body::default(), origin.as_ref()), false);
    let written =
        tokio::time::timeout(node.config.session.pong_timeout, stream.write_all(&head)).await;
    drop(head);
    if !matches!(written, Ok(Ok(()))) {
        handshake::forget(node, &opened).await;
        return None;
    }
    Some(Box::new(Prepared {
        node: Arc::clone(node),
        wire: EventStream::new(stream, channels),
        opened,
    }))
}

/// A request head read off a connection.
struct Head {
    query: Option<String>,
    headers: HeaderMap,
}

/// Reads the request head, up to [`MAX_HEAD`] bytes within hyper's header
/// timeout. The refusals are hyper's own answers to such requests; `None`
/// when the client closed, broke off or was too slow.
async fn read_head(stream: &mut TcpStream) -> Result<Head, Option<Response<Body>>> {
    let bad = |message: &str| {
        Some(response::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
            None,
        ))
    };
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + handshake::HEADER_READ_TIMEOUT;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let target = request.path.unwrap_or("/");
                let query = target.split_once('?').map(|(_, q)| q.to_owned());
                let mut map = HeaderMap::with_capacity(request.headers.len());
                for h in request.headers.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| bad("malformed header name"))?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| bad("malformed header value"))?;
                    map.append(name, value);
                }
                return Ok(Head {
                    query,
                    headers: map,
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Some(response::error(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "bad_request",
                    "too many headers",
                    None,
                )))
            }
            Err(_) => return Err(bad("malformed HTTP request")),
        }
        if buf.len() >= MAX_HEAD {
            return Err(Some(response::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad_request",
                "request head too large",
                None,
            )));
        }
        buf.reserve(1024);
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(None),
        }
    }
}

/// A response written by hand on a connection hyper does not serve:
/// status line, headers, `Connection: close`, and with `whole` its length
/// and body (else the head alone: a stream's body is delimited by the
/// connection's close).
fn serialize(response: Response<Body>, whole: bool) -> Vec<u8> {
    let status = response.status();
    let body = response.body().bytes().unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if whole {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    if whole {
        out.extend_from_slice(body);
    }
    out
}

/// A stream's `200`: its headers (`text/event-stream`, not cached, not
/// buffered by NGINX), readable by `origin` when the request had an
/// allowed one. One place for both ways a stream is answered.
fn stream_response(body: Body, origin: Option<&HeaderValue>) -> Response<Body> {
    with_cors(response::event_stream(body), origin)
}

/// Admits a stream's request and records its connection: the session to
/// run, its channels, and the `Origin` to allow in the answer (a
/// cross-origin page's, when allowed).
async fn open(
    node: &Arc<Node>,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(Opened, StreamChannels, Option<HeaderValue>), Response<Body>> {
    let client_ip = node.config.trusted_proxies.client_ip(peer, headers);
    let (admission, channels) = match handshake::admit_stream(node, query, headers, client_ip) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            return Err(with_cors(
                handshake::refuse(node, peer, client_ip, refusal),
                headers.get(header::ORIGIN),
            ))
        }
    };
    let opened = handshake::record(node, peer, client_ip, admission).await?;
    Ok((opened, channels, headers.get(header::ORIGIN).cloned()))
}

/// `GET /sse` on a connection hyper serves: the session writes its events
/// into a pipe whose other end is the response body.
pub async fn open_over_hyper(
    node: Arc<Node>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let (opened, channels, origin) =
        match open(&node, request.uri().query(), request.headers(), peer).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let (session_end, body_end) = tokio::io::duplex(PIPE_BYTES);
    let wire = EventStream::new(session_end, channels);
    node.tasks
        .spawn(session::run(Arc::clone(&node), wire, opened));
    stream_response(Body::stream(body_end), origin.as_ref())
}

/// `POST /sse/command?connection=<id>`: one command for the caller's
/// stream on this node, answered with the frame its session answers.
pub async fn command(
    node: Arc<Node>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let answer = Box::pin(run_command(&node, request, peer)).await;
    with_cors(answer, origin.as_ref())
}

async fn run_command(node: &Node, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if request.method() != Method::POST {
        return response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "use POST",
            None,
        );
    }
    let query = request.uri().query();
    let headers = request.headers();
    if handshake::check_origin(node, headers).is_err() {
        return Refusal::ForbiddenOrigin.into_response();
    }
    let claims = match handshake::verify_token(node, query, headers) {
        Ok(claims) => claims,
        Err(refusal) => {
            let client_ip = node.config.trusted_proxies.client_ip(peer, headers);
            handshake::log_refusal(peer, client_ip, &refusal);
            return refusal.into_response();
        }
    };
    let Some(connection) = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "connection")
            .map(|(_, v)| v.into_owned())
    }) else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "connection=<connection id of the stream> is required",
            None,
        );
    };
    let not_found = || {
        response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no stream {connection} on this node"),
            None,
        )
    };
    // `<instance>.<n>`: this node's instance, and the session's number.
    let handle = connection
        .strip_prefix(node.instance.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|n| n.parse::<u64>().ok())
        .and_then(|id| node.hub.session(id))
        .filter(|handle| *handle.user == *claims.user);
    let Some(handle) = handle else {
        return not_found();
    };
    let max = node.config.session.max_frame_bytes;
    let body = match Limited::new(request.into_body(), max).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                &format!("command exceeds {max} bytes"),
                None,
            );
        }
        Err(_) => {
            return response::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body broke off",
                None,
            )
        }
    };
    // Not UTF-8: the session answers it as it answers such a frame.
    let text = String::from_utf8_lossy(&body).into_owned().into_boxed_str();
    let (command, answer) = StreamCommand::new(text);
    let closing = || {
        response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the stream is closing",
            Some(response::RETRY_AFTER_SECS),
        )
    };
    if !handle.offer_command(command) {
        return closing();
    }
    drop(handle);
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(Some(frame))) => response::json_text(StatusCode::OK, frame),
        Ok(Ok(None)) => response::no_content(),
        Ok(Err(_)) | Err(_) => closing(),
    }
}

/// `OPTIONS` on the stream routes: a CORS preflight, allowed for an
/// allowed `Origin`.
pub fn preflight(node: &Node, headers: &HeaderMap) -> Response<Body> {
    if headers.get(header::ORIGIN).is_none() || handshake::check_origin(node, headers).is_err() {
        return Refusal::ForbiddenOrigin.into_response();
    }
    let mut response = response::no_content();
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    out.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, last-event-id"),
    );
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_cors(response, headers.get(header::ORIGIN))
}

/// Lets the request's `Origin` read the answer when it is allowed (the
/// routes check it; a refusal for a forbidden one carries no grant).
fn with_cors(mut response: Response<Body>, origin: Option<&HeaderValue>) -> Response<Body> {
    if response.status() == StatusCode::FORBIDDEN {
        return response;
    }
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_decide_whether_a_connection_opens_a_stream() {
        assert_eq!(starts_stream(b""), Some(false));
        assert_eq!(starts_stream(b"GE"), None);
        assert_eq!(starts_stream(b"GET /ss"), None);
        assert_eq!(starts_stream(b"GET /sse?channel=a HTTP/1.1"), Some(true));
        assert_eq!(starts_stream(b"GET /sse HTTP/1.1"), Some(true));
        assert_eq!(starts_stream(b"GET /sse/command"), Some(false));
        assert_eq!(starts_stream(b"GET /ws?token=x"), Some(false));
        assert_eq!(starts_stream(b"POST /sse"), Some(false));
    }

    fn future_size<F: std::future::Future>(_: &dyn Fn() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle stream's task holds, like a WebSocket session's task
    /// (`http::server`'s bound): the session's future and a pointer. Over
    /// 400 bytes, tokio's task cell leaves jemalloc's 512-byte class.
    const STREAM_TASK_BOUND: usize = 400;

    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn the_stream_task_stays_small() {
        let size = future_size(&|| serve_raw(unreachable!(), unreachable!(), unreachable!()));
        assert!(
            size <= STREAM_TASK_BOUND,
            "a stream's task future is {size} bytes, over {STREAM_TASK_BOUND}"
        );
    }
}
