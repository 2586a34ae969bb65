//! `/metrics` against the real binary: real traffic moves the counters by
//! the expected amounts, the exposition passes `promtool check metrics`, the
//! alert rules pass `promtool check rules` and their unit tests (`promtool
//! test rules`), the separate metrics listener
//! serves only metrics, and in cluster mode the Redis metrics follow a real
//! redis-server going away and coming back.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchboard_client::ClientError;

const CHAT: &str = "[namespaces.chat]\npresence = true\n";

/// One scrape, parsed: series (name and sorted labels) → value.
#[derive(Debug)]
struct Scrape {
    text: String,
    series: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match key.split_once('{') {
                None => (key, BTreeMap::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").unwrap();
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            series.insert((name.to_owned(), labels), value.parse().unwrap());
        }
        Scrape { text, series }
    }

    /// A series' value; 0 when absent (a counter not touched yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.series
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.series.keys().any(|(n, _)| n == name)
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http_get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{headers:?}"
    );
    Scrape::parse(body)
}

/// Scrapes until `done` holds (the server updates some metrics just after
/// the client sees the effect, for example when a session ends).
async fn scrape_until(addr: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = scrape(addr).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never matched:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket upgrade request's headers (plus extra ones).
fn upgrade_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    headers.extend_from_slice(extra);
    headers
}

