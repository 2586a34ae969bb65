//! Switchboard on the Redis deployments teams run beyond one server, all
//! started here for real: a Sentinel-managed master with a replica and
//! three sentinels, a six-node Redis Cluster made by `redis-cli --cluster
//! create`, and a TLS-only redis-server with certificates made by the test.
//!
//! Each failover test kills a Redis master with SIGKILL under steady
//! publishing and prints its figures: how long the sentinels or the
//! cluster took, how long publishers saw no acknowledgement, and how many
//! acknowledged messages each subscriber missed. Nodes are never
//! restarted: they must follow the new master by themselves.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/receiver.rs"]
mod receiver;
#[path = "common/topology.rs"]
mod topology;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use load::*;
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, Position};
use topology::*;

/// History deep enough for a whole outage; presence on `room`.
const CONFIG: &str = "[namespaces.feed]\nhistory_size = 2000\n[namespaces.room]\npresence = true\n";

/// A gateway node on any Redis URL, waited on until ready.
async fn node(url: &str, id: &str, extra: &[(&str, &str)]) -> Gateway {
    let mut builder = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", url)
        .env("SWITCHBOARD_NODE_ID", id)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(CONFIG);
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    let gateway = builder.start();
    wait_ready(&gateway, 200).await;
    gateway
}

