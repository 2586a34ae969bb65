//! The WebSocket handshake, decided before the upgrade: a valid upgrade
//! request, the client address's connection rate and cap, a free connection
//! slot, an allowed `Origin`, a verified token, the user's connection cap.
//! Cheap checks run first so a flood of bad requests costs little: no JWT
//! work happens for an address over its limits. A refusal is a plain HTTP
//! response with the contract's JSON body, and is logged with the peer and
//! client addresses. [`probe`] runs the same checks for a client that
//! cannot see why its handshake failed (a browser).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::{AuthError, Claims};
use crate::compression;
use crate::http::response::{self, Body};
use crate::limits::Limited;
use crate::metrics;
use crate::metrics::formats::Format;
use crate::node::Node;
use crate::presence::ConnectionId;
use crate::session::events::parse_event_id;
use crate::session::formats::Mode;
use crate::session::{self, Admission};
use switchboard_protocol::{ChannelName, Position};

/// A client must send its request headers within this time.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handshake was refused.
/// The refusal of a `Sec-WebSocket-Protocol` that names none of ours.
pub const UNSUPPORTED_SUBPROTOCOL: &str =
    "unsupported subprotocol; this server speaks switchboard.json and switchboard.msgpack";

#[derive(Debug, Clone, PartialEq, Eq)]

