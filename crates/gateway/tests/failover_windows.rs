//! What a node says and what its clients get while part of the data has no
//! Redis master: a Redis Cluster shard whose primary was killed, until the
//! cluster promotes its replica, and a Sentinel deployment between the
//! master's death and the sentinels' switch. Real servers, started as in
//! `redis_topologies.rs` (`common/topology.rs`).
//!
//! While a master is dead, the test reads `/readyz` on every node every
//! 100 ms and publishes to a channel of the dead master every 100 ms, over
//! WebSocket and through `POST /api/publish` (each attempt on its own, so a
//! slow one does not hold the next), and a subscriber of that channel
//! records its `reset` frame. Asserted, whatever the timing:
//! - from a node's first 503 on, it never answers 200 while no master
//!   serves the dead master's data (the test asks Redis right after each
//!   answer), and it answers 200 once one does;
//! - the reason names what is down (on a cluster: the slot range and the
//!   primary's address);
//! - every publish that fails gets exactly the documented error:
//!   `unavailable` `message not published: broker unavailable` over
//!   WebSocket, 503 with `Retry-After: 1` and that body from the API.
//!
//! The tests run by `make test` hold the failover back (the replica may not
//! take over, or the sentinels wait a minute before calling the master
//! down) until they have seen a publish fail each way, then let it happen:
//! that makes "a publish fails during the window" certain instead of a
//! race. The `natural_*` tests let the failover happen by itself and check
//! the same invariants; `make test` runs them once each, and with
//! `SWITCHBOARD_WINDOW_RUNS=5` and `--nocapture` they print the windows of
//! five kills: the figures of docs/operations.md. No duration is ever
//! asserted.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/topology.rs"]
mod topology;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, Frame, Incoming};
use topology::*;

/// `feed:` keeps history, so a failover shows as a `reset`.
const CONFIG: &str = "[namespaces.feed]\nhistory_size = 100\n";
const EVERY: Duration = Duration::from_millis(100);
/// The one error a failed publish may get.
const WS_ERROR: (&str, &str) = ("unavailable", "message not published: broker unavailable");
const API_ERROR: &str =
    r#"{"error":"unavailable","message":"message not published: broker unavailable"}"#;
/// Publishing connections kept open for the attempts (an attempt may wait
/// up to 2 s for Redis, and one starts every 100 ms).
const POOL: usize = 30;

/// A node on `url`, ready.
async fn node(url: &str, id: &str) -> Gateway {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", url)
        .env("SWITCHBOARD_NODE_ID", id)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(CONFIG)
        .start();
    wait_ready(&gateway, 200).await;
    gateway
}

/// Whether a master serves the dead master's data now (asked of Redis).
type HasMaster = Arc<dyn Fn() -> bool + Send + Sync>;

/// One `/readyz` answer, `at` after the kill.
#[derive(Debug, Clone)]
struct Readiness {
    at: Duration,
    status: u16,
    reason: String,
    /// Whether a master served the data once the answer was in: `false`
    /// means none did when the node answered.
    master: bool,
}

/// How one publish ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Published,
    /// The WebSocket reply's error `(code, message)`.
    WsError(String, String),
    /// The API's status, `Retry-After` and body.
    ApiError(u16, Option<String>, String),
}

#[derive(Debug, Clone)]
struct Attempt {
    api: bool,
    at: Duration,
    took: Duration,
    outcome: Outcome,
}

/// What one kill gave.
#[derive(Debug, Default)]
struct Window {
    /// From the kill until the fixture saw the new master.
    switch: Duration,
    /// Per node, in the order given.
    readiness: Vec<Vec<Readiness>>,
    attempts: Vec<Attempt>,
    /// `reset` frames the subscriber got, with when.
    resets: Vec<(Duration, Value)>,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()))
}