/// Polls a node's /readyz until it answers `status` or `limit` passes; the body.
async fn ready_within(node: SocketAddr, status: u16, limit: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + limit;
    loop {
        let (got, _, body) = http_get(node, "/readyz", &[]).await;
        if got == status {
            return Ok(serde_json::from_str(&body).unwrap_or(Value::String(body)));
        }
        if Instant::now() > deadline {
            return Err(format!("/readyz stayed {got}: {body}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls /readyz until it answers 503 with a reason containing `needle`.
async fn not_ready_saying(gateway: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, _, body) = http_get(gateway.addr, "/readyz", &[]).await;
        if got == 503 && body.contains(needle) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said {needle:?}: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes through the API; the acknowledged position.
async fn publish(gateway: &Gateway, channel: &str, data: Value) -> Position {
    let body = json!({ "channel": channel, "data": data }).to_string();
    let (status, reply) = api(gateway, "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{reply}");
    Position::new(
        reply["offset"].as_u64().unwrap(),
        reply["epoch"].as_str().unwrap(),
    )
}

/// What a failover under load did.
struct Failover {
    /// The sentinels' or the cluster's own switch.
    switch: Duration,
    /// From the kill until every node's /readyz said 200 again.
    nodes_ready: Duration,
    /// The reason /readyz gave during the switch.
    not_ready: Value,
    published: Published,
    at_kill: u64,
    received: Vec<Received>,
}

/// Subscribes two clients per node to `channel`, publishes through every
/// node every 20 ms, runs `kill` (which kills a master and waits, blocking,
/// for the switch, returning how long it took) after 1 s, and goes on publishing
/// for 2 s after every node is ready again.
async fn fail_over_under_load(
    nodes: &[&Gateway],
    channel: &str,
    kill: impl FnOnce() -> Duration,
) -> Failover {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut subscribers = subscribe_on_every_node(nodes, channel).await;
    let stop = AtomicBool::new(false);
    let current = AtomicU64::new(0);
    let control = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at_kill = current.load(Ordering::Relaxed);
        let killed = Instant::now();
        // During the switch a node says why it is not ready: watched from
        // another task, as `kill` blocks this one.
        let watch = tokio::spawn(ready_within(nodes[0].addr, 503, Duration::from_secs(10)));
        let switch = tokio::task::block_in_place(kill);
        let not_ready = watch.await.unwrap().unwrap_or(Value::Null);
        for node in nodes {
            ready_within(node.addr, 200, Duration::from_secs(30))
                .await
                .unwrap();
        }
        let nodes_ready = killed.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        (at_kill, switch, nodes_ready, not_ready)
    };
    let (published, (at_kill, switch, nodes_ready, not_ready)) = tokio::join!(
        publish_until(&addrs, channel, Duration::from_millis(20), &stop, &current),
        control
    );
    let last = *published.acked.last().unwrap();
    // All at once: a subscriber left unread would miss the node's pings.
    let received = futures_util::future::join_all(
        subscribers
            .iter_mut()
            .map(|conn| drain(conn, channel, last)),
    )
    .await;
    Failover {
        switch,
        nodes_ready,
        not_ready,
        published,
        at_kill,
        received,
    }
}

/// Prints the figures and checks that nothing acknowledged went missing
/// silently: every message acknowledged after the kill reached every
/// subscriber, in order; one acknowledged before it may be lost only with
/// a `reset` telling the subscriber so. Returns the total missed.
fn report(what: &str, outage: &Failover) -> usize {
    println!(
        "{what}: switch {:.2} s; every node ready {:.2} s after the kill; longest time without an acknowledged publish {:.2} s; {} publishes acknowledged",
        outage.switch.as_secs_f64(),
        outage.nodes_ready.as_secs_f64(),
        outage.published.longest_gap.as_secs_f64(),
        outage.published.acked.len()
    );
    println!("{what}: /readyz during the switch: {}", outage.not_ready);
    let mut missed_total = 0;
    for (i, received) in outage.received.iter().enumerate() {
        let name = format!("{what}: subscriber {i}");
        let (missing_after, missing_before) =
            missed_around(&name, received, &outage.published.acked, outage.at_kill);
        println!(
            "{name}: {} received, {} acknowledged messages missed, {} reset frames",
            received.seqs.len(),
            missing_after + missing_before,
            received.resets
        );
        assert_eq!(
            missing_after, 0,
            "{name} missed a message acknowledged after the kill"
        );
        assert!(
            missing_before == 0 || received.resets > 0,
            "{name} lost {missing_before} acknowledged messages without being told"
        );
        missed_total += missing_after + missing_before;
    }
    // The outage must sit inside steady publishing, not at either end.
    let before = outage
        .published
        .acked
        .iter()
        .filter(|s| **s <= outage.at_kill)
        .count();
    let after = outage.published.acked.len() - before;
    assert!(
        before >= 20 && after >= 20,
        "too few publishes around the outage: {before} before the kill, {after} after"
    );
    missed_total
}

/// Replication is asynchronous, so a promoted replica may lack the old
/// master's last writes: the channel's stream restarts under a new epoch,
/// and a client resuming from before the failover is told it was not
/// recovered instead of missing messages silently.
async fn promoted_server_started_a_new_epoch(node: &Gateway, channel: &str, before: &Position) {
    let (mut conn, _) = node.connect("resumer").await;
    let reply = within(conn.subscribe_since(channel, Some(before)))
        .await
        .unwrap();
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], before.epoch.as_str(), "{reply}");
}

/// A member joined on one node is seen through another.
async fn presence_works(joiner: &Gateway, reader: &Gateway, channel: &str) {
    let (mut conn, welcome) = joiner.connect("pat").await;
    within(conn.subscribe(channel)).await.unwrap();
    let (status, body) = api(reader, "GET", &format!("/api/presence/{channel}"), "").await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["connection_id"].as_str())
        .collect();
    assert!(ids.contains(&welcome.connection_id.as_str()), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_sentinel_failover_without_a_restart() {
    let _heavy = HEAVY.lock().await;
    let mut sentinels = Sentinels::start();
    let url = sentinels.url();
    let a = node(&url, "gw-a", &[]).await;
    let b = node(&url, "gw-b", &[]).await;
    presence_works(&a, &b, "room:before").await;
    let mark = publish(&a, "feed:sentinel", json!({ "n": "mark" })).await;

    let outage = fail_over_under_load(&[&a, &b], "feed:sentinel", || {
        let old = sentinels.kill_master();
        sentinels.wait_failover(old, Duration::from_secs(30))
    })
    .await;
    report("sentinel failover", &outage);
    promoted_server_started_a_new_epoch(&a, "feed:sentinel", &mark).await;
    if !outage.not_ready.is_null() {
        let reason = outage.not_ready.to_string();
        assert!(reason.contains("redis"), "{reason}");
    }
    // The same processes publish, deliver and keep presence on the new master.
    presence_works(&b, &a, "room:after").await;
    let (mut sub, _) = a.connect("late").await;
    within(sub.subscribe("feed:after")).await.unwrap();
    publish(&b, "feed:after", json!({ "n": 1 })).await;
    let (channel, data) = within(sub.expect_message()).await.unwrap();
    assert_eq!((channel.as_str(), data), ("feed:after", json!({ "n": 1 })));
}

/// The shard channel a Switchboard channel travels on in a cluster.
fn shard_channel(channel: &str) -> String {
    format!("sb:ch:{{{channel}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_spreads_channels_over_its_shards_and_survives_a_shard_failover() {
    let _heavy = HEAVY.lock().await;
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let cap = [("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "2")];
    let a = node(&url, "gw-a", &cap).await;
    let b = node(&url, "gw-b", &cap).await;
    let c = node(&url, "gw-c", &cap).await;

    // One sharded subscription per channel, on the shard owning its slot.
    let channels: Vec<String> = (0..24).map(|n| format!("feed:spread-{n}")).collect();
    let (mut watcher, _) = b.connect("watcher").await;
    for channel in &channels {
        within(watcher.subscribe(channel)).await.unwrap();
    }
    let mut seen = HashSet::new();
    for master in cluster.masters() {
        let here = cluster.shard_channels(master);
        println!("shard on port {master}: {} channels", here.len());
        assert!(!here.is_empty(), "shard {master} carries no channel");
        for name in here {
            let slot = cluster.slot_of(&name);
            assert_eq!(
                cluster.master_for_slot(slot),
                master,
                "{name} on the wrong shard"
            );
            seen.insert(name);
        }
    }
    for channel in &channels {
        assert!(
            seen.contains(&shard_channel(channel)),
            "{channel} not subscribed"
        );
    }

    // Cross-node delivery with offsets, through SPUBLISH.
    let first = publish(&c, "feed:spread-0", json!({ "n": 1 })).await;
    assert_eq!(first.offset, 1);
    let (channel, data) = within(watcher.expect_message()).await.unwrap();
    assert_eq!(
        (channel.as_str(), data),
        ("feed:spread-0", json!({ "n": 1 }))
    );

    // History and recovery, as on one Redis.
    for n in 2..=4 {
        publish(&a, "feed:spread-0", json!({ "n": n })).await;
    }
    let (mut late, _) = c.connect("late").await;
    let reply = within(late.subscribe_since("feed:spread-0", Some(&first)))
        .await
        .unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
    for n in 2..=4 {
        let (_, data) = within(late.expect_message()).await.unwrap();
        assert_eq!(data, json!({ "n": n }));
    }

    // Presence and the cluster-wide per-user cap.
    presence_works(&a, &c, "room:lobby").await;
    let (_one, _) = a.connect("capped").await;
    let (_two, _) = b.connect("capped").await;
    match Connection::connect(&c.ws_url(&token("capped"))).await {
        Err(ClientError::Refused { status, body, .. }) => assert_eq!(
            (status, body),
            (
                429,
                json!({ "error": "rate_limited", "message": "this user already holds 2 connections" })
            )
        ),
        Err(other) => panic!("a third connection failed otherwise: {other}"),
        Ok(_) => panic!("a third connection was accepted over the cap"),
    }

    // Kill the master of the loaded channel's shard.
    let channel = "feed:failover";
    let mark = publish(&a, channel, json!({ "n": "mark" })).await;
    let victim = cluster.master_for_slot(cluster.slot_of(&shard_channel(channel)));
    let outage = fail_over_under_load(&[&a, &b, &c], channel, || {
        let started = Instant::now();
        cluster.kill(victim);
        cluster.wait_failover(victim, Duration::from_secs(30));
        started.elapsed()
    })
    .await;
    report("cluster shard failover", &outage);
    promoted_server_started_a_new_epoch(&b, channel, &mark).await;
    // Still served, by the new master, with no gateway restarted.
    let moved = cluster.master_for_slot(cluster.slot_of(&shard_channel(channel)));
    assert_ne!(moved, victim);
    let (mut fresh, _) = b.connect("fresh").await;
    within(fresh.subscribe(channel)).await.unwrap();
    assert!(cluster
        .shard_channels(moved)
        .contains(&shard_channel(channel)));
    publish(&a, channel, json!({ "n": "after" })).await;
    let (_, data) = within(fresh.expect_message()).await.unwrap();
    assert_eq!(data, json!({ "n": "after" }));
    presence_works(&c, &a, "room:after").await;
}

/// Occupancy lives in one slot (`{occ}`), so its script, its event stream
/// and the channel listing work on a cluster as on one server.
#[tokio::test]
async fn webhooks_and_the_channel_listing_work_on_a_cluster() {
    let _heavy = HEAVY.lock().await;
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let receiver = receiver::Receiver::start();
    let hooks = [
        (
            "SWITCHBOARD_BACKEND_SECRET",
            "webhook-secret-webhook-secret-0123456789",
        ),
        ("SWITCHBOARD_WEBHOOK_URLS", &receiver.url("/hooks")),
        ("SWITCHBOARD_WEBHOOK_GRACE", "0s"),
    ];
    let a = node(&url, "gw-a", &hooks).await;
    let b = node(&url, "gw-b", &hooks).await;
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, _) = b.connect("bob").await;
    within(alice.subscribe("room:x")).await.unwrap();
    within(bob.subscribe("room:x")).await.unwrap();
    within(bob.subscribe("feed:y")).await.unwrap();
    let names = |requests: &[receiver::Request]| -> Vec<String> {
        requests
            .iter()
            .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                let part = |key: &str| e[key].as_str().unwrap_or("-").to_owned();
                format!("{} {} {}", part("name"), part("channel"), part("user"))
            })
            .collect()
    };
    let wanted = [
        "user_online - alice",
        "user_online - bob",
        "channel_occupied room:x -",
        "member_added room:x alice",
        "member_added room:x bob",
        "channel_occupied feed:y -",
        "member_added feed:y bob",
    ];
    assert!(
        receiver
            .until(
                |r| wanted.iter().all(|w| names(r).contains(&(*w).to_owned())),
                Duration::from_secs(10)
            )
            .await,
        "{:?}",
        names(&receiver.requests())
    );
    let (status, listing) = api(&a, "GET", "/api/channels", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        listing,
        json!({"channels": [
            {"channel": "feed:y", "subscribers": 1, "users": 1},
            {"channel": "room:x", "subscribers": 2, "users": 2},
        ]})
    );
    within(alice.close()).await.unwrap();
    assert!(
        receiver
            .until(
                |r| names(r).contains(&"user_offline - alice".to_owned()),
                Duration::from_secs(10)
            )
            .await
    );
    let mut got = names(&receiver.requests());
    got.sort();
    let mut expected: Vec<String> = wanted
        .iter()
        .chain(&["member_removed room:x alice", "user_offline - alice"])
        .map(|s| (*s).to_owned())
        .collect();
    expected.sort();
    assert_eq!(got, expected, "each event once");
}

#[tokio::test]
async fn tls_to_redis_with_a_configured_ca() {
    let redis = TlsRedis::start();
    let ca = redis.ca_file().display().to_string();
    let tls = [("SWITCHBOARD_REDIS_CA_FILE", ca.as_str())];
    let a = node(&redis.url(), "gw-a", &tls).await;
    let b = node(&redis.url(), "gw-b", &tls).await;
    let (mut sub, _) = a.connect("ann").await;
    within(sub.subscribe("feed:tls")).await.unwrap();
    publish(&b, "feed:tls", json!({ "n": 1 })).await;
    let (_, data) = within(sub.expect_message()).await.unwrap();
    assert_eq!(data, json!({ "n": 1 }));
    presence_works(&a, &b, "room:tls").await;

    // A certificate signed by another CA is refused, and /readyz names the
    // setting to check.
    let wrong = redis.wrong_ca_file().display().to_string();
    let refused = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_REDIS_CA_FILE", &wrong)
        .start();
    let reason = not_ready_saying(&refused, "SWITCHBOARD_REDIS_CA_FILE (redis_ca_file)").await;
    println!("wrong CA: /readyz {reason}");
}

#[tokio::test]
async fn tls_to_redis_with_a_client_certificate() {
    let redis = TlsRedis::start_with_client_auth();
    let files = [
        ("SWITCHBOARD_REDIS_CA_FILE", redis.ca_file()),
        ("SWITCHBOARD_REDIS_TLS_CERT_FILE", redis.client_cert_file()),
        ("SWITCHBOARD_REDIS_TLS_KEY_FILE", redis.client_key_file()),
    ];
    let files: Vec<(&str, String)> = files
        .iter()
        .map(|(k, p)| (*k, p.display().to_string()))
        .collect();
    let env: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = node(&redis.url(), "gw-a", &env).await;
    publish(&a, "feed:mtls", json!({ "n": 1 })).await;
    // Without the client certificate the server hangs up: not ready.
    let without = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_REDIS_CA_FILE", env[0].1)
        .start();
    ready_within(without.addr, 503, WAIT).await.unwrap();
}

#[tokio::test]
async fn bad_redis_settings_stop_start_up_naming_the_key() {
    let url = "SWITCHBOARD_REDIS_URL";
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[(url, "redis+sentinel://127.0.0.1:26379")],
            "switchboard: invalid configuration: SWITCHBOARD_REDIS_URL (redis_url): expected redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/<db>][?sentinel_password=...] (rediss+sentinel:// for TLS): the master name is missing",
        ),
        (
            &[(url, "redis+cluster://127.0.0.1:7000/4")],
            "switchboard: invalid configuration: SWITCHBOARD_REDIS_URL (redis_url): expected redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// for TLS): a cluster has only database 0, got path \"/4\"",
        ),
        (
            &[(url, "redis+cluster://a:1,,b:2")],
            "switchboard: invalid configuration: SWITCHBOARD_REDIS_URL (redis_url): expected redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// for TLS): a host is missing",
        ),
        (
            &[(url, "redis://127.0.0.1:6379/"), ("SWITCHBOARD_REDIS_CA_FILE", "/etc/hostname")],
            "switchboard: invalid configuration: SWITCHBOARD_REDIS_CA_FILE (redis_ca_file): set, but SWITCHBOARD_REDIS_URL (redis_url) does not use TLS (rediss://, rediss+sentinel:// or rediss+cluster://)",
        ),
        (
            &[(url, "rediss://127.0.0.1:6379/"), ("SWITCHBOARD_REDIS_CA_FILE", "/etc/hostname")],
            "switchboard: invalid configuration: SWITCHBOARD_REDIS_CA_FILE (redis_ca_file): /etc/hostname is not a PEM file with a BEGIN CERTIFICATE",
        ),
        (
            &[(url, "rediss://127.0.0.1:6379/"), ("SWITCHBOARD_REDIS_TLS_CERT_FILE", "/etc/hostname")],
            "switchboard: invalid configuration: SWITCHBOARD_REDIS_TLS_KEY_FILE (redis_tls_key_file): missing: a client certificate needs its key",
        ),
    ];
    for (env, expected) in cases {
        assert_eq!(
            start_up_error("", env),
            (Some(2), expected.to_owned()),
            "{env:?}"
        );
    }
}

#[tokio::test]
async fn an_unknown_master_or_unreachable_seeds_show_as_not_ready_with_the_reason() {
    let sentinels = Sentinels::start();
    let unknown = sentinels.url().replace(MASTER_NAME, "nosuchmaster");
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &unknown)
        .start();
    let reason = not_ready_saying(&gateway, "SWITCHBOARD_REDIS_URL (redis_url)").await;
    println!("unknown master: /readyz {reason}");

    let dead = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &dead)
        .start();
    let reason = not_ready_saying(&gateway, "redis cluster: ").await;
    println!("unreachable seeds: /readyz {reason}");
}
