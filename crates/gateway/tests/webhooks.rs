//! Webhooks and channel occupancy, with real gateways, a real redis-server
//! and a real HTTP receiver: every event once and signed across two nodes,
//! a crashed node's users going offline, a receiver outage survived in
//! order, the grace period that hides a flapping connection, dead letters,
//! the channel listing, and the start-up errors.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use receiver::{Answer, Receiver, Request};
use serde_json::{json, Value};
use switchboard_gateway::backend;
use switchboard_gateway::backend::webhook_order::{self, OrderCheck};
use switchboard_gateway::backend::webhooks::Event;

const BACKEND_SECRET: &str = "webhook-secret-webhook-secret-0123456789";
const CHAT: &str = "[namespaces.chat]\npresence = true\n[namespaces.feed]\npresence = false\n";

/// A cluster node posting webhooks to `receiver` with `grace`.
async fn hooked_node(
    redis: &Redis,
    node_id: &str,
    receiver: &Receiver,
    grace: &str,
    extra: &[(&str, &str)],
) -> Gateway {
    let mut builder = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", node_id)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET)
        .env("SWITCHBOARD_WEBHOOK_URLS", &receiver.url("/hooks"))
        .env("SWITCHBOARD_WEBHOOK_GRACE", grace)
        .env("SWITCHBOARD_WEBHOOK_BATCH_WINDOW", "20ms")
        .toml(CHAT);
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    let gateway = builder.start();
    wait_ready(&gateway, 200).await;
    gateway
}

/// Checks a request's signature as a receiver would; returns its events.
fn verified_events(request: &Request) -> Vec<Value> {
    let header = request
        .header(backend::SIGNATURE_HEADER)
        .expect("signature header");
    backend::verify(
        BACKEND_SECRET.as_bytes(),
        header,
        &request.body,
        now(),
        backend::SIGNATURE_TOLERANCE,
    )
    .unwrap_or_else(|e| panic!("bad signature {header}: {e}"));
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = request.json();
    assert!(body["time_ms"].as_u64().is_some(), "{body}");
    body["events"].as_array().expect("events").clone()
}

/// Every event received so far, in arrival order (signatures checked).
fn events(receiver: &Receiver) -> Vec<Value> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.path == "/hooks")
        .flat_map(verified_events)
        .collect()
}