impl Window {
    /// A node's first 503, and its first 200 after that.
    fn not_ready(&self, node: usize) -> (Option<Duration>, Option<Duration>) {
        let samples = &self.readiness[node];
        let first = samples.iter().find(|r| r.status == 503).map(|r| r.at);
        let back = first.and_then(|from| {
            samples
                .iter()
                .find(|r| r.at > from && r.status == 200)
                .map(|r| r.at)
        });
        (first, back)
    }

    fn failed(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.outcome != Outcome::Published)
    }

    /// The longest time without a publish acknowledged, from the kill.
    fn longest_without_ack(&self) -> Duration {
        let mut acks: Vec<Duration> = self
            .attempts
            .iter()
            .filter(|a| a.outcome == Outcome::Published)
            .map(|a| a.at + a.took)
            .collect();
        acks.sort();
        let mut last = Duration::ZERO;
        let mut longest = Duration::ZERO;
        for ack in acks {
            longest = longest.max(ack.saturating_sub(last));
            last = ack;
        }
        longest
    }

    /// The figures of one run, one line.
    fn summary(&self, what: &str) -> String {
        let mut line = format!("{what}: switch {} s", secs(Some(self.switch)));
        for node in 0..self.readiness.len() {
            let (first, back) = self.not_ready(node);
            let wrong = self.ready_without_master(node).len();
            let _ = write!(
                line,
                "; node {node}: 503 from {} s to {} s ({wrong} answers 200 without a master)",
                secs(first),
                secs(back)
            );
        }
        let failed: Vec<&Attempt> = self.failed().collect();
        let _ = write!(
            line,
            "; {} of {} publishes failed, started from {} s to {} s, each after {} to {} s; longest without an acknowledged publish {} s; longest publish {} s; reset at {} s",
            failed.len(),
            self.attempts.len(),
            secs(failed.iter().map(|a| a.at).min()),
            secs(failed.iter().map(|a| a.at).max()),
            secs(failed.iter().map(|a| a.took).min()),
            secs(failed.iter().map(|a| a.took).max()),
            secs(Some(self.longest_without_ack())),
            secs(self.attempts.iter().map(|a| a.took).max()),
            secs(self.resets.first().map(|(at, _)| *at)),
        );
        line
    }

    /// The reasons a node gave, in order, each once with when it first came.
    fn reasons(&self, node: usize) -> Vec<(Duration, &str)> {
        let mut reasons: Vec<(Duration, &str)> = Vec::new();
        for sample in self.readiness[node].iter().filter(|r| r.status == 503) {
            if reasons
                .last()
                .is_none_or(|(_, last)| *last != sample.reason)
            {
                reasons.push((sample.at, &sample.reason));
            }
        }
        reasons
    }

    /// The reasons of every node, one a line, and the `reset` frames.
    fn print_reasons(&self, what: &str) {
        for (at, reset) in &self.resets {
            println!("{what}: at {:.2} s: {reset}", at.as_secs_f64());
        }
        for node in 0..self.readiness.len() {
            for (at, reason) in self.reasons(node) {
                println!(
                    "{what}: node {node} from {:.2} s: {reason}",
                    at.as_secs_f64()
                );
            }
        }
    }

    /// A node's 200 answers, after its first 503, given while no master
    /// served the data.
    fn ready_without_master(&self, node: usize) -> Vec<&Readiness> {
        let (Some(first), _) = self.not_ready(node) else {
            return Vec::new();
        };
        self.readiness[node]
            .iter()
            .filter(|r| r.at > first && r.status == 200 && !r.master)
            .collect()
    }

    /// What must hold whatever the timing (see the file's doc).
    fn check(&self, what: &str) {
        for node in 0..self.readiness.len() {
            let wrong = self.ready_without_master(node);
            assert!(
                wrong.is_empty(),
                "{what}: node {node} said ready while no master served the data: {wrong:?}"
            );
            for sample in self.readiness[node].iter().filter(|r| r.status == 503) {
                assert!(sample.reason.starts_with("redis"), "{what}: {sample:?}");
            }
            let (first, back) = self.not_ready(node);
            assert!(first.is_some(), "{what}: node {node} never said 503");
            assert!(back.is_some(), "{what}: node {node} never said 200 again");
        }
        for attempt in self.failed() {
            match &attempt.outcome {
                Outcome::WsError(code, message) => {
                    assert_eq!(
                        (code.as_str(), message.as_str()),
                        WS_ERROR,
                        "{what}: {attempt:?}"
                    );
                }
                Outcome::ApiError(status, retry_after, body) => assert_eq!(
                    (*status, retry_after.as_deref(), body.as_str()),
                    (503, Some("1"), API_ERROR),
                    "{what}: {attempt:?}"
                ),
                Outcome::Published => {}
            }
        }
    }
}

