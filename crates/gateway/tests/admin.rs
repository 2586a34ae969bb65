//! The admin UI's server side over real sockets: every `/admin` path a 404
//! when it is off; the login (wrong and right key, the cookie's
//! attributes, the per-address bucket of failed logins); the session
//! cookie refused when expired or tampered with; CSRF and `Origin` checks
//! on state-changing requests; publish and disconnect through the admin API
//! answering as the server API does and reaching real WebSocket clients;
//! the security headers; the audit log, which never holds the key.
//!
//! Cookies are signed here independently of the gateway's code, from the
//! contract's format, so a test can forge an expired one with the key.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A gateway with the admin UI on (its own secret) and the server API.
fn admin_gateway() -> Gateway {
    Gateway::builder()
        .env("SWITCHBOARD_ADMIN", "true")
        .env("SWITCHBOARD_ADMIN_SECRET", ADMIN_KEY)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start()
}

/// An HTTP response: status, lower-cased headers, body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    fn assert(&self, status: u16, body: Value) {
        assert_eq!((self.status, self.json()), (status, body), "{:?}", self);
    }

    fn assert_error(&self, status: u16, code: &str, message: &str) {
        self.assert(status, json!({ "error": code, "message": message }));
    }

    /// The security headers every `/admin` response carries.
    fn assert_secured(&self) {
        let header = |name: &str| self.headers.get(name).map(String::as_str);
        assert_eq!(header("content-security-policy"), Some(CSP), "{self:?}");
        assert_eq!(header("x-content-type-options"), Some("nosniff"));
        assert_eq!(header("referrer-policy"), Some("no-referrer"));
        assert_eq!(header("x-frame-options"), Some("DENY"));
    }
}

async fn request(
    gateway: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let (status, headers, body) = http_exchange(gateway.addr, method, path, headers, body).await;
    Reply {
        status,
        headers,
        body,
    }
}

/// The node's own origin, as a browser on its pages sends it.
fn own_origin(gateway: &Gateway) -> String {
    format!("http://{}", gateway.addr)
}

