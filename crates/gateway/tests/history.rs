//! History, offsets and recovery over real sockets, on one in-memory node
//! and across nodes on a real redis-server: resuming with `since`, what
//! happens outside the window, `history` reads, and every bad input with
//! its exact error.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, Incoming};
use switchboard_protocol::Position;

/// The next frame, which must be a `message`: (offset, data).
async fn message(conn: &mut Connection, channel: &str) -> (Option<u64>, Value) {
    match within(conn.next_event()).await.unwrap() {
        Incoming::Message {
            channel: got,
            offset,
            data,
        } => {
            assert_eq!(got, channel);
            (offset, data)
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Proves nothing is queued for `conn`: a ping's reply is the next frame.
async fn assert_nothing_pending(conn: &mut Connection) {
    conn.send_text(r#"{"type":"ping","id":999}"#).await.unwrap();
    match within(conn.next_event()).await.unwrap() {
        Incoming::Reply { id: 999, .. } => {}
        other => panic!("expected only the ping reply, got {other:?}"),
    }
}

fn position(reply: &Value) -> Position {
    Position::new(
        reply["offset"].as_u64().unwrap(),
        reply["epoch"].as_str().unwrap(),
    )
}

fn reply_error(result: Result<Value, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Reply(error)) => (error.code, error.message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Publishes `{"n": n}` through the server API; returns the position.
async fn publish(gateway: &Gateway, channel: &str, n: u64) -> Position {
    let body = json!({ "channel": channel, "data": { "n": n } }).to_string();
    let (status, reply) = api(gateway, "POST", "/api/publish", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ok"], true);
    position(&reply)
}

/// A client that saw messages up to `seen`, went away while `missed` more
/// were published, and came back with `since` gets exactly those, in order,
/// then live messages, each once.
async fn resume_within_the_window(subscriber: &Gateway, publisher: &Gateway) {
    let (mut conn, _) = subscriber.connect("ann").await;
    let first = within(conn.subscribe_since("feed:a", None)).await.unwrap();
    assert_eq!(first["offset"], 0, "a new channel starts at 0: {first}");
    assert!(first.get("recovered").is_none());
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        assert_eq!(
            publish(publisher, "feed:a", n).await,
            Position::new(n, &epoch)
        );
        assert_eq!(
            message(&mut conn, "feed:a").await,
            (Some(n), json!({ "n": n }))
        );
    }
    within(conn.close()).await.unwrap();
    for n in 4..=8 {
        publish(publisher, "feed:a", n).await;
    }

    let (mut conn, _) = subscriber.connect("ann").await;
    let since = Position::new(3, &epoch);
    let reply = within(conn.subscribe_since("feed:a", Some(&since)))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({ "offset": 8, "epoch": epoch, "recovered": true })
    );
    for n in 4..=8 {
        assert_eq!(
            message(&mut conn, "feed:a").await,
            (Some(n), json!({ "n": n }))
        );
    }
    publish(publisher, "feed:a", 9).await;
    assert_eq!(
        message(&mut conn, "feed:a").await,
        (Some(9), json!({ "n": 9 }))
    );
    assert_nothing_pending(&mut conn).await;

    // Resuming from the top replays nothing and still recovers.
    let (mut again, _) = subscriber.connect("ann").await;
    let reply = within(again.subscribe_since("feed:a", Some(&Position::new(9, &epoch))))
        .await
        .unwrap();
    assert_eq!(reply["recovered"], true);
    assert_nothing_pending(&mut again).await;
}

#[tokio::test]
async fn resume_within_the_window_on_one_node() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    resume_within_the_window(&gateway, &gateway).await;
}

#[tokio::test]
async fn resume_within_the_window_across_nodes() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    resume_within_the_window(&a, &b).await;
    assert_eq!(
        redis.cli(&["HGET", "sb:hist:{feed:a}:meta", "top"]),
        "9",
        "the offset lives in Redis"
    );
    assert_eq!(redis.cli(&["LLEN", "sb:hist:{feed:a}:list"]), "9");
}

#[tokio::test]
async fn publish_replies_carry_the_position_and_offsets_never_repeat_across_nodes() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let b = cluster_node(&redis, "gw-b", "").await;
    let (mut on_a, _) = a.connect("ann").await;
    let (mut on_b, _) = b.connect("bob").await;
    within(on_a.subscribe("feed:x")).await.unwrap();
    let mut offsets = Vec::new();
    for n in 0..20 {
        let conn = if n % 2 == 0 { &mut on_a } else { &mut on_b };
        let reply = within(conn.publish("feed:x", &json!({ "n": n })))
            .await
            .unwrap();
        offsets.push(reply["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    for n in 0..20 {
        assert_eq!(
            message(&mut on_a, "feed:x").await,
            (Some(n + 1), json!({ "n": n }))
        );
    }
}

#[tokio::test]
async fn since_older_than_the_history_is_not_recovered() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml("[namespaces.feed]\nhistory_size = 3\n")
        .start();
    let (mut conn, _) = gateway.connect("ann").await;
    let epoch = position(&within(conn.subscribe_since("feed:s", None)).await.unwrap()).epoch;
    within(conn.close()).await.unwrap();
    for n in 1..=5 {
        publish(&gateway, "feed:s", n).await;
    }
    let (mut conn, _) = gateway.connect("ann").await;
    let reply = within(conn.subscribe_since("feed:s", Some(&Position::new(1, &epoch))))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({ "offset": 5, "epoch": epoch, "recovered": false }),
        "offsets 2..=5 were missed but only 3..=5 are kept"
    );
    assert_nothing_pending(&mut conn).await;
    publish(&gateway, "feed:s", 6).await;
    assert_eq!(message(&mut conn, "feed:s").await.0, Some(6));

    // A well-formed epoch that is not the stream's: not recovered either.
    let (mut other, _) = gateway.connect("ann").await;
    let reply = within(other.subscribe_since("feed:s", Some(&Position::new(1, "0123abcd"))))
        .await
        .unwrap();
    assert_eq!(reply["recovered"], false);
    assert_nothing_pending(&mut other).await;
}

#[tokio::test]
async fn a_stale_epoch_after_redis_lost_its_data_is_not_recovered() {
    let mut redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let before = publish(&a, "feed:e", 1).await;
    publish(&a, "feed:e", 2).await;
    redis.stop();
    redis.restart();
    wait_ready(&a, 200).await;
    let after = publish(&a, "feed:e", 3).await;
    assert_ne!(after.epoch, before.epoch, "the past was lost: a new epoch");
    assert_eq!(after.offset, 1);
    let (mut conn, _) = a.connect("ann").await;
    let reply = within(conn.subscribe_since("feed:e", Some(&before)))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({ "offset": 1, "epoch": after.epoch, "recovered": false })
    );
    assert_nothing_pending(&mut conn).await;
}