pub enum Refusal {
    NotWebSocket(&'static str),
    /// `Sec-WebSocket-Protocol` names none of ours.
    Subprotocol,
    /// A stream's request names bad channels or a bad `Last-Event-ID`.
    BadStream(String),
    Unavailable(&'static str),
    ForbiddenOrigin,
    Unauthorized(AuthError),
    Limited(Limited),
}

impl Refusal {
    /// The stable reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotWebSocket(_) => "not_websocket",
            Refusal::Subprotocol => "subprotocol",
            Refusal::BadStream(_) => "bad_stream",
            Refusal::Unavailable(reason) => reason,
            Refusal::ForbiddenOrigin => "origin",
            Refusal::Unauthorized(error) => error.reason(),
            Refusal::Limited(limited) => limited.reason(),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        match self {
            Refusal::NotWebSocket(message) => {
                response::error(StatusCode::BAD_REQUEST, "bad_request", message, None)
            }
            Refusal::Subprotocol => response::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                UNSUPPORTED_SUBPROTOCOL,
                None,
            ),
            Refusal::BadStream(message) => {
                response::error(StatusCode::BAD_REQUEST, "bad_request", &message, None)
            }
            Refusal::Unavailable(reason) => response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                if reason == "draining" {
                    "node is draining; reconnect to another node"
                } else {
                    "node is at its connection limit"
                },
                Some(response::RETRY_AFTER_SECS),
            ),
            Refusal::ForbiddenOrigin => response::error(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "origin is not allowed",
                None,
            ),
            Refusal::Unauthorized(error) => response::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &error.to_string(),
                None,
            ),
            Refusal::Limited(limited) => response::error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &limited.message(),
                Some(limited.retry_after_secs()),
            ),
        }
    }
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The token from `?token=` or, failing that, `Authorization: Bearer`.
pub fn token_from(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(query) = query {
        if let Some((_, token)) =
            form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token")
        {
            return Some(token.into_owned());
        }
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Decides whether a `/ws` request may be upgraded.
pub fn admit(
    node: &Node,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> Result<Admission, Refusal> {
    if node.is_draining() {
        return Err(Refusal::Unavailable("draining"));
    }
    if method != Method::GET
        || !header_is(headers, header::CONNECTION, "upgrade")
        || !header_is(headers, header::UPGRADE, "websocket")
    {
        return Err(Refusal::NotWebSocket(
            "expected a WebSocket upgrade (GET with Upgrade: websocket)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Refusal::NotWebSocket(
            "unsupported Sec-WebSocket-Version; expected 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Refusal::NotWebSocket("missing Sec-WebSocket-Key"))?;
    let accept_key = derive_accept_key(key.as_bytes());
    let batch = batch_from(query)?;
    let format = format_from(headers)?;
    let mut admission = admit_client(node, query, headers, client_ip, accept_key, batch)?;
    let extension = node
        .config
        .session
        .deflate
        .then(|| {
            compression::extension::negotiate(headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS))
        })
        .flatten();
    let mode = Mode {
        format: format.unwrap_or_default(),
        deflate: extension.is_some(),
    };
    admission.extension = extension;
    // A batch joins frames per connection: only plain JSON text has them.
    admission.batch &= !mode.whole_frames();
    admission.mode = mode;
    admission.subprotocol = format.is_some();
    Ok(admission)
}

/// The subprotocols this server speaks, as a client names them.
pub const SUBPROTOCOLS: [(&str, Format); 2] = [
    ("switchboard.json", Format::Json),
    ("switchboard.msgpack", Format::Msgpack),
];

/// The name of a format's subprotocol, for the 101.
pub fn subprotocol_name(format: Format) -> &'static str {
    SUBPROTOCOLS
        .iter()
        .find(|(_, f)| *f == format)
        .map_or("switchboard.json", |(name, _)| name)
}

/// The format a client's `Sec-WebSocket-Protocol` asks for: the first of
/// ours in its order; none when it names no subprotocol; refused when it
/// names only others (a browser would fail the connection anyway when the
/// 101 names none of them).
fn format_from(headers: &HeaderMap) -> Result<Option<Format>, Refusal> {
    let mut offered = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else {
            return Err(Refusal::Subprotocol);
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            offered = true;
            if let Some((_, format)) = SUBPROTOCOLS.iter().find(|(ours, _)| *ours == name) {
                return Ok(Some(*format));
            }
        }
    }
    if offered {
        Err(Refusal::Subprotocol)
    } else {
        Ok(None)
    }
}

/// The checks every transport shares, once the request itself is valid:
/// the address's rate and cap, a free slot, the `Origin`, the token, the
/// user's cap.
fn admit_client(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
    client_ip: IpAddr,
    accept_key: String,
    batch: bool,
) -> Result<Admission, Refusal> {
    let address = node
        .limits
        .admit_address(client_ip)
        .map_err(Refusal::Limited)?;

    let permit = std::sync::Arc::clone(&node.capacity)
        .try_acquire_owned()
        .map_err(|_| Refusal::Unavailable("capacity"))?;

    check_origin(node, headers)?;
    let claims = verify_token(node, query, headers)?;
    let slots = node
        .limits
        .admit_user(address, &claims.user)
        .map_err(Refusal::Limited)?;
    Ok(Admission {
        claims,
        permit,
        slots,
        client_ip,
        accept_key,
        batch,
        mode: Mode::default(),
        subprotocol: false,
        extension: None,
    })
}

/// The channels a stream opens with, each with the position to resume it
/// from.
pub type StreamChannels = Vec<(ChannelName, Option<Position>)>;

/// Decides whether a `GET /sse` request opens a stream: the WebSocket
/// handshake's checks in the same order, the upgrade's own checks replaced
/// by the request's channels and `Last-Event-ID` (header, else the
/// `last_event_id` parameter).
pub fn admit_stream(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> Result<(Admission, StreamChannels), Refusal> {
    if node.is_draining() {
        return Err(Refusal::Unavailable("draining"));
    }
    let channels = stream_channels(node, query, headers).map_err(Refusal::BadStream)?;
    let admission = admit_client(node, query, headers, client_ip, String::new(), false)?;
    Ok((admission, channels))
}

/// The request's `channel=` parameters (each once, in order) with their
/// positions from its event id; the error is the 400's message.
fn stream_channels(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<StreamChannels, String> {
    let params = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut channels: Vec<ChannelName> = Vec::new();
    for (key, value) in &params {
        if key != "channel" {
            continue;
        }
        let name =
            ChannelName::parse(value).map_err(|error| format!("channel {value:?}: {error}"))?;
        if !channels.contains(&name) {
            channels.push(name);
        }
    }
    let max = node.config.session.max_channels;
    if channels.len() > max {
        return Err(format!(
            "a stream names at most {max} channels (session.max_channels); this one names {}",
            channels.len()
        ));
    }
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| "Last-Event-ID is not text".to_owned())
        })
        .transpose()?;
    let param = params
        .iter()
        .find(|(k, _)| k == "last_event_id")
        .map(|(_, v)| v.as_ref());
    let positions = match header.or(param) {
        Some(id) => parse_event_id(id, channels.len())?,
        None => vec![None; channels.len()],
    };
    Ok(channels.into_iter().zip(positions).collect())
}

/// `batch=1` (or `true`) asks for batched frames; `0`, `false` or no
/// parameter for one message per frame; anything else is refused.
fn batch_from(query: Option<&str>) -> Result<bool, Refusal> {
    let Some(query) = query else {
        return Ok(false);
    };
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "batch") {
        None => Ok(false),
        Some((_, v)) if v == "1" || v == "true" => Ok(true),
        Some((_, v)) if v == "0" || v == "false" => Ok(false),
        Some(_) => Err(Refusal::NotWebSocket(
            "batch must be 1 (several messages per frame, one per line) or 0",
        )),
    }
}

pub fn check_origin(node: &Node, headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get(header::ORIGIN) {
        Some(origin)
            if !origin
                .to_str()
                .is_ok_and(|o| node.config.allowed_origins.allows(o)) =>
        {
            Err(Refusal::ForbiddenOrigin)
        }
        _ => Ok(()),
    }
}

pub fn verify_token(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Claims, Refusal> {
    let token = token_from(query, headers).ok_or(Refusal::Unauthorized(AuthError::Missing))?;
    node.verifier.verify(&token).map_err(Refusal::Unauthorized)
}

/// Whether a request is a handshake probe: `GET /ws?probe=1` without an
/// upgrade.
pub fn is_probe(method: &Method, query: Option<&str>, headers: &HeaderMap) -> bool {
    method == Method::GET
        && !header_is(headers, header::UPGRADE, "websocket")
        && query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "probe" && v == "1")
        })
}

