//! A short run of the load tool against the real `switchboard` binary, on one
//! node and across two nodes through a real redis-server: a few hundred
//! connections for a few seconds, checking that every subscriber received
//! every accepted message exactly once and that nothing else went wrong.
//! Timing is printed, never asserted (the machine is shared and noisy).
//! Also the measuring side of issue 24: serial WebSocket publishers with
//! CPU per publish, and the history read-back of an API run; and of issue
//! 27: subscribers as server-sent event streams (`--transport sse`), on one
//! node and across two, refused, and closed by a drain; and of issue 28:
//! MessagePack subscribers and publishers, permessage-deflate subscribers
//! reading realistic chat messages and documents over a raw socket, the
//! bytes on the wire per delivery, and a node that does not offer deflate.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use switchboard_loadtest::{run, Format, PayloadKind, Plan, PublishVia, Report, Shape, Transport};

/// Limits that would otherwise throttle a load run from one machine.
fn unthrottled(builder: GatewayBuilder) -> GatewayBuilder {
    builder
        .env("SWITCHBOARD_MAX_CONNECTIONS", "2000")
        .env("SWITCHBOARD_CONN_RATE_PER_IP", "1000000")
        .env("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "1000000")
        .env("SWITCHBOARD_MSG_RATE", "1000000")
        .env("RUST_LOG", "info")
}

fn short_plan(gateway: &Gateway) -> Plan {
    let mut plan = Plan::new(gateway.addr, SECRET);
    plan.api_key = Some(API_KEY.to_owned());
    plan.connections = 300;
    plan.ramp_rate = 1000.0;
    plan.source_count = 3;
    plan.shape = Shape::Mix { size: 10 };
    plan.rate = 200.0;
    plan.duration = Duration::from_secs(2);
    plan.drain = Duration::from_secs(10);
    plan.ramp_timeout = Duration::from_secs(60);
    plan.exactly_once = true;
    plan
}

fn assert_exactly_once(report: &Report) {
    println!("{report}");
    assert_eq!(report.connect_errors, 0, "{report}");
    assert_eq!(report.connections_peak, 300, "{report}");
    assert_eq!(report.disconnects, 0, "{report}");
    assert_eq!(report.errors + report.publish_errors, 0, "{report}");
    assert_eq!(
        report.strays, 0,
        "messages on unsubscribed channels: {report}"
    );
    assert!(report.published > 0, "{report}");
    let ledger = report.exactly_once.as_ref().unwrap();
    assert_eq!(ledger.streams, 600, "300 connections x (room + broadcast)");
    assert!(ledger.ok(), "{report}");
    assert_eq!(ledger.unacknowledged, 0, "{report}");
    assert!(report.clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_once_on_one_node() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut plan = short_plan(&gateway);
    plan.via = PublishVia::Client;
    plan.publishers = 2;
    assert_exactly_once(&run(plan).await);
}

/// The memory rows' shape (issue 26): every connection on the same five
/// channels, each message of each reaching every connection once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_holds_five_subscriptions_with_shape_many() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut plan = short_plan(&gateway);
    plan.connections = 100;
    plan.shape = Shape::Many { count: 5 };
    plan.rate = 100.0;
    let report = run(plan).await;
    println!("{report}");
    assert_eq!(report.connections_peak, 100, "{report}");
    assert_eq!(report.strays, 0, "{report}");
    let ledger = report.exactly_once.as_ref().unwrap();
    assert_eq!(ledger.streams, 500, "100 connections x 5 channels");
    assert!(ledger.ok(), "{report}");
    assert!(report.clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_once_across_two_nodes() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    let mut plan = short_plan(&a);
    // Subscribers on both nodes, publishing through node A's server API.
    plan.targets = vec![a.addr, b.addr];
    plan.publish_target = Some(a.addr);
    plan.via = PublishVia::Api;
    assert_exactly_once(&run(plan).await);
}

/// A cluster node on `redis` that does not throttle a load run.
async fn unthrottled_node(redis: &Redis, node_id: &str) -> Gateway {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", node_id)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    wait_ready(&gateway, 200).await;
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_publishers_report_acked_publishes_and_cpu_per_publish() {
    let redis = Redis::start();
    let a = unthrottled_node(&redis, "gw-a").await;
    let b = unthrottled_node(&redis, "gw-b").await;
    let mut plan = short_plan(&b);
    plan.publish_target = Some(a.addr);
    plan.connections = 20;
    plan.shape = Shape::Rooms { size: 1 };
    plan.via = PublishVia::Client;
    plan.publishers = 2;
    plan.in_flight = 1;
    plan.rate = 0.0;
    // The gateways' pids are not at hand here: this process stands in for
    // both, so the per-process accounting is exercised.
    plan.server_pids = vec![std::process::id()];
    plan.redis_pids = vec![std::process::id()];
    let report = run(plan).await;
    println!("{report}");
    assert!(report.clean(), "{report}");
    let ledger = report.exactly_once.as_ref().unwrap();
    assert_eq!(ledger.lost_messages, 0, "{report}");
    assert_eq!(report.undelivered, 0, "{report}");
    assert!(report.published_in_window > 0, "{report}");
    assert!(report.publishes_per_sec > 0.0, "{report}");
    assert_eq!(report.servers.len(), 1, "{report}");
    assert!(report.servers[0].cpu_us_per_publish.is_some(), "{report}");
    assert!(report.redis_cpu_us_per_publish.is_some(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_publish_reads_back_from_history_in_order() {
    let redis = Redis::start();
    let a = unthrottled_node(&redis, "gw-a").await;
    let mut plan = short_plan(&a);
    plan.connections = 0;
    plan.shape = Shape::Rooms { size: 10 };
    plan.channel_count = Some(50);
    plan.via = PublishVia::Api;
    plan.publishers = 3;
    plan.rate = 500.0;
    plan.exactly_once = false;
    plan.history_check = true;
    let report = run(plan).await;
    println!("{report}");
    let check = report.history_check.as_ref().unwrap();
    assert!(check.ok(), "{report}");
    assert_eq!(check.channels, 50, "{report}");
    assert_eq!(check.accepted, report.published, "{report}");
    assert!(report.clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_check_fails_when_history_cannot_hold_the_run() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml("[namespaces.bench]\nhistory_size = 5\n")
        .start();
    let mut plan = short_plan(&gateway);
    plan.connections = 0;
    plan.shape = Shape::Rooms { size: 10 };
    plan.channel_count = Some(2);
    plan.via = PublishVia::Api;
    plan.publishers = 1;
    plan.rate = 100.0;
    plan.duration = Duration::from_secs(1);
    plan.exactly_once = false;
    plan.history_check = true;
    let report = run(plan).await;
    println!("{report}");
    let check = report.history_check.as_ref().unwrap();
    assert!(check.trimmed > 0, "{report}");
    assert_eq!(check.found, 10, "the newest 5 of each channel: {report}");
    assert!(!check.ok() && !report.clean(), "{report}");
}

/// Event streams instead of WebSockets, the messages published by
/// WebSocket clients: every stream gets every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sse_subscriber_gets_every_message_once_on_one_node() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut plan = short_plan(&gateway);
    plan.transport = Transport::Sse;
    plan.via = PublishVia::Client;
    plan.publishers = 2;
    assert_exactly_once(&run(plan).await);
}

/// Streams on both nodes of a cluster, published to through node A's
/// server API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sse_subscriber_gets_every_message_once_across_two_nodes() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    let mut plan = short_plan(&a);
    plan.transport = Transport::Sse;
    plan.targets = vec![a.addr, b.addr];
    plan.publish_target = Some(a.addr);
    plan.via = PublishVia::Api;
    assert_exactly_once(&run(plan).await);
}

/// A stream refused at the door (a token signed with another secret: 401)
/// counts as a connection that failed to open, never as an open one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_counts_as_a_failed_connection() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut plan = short_plan(&gateway);
    plan.secret = "not-the-gateway-secret-not-the-gateway-secret".into();
    plan.transport = Transport::Sse;
    plan.connections = 5;
    plan.publishers = 0;
    plan.duration = Duration::from_millis(200);
    plan.exactly_once = false;
    let report = run(plan).await;
    println!("{report}");
    assert_eq!(report.connect_errors, 5, "{report}");
    assert_eq!(report.connections_peak, 0, "{report}");
}

/// A draining node ends every stream with a `close` event carrying 1012,
/// which the load tool reports as the disconnect's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_stream_is_reported_closed_with_1012() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_DRAIN_WINDOW", "1s")
        .start();
    let mut plan = short_plan(&gateway);
    plan.transport = Transport::Sse;
    plan.connections = 20;
    plan.shape = Shape::OneChannel;
    plan.publishers = 0;
    // Long enough for the drain (a 1 s window) after the ramp; the run
    // ends by itself when it is over.
    plan.duration = Duration::from_secs(10);
    plan.exactly_once = false;
    let report = tokio::spawn(run(plan));
    let mut sessions = 0;
    for _ in 0..300 {
        let ready = wait_ready(&gateway, 200).await;
        sessions = ready["sessions"].as_u64().unwrap();
        if sessions >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sessions, 20, "every stream open before the drain");
    gateway.signal("TERM");
    let report = report.await.unwrap();
    println!("{report}");
    assert_eq!(report.connections_peak, 20, "{report}");
    assert_eq!(
        report.disconnect_reasons.get("close 1012"),
        Some(&20),
        "{report}"
    );
}

/// A node with permessage-deflate on, and the load tool's `bench`
/// namespace opted in (messages compressed from the default 256 bytes).
fn deflate_node() -> Gateway {
    unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_DEFLATE", "true")
        .toml("[namespaces.bench]\ndeflate = true\n")
        .start()
}

/// MessagePack subscribers fed by MessagePack WebSocket publishers, each
/// message a realistic chat message: every subscriber gets every message
/// once, and the run reports the bytes its subscribers read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_msgpack_subscriber_gets_every_chat_message_once() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut plan = short_plan(&gateway);
    plan.format = Format::MsgPack;
    plan.payload_kind = PayloadKind::Chat;
    plan.via = PublishVia::Client;
    plan.publishers = 2;
    let report = run(plan).await;
    assert_exactly_once(&report);
    let per = report.wire_bytes_per_delivery.unwrap();
    // A chat message of about 300 bytes in a binary frame: never less than
    // its text, never a kilobyte.
    assert!(
        (150.0..1000.0).contains(&per),
        "{per} B per delivery: {report}"
    );
}

/// Subscribers offering permessage-deflate (read over a raw socket), JSON
/// and MessagePack, each message a 4 KB document published through the
/// server API: every subscriber gets every message once, and what crossed
/// the wire per delivery is well under the document's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_subscribers_get_every_document_once_compressed() {
    let gateway = deflate_node();
    for format in [Format::Json, Format::MsgPack] {
        let mut plan = short_plan(&gateway);
        plan.format = format;
        plan.deflate = true;
        plan.payload_kind = PayloadKind::Doc;
        plan.rate = 50.0;
        let report = run(plan).await;
        println!("{format:?}");
        assert_exactly_once(&report);
        let per = report.wire_bytes_per_delivery.unwrap();
        assert!(
            per < 2500.0,
            "{format:?}: {per} B per delivery of a 4 KB document: {report}"
        );
    }
}

/// Subscribers that do not offer compression read the whole document,
/// even on a node and namespace with deflate on: the figure the compressed
/// one is compared with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_subscribers_read_the_whole_document() {
    let gateway = deflate_node();
    let mut plan = short_plan(&gateway);
    plan.payload_kind = PayloadKind::Doc;
    plan.rate = 50.0;
    let report = run(plan).await;
    assert_exactly_once(&report);
    let per = report.wire_bytes_per_delivery.unwrap();
    assert!(
        per > 3700.0,
        "{per} B per delivery of a 4 KB document: {report}"
    );
}

/// A node without permessage-deflate opens connections uncompressed; a
/// load subscriber that asked for it counts that as a failure to open
/// rather than measure the wrong thing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_subscribers_fail_on_a_node_without_deflate() {
    let gateway = unthrottled(Gateway::builder())
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut plan = short_plan(&gateway);
    plan.deflate = true;
    plan.connections = 5;
    plan.publishers = 0;
    plan.duration = Duration::from_millis(200);
    plan.exactly_once = false;
    let report = run(plan).await;
    println!("{report}");
    assert_eq!(report.connect_errors, 5, "{report}");
    assert_eq!(report.connections_peak, 0, "{report}");
}
