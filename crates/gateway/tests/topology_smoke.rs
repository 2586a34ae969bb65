//! The real-Redis topology fixtures (common/topology.rs) checked on their
//! own, with redis-cli: a Sentinel deployment fails over and takes its old
//! master back as a replica, a Redis Cluster serves keys and shard channels
//! and fails over, and a TLS-only server accepts its CA's clients and
//! refuses the others.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/topology.rs"]
mod topology;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use topology::*;

const FAILOVER_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn sentinels_fail_over_and_take_the_old_master_back() {
    let _heavy = HEAVY.blocking_lock();
    let started = Instant::now();
    let mut deployment = Sentinels::start();
    eprintln!(
        "sentinels up in {:?}: {}",
        started.elapsed(),
        deployment.url()
    );
    let ports = deployment.sentinel_ports();
    assert_eq!(
        deployment.url(),
        format!(
            "redis+sentinel://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/sbmaster",
            ports[0], ports[1], ports[2]
        )
    );

    let old = deployment.master_port();
    assert_eq!(deployment.cli(old, &["SET", "before", "1"]), "OK");
    deployment.wait_replicated();
    assert_eq!(deployment.kill_master(), old);
    let took = deployment.wait_failover(old, FAILOVER_LIMIT);
    eprintln!("sentinel failover in {took:?}");
    let new = deployment.master_port();
    assert_ne!(new, old);
    assert_eq!(deployment.cli(new, &["GET", "before"]), "1");
    assert_eq!(deployment.cli(new, &["SET", "after", "2"]), "OK");

    let restarting = Instant::now();
    deployment.restart_killed();
    eprintln!("old master back as a replica in {:?}", restarting.elapsed());
    assert_eq!(deployment.master_port(), new);
    assert_eq!(deployment.replica_port(), old);
    assert_eq!(deployment.cli(old, &["ROLE"]).lines().next(), Some("slave"));
    deployment.wait_replicated();
    assert_eq!(deployment.cli(old, &["GET", "after"]), "2");
    eprintln!("sentinel test took {:?}", started.elapsed());
}

#[test]
fn cluster_serves_keys_and_shard_channels_and_fails_over() {
    let _heavy = HEAVY.blocking_lock();
    let started = Instant::now();
    let mut cluster = RedisCluster::start();
    eprintln!("cluster up in {:?}: {}", started.elapsed(), cluster.url());
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    assert_eq!(
        cluster.url(),
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            masters[0], masters[1], masters[2]
        )
    );

    assert_eq!(cluster.cluster_cli(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(cluster.cluster_cli(&["GET", "greeting"]), "hello");

    // A shard channel lives on the master of its slot.
    let channel = "news:shard";
    let owner = cluster.master_for_slot(cluster.slot_of(channel));
    let mut subscriber = Command::new("redis-cli")
        .args(["-p", &owner.to_string(), "SSUBSCRIBE", channel])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cluster.shard_channels(owner).contains(&channel.to_owned()) {
        assert!(Instant::now() < deadline, "no SSUBSCRIBE on {owner}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cluster.cluster_cli(&["SPUBLISH", channel, "hi"]), "1");
    let _ = subscriber.kill();
    let _ = subscriber.wait();

    // Kill the master of "greeting"; its replica takes over with the key.
    let slot = cluster.slot_of("greeting");
    let victim = cluster.master_for_slot(slot);
    cluster.wait_replicated();
    cluster.kill(victim);
    let took = cluster.wait_failover(victim, FAILOVER_LIMIT);
    eprintln!("cluster failover in {took:?}");
    let heir = cluster.master_for_slot(slot);
    assert_ne!(heir, victim);
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.cluster_cli(&["GET", "greeting"]), "hello");
    assert_eq!(cluster.cluster_cli(&["SET", "greeting", "again"]), "OK");

    let restarting = Instant::now();
    cluster.restart(victim);
    eprintln!(
        "killed master back as a replica in {:?}",
        restarting.elapsed()
    );
    assert!(!cluster.masters().contains(&victim));
    eprintln!("cluster test took {:?}", started.elapsed());
}

#[test]
fn tls_redis_trusts_its_ca_only() {
    let started = Instant::now();
    let redis = TlsRedis::start();
    eprintln!("TLS redis up in {:?}: {}", started.elapsed(), redis.url());
    assert_eq!(redis.url(), format!("rediss://127.0.0.1:{}/", redis.port()));
    assert_eq!(redis.cli(&["PING"]), "PONG");

    let refused = redis.cli_with(&redis.wrong_ca_file(), None, &["PING"]);
    assert_ne!(String::from_utf8_lossy(&refused.stdout).trim(), "PONG");
    assert!(!refused.status.success(), "{refused:?}");
    // Plain text gets nothing either.
    assert_ne!(topology::redis_cli(redis.port(), &["PING"]), "PONG");

    // The certificates are what rustls wants: a v3 CA with CA:TRUE, a leaf
    // for 127.0.0.1 that chains to it and not to the unrelated CA.
    let tls = redis.material();
    let text = |cert: &std::path::Path| {
        let output = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let ca = text(&tls.ca);
    assert!(ca.contains("Version: 3") && ca.contains("CA:TRUE"), "{ca}");
    let server = text(&tls.server_cert);
    assert!(
        server.contains("IP Address:127.0.0.1") && server.contains("DNS:localhost"),
        "{server}"
    );
    let verify = |ca: &std::path::Path| {
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(&tls.server_cert)
            .arg(&tls.client_cert)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(verify(&tls.ca));
    assert!(!verify(&tls.wrong_ca));

    let mutual = TlsRedis::start_with_client_auth();
    assert_eq!(mutual.cli(&["PING"]), "PONG");
    let anonymous = mutual.cli_with(&mutual.ca_file(), None, &["PING"]);
    assert_ne!(String::from_utf8_lossy(&anonymous.stdout).trim(), "PONG");
    let with_cert = mutual.cli_with(
        &mutual.ca_file(),
        Some((&mutual.client_cert_file(), &mutual.client_key_file())),
        &["PING"],
    );
    assert_eq!(String::from_utf8_lossy(&with_cert.stdout).trim(), "PONG");
    eprintln!("TLS test took {:?}", started.elapsed());
}
