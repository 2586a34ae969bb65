//! Batch publishing over real sockets: the WebSocket `publish_batch`
//! command and the server API's `POST /api/batch`, each with a mix of good
//! and bad messages (every good one delivered, every bad one answered with
//! its own exact error), the per-message rate limit, the refusals of a
//! batch as a whole, consecutive offsets in list order on one channel, and
//! two cluster nodes on a real redis-server.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};
use switchboard_client::{BatchMessage, Connection, ErrorBody, Incoming};

/// `chat` keeps history (the default), `news` has none.
const NAMESPACES: &str = "[namespaces.news]\nhistory_size = 0\n";

/// Data nested 33 levels deep: one too many.
fn too_deep() -> Value {
    let text = format!("{}{}", "[".repeat(33), "]".repeat(33));
    serde_json::from_str(&text).unwrap()
}

/// A token that may subscribe anywhere but publish only to `chat:*` and
/// `news:*`.
fn publisher_token(user: &str) -> String {
    sign(&json!({
        "sub": user,
        "exp": now() + 3600,
        "channels": ["*"],
        "publish": ["chat:*", "news:*"],
    }))
}

/// The next `message` push: its channel, offset and data.
async fn next_message(conn: &mut Connection) -> (String, Option<u64>, Value) {
    match within(conn.next_event()).await.unwrap() {
        Incoming::Message {
            channel,
            offset,
            data,
        } => (channel, offset, data),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Subscribes `conn` to `channel`; the stream's epoch (channels with history).
async fn subscribe(conn: &mut Connection, channel: &str) -> Value {
    within(conn.subscribe(channel)).await.unwrap()["epoch"].clone()
}

fn forbidden(channel: &str) -> Value {
    json!({"error": {"code": "forbidden", "message": format!("token does not grant publishing to {channel}")}})
}

fn bad_request(message: &str) -> Value {
    json!({"error": {"code": "bad_request", "message": message}})
}

const BAD_CHANNEL: &str = "invalid channel: '*' may only end a pattern";

#[tokio::test]
async fn a_websocket_batch_publishes_the_good_messages_and_answers_each_bad_one() {
    let gateway = Gateway::builder().toml(NAMESPACES).start();
    let (mut subscriber, _) = gateway.connect("sub").await;
    let epoch_a = subscribe(&mut subscriber, "chat:a").await;
    let epoch_b = subscribe(&mut subscriber, "chat:b").await;
    subscribe(&mut subscriber, "news:x").await;
    subscribe(&mut subscriber, "secret:x").await;
    let (mut publisher, _) = gateway.connect_token(&publisher_token("pub")).await;

    let frame = json!({"type": "publish_batch", "id": 7, "messages": [
        {"channel": "chat:a", "data": {"n": 1}},
        {"channel": "chat:*", "data": 2},
        {"channel": "secret:x", "data": 3},
        {"channel": "chat:b", "data": too_deep()},
        {"channel": "chat:a", "data": {"n": 2}},
        {"channel": "news:x", "data": "no history"},
        {"channel": "chat:b"},
        {"channel": "chat:b", "data": null},
        "not an object",
    ]});
    publisher.send_text(frame.to_string()).await.unwrap();
    let reply = within(publisher.next_frame()).await.unwrap();
    let switchboard_client::Frame::Incoming(Incoming::Reply { id, result, error }) = reply else {
        panic!("not a reply: {reply:?}");
    };
    assert_eq!((id, error), (7, None));
    assert_eq!(
        result.unwrap(),
        json!({"replies": [
            {"offset": 1, "epoch": epoch_a},
            bad_request(BAD_CHANNEL),
            forbidden("secret:x"),
            bad_request("data is nested deeper than 32 levels"),
            {"offset": 2, "epoch": epoch_a},
            {},
            bad_request("missing field data"),
            {"offset": 1, "epoch": epoch_b},
            bad_request("message must be a JSON object {\"channel\", \"data\"}"),
        ]})
    );

    // Every good message, in list order; none of the bad ones.
    let expected = [
        ("chat:a", Some(1), json!({"n": 1})),
        ("chat:a", Some(2), json!({"n": 2})),
        ("news:x", None, json!("no history")),
        ("chat:b", Some(1), Value::Null),
    ];
    for (channel, offset, data) in expected {
        assert_eq!(
            next_message(&mut subscriber).await,
            (channel.to_owned(), offset, data)
        );
    }
    within(publisher.publish("chat:a", &json!("after")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut subscriber).await,
        ("chat:a".to_owned(), Some(3), json!("after")),
        "nothing else was delivered"
    );
}

#[tokio::test]
async fn the_rust_client_reads_each_message_result() {
    let gateway = Gateway::start();
    let (mut publisher, _) = gateway.connect_token(&publisher_token("pub")).await;
    let one = json!(1);
    let replies = within(publisher.publish_batch(&[
        BatchMessage {
            channel: "chat:c",
            data: &one,
        },
        BatchMessage {
            channel: "other:c",
            data: &one,
        },
    ]))
    .await
    .unwrap();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].as_ref().unwrap()["offset"], json!(1));
    assert_eq!(
        replies[1],
        Err(ErrorBody {
            code: "forbidden".into(),
            message: "token does not grant publishing to other:c".into()
        })
    );
    let refused = within(publisher.publish_batch(&[])).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "command failed: bad_request: messages must hold 1 to 1000 messages"
    );
}