/// A labelled counter summed over its series and over the nodes.
async fn total(nodes: &[&Gateway], counter: &str) -> u64 {
    let mut sum = 0;
    for node in nodes {
        let (_, _, metrics) = http_get(node.addr, "/metrics", &[]).await;
        sum += metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{counter}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    sum
}

/// `name channel user` of an event, for readable assertions.
fn describe(event: &Value) -> String {
    let part = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
    format!("{} {} {}", part("name"), part("channel"), part("user"))
}

/// Checks events as received (JSON, duplicates included) against the
/// documented order.
fn check_order(events: &[Value]) {
    let events: Vec<Event> = events
        .iter()
        .map(|e| serde_json::from_value(e.clone()).unwrap())
        .collect();
    if let Err(violation) = webhook_order::check(&events, presence) {
        let stream: Vec<String> = events.iter().map(webhook_order::describe).collect();
        panic!("{violation}: {stream:#?}");
    }
}

fn described(receiver: &Receiver) -> Vec<String> {
    events(receiver).iter().map(describe).collect()
}

/// Waits until `wanted` has arrived (in any order among other events).
async fn arrive(receiver: &Receiver, wanted: &[&str], limit: Duration) {
    let wanted: Vec<String> = wanted.iter().map(|s| (*s).to_owned()).collect();
    let arrived = receiver
        .until(
            |requests| {
                let seen: Vec<String> = requests
                    .iter()
                    .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
                    .map(|e| describe(&e))
                    .collect();
                wanted.iter().all(|w| seen.contains(w))
            },
            limit,
        )
        .await;
    assert!(
        arrived,
        "waited {limit:?} for {wanted:?}; got {:?}",
        described(receiver)
    );
}

#[tokio::test]
async fn every_event_arrives_once_signed_across_two_nodes() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let a = hooked_node(&redis, "gw-a", &receiver, "0s", &[]).await;
    let b = hooked_node(&redis, "gw-b", &receiver, "0s", &[]).await;
    let wait = Duration::from_secs(10);

    let (mut alice, _) = a.connect("alice").await;
    within(alice.subscribe("chat:room")).await.unwrap();
    arrive(
        &receiver,
        &[
            "user_online - alice",
            "channel_occupied chat:room -",
            "member_added chat:room alice",
        ],
        wait,
    )
    .await;
    let (mut bob, _) = b.connect("bob").await;
    within(bob.subscribe("chat:room")).await.unwrap();
    // A second connection of alice, on the other node: no event at all.
    let (mut alice_too, _) = b.connect("alice").await;
    within(alice_too.subscribe("chat:room")).await.unwrap();
    // A namespace without presence: occupancy events, no member events.
    within(bob.subscribe("feed:news")).await.unwrap();
    arrive(
        &receiver,
        &[
            "user_online - bob",
            "member_added chat:room bob",
            "channel_occupied feed:news -",
        ],
        wait,
    )
    .await;
    within(alice.close()).await.unwrap();
    within(alice_too.close()).await.unwrap();
    arrive(
        &receiver,
        &["member_removed chat:room alice", "user_offline - alice"],
        wait,
    )
    .await;
    within(bob.unsubscribe("chat:room")).await.unwrap();
    within(bob.close()).await.unwrap();
    arrive(
        &receiver,
        &[
            "member_removed chat:room bob",
            "channel_vacated chat:room -",
            "channel_vacated feed:news -",
            "user_offline - bob",
        ],
        wait,
    )
    .await;
    // Nothing more is on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let all = events(&receiver);
    let ids: HashSet<&str> = all.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), all.len(), "an event id repeated: {all:?}");
    let mut got: Vec<String> = all.iter().map(describe).collect();
    got.sort();
    let mut expected = vec![
        "user_online - alice",
        "channel_occupied chat:room -",
        "member_added chat:room alice",
        "user_online - bob",
        "member_added chat:room bob",
        "channel_occupied feed:news -",
        "member_removed chat:room alice",
        "user_offline - alice",
        "member_removed chat:room bob",
        "channel_vacated chat:room -",
        "channel_vacated feed:news -",
        "user_offline - bob",
    ];
    expected.sort();
    assert_eq!(got, expected, "every event exactly once");
    // Per channel, in the order things happened.
    let room: Vec<String> = all
        .iter()
        .filter(|e| e["channel"] == "chat:room")
        .map(describe)
        .collect();
    assert_eq!(
        room,
        [
            "member_added chat:room alice",
            "channel_occupied chat:room -",
            "member_added chat:room bob",
            "member_removed chat:room alice",
            "member_removed chat:room bob",
            "channel_vacated chat:room -",
        ]
    );
    for event in &all {
        let at = event["time_ms"].as_u64().unwrap();
        assert!(at > 1_700_000_000_000, "{event}");
    }
    check_order(&all);

    // The metrics count them.
    let nodes = [&a, &b];
    assert_eq!(
        total(&nodes, "switchboard_webhook_events_emitted_total").await,
        12
    );
    assert_eq!(
        total(&nodes, "switchboard_webhook_events_delivered_total").await,
        12
    );
}

#[tokio::test]
async fn a_killed_node_takes_its_users_offline_within_the_lease_bound() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let mut a = hooked_node(&redis, "gw-a", &receiver, "1s", &[]).await;
    let b = hooked_node(&redis, "gw-b", &receiver, "1s", &[]).await;
    let (mut alice, _) = a.connect("alice").await;
    within(alice.subscribe("chat:room")).await.unwrap();
    let (mut bob, _) = b.connect("bob").await;
    within(bob.subscribe("chat:room")).await.unwrap();
    arrive(
        &receiver,
        &["member_added chat:room alice", "member_added chat:room bob"],
        Duration::from_secs(10),
    )
    .await;

    a.signal("KILL");
    a.wait_exit(WAIT).await;
    let killed = Instant::now();
    // Lease (5 s) + one reaper scan (1 s) + grace (1 s) + delivery.
    arrive(
        &receiver,
        &["member_removed chat:room alice", "user_offline - alice"],
        Duration::from_secs(15),
    )
    .await;
    let took = killed.elapsed();
    println!("offline events {took:?} after the kill");
    let got = described(&receiver);
    assert!(
        !got.contains(&"channel_vacated chat:room -".to_owned()),
        "{got:?}"
    );
    assert!(!got.contains(&"user_offline - bob".to_owned()), "{got:?}");
    // The listing no longer counts alice.
    let (status, body) = api(&b, "GET", "/api/channels/chat:room", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channel": "chat:room", "subscribers": 1, "users": 1})
    );
}

