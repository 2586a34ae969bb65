//! On a Redis Cluster: whether every slot has a primary that serves, for
//! `/readyz` ([`RedisHealth::set_shards`]).
//!
//! A background task, every [`PROBE_EVERY`]: reads the slot map from one
//! node of the cluster (`CLUSTER SLOTS`, read as the redis crate's cluster
//! client reads it, so the addresses are the ones it connects to), then
//! asks every primary that owns slots for its `CLUSTER INFO`, all at once,
//! each within [`PROBE_TIMEOUT`].
//! A slot range whose primary does not answer, answers `cluster_state:fail`
//! (it refuses commands then), or that no primary owns makes the node not
//! ready, with the ranges and addresses in the reason, until a round finds
//! them served again: the cluster promoted a replica, or the primary came
//! back. A node needs every shard (any channel, presence key or lease may
//! live on any slot), so one shard down is enough.
//!
//! Why a check of its own: the redis crate's cluster connection reconnects
//! a shard and refreshes its slot map only when a command fails, and
//! retries a command for up to `REDIS_TIMEOUT` (2 s), so neither the broker's
//! subscriptions nor the other shards' commands tell that one shard has no
//! primary (a node with no channel on the dead shard resubscribed
//! everything within a second and said ready for the rest of the failover).
//! Asking on every `/readyz` would put the probes' load in the hands of
//! whoever polls it; the publish path stays as it was (no Redis call added
//! there). The cost: per gateway node, one `CLUSTER SLOTS` and one
//! `CLUSTER INFO` per primary every half second, on connections of its own
//! (one per Redis node it asks).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, Value};
use tokio_util::sync::CancellationToken;

use crate::redis::health::RedisHealth;
use crate::redis::target::Target;

/// How often the shards are checked: a shard's loss shows on `/readyz`
/// within this (plus the probe's own time), and so does its return.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A Redis node that does not answer a probe within this counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Nodes asked for the slot map in one round before giving up on it.
const VIEW_ATTEMPTS: usize = 3;
/// Slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// Checks the shards until `shutdown`; the node is not ready until the
/// first round found every slot served.
pub fn start(target: Target, health: Arc<RedisHealth>, shutdown: CancellationToken) {
    health.set_shards(Some("redis cluster: shards not checked yet".to_owned()));
    let seeds: Vec<Addr> = target
        .cluster_seeds()
        .into_iter()
        .map(|(host, port)| Addr { host, port })
        .collect();
    let mut prober = Prober {
        target,
        connections: HashMap::new(),
        sources: seeds.clone(),
        seeds,
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Option<String>> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let problem = tokio::select! {
                () = shutdown.cancelled() => return,
                problem = prober.round() => problem,
            };
            if last.as_ref() != Some(&problem) {
                match &problem {
                    Some(reason) => {
                        tracing::warn!(message = "redis cluster shard unavailable", %reason);
                    }
                    None if last.is_some() => {
                        tracing::info!(message = "redis cluster: every slot has a primary again");
                    }
                    None => {}
                }
            }
            health.set_shards(problem.clone());
            last = Some(problem);
        }
    });
}

/// A Redis node's address, as `CLUSTER SLOTS` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Addr {
    host: String,
    port: u16,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A node of the slot map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    addr: Addr,
    master: bool,
    /// Slot ranges served, inclusive (a primary's).
    slots: Ranges,
}

/// `CLUSTER SLOTS`: per slot range `[start, end, primary, replica...]`,
/// each node `[endpoint, port, id, ...]` at the address the cluster tells
/// clients to use (as the redis crate's cluster client reads it): an empty
/// or wildcard endpoint stands for the node asked (`asked`), `?` for an
/// unknown one (left out).
fn parse_slots(reply: &Value, asked: &Addr) -> Vec<Node> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else { continue };
        let (Some(Value::Int(first)), Some(Value::Int(last))) = (range.first(), range.get(1))
        else {
            continue;
        };
        let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(*last)) else {
            continue;
        };
        if first > last || usize::from(last) >= SLOTS {
            continue;
        }
        for (i, node) in range.iter().skip(2).enumerate() {
            let Some(addr) = endpoint(node, asked) else {
                continue;
            };
            let master = i == 0;
            nodes.push(Node {
                addr,
                master,
                slots: if master {
                    vec![(first, last)]
                } else {
                    Vec::new()
                },
            });
        }
    }
    nodes
}