/// The samplers of one kill, running until `stop`.
struct Watch {
    killed: Instant,
    stop: Arc<AtomicBool>,
    readiness: Vec<Arc<Mutex<Vec<Readiness>>>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    listening: tokio::task::JoinHandle<Vec<(Duration, Value)>>,
}

impl Watch {
    /// Starts reading `/readyz` on `nodes`, publishing to `channel` through
    /// `publisher` (over `pool` and the API) and reading `subscriber`;
    /// times count from now (make it right before the kill).
    fn start(
        nodes: &[SocketAddr],
        publisher: SocketAddr,
        channel: &str,
        pool: Vec<Connection>,
        subscriber: Connection,
        has_master: &HasMaster,
    ) -> Watch {
        let killed = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let readiness: Vec<Arc<Mutex<Vec<Readiness>>>> =
            nodes.iter().map(|_| Arc::default()).collect();
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = nodes
            .iter()
            .zip(&readiness)
            .map(|(&node, samples)| {
                let stop = Arc::clone(&stop);
                let has_master = Arc::clone(has_master);
                let samples = Arc::clone(samples);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let at = killed.elapsed();
                        let (status, _, body) = http_get(node, "/readyz", &[]).await;
                        let has_master = Arc::clone(&has_master);
                        let master = tokio::task::spawn_blocking(move || has_master())
                            .await
                            .unwrap();
                        let reason = serde_json::from_str::<Value>(&body).unwrap()["reason"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        samples.lock().unwrap().push(Readiness {
                            at,
                            status,
                            reason,
                            master,
                        });
                        tokio::time::sleep(EVERY).await;
                    }
                })
            })
            .collect();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        tasks.push(tokio::spawn(publish_every(
            publisher,
            channel.to_owned(),
            pool,
            killed,
            Arc::clone(&stop),
            Arc::clone(&attempts),
        )));
        let listening = tokio::spawn(listen(
            subscriber,
            channel.to_owned(),
            killed,
            Arc::clone(&stop),
        ));
        Watch {
            killed,
            stop,
            readiness,
            attempts,
            tasks,
            listening,
        }
    }

    /// Goes on until, for the last 1.5 s, every node answered 200 and every
    /// publish succeeded (at most 30 s), then stops and collects.
    async fn settle(self, switch: Duration) -> Window {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !self.settled() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let mut attempts = self.attempts.lock().unwrap().clone();
        attempts.sort_by_key(|a| (a.at, a.api));
        Window {
            switch,
            readiness: self
                .readiness
                .iter()
                .map(|samples| samples.lock().unwrap().clone())
                .collect(),
            attempts,
            resets: self.listening.await.unwrap(),
        }
    }

    fn settled(&self) -> bool {
        let recent = self
            .killed
            .elapsed()
            .saturating_sub(Duration::from_millis(1500));
        let ready = self.readiness.iter().all(|samples| {
            let samples = samples.lock().unwrap();
            let last: Vec<&Readiness> = samples.iter().filter(|r| r.at >= recent).collect();
            last.len() >= 5 && last.iter().all(|r| r.status == 200)
        });
        let attempts = self.attempts.lock().unwrap();
        let last: Vec<&Attempt> = attempts.iter().filter(|a| a.at >= recent).collect();
        ready && last.len() >= 5 && last.iter().all(|a| a.outcome == Outcome::Published)
    }
}

