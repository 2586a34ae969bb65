//! The HTTP listener: accepts TCP connections, serves `/ws`, `/healthz` and
//! `/readyz` over HTTP/1.1 with hyper, and hands upgraded connections to
//! sessions. The accept loop stops on shutdown; every connection task is
//! tracked so shutdown can wait for them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::broker::Health;
use crate::handshake::{self, Admission};
use crate::node::Node;
use crate::response::{self, Body};
use crate::session;

/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The socket read buffer of a session. Small, because idle connections
/// dominate memory and tungstenite allocates it eagerly; client frames are
/// small commands, and a larger frame reserves its full length anyway.
/// (4 KiB → 1 KiB took an idle connection from ~10.8 KB to ~7.8 KB of RSS.)
const WS_READ_BUFFER: usize = 1024;

/// Accepts connections until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = node.shutdown.cancelled() => break,
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
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(message = "http connection error", %error);
            }
        }
        () = node.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
}

async fn route(node: Arc<Node>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (_, "/ws") => upgrade(node, request, peer),
        (_, path) if path.starts_with("/api/") => crate::api::handle(&node, request, peer).await,
        (&Method::GET, "/healthz") => response::json(StatusCode::OK, &json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => readiness(&node),
        (_, "/healthz" | "/readyz") => response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "use GET",
            None,
        ),
        _ => response::error(StatusCode::NOT_FOUND, "not_found", "no such route", None),
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

fn upgrade(node: Arc<Node>, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let admission = handshake::admit(
        &node,
        request.method(),
        request.uri().query(),
        request.headers(),
    );
    let Admission {
        claims,
        permit,
        accept_key,
    } = match admission {
        Ok(admission) => admission,
        Err(refusal) => {
            handshake::log_refusal(peer, &refusal);
            return refusal.into_response();
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let session_node = Arc::clone(&node);
    node.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let max = session_node.config.session.max_frame_bytes;
                let config = WebSocketConfig::default()
                    .read_buffer_size(WS_READ_BUFFER)
                    .max_message_size(Some(max))
                    .max_frame_size(Some(max));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(session_node, ws, claims, peer, permit).await;
            }
            Err(error) => tracing::debug!(message = "upgrade failed", %peer, %error),
        }
    });
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}