/// A node of `CLUSTER SLOTS`: `[endpoint, port, ...]`.
fn endpoint(node: &Value, asked: &Addr) -> Option<Addr> {
    let Value::Array(node) = node else {
        return None;
    };
    let port = match node.get(1)? {
        Value::Int(port) => u16::try_from(*port).ok()?,
        _ => return None,
    };
    let host = match node.first()? {
        Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
        Value::SimpleString(host) => host.clone(),
        Value::Nil => String::new(),
        _ => return None,
    };
    let host = match host.as_str() {
        "?" => return None,
        "" | "0.0.0.0" | "::" => asked.host.clone(),
        _ => host,
    };
    (port != 0).then_some(Addr { host, port })
}

/// What a primary said to `CLUSTER INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// `cluster_state:ok`: it serves its slots.
    Serving,
    /// Another `cluster_state`: it refuses commands.
    Refusing(String),
    /// No answer (an error, a refused connection, a timeout).
    Silent(String),
}

/// The `cluster_state` of a `CLUSTER INFO` text.
fn answer(info: &str) -> Answer {
    let state = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("cluster_state:"))
        .unwrap_or("unknown");
    if state == "ok" {
        Answer::Serving
    } else {
        Answer::Refusing(state.to_owned())
    }
}

/// Inclusive ranges as `0-5460,10923` (a single slot alone).
fn ranges_text(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Inclusive slot ranges.
type Ranges = Vec<(u16, u16)>;

/// The primaries that own slots, each with its ranges (sorted), in slot
/// order, and the ranges no primary owns.
fn slot_map(nodes: &[Node]) -> (Vec<(Addr, Ranges)>, Ranges) {
    let mut owners: Vec<(Addr, Ranges)> = Vec::new();
    let mut covered = vec![false; SLOTS];
    for node in nodes.iter().filter(|n| n.master && !n.slots.is_empty()) {
        for &(a, b) in &node.slots {
            covered[usize::from(a)..=usize::from(b)].fill(true);
        }
        let mut slots = node.slots.clone();
        slots.sort_unstable();
        match owners.iter_mut().find(|(addr, _)| *addr == node.addr) {
            Some((_, ranges)) => {
                ranges.extend(slots);
                ranges.sort_unstable();
            }
            None => owners.push((node.addr.clone(), slots)),
        }
    }
    owners.sort_by_key(|(_, ranges)| ranges.first().map(|r| r.0));
    let mut uncovered = Vec::new();
    let mut start = None;
    for (slot, &is_covered) in covered.iter().enumerate() {
        let slot = u16::try_from(slot).unwrap_or(u16::MAX);
        match (is_covered, start) {
            (false, None) => start = Some(slot),
            (true, Some(first)) => {
                uncovered.push((first, slot - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        uncovered.push((first, u16::try_from(SLOTS - 1).unwrap_or(u16::MAX)));
    }
    (owners, uncovered)
}

/// What `/readyz` says of the slot map and the primaries' answers: `None`
/// when every slot has a primary that serves.
fn verdict(nodes: &[Node], answers: &HashMap<Addr, Answer>) -> Option<String> {
    let (owners, uncovered) = slot_map(nodes);
    let mut problems: Vec<((u16, u16), String)> = Vec::new();
    for (addr, ranges) in &owners {
        let why = match answers.get(addr) {
            Some(Answer::Serving) => continue,
            Some(Answer::Refusing(state)) => format!("says cluster_state:{state}"),
            Some(Answer::Silent(error)) => format!("does not answer ({error})"),
            None => "was not asked".to_owned(),
        };
        problems.push((
            ranges[0],
            format!("slots {}: primary {addr} {why}", ranges_text(ranges)),
        ));
    }
    if !uncovered.is_empty() {
        problems.push((
            uncovered[0],
            format!("slots {}: no primary", ranges_text(&uncovered)),
        ));
    }
    if problems.is_empty() {
        return None;
    }
    problems.sort();
    let problems: Vec<String> = problems.into_iter().map(|(_, text)| text).collect();
    Some(format!("redis cluster: {}", problems.join("; ")))
}

/// The probe's connections and where it reads the slot map.
struct Prober {
    target: Target,
    /// One connection per Redis node asked, kept while it answers.
    connections: HashMap<Addr, MultiplexedConnection>,
    /// Where to read the slot map, the last that answered first.
    sources: Vec<Addr>,
    /// The URL's seed nodes, always among the sources.
    seeds: Vec<Addr>,
}

impl Prober {
    /// One round: the slot map, then every owner's answer.
    async fn round(&mut self) -> Option<String> {
        let nodes = match self.view().await {
            Ok(nodes) => nodes,
            Err(error) => {
                return Some(format!(
                    "redis cluster: no node gives the slot map ({error})"
                ))
            }
        };
        let (owners, _) = slot_map(&nodes);
        let asked = futures_util::future::join_all(owners.iter().map(|(addr, _)| {
            let cached = self.connections.get(addr).cloned();
            let target = &self.target;
            async move {
                let (conn, reply) = ask::<String>(target, addr, cached, "INFO").await;
                (addr.clone(), conn, reply)
            }
        }))
        .await;
        let mut answers = HashMap::new();
        for (addr, conn, reply) in asked {
            self.keep(&addr, conn);
            answers.insert(
                addr,
                match reply {
                    Ok(info) => answer(&info),
                    Err(error) => Answer::Silent(error),
                },
            );
        }
        // The next slot map comes from any node of this one, seeds last;
        // connections to nodes it no longer names are closed.
        let mut sources: Vec<Addr> = self.sources.first().cloned().into_iter().collect();
        let masters = nodes.iter().filter(|n| n.master).map(|n| n.addr.clone());
        let replicas = nodes.iter().filter(|n| !n.master).map(|n| n.addr.clone());
        for addr in masters.chain(replicas).chain(self.seeds.iter().cloned()) {
            if !sources.contains(&addr) {
                sources.push(addr);
            }
        }
        self.connections.retain(|addr, _| sources.contains(addr));
        self.sources = sources;
        verdict(&nodes, &answers)
    }

    /// The slot map from the first source that gives it; a source that
    /// fails moves to the back.
    async fn view(&mut self) -> Result<Vec<Node>, String> {
        let mut last_error = "no node to ask".to_owned();
        for _ in 0..VIEW_ATTEMPTS.min(self.sources.len()) {
            let addr = self.sources[0].clone();
            let cached = self.connections.get(&addr).cloned();
            let (conn, reply) = ask::<Value>(&self.target, &addr, cached, "SLOTS").await;
            self.keep(&addr, conn);
            match reply {
                Ok(reply) => {
                    let nodes = parse_slots(&reply, &addr);
                    if !nodes.is_empty() {
                        return Ok(nodes);
                    }
                    last_error = format!("{addr}: an empty CLUSTER SLOTS");
                }
                Err(error) => last_error = format!("{addr}: {error}"),
            }
            self.sources.rotate_left(1);
        }
        Err(last_error)
    }

    fn keep(&mut self, addr: &Addr, conn: Option<MultiplexedConnection>) {
        match conn {
            Some(conn) => {
                self.connections.insert(addr.clone(), conn);
            }
            None => {
                self.connections.remove(addr);
            }
        }
    }
}

/// `CLUSTER <what>` on `addr`, on `cached` or a new connection, within
/// [`PROBE_TIMEOUT`]; the connection comes back if it answered.
async fn ask<T: FromRedisValue>(
    target: &Target,
    addr: &Addr,
    cached: Option<MultiplexedConnection>,
    what: &str,
) -> (Option<MultiplexedConnection>, Result<T, String>) {
    let attempt = async {
        let mut conn = match cached {
            Some(conn) => conn,
            None => {
                let client = target
                    .cluster_node_client(&addr.host, addr.port)
                    .ok_or("not a cluster")?
                    .map_err(|e| target.explain(&e))?;
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| target.explain(&e))?
            }
        };
        let reply: T = redis::cmd("CLUSTER")
            .arg(what)
            .query_async(&mut conn)
            .await
            .map_err(|e| target.explain(&e))?;
        Ok::<_, String>((conn, reply))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok((conn, reply))) => (Some(conn), Ok(reply)),
        Ok(Err(error)) => (None, Err(error)),
        Err(_) => (
            None,
            Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Addr {
        Addr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"0123abcd".to_vec()),
            Value::Array(vec![]),
        ])
    }

    fn range(first: i64, last: i64, nodes: Vec<Value>) -> Value {
        let mut range = vec![Value::Int(first), Value::Int(last)];
        range.extend(nodes);
        Value::Array(range)
    }

    /// Three shards of one primary and one replica each.
    fn three_shards() -> Value {
        Value::Array(vec![
            range(
                0,
                5460,
                vec![node("127.0.0.1", 30001), node("127.0.0.1", 30004)],
            ),
            range(
                5461,
                10922,
                vec![node("127.0.0.1", 30002), node("127.0.0.1", 30005)],
            ),
            range(
                10923,
                16383,
                vec![node("127.0.0.1", 30003), node("127.0.0.1", 30006)],
            ),
        ])
    }

    fn serving(ports: &[u16]) -> HashMap<Addr, Answer> {
        ports.iter().map(|&p| (addr(p), Answer::Serving)).collect()
    }

    #[test]
    fn reads_the_slot_map_of_cluster_slots() {
        let nodes = parse_slots(&three_shards(), &addr(1));
        assert_eq!(nodes.len(), 6);
        assert_eq!(nodes.iter().filter(|n| n.master).count(), 3);
        let (owners, uncovered) = slot_map(&nodes);
        assert_eq!(
            owners,
            vec![
                (addr(30001), vec![(0, 5460)]),
                (addr(30002), vec![(5461, 10922)]),
                (addr(30003), vec![(10923, 16383)]),
            ]
        );
        assert!(uncovered.is_empty());
        assert_eq!(verdict(&nodes, &serving(&[30001, 30002, 30003])), None);
    }

    #[test]
    fn a_primary_that_does_not_answer_names_its_slots_and_address() {
        let nodes = parse_slots(&three_shards(), &addr(1));
        let mut answers = serving(&[30001, 30003]);
        answers.insert(
            addr(30002),
            Answer::Silent("Connection refused (os error 111)".into()),
        );
        assert_eq!(
            verdict(&nodes, &answers).as_deref(),
            Some("redis cluster: slots 5461-10922: primary 127.0.0.1:30002 does not answer (Connection refused (os error 111))")
        );
        answers.insert(
            addr(30001),
            answer("cluster_state:fail\r\ncluster_slots_assigned:16384\r\n"),
        );
        assert_eq!(
            verdict(&nodes, &answers).as_deref(),
            Some("redis cluster: slots 0-5460: primary 127.0.0.1:30001 says cluster_state:fail; slots 5461-10922: primary 127.0.0.1:30002 does not answer (Connection refused (os error 111))")
        );
    }

    #[test]
    fn slots_nobody_owns_are_named_and_ranges_of_one_primary_go_together() {
        let reply = Value::Array(vec![
            range(0, 100, vec![node("127.0.0.1", 7000)]),
            range(102, 102, vec![node("127.0.0.1", 7000)]),
            range(200, 16383, vec![node("127.0.0.1", 7001)]),
            // An unknown endpoint is left out; so is a malformed range.
            range(103, 150, vec![node("?", 7002)]),
            Value::Array(vec![Value::Int(5)]),
        ]);
        let nodes = parse_slots(&reply, &addr(1));
        let (owners, _) = slot_map(&nodes);
        assert_eq!(owners[0], (addr(7000), vec![(0, 100), (102, 102)]));
        assert_eq!(
            verdict(&nodes, &serving(&[7000, 7001])).as_deref(),
            Some("redis cluster: slots 101,103-199: no primary")
        );
        let mut answers = serving(&[7001]);
        answers.insert(
            addr(7000),
            Answer::Silent("no answer within 1000 ms".into()),
        );
        assert_eq!(
            verdict(&nodes, &answers).as_deref(),
            Some("redis cluster: slots 0-100,102: primary 127.0.0.1:7000 does not answer (no answer within 1000 ms); slots 101,103-199: no primary")
        );
    }

    #[test]
    fn an_empty_or_wildcard_endpoint_is_the_node_asked() {
        let asked = Addr {
            host: "redis-1".into(),
            port: 6379,
        };
        let reply = Value::Array(vec![
            range(0, 8191, vec![node("", 6379)]),
            range(
                8192,
                16383,
                vec![node("0.0.0.0", 6380), node("redis-3", 6381)],
            ),
        ]);
        let nodes = parse_slots(&reply, &asked);
        let hosts: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        assert_eq!(hosts, ["redis-1:6379", "redis-1:6380", "redis-3:6381"]);
        assert_eq!(parse_slots(&Value::Nil, &asked), Vec::new());
    }
}