#[tokio::test]
async fn history_reads_are_bounded_and_need_the_grant() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .start();
    let mut positions = Vec::new();
    for n in 1..=5 {
        positions.push(publish(&gateway, "feed:h", n).await);
    }
    let epoch = positions[0].epoch.clone();
    let (mut conn, _) = gateway.connect("ann").await;
    let page = within(conn.history("feed:h", None, Some(2))).await.unwrap();
    assert_eq!(
        page,
        json!({ "offset": 5, "epoch": epoch, "messages": [
            { "type": "message", "channel": "feed:h", "offset": 4, "data": { "n": 4 } },
            { "type": "message", "channel": "feed:h", "offset": 5, "data": { "n": 5 } },
        ]})
    );
    let page = within(conn.history("feed:h", Some(&Position::new(1, &epoch)), Some(2)))
        .await
        .unwrap();
    assert_eq!(page["recovered"], true);
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3], "the page after since, at most limit");

    // The same through the server API.
    let path = format!("/api/history/feed%3Ah?since=3&epoch={epoch}");
    let (status, body) = api(&gateway, "GET", &path, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    assert_eq!(body["recovered"], true);
    let (status, body) = api(&gateway, "GET", "/api/history/feed:h?limit=1", "").await;
    assert_eq!(
        (status, body["messages"][0]["offset"].clone()),
        (200, json!(5))
    );

    // Without the subscribe grant: forbidden, and the connection goes on.
    let limited = sign(&json!({ "sub": "ann", "exp": now() + 3600, "channels": ["chat:*"] }));
    let (mut conn, _) = gateway.connect_token(&limited).await;
    assert_eq!(
        reply_error(within(conn.history("feed:h", None, None)).await),
        (
            "forbidden".into(),
            "token does not grant access to feed:h".into()
        )
    );
    assert_eq!(
        reply_error(within(conn.subscribe_since("feed:h", Some(&Position::new(1, &epoch)))).await)
            .0,
        "forbidden"
    );
    within(conn.ping()).await.unwrap();
}