#[tokio::test]
async fn a_receiver_down_for_ten_seconds_still_gets_every_event_in_order() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let a = hooked_node(&redis, "gw-a", &receiver, "0s", &[]).await;
    let b = hooked_node(&redis, "gw-b", &receiver, "0s", &[]).await;
    let down_until = Instant::now() + Duration::from_secs(10);
    receiver.set_handler(Arc::new(move |_: &Request| {
        if Instant::now() < down_until {
            Answer::Status(500)
        } else {
            Answer::Status(204)
        }
    }));
    // Users come and go on both nodes while the receiver is down.
    let mut expected = Vec::new();
    for round in 0..6 {
        let node = if round % 2 == 0 { &a } else { &b };
        let user = format!("user{round}");
        let channel = format!("chat:r{}", round % 3);
        let (mut conn, _) = node.connect(&user).await;
        within(conn.subscribe(&channel)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        within(conn.close()).await.unwrap();
        expected.push(format!("member_added {channel} {user}"));
        expected.push(format!("member_removed {channel} {user}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        Instant::now() < down_until,
        "the events were made during the outage"
    );
    let wanted: Vec<&str> = expected.iter().map(String::as_str).collect();
    arrive(&receiver, &wanted, Duration::from_secs(25)).await;
    let failed = receiver
        .requests()
        .iter()
        .filter(|r| r.at < down_until)
        .count();
    assert!(failed >= 3, "the receiver refused {failed} requests");

    // Duplicates only by id: the same id always carries the same event.
    let all = events(&receiver);
    let mut by_id = std::collections::HashMap::new();
    let mut unique = Vec::new();
    for event in &all {
        let id = event["id"].as_str().unwrap().to_owned();
        match by_id.get(&id) {
            Some(seen) => assert_eq!(seen, event, "id {id} reused for another event"),
            None => {
                by_id.insert(id, event.clone());
                unique.push(event.clone());
            }
        }
    }
    // Every event is there, and each channel's events are in order.
    check_order(&all);
    for channel in ["chat:r0", "chat:r1", "chat:r2"] {
        let got: Vec<String> = unique
            .iter()
            .filter(|e| e["channel"] == channel)
            .map(describe)
            .collect();
        let mut want = Vec::new();
        for pair in expected.chunks(2) {
            if pair[0].contains(&format!(" {channel} ")) {
                want.push(pair[0].clone());
                want.push(format!("channel_occupied {channel} -"));
                want.push(pair[1].clone());
                want.push(format!("channel_vacated {channel} -"));
            }
        }
        assert_eq!(got, want, "{channel}");
    }
    let retried = total(&[&a, &b], "switchboard_webhook_events_retried_total").await;
    assert!(retried > 0, "retries counted");
}

#[tokio::test]
async fn a_reconnect_within_the_grace_period_sends_no_offline_online_pair() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let a = hooked_node(&redis, "gw-a", &receiver, "2s", &[]).await;
    let b = hooked_node(&redis, "gw-b", &receiver, "2s", &[]).await;
    let (mut alice, _) = a.connect("alice").await;
    within(alice.subscribe("chat:room")).await.unwrap();
    arrive(
        &receiver,
        &["user_online - alice", "member_added chat:room alice"],
        Duration::from_secs(10),
    )
    .await;
    // The connection drops and comes back on the other node, resubscribing.
    within(alice.close()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut again, _) = b.connect("alice").await;
    within(again.subscribe("chat:room")).await.unwrap();
    // Well past the grace period: nothing was sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        described(&receiver),
        [
            "user_online - alice",
            "member_added chat:room alice",
            "channel_occupied chat:room -",
        ]
    );
    // Leaving for good is reported once the grace period is over, dated
    // when it happened.
    let left = now() * 1000;
    within(again.close()).await.unwrap();
    arrive(
        &receiver,
        &[
            "member_removed chat:room alice",
            "channel_vacated chat:room -",
            "user_offline - alice",
        ],
        Duration::from_secs(10),
    )
    .await;
    let all = events(&receiver);
    let offline = all.iter().find(|e| e["name"] == "user_offline").unwrap();
    let at = offline["time_ms"].as_u64().unwrap();
    assert!(
        at + 1500 >= left && at <= left + 1500,
        "dated {at}, left at {left}"
    );
    assert_eq!(all.len(), 6, "{:?}", described(&receiver));
    check_order(&all);
}