#[tokio::test]
async fn each_message_of_a_batch_counts_against_the_message_rate() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MSG_RATE", "1")
        .env("SWITCHBOARD_MSG_BURST", "3")
        .start();
    let (mut subscriber, _) = gateway.connect("sub").await;
    subscribe(&mut subscriber, "chat:r").await;
    let (mut publisher, _) = gateway.connect("pub").await;
    let messages: Vec<Value> = (0..5)
        .map(|n| json!({"channel": "chat:r", "data": n}))
        .collect();
    let frame = json!({"type": "publish_batch", "id": 1, "messages": messages});
    publisher.send_text(frame.to_string()).await.unwrap();
    let limited = json!({"error": {"code": "rate_limited", "message": "message rate limit of 1/s exceeded; message not published"}});
    match within(publisher.next_event()).await.unwrap() {
        Incoming::Reply {
            id: 1,
            result: Some(result),
            error: None,
        } => {
            let replies = result["replies"].as_array().unwrap().clone();
            let offsets: Vec<&Value> = replies[..3].iter().map(|r| &r["offset"]).collect();
            assert_eq!(offsets, [&json!(1), &json!(2), &json!(3)], "{result}");
            assert_eq!(replies[3..], [limited.clone(), limited], "{result}");
        }
        other => panic!("not the batch reply: {other:?}"),
    }
    for n in 0..3 {
        assert_eq!(
            next_message(&mut subscriber).await,
            ("chat:r".to_owned(), Some(n + 1), json!(n))
        );
    }
    // The bucket is empty: the next command is refused, the connection stays.
    let error = within(publisher.ping()).await.unwrap_err();
    assert_eq!(error.reply_code(), Some("rate_limited"));
}