#[tokio::test]
async fn bad_since_limit_and_history_get_exact_errors_and_the_connection_goes_on() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml("[namespaces.quiet]\nhistory_size = 0\n")
        .start();
    let top = publish(&gateway, "feed:b", 1).await;
    publish(&gateway, "feed:b", 2).await;
    let (mut conn, _) = gateway.connect("ann").await;
    let frame_errors = [
        (
            json!({"offset": -1, "epoch": top.epoch}),
            "since.offset must be a non-negative integer",
        ),
        (
            json!({"offset": "x", "epoch": top.epoch}),
            "since.offset must be a non-negative integer",
        ),
        (
            json!({"offset": 1, "epoch": "not an epoch!"}),
            "since.epoch must be a string of 1 to 64 letters, digits, '-' or '_'",
        ),
        (json!({"offset": 1}), "missing field since.epoch"),
        (json!(7), "since must be an object {\"offset\", \"epoch\"}"),
    ];
    for (id, (since, expected)) in (1u64..).zip(frame_errors) {
        let frame =
            json!({"type": "subscribe", "channel": "feed:b", "since": since, "id": id}).to_string();
        conn.send_text(frame).await.unwrap();
        match within(conn.next_event()).await.unwrap() {
            Incoming::Reply {
                id: got,
                error: Some(error),
                ..
            } => {
                assert_eq!(got, id);
                assert_eq!(
                    (error.code.as_str(), error.message.as_str()),
                    ("bad_request", expected)
                );
            }
            other => panic!("expected an error reply for {since}, got {other:?}"),
        }
    }
    assert_eq!(
        reply_error(
            within(conn.subscribe_since("feed:b", Some(&Position::new(99, &top.epoch)))).await
        ),
        (
            "bad_request".into(),
            "since.offset 99 is beyond the channel's latest offset 2".into()
        )
    );
    // The refused subscribe left no subscription behind.
    publish(&gateway, "feed:b", 3).await;
    assert_nothing_pending(&mut conn).await;

    assert_eq!(
        reply_error(within(conn.history("quiet:x", None, None)).await),
        (
            "bad_request".into(),
            "history is disabled for namespace \"quiet\"".into()
        )
    );
    conn.send_text(r#"{"type":"history","channel":"feed:b","limit":0,"id":50}"#)
        .await
        .unwrap();
    match within(conn.next_event()).await.unwrap() {
        Incoming::Reply {
            id: 50,
            error: Some(error),
            ..
        } => assert_eq!(error.message, "limit must be a whole number from 1 to 1000"),
        other => panic!("unexpected {other:?}"),
    }
    // A channel without history: no offsets, and since cannot recover.
    let reply = within(conn.subscribe_since("quiet:x", Some(&Position::new(1, "abc"))))
        .await
        .unwrap();
    assert_eq!(reply, json!({ "recovered": false }));
    let (status, body) = api(
        &gateway,
        "POST",
        "/api/publish",
        r#"{"channel":"quiet:x","data":1}"#,
    )
    .await;
    assert_eq!((status, body), (200, json!({ "ok": true })));
    assert_eq!(message(&mut conn, "quiet:x").await, (None, json!(1)));
    within(conn.ping()).await.unwrap();

    // The server API's errors.
    for (path, expected) in [
        (
            "/api/history/feed:b?limit=5000",
            "limit must be a whole number from 1 to 1000",
        ),
        ("/api/history/feed:b?since=1", "since and epoch go together"),
        (
            "/api/history/feed:b?since=-1&epoch=e",
            "since must be a non-negative integer (an offset)",
        ),
        (
            "/api/history/quiet:x",
            "history is disabled for namespace \"quiet\"",
        ),
        ("/api/history/bad%20name", "invalid channel: channel name contains ' '; allowed are letters, digits and _ - : . @ / = +"),
    ] {
        let (status, body) = api(&gateway, "GET", path, "").await;
        assert_eq!(
            (status, body),
            (400, json!({ "error": "bad_request", "message": expected })),
            "{path}"
        );
    }
    let path = format!("/api/history/feed:b?since=50&epoch={}", top.epoch);
    let (status, body) = api(&gateway, "GET", &path, "").await;
    assert_eq!(
        (status, body["message"].clone()),
        (
            400,
            json!("since.offset 50 is beyond the channel's latest offset 3")
        )
    );
}
