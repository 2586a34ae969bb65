//! A resubscribe with `since` whose replay is larger than the send queue's
//! byte cap (issue 25), against a real gateway process, in cluster mode on a
//! real redis-server and on one in-memory node.
//!
//! Connections that never read resubscribe with `since` to a channel holding
//! 100 messages of 60 KB. The replay each one gets is bounded by
//! `session.send_queue_bytes` (and in cluster mode so is the history read
//! behind it), so the node's resident memory grows by a small multiple of
//! the cap per connection, not by the 6 MB each one missed. Each is told:
//! the reply says `recovered: false` and `replayed_to`, the messages up to
//! it follow, and the rest are paged through `history`. Another client of
//! the node keeps getting its live messages meanwhile.
//!
//! Memory is read from /proc/<pid>/status (VmRSS) and asserted, never time;
//! run with `--nocapture` to see the figures.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::{Incoming, IntoClientRequest, Message};
use switchboard_protocol::Position;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{client_async, WebSocketStream};

const CHANNEL: &str = "feed:big";
/// Messages stored in the channel (its namespace keeps the default 100).
const STORED: u64 = 100;
/// Bytes of each message's data.
const DATA_BYTES: usize = 60_000;
/// What a queue charges per frame beyond its bytes (`QUEUE_ENTRY_OVERHEAD`).
const ENTRY_OVERHEAD: usize = 64;

type Socket = WebSocketStream<TcpStream>;

