//! Cluster mode over a real redis-server: cross-node delivery and presence,
//! one Redis subscription per channel per node, a crashed node's presence
//! reaped, Redis restarts survived (presence and connections rewritten from
//! what the node holds), and the server API across nodes.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use receiver::{Answer, Receiver, Request};
use serde_json::{json, Value};
use switchboard_client::{ClientError, Frame, Incoming};

const CHAT: &str = "[namespaces.chat]\npresence = true\njoin_leave = true\n";

#[tokio::test]
async fn publish_on_one_node_reaches_the_others_in_order() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", CHAT).await;
    let b = cluster_node(&redis, "gw-b", CHAT).await;
    let c = cluster_node(&redis, "gw-c", CHAT).await;
    let (mut on_b, _) = b.connect("bob").await;
    let (mut on_c, _) = c.connect("carol").await;
    within(on_b.subscribe("news:x")).await.unwrap();
    within(on_c.subscribe("news:x")).await.unwrap();
    let (mut publisher, welcome) = a.connect("alice").await;
    assert_eq!(welcome.node_id, "gw-a");

    for n in 0..200 {
        publisher
            .send_text(
                json!({"type": "publish", "channel": "news:x", "data": {"n": n}}).to_string(),
            )
            .await
            .unwrap();
    }
    within(publisher.ping()).await.unwrap();
    for conn in [&mut on_b, &mut on_c] {
        for n in 0..200 {
            let (channel, data) = within(conn.expect_message()).await.unwrap();
            assert_eq!((channel.as_str(), data), ("news:x", json!({ "n": n })));
        }
    }

    // The server API on node C reaches subscribers on node B.
    let (status, _) = api(
        &c,
        "POST",
        "/api/publish",
        r#"{"channel":"news:x","data":"from the api"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        within(on_b.expect_message()).await.unwrap().1,
        json!("from the api")
    );
}