async fn login(gateway: &Gateway, key: &str) -> Reply {
    let body = json!({ "key": key }).to_string();
    request(
        gateway,
        "POST",
        "/admin/login",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await
}

/// Logs in with the right key: the cookie's token.
async fn session_token(gateway: &Gateway) -> String {
    let reply = login(gateway, ADMIN_KEY).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let cookie = &reply.headers["set-cookie"];
    cookie
        .strip_prefix("sb_admin=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned()
}

/// A logged-in operator: the cookie header and the CSRF token.
struct Operator {
    cookie: String,
    csrf: String,
}

async fn log_in(gateway: &Gateway) -> Operator {
    let token = session_token(gateway).await;
    let cookie = format!("sb_admin={token}");
    let reply = request(
        gateway,
        "GET",
        "/admin/api/session",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let csrf = reply.json()["csrf"].as_str().unwrap().to_owned();
    Operator { cookie, csrf }
}

impl Operator {
    async fn get(&self, gateway: &Gateway, path: &str) -> Reply {
        request(gateway, "GET", path, &[("Cookie", &self.cookie)], "").await
    }

    /// A same-origin POST as the page sends it.
    async fn post(&self, gateway: &Gateway, path: &str, body: &str) -> Reply {
        let origin = own_origin(gateway);
        request(
            gateway,
            "POST",
            path,
            &[
                ("Cookie", &self.cookie),
                ("X-CSRF-Token", &self.csrf),
                ("Origin", &origin),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await
    }
}

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// A session token as the contract defines it, signed with `key`.
fn forge(key: &str, expires: u64, id: &str) -> String {
    let body = format!("v1.{expires}.{id}");
    let mac = hmac_hex(key, &[body.as_bytes()]);
    format!("{body}.{mac}")
}

/// No log entry holds the admin key anywhere.
fn assert_key_never_logged(gateway: &Gateway) {
    for entry in gateway.logs() {
        assert!(
            !entry.to_string().contains(ADMIN_KEY),
            "a log entry holds the admin key: {entry}"
        );
    }
}

fn audit_entries(gateway: &Gateway, action: &str) -> Vec<Value> {
    gateway
        .logs()
        .into_iter()
        .filter(|e| e["message"] == "admin action" && e["action"] == action)
        .collect()
}

#[tokio::test]
async fn every_admin_path_is_the_unknown_route_404_when_off() {
    // The API key is set: it would be the admin login if the UI were on.
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let without_date = |mut reply: Reply| {
        reply.headers.remove("date");
        reply
    };
    let unknown = without_date(request(&gateway, "GET", "/no-such-route", &[], "").await);
    assert_eq!(unknown.status, 404);
    let login_body = json!({ "key": API_KEY }).to_string();
    for (method, path, body) in [
        ("GET", "/admin", ""),
        ("GET", "/admin/", ""),
        ("GET", "/admin/app.js", ""),
        ("GET", "/admin/app.css", ""),
        ("GET", "/admin/index.html", ""),
        ("POST", "/admin/login", login_body.as_str()),
        ("POST", "/admin/logout", ""),
        ("GET", "/admin/api/session", ""),
        ("GET", "/admin/api/nodes", ""),
        ("GET", "/admin/api/channels", ""),
        ("GET", "/admin/api/channel?name=chat:a", ""),
        ("GET", "/admin/api/tail?channel=chat:a", ""),
        ("GET", "/admin/api/user?id=alice", ""),
        (
            "POST",
            "/admin/api/publish",
            r#"{"channel":"chat:a","data":1}"#,
        ),
        ("POST", "/admin/api/disconnect", r#"{"user":"alice"}"#),
        ("GET", "/admin/nope", ""),
    ] {
        let reply = without_date(request(&gateway, method, path, &[], body).await);
        assert_eq!(
            (reply.status, &reply.body, &reply.headers),
            (unknown.status, &unknown.body, &unknown.headers),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_wrong_key_then_the_right_one() {
    let gateway = admin_gateway();
    let wrong = login(&gateway, "not-the-admin-key-at-all").await;
    wrong.assert_error(401, "unauthorized", "wrong admin key");
    wrong.assert_secured();
    assert!(!wrong.headers.contains_key("set-cookie"));
    login(&gateway, API_KEY)
        .await
        .assert_error(401, "unauthorized", "wrong admin key");

    let right = login(&gateway, ADMIN_KEY).await;
    assert_eq!((right.status, right.body.as_str()), (204, ""), "{right:?}");
    right.assert_secured();
    let cookie = &right.headers["set-cookie"];
    let (pair, attributes) = cookie.split_once("; ").unwrap();
    assert_eq!(
        attributes, "Path=/admin; HttpOnly; SameSite=Strict; Max-Age=1800",
        "{cookie}"
    );
    let token = pair.strip_prefix("sb_admin=").unwrap();
    let fields: Vec<&str> = token.split('.').collect();
    assert_eq!(fields.len(), 4, "{token}");
    assert_eq!(fields[0], "v1");
    let expires: u64 = fields[1].parse().unwrap();
    let now = now();
    assert!(
        expires > now + 1700 && expires <= now + 1801,
        "{expires} vs {now}"
    );
    assert_eq!(fields[2].len(), 32);
    assert_eq!(
        fields[3],
        hmac_hex(
            ADMIN_KEY,
            &[format!("v1.{}.{}", fields[1], fields[2]).as_bytes()]
        ),
        "the MAC is HMAC-SHA256(key, the rest)"
    );

    // The session answers the CSRF token the contract defines.
    let cookie_header = format!("sb_admin={token}");
    let session = request(
        &gateway,
        "GET",
        "/admin/api/session",
        &[("Cookie", &cookie_header)],
        "",
    )
    .await;
    assert_eq!(session.status, 200, "{session:?}");
    session.assert_secured();
    assert_eq!(session.headers["cache-control"], "no-store");
    let body = session.json();
    assert_eq!(
        body["csrf"],
        json!(hmac_hex(ADMIN_KEY, &[b"csrf:", token.as_bytes()]))
    );
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((1700..=1800).contains(&expires_in), "{body}");

    // A body that is not {"key": string}.
    for bad in ["", "{}", r#"{"key":1}"#, "[]", "key"] {
        let reply = request(&gateway, "POST", "/admin/login", &[], bad).await;
        assert_eq!(
            (reply.status, &reply.json()["error"]),
            (400, &json!("bad_request")),
            "{bad}"
        );
    }
    // A login from another site's page (a login CSRF).
    let body = json!({ "key": ADMIN_KEY }).to_string();
    request(
        &gateway,
        "POST",
        "/admin/login",
        &[("Origin", "https://evil.example")],
        &body,
    )
    .await
    .assert_error(403, "forbidden", "cross-origin request refused");

    // Logging out clears the cookie.
    let operator = log_in(&gateway).await;
    let out = operator.post(&gateway, "/admin/logout", "").await;
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(
        out.headers["set-cookie"],
        "sb_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"
    );

    let logins = audit_entries(&gateway, "login");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert_eq!(
        logins[0]["admin"],
        json!(fields[2]),
        "named by the token's id"
    );
    assert_eq!(logins[0]["client"], "127.0.0.1");
    assert_eq!(audit_entries(&gateway, "login_failed").len(), 2);
    assert_eq!(audit_entries(&gateway, "logout").len(), 1);
    assert_key_never_logged(&gateway);
}

#[tokio::test]
async fn the_sixth_failed_login_from_one_address_within_a_minute_is_429() {
    let gateway = admin_gateway();
    for attempt in 1..=5 {
        let reply = login(&gateway, &format!("wrong guess number {attempt}")).await;
        reply.assert_error(401, "unauthorized", "wrong admin key");
    }
    let sixth = login(&gateway, "wrong guess number 6").await;
    sixth.assert_error(
        429,
        "rate_limited",
        "too many failed logins from this address; retry later",
    );
    sixth.assert_secured();
    let retry_after: u64 = sixth.headers["retry-after"].parse().unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    // The right key is refused too while the bucket is empty: a 429 that
    // a right guess escaped would give the guess away.
    login(&gateway, ADMIN_KEY).await.assert_error(
        429,
        "rate_limited",
        "too many failed logins from this address; retry later",
    );
    assert_eq!(audit_entries(&gateway, "login_failed").len(), 7);
    assert_key_never_logged(&gateway);
}

#[tokio::test]
async fn an_expired_or_tampered_cookie_is_refused() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_ADMIN", "true")
        .env("SWITCHBOARD_ADMIN_SECRET", ADMIN_KEY)
        .env("SWITCHBOARD_ADMIN_SESSION_TTL", "1m")
        .start();
    let token = session_token(&gateway).await;
    let get = |cookie: String| {
        let gateway = &gateway;
        async move {
            request(
                gateway,
                "GET",
                "/admin/api/session",
                &[("Cookie", &cookie)],
                "",
            )
            .await
        }
    };
    let fine = get(format!("sb_admin={token}")).await;
    assert_eq!(fine.status, 200, "{fine:?}");
    let expires_in = fine.json()["expires_in"].as_u64().unwrap();
    assert!(
        (1..=60).contains(&expires_in),
        "the TTL of 1m: {expires_in}"
    );

    // Signed with the key, expired a second ago.
    let id = "0123456789abcdef0123456789abcdef";
    let expired = get(format!("sb_admin={}", forge(ADMIN_KEY, now() - 1, id))).await;
    expired.assert_error(401, "unauthorized", "admin session expired; log in again");
    expired.assert_secured();
    // Still valid for a while: accepted.
    let valid = get(format!("sb_admin={}", forge(ADMIN_KEY, now() + 30, id))).await;
    assert_eq!(valid.status, 200, "{valid:?}");

    let fields: Vec<&str> = token.split('.').collect();
    let later = format!("v1.{}.{}.{}", now() + 3600, fields[2], fields[3]);
    let flipped = {
        let mut mac = fields[3].to_owned();
        let last = if mac.ends_with('0') { "1" } else { "0" };
        mac.replace_range(63.., last);
        format!("v1.{}.{}.{mac}", fields[1], fields[2])
    };
    for tampered in [
        later,
        flipped,
        forge("some-other-key-0123456789", now() + 30, id),
        format!("{token}x"),
        "v1".to_owned(),
        String::new(),
    ] {
        get(format!("sb_admin={tampered}"))
            .await
            .assert_error(401, "unauthorized", "log in first");
    }
    let none = request(&gateway, "GET", "/admin/api/channels", &[], "").await;
    none.assert_error(401, "unauthorized", "log in first");
    none.assert_secured();
    // An unknown page is not revealed before the login either.
    request(&gateway, "GET", "/admin/api/nope", &[], "")
        .await
        .assert_error(401, "unauthorized", "log in first");
}

#[tokio::test]
async fn a_post_needs_the_csrf_token_and_the_nodes_own_origin() {
    let gateway = admin_gateway();
    let operator = log_in(&gateway).await;
    let body = r#"{"channel":"chat:csrf","data":{"n":1}}"#;
    let origin = own_origin(&gateway);
    let zeros = "0".repeat(64);
    let csrf = operator.csrf.as_str();
    let cases: [(Vec<(&str, &str)>, &str); 5] = [
        (vec![], "missing or wrong CSRF token"),
        (
            vec![("X-CSRF-Token", &zeros)],
            "missing or wrong CSRF token",
        ),
        (vec![("X-CSRF-Token", "")], "missing or wrong CSRF token"),
        (
            vec![("X-CSRF-Token", csrf), ("Origin", "https://evil.example")],
            "cross-origin request refused",
        ),
        (
            vec![("X-CSRF-Token", csrf), ("Origin", "null")],
            "cross-origin request refused",
        ),
    ];
    for (extra, message) in &cases {
        for path in [
            "/admin/api/publish",
            "/admin/api/disconnect",
            "/admin/logout",
        ] {
            let mut headers = vec![("Cookie", operator.cookie.as_str())];
            headers.extend_from_slice(extra);
            let reply = request(&gateway, "POST", path, &headers, body).await;
            reply.assert_error(403, "forbidden", message);
            reply.assert_secured();
        }
    }
    // Another session's token is a wrong one.
    let other = log_in(&gateway).await;
    let reply = request(
        &gateway,
        "POST",
        "/admin/api/publish",
        &[
            ("Cookie", &operator.cookie),
            ("X-CSRF-Token", &other.csrf),
            ("Origin", &origin),
        ],
        body,
    )
    .await;
    reply.assert_error(403, "forbidden", "missing or wrong CSRF token");
    assert!(
        audit_entries(&gateway, "publish").is_empty(),
        "nothing refused was done"
    );
    // Without an Origin (not a browser's cross-site request) the token is enough.
    let reply = request(
        &gateway,
        "POST",
        "/admin/api/publish",
        &[
            ("Cookie", &operator.cookie),
            ("X-CSRF-Token", &operator.csrf),
        ],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = operator.post(&gateway, "/admin/api/publish", body).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn publish_through_the_admin_api_answers_as_the_server_api_and_reaches_subscribers() {
    let gateway = admin_gateway();
    let operator = log_in(&gateway).await;
    let (mut alice, _) = gateway.connect("alice").await;
    within(alice.subscribe("chat:room")).await.unwrap();

    let body = r#"{"channel":"chat:room","data":{"text":"<script>alert(1)</script>"}}"#;
    let admin = operator.post(&gateway, "/admin/api/publish", body).await;
    assert_eq!(admin.status, 200, "{admin:?}");
    admin.assert_secured();
    assert_eq!(admin.headers["cache-control"], "no-store");
    let (channel, data) = within(alice.expect_message()).await.unwrap();
    assert_eq!(
        (channel.as_str(), data),
        ("chat:room", json!({ "text": "<script>alert(1)</script>" }))
    );
    let (status, api) = common::api(&gateway, "POST", "/api/publish", body).await;
    assert_eq!(status, 200);
    within(alice.expect_message()).await.unwrap();
    let admin = admin.json();
    assert_eq!(admin["ok"], json!(true), "{admin}");
    assert_eq!(admin["epoch"], api["epoch"], "{admin} {api}");
    assert_eq!(
        (admin["offset"].as_u64(), api["offset"].as_u64()),
        (Some(1), Some(2)),
        "the same stream of offsets: {admin} {api}"
    );

    // The same refusals, word for word.
    for bad in [
        r#"{"channel":"chat:room"}"#,
        r#"{"data":1}"#,
        r#"{"channel":"bad channel","data":1}"#,
        "[1]",
        "{",
    ] {
        let admin = operator.post(&gateway, "/admin/api/publish", bad).await;
        let (status, api) = common::api(&gateway, "POST", "/api/publish", bad).await;
        assert_eq!((admin.status, admin.json()), (status, api), "{bad}");
        assert_eq!(admin.status, 400, "{bad}");
    }

    // The page is a read of the same channel.
    let page = operator
        .get(&gateway, "/admin/api/channel?name=chat%3Aroom")
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    page.assert_secured();
    let page = page.json();
    assert_eq!(
        (&page["channel"], &page["subscribers"], &page["users"]),
        (&json!("chat:room"), &json!(1), &json!(1)),
        "{page}"
    );
    assert_eq!(page["presence"][0]["user"], "alice", "{page}");
    assert_eq!(page["history"]["offset"], 2, "{page}");
    assert_eq!(page["history"]["epoch"], admin["epoch"], "{page}");
    assert_eq!(
        page["history"]["messages"][0],
        json!({ "offset": 1, "data": { "text": "<script>alert(1)</script>" } })
    );
    let (_, listing) = common::api(&gateway, "GET", "/api/channels?prefix=chat", "").await;
    let channels = operator
        .get(&gateway, "/admin/api/channels?prefix=chat")
        .await;
    assert_eq!(channels.json(), listing);
    assert_eq!(listing["channels"][0]["channel"], "chat:room", "{listing}");
    operator
        .get(&gateway, "/admin/api/channel")
        .await
        .assert_error(400, "bad_request", "missing parameter name");

    let published = audit_entries(&gateway, "publish");
    assert_eq!(
        published.len(),
        1,
        "one accepted admin publish: {published:?}"
    );
    assert_eq!(published[0]["channel"], "chat:room");
    assert_eq!(published[0]["client"], "127.0.0.1");
    assert_eq!(published[0]["admin"].as_str().map(str::len), Some(32));
    assert_key_never_logged(&gateway);
}

#[tokio::test]
async fn disconnect_with_a_code_and_reason_closes_with_exactly_that() {
    let gateway = admin_gateway();
    let operator = log_in(&gateway).await;
    let (mut mallory, _) = gateway.connect("mallory").await;
    let (mut second, _) = gateway.connect("mallory").await;
    let (mut bob, _) = gateway.connect("bob").await;
    within(mallory.subscribe("chat:lobby")).await.unwrap();

    let reply = operator
        .post(
            &gateway,
            "/admin/api/disconnect",
            r#"{"user":"mallory","code":4010,"reason":"banned for spam é"}"#,
        )
        .await;
    reply.assert(200, json!({ "ok": true }));
    reply.assert_secured();
    for conn in [&mut mallory, &mut second] {
        let (code, reason) = within(conn.wait_closed()).await.unwrap();
        assert_eq!((code, reason.as_str()), (Some(4010), "banned for spam é"));
    }
    assert_eq!(within(bob.ping()).await.unwrap(), json!({}));

    // The server API takes the same fields, with the same defaults.
    let (mut again, _) = gateway.connect("mallory").await;
    let (status, body) =
        common::api(&gateway, "POST", "/api/disconnect", r#"{"user":"mallory"}"#).await;
    assert_eq!((status, body), (200, json!({ "ok": true })));
    let (code, reason) = within(again.wait_closed()).await.unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (Some(4003), "disconnected by the server")
    );

    let long = "x".repeat(124);
    for (bad, message) in [
        (
            r#"{"user":"bob","code":3999}"#.to_owned(),
            "code must be a whole number from 4000 to 4999",
        ),
        (
            r#"{"user":"bob","code":5000}"#.to_owned(),
            "code must be a whole number from 4000 to 4999",
        ),
        (
            r#"{"user":"bob","code":"4003"}"#.to_owned(),
            "code must be a whole number from 4000 to 4999",
        ),
        (
            format!(r#"{{"user":"bob","reason":"{long}"}}"#),
            "reason must be a string of at most 123 bytes",
        ),
        (
            r#"{"user":"bob","reason":7}"#.to_owned(),
            "reason must be a string of at most 123 bytes",
        ),
    ] {
        let admin = operator.post(&gateway, "/admin/api/disconnect", &bad).await;
        admin.assert_error(400, "bad_request", message);
        let (status, api) = common::api(&gateway, "POST", "/api/disconnect", &bad).await;
        assert_eq!((status, api), (400, admin.json()), "{bad}");
    }
    assert_eq!(within(bob.ping()).await.unwrap(), json!({}), "bob stays");

    let disconnects = audit_entries(&gateway, "disconnect");
    assert_eq!(disconnects.len(), 1, "{disconnects:?}");
    assert_eq!(disconnects[0]["user"], "mallory");
    assert_key_never_logged(&gateway);
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_the_security_headers() {
    let gateway = admin_gateway();
    for (path, content_type, marker) in [
        (
            "/admin/",
            "text/html; charset=utf-8",
            "<script type=\"module\" src=\"app.js\">",
        ),
        ("/admin/app.js", "text/javascript; charset=utf-8", ""),
        ("/admin/app.css", "text/css; charset=utf-8", ""),
    ] {
        let reply = request(&gateway, "GET", path, &[], "").await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.headers["content-type"], content_type, "{path}");
        assert!(!reply.body.is_empty(), "{path}");
        assert!(reply.body.contains(marker), "{path}: {}", reply.body);
        reply.assert_secured();
    }
    for (path, file) in [
        ("/admin/", "index.html"),
        ("/admin/app.js", "app.js"),
        ("/admin/app.css", "app.css"),
    ] {
        let served = request(&gateway, "GET", path, &[], "").await;
        let on_disk = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../admin/dist")
                .join(file),
        )
        .unwrap();
        assert!(served.body == on_disk, "{path} is not admin/dist/{file}");
    }

    let bare = request(&gateway, "GET", "/admin", &[], "").await;
    assert_eq!(
        (
            bare.status,
            bare.headers.get("location").map(String::as_str)
        ),
        (308, Some("/admin/"))
    );
    bare.assert_secured();
    let missing = request(&gateway, "GET", "/admin/secret.txt", &[], "").await;
    missing.assert_error(404, "not_found", "no such route");
    missing.assert_secured();
    let wrong = request(&gateway, "POST", "/admin/app.js", &[], "").await;
    wrong.assert_error(405, "bad_request", "use GET");
    let wrong = request(&gateway, "GET", "/admin/login", &[], "").await;
    wrong.assert_error(405, "bad_request", "use POST");

    let operator = log_in(&gateway).await;
    let reply = operator.get(&gateway, "/admin/api/channels").await;
    reply.assert(200, json!({ "channels": [] }));
    reply.assert_secured();
    assert_eq!(reply.headers["cache-control"], "no-store");
    operator
        .get(&gateway, "/admin/api/publish")
        .await
        .assert_error(405, "bad_request", "use POST");
}

#[tokio::test]
async fn the_api_key_is_the_login_without_a_secret() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_ADMIN", "true")
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    login(&gateway, ADMIN_KEY)
        .await
        .assert_error(401, "unauthorized", "wrong admin key");
    assert_eq!(login(&gateway, API_KEY).await.status, 204);
    for entry in gateway.logs() {
        assert!(!entry.to_string().contains(API_KEY), "{entry}");
    }
}

#[test]
fn admin_settings_that_stop_start_up() {
    /// A configuration file, environment variables, the error printed.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: [Case; 4] = [
        (
            "",
            &[("SWITCHBOARD_ADMIN", "true")],
            "switchboard: invalid configuration: SWITCHBOARD_ADMIN (admin.enabled): admin.enabled needs admin.secret or api_key",
        ),
        (
            "[admin]\nenabled = true\nsecret = \"short\"",
            &[],
            "switchboard: invalid configuration: SWITCHBOARD_ADMIN_SECRET (admin.secret): the secret is 5 bytes; use at least 16",
        ),
        (
            "",
            &[("SWITCHBOARD_ADMIN_SESSION_TTL", "30s")],
            "switchboard: invalid configuration: SWITCHBOARD_ADMIN_SESSION_TTL (admin.session_ttl): 30s is outside 1m..=12h",
        ),
        (
            "",
            &[("SWITCHBOARD_ADMIN", "yes")],
            "switchboard: invalid configuration: SWITCHBOARD_ADMIN: \"yes\" is not true or false",
        ),
    ];
    for (toml, env, expected) in cases {
        assert_eq!(start_up_error(toml, env), (Some(2), expected.to_owned()));
    }
}

#[tokio::test]
async fn a_login_on_one_node_disconnects_a_user_on_every_node_with_its_code_and_reason() {
    let redis = Redis::start();
    let toml = format!("[admin]\nenabled = true\nsecret = \"{ADMIN_KEY}\"\n");
    let a = cluster_node(&redis, "gw-a", &toml).await;
    let b = cluster_node(&redis, "gw-b", &toml).await;
    let (mut on_a, _) = a.connect("mallory").await;
    let (mut on_b, _) = b.connect("mallory").await;
    let (mut other, _) = a.connect("alice").await;

    // The cookie is stateless: node b accepts what node a signed.
    let operator = log_in(&a).await;
    let reply = operator
        .post(
            &b,
            "/admin/api/disconnect",
            r#"{"user":"mallory","code":4020,"reason":"see you"}"#,
        )
        .await;
    reply.assert(200, json!({ "ok": true }));
    for conn in [&mut on_a, &mut on_b] {
        let (code, reason) = within(conn.wait_closed()).await.unwrap();
        assert_eq!((code, reason.as_str()), (Some(4020), "see you"));
    }
    assert_eq!(within(other.ping()).await.unwrap(), json!({}));
    assert_eq!(audit_entries(&b, "disconnect").len(), 1);
    assert_key_never_logged(&a);
    assert_key_never_logged(&b);
}

#[tokio::test]
async fn behind_a_trusted_https_proxy_the_cookie_is_secure_and_the_origin_https() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_ADMIN", "true")
        .env("SWITCHBOARD_ADMIN_SECRET", ADMIN_KEY)
        .env("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.1")
        .start();
    let body = json!({ "key": ADMIN_KEY }).to_string();
    let https = [("X-Forwarded-Proto", "https")];
    let reply = request(&gateway, "POST", "/admin/login", &https, &body).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(
        reply.headers["set-cookie"]
            .ends_with("; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=1800; Secure"),
        "{reply:?}"
    );
    // The page's origin is https:// now; the plain one is another site.
    let http_origin = own_origin(&gateway);
    let https_origin = format!("https://{}", gateway.addr);
    request(
        &gateway,
        "POST",
        "/admin/login",
        &[("X-Forwarded-Proto", "https"), ("Origin", &http_origin)],
        &body,
    )
    .await
    .assert_error(403, "forbidden", "cross-origin request refused");
    let reply = request(
        &gateway,
        "POST",
        "/admin/login",
        &[("X-Forwarded-Proto", "https"), ("Origin", &https_origin)],
        &body,
    )
    .await;
    assert_eq!(reply.status, 204, "{reply:?}");

    // An untrusted peer's header proves nothing.
    let untrusted = Gateway::builder()
        .env("SWITCHBOARD_ADMIN", "true")
        .env("SWITCHBOARD_ADMIN_SECRET", ADMIN_KEY)
        .start();
    let reply = request(&untrusted, "POST", "/admin/login", &https, &body).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(
        reply.headers["set-cookie"].ends_with("Max-Age=1800"),
        "{reply:?}"
    );
}
