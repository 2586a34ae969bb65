//! "Nothing acknowledged is lost" under failures, against real processes:
//! Redis SIGKILLed and restarted empty under steady publishing from several
//! nodes, every node restarted with SIGTERM in turn while clients on the
//! Rust client reconnect through the drain, and a token that expires while
//! a client's node is down.
//!
//! Each publish carries a sequence number; the publisher records which were
//! acknowledged. Every subscriber must then have received every
//! acknowledged message exactly once, in acknowledgement order; a message
//! whose publish failed may arrive or not (its script may have run before
//! the reply was lost), but never twice. The one exception is a Redis that
//! restarts empty: a message it acknowledged just before the kill may die
//! with it before every node got it, and then the subscribers must be told
//! (a `reset` frame); with an append-only file, nothing is lost at all.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/load.rs"]
mod load;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use load::*;
use serde_json::json;
use switchboard_client::{Client, ClientConfig, Event};
use tokio::sync::mpsc;

/// What a Redis restart under load did to the subscribers.
struct Outage {
    acked: Vec<u64>,
    /// The sequence number being published when Redis was killed.
    at_kill: u64,
    received: Vec<Received>,
}

/// Three nodes on `redis`, two subscribers each; `redis` is SIGKILLed after
/// 1 s of publishing every 20 ms, restarted 3 s later, and publishing goes
/// on for 3 s more.
async fn restart_under_load(mut redis: Redis) -> Outage {
    const CHANNEL: &str = "feed:load";
    // Enough history for the whole outage plus the nodes' reconnect backoff.
    let config = "[namespaces.feed]\nhistory_size = 2000\n";
    let a = cluster_node(&redis, "gw-a", config).await;
    let b = cluster_node(&redis, "gw-b", config).await;
    let c = cluster_node(&redis, "gw-c", config).await;
    let nodes = [&a, &b, &c];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut subscribers = subscribe_on_every_node(&nodes, CHANNEL).await;

    let stop = AtomicBool::new(false);
    let current = AtomicU64::new(0);
    let control = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at_kill = current.load(Ordering::Relaxed);
        redis.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.restart();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        at_kill
    };
    let (published, at_kill) = tokio::join!(
        publish_until(&addrs, CHANNEL, Duration::from_millis(20), &stop, &current),
        control
    );
    let acked = published.acked;
    let last = *acked.last().unwrap();
    assert!(
        acked.len() > 100,
        "too few publishes went through: {acked:?}"
    );
    let mut received = Vec::new();
    for conn in &mut subscribers {
        received.push(drain(conn, CHANNEL, last).await);
    }
    for node in nodes {
        let text = http_get(node.addr, "/metrics", &[]).await.2;
        let resets = text
            .lines()
            .any(|l| l.starts_with("switchboard_stream_resets_total ") && !l.ends_with(" 0"));
        let told = received.iter().any(|r| r.resets > 0);
        assert_eq!(resets, told, "a reset frame is counted, and only then");
    }
    Outage {
        acked,
        at_kill,
        received,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_redis_restarted_under_load_loses_no_acknowledged_message() {
    // appendfsync always: Redis writes the append-only file before it
    // answers, so everything acknowledged survives the SIGKILL, and the
    // nodes fill what they missed from history. Not even a message acked
    // just before the kill, whose Pub/Sub copy some nodes never got, is lost.
    let outage = restart_under_load(Redis::start_durable()).await;
    let mut lost = 0;
    for (i, received) in outage.received.iter().enumerate() {
        let missing = check(&format!("subscriber {i}"), received, &outage.acked);
        println!(
            "subscriber {i}: {} received, {} acknowledged, {missing} acknowledged but undelivered, {} reset frames",
            received.seqs.len(),
            outage.acked.len(),
            received.resets
        );
        assert_eq!(
            received.resets, 0,
            "the stream's past survived: nothing to reset"
        );
        lost += missing;
    }
    assert_eq!(lost, 0, "acknowledged but undelivered messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_under_load_loses_nothing_silently() {
    // Without persistence Redis forgets the channel's history: the stream
    // starts a new epoch. Every message acknowledged after the restart still
    // reaches everyone; one acknowledged just before the kill may have died
    // with Redis before some node got it, and then its subscribers are told
    // so (a reset frame), never left to guess.
    let outage = restart_under_load(Redis::start()).await;
    for (i, received) in outage.received.iter().enumerate() {
        let name = format!("subscriber {i}");
        let (missing_after, missing_before) =
            missed_around(&name, received, &outage.acked, outage.at_kill);
        let after = outage.acked.iter().filter(|s| **s > outage.at_kill).count();
        println!(
            "{name}: {} received, {} acknowledged ({after} after the kill), {missing_after} acknowledged after the kill but undelivered, {missing_before} acknowledged before it and lost with Redis, {} reset frames",
            received.seqs.len(),
            outage.acked.len(),
            received.resets
        );
        assert_eq!(missing_after, 0, "{name} lost a message Redis kept");
        assert!(
            received.resets >= 1,
            "{name} could have lost messages of the old epoch and was not told"
        );
    }
}

/// A cluster node on a fixed port, so it can be replaced in place.
async fn node_on(redis: &Redis, id: &str, addr: SocketAddr, config: &str) -> Gateway {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", id)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_LISTEN", &addr.to_string())
        .env("SWITCHBOARD_DRAIN_WINDOW", "1s")
        .toml(config)
        .start();
    wait_ready(&gateway, 200).await;
    gateway
}

/// Collects a client's events until it has the message `seq >= last` (once
/// `last` is known, i.e. non-zero) or `limit` passes.
async fn collect(
    mut events: mpsc::Receiver<Event>,
    last: Arc<AtomicU64>,
    limit: Duration,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let mut newest = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let target = last.load(Ordering::Relaxed);
        if target != 0 && newest >= target {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Some(event)) => {
                if let Event::Message { data, .. } = &event {
                    newest = newest.max(data["seq"].as_u64().unwrap());
                }
                seen.push(event);
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    seen
}

fn received(events: &[Event]) -> Received {
    Received {
        seqs: events
            .iter()
            .filter_map(|e| match e {
                Event::Message { data, .. } => data["seq"].as_u64(),
                _ => None,
            })
            .collect(),
        resets: events
            .iter()
            .filter(|e| matches!(e, Event::Reset { .. }))
            .count(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_duplicates_and_reorders_nothing() {
    const CHANNEL: &str = "feed:roll";
    let config = "[namespaces.feed]\nhistory_size = 1000\n";
    let redis = Redis::start();
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], restartable_port())))
        .collect();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        nodes.push(node_on(&redis, &format!("gw-{i}"), *addr, config).await);
    }
    let last = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    let mut collectors = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        for j in 0..2 {
            let mut config = ClientConfig::new(format!(
                "ws://{addr}/ws?token={}",
                token(&format!("c{i}{j}"))
            ));
            config.backoff_min = Duration::from_millis(50);
            config.backoff_max = Duration::from_millis(500);
            let (client, mut events) = Client::start(config);
            client.subscribe(CHANNEL);
            // Wait for the first subscribe reply before publishing.
            loop {
                match within(events.recv()).await.unwrap() {
                    Event::Subscribed {
                        recovered: None, ..
                    } => break,
                    Event::Connected(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            collectors.push(tokio::spawn(collect(
                events,
                Arc::clone(&last),
                Duration::from_secs(60),
            )));
            clients.push(client);
        }
    }

    let stop = AtomicBool::new(false);
    let control = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, node) in nodes.iter_mut().enumerate() {
            node.signal("TERM");
            node.wait_exit(Duration::from_secs(15)).await;
            *node = node_on(&redis, &format!("gw-{i}"), addrs[i], config).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let current = AtomicU64::new(0);
    let (published, ()) = tokio::join!(
        publish_until(&addrs, CHANNEL, Duration::from_millis(20), &stop, &current),
        control
    );
    let acked = published.acked;
    last.store(*acked.last().unwrap(), Ordering::Relaxed);
    assert!(
        acked.len() > 100,
        "too few publishes went through: {acked:?}"
    );

    for (i, collector) in collectors.into_iter().enumerate() {
        let events = collector.await.unwrap();
        let got = received(&events);
        let missing = check(&format!("client {i}"), &got, &acked);
        let resumed: Vec<Option<bool>> = events
            .iter()
            .filter_map(|e| match e {
                Event::Subscribed { recovered, .. } => Some(*recovered),
                _ => None,
            })
            .collect();
        println!(
            "client {i}: {} received, {} acknowledged, {missing} missing, resubscribes {resumed:?}",
            got.seqs.len(),
            acked.len()
        );
        assert_eq!(missing, 0, "client {i} lost acknowledged messages");
        assert_eq!(got.resets, 0, "nothing was lost, so nothing to reset");
        assert!(
            !resumed.is_empty() && resumed.iter().all(|r| *r == Some(true)),
            "client {i} reconnected through the drain and recovered every time: {resumed:?}"
        );
    }
    for client in clients {
        client.stop();
    }
}

/// A token provider that counts its calls; the first token expires in
/// `first_lifetime` seconds, later ones in an hour.
fn provider(
    calls: &Arc<AtomicUsize>,
    first_lifetime: u64,
) -> impl Fn() -> std::future::Ready<Result<String, String>> + Send + Sync + 'static {
    let calls = Arc::clone(calls);
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let lifetime = if n == 0 { first_lifetime } else { 3600 };
        let claims =
            json!({ "sub": "tess", "exp": now() + lifetime, "channels": ["*"], "publish": ["*"] });
        std::future::ready(Ok(sign(&claims)))
    }
}