#[tokio::test]
async fn events_older_than_max_age_are_dead_lettered() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    receiver.set(Answer::Status(503));
    let a = hooked_node(
        &redis,
        "gw-a",
        &receiver,
        "0s",
        &[("SWITCHBOARD_WEBHOOK_MAX_AGE", "2s")],
    )
    .await;
    let (alice, _) = a.connect("alice").await;
    within(alice.close()).await.unwrap();
    // Past the 2 s max age, at the end of a retry whose backoff has jitter
    // (up to about 4 s here): not within wait_log's usual 5 s.
    let log = a
        .wait_log_within(Duration::from_secs(20), |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("webhook events dead-lettered"))
        })
        .await;
    assert_eq!(log["level"], "ERROR");
    let dead = redis.cli(&["--raw", "KEYS", "sb:{occ}:dead:*"]);
    let key = dead.lines().next().expect("a dead-letter stream");
    let entries = redis.cli(&["--raw", "XRANGE", key, "-", "+"]);
    assert!(entries.contains("\"name\":\"user_online\""), "{entries}");
    let (_, _, metrics) = http_get(a.addr, "/metrics", &[]).await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("switchboard_webhook_events_dead_lettered_total{endpoint=\"0\"} ")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// The listing over two nodes, paged, and one channel's counts.