#[tokio::test]
async fn presence_is_cluster_wide() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", CHAT).await;
    let b = cluster_node(&redis, "gw-b", CHAT).await;
    let mut claims_a = claims("alice");
    claims_a["info"] = json!({ "name": "Alice" });
    let (mut alice, alice_welcome) = a.connect_token(&sign(&claims_a)).await;
    within(alice.subscribe("chat:room")).await.unwrap();
    let (mut bob, bob_welcome) = b.connect("bob").await;
    within(bob.subscribe("chat:room")).await.unwrap();

    let mut members = within(bob.presence("chat:room")).await.unwrap();
    members.sort_by(|x, y| x.user.cmp(&y.user));
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(
        (members[0].connection_id.as_str(), members[0].info.clone()),
        (
            alice_welcome.connection_id.as_str(),
            Some(json!({ "name": "Alice" }))
        )
    );
    assert_eq!(members[1].connection_id, bob_welcome.connection_id);
    let (status, body) = api(&a, "GET", "/api/presence/chat:room", "").await;
    assert_eq!(
        (status, body["members"].as_array().unwrap().len()),
        (200, 2)
    );
    let (status, body) = api(&a, "GET", "/api/presence/chat:empty", "").await;
    assert_eq!((status, body), (200, json!({ "members": [] })));

    // Alice (node A) sees Bob (node B) join.
    loop {
        match within(alice.next_frame()).await.unwrap() {
            Frame::Incoming(Incoming::Join { user, .. }) if user == "bob" => break,
            Frame::Incoming(Incoming::Join { .. }) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn one_redis_subscription_per_channel_per_node() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    let numsub = |channel: &str| redis.cli(&["PUBSUB", "NUMSUB", &format!("sb:ch:{channel}")]);
    let (mut a1, _) = a.connect("a1").await;
    let (mut a2, _) = a.connect("a2").await;
    let (mut b1, _) = b.connect("b1").await;
    assert_eq!(numsub("room"), "sb:ch:room\n0");
    within(a1.subscribe("room")).await.unwrap();
    within(a2.subscribe("room")).await.unwrap();
    assert_eq!(
        numsub("room"),
        "sb:ch:room\n1",
        "two local subscribers, one node subscription"
    );
    within(b1.subscribe("room")).await.unwrap();
    assert_eq!(numsub("room"), "sb:ch:room\n2");
    within(a1.unsubscribe("room")).await.unwrap();
    within(a1.ping()).await.unwrap();
    assert_eq!(numsub("room"), "sb:ch:room\n2", "node A still has a2");
    drop(a2);
    let deadline = Instant::now() + WAIT;
    while numsub("room") != "sb:ch:room\n1" {
        assert!(
            Instant::now() < deadline,
            "node A kept its subscription: {}",
            numsub("room")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channels = redis.cli(&["PUBSUB", "CHANNELS", "sb:ch:*"]);
    assert_eq!(channels, "sb:ch:room");
    within(b1.unsubscribe("room")).await.unwrap();
    within(b1.ping()).await.unwrap();
    assert_eq!(redis.cli(&["PUBSUB", "CHANNELS", "sb:ch:*"]), "");
}

#[tokio::test]
async fn a_killed_node_leaves_presence_within_the_lease() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", CHAT).await;
    let b = cluster_node(&redis, "gw-b", CHAT).await;
    let (mut doomed, doomed_welcome) = a.connect("doomed").await;
    within(doomed.subscribe("chat:room")).await.unwrap();
    let (mut watcher, _) = b.connect("watcher").await;
    within(watcher.subscribe("chat:room")).await.unwrap();
    assert_eq!(
        within(watcher.presence("chat:room")).await.unwrap().len(),
        2
    );

    a.signal("KILL");
    let killed = Instant::now();
    let leave = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watcher.next_frame().await.unwrap() {
                Frame::Incoming(Incoming::Leave { connection_id, .. }) => return connection_id,
                _ => continue,
            }
        }
    })
    .await
    .expect("no leave event within 10 s of the kill");
    assert_eq!(leave, doomed_welcome.connection_id);
    let members = within(watcher.presence("chat:room")).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
        ["watcher"]
    );
    assert!(killed.elapsed() < Duration::from_secs(10));
    // Its connection state is gone from Redis too. The reaper publishes the
    // leaves before it deletes the connection keys, so wait for those.
    let conn_key = format!("sb:conn:{}", doomed_welcome.connection_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["EXISTS", &conn_key]) != "0"
        || redis.cli(&["SISMEMBER", "sb:nodes", "gw-a"]) != "0"
    {
        assert!(
            Instant::now() < deadline,
            "the dead node's connection state is still in Redis 10 s after its leave"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_outage_is_visible_and_delivery_resumes() {
    let mut redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let (mut subscriber, _) = a.connect("sub").await;
    let (mut publisher, _) = a.connect("pub").await;
    within(subscriber.subscribe("room")).await.unwrap();
    within(publisher.publish("room", &json!(1))).await.unwrap();
    assert_eq!(
        within(subscriber.expect_message()).await.unwrap().1,
        json!(1)
    );

    redis.stop();
    let body = wait_ready(&a, 503).await;
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"].as_str().unwrap().starts_with("redis"),
        "{body}"
    );
    match within(publisher.publish("room", &json!(2))).await {
        Err(ClientError::Reply(error)) => assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("unavailable", "message not published: broker unavailable")
        ),
        other => panic!("a publish during the outage must fail loudly: {other:?}"),
    }
    within(subscriber.ping())
        .await
        .expect("clients stay connected through the outage");

    redis.restart();
    wait_ready(&a, 200).await;
    within(publisher.publish("room", &json!(3))).await.unwrap();
    // Redis came back empty: the channel's past is gone, and the subscriber
    // is told so before the stream goes on in its new epoch.
    match within(subscriber.next_event()).await.unwrap() {
        Incoming::Reset {
            channel, offset, ..
        } => assert_eq!((channel.as_str(), offset), ("room", 0)),
        other => panic!("expected a reset frame, got {other:?}"),
    }
    assert_eq!(
        within(subscriber.expect_message()).await.unwrap().1,
        json!(3),
        "resubscribed by itself"
    );
    assert_eq!(
        redis.cli(&["PUBSUB", "NUMSUB", "sb:ch:room"]),
        "sb:ch:room\n1"
    );
}

/// `channel`'s members as (user, connection id, info), sorted by user.
async fn members(
    conn: &mut switchboard_client::Connection,
    channel: &str,
) -> Vec<(String, String, Option<Value>)> {
    let mut members: Vec<_> = within(conn.presence(channel))
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.user, m.connection_id, m.info))
        .collect();
    members.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    members
}