#[tokio::test]
async fn a_token_that_expires_while_the_node_is_down_is_replaced_by_the_provider() {
    let addr = SocketAddr::from(([127, 0, 0, 1], restartable_port()));
    let start = || {
        Gateway::builder()
            .env("SWITCHBOARD_LISTEN", &addr.to_string())
            .env("SWITCHBOARD_API_KEY", API_KEY)
            .env("SWITCHBOARD_JWT_LEEWAY", "0s")
            .start()
    };
    let gateway = start();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut config =
        ClientConfig::new(format!("ws://{addr}/ws")).with_token_provider(provider(&calls, 2));
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(300);
    let (client, mut events) = Client::start(config);
    client.subscribe("feed:t");
    loop {
        match within(events.recv()).await.unwrap() {
            Event::Subscribed { .. } => break,
            Event::Connected(welcome) => assert!(welcome.expires_in.unwrap() <= 2),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The node dies; the token expires while it is down.
    drop(gateway);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gateway = start();
    let mut reconnected = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the client came back")
            .unwrap();
        match event {
            Event::Connected(welcome) => {
                assert!(
                    welcome.expires_in.unwrap() > 3000,
                    "a fresh token: {welcome:?}"
                );
                reconnected = true;
            }
            Event::Subscribed { .. } if reconnected => break,
            Event::Disconnected { code: None, reason } if reason.starts_with("unauthorized") => {
                panic!("the client gave up: {reason}")
            }
            _ => {}
        }
    }
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the provider was asked again"
    );
    let (status, _) = api(
        &gateway,
        "POST",
        "/api/publish",
        r#"{"channel":"feed:t","data":"after"}"#,
    )
    .await;
    assert_eq!(status, 200);
    loop {
        match within(events.recv()).await.unwrap() {
            Event::Message { data, .. } => {
                assert_eq!(data, json!("after"));
                break;
            }
            Event::Error(error) => panic!("unexpected error {error:?}"),
            _ => {}
        }
    }
    client.stop();
}

#[tokio::test]
async fn a_client_whose_tokens_keep_being_refused_stops_with_a_clear_error() {
    let gateway = Gateway::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let mut config = ClientConfig::new(gateway.ws_url("").replace("?token=", ""))
        .with_token_provider(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            // Signed with another key: never accepted.
            let bad = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims("mallory"),
                &jsonwebtoken::EncodingKey::from_secret(b"not-the-gateway-secret-not-the-gateway"),
            );
            std::future::ready(bad.map_err(|e| e.to_string()))
        });
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    let (_client, mut events) = Client::start(config);
    let mut refusals = 0;
    loop {
        match within(events.recv()).await {
            Some(Event::Refused { status: 401 }) => refusals += 1,
            Some(Event::Disconnected { code: None, reason }) => {
                assert!(reason.starts_with("unauthorized:"), "{reason}");
                break;
            }
            None => panic!("ended without a final event"),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refusals, 3, "max_auth_failures defaults to 3");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "a fresh token for every attempt"
    );
    assert!(
        within(events.recv()).await.is_none(),
        "the client stopped for good"
    );
}