/// Every 100 ms until `stop`: a WebSocket publish on a free connection of
/// `pool` and an API publish, each in its own task.
async fn publish_every(
    node: SocketAddr,
    channel: String,
    pool: Vec<Connection>,
    killed: Instant,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
) {
    let pool = Arc::new(Mutex::new(pool));
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let conn = pool.lock().unwrap().pop();
        if let Some(mut conn) = conn {
            let (pool, attempts, channel) =
                (Arc::clone(&pool), Arc::clone(&attempts), channel.clone());
            tasks.push(tokio::spawn(async move {
                let at = killed.elapsed();
                let started = Instant::now();
                let outcome = match tokio::time::timeout(
                    Duration::from_secs(10),
                    conn.publish(&channel, &json!({ "ws": n })),
                )
                .await
                .expect("a publish got no reply within 10 s")
                {
                    Ok(_) => Outcome::Published,
                    Err(ClientError::Reply(error)) => Outcome::WsError(error.code, error.message),
                    Err(other) => panic!("a publishing connection broke: {other}"),
                };
                attempts.lock().unwrap().push(Attempt {
                    api: false,
                    at,
                    took: started.elapsed(),
                    outcome,
                });
                pool.lock().unwrap().push(conn);
            }));
        }
        let (attempts, channel) = (Arc::clone(&attempts), channel.clone());
        tasks.push(tokio::spawn(async move {
            let at = killed.elapsed();
            let started = Instant::now();
            let body = json!({ "channel": channel, "data": { "api": n } }).to_string();
            let auth = format!("Bearer {API_KEY}");
            let (status, headers, body) = http_exchange(
                node,
                "POST",
                "/api/publish",
                &[("Authorization", &auth)],
                &body,
            )
            .await;
            let outcome = if status == 200 {
                Outcome::Published
            } else {
                Outcome::ApiError(status, headers.get("retry-after").cloned(), body)
            };
            attempts.lock().unwrap().push(Attempt {
                api: true,
                at,
                took: started.elapsed(),
                outcome,
            });
        }));
        tokio::time::sleep(EVERY).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The `reset` frames `conn` gets for `channel` until `stop`.
async fn listen(
    mut conn: Connection,
    channel: String,
    killed: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, Value)> {
    let mut resets = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(EVERY, conn.next_frame()).await {
            Err(_) => {}
            Ok(Ok(Frame::Incoming(Incoming::Reset {
                channel: got,
                offset,
                epoch,
            }))) if got == channel => resets.push((
                killed.elapsed(),
                json!({ "type": "reset", "channel": got, "offset": offset, "epoch": epoch }),
            )),
            Ok(Ok(Frame::Incoming(_))) => {}
            Ok(other) => panic!("the subscriber's connection ended: {other:?}"),
        }
    }
    resets
}

/// `n` connections of distinct users, opened before the kill (opening one
/// needs Redis: the per-user count).
async fn pool(gateway: &Gateway, n: usize) -> Vec<Connection> {
    let mut pool = Vec::new();
    for i in 0..n {
        pool.push(gateway.connect(&format!("publisher-{i}")).await.0);
    }
    pool
}

