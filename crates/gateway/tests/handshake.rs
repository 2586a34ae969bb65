//! Handshake refusals over real sockets: each with its exact status and body,
//! and the accepted paths (query token, bearer header, RS256, ES256, origins).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, IntoClientRequest};

/// Connects and expects a refusal: (status, body, Retry-After).
async fn refused(request: http::Request<()>) -> (u16, Value, Option<String>) {
    match within(Connection::connect_request(request)).await {
        Err(ClientError::Refused {
            status,
            body,
            retry_after,
        }) => (status, body, retry_after),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}

async fn refused_token(gateway: &Gateway, token: &str) -> (u16, Value) {
    let (status, body, _) = refused(gateway.ws_url(token).into_client_request().unwrap()).await;
    (status, body)
}

fn unauthorized(message: &str) -> (u16, Value) {
    (401, json!({ "error": "unauthorized", "message": message }))
}

#[tokio::test]
async fn each_bad_token_is_refused_with_401_and_logged() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_JWT_AUDIENCE", "switchboard")
        .env("SWITCHBOARD_JWT_ISSUER", "https://auth.example.com")
        .env("SWITCHBOARD_JWT_LEEWAY", "0s")
        .start();
    let good = || {
        let mut c = claims("alice");
        c["aud"] = json!("switchboard");
        c["iss"] = json!("https://auth.example.com");
        c
    };
    let (mut conn, _) = gateway.connect_token(&sign(&good())).await;
    conn.ping().await.unwrap();

    let url = format!("ws://{}/ws", gateway.addr);
    let (status, body, _) = refused(url.into_client_request().unwrap()).await;
    assert_eq!(
        (status, body),
        unauthorized("missing token: pass ?token= or Authorization: Bearer")
    );

    assert_eq!(
        refused_token(&gateway, "not.a.jwt").await,
        unauthorized("malformed token")
    );

    let forged = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        &good(),
    );
    assert_eq!(
        refused_token(&gateway, &forged).await,
        unauthorized("token signature does not verify")
    );

    let mut expired = good();
    expired["exp"] = json!(now() - 10);
    assert_eq!(
        refused_token(&gateway, &sign(&expired)).await,
        unauthorized("token has expired")
    );

    let mut early = good();
    early["nbf"] = json!(now() + 600);
    assert_eq!(
        refused_token(&gateway, &sign(&early)).await,
        unauthorized("token is not valid yet")
    );

    let mut audience = good();
    audience["aud"] = json!("someone-else");
    assert_eq!(
        refused_token(&gateway, &sign(&audience)).await,
        unauthorized("token audience is not accepted")
    );

    let mut issuer = good();
    issuer["iss"] = json!("https://evil.example.com");
    assert_eq!(
        refused_token(&gateway, &sign(&issuer)).await,
        unauthorized("token issuer is not accepted")
    );

    let mut no_exp = good();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        refused_token(&gateway, &sign(&no_exp)).await,
        unauthorized("token lacks the required claim \"exp\"")
    );

    let mut no_aud = good();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        refused_token(&gateway, &sign(&no_aud)).await,
        unauthorized("token lacks the required claim \"aud\"")
    );

    let mut no_iss = good();
    no_iss.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        refused_token(&gateway, &sign(&no_iss)).await,
        unauthorized("token lacks the required claim \"iss\"")
    );

    let mut no_sub = good();
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        refused_token(&gateway, &sign(&no_sub)).await,
        unauthorized("token lacks the required claim \"sub\"")
    );

    // `alg: none`: a well-formed unsigned token.
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good())
    );
    assert_eq!(
        refused_token(&gateway, &none).await,
        unauthorized("token algorithm is not accepted")
    );

    // RS256 is not configured on this node.
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap();
    let rs256 = sign_with(Algorithm::RS256, &rsa, &good());
    assert_eq!(
        refused_token(&gateway, &rs256).await,
        unauthorized("token algorithm is not accepted")
    );

    let entry = gateway
        .wait_log(|e| e["message"] == "handshake refused" && e["reason"] == "bad_signature")
        .await;
    assert!(
        entry["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{entry}"
    );
    let logs = serde_json::to_string(&gateway.logs()).unwrap();
    assert!(!logs.contains(&forged), "tokens never reach the log");
}

