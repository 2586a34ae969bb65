//! Subscribe authorization by the backend, against real gateway processes
//! and a recording HTTP receiver standing in for the backend.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use receiver::*;
use serde_json::json;

#[tokio::test]
async fn the_receiver_records_requests_and_answers_as_told() {
    let receiver = Receiver::start();
    let client = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();

    let response = client
        .post(receiver.url("/hook?x=1"))
        .header("X-Test", "yes")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(status(response), 200);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/hook?x=1");
    assert_eq!(requests[0].header("x-test"), Some("yes"));
    assert_eq!(requests[0].json(), json!({ "a": 1 }));

    receiver.set(Answer::Json(201, json!({ "ok": true })));
    let response = client.post(receiver.url("/")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.text().await.unwrap(), "{\"ok\":true}");

    receiver.set_handler(Arc::new(|request: &Request| {
        if request.path == "/a" {
            Answer::Status(500)
        } else {
            Answer::Raw(200, "not json".into())
        }
    }));
    let a = client.post(receiver.url("/a")).send().await.unwrap();
    assert_eq!(status(a), 500);
    let b = client.post(receiver.url("/b")).send().await.unwrap();
    assert_eq!(b.text().await.unwrap(), "not json");

    receiver.set(Answer::delay(
        Duration::from_millis(100),
        Answer::Status(204),
    ));
    let started = Instant::now();
    let response = client.post(receiver.url("/")).send().await.unwrap();
    assert_eq!(status(response), 204);
    assert!(started.elapsed() >= Duration::from_millis(100));

    receiver.set(Answer::Hang);
    let hung = client
        .post(receiver.url("/hang"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    assert!(
        receiver
            .until(|r| r.iter().any(|r| r.path == "/hang"), WAIT)
            .await
    );

    receiver.clear();
    assert!(receiver.requests().is_empty());
    // The blocking wait, as a sync test uses it: a request from another
    // thread arrives while it waits.
    let addr = receiver.addr;
    let waiter = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(50));
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /late HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        stream
    });
    receiver.set(Answer::Status(200));
    assert!(receiver.wait_for(|r| r.iter().any(|r| r.path == "/late"), WAIT));
    assert!(!receiver.wait_for(|r| r.len() > 1, Duration::from_millis(50)));
    drop(waiter.join().unwrap());
}
