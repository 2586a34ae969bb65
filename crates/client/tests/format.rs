//! The MessagePack format against a scripted WebSocket server: the client
//! asks for `switchboard.msgpack`, refuses an answer without it, sends its
//! commands as binary MessagePack maps and turns binary frames into the
//! same events and replies a JSON connection gets.

#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::tungstenite::handshake::server::{Request, Response};
use switchboard_client::{
    Client, ClientConfig, ClientError, Connection, Event, Format, Incoming, IntoClientRequest,
    Message,
};
use switchboard_protocol::msgpack;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TcpStream>;

/// Accepts one upgrade, answering `Sec-WebSocket-Protocol: answer` when
/// given; returns the socket and the subprotocol list the client asked for.
async fn accept(listener: &TcpListener, answer: Option<&'static str>) -> (Ws, Option<String>) {
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    let mut asked = None;
    let callback = |request: &Request, mut response: Response| {
        asked = request
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        if let Some(answer) = answer {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", answer.parse().unwrap());
        }
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .unwrap();
    (ws, asked)
}

/// Sends `frame` as a binary MessagePack map.
async fn send_msgpack(ws: &mut Ws, frame: Value) {
    let bytes = msgpack::to_msgpack(&frame.to_string()).unwrap();
    ws.send(Message::binary(bytes)).await.unwrap();
}

/// The next data frame from the client, which must be binary MessagePack;
/// returned as JSON.
async fn read_msgpack(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame from the client")
            .unwrap()
            .unwrap();
        match message {
            Message::Binary(bytes) => {
                return serde_json::from_str(&msgpack::to_json(&bytes).unwrap()).unwrap()
            }
            Message::Text(text) => panic!("a text frame on a MessagePack connection: {text}"),
            _ => continue,
        }
    }
}

fn welcome() -> Value {
    json!({"type": "welcome", "connection_id": "c1", "node_id": "n1", "user": "ann",
           "expires_in": 60, "format": "msgpack"})
}

#[tokio::test]
async fn a_msgpack_connection_sends_and_reads_binary_maps() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws?token=t", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut ws, asked) = accept(&listener, Some("switchboard.msgpack")).await;
        assert_eq!(asked.as_deref(), Some("switchboard.msgpack"));
        send_msgpack(&mut ws, welcome()).await;
        let publish = read_msgpack(&mut ws).await;
        assert_eq!(
            publish,
            json!({"type": "publish", "channel": "room", "data": {"text": "hi", "n": 1.5}, "id": 1})
        );
        // A push before the reply is kept for later.
        send_msgpack(
            &mut ws,
            json!({"type": "message", "channel": "room", "offset": 3, "data": {"text": "hi"}}),
        )
        .await;
        send_msgpack(
            &mut ws,
            json!({"type": "reply", "id": 1, "result": {"offset": 3, "epoch": "e"}}),
        )
        .await;
        ws
    });
    let (mut connection, welcome) = Connection::connect_with(&url, Format::MsgPack)
        .await
        .unwrap();
    assert_eq!(connection.format(), Format::MsgPack);
    assert_eq!(welcome.user, "ann");
    let result = connection
        .publish("room", &json!({"text": "hi", "n": 1.5}))
        .await
        .unwrap();
    assert_eq!(result, json!({"offset": 3, "epoch": "e"}));
    assert_eq!(
        connection.next_event().await.unwrap(),
        Incoming::Message {
            channel: "room".into(),
            offset: Some(3),
            data: json!({"text": "hi"})
        }
    );
    drop(server.await.unwrap());
}

#[tokio::test]
async fn an_answer_without_the_subprotocol_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws?token=t", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (ws, asked) = accept(&listener, None).await;
        assert_eq!(asked.as_deref(), Some("switchboard.msgpack"));
        ws
    });
    let error = Connection::connect_with(&url, Format::MsgPack)
        .await
        .err()
        .expect("a server that ignores the subprotocol is refused");
    // tungstenite checks the answer itself; either way the connect fails.
    assert!(
        matches!(error, ClientError::WebSocket(_) | ClientError::Protocol(_)),
        "{error}"
    );
    let _ = server.await;
}

#[tokio::test]
async fn a_json_connection_names_no_subprotocol() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws?token=t", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut ws, asked) = accept(&listener, None).await;
        assert_eq!(asked, None);
        let mut frame = welcome();
        frame.as_object_mut().unwrap().remove("format");
        ws.send(Message::text(frame.to_string())).await.unwrap();
        // A binary frame on a JSON connection is a protocol error.
        ws.send(Message::binary(vec![0x80])).await.unwrap();
        ws
    });
    let (mut connection, _) = Connection::connect_with(&url, Format::Json).await.unwrap();
    assert_eq!(connection.format(), Format::Json);
    assert!(matches!(
        connection.next_frame().await,
        Err(ClientError::Protocol(_))
    ));
    drop(server.await.unwrap());
}

#[tokio::test]
async fn the_reconnecting_client_subscribes_and_reads_in_msgpack() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws?token=t", listener.local_addr().unwrap());
    let mut config = ClientConfig::new(url);
    config.format = Format::MsgPack;
    let (client, mut events) = Client::start(config);
    client.subscribe("room");
    let (mut ws, asked) = accept(&listener, Some("switchboard.msgpack")).await;
    assert_eq!(asked.as_deref(), Some("switchboard.msgpack"));
    send_msgpack(&mut ws, welcome()).await;
    let subscribe = read_msgpack(&mut ws).await;
    assert_eq!(subscribe["type"], "subscribe");
    assert_eq!(subscribe["channel"], "room");
    send_msgpack(
        &mut ws,
        json!({"type": "reply", "id": subscribe["id"], "result": {}}),
    )
    .await;
    send_msgpack(
        &mut ws,
        json!({"type": "message", "channel": "room", "data": {"user": "bob", "tags": [1, null, true]}}),
    )
    .await;
    client.publish("room", json!({"text": "back"}));
    let publish = read_msgpack(&mut ws).await;
    assert_eq!(
        publish,
        json!({"type": "publish", "channel": "room", "data": {"text": "back"}})
    );
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("no event")
            .unwrap();
        seen.push(event);
    }
    assert!(
        matches!(&seen[0], Event::Connected(w) if w.user == "ann"),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], Event::Subscribed { channel, .. } if channel == "room"),
        "{seen:?}"
    );
    assert_eq!(
        seen[2],
        Event::Message {
            channel: "room".into(),
            offset: None,
            data: json!({"user": "bob", "tags": [1, null, true]})
        }
    );
    client.stop();
}

#[tokio::test]
async fn a_caller_naming_subprotocols_speaks_what_the_server_chose() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws?token=t", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut ws, asked) = accept(&listener, Some("switchboard.msgpack")).await;
        assert_eq!(
            asked.as_deref(),
            Some("x, switchboard.msgpack, switchboard.json")
        );
        send_msgpack(&mut ws, welcome()).await;
        assert_eq!(read_msgpack(&mut ws).await["type"], "ping");
        ws
    });
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "x, switchboard.msgpack, switchboard.json".parse().unwrap(),
    );
    let (mut connection, welcome) = Connection::connect_request(request).await.unwrap();
    assert_eq!(connection.format(), Format::MsgPack);
    assert_eq!(welcome.user, "ann");
    connection.send_command(r#"{"type":"ping"}"#).await.unwrap();
    drop(server.await.unwrap());
}
