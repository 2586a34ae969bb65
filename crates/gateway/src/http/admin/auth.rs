//! Who may use the admin UI: the login that exchanges the admin key for a
//! session cookie, the cookie's check on every request, the CSRF token and
//! `Origin` check on every state-changing one, the logout, and the audit
//! log of what operators did.
//!
//! The session is stateless, so any node of a cluster with the same key
//! accepts it and nothing is stored: the cookie holds
//! `v1.<expiry unix seconds>.<16 random bytes, hex>.<HMAC-SHA256 hex>`, the
//! HMAC keyed by the admin key over everything before it. The random id
//! names the login in the audit log (the key never appears anywhere but in
//! the login's body). The CSRF token is `HMAC-SHA256(key, "csrf:" +
//! cookie token)`: the page reads it from `GET /admin/api/session` (a
//! cross-site page cannot, the answer is same-origin JSON) and sends it as
//! `X-CSRF-Token`; together with `SameSite=Strict` and the `Origin` check a
//! cross-site form or script gets nowhere.
//!
//! The token and MAC work are pure functions of the key, the token and
//! `now` (unix seconds), read once per request by the caller.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::config::admin::AdminConfig;
use crate::http::api;
use crate::http::response::{self, Body};
use crate::limits::retry_after_secs;
use crate::node::Node;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "sb_admin";
/// The header a state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The token format's version, its first field.
const VERSION: &str = "v1";
/// The most a login body may hold.
const LOGIN_BODY_BYTES: usize = 4 * 1024;

/// Seconds since the Unix epoch, now (0 on a clock before 1970, which
/// refuses every cookie rather than accepting any).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn mac(key: &str) -> HmacSha256 {
    // HMAC takes a key of any length; this never fails.
    <HmacSha256 as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

/// A new session token expiring at `expires` (unix seconds), with a fresh
/// random id.
pub fn issue(key: &str, expires: u64) -> String {
    sign(key, expires, &hex::encode(rand::random::<[u8; 16]>()))
}

/// The token for `expires` and `id` (hex), signed with `key`.
pub fn sign(key: &str, expires: u64, id: &str) -> String {
    let body = format!("{VERSION}.{expires}.{id}");
    let mut mac = mac(key);
    mac.update(body.as_bytes());
    format!("{body}.{}", hex::encode(mac.finalize().into_bytes()))
}

/// The CSRF token that goes with a session token.
pub fn csrf(key: &str, token: &str) -> String {
    let mut mac = mac(key);
    mac.update(b"csrf:");
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A verified session: its token, id and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token: String,
    /// The 16-byte id, hex: what the audit log names the login by.
    pub id: String,
    /// Unix seconds.
    pub expires: u64,
}

/// Why a request has no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoSession {
    /// No cookie, or one this key did not sign.
    Missing,
    /// A cookie this key signed, past its expiry (the session is carried
    /// for a logout, which clears it anyway).
    Expired(Session),
}

impl NoSession {
    pub fn message(&self) -> &'static str {
        match self {
            NoSession::Missing => "log in first",
            NoSession::Expired(_) => "admin session expired; log in again",
        }
    }

    pub fn response(&self) -> Response<Body> {
        response::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            self.message(),
            None,
        )
    }
}

/// Checks a session token: its shape, its MAC (in constant time), then its
/// expiry against `now`.
pub fn verify(key: &str, token: &str, now: u64) -> Result<Session, NoSession> {
    let mut fields = token.split('.');
    let (Some(version), Some(expires), Some(id), Some(tag), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(NoSession::Missing);
    };
    let hex_of = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != VERSION
        || expires.is_empty()
        || expires.len() > 20
        || !expires.bytes().all(|b| b.is_ascii_digit())
        || !hex_of(id, 32)
        || !hex_of(tag, 64)
    {
        return Err(NoSession::Missing);
    }
    let tag = hex::decode(tag).map_err(|_| NoSession::Missing)?;
    let mut mac = mac(key);
    mac.update(format!("{version}.{expires}.{id}").as_bytes());
    mac.verify_slice(&tag).map_err(|_| NoSession::Missing)?;
    let expires: u64 = expires.parse().map_err(|_| NoSession::Missing)?;
    let session = Session {
        token: token.to_owned(),
        id: id.to_owned(),
        expires,
    };
    if now >= expires {
        return Err(NoSession::Expired(session));
    }
    Ok(session)
}