#[tokio::test]
async fn rs256_node_refuses_hs256_tokens_and_accepts_its_own() {
    let key_file = fixture("rs256-public.pem");
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_JWT_HS256_SECRET", "")
        .env(
            "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
            key_file.to_str().unwrap(),
        )
        .start();
    // Algorithm confusion: an HS256 token "signed" with the public key's PEM.
    let pem = std::fs::read(&key_file).unwrap();
    let confused = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem),
        &claims("mallory"),
    );
    assert_eq!(
        refused_token(&gateway, &confused).await,
        unauthorized("token algorithm is not accepted")
    );
    assert_eq!(
        refused_token(&gateway, &token("alice")).await,
        unauthorized("token algorithm is not accepted")
    );

    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap();
    let (_, welcome) = gateway
        .connect_token(&sign_with(Algorithm::RS256, &rsa, &claims("alice")))
        .await;
    assert_eq!(welcome.user, "alice");
}

#[tokio::test]
async fn es256_node_accepts_es256_tokens() {
    let gateway = Gateway::builder()
        .env(
            "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
            fixture("es256-public.pem").to_str().unwrap(),
        )
        .start();
    let ec =
        EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pem")).unwrap()).unwrap();
    let (_, welcome) = gateway
        .connect_token(&sign_with(Algorithm::ES256, &ec, &claims("bob")))
        .await;
    assert_eq!(welcome.user, "bob");
    // The HS256 secret still works beside the public key.
    gateway.connect("carol").await;
}

#[tokio::test]
async fn origins_are_checked_and_bearer_header_works() {
    let gateway = Gateway::builder()
        .env(
            "SWITCHBOARD_ALLOWED_ORIGINS",
            "https://app.example.com, https://*.example.org",
        )
        .start();
    let with = |origin: Option<&str>, bearer: bool| {
        let url = if bearer {
            format!("ws://{}/ws", gateway.addr)
        } else {
            gateway.ws_url(&token("alice"))
        };
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        if bearer {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {}", token("alice")).parse().unwrap(),
            );
        }
        request
    };
    let (status, body, _) = refused(with(Some("https://evil.example.net"), false)).await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({ "error": "forbidden_origin", "message": "origin is not allowed" })
        )
    );
    let (status, _, _) = refused(with(Some("https://example.org"), false)).await;
    assert_eq!(status, 403, "a wildcard does not cover the apex");

    for origin in [
        Some("https://app.example.com"),
        Some("https://eu.example.org"),
        None,
    ] {
        let (_, welcome) = within(Connection::connect_request(with(origin, false)))
            .await
            .unwrap();
        assert_eq!(welcome.user, "alice");
    }
    let (_, welcome) = within(Connection::connect_request(with(None, true)))
        .await
        .unwrap();
    assert_eq!(welcome.user, "alice", "Authorization: Bearer is accepted");
    gateway
        .wait_log(|e| e["message"] == "handshake refused" && e["reason"] == "origin")
        .await;
}

