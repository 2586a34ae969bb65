//! The HTTP listener: accepts TCP connections, serves `/ws`, `/healthz`,
//! `/readyz` and `/metrics` over HTTP/1.1 with hyper, and hands upgraded
//! connections to sessions. The accept loop stops on shutdown; every
//! connection task is tracked so shutdown can wait for them.
//!
//! The optional metrics listener ([`serve_metrics`]) serves only `/metrics`
//! and `/healthz`, so the metrics can stay on a private address; it keeps
//! answering while the node drains.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

use crate::broker::Health;
use crate::compression::inflating::Inflating;
use crate::http::handshake::{self, forget, record, refuse, HEADER_READ_TIMEOUT};
use crate::http::response::{self, Body};
use crate::metrics;
use crate::node::Node;
use crate::session;
use crate::session::socket::Socket;

/// hyper's connection buffer, which also bounds a request head: a head
/// that does not fit (in practice somewhat over twice this) is refused with
/// 431 before routing. Tokens are at most 8 KiB, and browsers' cookie
/// headers stay well under this.
const HTTP_BUFFER: usize = 16 * 1024;
/// The socket read buffer of a session. Small, because idle connections
/// dominate memory and tungstenite allocates it eagerly; client frames are
/// small commands, and a larger frame reserves its full length anyway.
/// (4 KiB → 1 KiB took an idle connection from ~10.8 KB to ~7.8 KB of RSS;
/// 1 KiB → 128 B saved about another 900 B.) tungstenite reads at most
/// this much per call but grows the buffer to a whole frame's length when
/// a larger frame arrives, so commands of any allowed size still fit.
const WS_READ_BUFFER: usize = 128;

/// Accepts connections until the node has drained: after shutdown starts
/// it keeps answering for the drain window, so probes see `/readyz` 503 and
/// late clients get 503 `unavailable` with `Retry-After` rather than a
/// refused connection, then stops.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let mut backoff = Duration::from_millis(5);
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let drained = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            () = node.shutdown.cancelled(), if stop_at.is_none() => {
                stop_at = Some(tokio::time::Instant::now() + node.config.drain_window);
                // Each session closes with 1012 at its own moment in the
                // window, told through its queue (a session opening after
                // this walk sees the node draining when it registers).
                let window = node.config.drain_window;
                let sessions = node.hub.drain(|| session::drain_delay(window));
                tracing::debug!(message = "draining", sessions, window_ms = window.as_millis() as u64);
                continue;
            }
            () = drained => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let node = Arc::clone(&node);
                let span = tracing::debug_span!("http", %peer);
                node.tasks
                    .clone()
                    .spawn(serve_connection(node, stream, peer).instrument(span));
            }
            Err(error) => {
                // Typically EMFILE: wait for descriptors to free up instead of spinning.
                tracing::warn!(message = "accept failed", %error, backoff_ms = backoff.as_millis() as u64);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracing::info!(message = "stopped accepting connections");
}

async fn serve_connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // A connection whose first request opens a server-sent events stream
    // is served without hyper (see `http::stream`).
    if Box::pin(opens_stream(&stream)).await {
        node.tasks
            .clone()
            .spawn(crate::http::stream::serve_raw(node, stream, peer));
        return;
    }
    let service = {
        let node = Arc::clone(&node);
        service_fn(move |request| {
            let node = Arc::clone(&node);
            async move { Ok::<_, Infallible>(route(node, request, peer).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HTTP_BUFFER)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(message = "http connection error", %error);
            }
        }
        // Requests keep being answered through the drain window (503s and
        // probes), then the connection finishes what it is doing and closes.
        () = async {
            node.shutdown.cancelled().await;
            tokio::time::sleep(node.config.drain_window).await;
        } => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
}

/// Whether the connection's first bytes are a `GET /sse` request line,
/// looked at without taking them off the socket (hyper reads them
/// otherwise). Waits only while the bytes so far could go either way.
async fn opens_stream(stream: &TcpStream) -> bool {
    let mut head = [0u8; 9];
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut head)).await;
        let n = match peeked {
            Ok(Ok(n)) => n,
            // hyper answers (or drops) what is there.
            _ => return false,
        };
        match crate::http::stream::starts_stream(&head[..n]) {
            Some(decided) => return decided,
            // A request line cut into tiny segments: look again shortly
            // (peek would return the same bytes at once).
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}