/// The `sb_admin` cookie's value among the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The request's session, from its cookie.
pub fn session(admin: &AdminConfig, headers: &HeaderMap, now: u64) -> Result<Session, NoSession> {
    let token = cookie(headers).ok_or(NoSession::Missing)?;
    verify(&admin.key, token, now)
}

/// Whether the request reached the node over HTTPS: a trusted proxy said
/// so with `X-Forwarded-Proto` (the last value, the one the nearest proxy
/// wrote). Anyone else's header proves nothing.
pub fn is_https(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> bool {
    node.config.trusted_proxies.contains(peer.ip())
        && headers
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .next_back()
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// Why a state-changing request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    CrossOrigin,
    Csrf,
}

impl Forbidden {
    pub fn response(self) -> Response<Body> {
        let message = match self {
            Forbidden::CrossOrigin => "cross-origin request refused",
            Forbidden::Csrf => "missing or wrong CSRF token",
        };
        response::error(StatusCode::FORBIDDEN, "forbidden", message, None)
    }
}

/// A request's `Origin`, when it has one, must be the node's own: the
/// request's `Host`, as `http://` or `https://` (see [`is_https`]).
pub fn check_origin(headers: &HeaderMap, https: bool) -> Result<(), Forbidden> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .ok_or(Forbidden::CrossOrigin)?;
    let scheme = if https { "https://" } else { "http://" };
    let same = origin.to_str().is_ok_and(|origin| {
        origin.len() == scheme.len() + host.len()
            && origin.is_char_boundary(scheme.len())
            && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
            && origin[scheme.len()..].eq_ignore_ascii_case(host)
    });
    if same {
        Ok(())
    } else {
        Err(Forbidden::CrossOrigin)
    }
}

/// The `X-CSRF-Token` must be the session's, compared in constant time.
pub fn check_csrf(key: &str, session: &Session, headers: &HeaderMap) -> Result<(), Forbidden> {
    let expected = csrf(key, &session.token);
    let presented = headers
        .get(CSRF_HEADER)
        .map(|value| value.as_bytes().trim_ascii())
        .ok_or(Forbidden::Csrf)?;
    if api::key_matches(expected.as_bytes(), presented) {
        Ok(())
    } else {
        Err(Forbidden::Csrf)
    }
}

/// The `Set-Cookie` value of a session (`max_age` 0 clears it).
fn set_cookie(value: &str, max_age: u64, https: bool) -> Option<HeaderValue> {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// Logs one admin action at `info`: what, by which login (its id, never
/// the key), from which address, on which channel or user.
pub fn audit(
    action: &str,
    admin: Option<&str>,
    client: IpAddr,
    channel: Option<&str>,
    user: Option<&str>,
) {
    tracing::info!(
        message = "admin action",
        action,
        admin = admin.unwrap_or(""),
        client = %client,
        channel,
        user,
    );
}

/// `POST /admin/login` `{"key": "<admin key>"}`.
pub async fn login(
    node: &Node,
    admin: &AdminConfig,
    request: Request<Incoming>,
    client: IpAddr,
    https: bool,
) -> Response<Body> {
    #[derive(Deserialize)]
    struct LoginBody {
        key: String,
    }

    if let Err(forbidden) = check_origin(request.headers(), https) {
        return forbidden.response();
    }
    let bytes = match api::read_body(request.into_body(), LOGIN_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    // serde's message could quote the body (the key): a fixed one instead.
    let Ok(body) = serde_json::from_slice::<LoginBody>(&bytes) else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "body must be a JSON object {\"key\": \"<admin key>\"}",
            None,
        );
    };
    if let Err(wait) = node.limits.logins.attempt(client) {
        audit("login_failed", None, client, None, None);
        return response::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins from this address; retry later",
            Some(retry_after_secs(wait)),
        );
    }
    if !api::key_matches(admin.key.as_bytes(), body.key.as_bytes()) {
        audit("login_failed", None, client, None, None);
        return response::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong admin key",
            None,
        );
    }
    let ttl = admin.session_ttl.as_secs();
    let token = issue(&admin.key, unix_now() + ttl);
    let id = token.split('.').nth(2).unwrap_or_default();
    audit("login", Some(id), client, None, None);
    let mut response = response::no_content();
    if let Some(cookie) = set_cookie(&token, ttl, https) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `POST /admin/logout`: clears the cookie. An expired session may log out.