#[tokio::test]
async fn full_node_answers_503_with_retry_after() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MAX_CONNECTIONS", "2")
        .start();
    let (_a, _) = gateway.connect("a").await;
    let (_b, _) = gateway.connect("b").await;
    let (status, body, retry) =
        refused(gateway.ws_url(&token("c")).into_client_request().unwrap()).await;
    assert_eq!(
        (status, body, retry.as_deref()),
        (
            503,
            json!({ "error": "unavailable", "message": "node is at its connection limit" }),
            Some("1")
        )
    );
    drop(_a);
    // The slot frees once the first session has ended.
    let mut attempts = 0;
    loop {
        match within(Connection::connect(&gateway.ws_url(&token("c")))).await {
            Ok(_) => break,
            Err(ClientError::Refused { status: 503, .. }) if attempts < 100 => attempts += 1,
            Err(other) => panic!("{other}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plain_http_routes() {
    let gateway = Gateway::start();
    let (status, _, body) = http_get(gateway.addr, "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, body) = http_get(gateway.addr, "/readyz", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ready"
    );
    let (status, _, body) = http_get(gateway.addr, "/ws", &[]).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            400,
            json!({ "error": "bad_request", "message": "expected a WebSocket upgrade (GET with Upgrade: websocket)" })
        )
    );
    let (status, _, _) = http_get(gateway.addr, "/nope", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_probe_tells_a_browser_why_its_handshake_would_fail() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_ALLOWED_ORIGINS", "https://app.example.com")
        .env("SWITCHBOARD_JWT_LEEWAY", "0s")
        .start();
    let probe = |token: &str| format!("/ws?probe=1&token={token}");
    let good = token("ann");

    let (status, headers, body) = http_get(gateway.addr, &probe(&good), &[]).await;
    assert_eq!((status, body.as_str()), (204, ""), "would be admitted");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let (status, _, _) = http_get(
        gateway.addr,
        &probe(&good),
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(status, 204);

    let (status, headers, body) = http_get(
        gateway.addr,
        &probe(&good),
        &[("Origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            403,
            json!({ "error": "forbidden_origin", "message": "origin is not allowed" })
        )
    );
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["access-control-expose-headers"], "Retry-After");

    // A same-origin fetch carries no Origin: the page names it in the query.
    let (status, _, _) = http_get(
        gateway.addr,
        &format!("{}&origin=https%3A%2F%2Fevil.example.com", probe(&good)),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = http_get(
        gateway.addr,
        &format!("{}&origin=https%3A%2F%2Fapp.example.com", probe(&good)),
        &[],
    )
    .await;
    assert_eq!(status, 204);

    let expired = sign(&json!({ "sub": "ann", "exp": now() - 10 }));
    let (status, _, body) = http_get(gateway.addr, &probe(&expired), &[]).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        unauthorized("token has expired")
    );
    let (status, _, body) = http_get(gateway.addr, "/ws?probe=1", &[]).await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["error"].clone()
        ),
        (401, json!("unauthorized"))
    );
    // Without probe=1 a plain GET is still not a WebSocket.
    let (status, _, _) = http_get(gateway.addr, &format!("/ws?token={good}"), &[]).await;
    assert_eq!(status, 400);
    // A probe opens no session.
    let (_, _, body) = http_get(gateway.addr, "/readyz", &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["sessions"], 0);
}

#[tokio::test]
async fn probes_take_from_the_address_bucket_like_handshakes() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_CONN_RATE_PER_IP", "1")
        .env("SWITCHBOARD_CONN_BURST_PER_IP", "2")
        .start();
    let path = format!("/ws?probe=1&token={}", token("ann"));
    for _ in 0..2 {
        assert_eq!(http_get(gateway.addr, &path, &[]).await.0, 204);
    }
    let (status, headers, body) = http_get(gateway.addr, &path, &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn the_demo_page_is_served_only_when_configured() {
    let off = Gateway::start();
    let (status, _, _) = http_get(off.addr, "/demo/", &[]).await;
    assert_eq!(status, 404, "off by default");

    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/js");
    let on = Gateway::builder()
        .env("SWITCHBOARD_DEMO_DIR", sdk.to_str().unwrap())
        .start();
    let (status, headers, body) = http_get(on.addr, "/demo/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        body,
        std::fs::read_to_string(sdk.join("demo/index.html")).unwrap()
    );
    let (status, headers, body) = http_get(on.addr, "/demo/switchboard.js", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(
        body,
        std::fs::read_to_string(sdk.join("src/switchboard.js")).unwrap()
    );
    let (status, headers, _) = http_get(on.addr, "/demo", &[]).await;
    assert_eq!((status, headers["location"].as_str()), (308, "/demo/"));
    for path in [
        "/demo/../Cargo.toml",
        "/demo/%2e%2e/package.json",
        "/demo/nothing.js",
        "/demo/x.rs",
    ] {
        assert_eq!(http_get(on.addr, path, &[]).await.0, 404, "{path}");
    }
}