#[tokio::test]
async fn channel_listing_and_counts_match_the_clients() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", CHAT).await;
    let b = cluster_node(&redis, "gw-b", CHAT).await;
    let mut held = Vec::new();
    for (node, user, channels) in [
        (&a, "alice", &["chat:a", "chat:b", "feed:x"][..]),
        (&b, "alice", &["chat:a"][..]),
        (&b, "bob", &["chat:a", "chat:c"][..]),
        (&a, "carol", &["chat:b"][..]),
    ] {
        let (mut conn, _) = node.connect(user).await;
        for channel in channels {
            within(conn.subscribe(channel)).await.unwrap();
        }
        held.push(conn);
    }
    let expect_page = json!({"channels": [
        {"channel": "chat:a", "subscribers": 3, "users": 2},
        {"channel": "chat:b", "subscribers": 2, "users": 2},
    ], "next_cursor": "chat:b"});
    // The counts reach Redis shortly after the subscribes.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = api(&a, "GET", "/api/channels?prefix=chat:&limit=2", "").await;
        assert_eq!(status, 200, "{body}");
        if body == expect_page {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, next) = api(
        &b,
        "GET",
        "/api/channels?prefix=chat:&limit=2&cursor=chat:b",
        "",
    )
    .await;
    assert_eq!(
        next,
        json!({"channels": [{"channel": "chat:c", "subscribers": 1, "users": 1}]})
    );
    let (_, all) = api(&b, "GET", "/api/channels", "").await;
    assert_eq!(all["channels"].as_array().unwrap().len(), 4, "{all}");
    let (_, one) = api(&b, "GET", "/api/channels/feed:x", "").await;
    assert_eq!(
        one,
        json!({"channel": "feed:x", "subscribers": 1, "users": 1})
    );
    let (_, none) = api(&b, "GET", "/api/channels/chat:nobody", "").await;
    assert_eq!(
        none,
        json!({"channel": "chat:nobody", "subscribers": 0, "users": 0})
    );

    // Leaving shows.
    let bob = held.remove(2);
    within(bob.close()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = api(&a, "GET", "/api/channels?prefix=chat:", "").await;
        if body
            == json!({"channels": [
                {"channel": "chat:a", "subscribers": 2, "users": 1},
                {"channel": "chat:b", "subscribers": 2, "users": 2},
            ]})
        {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_single_node_lists_its_channels_and_refuses_bad_queries() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(CHAT)
        .start();
    let (mut alice, _) = gateway.connect("alice").await;
    let (mut bob, _) = gateway.connect("bob").await;
    within(alice.subscribe("chat:a")).await.unwrap();
    within(bob.subscribe("chat:a")).await.unwrap();
    within(bob.subscribe("feed:b")).await.unwrap();
    let (status, body) = api(&gateway, "GET", "/api/channels?limit=1", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [{"channel": "chat:a", "subscribers": 2, "users": 2}], "next_cursor": "chat:a"})
    );
    let (_, body) = api(&gateway, "GET", "/api/channels?limit=1&cursor=chat:a", "").await;
    assert_eq!(
        body,
        json!({"channels": [{"channel": "feed:b", "subscribers": 1, "users": 1}]})
    );
    for (query, message) in [
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("prefix=chat%20", "invalid prefix: channel name contains ' '; allowed are letters, digits and _ - : . @ / = +"),
        ("cursor=a*b", "invalid cursor: '*' may only end a pattern"),
    ] {
        let (status, body) = api(&gateway, "GET", &format!("/api/channels?{query}"), "").await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body, json!({"error": "bad_request", "message": message}), "{query}");
    }
    let (status, body) = api(&gateway, "POST", "/api/channels", "").await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = api(&gateway, "GET", "/api/channels/bad%20name", "").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn bad_webhook_settings_stop_start_up_naming_the_key() {
    let redis = ("SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:1");
    let urls = ("SWITCHBOARD_WEBHOOK_URLS", "http://127.0.0.1:9/hooks");
    let secret = ("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET);
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[redis, urls],
            "switchboard: invalid configuration: SWITCHBOARD_BACKEND_SECRET (backend_secret): missing: webhooks are signed with it (at least 32 random bytes, e.g. `openssl rand -hex 32`)",
        ),
        (
            &[redis, urls, ("SWITCHBOARD_BACKEND_SECRET", "short")],
            "switchboard: invalid configuration: SWITCHBOARD_BACKEND_SECRET (backend_secret): the secret is 5 bytes; use at least 32 (random, e.g. `openssl rand -hex 32`)",
        ),
        (
            &[urls, secret],
            "switchboard: invalid configuration: SWITCHBOARD_WEBHOOK_URLS (webhook_urls): webhooks need cluster mode: their events are queued in Redis so that a crash loses none; set SWITCHBOARD_REDIS_URL (redis_url)",
        ),
        (
            &[redis, secret, ("SWITCHBOARD_WEBHOOK_URLS", "ftp://example.com/x")],
            "switchboard: invalid configuration: SWITCHBOARD_WEBHOOK_URLS (webhook_urls): \"ftp://example.com/x\" must be an http:// or https:// URL with a host",
        ),
        (
            &[redis, secret, ("SWITCHBOARD_WEBHOOK_URLS", "not a url")],
            "switchboard: invalid configuration: SWITCHBOARD_WEBHOOK_URLS (webhook_urls): \"not a url\" is not a URL: relative URL without a base",
        ),
        (
            &[redis, urls, secret, ("SWITCHBOARD_WEBHOOK_MAX_AGE", "0s")],
            "switchboard: invalid configuration: SWITCHBOARD_WEBHOOK_MAX_AGE (webhook_max_age): 0s is outside 1s..=7days",
        ),
    ];
    for (env, message) in cases {
        let (code, stderr) = start_up_error("", env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr, message, "{env:?}");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_at_start_up_is_a_warning_not_a_failure() {
    let redis = Redis::start();
    let port = free_port();
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_BACKEND_SECRET", BACKEND_SECRET)
        .env(
            "SWITCHBOARD_WEBHOOK_URLS",
            &format!("http://127.0.0.1:{port}/hooks?key=hidden"),
        )
        .start();
    wait_ready(&gateway, 200).await;
    let warning = gateway
        .wait_log(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("webhook endpoint unreachable at start-up"))
        })
        .await;
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["url"], format!("http://127.0.0.1:{port}/hooks"));
    // Clients are served as usual.
    let (mut conn, _) = gateway.connect("alice").await;
    within(conn.subscribe("chat:x")).await.unwrap();
}