pub fn logout(
    admin: &AdminConfig,
    headers: &HeaderMap,
    client: IpAddr,
    https: bool,
    now: u64,
) -> Response<Body> {
    let session = match session(admin, headers, now) {
        Ok(session) | Err(NoSession::Expired(session)) => session,
        Err(missing) => return missing.response(),
    };
    if let Err(forbidden) =
        check_origin(headers, https).and_then(|()| check_csrf(&admin.key, &session, headers))
    {
        return forbidden.response();
    }
    audit("logout", Some(&session.id), client, None, None);
    let mut response = response::no_content();
    if let Some(cookie) = set_cookie("", 0, https) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /admin/api/session`: the CSRF token and the seconds left.
pub fn describe(admin: &AdminConfig, session: &Session, now: u64) -> Response<Body> {
    response::json(
        StatusCode::OK,
        &json!({
            "csrf": csrf(&admin.key, &session.token),
            "expires_in": session.expires.saturating_sub(now),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef";

    #[test]
    fn a_token_is_accepted_until_it_expires() {
        let token = issue(KEY, 1_000);
        let fields: Vec<&str> = token.split('.').collect();
        assert_eq!(fields.len(), 4);
        assert_eq!((fields[0], fields[1]), ("v1", "1000"));
        assert_eq!((fields[2].len(), fields[3].len()), (32, 64));
        let session = verify(KEY, &token, 999).unwrap();
        assert_eq!((session.id.as_str(), session.expires), (fields[2], 1_000));
        assert_eq!(verify(KEY, &token, 1_000), Err(NoSession::Expired(session)));
        assert!(!token.contains(KEY));
    }

    #[test]
    fn a_token_signed_otherwise_or_changed_is_refused() {
        let token = sign(KEY, 1_000, &"ab".repeat(16));
        assert!(verify(KEY, &token, 0).is_ok());
        assert_eq!(
            verify("another key here", &token, 0),
            Err(NoSession::Missing)
        );
        let later = token.replacen(".1000.", ".9000.", 1);
        assert_eq!(verify(KEY, &later, 0), Err(NoSession::Missing));
        for bad in [
            "",
            "v1",
            "v2.1000.x.y",
            &format!("{token}.x"),
            &token.to_uppercase(),
            &token[..token.len() - 1],
        ] {
            assert_eq!(verify(KEY, bad, 0), Err(NoSession::Missing), "{bad}");
        }
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let a = issue(KEY, 1_000);
        let b = issue(KEY, 1_000);
        assert_ne!(csrf(KEY, &a), csrf(KEY, &b));
        assert_eq!(csrf(KEY, &a).len(), 64);
        let session = verify(KEY, &a, 0).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(check_csrf(KEY, &session, &headers), Err(Forbidden::Csrf));
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&csrf(KEY, &b)).unwrap());
        assert_eq!(check_csrf(KEY, &session, &headers), Err(Forbidden::Csrf));
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&csrf(KEY, &a)).unwrap());
        assert_eq!(check_csrf(KEY, &session, &headers), Ok(()));
    }

    #[test]
    fn the_origin_must_be_the_nodes_own() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("admin.example.com"));
        assert_eq!(
            check_origin(&headers, false),
            Ok(()),
            "no Origin: not a browser's cross-site request"
        );
        for (origin, https, ok) in [
            ("http://admin.example.com", false, true),
            ("https://admin.example.com", true, true),
            ("http://admin.example.com", true, false),
            ("https://evil.example", false, false),
            ("http://admin.example.com.evil.example", false, false),
            ("null", false, false),
        ] {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
            assert_eq!(
                check_origin(&headers, https).is_ok(),
                ok,
                "{origin} {https}"
            );
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; sb_admin=v1.1.a.b ; x=y"),
        );
        assert_eq!(cookie(&headers), Some("v1.1.a.b"));
        headers.insert(header::COOKIE, HeaderValue::from_static("sb_admin_x=1"));
        assert_eq!(cookie(&headers), None);
    }
}
