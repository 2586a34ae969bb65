//! Load helpers for the tests that break Redis under steady publishing:
//! a publisher that records what was acknowledged, subscribers that record
//! what they received, and the check that compares the two.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_client::{Connection, Frame, Incoming};

use crate::common::{within, Gateway, API_KEY};

/// Two subscribers of `channel` on each node, named `sub-<node>-<n>`.
pub async fn subscribe_on_every_node(nodes: &[&Gateway], channel: &str) -> Vec<Connection> {
    let mut subscribers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            let (mut conn, _) = node.connect(&format!("sub-{i}-{j}")).await;
            within(conn.subscribe(channel)).await.unwrap();
            subscribers.push(conn);
        }
    }
    subscribers
}

/// What one subscriber received.
#[derive(Debug, Default)]
pub struct Received {
    pub seqs: Vec<u64>,
    pub resets: usize,
}

/// Checks a subscriber's messages against the acknowledged publishes;
/// returns how many acknowledged messages it lacks (must be 0).
pub fn check(name: &str, received: &Received, acked: &[u64]) -> usize {
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
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !seen.contains(s))
        .collect();
    if !missing.is_empty() {
        println!("{name}: acknowledged but not received: {missing:?}");
    }
    let missing = missing.len();
    if missing == 0 {
        assert_eq!(
            in_order, acked,
            "{name}: acknowledged messages out of order"
        );
    }
    missing
}

/// What a publisher got acknowledged.
pub struct Published {
    /// Acknowledged sequence numbers, in order.
    pub acked: Vec<u64>,
    /// The longest time between two acknowledgements: the outage as a
    /// publisher saw it.
    pub longest_gap: Duration,
}

/// Publishes `{"seq": n}` through the API of the nodes in turn, one at a
/// time, every `every`, until `stop`.
pub async fn publish_until(
    nodes: &[SocketAddr],
    channel: &str,
    every: Duration,
    stop: &AtomicBool,
    current: &AtomicU64,
) -> Published {
    let mut acked = Vec::new();
    let mut seq = 0u64;
    let mut last_ack = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        current.store(seq, Ordering::Relaxed);
        let node = nodes[seq as usize % nodes.len()];
        let body = json!({ "channel": channel, "data": { "seq": seq } }).to_string();
        if let Some((200, _)) = try_api(node, "/api/publish", &body).await {
            acked.push(seq);
            longest_gap = longest_gap.max(last_ack.elapsed());
            last_ack = Instant::now();
        }
        tokio::time::sleep(every).await;
    }
    Published { acked, longest_gap }
}

/// A POST to the server API that tolerates a node being down.
pub async fn try_api(addr: SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
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
pub async fn drain(conn: &mut Connection, channel: &str, last: u64) -> Received {
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

/// For a subscriber of a stream broken at `at_kill`: how many messages
/// acknowledged after the break it lacks (checked for order and
/// duplicates by [`check`]), and how many acknowledged at or before it.
pub fn missed_around(
    name: &str,
    received: &Received,
    acked: &[u64],
    at_kill: u64,
) -> (usize, usize) {
    let after: Vec<u64> = acked.iter().copied().filter(|s| *s > at_kill).collect();
    let missing_after = check(name, received, &after);
    let seen: HashSet<u64> = received.seqs.iter().copied().collect();
    let missing_before = acked
        .iter()
        .filter(|s| **s <= at_kill && !seen.contains(s))
        .count();
    (missing_after, missing_before)
}