fn promtool() -> Command {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "promtool is not installed: run scripts/install-test-deps.sh (Debian package prometheus)"
    );
    Command::new("promtool")
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[tokio::test]
async fn traffic_moves_the_counters_by_the_expected_amounts() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MAX_CONNECTIONS", "3")
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(CHAT)
        .start();
    let addr = gateway.addr;
    let before = scrape(addr).await;
    assert_eq!(before.get("switchboard_connections_open", &[]), 0.0);
    assert_eq!(before.get("switchboard_connections_max", &[]), 3.0);
    assert_eq!(
        before.get(
            "switchboard_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", "unknown")
            ]
        ),
        1.0
    );

    // Refusals, one of each reason the handshake can give here.
    let bad_token = upgrade_headers(&[]);
    let (status, _, _) = http_get(addr, "/ws?token=not-a-jwt", &bad_token).await;
    assert_eq!(status, 401);
    let (status, _, _) = http_get(addr, "/ws?token=not-a-jwt", &bad_token).await;
    assert_eq!(status, 401);
    let (status, _, _) = http_get(addr, "/ws", &[]).await;
    assert_eq!(status, 400);
    let token = token("eve");
    let path = format!("/ws?token={token}");
    let evil = upgrade_headers(&[("Origin", "https://evil.example")]);
    let (status, _, _) = http_get(addr, &path, &evil).await;
    assert_eq!(status, 403);

    // Three sessions fill the node; a fourth is refused.
    let (mut alice, _) = gateway.connect("alice").await;
    let (mut bob, _) = gateway.connect("bob").await;
    let read_only = sign(&json!({
        "sub": "carol", "exp": now() + 3600, "channels": ["*"], "publish": []
    }));
    let (mut carol, _) = gateway.connect_token(&read_only).await;
    let (status, _, _) = http_get(addr, &path, &upgrade_headers(&[])).await;
    assert_eq!(status, 503);

    within(alice.subscribe("chat:lobby")).await.unwrap();
    within(alice.subscribe("news:today")).await.unwrap();
    within(bob.subscribe("chat:lobby")).await.unwrap();
    within(bob.subscribe("user42:inbox")).await.unwrap();
    for n in 0..3 {
        within(alice.publish("chat:lobby", &json!({ "n": n })))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        within(alice.expect_message()).await.unwrap();
        within(bob.expect_message()).await.unwrap();
    }
    let members = within(bob.presence("chat:lobby")).await.unwrap();
    assert_eq!(members.len(), 2);
    match within(carol.publish("chat:lobby", &json!("no"))).await {
        Err(ClientError::Reply(error)) => assert_eq!(error.code, "forbidden"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    carol.send_text("this is not json").await.unwrap();
    within(carol.next_frame()).await.unwrap();

    let (status, _) = api(
        &gateway,
        "POST",
        "/api/publish",
        r#"{"channel":"news:today","data":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    within(alice.expect_message()).await.unwrap();
    let (status, _) = http_request(addr, "GET", "/api/presence/chat:lobby", &[], "").await;
    assert_eq!(status, 401);

    let m = scrape(addr).await;
    let refused = |reason| {
        m.get(
            "switchboard_connections_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refused("unauthorized"), 2.0);
    assert_eq!(refused("bad_request"), 1.0);
    assert_eq!(refused("forbidden_origin"), 1.0);
    assert_eq!(refused("node_full"), 1.0);
    assert_eq!(refused("draining"), 0.0);
    assert_eq!(m.get("switchboard_connections_accepted_total", &[]), 3.0);
    assert_eq!(m.get("switchboard_connections_open", &[]), 3.0);

    let ns = |name, namespace| m.get(name, &[("namespace", namespace)]);
    assert_eq!(ns("switchboard_subscriptions_open", "chat"), 2.0);
    assert_eq!(ns("switchboard_subscriptions_open", "other"), 2.0);
    assert_eq!(ns("switchboard_channels_local", "chat"), 1.0);
    assert_eq!(ns("switchboard_channels_local", "other"), 2.0);
    // Three client publishes and one server API publish; the memory broker
    // hands each straight back to the hub.
    assert_eq!(ns("switchboard_messages_published_total", "chat"), 3.0);
    assert_eq!(ns("switchboard_messages_published_total", "other"), 1.0);
    assert_eq!(ns("switchboard_messages_received_total", "chat"), 3.0);
    assert_eq!(ns("switchboard_messages_delivered_total", "chat"), 6.0);
    assert_eq!(ns("switchboard_messages_delivered_total", "other"), 1.0);
    let chat_bytes = ns("switchboard_messages_published_bytes_total", "chat");
    assert!(chat_bytes > 3.0 * 30.0, "{chat_bytes}");
    assert_eq!(
        ns("switchboard_messages_received_bytes_total", "chat"),
        chat_bytes
    );
    assert_eq!(
        ns("switchboard_messages_delivered_bytes_total", "chat"),
        2.0 * chat_bytes,
        "one shared frame, counted once per subscriber"
    );
    assert_eq!(ns("switchboard_messages_dropped_total", "chat"), 0.0);
    assert!(!m.text.contains("lobby") && !m.text.contains("alice") && !m.text.contains("user42"));

    assert_eq!(m.get("switchboard_fanout_duration_seconds_count", &[]), 4.0);
    assert_eq!(
        m.get("switchboard_delivery_latency_seconds_count", &[]),
        7.0
    );

    let command = |command, result| {
        m.get(
            "switchboard_commands_total",
            &[("command", command), ("result", result)],
        )
    };
    assert_eq!(command("subscribe", "ok"), 4.0);
    assert_eq!(command("publish", "ok"), 3.0);
    assert_eq!(command("publish", "forbidden"), 1.0);
    assert_eq!(command("presence", "ok"), 1.0);
    assert_eq!(command("invalid", "bad_request"), 1.0);
    // 4 subscribes, 3 publishes, 1 presence by alice and bob; carol's
    // publish and the frame that is not JSON.
    assert_eq!(
        m.get("switchboard_client_messages_received_total", &[]),
        10.0
    );
    assert!(m.get("switchboard_client_messages_received_bytes_total", &[]) > 100.0);

    let presence = |op, result| {
        m.get(
            "switchboard_presence_operations_total",
            &[("op", op), ("result", result)],
        )
    };
    assert_eq!(presence("connected", "ok"), 3.0);
    assert_eq!(
        presence("join", "ok"),
        4.0,
        "every namespace has presence by default"
    );
    assert_eq!(presence("members", "ok"), 1.0);
    assert_eq!(
        m.get(
            "switchboard_presence_operation_duration_seconds_count",
            &[("op", "join")]
        ),
        4.0
    );

    let api_requests = |route, status| {
        m.get(
            "switchboard_api_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(api_requests("publish", "200"), 1.0);
    assert_eq!(api_requests("presence", "401"), 1.0);

    // Closes: one by the client, one by the server API (4003).
    within(bob.close()).await.unwrap();
    let (status, _) = api(&gateway, "POST", "/api/disconnect", r#"{"user":"carol"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(within(carol.wait_closed()).await.unwrap().0, Some(4003));
    let m = scrape_until(addr, |m| m.get("switchboard_connections_open", &[]) == 1.0).await;
    let closed = |code| m.get("switchboard_sessions_closed_total", &[("code", code)]);
    assert_eq!(closed("client"), 1.0);
    assert_eq!(closed("4003"), 1.0);
    assert_eq!(
        m.get("switchboard_subscriptions_open", &[("namespace", "chat")]),
        1.0
    );
    assert_eq!(
        m.get("switchboard_channels_local", &[("namespace", "other")]),
        1.0,
        "bob's inbox has no subscriber left"
    );
    assert_eq!(
        m.get(
            "switchboard_presence_operations_total",
            &[("op", "leave"), ("result", "ok")]
        ),
        2.0
    );
    assert_eq!(
        m.get("switchboard_slow_consumer_disconnects_total", &[]),
        0.0
    );
    assert_eq!(m.get("switchboard_node_draining", &[]), 0.0);
    assert!(m.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(
        !m.has("switchboard_redis_connected"),
        "no Redis in this mode"
    );
}

#[tokio::test]
async fn a_slow_consumer_is_counted() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_SEND_QUEUE", "1")
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let (mut reader, _) = gateway.connect("slow").await;
    within(reader.subscribe("feed")).await.unwrap();
    // The server API publishes without waiting for the reader, which reads
    // nothing meanwhile: its one-frame queue overflows.
    let data = json!({ "pad": "x".repeat(4096) }).to_string();
    let body = format!(r#"{{"channel":"feed","data":{data}}}"#);
    let mut sent = 0;
    let m = loop {
        for _ in 0..50 {
            api(&gateway, "POST", "/api/publish", &body).await;
            sent += 1;
        }
        let m = scrape(gateway.addr).await;
        if m.get(
            "switchboard_messages_dropped_total",
            &[("namespace", "other")],
        ) > 0.0
        {
            break m;
        }
        assert!(sent < 5000, "the queue never overflowed:\n{}", m.text);
    };
    assert_eq!(
        m.get(
            "switchboard_messages_received_total",
            &[("namespace", "other")]
        ),
        sent as f64
    );
    let m = scrape_until(gateway.addr, |m| {
        m.get("switchboard_sessions_closed_total", &[("code", "1013")]) == 1.0
            && m.get("switchboard_connections_open", &[]) == 0.0
    })
    .await;
    assert_eq!(
        m.get("switchboard_slow_consumer_disconnects_total", &[]),
        1.0
    );
    drop(reader);
}

#[tokio::test]
async fn the_exposition_passes_promtool() {
    let redis = Redis::start();
    // With webhooks, so their series are exposed too (nothing listens at
    // the URL: delivery fails and retries, which is what the alerts watch).
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", "gw-lint")
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env(
            "SWITCHBOARD_BACKEND_SECRET",
            "metrics-secret-metrics-secret-0123456789",
        )
        .env(
            "SWITCHBOARD_WEBHOOK_URLS",
            &format!("http://127.0.0.1:{}/hooks", free_port()),
        )
        .toml(CHAT)
        .start();
    wait_ready(&gateway, 200).await;
    let (mut conn, _) = gateway.connect("linter").await;
    within(conn.subscribe("chat:a")).await.unwrap();
    within(conn.publish("chat:a", &json!("x"))).await.unwrap();
    within(conn.expect_message()).await.unwrap();
    api(&gateway, "GET", "/api/presence/chat:a", "").await;
    let (status, _, _) = http_get(gateway.addr, "/ws", &[]).await;
    assert_eq!(status, 400);
    within(conn.close()).await.unwrap();
    let m = scrape_until(gateway.addr, |m| {
        m.has("switchboard_sessions_closed_total")
            && m.has("switchboard_webhook_requests_total")
            && m.has("switchboard_webhook_delivery_seconds_bucket")
    })
    .await;
    assert!(m.has("switchboard_redis_publish_duration_seconds_bucket"));

    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(m.text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        m.text
    );

    // Everything the dashboard and the alerts query is really exposed.
    for file in [
        "deploy/grafana/switchboard.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo_file(file)).unwrap();
        for name in metric_names(&text) {
            assert!(
                m.has(&name),
                "{file} uses {name}, which /metrics does not expose"
            );
        }
    }
}

/// The `switchboard_*` and `process_*` metric names a text mentions, with a
/// histogram's `_bucket`, `_count` and `_sum` series under its own name.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| {
            (word.starts_with("switchboard_") || word.starts_with("process_"))
                && !word.starts_with("switchboard_expr_")
        })
        .map(|word| word.to_owned())
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    names
}

#[test]
fn the_dashboard_is_importable_and_its_queries_parse() {
    let path = repo_file("deploy/grafana/switchboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "switchboard-gateway");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"));
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut count = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
            // Grafana's variables, as Grafana would fill them in.
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            rules.push_str(&format!(
                "      - record: switchboard_expr_{count}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
            count += 1;
        }
    }
    assert!(count > 20, "{count} queries");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    let output = promtool()
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "a dashboard query is not valid PromQL: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let output = promtool()
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check rules {}: {}{}",
        rules.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_fire_as_intended() {
    let tests = repo_file("deploy/prometheus/alerts.test.yml");
    let output = promtool()
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool test rules {}: {}{}",
        tests.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_metrics_listener_serves_only_metrics() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_METRICS_LISTEN", "127.0.0.1:0")
        .start();
    let entry = gateway
        .wait_log(|e| e["message"] == "metrics listening")
        .await;
    let metrics_addr: SocketAddr = entry["addr"].as_str().unwrap().parse().unwrap();
    assert_ne!(metrics_addr, gateway.addr);

    let (_conn, _) = gateway.connect("watched").await;
    let m = scrape(metrics_addr).await;
    assert_eq!(m.get("switchboard_connections_open", &[]), 1.0);
    assert_eq!(m.get("switchboard_connections_accepted_total", &[]), 1.0);
    let (status, _, _) = http_get(metrics_addr, "/healthz", &[]).await;
    assert_eq!(status, 200);
    for path in ["/readyz", "/ws", "/api/publish"] {
        let (status, _, _) = http_get(metrics_addr, path, &upgrade_headers(&[])).await;
        assert_eq!(status, 404, "{path} on the metrics listener");
    }
    // The main listener keeps its /metrics too.
    assert_eq!(
        scrape(gateway.addr)
            .await
            .get("switchboard_connections_open", &[]),
        1.0
    );
}

#[tokio::test]
async fn redis_metrics_follow_the_cluster() {
    let mut redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", CHAT).await;
    let b = cluster_node(&redis, "gw-b", CHAT).await;
    let (mut on_b, _) = b.connect("bob").await;
    within(on_b.subscribe("chat:room")).await.unwrap();
    let (mut on_a, _) = a.connect("alice").await;
    for n in 0..5 {
        within(on_a.publish("chat:room", &json!(n))).await.unwrap();
    }
    for _ in 0..5 {
        within(on_b.expect_message()).await.unwrap();
    }

    let ma = scrape(a.addr).await;
    let mb = scrape(b.addr).await;
    for m in [&ma, &mb] {
        assert_eq!(
            m.get("switchboard_redis_connected", &[("link", "pubsub")]),
            1.0
        );
        assert_eq!(
            m.get("switchboard_redis_connected", &[("link", "commands")]),
            1.0
        );
        assert_eq!(m.get("switchboard_redis_publish_errors_total", &[]), 0.0);
        assert_eq!(m.get("switchboard_redis_pubsub_reconnects_total", &[]), 0.0);
    }
    let chat = [("namespace", "chat")];
    assert_eq!(ma.get("switchboard_messages_published_total", &chat), 5.0);
    assert_eq!(
        ma.get("switchboard_messages_received_total", &chat),
        0.0,
        "A has no subscriber"
    );
    assert_eq!(ma.get("switchboard_channels_local", &chat), 0.0);
    // B's own join event (presence on, join_leave off: no event) is not a
    // publish; B received and delivered A's five.
    assert_eq!(mb.get("switchboard_messages_published_total", &chat), 0.0);
    assert_eq!(mb.get("switchboard_messages_received_total", &chat), 5.0);
    assert_eq!(mb.get("switchboard_messages_delivered_total", &chat), 5.0);
    assert_eq!(mb.get("switchboard_channels_local", &chat), 1.0);
    assert_eq!(
        ma.get("switchboard_redis_publish_duration_seconds_count", &[]),
        5.0
    );
    assert_eq!(
        ma.get("switchboard_messages_published_bytes_total", &chat),
        mb.get("switchboard_messages_received_bytes_total", &chat)
    );

    // Redis goes away: both links read 0 and a publish is an error.
    redis.stop();
    let ma = scrape_until(a.addr, |m| {
        m.get("switchboard_redis_connected", &[("link", "pubsub")]) == 0.0
            && m.get("switchboard_redis_connected", &[("link", "commands")]) == 0.0
    })
    .await;
    assert_eq!(
        ma.get("switchboard_redis_pubsub_reconnects_total", &[]),
        0.0
    );
    match within(on_a.publish("chat:room", &json!("lost"))).await {
        Err(ClientError::Reply(error)) => assert_eq!(error.code, "unavailable"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    let ma = scrape(a.addr).await;
    assert_eq!(ma.get("switchboard_redis_publish_errors_total", &[]), 1.0);
    assert_eq!(
        ma.get("switchboard_redis_publish_duration_seconds_count", &[]),
        6.0
    );
    assert_eq!(ma.get("switchboard_messages_published_total", &chat), 5.0);

    // Redis is back: the node reconnects once and both links read 1.
    redis.restart();
    let ma = scrape_until(a.addr, |m| {
        m.get("switchboard_redis_connected", &[("link", "pubsub")]) == 1.0
            && m.get("switchboard_redis_connected", &[("link", "commands")]) == 1.0
    })
    .await;
    assert_eq!(
        ma.get("switchboard_redis_pubsub_reconnects_total", &[]),
        1.0
    );
}
