//! A recording HTTP/1.1 receiver standing in for an application's backend
//! (webhooks, the subscribe proxy): a real hyper server on a free
//! 127.0.0.1 port, run by a current-thread tokio runtime on its own thread,
//! so sync and async tests use it alike.
//!
//! It records every request and answers as the test says, which the test
//! may change at any time: a fixed [`Answer`] with [`Receiver::set`], or
//! one chosen per request with [`Receiver::set_handler`]. Dropping it stops
//! the server and drops every open connection (a hanging answer included).
//!
//! A test includes it next to `common`:
//!
//! ```ignore
//! mod common;
//! #[path = "common/receiver.rs"]
//! mod receiver;
//! ```

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path with its query, if any.
    pub path: String,
    /// Header names in lower case; a repeated header keeps its last value.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// How the receiver answers a request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A status with an empty body.
    Status(u16),
    /// A status with a JSON body.
    Json(u16, Value),
    /// A status with a body sent as is (`application/json`, valid or not).
    Raw(u16, String),
    /// Waits, then answers.
    Delay(Duration, Box<Answer>),
    /// Never answers; the connection stays open until the client drops it
    /// or the receiver is dropped.
    Hang,
}

impl Answer {
    pub fn delay(wait: Duration, then: Answer) -> Answer {
        Answer::Delay(wait, Box::new(then))
    }
}

/// Chooses the answer for each request.
pub type Handler = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Request>>,
    arrived: Condvar,
    handler: Mutex<Handler>,
}

/// A running receiver; dropping it stops the server.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts on a free loopback port, answering `200` with an empty body.
    pub fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            handler: Mutex::new(Arc::new(|_: &Request| Answer::Status(200))),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(serve(listener, state, stopped));
                // Dropping the runtime drops every connection task.
            })
            .unwrap();
        Receiver {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers every request from now on with `answer`.
    pub fn set(&self, answer: Answer) {
        self.set_handler(Arc::new(move |_: &Request| answer.clone()));
    }

    /// Answers each request from now on with what `handler` returns for it.
    pub fn set_handler(&self, handler: Handler) {
        *self.shared.handler.lock().unwrap() = handler;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&self) {
        self.shared.requests.lock().unwrap().clear();
    }

    /// Blocks until `pred` holds for the requests so far, or `timeout`
    /// passes; returns whether it held. For sync tests.
    pub fn wait_for(&self, pred: impl Fn(&[Request]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut requests = self.shared.requests.lock().unwrap();
        loop {
            if pred(&requests) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            requests = self.shared.arrived.wait_timeout(requests, left).unwrap().0;
        }
    }

    /// [`Receiver::wait_for`] for async tests: polls without blocking the
    /// test's runtime.
    pub async fn until(&self, pred: impl Fn(&[Request]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.shared.requests.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    shared: &Shared,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let request = Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    let handler = Arc::clone(&shared.handler.lock().unwrap());
    let mut answer = handler(&request);
    shared.requests.lock().unwrap().push(request);
    shared.arrived.notify_all();
    loop {
        let (status, body) = match answer {
            Answer::Status(status) => (status, None),
            Answer::Json(status, value) => (status, Some(value.to_string())),
            Answer::Raw(status, text) => (status, Some(text)),
            Answer::Delay(wait, then) => {
                tokio::time::sleep(wait).await;
                answer = *then;
                continue;
            }
            Answer::Hang => std::future::pending().await,
        };
        let mut response = hyper::Response::builder().status(status);
        if body.is_some() {
            response = response.header("content-type", "application/json");
        }
        return response
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
    }
}
