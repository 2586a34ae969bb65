//! The WebSocket handshake, decided before the upgrade: a valid upgrade
//! request, the client address's connection rate and cap, a free connection
//! slot, an allowed `Origin`, a verified token, the user's connection cap.
//! Cheap checks run first so a flood of bad requests costs little: no JWT
//! work happens for an address over its limits. A refusal is a plain HTTP
//! response with the contract's JSON body, and is logged with the peer and
//! client addresses. [`probe`] runs the same checks for a client that
//! cannot see why its handshake failed (a browser).

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::{AuthError, Claims};
use crate::http::response::{self, Body};
use crate::limits::Limited;
use crate::node::Node;
use crate::session::Admission;

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotWebSocket(&'static str),
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
    })
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

fn check_origin(node: &Node, headers: &HeaderMap) -> Result<(), Refusal> {
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

fn verify_token(node: &Node, query: Option<&str>, headers: &HeaderMap) -> Result<Claims, Refusal> {
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