/// Redis down: the listing says so; Redis back empty: the node writes its
/// counts again and the backend hears about its users once more.
#[tokio::test]
async fn a_redis_outage_is_an_error_and_a_lost_redis_is_rebuilt() {
    let mut redis = Redis::start();
    let receiver = Receiver::start();
    let a = hooked_node(&redis, "gw-a", &receiver, "0s", &[]).await;
    let (mut alice, _) = a.connect("alice").await;
    within(alice.subscribe("chat:room")).await.unwrap();
    arrive(&receiver, &["member_added chat:room alice"], WAIT).await;

    redis.stop();
    let (status, body) = api(&a, "GET", "/api/channels", "").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": "unavailable", "message": "channel listing unavailable"})
    );
    let (status, body) = api(&a, "GET", "/api/channels/chat:room", "").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": "unavailable", "message": "channel counts unavailable"})
    );

    // Back with nothing: the lease is gone, so the node rewrites its share.
    redis.restart();
    receiver.clear();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = api(&a, "GET", "/api/channels", "").await;
        if status == 200
            && body == json!({"channels": [{"channel": "chat:room", "subscribers": 1, "users": 1}]})
        {
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stream was lost with the rest: the group is recreated and the
    // rewrite's events are delivered.
    arrive(
        &receiver,
        &["user_online - alice", "member_added chat:room alice"],
        Duration::from_secs(15),
    )
    .await;
}

