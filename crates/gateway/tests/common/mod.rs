//! Test fixtures: a real `switchboard` process on a free loopback port, and
//! tokens signed the way a backend would sign them.
//!
//! Each gateway runs with JSON logs on stderr; the fixture reads them to find
//! the bound address and keeps them so tests can assert what was logged.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use switchboard_client::{Connection, Welcome};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";
pub const WAIT: Duration = Duration::from_secs(5);

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for a user who may subscribe and publish anywhere, valid for an hour.
pub fn claims(user: &str) -> Value {
    json!({ "sub": user, "exp": now() + 3600, "channels": ["*"], "publish": ["*"] })
}

pub fn sign(claims: &Value) -> String {
    sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

pub fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

pub fn token(user: &str) -> String {
    sign(&claims(user))
}

/// How to start a gateway.
#[derive(Default)]
pub struct GatewayBuilder {
    env: HashMap<String, String>,
    toml: Option<String>,
}

impl GatewayBuilder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn toml(mut self, text: &str) -> Self {
        self.toml = Some(text.to_owned());
        self
    }

    /// Starts the process and waits for its "listening" log line.
    pub fn start(self) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .env_clear()
            .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_LOG_FORMAT", "json")
            .env("SWITCHBOARD_JWT_HS256_SECRET", SECRET)
            .env("SWITCHBOARD_SHUTDOWN_GRACE", "5s")
            // Close at once on SIGTERM unless a test is about the drain.
            .env("SWITCHBOARD_DRAIN_WINDOW", "0s")
            .env("RUST_LOG", "info,switchboard_gateway=debug")
            // Tests open many connections from one address in a burst; the
            // limits' own tests set these back to small values.
            .env("SWITCHBOARD_CONN_RATE_PER_IP", "100000")
            .env("SWITCHBOARD_CONN_BURST_PER_IP", "100000")
            .env("SWITCHBOARD_MSG_RATE", "100000")
            .env("SWITCHBOARD_MSG_BURST", "100000")
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(text) = &self.toml {
            let path = dir.path().join("switchboard.toml");
            std::fs::write(&path, text).unwrap();
            command.arg("--config").arg(path);
        }
        let mut child = command.spawn().expect("start switchboard");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    sink.lock().unwrap().push(json!({ "message": line }));
                    continue;
                };
                if entry["message"] == "listening" {
                    let _ = tx.send(entry["addr"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push(entry);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start; logs: {:?}", logs.lock().unwrap());
            }
        };
        Gateway {
            child,
            addr,
            logs,
            _dir: dir,
        }
    }
}

/// A running gateway process, killed when dropped.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    pub fn start() -> Gateway {
        GatewayBuilder::default().start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects as `user` with every grant and returns the welcome.
    pub async fn connect(&self, user: &str) -> (Connection, Welcome) {
        self.connect_token(&token(user)).await
    }

    pub async fn connect_token(&self, token: &str) -> (Connection, Welcome) {
        tokio::time::timeout(WAIT, Connection::connect(&self.ws_url(token)))
            .await
            .expect("connect timed out")
            .expect("connect")
    }

    /// Log entries so far.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log entry matches.
    pub async fn wait_log(&self, matches: impl Fn(&Value) -> bool) -> Value {
        self.wait_log_within(WAIT, matches).await
    }

    /// Waits up to `limit` until a log entry matches.
    pub async fn wait_log_within(
        &self,
        limit: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(entry) = self.logs().into_iter().find(|e| matches(e)) {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "no matching log entry in {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's resident memory now (`VmRSS` in /proc), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line
            .trim_start_matches("VmRSS:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET over a fresh TCP connection: (status, headers, body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    http_exchange(addr, "GET", path, headers, "").await
}

/// One HTTP/1.1 request over a fresh connection: (status, lower-case headers, body).
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading all of a body.
    let _ = stream.write_all(body.as_bytes()).await;
    let raw = within(async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return raw,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after the response counts as a close.
                Err(_) if !raw.is_empty() => return raw,
                Err(error) => panic!("no response: {error}"),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Runs a future with the standard time limit.
pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}

/// A real redis-server on a loopback port, in a temp dir, killed when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// An append-only file fsynced before every reply: what was acknowledged
    /// survives a SIGKILL.
    durable: bool,
}

/// A free port below Linux's ephemeral range (32768-60999), for a node a test
/// stops and starts again on the same address: a port the kernel hands out as
/// a source port could be taken by another test's outgoing connection while
/// the node is down, and the restart would fail with "address in use".
pub fn restartable_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        Redis::launch(false)
    }

    /// A Redis with `appendonly yes` and `appendfsync always`: restarted, it
    /// comes back with everything it acknowledged.
    pub fn start_durable() -> Redis {
        Redis::launch(true)
    }

    fn launch(durable: bool) -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            durable,
        };
        redis.restart();
        redis
    }

    /// Starts (again) on the same port: with an empty data set, or with what
    /// its append-only file holds when durable.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                if self.durable { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-test-deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL), like a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs redis-cli against this server and returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gateway in cluster mode on `redis`, waited on until ready.
pub async fn cluster_node(redis: &Redis, node_id: &str, toml: &str) -> Gateway {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", node_id)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .toml(toml)
        .start();
    wait_ready(&gateway, 200).await;
    gateway
}

pub const API_KEY: &str = "test-api-key-0123456789";

/// Polls /readyz until it answers `status`; returns its body.
pub async fn wait_ready(gateway: &Gateway, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, _, body) = http_get(gateway.addr, "/readyz", &[]).await;
        if got == status {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(Instant::now() < deadline, "/readyz stayed {got}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP request with an optional body over a fresh connection: (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, method, path, headers, body).await;
    (status, body)
}

/// Calls the server API with the test key.
pub async fn api(gateway: &Gateway, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http_request(
        gateway.addr,
        method,
        path,
        &[("Authorization", &auth)],
        body,
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Runs the switchboard binary with a config file (`toml`, possibly empty)
/// and the environment (plus the test JWT secret) and returns its exit code
/// and stderr: for the configurations that must stop start-up.
pub fn start_up_error(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, toml).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_clear()
        .env("SWITCHBOARD_JWT_HS256_SECRET", SECRET)
        .envs(env.iter().copied())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}
