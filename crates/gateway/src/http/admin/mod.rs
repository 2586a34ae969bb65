//! The admin UI under `/admin/`: an operator's view of the cluster's
//! nodes, its channels, who is in them and what flows through them, with
//! a publish box and a disconnect button. Off unless `admin.enabled`:
//! then every `/admin` path is the ordinary 404, so a node without it
//! does not even reveal that it could have one.
//!
//! This module routes and guards; the parts are beside it: `auth` (login,
//! the session cookie, CSRF and `Origin` checks, the audit log), `assets`
//! (the embedded page), `api` (channels, a channel, publish and
//! disconnect, through the server API's own functions), and the cluster
//! pages `nodes`, `tail` and `users`. Every `/admin/api/*` request needs a
//! valid session cookie (401 before anything else); every state-changing
//! one (`POST`) also the session's CSRF token and, when it has an
//! `Origin`, the node's own. Every response under `/admin` carries a
//! strict Content-Security-Policy and the headers that keep the page out
//! of frames and sniffing.
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin` | 308 to `/admin/` |
//! | `GET /admin/`, `/admin/app.js`, `/admin/app.css` | the embedded files |
//! | `POST /admin/login` `{"key"}` | 204 + the session cookie; 401, 429, 400 |
//! | `POST /admin/logout` | 204, the cookie cleared |
//! | `GET /admin/api/session` | `{"csrf", "expires_in"}` |
//! | `GET /admin/api/nodes` | the cluster's nodes (`nodes`) |
//! | `GET /admin/api/channels?prefix=&cursor=&limit=` | `GET /api/channels`'s answer |
//! | `GET /admin/api/channel?name=` | counts, presence, history window |
//! | `GET /admin/api/tail?channel=` | the channel's messages as server-sent events (`tail`) |
//! | `POST /admin/api/publish` `{"channel", "data"}` | `POST /api/publish`'s answer |
//! | `GET /admin/api/user?id=` | a user's connections, cluster-wide (`users`) |
//! | `POST /admin/api/disconnect` `{"user", "code"?, "reason"?}` | `POST /api/disconnect`'s answer |

pub mod api;
pub mod assets;
pub mod auth;
pub mod nodes;
pub mod tail;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http::response::{self, Body};
use crate::node::Node;

/// The page's Content-Security-Policy: its own scripts, styles and
/// images, requests to its own origin, nothing inline, never in a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The headers every `/admin` response carries.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// Whether a path belongs to the admin UI.
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Serves one request under `/admin`.
pub async fn handle(
    node: &Arc<Node>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let Some(admin) = node.config.admin.as_ref() else {
        return response::error(StatusCode::NOT_FOUND, "not_found", "no such route", None);
    };
    let mut response = route(node, admin, request, peer).await;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn not_found() -> Response<Body> {
    response::error(StatusCode::NOT_FOUND, "not_found", "no such route", None)
}

fn method_not_allowed(allowed: Method) -> Response<Body> {
    let mut response = response::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        &format!("use {allowed}"),
        None,
    );
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// The pages under `/admin/api/`, and the method each takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Session,
    Nodes,
    Channels,
    Channel,
    Tail,
    Publish,
    User,
    Disconnect,
}

impl Page {
    fn of(name: &str) -> Option<Page> {
        Some(match name {
            "session" => Page::Session,
            "nodes" => Page::Nodes,
            "channels" => Page::Channels,
            "channel" => Page::Channel,
            "tail" => Page::Tail,
            "publish" => Page::Publish,
            "user" => Page::User,
            "disconnect" => Page::Disconnect,
            _ => return None,
        })
    }

    fn method(self) -> Method {
        match self {
            Page::Publish | Page::Disconnect => Method::POST,
            _ => Method::GET,
        }
    }
}

async fn route(
    node: &Arc<Node>,
    admin: &crate::config::admin::AdminConfig,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let client = node
        .config
        .trusted_proxies
        .client_ip(peer, request.headers());
    let https = auth::is_https(node, peer, request.headers());
    let now = auth::unix_now();
    let Some(rest) = path.strip_prefix("/admin/") else {
        // `/admin` itself: the page lives at `/admin/` (its relative links
        // need the slash).
        let mut response = response::no_content();
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/admin/"));
        return response;
    };
    if let Some(name) = rest.strip_prefix("api/") {
        let session = match auth::session(admin, request.headers(), now) {
            Ok(session) => session,
            Err(refusal) => return refusal.response(),
        };
        let Some(page) = Page::of(name) else {
            return not_found();
        };
        if method != page.method() {
            return method_not_allowed(page.method());
        }
        if method == Method::POST {
            let checked = auth::check_origin(request.headers(), https)
                .and_then(|()| auth::check_csrf(&admin.key, &session, request.headers()));
            if let Err(forbidden) = checked {
                return forbidden.response();
            }
        }
        let query = request.uri().query().unwrap_or("").to_owned();
        return match page {
            Page::Session => auth::describe(admin, &session, now),
            Page::Nodes => nodes::nodes(node).await,
            Page::Channels => api::channels(node, &query).await,
            Page::Channel => api::channel(node, &query).await,
            Page::Tail => tail::tail(node, &query).await,
            Page::Publish => api::publish(node, request, &session, client).await,
            Page::User => users::user(node, &query).await,
            Page::Disconnect => api::disconnect(node, request, &session, client).await,
        };
    }
    match (rest, &method) {
        ("login", &Method::POST) => auth::login(node, admin, request, client, https).await,
        ("logout", &Method::POST) => auth::logout(admin, request.headers(), client, https, now),
        ("login" | "logout", _) => method_not_allowed(Method::POST),
        (name, method) => match assets::file(name) {
            Some((bytes, kind)) if method == Method::GET => assets::serve(bytes, kind),
            Some(_) => method_not_allowed(Method::GET),
            None => not_found(),
        },
    }
}
