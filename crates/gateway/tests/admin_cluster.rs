//! The admin UI's cluster pages on two nodes over a real redis-server,
//! through the real `/admin/api/...` routes after a login: the node list
//! (both nodes with their figures, this node marked, a draining node), the
//! live tail (a message published on the other node arrives; the tail is
//! no member and no subscriber; at most 16 per node; its broker
//! subscription goes with its client) and a user's connections on every
//! node with their channels.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAT: &str = "[namespaces.chat]\npresence = true\njoin_leave = true\n";

/// A cluster node with the admin UI on (the API key is its login).
async fn admin_node(redis: &Redis, node_id: &str, env: &[(&str, &str)]) -> Gateway {
    let mut builder = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", node_id)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_ADMIN", "true")
        .toml(CHAT);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let gateway = builder.start();
    wait_ready(&gateway, 200).await;
    gateway
}

/// An admin session on one node: its cookie and CSRF token.
struct Admin {
    addr: std::net::SocketAddr,
    cookie: String,
    csrf: String,
}

impl Admin {
    /// `POST /admin/login` with the API key, then the session's CSRF token.
    async fn login(gateway: &Gateway) -> Admin {
        let body = json!({ "key": API_KEY }).to_string();
        let (status, headers, answer) = http_exchange(
            gateway.addr,
            "POST",
            "/admin/login",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await;
        assert_eq!(status, 204, "{answer}");
        let cookie = headers["set-cookie"].split(';').next().unwrap().to_owned();
        assert!(cookie.starts_with("sb_admin="), "{cookie}");
        let mut admin = Admin {
            addr: gateway.addr,
            cookie,
            csrf: String::new(),
        };
        let (status, session) = admin.get("/admin/api/session").await;
        assert_eq!(status, 200, "{session}");
        admin.csrf = session["csrf"].as_str().unwrap().to_owned();
        admin
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = http_exchange(
            self.addr,
            "GET",
            path,
            &[("Cookie", &self.cookie), ("X-CSRF-Token", &self.csrf)],
            "",
        )
        .await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// Polls `GET path` until `done` holds for its answer; returns it.
    async fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, answer) = self.get(path).await;
            if status == 200 && done(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{path}: {status} {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a live tail: the socket after the response head, and the head.
    async fn tail(&self, channel: &str) -> (TcpStream, String) {
        let mut socket = TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "GET /admin/api/tail?channel={channel} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
            self.addr, self.cookie
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = within(socket.read(&mut byte)).await.unwrap();
            assert!(
                n > 0,
                "closed in the head: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        (socket, String::from_utf8(head).unwrap())
    }
}

/// Reads a tail's body until `needle` has come; returns what came.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    within(async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the tail ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8(seen).unwrap()
}

/// The node's subscriptions to `channel` in Redis Pub/Sub.
fn pubsub_subscribers(redis: &Redis, channel: &str) -> String {
    let answer = redis.cli(&["PUBSUB", "NUMSUB", &format!("sb:ch:{channel}")]);
    answer.lines().last().unwrap_or("").trim().to_owned()
}

async fn wait_pubsub(redis: &Redis, channel: &str, count: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pubsub_subscribers(redis, channel) != count {
        assert!(
            Instant::now() < deadline,
            "{channel}: {} subscribers, not {count}",
            pubsub_subscribers(redis, channel)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node<'a>(answer: &'a Value, node_id: &str) -> Option<&'a Value> {
    answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == node_id)
}

#[tokio::test]
async fn the_node_list_shows_every_node_and_a_draining_one() {
    let redis = Redis::start();
    let a = admin_node(&redis, "gw-a", &[]).await;
    let mut b = admin_node(&redis, "gw-b", &[("SWITCHBOARD_DRAIN_WINDOW", "4s")]).await;
    let admin = Admin::login(&a).await;

    let (mut on_b, _) = b.connect("bob").await;
    within(on_b.subscribe("news:one")).await.unwrap();
    within(on_b.subscribe("news:two")).await.unwrap();
    let (mut on_a, _) = a.connect("alice").await;
    // Messages flow until both nodes' rates show them: published on A (in),
    // queued to bob on B (out).
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        within(on_a.publish("news:one", &json!({"n": 1})))
            .await
            .unwrap();
        within(on_b.expect_message()).await.unwrap();
        let (status, answer) = admin.get("/admin/api/nodes").await;
        assert_eq!(status, 200, "{answer}");
        let flowing = node(&answer, "gw-a")
            .is_some_and(|n| n["messages_in_per_s"].as_f64() > Some(0.0))
            && node(&answer, "gw-b").is_some_and(|n| {
                n["messages_out_per_s"].as_f64() > Some(0.0) && n["subscriptions"] == 2
            });
        if flowing {
            break answer;
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let nodes = answer["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{answer}");
    let ids: Vec<&str> = nodes
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gw-a", "gw-b"], "sorted by node id");
    let this: Vec<&Value> = nodes.iter().filter(|n| n["this_node"] == true).collect();
    assert_eq!(this.len(), 1, "{answer}");
    assert_eq!(this[0]["node_id"], "gw-a");
    let (now, b_node) = (now(), node(&answer, "gw-b").unwrap());
    for n in nodes {
        let keys: Vec<&str> = n.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "connections",
                "draining",
                "messages_in_per_s",
                "messages_out_per_s",
                "node_id",
                "redis",
                "started_at",
                "subscriptions",
                "this_node",
                "uptime_s",
                "version"
            ],
            "{n}"
        );
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
        let started = n["started_at"].as_u64().unwrap();
        assert!(started <= now && started + 600 > now, "{n}");
        assert!(n["uptime_s"].as_u64().unwrap() <= now - started + 1, "{n}");
        assert_eq!(n["redis"], json!({"mode": "single", "healthy": true}));
        assert_eq!(n["draining"], false);
        assert_eq!(n["connections"], 1, "alice on A, bob on B: {n}");
    }
    assert_eq!(b_node["subscriptions"], 2);
    assert_eq!(node(&answer, "gw-a").unwrap()["subscriptions"], 0);

    // B drains (its client keeps it open through the drain window): A
    // shows it, then B is gone once it exited.
    b.signal("TERM");
    admin
        .wait_for("/admin/api/nodes", |answer| {
            node(answer, "gw-b").is_some_and(|n| n["draining"] == true)
        })
        .await;
    assert!(b.wait_exit(Duration::from_secs(20)).await.success());
    let answer = admin
        .wait_for("/admin/api/nodes", |answer| node(answer, "gw-b").is_none())
        .await;
    assert_eq!(answer["nodes"].as_array().unwrap().len(), 1, "{answer}");
}

#[tokio::test]
async fn a_tail_gets_the_other_nodes_messages_and_is_no_member() {
    let redis = Redis::start();
    let a = admin_node(&redis, "gw-a", &[]).await;
    let b = admin_node(&redis, "gw-b", &[]).await;
    let admin = Admin::login(&a).await;

    let (mut tail, head) = admin.tail("chat:room").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(lower.contains("cache-control: no-store"), "{head}");
    read_until(&mut tail, ": ping\n\n").await;
    // A tail alone holds A's subscription to the channel.
    wait_pubsub(&redis, "chat:room", "1").await;
    let (mut quiet, _) = admin.tail("chat:quiet").await;
    read_until(&mut quiet, ": ping\n\n").await;

    let (mut on_b, welcome) = b.connect("bob").await;
    within(on_b.subscribe("chat:room")).await.unwrap();
    within(on_b.publish("chat:room", &json!({"text": "from b"})))
        .await
        .unwrap();
    let (status, _) = api(
        &b,
        "POST",
        "/api/publish",
        r#"{"channel":"chat:room","data":"from the api"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let seen = read_until(&mut tail, r#""data":"from the api"}"#).await;
    let events: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(
        events,
        [
            r#"{"type":"message","channel":"chat:room","offset":1,"data":{"text":"from b"}}"#,
            r#"{"type":"message","channel":"chat:room","offset":2,"data":"from the api"}"#,
        ],
        "messages only, not bob's join: {seen}"
    );

    // Presence and occupancy know bob alone, on either node; the channel
    // only tailed is nowhere.
    for node in [&a, &b] {
        let (status, presence) = api(node, "GET", "/api/presence/chat:room", "").await;
        assert_eq!(status, 200);
        assert_eq!(
            presence,
            json!({"members": [{"user": "bob", "connection_id": welcome.connection_id, "info": null}]})
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, counts) = api(node, "GET", "/api/channels/chat:room", "").await;
            if counts["subscribers"] != 0 {
                assert_eq!(
                    counts,
                    json!({"channel": "chat:room", "subscribers": 1, "users": 1})
                );
                break;
            }
            assert!(Instant::now() < deadline, "{counts}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, listed) = api(node, "GET", "/api/channels", "").await;
        assert_eq!(
            listed,
            json!({"channels": [{"channel": "chat:room", "subscribers": 1, "users": 1}]})
        );
        let (_, quiet_presence) = api(node, "GET", "/api/presence/chat:quiet", "").await;
        assert_eq!(quiet_presence, json!({"members": []}));
    }

    // The clients go: A lets go of its subscriptions (one for bob's channel
    // remains on B).
    drop(quiet);
    wait_pubsub(&redis, "chat:quiet", "0").await;
    drop(tail);
    wait_pubsub(&redis, "chat:room", "1").await;
    within(on_b.unsubscribe("chat:room")).await.unwrap();
    wait_pubsub(&redis, "chat:room", "0").await;
}

#[tokio::test]
async fn a_node_serves_sixteen_tails_and_frees_a_place_when_one_goes() {
    let redis = Redis::start();
    let a = admin_node(&redis, "gw-a", &[]).await;
    let admin = Admin::login(&a).await;
    let mut tails = Vec::new();
    for n in 0..16 {
        let (mut socket, head) = admin.tail(&format!("chat:t{}", n % 4)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        read_until(&mut socket, ": ping\n\n").await;
        tails.push(socket);
    }
    let (status, refused) = admin.get("/admin/api/tail?channel=chat:t9").await;
    assert_eq!(status, 503);
    assert_eq!(refused["error"], "unavailable", "{refused}");
    wait_pubsub(&redis, "chat:t0", "1").await;

    // Every client goes: each tail leaves the hub and its place is free.
    tails.clear();
    for n in 0..4 {
        wait_pubsub(&redis, &format!("chat:t{n}"), "0").await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0..16 {
        loop {
            let (mut socket, head) = admin.tail(&format!("chat:u{n}")).await;
            if head.starts_with("HTTP/1.1 200") {
                read_until(&mut socket, ": ping\n\n").await;
                tails.push(socket);
                break;
            }
            assert!(Instant::now() < deadline, "{head}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, _) = admin.get("/admin/api/tail?channel=chat:u99").await;
    assert_eq!(status, 503);
    let (status, bad) = admin.get("/admin/api/tail?channel=").await;
    assert_eq!((status, bad["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn a_users_connections_on_every_node_with_their_channels() {
    let redis = Redis::start();
    let a = admin_node(&redis, "gw-a", &[]).await;
    let b = admin_node(&redis, "gw-b", &[]).await;
    let (mut alice_a, on_a) = a.connect("alice").await;
    let (mut alice_b, on_b) = b.connect("alice").await;
    let (mut bob, _) = b.connect("bob").await;
    for (conn, channels) in [
        (&mut alice_a, ["news:y", "chat:x"]),
        (&mut alice_b, ["news:z", "chat:x"]),
        (&mut bob, ["news:y", "chat:x"]),
    ] {
        for channel in channels {
            within(conn.subscribe(channel)).await.unwrap();
        }
    }
    let expected = json!({
        "user": "alice",
        "connections": [
            {"connection_id": on_a.connection_id, "node_id": "gw-a", "channels": ["chat:x", "news:y"]},
            {"connection_id": on_b.connection_id, "node_id": "gw-b", "channels": ["chat:x", "news:z"]},
        ]
    });
    // Either node answers for the whole cluster (occupancy is written
    // shortly after a subscribe).
    for node in [&a, &b] {
        let admin = Admin::login(node).await;
        let answer = admin
            .wait_for("/admin/api/user?id=alice", |answer| *answer == expected)
            .await;
        assert_eq!(answer, expected);
        let (status, nobody) = admin.get("/admin/api/user?id=nobody").await;
        assert_eq!(status, 200);
        assert_eq!(nobody, json!({"user": "nobody", "connections": []}));
        let (status, bad) = admin.get("/admin/api/user").await;
        assert_eq!((status, bad["error"].as_str()), (400, Some("bad_request")));
    }
    // Gone from the answer with the connection.
    alice_b.close().await.unwrap();
    let admin = Admin::login(&a).await;
    admin
        .wait_for("/admin/api/user?id=alice", |answer| {
            answer["connections"]
                .as_array()
                .is_some_and(|c| c.len() == 1)
        })
        .await;
}

#[tokio::test]
async fn a_single_node_lists_itself_tails_and_finds_users_from_memory() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_NODE_ID", "solo")
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_ADMIN", "true")
        .start();
    let admin = Admin::login(&gateway).await;
    let (mut conn, welcome) = gateway.connect("carol").await;
    within(conn.subscribe("news:b")).await.unwrap();
    within(conn.subscribe("news:a")).await.unwrap();
    let (status, answer) = admin.get("/admin/api/nodes").await;
    assert_eq!(status, 200);
    let nodes = answer["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{answer}");
    assert_eq!(nodes[0]["node_id"], "solo");
    assert_eq!(nodes[0]["this_node"], true);
    assert_eq!(nodes[0]["redis"], json!({"mode": "none", "healthy": true}));
    assert_eq!(
        (
            nodes[0]["connections"].as_u64(),
            nodes[0]["subscriptions"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let (status, user) = admin.get("/admin/api/user?id=carol").await;
    assert_eq!(status, 200);
    assert_eq!(
        user,
        json!({"user": "carol", "connections": [
            {"connection_id": welcome.connection_id, "node_id": "solo", "channels": ["news:a", "news:b"]}
        ]})
    );
    let (mut tail, _) = admin.tail("news:a").await;
    read_until(&mut tail, ": ping\n\n").await;
    within(conn.publish("news:a", &json!(7))).await.unwrap();
    read_until(
        &mut tail,
        r#"data: {"type":"message","channel":"news:a","offset":1,"data":7}"#,
    )
    .await;
    let (_, counts) = api(&gateway, "GET", "/api/channels/news:a", "").await;
    assert_eq!(
        counts,
        json!({"channel": "news:a", "subscribers": 1, "users": 1})
    );
}