async fn route(node: Arc<Node>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::OPTIONS, "/sse" | "/sse/command") => {
            crate::http::stream::preflight(&node, request.headers())
        }
        (&Method::GET, "/sse") => crate::http::stream::open_over_hyper(node, request, peer).await,
        (_, "/sse") => response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "use GET",
            None,
        ),
        (_, "/sse/command") => crate::http::stream::command(node, request, peer).await,
        (method, "/ws")
            if handshake::is_probe(method, request.uri().query(), request.headers()) =>
        {
            probe(&node, &request, peer)
        }
        (_, "/ws") => upgrade(node, request, peer).await,
        (&Method::GET, path) if path == "/demo" || path.starts_with("/demo/") => {
            crate::http::demo::serve(&node, path).await
        }
        (_, path) if crate::http::admin::is_admin_path(path) => {
            crate::http::admin::handle(&node, request, peer).await
        }
        (_, path) if path.starts_with("/api/") => {
            crate::http::api::handle(&node, request, peer).await
        }
        (&Method::GET, "/healthz") => response::json(StatusCode::OK, &json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => readiness(&node),
        (&Method::GET, "/metrics") => exposition(&node),
        (_, "/healthz" | "/readyz" | "/metrics") => response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "use GET",
            None,
        ),
        _ => response::error(StatusCode::NOT_FOUND, "not_found", "no such route", None),
    }
}

/// `GET /metrics`: the Prometheus text exposition.
fn exposition(node: &Node) -> Response<Body> {
    node.metrics.set_send_queue_bytes(node.hub.queued_bytes());
    let mut response = Response::new(Body::new(node.metrics.render(node.is_draining()).into()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

/// Serves `/metrics` and `/healthz` on a second listener until the node's
/// background tasks stop (after the sessions are gone).
pub async fn serve_metrics(node: Arc<Node>, listener: TcpListener) {
    let stop = node.background.clone();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(message = "metrics accept failed", %error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let node = Arc::clone(&node);
                async move {
                    let response = match (request.method(), request.uri().path()) {
                        (&Method::GET, "/metrics") => exposition(&node),
                        (&Method::GET, "/healthz") => {
                            response::json(StatusCode::OK, &json!({ "status": "ok" }))
                        }
                        (_, "/metrics" | "/healthz") => response::error(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "bad_request",
                            "use GET",
                            None,
                        ),
                        _ => response::error(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            "this listener serves only /metrics and /healthz",
                            None,
                        ),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(message = "metrics connection error", %error);
            }
        });
    }
}

fn readiness(node: &Node) -> Response<Body> {
    if node.is_draining() {
        return response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "unavailable", "reason": "draining" }),
        );
    }
    match node.broker.health() {
        Health::Ready => response::json(
            StatusCode::OK,
            &json!({ "status": "ready", "broker": node.broker.kind(), "sessions": node.open_sessions() }),
        ),
        Health::NotReady(reason) => response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "unavailable", "reason": reason }),
        ),
    }
}