/// Answers a probe: the checks of an upgrade, in the same order, without
/// holding a slot. Browsers hide the HTTP status of a refused WebSocket
/// handshake, so a client whose connection failed before opening asks this
/// to learn why (a bad token, a forbidden origin, a limit) and reacts
/// rightly instead of retrying blind. A probe costs a token of the address's
/// connection bucket, like a handshake, so it cannot be used to make the
/// node verify JWTs faster than handshakes could. The per-user cap, which
/// needs Redis, is not checked.
pub fn probe(
    node: &Node,
    query: Option<&str>,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> Result<(), Refusal> {
    if node.is_draining() {
        return Err(Refusal::Unavailable("draining"));
    }
    let _address = node
        .limits
        .admit_address(client_ip)
        .map_err(Refusal::Limited)?;
    if node.capacity.available_permits() == 0 {
        return Err(Refusal::Unavailable("capacity"));
    }
    // A browser sends no Origin on a same-origin GET, but always does on the
    // WebSocket handshake itself: the SDK names its page's origin in the
    // query instead. A false one only misleads the client that sent it: a
    // probe admits nothing.
    let named = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "origin")
            .map(|(_, v)| v.into_owned())
    });
    match (headers.get(header::ORIGIN), named) {
        (None, Some(origin)) if !node.config.allowed_origins.allows(&origin) => {
            return Err(Refusal::ForbiddenOrigin);
        }
        _ => check_origin(node, headers)?,
    }
    verify_token(node, query, headers).map(drop)
}

/// Logs, counts and answers a refused handshake.
pub(crate) fn refuse(
    node: &Node,
    peer: SocketAddr,
    client_ip: IpAddr,
    refusal: Refusal,
) -> Response<Body> {
    log_refusal(peer, client_ip, &refusal);
    let reason = refusal.reason();
    let response = refusal.into_response();
    node.metrics
        .refused(metrics::sessions::Refusal::from_status(
            response.status(),
            reason,
        ));
    response
}

/// Numbers an admitted connection and records it in cluster state, under
/// the cluster-wide per-user cap (with Redis away the local cap, already
/// passed, is the check); a refusal is answered as a handshake's.
pub(crate) async fn record(
    node: &Node,
    peer: SocketAddr,
    client_ip: IpAddr,
    admission: session::Admission,
) -> Result<session::Opened, Response<Body>> {
    let id = node.next_session_id();
    let connection_id = ConnectionId::new(&node.instance, id);
    let max_per_user = node.limits.max_connections_per_user();
    match node
        .presence
        .connected(connection_id, &admission.claims.user, max_per_user)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            let refusal = Refusal::Limited(Limited::UserConnections { max: max_per_user });
            return Err(refuse(node, peer, client_ip, refusal));
        }
        Err(error) => tracing::warn!(message = "connection not recorded", %peer, %error),
    }
    node.metrics.accepted();
    Ok(session::Opened {
        id,
        peer,
        admission,
    })
}

/// Forgets a recorded connection whose session never started (the client
/// left before it could).
pub(crate) async fn forget(node: &Node, opened: &session::Opened) {
    let user = &opened.admission.claims.user;
    if let Err(error) = node
        .presence
        .disconnected(ConnectionId::new(&node.instance, opened.id), user)
        .await
    {
        tracing::warn!(message = "connection not forgotten", %error);
    }
}

/// Logs a refusal with the peer and client addresses (never the token).
pub fn log_refusal(peer: SocketAddr, client_ip: IpAddr, refusal: &Refusal) {
    tracing::info!(
        message = "handshake refused",
        peer = %peer,
        client = %client_ip,
        reason = refusal.reason(),
        detail = %match refusal {
            Refusal::Unauthorized(error) => error.to_string(),
            Refusal::NotWebSocket(message) => (*message).to_owned(),
            Refusal::BadStream(message) => message.clone(),
            Refusal::Limited(limited) => limited.message(),
            _ => String::new(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn token_sources() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            token_from(Some("a=1&token=abc%2Bd"), &headers).as_deref(),
            Some("abc+d")
        );
        assert_eq!(token_from(Some("a=1"), &headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(token_from(None, &headers).as_deref(), Some("xyz"));
        assert_eq!(
            token_from(Some("token=q"), &headers).as_deref(),
            Some("q"),
            "the query wins"
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(token_from(None, &headers), None);
    }
}
