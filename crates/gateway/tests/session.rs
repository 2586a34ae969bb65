//! Sessions over real sockets: subscribe, publish fan-out, presence,
//! join/leave, malformed and oversized frames, the channel cap.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard_client::{ClientError, Connection, Frame, Incoming, Message};

fn reply_error(result: Result<Value, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Reply(error)) => (error.code, error.message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The next frame, which must arrive within the time limit.
async fn next(conn: &mut Connection) -> Frame {
    within(conn.next_frame()).await.unwrap()
}

/// Proves nothing is queued for `conn`: a ping's reply is the next frame.
async fn assert_nothing_pending(conn: &mut Connection) {
    conn.send_text(r#"{"type":"ping","id":999}"#).await.unwrap();
    match next(conn).await {
        Frame::Incoming(Incoming::Reply { id: 999, .. }) => {}
        other => panic!("expected only the ping reply, got {other:?}"),
    }
}

#[tokio::test]
async fn welcome_names_connection_node_and_user() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_NODE_ID", "gw-1")
        .start();
    let (_, welcome) = gateway.connect("alice").await;
    assert_eq!(welcome.user, "alice");
    assert_eq!(welcome.node_id, "gw-1");
    assert!(
        welcome.connection_id.starts_with("gw-1."),
        "{}",
        welcome.connection_id
    );
}

#[tokio::test]
async fn publish_reaches_every_subscriber_and_no_one_else() {
    let gateway = Gateway::start();
    let (mut a, _) = gateway.connect("a").await;
    let (mut b, _) = gateway.connect("b").await;
    let (mut other, _) = gateway.connect("c").await;
    let (mut publisher, _) = gateway.connect("p").await;
    // History is on by default: the reply names the channel's position.
    let reply = within(a.subscribe("chat:lobby")).await.unwrap();
    assert_eq!(reply["offset"], 0, "{reply}");
    let epoch = reply["epoch"].clone();
    within(b.subscribe("chat:lobby")).await.unwrap();
    within(other.subscribe("chat:other")).await.unwrap();

    let data = json!({ "text": "hello", "n": [1, 2, 3] });
    assert_eq!(
        within(publisher.publish("chat:lobby", &data))
            .await
            .unwrap(),
        json!({ "offset": 1, "epoch": epoch })
    );
    for conn in [&mut a, &mut b] {
        let (channel, got) = within(conn.expect_message()).await.unwrap();
        assert_eq!((channel.as_str(), got), ("chat:lobby", data.clone()));
    }
    assert_nothing_pending(&mut other).await;
    assert_nothing_pending(&mut publisher).await;

    // Order within one publisher's stream is kept.
    for n in 0..50 {
        publisher
            .send_text(json!({"type": "publish", "channel": "chat:lobby", "data": n}).to_string())
            .await
            .unwrap();
    }
    for conn in [&mut a, &mut b] {
        for n in 0..50 {
            assert_eq!(within(conn.expect_message()).await.unwrap().1, json!(n));
        }
    }

    within(a.unsubscribe("chat:lobby")).await.unwrap();
    within(publisher.publish("chat:lobby", &json!("after")))
        .await
        .unwrap();
    assert_eq!(within(b.expect_message()).await.unwrap().1, json!("after"));
    assert_nothing_pending(&mut a).await;
}

#[tokio::test]
async fn grants_are_enforced() {
    let gateway = Gateway::start();
    let mut c = claims("reader");
    c["channels"] = json!(["chat:*", "news"]);
    c["publish"] = json!(["chat:own"]);
    let (mut conn, _) = gateway.connect_token(&sign(&c)).await;
    within(conn.subscribe("chat:lobby")).await.unwrap();
    within(conn.subscribe("news")).await.unwrap();
    assert_eq!(
        reply_error(within(conn.subscribe("news:sports")).await),
        (
            "forbidden".into(),
            "token does not grant subscribing to news:sports".into()
        )
    );
    assert_eq!(
        reply_error(within(conn.publish("chat:lobby", &json!(1))).await),
        (
            "forbidden".into(),
            "token does not grant publishing to chat:lobby".into()
        )
    );
    within(conn.publish("chat:own", &json!(1))).await.unwrap();
    assert_eq!(
        reply_error(within(conn.presence("secret")).await.map(|_| Value::Null)),
        (
            "forbidden".into(),
            "token does not grant access to secret".into()
        )
    );
    // A forbidden command without an id still gets an answer.
    conn.send_text(r#"{"type":"subscribe","channel":"admin"}"#)
        .await
        .unwrap();
    match next(&mut conn).await {
        Frame::Incoming(Incoming::Error { error }) => assert_eq!(error.code, "forbidden"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_keeps_working() {
    let gateway = Gateway::start();
    let (mut conn, _) = gateway.connect("alice").await;
    let cases: &[(&str, Value)] = &[
        (
            "not json",
            json!({"type":"error","error":{"code":"bad_request","message":"frame must be a JSON object"}}),
        ),
        (
            r#"{"type":"subscribe","id":1}"#,
            json!({"type":"reply","id":1,"error":{"code":"bad_request","message":"missing field channel"}}),
        ),
        (
            r#"{"type":"dance","id":2}"#,
            json!({"type":"reply","id":2,"error":{"code":"bad_request","message":"unknown command type \"dance\""}}),
        ),
        (
            r#"{"type":"subscribe","channel":"a b","id":3}"#,
            json!({"type":"reply","id":3,"error":{"code":"bad_request","message":"invalid channel: channel name contains ' '; allowed are letters, digits and _ - : . @ / = +"}}),
        ),
        (
            r#"{"type":"publish","channel":"a","id":4}"#,
            json!({"type":"reply","id":4,"error":{"code":"bad_request","message":"missing field data"}}),
        ),
        (
            r#"{"type":"ping","id":"x"}"#,
            json!({"type":"error","error":{"code":"bad_request","message":"id must be a non-negative integer"}}),
        ),
        (
            r#"{"id":5}"#,
            json!({"type":"reply","id":5,"error":{"code":"bad_request","message":"missing field type"}}),
        ),
    ];
    let (mut raw, _) = gateway.connect("bob").await;
    for (frame, expected) in cases {
        raw.send_text(*frame).await.unwrap();
        raw.send_text(r#"{"type":"ping","id":77}"#).await.unwrap();
        let got = match next(&mut raw).await {
            Frame::Incoming(incoming) => incoming,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            got,
            serde_json::from_value::<Incoming>(expected.clone()).unwrap(),
            "for {frame}"
        );
        let Frame::Incoming(Incoming::Reply { id: 77, .. }) = next(&mut raw).await else {
            panic!("no ping reply")
        };
    }
    raw.send_message(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    match next(&mut raw).await {
        Frame::Incoming(Incoming::Error { error }) => {
            assert_eq!(
                (error.code.as_str(), error.message.as_str()),
                (
                    "bad_request",
                    "binary frames are not supported; send JSON text"
                )
            )
        }
        other => panic!("{other:?}"),
    }
    within(raw.ping()).await.unwrap();
    within(conn.ping())
        .await
        .expect("another session is untouched");
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MAX_FRAME_BYTES", "1024")
        .start();
    let (mut conn, _) = gateway.connect("alice").await;
    let big = json!({"type": "publish", "channel": "a", "data": "x".repeat(2000)}).to_string();
    conn.send_text(big).await.unwrap();
    let (code, reason) = within(conn.wait_closed()).await.unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (Some(1009), "frame exceeds 1024 bytes")
    );
    // The node is fine.
    let (mut again, _) = gateway.connect("alice").await;
    within(again.ping()).await.unwrap();
}

#[tokio::test]
async fn deep_json_is_refused() {
    let gateway = Gateway::start();
    let (mut conn, _) = gateway.connect("alice").await;
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    conn.send_text(format!(
        r#"{{"type":"publish","channel":"a","data":{deep},"id":1}}"#
    ))
    .await
    .unwrap();
    match next(&mut conn).await {
        Frame::Incoming(Incoming::Reply {
            id: 1,
            error: Some(error),
            ..
        }) => {
            assert_eq!(error.message, "data is nested deeper than 32 levels")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn channel_cap_per_connection() {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_MAX_CHANNELS", "3")
        .start();
    let (mut conn, _) = gateway.connect("alice").await;
    for n in 0..3 {
        within(conn.subscribe(&format!("room:{n}"))).await.unwrap();
    }
    within(conn.subscribe("room:0"))
        .await
        .expect("resubscribing is not a new channel");
    assert_eq!(
        reply_error(within(conn.subscribe("room:3")).await),
        (
            "bad_request".into(),
            "subscription limit of 3 channels reached".into()
        )
    );
    within(conn.unsubscribe("room:0")).await.unwrap();
    within(conn.subscribe("room:3")).await.unwrap();
}

const PRESENCE_CONFIG: &str = r#"
[namespaces.chat]
presence = true
join_leave = true

[namespaces.quiet]
presence = false
"#;

#[tokio::test]
async fn presence_lists_members_and_join_leave_events_flow() {
    let gateway = Gateway::builder().toml(PRESENCE_CONFIG).start();
    let mut c = claims("alice");
    c["info"] = json!({ "name": "Alice" });
    let (mut alice, alice_welcome) = gateway.connect_token(&sign(&c)).await;
    within(alice.subscribe("chat:lobby")).await.unwrap();
    // Alice sees her own join.
    match next(&mut alice).await {
        Frame::Incoming(Incoming::Join {
            channel,
            user,
            connection_id,
            info,
        }) => {
            assert_eq!((channel.as_str(), user.as_str()), ("chat:lobby", "alice"));
            assert_eq!(connection_id, alice_welcome.connection_id);
            assert_eq!(info, Some(json!({ "name": "Alice" })));
        }
        other => panic!("{other:?}"),
    }

    let (mut bob, bob_welcome) = gateway.connect("bob").await;
    within(bob.subscribe("chat:lobby")).await.unwrap();
    match next(&mut alice).await {
        Frame::Incoming(Incoming::Join { user, .. }) => assert_eq!(user, "bob"),
        other => panic!("{other:?}"),
    }
    let mut members = within(bob.presence("chat:lobby")).await.unwrap();
    members.sort_by(|x, y| x.user.cmp(&y.user));
    assert_eq!(members.len(), 2);
    assert_eq!(
        (members[0].user.as_str(), members[0].info.clone()),
        ("alice", Some(json!({ "name": "Alice" })))
    );
    assert_eq!(
        (members[1].user.as_str(), members[1].connection_id.as_str()),
        ("bob", bob_welcome.connection_id.as_str())
    );

    // Leaving by closing the connection.
    drop(bob);
    match next(&mut alice).await {
        Frame::Incoming(Incoming::Leave {
            channel,
            user,
            connection_id,
        }) => {
            assert_eq!((channel.as_str(), user.as_str()), ("chat:lobby", "bob"));
            assert_eq!(connection_id, bob_welcome.connection_id);
        }
        other => panic!("{other:?}"),
    }
    let members = within(alice.presence("chat:lobby")).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
        ["alice"]
    );

    // Default namespace: presence yes, events no.
    let (mut carol, _) = gateway.connect("carol").await;
    within(alice.subscribe("lobby")).await.unwrap();
    within(carol.subscribe("lobby")).await.unwrap();
    assert_eq!(within(carol.presence("lobby")).await.unwrap().len(), 2);
    assert_nothing_pending(&mut alice).await;

    // Presence off.
    within(carol.subscribe("quiet:room")).await.unwrap();
    assert_eq!(
        reply_error(
            within(carol.presence("quiet:room"))
                .await
                .map(|_| Value::Null)
        ),
        (
            "bad_request".into(),
            "presence is disabled for namespace \"quiet\"".into()
        )
    );
}

#[tokio::test]
async fn config_errors_stop_start_up_naming_the_key() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_clear()
        .env("SWITCHBOARD_JWT_HS256_SECRET", SECRET)
        .env("SWITCHBOARD_MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "switchboard: invalid configuration: SWITCHBOARD_MAX_CONNECTIONS: \"lots\" is not a whole number"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_clear()
        .env("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SWITCHBOARD_JWT_PUBLIC_KEY_FILE"),
        "{stderr}"
    );
}