/// The next text frame (pings are answered by tungstenite).
async fn next_text(ws: &mut Socket) -> String {
    loop {
        match within(ws.next()).await.unwrap().unwrap() {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next text frame, as JSON.
async fn next_json(ws: &mut Socket) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// A connection that reads its welcome, asks to resume `CHANNEL` from
/// `since` and then reads nothing, with the smallest receive window the
/// kernel allows: what the node writes to it stays in the node.
async fn never_reading(gateway: &Gateway, user: &str, since: &Position) -> Socket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within(socket.connect(gateway.addr)).await.unwrap();
    let request = gateway.ws_url(&token(user)).into_client_request().unwrap();
    let (mut ws, _) = within(client_async(request, stream)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let subscribe = json!({
        "type": "subscribe",
        "channel": CHANNEL,
        "since": { "offset": since.offset, "epoch": since.epoch },
        "id": 1,
    });
    within(ws.send(Message::text(subscribe.to_string())))
        .await
        .unwrap();
    ws
}

/// Publishes `data` on `CHANNEL` through the server API; returns the position.
async fn publish(gateway: &Gateway, data: &Value) -> Position {
    let body = json!({ "channel": CHANNEL, "data": data }).to_string();
    let (status, reply) = api(gateway, "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{reply}");
    Position::new(
        reply["offset"].as_u64().unwrap(),
        reply["epoch"].as_str().unwrap(),
    )
}

fn padding(n: u64) -> Value {
    json!({ "n": n, "pad": "x".repeat(DATA_BYTES) })
}

/// The sum of a counter's samples in /metrics whose line starts with `prefix`.
async fn counter(gateway: &Gateway, prefix: &str) -> u64 {
    let text = http_get(gateway.addr, "/metrics", &[]).await.2;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// How many stored frames, from offset 1 on, fit in `cap` bytes as a queue
/// counts them, given the length of the frame at offset 1 (later offsets
/// have more digits).
fn fitting(cap: usize, first_len: usize) -> u64 {
    let mut used = 0;
    for offset in 1..=STORED {
        let len = first_len + offset.to_string().len() - 1;
        used += len + ENTRY_OVERHEAD;
        if used > cap {
            return offset - 1;
        }
    }
    STORED
}

/// What the node did while `connections` clients that never read resumed.
struct Figures {
    before: u64,
    during: u64,
}

impl Figures {
    fn growth(&self) -> u64 {
        self.during.saturating_sub(self.before)
    }
}

/// Fills `CHANNEL`, subscribes a witness, then has `connections` clients
/// that never read resume from offset 0; measures the node's resident
/// memory before and while they hold their replays, and checks the witness
/// still gets live messages. Returns the figures, the clients and the
/// stream's epoch.
async fn resume_without_reading(
    gateway: &Gateway,
    mode: &str,
    cap: usize,
    connections: usize,
) -> (Figures, Vec<Socket>, String) {
    let mut epoch = String::new();
    for n in 1..=STORED {
        let position = publish(gateway, &padding(n)).await;
        assert_eq!(position.offset, n);
        epoch = position.epoch;
    }
    let (mut witness, _) = gateway.connect("witness").await;
    let reply = within(witness.subscribe(CHANNEL)).await.unwrap();
    assert_eq!(reply, json!({ "offset": STORED, "epoch": epoch }));
    // Settle the node's memory after the publishes before the baseline.
    within(witness.ping()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = gateway.resident_bytes();

    let since = Position::new(0, &epoch);
    let mut hostile = Vec::new();
    for i in 0..connections {
        hostile.push(never_reading(gateway, &format!("hostile-{i}"), &since).await);
    }
    // A recovery is counted once its page is read, before the write: then
    // every session holds what it will write.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(gateway, "switchboard_recoveries_total{").await < connections as u64 {
        assert!(
            Instant::now() < deadline,
            "the resubscribes were not all read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = gateway.resident_bytes();
    let figures = Figures { before, during };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{mode}: {connections} connections that never read resume {STORED} messages of {DATA_BYTES} bytes \
         with session.send_queue_bytes = {cap}: VmRSS {:.1} MiB before, {:.1} MiB during, \
         growth {:.1} MiB ({:.0} KiB per connection; cap x connections = {:.1} MiB)",
        mib(before),
        mib(during),
        mib(figures.growth()),
        figures.growth() as f64 / 1024.0 / connections as f64,
        mib((cap * connections) as u64),
    );

    // Everyone else on the node is unaffected: live messages still flow.
    let live = publish(gateway, &json!({ "n": "live" })).await;
    assert_eq!(live.offset, STORED + 1);
    match within(witness.next_event()).await.unwrap() {
        Incoming::Message {
            channel,
            offset,
            data,
        } => assert_eq!(
            (channel.as_str(), offset, data),
            (CHANNEL, Some(STORED + 1), json!({ "n": "live" }))
        ),
        other => panic!("the witness got {other:?}"),
    }
    (figures, hostile, epoch)
}

/// Reads what one of the clients got once it reads: the exact reply, the
/// messages that fit in the cap from offset 1, then the live message
/// published meanwhile (offset 101), and nothing at or below the reply's
/// offset after the replay. Returns where the replay ended.
async fn read_partial_replay(ws: &mut Socket, epoch: &str, cap: usize) -> u64 {
    let reply = next_json(ws).await;
    let text = next_text(ws).await;
    let first: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(first["offset"], 1, "{first}");
    let end = fitting(cap, text.len());
    assert!(
        end > 0 && end < STORED,
        "the cap fits part of the replay: {end}"
    );
    assert_eq!(
        reply,
        json!({
            "type": "reply",
            "id": 1,
            "result": {
                "offset": STORED,
                "epoch": epoch,
                "recovered": false,
                "replayed_to": end,
            },
        })
    );
    assert_eq!(first["data"], padding(1));
    for n in 2..=end {
        let message = next_json(ws).await;
        assert_eq!(
            (&message["offset"], &message["data"]["n"]),
            (&json!(n), &json!(n))
        );
    }
    let live = next_json(ws).await;
    assert_eq!(
        live,
        json!({ "type": "message", "channel": CHANNEL, "offset": STORED + 1, "data": { "n": "live" } }),
        "after the replay, the first live message above the reply's offset"
    );
    end
}

/// Pages the rest through `history` from where the replay ended: every
/// message up to the reply's offset is there, in order.
async fn page_the_rest(ws: &mut Socket, epoch: &str, end: u64) {
    let mut next = end + 1;
    let mut id = 10;
    while next <= STORED + 1 {
        id += 1;
        let command = json!({
            "type": "history",
            "channel": CHANNEL,
            "since": { "offset": next - 1, "epoch": epoch },
            "limit": 20,
            "id": id,
        });
        within(ws.send(Message::text(command.to_string())))
            .await
            .unwrap();
        let reply = next_json(ws).await;
        assert_eq!(reply["id"], id);
        assert_eq!(reply["result"]["recovered"], true, "still in history");
        let messages = reply["result"]["messages"].as_array().unwrap();
        assert!(!messages.is_empty());
        for message in messages {
            assert_eq!(message["offset"], next);
            next += 1;
        }
    }
}

async fn check(gateway: &Gateway, mode: &str, cap: usize, connections: usize, bound: usize) {
    let (figures, mut hostile, epoch) =
        resume_without_reading(gateway, mode, cap, connections).await;
    assert!(
        figures.growth() <= bound as u64,
        "{mode}: the node grew by {} bytes for {connections} connections, over {bound}",
        figures.growth()
    );
    assert_eq!(
        counter(gateway, "switchboard_recoveries_total{outcome=\"partial\"}").await,
        connections as u64
    );
    let mut ends = Vec::new();
    for ws in &mut hostile {
        ends.push(read_partial_replay(ws, &epoch, cap).await);
    }
    page_the_rest(&mut hostile[0], &epoch, ends[0]).await;
}

fn config(cap: usize) -> String {
    // Sessions blocked on a full socket stay blocked while memory is read.
    format!(
        "[session]\nsend_queue_bytes = {cap}\nping_interval = \"120s\"\npong_timeout = \"60s\"\n"
    )
}

/// A small queue: each replay fits two of the 60 KB messages. The bound is
/// eight times the cap per connection; unbounded, each connection cost the
/// node about 6 MB (48 times the cap).
const SMALL_CAP: usize = 128 * 1024;
const CONNECTIONS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_over_the_cap_is_cut_and_told_in_cluster_mode() {
    let redis = Redis::start();
    let gateway = cluster_node(&redis, "gw-a", &config(SMALL_CAP)).await;
    check(
        &gateway,
        "cluster",
        SMALL_CAP,
        CONNECTIONS,
        8 * SMALL_CAP * CONNECTIONS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_over_the_cap_is_cut_and_told_on_one_node() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(&config(SMALL_CAP))
        .start();
    check(
        &gateway,
        "embedded",
        SMALL_CAP,
        CONNECTIONS,
        8 * SMALL_CAP * CONNECTIONS,
    )
    .await;
}

/// The issue's measurement: 1 MiB queue (the default), 30 connections, 100
/// messages of 60 KB, cluster mode. Before the bound the node grew by about
/// 172 MiB (5.7 times the cap per connection); now at most 3 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issues_scenario_stays_within_a_few_caps_per_connection() {
    const CAP: usize = 1 << 20;
    let redis = Redis::start();
    let gateway = cluster_node(&redis, "gw-a", &config(CAP)).await;
    check(&gateway, "cluster", CAP, CONNECTIONS, 3 * CAP * CONNECTIONS).await;
}

/// A client that keeps reading gets a full replay when it fits, as before.
#[tokio::test]
async fn a_replay_within_the_cap_is_whole() {
    let redis = Redis::start();
    let gateway = cluster_node(&redis, "gw-a", &config(SMALL_CAP)).await;
    let mut epoch = String::new();
    for n in 1..=3 {
        epoch = publish(&gateway, &padding(n)).await.epoch;
    }
    let (mut conn, _) = gateway.connect("ann").await;
    let since = Position::new(1, &epoch);
    let reply = within(conn.subscribe_since(CHANNEL, Some(&since)))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({ "offset": 3, "epoch": epoch, "recovered": true })
    );
    for n in 2..=3 {
        match within(conn.next_event()).await.unwrap() {
            Incoming::Message { offset, data, .. } => {
                assert_eq!((offset, data), (Some(n), padding(n)));
            }
            other => panic!("expected message {n}, got {other:?}"),
        }
    }
    assert_eq!(
        counter(
            &gateway,
            "switchboard_recoveries_total{outcome=\"recovered\"}"
        )
        .await,
        1
    );
    within(conn.close()).await.unwrap();
}

/// Many small messages of varying sizes: the Redis script reads them in
/// several chunks and must stop exactly where the rule does (the memory
/// store too): the replay is the longest run from `since` whose frames,
/// each counted as its length plus the queue's overhead, fit in the cap.
async fn cut_exactly_at_the_cap(gateway: &Gateway) {
    const CAP: usize = 16 * 1024;
    const COUNT: u64 = 600;
    let data = |n: u64| json!({ "n": n, "pad": "y".repeat((n % 13 * 25) as usize) });
    let frame = |n: u64| {
        format!(
            r#"{{"type":"message","channel":"{CHANNEL}","offset":{n},"data":{}}}"#,
            data(n)
        )
    };
    let mut epoch = String::new();
    for n in 1..=COUNT {
        epoch = publish(gateway, &data(n)).await.epoch;
    }
    let since = Position::new(40, &epoch);
    let mut ws = never_reading(gateway, "small", &since).await;
    let reply = next_json(&mut ws).await;
    let mut used = 0;
    let mut end = since.offset;
    while used + frame(end + 1).len() + ENTRY_OVERHEAD <= CAP {
        used += frame(end + 1).len() + ENTRY_OVERHEAD;
        end += 1;
    }
    assert!(end - since.offset > 50, "a cut after several chunks: {end}");
    assert_eq!(
        reply,
        json!({
            "type": "reply",
            "id": 1,
            "result": { "offset": COUNT, "epoch": epoch, "recovered": false, "replayed_to": end },
        })
    );
    for n in since.offset + 1..=end {
        assert_eq!(next_text(&mut ws).await, frame(n));
    }
    let ping = json!({ "type": "ping", "id": 2 }).to_string();
    within(ws.send(Message::text(ping))).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "reply", "id": 2, "result": {} }),
        "nothing after the replay"
    );
}

fn small_frames() -> String {
    "[session]\nmax_frame_bytes = 8192\nsend_queue_bytes = 16384\n\
     [namespaces.feed]\nhistory_size = 1000\n"
        .to_owned()
}

#[tokio::test]
async fn the_redis_script_cuts_exactly_at_the_cap() {
    let redis = Redis::start();
    let gateway = cluster_node(&redis, "gw-a", &small_frames()).await;
    cut_exactly_at_the_cap(&gateway).await;
}

#[tokio::test]
async fn the_memory_store_cuts_exactly_at_the_cap() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(&small_frames())
        .start();
    cut_exactly_at_the_cap(&gateway).await;
}