/// `GET /ws?probe=1`: 204 when an upgrade would be admitted now, else the
/// refusal it would get. Readable from any origin (the body holds only the
/// contract's error code and message), so a page's script can read why.
fn probe(node: &Node, request: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let client_ip = node
        .config
        .trusted_proxies
        .client_ip(peer, request.headers());
    let mut response = match handshake::probe(
        node,
        request.uri().query(),
        request.headers(),
        client_ip,
    ) {
        Ok(()) => response::no_content(),
        Err(refusal) => {
            tracing::debug!(message = "handshake probe refused", %peer, client = %client_ip, reason = refusal.reason());
            refusal.into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    response
}

async fn upgrade(
    node: Arc<Node>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let client_ip = node
        .config
        .trusted_proxies
        .client_ip(peer, request.headers());
    let admission = handshake::admit(
        &node,
        request.method(),
        request.uri().query(),
        request.headers(),
        client_ip,
    );
    let mut admission = match admission {
        Ok(admission) => admission,
        Err(refusal) => {
            return refuse(&node, peer, client_ip, refusal);
        }
    };
    // Taken, not cloned: the session keeps the admission for its lifetime.
    let accept_key = std::mem::take(&mut admission.accept_key);
    let subprotocol = admission
        .subprotocol
        .then(|| handshake::subprotocol_name(admission.mode.format));
    let extension = admission.extension;
    let opened = match record(&node, peer, client_ip, admission).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let pending = Box::new(Pending {
        node: Arc::clone(&node),
        on_upgrade,
        upgraded: None,
        opened,
    });
    node.tasks.spawn(session_task(pending));
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if let Some(name) = subprotocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(name),
        );
    }
    if let Some(extension) = extension {
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(extension),
        );
    }
    response
}

/// The task of one upgraded connection: the session, once the upgrade
/// completes. What it holds while the session runs is a few pointers and
/// the session's idle loop (see the size test below); the session's state
/// is one heap allocation.
pub(crate) async fn session_task(mut pending: Box<Pending>) {
    // Kept in the box rather than in a local, and the session's future
    // awaited as one expression: the task keeps no second copy of the
    // upgraded socket, the WebSocket or the session's future.
    pending.upgraded = Some((&mut pending.on_upgrade).await);
    open_session(pending).await;
}

/// An upgrade under way: what its task needs, in one box.
pub(crate) struct Pending {
    node: Arc<Node>,
    on_upgrade: OnUpgrade,
    upgraded: Option<hyper::Result<Upgraded>>,
    opened: session::Opened,
}

fn open_session(pending: Box<Pending>) -> impl std::future::Future<Output = ()> {
    use futures_util::future::Either;
    let Pending {
        node,
        upgraded,
        opened,
        ..
    } = *pending;
    let mode = opened.admission.mode;
    let upgraded = match upgraded {
        Some(Ok(upgraded)) => Some(TokioIo::new(upgraded)),
        Some(Err(error)) => {
            tracing::debug!(message = "upgrade failed", peer = %opened.peer, %error);
            None
        }
        None => None,
    };
    // A compressed connection's socket reads through the inflating layer:
    // its own session type, so the usual connection carries no trace of it.
    match upgraded {
        Some(io) if mode.deflate => {
            let io = Inflating::new(io, node.config.session.max_frame_bytes);
            let ws = websocket(&node, io).with_mode(mode);
            Either::Left(Either::Right(session::run(node, ws, opened)))
        }
        Some(io) => {
            let ws = websocket(&node, io).with_mode(mode);
            Either::Left(Either::Left(session::run(node, ws, opened)))
        }
        None => Either::Right(Box::pin(async move { forget(&node, &opened).await })),
    }
}

/// The WebSocket over an upgraded connection (made without an await, so
/// the task keeps no room for a constructor's future).
fn websocket<S>(node: &Node, io: S) -> Socket<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let max = node.config.session.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    Socket::new(io, Role::Server, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F: std::future::Future>(_: &dyn Fn() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What every open connection's task holds resident, in bytes: a
    /// pointer to the session's state (one box), its idle `select!` with the
    /// timer, and the batch write's few locals; the handlers are boxed while
    /// they run. It was about 4,350 bytes when the state and every handler
    /// sat in the future. 400 bytes keep tokio's task cell (header, future
    /// and trailer, aligned to 128 bytes) at 512 bytes: grow past it and
    /// every idle connection costs 128 bytes more.
    const SESSION_TASK_BOUND: usize = 400;

    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn the_session_task_stays_small() {
        let size = future_size(&|| session_task(unreachable!()));
        assert!(
            size <= SESSION_TASK_BOUND,
            "the session task's future is {size} bytes, over {SESSION_TASK_BOUND}"
        );
    }
}