#[tokio::test]
async fn a_batch_refused_as_a_whole_gets_one_error() {
    let gateway = Gateway::start();
    let (mut conn, _) = gateway.connect("pub").await;
    let one = r#"{"channel":"chat:a","data":1}"#;
    let too_many = format!("[{}]", vec![one; 1001].join(","));
    let cases = [
        (
            r#"{"type":"publish_batch","id":1}"#.to_owned(),
            "missing field messages",
        ),
        (
            r#"{"type":"publish_batch","id":1,"messages":{"channel":"chat:a","data":1}}"#
                .to_owned(),
            "messages must be an array of {\"channel\", \"data\"} objects",
        ),
        (
            r#"{"type":"publish_batch","id":1,"messages":[]}"#.to_owned(),
            "messages must hold 1 to 1000 messages",
        ),
        (
            format!(r#"{{"type":"publish_batch","id":1,"messages":{too_many}}}"#),
            "messages must hold 1 to 1000 messages",
        ),
    ];
    for (frame, message) in cases {
        conn.send_text(frame).await.unwrap();
        let reply = within(conn.next_frame()).await.unwrap();
        assert_eq!(
            reply,
            switchboard_client::Frame::Incoming(Incoming::Reply {
                id: 1,
                result: None,
                error: Some(ErrorBody {
                    code: "bad_request".into(),
                    message: message.into()
                })
            })
        );
    }
    // Exactly 1000 is fine.
    let thousand = format!("[{}]", vec![one; 1000].join(","));
    conn.send_text(format!(
        r#"{{"type":"publish_batch","id":2,"messages":{thousand}}}"#
    ))
    .await
    .unwrap();
    match within(conn.next_event()).await.unwrap() {
        Incoming::Reply {
            id: 2,
            result: Some(result),
            error: None,
        } => {
            let replies = result["replies"].as_array().unwrap();
            let offsets: Vec<u64> = replies
                .iter()
                .map(|r| r["offset"].as_u64().unwrap())
                .collect();
            assert_eq!(offsets, (1..=1000).collect::<Vec<_>>());
        }
        other => panic!("not the batch reply: {other:?}"),
    }
}

#[tokio::test]
async fn messages_to_one_channel_get_consecutive_offsets_in_list_order() {
    let gateway = Gateway::start();
    let (mut subscriber, _) = gateway.connect("sub").await;
    let epoch = subscribe(&mut subscriber, "chat:o").await;
    let (mut publisher, _) = gateway.connect("pub").await;
    within(publisher.publish("chat:o", &json!("first")))
        .await
        .unwrap();
    let data: Vec<Value> = (0..100).map(|n| json!({ "n": n })).collect();
    let messages: Vec<BatchMessage<'_>> = data
        .iter()
        .map(|data| BatchMessage {
            channel: "chat:o",
            data,
        })
        .collect();
    let replies = within(publisher.publish_batch(&messages)).await.unwrap();
    let expected: Vec<_> = (2..102)
        .map(|offset| Ok(json!({"offset": offset, "epoch": epoch})))
        .collect();
    assert_eq!(replies, expected);
    assert_eq!(
        next_message(&mut subscriber).await,
        ("chat:o".to_owned(), Some(1), json!("first"))
    );
    for n in 0..100 {
        assert_eq!(
            next_message(&mut subscriber).await,
            ("chat:o".to_owned(), Some(n + 2), json!({ "n": n }))
        );
    }
}

/// A gateway with the server API and 1 KiB frames (so a 64 KiB batch body).
fn api_gateway() -> Gateway {
    Gateway::builder()
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_MAX_FRAME_BYTES", "1024")
        .toml(NAMESPACES)
        .start()
}

fn api_error(code: &str, message: &str) -> Value {
    json!({"error": code, "message": message})
}

#[tokio::test]
async fn an_api_batch_publishes_the_good_messages_and_answers_each_bad_one() {
    let gateway = api_gateway();
    let (mut subscriber, _) = gateway.connect("sub").await;
    let epoch = subscribe(&mut subscriber, "chat:a").await;
    subscribe(&mut subscriber, "news:x").await;

    let big = "x".repeat(1024);
    let body = json!({"messages": [
        {"channel": "chat:a", "data": {"n": 1}},
        {"channel": "chat:*", "data": 2},
        {"channel": "chat:a", "data": big},
        {"channel": "chat:a", "data": too_deep()},
        {"channel": "news:x", "data": "no history"},
        {"data": 5},
        {"channel": "chat:a", "data": {"n": 2}},
    ]});
    let (status, answer) = api(&gateway, "POST", "/api/batch", &body.to_string()).await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"replies": [
                {"ok": true, "offset": 1, "epoch": epoch},
                api_error("bad_request", BAD_CHANNEL),
                api_error("too_large", "message exceeds 1024 bytes"),
                api_error("bad_request", "data is nested deeper than 32 levels"),
                {"ok": true},
                api_error("bad_request", "missing field channel"),
                {"ok": true, "offset": 2, "epoch": epoch},
            ]})
        )
    );
    let expected = [
        ("chat:a", Some(1), json!({"n": 1})),
        ("news:x", None, json!("no history")),
        ("chat:a", Some(2), json!({"n": 2})),
    ];
    for (channel, offset, data) in expected {
        assert_eq!(
            next_message(&mut subscriber).await,
            (channel.to_owned(), offset, data)
        );
    }
    let (status, _) = api(
        &gateway,
        "POST",
        "/api/publish",
        r#"{"channel":"chat:a","data":"after"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_message(&mut subscriber).await,
        ("chat:a".to_owned(), Some(3), json!("after")),
        "nothing else was delivered"
    );
}

