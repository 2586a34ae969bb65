//! A short run of the load tool against the real `switchboard` binary, on one
//! node and across two nodes through a real redis-server: a few hundred
//! connections for a few seconds, checking that every subscriber received
//! every accepted message exactly once and that nothing else went wrong.
//! Timing is printed, never asserted (the machine is shared and noisy).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use switchboard_loadtest::{run, Plan, PublishVia, Report, Shape};

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
