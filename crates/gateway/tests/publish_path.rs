//! The cluster publish path on a real Redis: publishes that arrive together
//! are stored and published by one history script call on a shared,
//! pipelined connection, and none of that may change what a publisher or a
//! subscriber sees. Offsets on a channel stay dense and follow each
//! publisher's order under many concurrent publishers, and a Redis killed
//! while calls are in flight loses nothing that was acknowledged.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/load.rs"]
mod load;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use load::try_api;
use serde_json::{json, Value};
use switchboard_client::Incoming;

const CHANNELS: u64 = 3;
const PUBLISHERS: u64 = 12;
const EACH: u64 = 40;

/// Reads the value of a metric line (without labels) from /metrics.
async fn metric(gateway: &Gateway, name: &str) -> f64 {
    let text = http_get(gateway.addr, "/metrics", &[]).await.2;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_dense_offsets_in_their_own_order() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    let (mut subscriber, _) = b.connect("sub").await;
    for c in 0..CHANNELS {
        within(subscriber.subscribe(&format!("feed:p{c}")))
            .await
            .unwrap();
    }

    // Twelve publishers on node A, each on its own connection, each waiting
    // for every ack before its next publish: four per channel.
    let publishers = (0..PUBLISHERS).map(|p| {
        let a = &a;
        async move {
            let (mut conn, _) = a.connect(&format!("pub{p}")).await;
            let channel = format!("feed:p{}", p % CHANNELS);
            let mut offsets = Vec::new();
            for n in 0..EACH {
                let reply = within(conn.publish(&channel, &json!({ "p": p, "n": n })))
                    .await
                    .unwrap();
                offsets.push(reply["offset"].as_u64().unwrap());
            }
            (p, offsets)
        }
    });
    let acked = futures_util::future::join_all(publishers).await;

    let per_channel = PUBLISHERS / CHANNELS * EACH;
    let mut by_channel: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (p, offsets) in &acked {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "publisher {p} saw its offsets out of order: {offsets:?}"
        );
        by_channel
            .entry(p % CHANNELS)
            .or_default()
            .extend(offsets.iter().copied());
    }
    for (c, offsets) in &mut by_channel {
        offsets.sort_unstable();
        assert_eq!(
            *offsets,
            (1..=per_channel).collect::<Vec<_>>(),
            "feed:p{c}: every offset once, none skipped"
        );
    }

    // Node B delivers each channel in offset order, every publisher's
    // messages in the order it published them.
    let mut next_offset: HashMap<String, u64> = HashMap::new();
    let mut next_n: HashMap<u64, u64> = HashMap::new();
    for _ in 0..CHANNELS * per_channel {
        match within(subscriber.next_event()).await.unwrap() {
            Incoming::Message {
                channel,
                offset,
                data,
            } => {
                let expected = next_offset.entry(channel.clone()).or_insert(1);
                assert_eq!(offset, Some(*expected), "{channel}: in offset order");
                *expected += 1;
                let p = data["p"].as_u64().unwrap();
                let n = next_n.entry(p).or_insert(0);
                assert_eq!(data["n"].as_u64(), Some(*n), "publisher {p}'s order");
                *n += 1;
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }

    // Every message went through the publisher's script calls.
    let batched = metric(&a, "switchboard_redis_publish_batch_messages_sum").await;
    assert_eq!(batched, (PUBLISHERS * EACH) as f64);
}

/// One page of a channel's history through the server API.
async fn history_page(gateway: &Gateway, channel: &str, since: Option<(u64, &str)>) -> Value {
    let query = match since {
        Some((offset, epoch)) => format!("?limit=1000&since={offset}&epoch={epoch}"),
        None => "?limit=1000&since=0&epoch=x".to_owned(),
    };
    let (status, page) = api(
        gateway,
        "GET",
        &format!("/api/history/{channel}{query}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_mid_batch_loses_nothing_acknowledged() {
    // appendfsync always: Redis writes its append-only file before it
    // answers a script call, so whatever a node acknowledged survives the
    // SIGKILL, however many messages that call carried.
    let mut redis = Redis::start_durable();
    let config = "[namespaces.feed]\nhistory_size = 5000\n";
    let a = cluster_node(&redis, "gw-a", config).await;
    let stop = std::sync::atomic::AtomicBool::new(false);

    // Sixteen publishers through the API, as fast as acks come, on two
    // channels: the calls carry several messages each.
    let publishers = (0..16u64).map(|p| {
        let (a, stop) = (&a, &stop);
        async move {
            let channel = format!("feed:k{}", p % 2);
            let mut acked = Vec::new();
            let mut failed = 0;
            for n in 0..150u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let body = json!({ "channel": channel, "data": { "p": p, "n": n } }).to_string();
                match try_api(a.addr, "/api/publish", &body).await {
                    Some((200, text)) => {
                        let reply: Value =
                            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
                        let position = (
                            reply["offset"].as_u64().unwrap(),
                            reply["epoch"].as_str().unwrap().to_owned(),
                        );
                        acked.push((channel.clone(), position, p, n));
                    }
                    _ => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acked, failed)
        }
    });
    let control = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        redis.stop();
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.restart();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(publishers), control);
    let acked: Vec<_> = results
        .iter()
        .flat_map(|(acked, _)| acked.clone())
        .collect();
    let failed: usize = results.iter().map(|(_, failed)| failed).sum();
    println!(
        "{} acknowledged, {failed} failed while Redis was away",
        acked.len()
    );
    assert!(failed > 0, "the kill happened while publishing");
    assert!(acked.len() > 100, "publishing went on around the kill");

    // Every acknowledged message is in history at the position it was
    // acknowledged with, and each channel's offsets have no gaps.
    for channel in ["feed:k0", "feed:k1"] {
        let mut stored: HashMap<u64, Value> = HashMap::new();
        let first = history_page(&a, channel, None).await;
        let epoch = first["epoch"].as_str().unwrap().to_owned();
        let top = first["offset"].as_u64().unwrap();
        let mut seen = 0;
        let mut page = first;
        loop {
            let messages = page["messages"].as_array().unwrap().clone();
            if messages.is_empty() {
                break;
            }
            for message in &messages {
                let offset = message["offset"].as_u64().unwrap();
                assert_eq!(offset, seen + 1, "{channel}: offsets without gaps");
                seen = offset;
                stored.insert(offset, message["data"].clone());
            }
            page = history_page(&a, channel, Some((seen, &epoch))).await;
        }
        assert_eq!(seen, top, "{channel}: history holds the whole stream");
        for (_, (offset, acked_epoch), p, n) in acked.iter().filter(|m| m.0 == channel) {
            assert_eq!(acked_epoch, &epoch, "durable: the stream kept its epoch");
            assert_eq!(
                stored.get(offset),
                Some(&json!({ "p": p, "n": n })),
                "{channel}: the message acknowledged at offset {offset}"
            );
        }
    }
}

#[tokio::test]
async fn history_keeps_its_size_and_ttl_with_lazy_trims_and_refreshes() {
    // The script trims a list only once it is an eighth over history_size
    // and refreshes the TTLs only every eighth of history_ttl (each set an
    // eighth longer); neither may show through the contract.
    let redis = Redis::start();
    let config = "[namespaces.feed]\nhistory_size = 8\nhistory_ttl = \"16s\"\n";
    let a = cluster_node(&redis, "gw-a", config).await;
    let mut positions = Vec::new();
    for n in 1..=30u64 {
        let body = json!({ "channel": "feed:t", "data": { "n": n } }).to_string();
        let (status, reply) = api(&a, "POST", "/api/publish", &body).await;
        assert_eq!(status, 200, "{reply}");
        positions.push((
            reply["offset"].as_u64().unwrap(),
            reply["epoch"].as_str().unwrap().to_owned(),
        ));
    }
    let len: u64 = redis
        .cli(&["LLEN", "sb:hist:{feed:t}:list"])
        .parse()
        .unwrap();
    assert!((8..=9).contains(&len), "the list holds {len} frames");
    let list_ttl: u64 = redis
        .cli(&["PTTL", "sb:hist:{feed:t}:list"])
        .parse()
        .unwrap();
    assert!(
        list_ttl > 15_000 && list_ttl <= 18_000,
        "list PTTL {list_ttl}"
    );
    let meta_ttl: u64 = redis
        .cli(&["PTTL", "sb:hist:{feed:t}:meta"])
        .parse()
        .unwrap();
    assert!(
        meta_ttl > 86_000_000 && meta_ttl <= 86_402_000,
        "meta PTTL {meta_ttl}"
    );

    // Reads see exactly history_size messages, whatever the list holds.
    let (status, page) = api(&a, "GET", "/api/history/feed:t?limit=100", "").await;
    assert_eq!(status, 200, "{page}");
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (23..=30).collect::<Vec<_>>());
    let (mut conn, _) = a.connect("ann").await;
    let epoch = positions[0].1.clone();
    let old = switchboard_client::Position::new(21, &epoch);
    let reply = within(conn.subscribe_since("feed:t", Some(&old)))
        .await
        .unwrap();
    assert_eq!(reply["recovered"], false, "{reply}");
    let (mut conn, _) = a.connect("bob").await;
    let kept = switchboard_client::Position::new(22, &epoch);
    let reply = within(conn.subscribe_since("feed:t", Some(&kept)))
        .await
        .unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_without_history_share_pipelines_in_each_publishers_order() {
    // Channels without history go out as pipelined PUBLISHes from the same
    // queue: nothing stored, every message delivered, each publisher's in
    // its order.
    let redis = Redis::start();
    let config = "[namespaces.live]\nhistory_size = 0\n";
    let a = cluster_node(&redis, "gw-a", config).await;
    let b = cluster_node(&redis, "gw-b", config).await;
    let (mut subscriber, _) = b.connect("sub").await;
    within(subscriber.subscribe("live:x")).await.unwrap();
    let publishers = (0..4u64).map(|p| {
        let a = &a;
        async move {
            let (mut conn, _) = a.connect(&format!("pub{p}")).await;
            for n in 0..30u64 {
                let reply = within(conn.publish("live:x", &json!({ "p": p, "n": n })))
                    .await
                    .unwrap();
                assert_eq!(reply, json!({}), "no position without history");
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    let mut next_n: HashMap<u64, u64> = HashMap::new();
    for _ in 0..120 {
        match within(subscriber.next_event()).await.unwrap() {
            Incoming::Message { offset, data, .. } => {
                assert_eq!(offset, None);
                let p = data["p"].as_u64().unwrap();
                let n = next_n.entry(p).or_insert(0);
                assert_eq!(data["n"].as_u64(), Some(*n), "publisher {p}'s order");
                *n += 1;
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(redis.cli(&["EXISTS", "sb:hist:{live:x}:list"]), "0");
}
