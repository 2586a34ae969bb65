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
//! the reply was lost), but never twice.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_client::{Connection, Frame, Incoming};

/// What one subscriber received.
#[derive(Debug, Default)]
struct Received {
    seqs: Vec<u64>,
    resets: usize,
}

/// Checks a subscriber's messages against the acknowledged publishes;
/// returns how many acknowledged messages it lacks (must be 0).
fn check(name: &str, received: &Received, acked: &[u64]) -> usize {
    let mut seen = HashSet::new();
    for seq in &received.seqs {
        assert!(seen.insert(*seq), "{name}: seq {seq} delivered twice");
    }
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    let in_order: Vec<u64> = received
        .seqs
        .iter()
        .copied()
        .filter(|s| acked_set.contains(s))
        .collect();
    let missing = acked.iter().filter(|s| !seen.contains(s)).count();
    if missing == 0 {
        assert_eq!(
            in_order, acked,
            "{name}: acknowledged messages out of order"
        );
    }
    missing
}

/// Publishes `{"seq": n}` through the API of the nodes in turn, one at a
/// time, every `every`, until `stop`; returns the acknowledged sequence
/// numbers in order.
async fn publish_until(
    nodes: &[&Gateway],
    channel: &str,
    every: Duration,
    stop: &AtomicBool,
) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let node = nodes[seq as usize % nodes.len()];
        let body = json!({ "channel": channel, "data": { "seq": seq } }).to_string();
        if let Some((200, _)) = try_api(node, "/api/publish", &body).await {
            acked.push(seq);
        }
        tokio::time::sleep(every).await;
    }
    acked
}

/// A POST to the server API that tolerates a node being down.
async fn try_api(gateway: &Gateway, path: &str, body: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.ok()?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        Some((status, text))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// Reads `conn` until the message with `last` arrives (or nothing comes for
/// a while), collecting sequence numbers and reset frames.
async fn drain(conn: &mut Connection, channel: &str, last: u64) -> Received {
    let mut received = Received::default();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), conn.next_frame()).await;
        match frame {
            Ok(Ok(Frame::Incoming(Incoming::Message {
                channel: got, data, ..
            }))) if got == channel => {
                let seq = data["seq"].as_u64().unwrap();
                received.seqs.push(seq);
                if seq >= last {
                    return received;
                }
            }
            Ok(Ok(Frame::Incoming(Incoming::Reset { .. }))) => received.resets += 1,
            Ok(Ok(Frame::Incoming(_))) => {}
            Ok(other) => panic!("connection ended: {other:?}"),
            Err(_) => return received,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_no_acknowledged_message() {
    const CHANNEL: &str = "feed:load";
    // Enough history for the whole outage plus the nodes' reconnect backoff.
    let config = "[namespaces.feed]\nhistory_size = 2000\n";
    let mut redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", config).await;
    let b = cluster_node(&redis, "gw-b", config).await;
    let c = cluster_node(&redis, "gw-c", config).await;
    let nodes = [&a, &b, &c];
    let mut subscribers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            let (mut conn, _) = node.connect(&format!("sub-{i}-{j}")).await;
            within(conn.subscribe(CHANNEL)).await.unwrap();
            subscribers.push(conn);
        }
    }

    let stop = AtomicBool::new(false);
    let control = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.restart();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (acked, ()) = tokio::join!(
        publish_until(&nodes, CHANNEL, Duration::from_millis(20), &stop),
        control
    );
    let last = *acked.last().unwrap();
    assert!(
        acked.len() > 100,
        "too few publishes went through: {acked:?}"
    );

    let mut lost = 0;
    for (i, conn) in subscribers.iter_mut().enumerate() {
        let received = drain(conn, CHANNEL, last).await;
        let missing = check(&format!("subscriber {i}"), &received, &acked);
        println!(
            "subscriber {i}: {} received, {} acknowledged, {missing} acknowledged but undelivered, {} reset frames",
            received.seqs.len(),
            acked.len(),
            received.resets
        );
        assert!(
            received.resets >= 1,
            "subscriber {i} could have lost messages of the old epoch and was not told"
        );
        lost += missing;
    }
    assert_eq!(lost, 0, "acknowledged but undelivered messages");
    for node in nodes {
        let text = http_get(node.addr, "/metrics", &[]).await.2;
        assert!(
            text.lines()
                .any(|l| l.starts_with("switchboard_stream_resets_total ") && !l.ends_with(" 0")),
            "the reset is counted"
        );
    }
}