#[tokio::test]
async fn an_api_batch_refused_as_a_whole_keeps_the_usual_errors() {
    let gateway = api_gateway();
    let one = r#"{"channel":"chat:a","data":1}"#;
    let too_many = format!(r#"{{"messages":[{}]}}"#, vec![one; 1001].join(","));
    let over_cap = format!(
        r#"{{"messages":[{{"channel":"chat:a","data":"{}"}}]}}"#,
        "x".repeat(65536)
    );
    let cases = [
        (
            "[]".to_owned(),
            400,
            api_error("bad_request", "body must be a JSON object"),
        ),
        (
            "{".to_owned(),
            400,
            api_error(
                "bad_request",
                "body is not a valid JSON object: EOF while parsing an object at line 1 column 1",
            ),
        ),
        (
            "{}".to_owned(),
            400,
            api_error("bad_request", "missing field messages"),
        ),
        (
            r#"{"messages":"x"}"#.to_owned(),
            400,
            api_error(
                "bad_request",
                "messages must be an array of {\"channel\", \"data\"} objects",
            ),
        ),
        (
            r#"{"messages":[]}"#.to_owned(),
            400,
            api_error("bad_request", "messages must hold 1 to 1000 messages"),
        ),
        (
            too_many,
            400,
            api_error("bad_request", "messages must hold 1 to 1000 messages"),
        ),
        (
            over_cap,
            413,
            api_error("too_large", "body exceeds 65536 bytes"),
        ),
    ];
    for (body, status, error) in cases {
        assert_eq!(
            api(&gateway, "POST", "/api/batch", &body).await,
            (status, error),
            "{}",
            &body[..body.len().min(80)]
        );
    }
    assert_eq!(
        api(&gateway, "GET", "/api/batch", "").await,
        (405, api_error("bad_request", "use POST"))
    );
}

#[tokio::test]
async fn batches_cross_cluster_nodes_with_dense_offsets() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", NAMESPACES).await;
    let b = cluster_node(&redis, "gw-b", NAMESPACES).await;
    let (mut on_b, _) = b.connect("bob").await;
    let rooms = ["chat:r1", "chat:r2", "chat:r3"];
    let mut epochs = BTreeMap::new();
    for room in rooms {
        epochs.insert(room, subscribe(&mut on_b, room).await);
    }
    subscribe(&mut on_b, "news:x").await;

    // Over WebSocket on node A: 30 messages spread over three rooms, a bad
    // channel and a channel without history among them.
    let (mut on_a, _) = a.connect_token(&publisher_token("alice")).await;
    let data: Vec<Value> = (0..30).map(|n| json!({ "n": n })).collect();
    let plain = json!("plain");
    let mut messages: Vec<BatchMessage<'_>> = data
        .iter()
        .enumerate()
        .map(|(n, data)| BatchMessage {
            channel: rooms[n % 3],
            data,
        })
        .collect();
    messages.insert(
        10,
        BatchMessage {
            channel: "chat:*",
            data: &plain,
        },
    );
    messages.insert(
        20,
        BatchMessage {
            channel: "news:x",
            data: &plain,
        },
    );
    let replies = within(on_a.publish_batch(&messages)).await.unwrap();
    assert_eq!(replies.len(), 32);
    assert_eq!(
        replies[10],
        Err(ErrorBody {
            code: "bad_request".into(),
            message: BAD_CHANNEL.into()
        })
    );
    assert_eq!(replies[20], Ok(json!({})));

    // Over the server API on node B: 10 more to the first room.
    let more: Vec<Value> = (30..40)
        .map(|n| json!({"channel": "chat:r1", "data": {"n": n}}))
        .collect();
    let (status, answer) = api(
        &b,
        "POST",
        "/api/batch",
        &json!({ "messages": more }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // The offset each message was given, by its data.
    let mut given = BTreeMap::new();
    for (message, reply) in messages.iter().zip(&replies) {
        if let Ok(reply) = reply {
            if message.channel.starts_with("chat:") {
                assert_eq!(reply["epoch"], epochs[message.channel], "{reply}");
                given.insert(
                    message.data["n"].as_u64().unwrap(),
                    (message.channel, reply["offset"].as_u64().unwrap()),
                );
            }
        }
    }
    for (n, reply) in (30..40).zip(answer["replies"].as_array().unwrap()) {
        assert_eq!(reply["ok"], json!(true), "{reply}");
        assert_eq!(reply["epoch"], epochs["chat:r1"], "{reply}");
        given.insert(n, ("chat:r1", reply["offset"].as_u64().unwrap()));
    }

    // Node B's subscriber gets all 41 good messages, each room's in offset
    // order, the offsets dense from 1, each the one its publisher was told.
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..41 {
        let (channel, offset, data) = next_message(&mut on_b).await;
        if channel == "news:x" {
            assert_eq!((offset, data), (None, plain.clone()));
            continue;
        }
        let n = data["n"].as_u64().unwrap();
        let offset = offset.unwrap();
        assert_eq!(given[&n], (channel.as_str(), offset), "message {n}");
        seen.entry(channel).or_default().push(offset);
    }
    let dense = |count: u64| (1..=count).collect::<Vec<_>>();
    assert_eq!(seen["chat:r1"], dense(20));
    assert_eq!(seen["chat:r2"], dense(10));
    assert_eq!(seen["chat:r3"], dense(10));
}

/// List order on one channel in cluster mode. The batch hands its messages
/// to the broker concurrently, in list order on their first poll; the
/// node's publisher queues them in that order and stores them in script
/// calls that keep it.
#[tokio::test]
async fn a_cluster_batch_keeps_list_order_on_one_channel() {
    let redis = Redis::start();
    let a = cluster_node(&redis, "gw-a", "").await;
    let (mut on_a, _) = a.connect("alice").await;
    let data: Vec<Value> = (0..200).map(|n| json!({ "n": n })).collect();
    let messages: Vec<BatchMessage<'_>> = data
        .iter()
        .map(|data| BatchMessage {
            channel: "chat:order",
            data,
        })
        .collect();
    let replies = within(on_a.publish_batch(&messages)).await.unwrap();
    let offsets: Vec<u64> = replies
        .iter()
        .map(|r| r.as_ref().unwrap()["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (1..=200).collect::<Vec<_>>());
}