/// The verification snippets in docs/protocol.md accept a real webhook
/// request from a gateway, and refuse it with one byte changed.
#[tokio::test]
async fn the_documented_verification_snippets_accept_a_real_request() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let a = hooked_node(&redis, "gw-a", &receiver, "0s", &[]).await;
    let (_alice, _) = a.connect("alice").await;
    arrive(&receiver, &["user_online - alice"], WAIT).await;
    let request = receiver.requests().remove(0);
    let header = request
        .header(backend::SIGNATURE_HEADER)
        .unwrap()
        .to_owned();

    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md"),
    )
    .unwrap();
    let section = &doc[doc.find("### Verifying a request's signature").unwrap()..];
    let block = |lang: &str| -> String {
        let start = section.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
        section[start..][..section[start..].find("```").unwrap()].to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let tampered = dir.path().join("tampered");
    std::fs::write(&body, &request.body).unwrap();
    let mut changed = request.body.clone();
    changed[0] = b' ';
    std::fs::write(&tampered, &changed).unwrap();

    let python = format!(
        "{}\nimport sys\nprint(verify(sys.argv[1].encode(), sys.argv[2], open(sys.argv[3], 'rb').read()))\n",
        block("python")
    );
    let js = format!(
        "{}\nimport {{ readFileSync }} from 'node:fs';\nconsole.log(verify(process.argv[2], process.argv[3], readFileSync(process.argv[4])));\n",
        block("js")
    );
    std::fs::write(dir.path().join("verify.py"), python).unwrap();
    std::fs::write(dir.path().join("verify.mjs"), js).unwrap();
    for (program, script, yes, no) in [
        ("python3", "verify.py", "True", "False"),
        ("node", "verify.mjs", "true", "false"),
    ] {
        for (file, expected) in [(&body, yes), (&tampered, no)] {
            let output = std::process::Command::new(program)
                .arg(dir.path().join(script))
                .arg(BACKEND_SECRET)
                .arg(&header)
                .arg(file)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&output.stdout).trim(),
                expected,
                "{program} on {}: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// The namespaces with presence in [`CHAT`].
fn presence(channel: &str) -> bool {
    channel.starts_with("chat:")
}

/// The stream a receiver got, checked as it arrives: each event that comes
/// in extends the stream by one, and that prefix is checked against the
/// documented order ([`webhook_order::check`]; duplicates skipped by id, as
/// a receiver does).
struct Delivered<'a> {
    receiver: &'a Receiver,
    /// Requests taken so far.
    read: usize,
    /// Every event received, in arrival order, duplicates included.
    events: Vec<Event>,
}

impl<'a> Delivered<'a> {
    fn new(receiver: &'a Receiver) -> Delivered<'a> {
        Delivered {
            receiver,
            read: 0,
            events: Vec::new(),
        }
    }

    /// Takes what arrived since the last call, checking every new prefix.
    fn take(&mut self) {
        let requests = self.receiver.requests();
        for request in &requests[self.read..] {
            for value in verified_events(request) {
                let event: Event = serde_json::from_value(value).unwrap();
                self.events.push(event);
                if let Err(violation) = webhook_order::check(&self.events, presence) {
                    panic!("{violation}\nthe stream so far:\n{}", self.dump());
                }
            }
        }
        self.read = requests.len();
    }

    fn dump(&self) -> String {
        self.events
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{i:3} {} {}", e.id, webhook_order::describe(e)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What the stream says holds now (see `OrderCheck::standing`).
    fn standing(&self) -> Vec<String> {
        let mut order = OrderCheck::new(presence);
        for event in &self.events {
            order.push(event).unwrap();
        }
        order.standing()
    }

    /// The distinct events so far, as `name channel user`.
    fn distinct(&self) -> Vec<String> {
        let mut ids = HashSet::new();
        self.events
            .iter()
            .filter(|e| ids.insert(e.id.clone()))
            .map(webhook_order::describe)
            .collect()
    }

    /// Takes events until the stream says `want` holds.
    async fn until_standing(&mut self, want: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.take();
            if self.standing() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {want:?}; the stream says {:?}:\n{}",
                self.standing(),
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every client closes its connection.
    Close,
    /// A gateway is SIGKILLed with its clients; a surviving (or newly
    /// started) node reaps it once its lease has expired.
    Crash,
}

/// The documented order over a run of users and channels coming and going,
/// each delivered event checked as it arrives: first the issue's case (one
/// member subscribes and disconnects), then three users on three channels,
/// a reconnect and a resubscribe, spread over gateways sharing one Redis
/// (one per grace period in `graces`), ending as `ending` says.
async fn the_order_holds(graces: &[&str], ending: Ending) {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let mut gateways = Vec::new();
    for (i, grace) in graces.iter().enumerate() {
        gateways.push(hooked_node(&redis, &format!("gw-{i}"), &receiver, grace, &[]).await);
    }
    let nodes = graces.len();
    let mut delivered = Delivered::new(&receiver);
    let wait = Duration::from_secs(15);
    // The second node where there is one.
    let other = nodes - 1;

    // The issue: a member subscribes and disconnects.
    let (mut alice, _) = gateways[0].connect("alice").await;
    within(alice.subscribe("chat:z")).await.unwrap();
    delivered
        .until_standing(
            &["member chat:z alice", "occupied chat:z", "online alice"],
            wait,
        )
        .await;
    within(alice.close()).await.unwrap();
    delivered.until_standing(&[], wait).await;
    assert_eq!(
        delivered.distinct(),
        [
            "user_online - alice",
            "member_added chat:z alice",
            "channel_occupied chat:z -",
            "member_removed chat:z alice",
            "channel_vacated chat:z -",
            "user_offline - alice",
        ]
    );

    // Three users on two channels with presence and one without; alice
    // twice, once on each node.
    let (mut alice, _) = gateways[0].connect("alice").await;
    for channel in ["chat:z", "chat:y", "feed:f"] {
        within(alice.subscribe(channel)).await.unwrap();
    }
    let (mut bob, _) = gateways[other].connect("bob").await;
    within(bob.subscribe("chat:z")).await.unwrap();
    within(bob.subscribe("feed:f")).await.unwrap();
    let (mut carol, _) = gateways[other].connect("carol").await;
    within(carol.subscribe("chat:y")).await.unwrap();
    let (mut alice_too, _) = gateways[other].connect("alice").await;
    within(alice_too.subscribe("chat:z")).await.unwrap();
    let everyone = [
        "member chat:y alice",
        "member chat:y carol",
        "member chat:z alice",
        "member chat:z bob",
        "occupied chat:y",
        "occupied chat:z",
        "occupied feed:f",
        "online alice",
        "online bob",
        "online carol",
    ];
    delivered.until_standing(&everyone, wait).await;

    // Bob's connection drops and comes back on the first node; carol leaves
    // chat:y and comes back; alice's first connection leaves chat:z, which
    // her second one holds. Within a grace period none of it is sent.
    within(bob.close()).await.unwrap();
    let (mut bob, _) = gateways[0].connect("bob").await;
    within(bob.subscribe("chat:z")).await.unwrap();
    within(carol.unsubscribe("chat:y")).await.unwrap();
    within(carol.subscribe("chat:y")).await.unwrap();
    within(alice.unsubscribe("chat:z")).await.unwrap();
    // Bob's feed:f went with his first connection; alice still holds it.
    delivered.until_standing(&everyone, wait).await;

    match ending {
        Ending::Close => {
            within(alice.close()).await.unwrap();
            within(bob.close()).await.unwrap();
            within(carol.unsubscribe("chat:y")).await.unwrap();
            within(carol.close()).await.unwrap();
            within(alice_too.close()).await.unwrap();
            delivered.until_standing(&[], wait).await;
        }
        Ending::Crash => {
            let mut dead = gateways.remove(0);
            dead.signal("KILL");
            dead.wait_exit(WAIT).await;
            drop((alice, bob));
            // The lease (5 s), one reaper scan (1 s), the grace period,
            // the delivery lease of the dead node if it delivered (5 s).
            let reaped = Duration::from_secs(30);
            if gateways.is_empty() {
                // Its only node died: the next one to start reaps it.
                gateways.push(hooked_node(&redis, "gw-next", &receiver, graces[0], &[]).await);
                drop((carol, alice_too));
                delivered.until_standing(&[], reaped).await;
            } else {
                // The survivor's own clients leave while the dead node's
                // lease runs out and its departures wait out the grace
                // period.
                within(carol.close()).await.unwrap();
                delivered
                    .until_standing(
                        &["member chat:z alice", "occupied chat:z", "online alice"],
                        reaped,
                    )
                    .await;
                within(alice_too.close()).await.unwrap();
                delivered.until_standing(&[], wait).await;
            }
        }
    }

    // Nothing else is on its way: no departure held back, no duplicate out
    // of order.
    let distinct = delivered.distinct().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    delivered.take();
    assert_eq!(delivered.standing(), Vec::<String>::new());
    assert_eq!(delivered.distinct().len(), distinct, "{}", delivered.dump());
    println!("{}", delivered.dump());
}

#[tokio::test]
async fn order_without_grace_on_one_node_with_clients_closing() {
    the_order_holds(&["0s"], Ending::Close).await;
}

#[tokio::test]
async fn order_with_grace_on_one_node_with_clients_closing() {
    the_order_holds(&["2s"], Ending::Close).await;
}

#[tokio::test]
async fn order_without_grace_on_two_nodes_with_clients_closing() {
    the_order_holds(&["0s", "0s"], Ending::Close).await;
}

#[tokio::test]
async fn order_with_grace_on_two_nodes_with_clients_closing() {
    the_order_holds(&["2s", "2s"], Ending::Close).await;
}

#[tokio::test]
async fn order_without_grace_on_one_node_that_crashes() {
    the_order_holds(&["0s"], Ending::Crash).await;
}

#[tokio::test]
async fn order_with_grace_on_one_node_that_crashes() {
    the_order_holds(&["2s"], Ending::Crash).await;
}

#[tokio::test]
async fn order_without_grace_on_two_nodes_one_of_which_crashes() {
    the_order_holds(&["0s", "0s"], Ending::Crash).await;
}

#[tokio::test]
async fn order_with_grace_on_two_nodes_one_of_which_crashes() {
    the_order_holds(&["2s", "2s"], Ending::Crash).await;
}

/// Mid-way through a rolling change of `webhook_grace`: a node without a
/// grace period queues its departures behind those another node holds.
#[tokio::test]
async fn order_on_two_nodes_with_and_without_grace() {
    the_order_holds(&["2s", "0s"], Ending::Close).await;
}

/// Departures an earlier version held in `sb:{occ}:grace` (scored by due
/// time in ms) are still sent when due, or cancelled by a return, so a
/// rolling upgrade loses none and sends no extra pair.
#[tokio::test]
async fn departures_held_by_an_earlier_version_are_sent_or_cancelled() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let a = hooked_node(&redis, "gw-a", &receiver, "1s", &[]).await;
    let due = (now() + 2) * 1000;
    redis.cli(&[
        "ZADD",
        "sb:{occ}:grace",
        &due.to_string(),
        r#"["u","","dora"]"#,
        &due.to_string(),
        r#"["m","chat:old","erin"]"#,
    ]);
    // Dora comes back before hers is due: neither is sent.
    let (_dora, _) = a.connect("dora").await;
    arrive(
        &receiver,
        &["member_removed chat:old erin"],
        Duration::from_secs(10),
    )
    .await;
    let all = events(&receiver);
    assert_eq!(described(&receiver), ["member_removed chat:old erin"]);
    // Dated when it happened: the due time less the grace period.
    assert_eq!(all[0]["time_ms"].as_u64(), Some(due - 1000));
    assert_eq!(redis.cli(&["ZCARD", "sb:{occ}:grace"]).trim(), "0");
}