/// Polls `node`'s /readyz until it answers 503 with a reason holding every
/// one of `needles`; the reason.
async fn not_ready_naming(node: SocketAddr, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = http_get(node, "/readyz", &[]).await;
        if status == 503 && needles.iter().all(|n| body.contains(n)) {
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["status"], "unavailable", "{body}");
            return body["reason"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named {needles:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A publish to `channel` over `conn` and through the API of `node` both
/// fail, with exactly the documented errors.
async fn publishes_fail_with_unavailable(node: &Gateway, conn: &mut Connection, channel: &str) {
    match tokio::time::timeout(
        Duration::from_secs(10),
        conn.publish(channel, &json!("held")),
    )
    .await
    .unwrap()
    {
        Err(ClientError::Reply(error)) => {
            assert_eq!((error.code.as_str(), error.message.as_str()), WS_ERROR)
        }
        other => panic!("a WebSocket publish with no master must fail: {other:?}"),
    }
    let auth = format!("Bearer {API_KEY}");
    let body = json!({ "channel": channel, "data": "held" }).to_string();
    let (status, headers, body) = http_exchange(
        node.addr,
        "POST",
        "/api/publish",
        &[("Authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(
        (
            status,
            headers.get("retry-after").map(String::as_str),
            body.as_str()
        ),
        (503, Some("1"), API_ERROR)
    );
}

/// The shard channel of a Switchboard channel.
fn shard_channel(channel: &str) -> String {
    format!("sb:ch:{{{channel}}}")
}

/// The first `feed:<prefix>-<n>` whose shard is (or is not) `master`'s.
fn channel_on(cluster: &RedisCluster, prefix: &str, master: u16, on: bool) -> String {
    (0..)
        .map(|n| format!("feed:{prefix}-{n}"))
        .find(|c| (cluster.master_for_slot(cluster.slot_of(&shard_channel(c))) == master) == on)
        .unwrap()
}

/// A cluster with two nodes on it, and a master to kill with what it
/// serves; node `a` has a subscriber of a channel on that master's shard,
/// node `b` only a channel of another shard (as in the issue: its
/// subscriptions all come back while the shard has no primary).
struct ClusterCase {
    cluster: RedisCluster,
    a: Gateway,
    b: Gateway,
    victim: u16,
    replica: u16,
    /// The victim's slot ranges, as `/readyz` names them.
    slots: String,
    channel: String,
    subscriber: Connection,
    _elsewhere: Connection,
}

async fn cluster_case() -> ClusterCase {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let a = node(&url, "gw-a").await;
    let b = node(&url, "gw-b").await;
    let victim = cluster.masters()[1];
    let view = cluster.nodes();
    let id = &view.iter().find(|n| n.port == victim).unwrap().id;
    let replica = view
        .iter()
        .find(|n| n.master_id.as_ref() == Some(id))
        .unwrap()
        .port;
    let slots = view
        .iter()
        .find(|n| n.port == victim)
        .unwrap()
        .slots
        .iter()
        .map(|(x, y)| {
            if x == y {
                x.to_string()
            } else {
                format!("{x}-{y}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let channel = channel_on(&cluster, "window", victim, true);
    let (mut subscriber, _) = a.connect("subscriber").await;
    within(subscriber.subscribe(&channel)).await.unwrap();
    let (mut elsewhere, _) = b.connect("elsewhere").await;
    let other = channel_on(&cluster, "other", victim, false);
    within(elsewhere.subscribe(&other)).await.unwrap();
    // A message before the kill: the stream has an epoch to lose.
    let (mut conn, _) = a.connect("first").await;
    within(conn.publish(&channel, &json!("before")))
        .await
        .unwrap();
    ClusterCase {
        cluster,
        a,
        b,
        victim,
        replica,
        slots,
        channel,
        subscriber,
        _elsewhere: elsewhere,
    }
}

/// `ROLE` of a server is master.
fn is_master(port: u16) -> bool {
    redis_cli(port, &["ROLE"]).lines().next() == Some("master")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shard_without_a_primary_keeps_nodes_not_ready_and_publishes_unavailable() {
    let _heavy = HEAVY.lock().await;
    let mut case = cluster_case().await;
    let replica = case.replica;
    let has_master: HasMaster = Arc::new(move || is_master(replica));
    // The replica may not take over until the test says so.
    assert_eq!(
        case.cluster.cli(
            replica,
            &["CONFIG", "SET", "cluster-replica-no-failover", "yes"]
        ),
        "OK"
    );
    let pool = pool(&case.a, POOL).await;
    let (mut held, _) = case.a.connect("held").await;
    let nodes = [case.a.addr, case.b.addr];
    let watch = Watch::start(
        &nodes,
        case.a.addr,
        &case.channel,
        pool,
        case.subscriber,
        &has_master,
    );
    case.cluster.kill(case.victim);
    let killed = Instant::now();

    // Both nodes name the slots and the address, the one without a
    // channel there too; publishes to the shard fail as documented.
    let slots = format!(
        "slots {}: primary 127.0.0.1:{} does not answer",
        case.slots, case.victim
    );
    for node in nodes {
        let reason = not_ready_naming(node, &["redis cluster: ", &slots]).await;
        println!("cluster, no primary: /readyz reason: {reason}");
    }
    publishes_fail_with_unavailable(&case.a, &mut held, &case.channel).await;
    // Still not ready a while later, on both.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in nodes {
        not_ready_naming(node, &[&slots]).await;
    }

    let held_for = killed.elapsed();
    assert_eq!(
        case.cluster.cli(
            replica,
            &["CONFIG", "SET", "cluster-replica-no-failover", "no"]
        ),
        "OK"
    );
    let switch = held_for
        + tokio::task::block_in_place(|| {
            case.cluster
                .wait_failover(case.victim, Duration::from_secs(30))
        });
    for node in [&case.a, &case.b] {
        wait_ready(node, 200).await;
    }
    let window = watch.settle(switch).await;
    println!(
        "{}",
        window.summary(&format!(
            "cluster, failover held {:.2} s",
            held_for.as_secs_f64()
        ))
    );
    window.print_reasons("cluster, held");
    window.check("cluster");
    assert!(
        window.failed().any(|a| a.api) && window.failed().any(|a| !a.api),
        "publishes to a shard without a primary must have failed"
    );
    // The promoted replica may lack the old primary's last writes: the
    // subscriber is told to reload.
    let (_, reset) = window.resets.first().expect("no reset after the failover");
    assert_eq!(reset["channel"], case.channel.as_str(), "{reset}");
    // And the channel works again, on both nodes.
    within(held.publish(&case.channel, &json!("after")))
        .await
        .unwrap();
    let (status, body) = api(
        &case.b,
        "POST",
        "/api/publish",
        &json!({ "channel": case.channel, "data": "after" }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A Sentinel deployment and two nodes on it; `a` has a subscriber of
/// `feed:window`.
struct SentinelCase {
    sentinels: Sentinels,
    a: Gateway,
    b: Gateway,
    channel: String,
    subscriber: Connection,
}

async fn sentinel_case() -> SentinelCase {
    let sentinels = Sentinels::start();
    let url = sentinels.url();
    let a = node(&url, "gw-a").await;
    let b = node(&url, "gw-b").await;
    let channel = "feed:window".to_owned();
    let (mut subscriber, _) = a.connect("subscriber").await;
    within(subscriber.subscribe(&channel)).await.unwrap();
    let (mut conn, _) = a.connect("first").await;
    within(conn.publish(&channel, &json!("before")))
        .await
        .unwrap();
    SentinelCase {
        sentinels,
        a,
        b,
        channel,
        subscriber,
    }
}

/// Sets `down-after-milliseconds` on every sentinel.
fn down_after(sentinels: &Sentinels, ms: u64) {
    for port in sentinels.sentinel_ports() {
        let ms = ms.to_string();
        let reply = sentinels.cli(
            port,
            &[
                "SENTINEL",
                "SET",
                MASTER_NAME,
                "down-after-milliseconds",
                &ms,
            ],
        );
        assert_eq!(reply, "OK", "sentinel on {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_master_death_keeps_nodes_not_ready_until_the_switch() {
    let _heavy = HEAVY.lock().await;
    let mut case = sentinel_case().await;
    let replica = case.sentinels.replica_port();
    let master = case.sentinels.master_port();
    let has_master: HasMaster = Arc::new(move || is_master(replica));
    // The sentinels call the master down only when the test says so.
    down_after(&case.sentinels, 60_000);
    let pool = pool(&case.a, POOL).await;
    let (mut held, _) = case.a.connect("held").await;
    let nodes = [case.a.addr, case.b.addr];
    let watch = Watch::start(
        &nodes,
        case.a.addr,
        &case.channel,
        pool,
        case.subscriber,
        &has_master,
    );
    let killed_port = case.sentinels.kill_master();
    assert_eq!(killed_port, master);
    let killed = Instant::now();

    let address = format!("127.0.0.1:{master}");
    for node in nodes {
        let reason = not_ready_naming(node, &["redis", &address]).await;
        println!("sentinel, master dead: /readyz reason: {reason}");
    }
    publishes_fail_with_unavailable(&case.a, &mut held, &case.channel).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in nodes {
        not_ready_naming(node, &[&address]).await;
    }

    let held_for = killed.elapsed();
    down_after(&case.sentinels, 1000);
    let switch = held_for
        + tokio::task::block_in_place(|| {
            case.sentinels
                .wait_failover(killed_port, Duration::from_secs(30))
        });
    for node in [&case.a, &case.b] {
        wait_ready(node, 200).await;
    }
    let window = watch.settle(switch).await;
    println!(
        "{}",
        window.summary(&format!(
            "sentinel, switch held {:.2} s",
            held_for.as_secs_f64()
        ))
    );
    window.print_reasons("sentinel, held");
    window.check("sentinel");
    assert!(
        window.failed().any(|a| a.api) && window.failed().any(|a| !a.api),
        "publishes without a master must have failed"
    );
    let (_, reset) = window.resets.first().expect("no reset after the failover");
    assert_eq!(reset["channel"], case.channel.as_str(), "{reset}");
    within(held.publish(&case.channel, &json!("after")))
        .await
        .unwrap();
}

/// How many kills a `natural_*` test makes: `SWITCHBOARD_WINDOW_RUNS`, 1
/// by default (`make test`); the figures of docs/operations.md are of 5.
fn runs() -> usize {
    std::env::var("SWITCHBOARD_WINDOW_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Kills a cluster shard's primary and lets the cluster fail over by
/// itself, `runs()` times (a fresh cluster each time); prints each run's
/// windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natural_cluster_shard_failovers_keep_readiness_honest() {
    let _heavy = HEAVY.lock().await;
    for run in 1..=runs() {
        let mut case = cluster_case().await;
        let replica = case.replica;
        let has_master: HasMaster = Arc::new(move || is_master(replica));
        let pool = pool(&case.a, POOL).await;
        let watch = Watch::start(
            &[case.a.addr, case.b.addr],
            case.a.addr,
            &case.channel,
            pool,
            case.subscriber,
            &has_master,
        );
        let switch = tokio::task::block_in_place(|| {
            case.cluster.kill(case.victim);
            case.cluster
                .wait_failover(case.victim, Duration::from_secs(30))
        });
        let window = watch.settle(switch).await;
        println!("{}", window.summary(&format!("cluster run {run}")));
        window.print_reasons(&format!("cluster run {run}"));
        window.check("cluster");
    }
}

/// Kills the Sentinel master and lets the sentinels fail over by
/// themselves (`down-after-milliseconds` 1000), `runs()` times; prints each
/// run's windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natural_sentinel_failovers_keep_readiness_honest() {
    let _heavy = HEAVY.lock().await;
    for run in 1..=runs() {
        let mut case = sentinel_case().await;
        let replica = case.sentinels.replica_port();
        let has_master: HasMaster = Arc::new(move || is_master(replica));
        let pool = pool(&case.a, POOL).await;
        let watch = Watch::start(
            &[case.a.addr, case.b.addr],
            case.a.addr,
            &case.channel,
            pool,
            case.subscriber,
            &has_master,
        );
        let switch = tokio::task::block_in_place(|| {
            let old = case.sentinels.kill_master();
            case.sentinels.wait_failover(old, Duration::from_secs(30))
        });
        let window = watch.settle(switch).await;
        println!("{}", window.summary(&format!("sentinel run {run}")));
        window.print_reasons(&format!("sentinel run {run}"));
        window.check("sentinel");
    }
}