#[tokio::test]
async fn presence_and_connections_are_rewritten_after_redis_lost_them() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    receiver.set_handler(Arc::new(|_: &Request| {
        Answer::Json(200, json!({ "allow": true, "info": { "role": "editor" } }))
    }));
    let node = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", "gw-a")
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env(
            "SWITCHBOARD_BACKEND_SECRET",
            "backend-secret-backend-secret-0123456789",
        )
        .toml(&format!(
            "{CHAT}[namespaces.doc]\npresence = true\nsubscribe_proxy = \"{}\"\n",
            receiver.url("/switchboard/subscribe")
        ))
        .start();
    wait_ready(&node, 200).await;
    // Alice's token grants chat:* with an info; doc:1 is allowed by the
    // backend with an info of its own. Bob's token has no info.
    let (mut alice, alice_welcome) = node
        .connect_token(&sign(&json!({
            "sub": "alice", "exp": now() + 3600, "channels": ["chat:*"],
            "info": { "name": "Alice" },
        })))
        .await;
    within(alice.subscribe("chat:room")).await.unwrap();
    within(alice.subscribe("doc:1")).await.unwrap();
    // A refreshed token's info is for the subscriptions made after it; the
    // earlier ones keep the info they entered presence with.
    within(alice.refresh(&sign(&json!({
        "sub": "alice", "exp": now() + 3600, "channels": ["chat:*"],
        "info": { "name": "Alice 2" },
    }))))
    .await
    .unwrap();
    within(alice.subscribe("chat:later")).await.unwrap();
    let (mut bob, bob_welcome) = node.connect("bob").await;
    within(bob.subscribe("chat:room")).await.unwrap();
    let (alice_id, bob_id) = (alice_welcome.connection_id, bob_welcome.connection_id);
    let room = vec![
        (
            "alice".to_owned(),
            alice_id.clone(),
            Some(json!({ "name": "Alice" })),
        ),
        ("bob".to_owned(), bob_id.clone(), None),
    ];
    let doc = vec![(
        "alice".to_owned(),
        alice_id.clone(),
        Some(json!({ "role": "editor" })),
    )];
    let later = vec![(
        "alice".to_owned(),
        alice_id.clone(),
        Some(json!({ "name": "Alice 2" })),
    )];
    assert_eq!(members(&mut bob, "chat:room").await, room);
    assert_eq!(members(&mut alice, "doc:1").await, doc);
    assert_eq!(members(&mut bob, "chat:later").await, later);

    // Redis loses everything (as a restart without persistence would): the
    // lease is gone, so the node writes back what it holds.
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    node.wait_log(|e| e["message"] == "redis lease acquired" && e["entries"] == 4)
        .await;
    assert_eq!(members(&mut bob, "chat:room").await, room);
    assert_eq!(
        members(&mut alice, "doc:1").await,
        doc,
        "the subscribe proxy's info, not the token's"
    );
    assert_eq!(members(&mut bob, "chat:later").await, later);
    let (instance, _) = alice_id.rsplit_once('.').unwrap();
    for (id, user) in [(&alice_id, "alice"), (&bob_id, "bob")] {
        assert_eq!(redis.cli(&["HGET", &format!("sb:conn:{id}"), "user"]), user);
        assert_eq!(
            redis.cli(&["HGET", &format!("sb:user:{user}"), id]),
            instance
        );
    }
    let conns = redis.cli(&["SMEMBERS", &format!("sb:node:{instance}:conns")]);
    let mut conns: Vec<&str> = conns.lines().collect();
    conns.sort_unstable();
    let mut expected = vec![alice_id.as_str(), bob_id.as_str()];
    expected.sort_unstable();
    assert_eq!(conns, expected);
    assert_eq!(
        redis.cli(&["SCARD", &format!("sb:node:{instance}:presence")]),
        "4"
    );

    // The rewritten entries leave as any other.
    within(bob.unsubscribe("chat:room")).await.unwrap();
    assert_eq!(members(&mut alice, "chat:room").await, room[..1].to_vec());
    drop(bob);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["EXISTS", &format!("sb:conn:{bob_id}")]) != "0" {
        assert!(
            Instant::now() < deadline,
            "bob's connection is still recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn server_api_disconnect_reaches_every_node() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    let (mut on_a, _) = a.connect("mallory").await;
    let (mut on_b, _) = b.connect("mallory").await;
    let (mut other, _) = a.connect("alice").await;
    let (status, _) = http_request(
        b.addr,
        "POST",
        "/api/disconnect",
        &[],
        r#"{"user":"mallory"}"#,
    )
    .await;
    assert_eq!(status, 401, "the API needs its key");
    let (status, _) = api(&b, "POST", "/api/disconnect", r#"{"user":"mallory"}"#).await;
    assert_eq!(status, 200);
    for conn in [&mut on_a, &mut on_b] {
        let (code, _) = within(conn.wait_closed()).await.unwrap();
        assert_eq!(code, Some(4003));
    }
    within(other.ping())
        .await
        .expect("other users stay connected");
}

#[tokio::test]
async fn a_node_restarted_under_the_same_id_reaps_its_previous_run() {
    let redis = Redis::start();
    let first = cluster_node(&redis, "gw-solo", CHAT).await;
    let (mut old, old_welcome) = first.connect("old").await;
    within(old.subscribe("chat:room")).await.unwrap();
    first.signal("KILL");
    drop(first);

    let second = cluster_node(&redis, "gw-solo", CHAT).await;
    let (mut new, new_welcome) = second.connect("new").await;
    assert_ne!(
        new_welcome.connection_id, old_welcome.connection_id,
        "connection ids differ across runs"
    );
    within(new.subscribe("chat:room")).await.unwrap();
    let leave = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Frame::Incoming(Incoming::Leave { connection_id, .. }) =
                new.next_frame().await.unwrap()
            {
                return connection_id;
            }
        }
    })
    .await
    .expect("the previous run's member is reaped within 10 s");
    assert_eq!(leave, old_welcome.connection_id);
    let members = within(new.presence("chat:room")).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
        ["new"]
    );
}
