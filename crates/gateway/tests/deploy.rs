//! The deployment as operators run it: three gateway nodes on a real
//! redis-server behind a real NGINX configured from nginx/nginx.conf.in.
//! Clients connect through NGINX from different loopback source addresses;
//! the test checks ip_hash stickiness, cross-node delivery, a token-free
//! access log, /metrics kept private, TLS, and a SIGTERM drain after which
//! the node's clients reconnect through NGINX to the other nodes; and
//! server-sent event streams through the /sse location, their commands
//! (`POST /sse/command`) reaching the stream's node by client address. It also
//! validates the shipped files with the real tools: `nginx -t`,
//! `docker-compose config`, `kubernetes-validate --strict`, `promtool`.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/nginx.rs"]
mod nginx;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use nginx::*;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use switchboard_loadtest::sse;

/// How long a drained node may take to close its clients: the drain window
/// (1 s here) with jitter, plus a generous margin for a loaded machine.
const DRAIN_WAIT: Duration = Duration::from_secs(20);

/// A WebSocket client whose TCP connection leaves from a chosen loopback
/// source address, so NGINX's ip_hash sees different clients. (IPv4 ip_hash
/// uses the first three octets: 127.0.N.x for different N.)
struct Client {
    socket: WebSocketStream<TcpStream>,
    node_id: String,
    source: Ipv4Addr,
    next_id: u64,
}

/// What ended a client's connection.
#[derive(Debug, PartialEq)]
struct Closed(Option<u16>);

impl Client {
    async fn connect(source: Ipv4Addr, nginx: &Nginx, token: &str) -> Result<Client, String> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        let stream = socket
            .connect(nginx.http)
            .await
            .map_err(|e| format!("tcp connect from {source}: {e}"))?;
        let (socket, _) = tokio_tungstenite::client_async(nginx.ws_url(token), stream)
            .await
            .map_err(|e| format!("websocket handshake from {source}: {e}"))?;
        let mut client = Client {
            socket,
            node_id: String::new(),
            source,
            next_id: 1,
        };
        let welcome = client.next().await.map_err(|e| format!("{e:?}"))?;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.node_id = welcome["node_id"].as_str().unwrap().to_owned();
        Ok(client)
    }

    /// The next JSON frame, or how the connection ended.
    async fn next(&mut self) -> Result<Value, Closed> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(Closed(frame.map(|f| u16::from(f.code))))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Closed(None)),
            }
        }
    }

    /// Sends a command with an id and waits for its reply's `result`.
    async fn request(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let frame = self.next().await.unwrap();
            if frame["type"] == "reply" && frame["id"] == json!(id) {
                assert!(frame["error"].is_null(), "{command} failed: {frame}");
                return frame["result"].clone();
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.request(json!({"type": "subscribe", "channel": channel}))
            .await;
    }

    async fn publish(&mut self, channel: &str, data: Value) {
        self.request(json!({"type": "publish", "channel": channel, "data": data}))
            .await;
    }

    /// The next `message` push, skipping other frames.
    async fn message(&mut self) -> (String, Value) {
        loop {
            let frame = self.next().await.unwrap();
            if frame["type"] == "message" {
                return (
                    frame["channel"].as_str().unwrap().to_owned(),
                    frame["data"].clone(),
                );
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Err(Closed(code)) = self.next().await {
                return code;
            }
        }
    }

    async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.socket.close(Some(frame)).await;
        while let Some(Ok(_)) = self.socket.next().await {}
    }
}

/// 127.0.N.1: a client address that ip_hash tells apart from other N.
fn source(n: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, n, host)
}

async fn cluster_node_behind_proxy(redis: &Redis, node_id: &str) -> Gateway {
    let gateway = Gateway::builder()
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_NODE_ID", node_id)
        .env("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.1/32")
        .env("SWITCHBOARD_DRAIN_WINDOW", "1s")
        .start();
    wait_ready(&gateway, 200).await;
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_nginx_stick_deliver_and_drain() {
    let redis = Redis::start();
    let mut nodes = BTreeMap::new();
    for id in ["gw-1", "gw-2", "gw-3"] {
        nodes.insert(id, cluster_node_behind_proxy(&redis, id).await);
    }
    let addrs: Vec<SocketAddr> = nodes.values().map(|g| g.addr).collect();
    let nginx = Nginx::start(&addrs);
    let mut tokens = Vec::new();
    let mut connect = |n: u8, host: u8, user: String| {
        let token = token(&user);
        tokens.push(token.clone());
        let nginx = &nginx;
        async move {
            within(Client::connect(source(n, host), nginx, &token))
                .await
                .unwrap()
        }
    };

    // ip_hash spreads client addresses over all three nodes: keep the first
    // client that lands on each.
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    for n in 1..=60 {
        let client = connect(n, 1, format!("user-{n}")).await;
        if clients.contains_key(&client.node_id) {
            client.close().await;
        } else {
            clients.insert(client.node_id.clone(), client);
        }
        if clients.len() == 3 {
            break;
        }
    }
    let placement: Vec<_> = clients.iter().map(|(n, c)| (n, c.source)).collect();
    assert_eq!(clients.len(), 3, "clients reached only {placement:?}");

    // The gateways trust NGINX's X-Real-IP / X-Forwarded-For: a refusal is
    // logged with the real client address, not NGINX's.
    let refused = within(Client::connect(source(99, 7), &nginx, "not-a-jwt")).await;
    assert!(refused.is_err());
    let refusals = within(async {
        loop {
            let found: Vec<Value> = nodes
                .values()
                .flat_map(|g| g.logs())
                .filter(|l| l["message"] == "handshake refused")
                .collect();
            if !found.is_empty() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(refusals[0]["client"], "127.0.99.7", "{refusals:?}");

    // The same client address (same first three octets, another port or
    // host byte) lands on the same node every time.
    for (node_id, client) in &clients {
        let n = client.source.octets()[2];
        for host in [1, 2, 200] {
            let again = connect(n, host, format!("again-{n}-{host}")).await;
            assert_eq!(&again.node_id, node_id, "127.0.{n}.{host}");
            again.close().await;
        }
    }

    // A message published on one node reaches subscribers on every node.
    for client in clients.values_mut() {
        within(client.subscribe("news:deploy")).await;
    }
    within(
        clients
            .get_mut("gw-1")
            .unwrap()
            .publish("news:deploy", json!({"n": 1})),
    )
    .await;
    for (node_id, client) in &mut clients {
        let got = within(client.message()).await;
        assert_eq!(
            got,
            ("news:deploy".to_owned(), json!({"n": 1})),
            "{node_id}"
        );
    }

    // Through NGINX: /healthz is proxied, /metrics is not reachable at all.
    let (status, _, body) = http_get(nginx.http, "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    for path in ["/metrics", "/metrics?x=1", "//metrics", "/metrics/"] {
        let (status, _, _) = http_get(nginx.http, path, &[]).await;
        assert_eq!(status, 403, "{path} must be denied by nginx");
    }
    // TLS on the second listener, with the self-signed pair from gen-cert.sh.
    let tls = tls_get(nginx.https, &nginx.dir.path().join("tls.crt"), "/healthz");
    assert!(tls.starts_with("HTTP/1.1 200"), "{tls}");

    // Drain gw-2 with SIGTERM: its client gets 1012 and reconnects through
    // NGINX from the same address, landing on another node.
    let mut drained = nodes.remove("gw-2").unwrap();
    drained.signal("TERM");
    let mut moved = clients.remove("gw-2").unwrap();
    let code = tokio::time::timeout(DRAIN_WAIT, moved.closed())
        .await
        .expect("the drained node did not close its client");
    assert_eq!(code, Some(1012));
    let n = moved.source.octets()[2];
    let reconnect = async {
        // As a real client would: retry briefly if an attempt fails.
        let mut attempts = 0;
        loop {
            let token = token("moved");
            match Client::connect(source(n, 1), &nginx, &token).await {
                Ok(client) => break client,
                Err(error) if attempts < 5 => {
                    attempts += 1;
                    eprintln!("reconnect attempt {attempts} failed: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("no reconnect through nginx: {error}"),
            }
        }
    };
    let mut reconnected = tokio::time::timeout(WAIT, reconnect).await.expect(
        "reconnect through nginx hung: a draining node must refuse connections \
         (close its listener) or answer 503, so that nginx tries the next node",
    );
    assert_ne!(reconnected.node_id, "gw-2");
    within(reconnected.subscribe("news:deploy")).await;
    within(
        clients
            .get_mut("gw-3")
            .unwrap()
            .publish("news:deploy", json!({"n": 2})),
    )
    .await;
    assert_eq!(
        within(reconnected.message()).await,
        ("news:deploy".to_owned(), json!({"n": 2}))
    );
    for client in clients.values_mut() {
        assert_eq!(within(client.message()).await.1, json!({"n": 2}));
    }
    let status = drained.wait_exit(DRAIN_WAIT).await;
    assert!(status.success(), "drained node exited with {status}");

    // The same address keeps going to its new node while gw-2 is gone.
    let again = connect(n, 7, "again-moved".into()).await;
    assert_eq!(again.node_id, reconnected.node_id);
    again.close().await;

    // Every WebSocket is in the access log once it ends, without its token.
    reconnected.close().await;
    for (_, client) in std::mem::take(&mut clients) {
        client.close().await;
    }
    drop(moved);
    let expected = tokens.len() + 1;
    let log = within(async {
        loop {
            let log = nginx.access_log();
            if log.matches(r#""uri":"/ws""#).count() >= expected {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!log.contains("token="), "access log has a token:\n{log}");
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "access log has a token");
        // Nor any part of it (the signature alone is a secret too).
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "access log has a token signature");
    }
    // Each line is JSON and records the real client address.
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"));
        assert!(entry["client"].as_str().unwrap().starts_with("127.0."));
    }
    assert!(log.contains(r#""client":"127.0."#) && log.contains(r#""status":101"#));
    // Nor in the error log: at its `crit` level NGINX does not quote request lines.
    let errors = nginx.error_log();
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !errors.contains(signature),
            "error log has a token:\n{errors}"
        );
    }
}

/// `POST /sse/command` through NGINX from `source` for the stream
/// `connection`: (status, body).
async fn sse_command(
    source: Ipv4Addr,
    nginx: &Nginx,
    connection: &str,
    token: &str,
    command: &Value,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut stream = socket.connect(nginx.http).await.unwrap();
    let body = command.to_string();
    let request = format!(
        "POST /sse/command?connection={connection} HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, mut body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut decoded = String::new();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        loop {
            let (size, rest) = body.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                break;
            }
            decoded.push_str(&rest[..size]);
            body = &rest[size + 2..];
        }
    } else {
        decoded.push_str(body);
    }
    (status, decoded)
}

/// The next frame of `stream` whose `type` is `kind`.
async fn next_of(stream: &mut sse::Stream, kind: &str) -> Value {
    loop {
        let frame: Value = serde_json::from_str(&stream.next_data().await.unwrap()).unwrap();
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Event streams through NGINX (the /sse location): one lands on each of
/// three nodes; each publishes through `POST /sse/command` sent on another
/// connection from its own address, which ip_hash must send to the node
/// holding the stream (any other node answers 404); every stream receives
/// every message; and neither location logs a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_and_their_commands_go_through_nginx() {
    let redis = Redis::start();
    let mut nodes = BTreeMap::new();
    for id in ["gw-1", "gw-2", "gw-3"] {
        nodes.insert(id, cluster_node_behind_proxy(&redis, id).await);
    }
    let addrs: Vec<SocketAddr> = nodes.values().map(|g| g.addr).collect();
    let nginx = Nginx::start(&addrs);

    // (client address's third octet, connection id, token, stream) by node.
    let mut streams: BTreeMap<String, (u8, String, String, sse::Stream)> = BTreeMap::new();
    for n in 1..=60 {
        let token = token(&format!("sse-{n}"));
        let path = format!("/sse?channel=news%3Asse&token={token}");
        let mut stream = within(sse::connect(
            SocketAddr::from((source(n, 1), 0)),
            nginx.http,
            &path,
        ))
        .await
        .unwrap();
        let welcome = within(next_of(&mut stream, "welcome")).await;
        assert_eq!(welcome["transport"], "sse", "{welcome}");
        let subscribed = within(next_of(&mut stream, "subscription")).await;
        assert!(subscribed["error"].is_null(), "{subscribed}");
        let node = welcome["node_id"].as_str().unwrap().to_owned();
        let connection = welcome["connection_id"].as_str().unwrap().to_owned();
        streams
            .entry(node)
            .or_insert((n, connection, token, stream));
        if streams.len() == 3 {
            break;
        }
    }
    let placement: Vec<_> = streams.iter().map(|(node, s)| (node, s.0)).collect();
    assert_eq!(streams.len(), 3, "streams reached only {placement:?}");

    for (node, (n, connection, token, _)) in &streams {
        let command =
            json!({"type": "publish", "channel": "news:sse", "data": {"from": node}, "id": 1});
        let (status, body) = within(sse_command(
            source(*n, 2),
            &nginx,
            connection,
            token,
            &command,
        ))
        .await;
        assert_eq!(status, 200, "command for the stream on {node}: {body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["type"], "reply", "{reply}");
        assert_eq!(reply["id"], 1, "{reply}");
        assert!(reply["error"].is_null(), "{reply}");
    }
    for (node, (_, _, _, stream)) in &mut streams {
        let mut from = Vec::new();
        for _ in 0..3 {
            let message = within(next_of(stream, "message")).await;
            assert_eq!(message["channel"], "news:sse", "{message}");
            from.push(message["data"]["from"].as_str().unwrap().to_owned());
        }
        from.sort();
        assert_eq!(from, ["gw-1", "gw-2", "gw-3"], "the stream on {node}");
    }

    // Both locations are logged once each request ends, without a token.
    let tokens: Vec<String> = streams.values().map(|s| s.2.clone()).collect();
    drop(streams);
    let log = within(async {
        loop {
            let log = nginx.access_log();
            if log.matches(r#""uri":"/sse/command""#).count() >= 3
                && log.matches(r#""uri":"/sse""#).count() >= 3
            {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!log.contains("token="), "access log has a token:\n{log}");
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "access log has a token signature");
    }
}

/// GET over TLS to the NGINX front with `openssl s_client` (the tests'
/// WebSocket client is built without TLS), verifying the server's
/// certificate against `ca`; returns the raw response.
fn tls_get(addr: SocketAddr, ca: &std::path::Path, path: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(tool("openssl"))
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .arg("-connect")
        .arg(addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn shipped_nginx_conf_is_the_rendered_template() {
    let shipped = std::fs::read_to_string(repo_root().join("nginx/nginx.conf")).unwrap();
    assert!(
        render_config(&[]) == shipped,
        "nginx/nginx.conf differs from nginx/nginx.conf.in: run `scripts/nginx-conf.sh > nginx/nginx.conf`"
    );
}

/// `nginx -t` on the shipped file itself, with only its host paths, ports
/// and upstream names pointed into a temp dir (as a container mount would).
#[test]
fn shipped_nginx_conf_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().join("cache");
    std::fs::create_dir(&temp).unwrap();
    let (cert, key) = make_cert(dir.path());
    let mut text = std::fs::read_to_string(repo_root().join("nginx/nginx.conf")).unwrap();
    let upstream = format!("127.0.0.1:{}", free_port());
    let replacements = [
        ("/etc/nginx/certs/tls.crt", cert.display().to_string()),
        ("/etc/nginx/certs/tls.key", key.display().to_string()),
        (
            "/var/run/nginx.pid",
            dir.path().join("nginx.pid").display().to_string(),
        ),
        ("/var/cache/nginx", temp.display().to_string()),
        (
            "/dev/stdout",
            dir.path().join("access.log").display().to_string(),
        ),
        (
            "/dev/stderr",
            dir.path().join("error.log").display().to_string(),
        ),
        ("listen 80;", format!("listen 127.0.0.1:{};", free_port())),
        (
            "listen 443 ssl;",
            format!("listen 127.0.0.1:{} ssl;", free_port()),
        ),
        ("gw-1:8080", upstream.clone()),
        ("gw-2:8080", upstream.clone()),
        ("gw-3:8080", upstream),
    ];
    for (from, to) in &replacements {
        assert!(text.contains(from), "nginx/nginx.conf no longer has {from}");
        text = text.replace(from, to);
    }
    let config = dir.path().join("nginx.conf");
    std::fs::write(&config, text).unwrap();
    let output = nginx_test(dir.path(), &config);
    assert!(output.status.success(), "nginx -t: {}", printed(&output));
}

/// The base file alone, and with each Redis variant layered on top as
/// operators run them (`-f docker-compose.yml -f docker-compose.<variant>.yml`).
#[test]
fn docker_compose_file_is_valid() {
    let variants: [&[&str]; 3] = [
        &["docker-compose.yml"],
        &["docker-compose.yml", "docker-compose.sentinel.yml"],
        &["docker-compose.yml", "docker-compose.cluster.yml"],
    ];
    for files in variants {
        let mut command = Command::new(tool("docker-compose"));
        command.current_dir(repo_root());
        for file in files {
            assert!(repo_root().join(file).is_file(), "{file} is missing");
            command.args(["-f", file]);
        }
        let output = run(command.args(["config", "-q"]));
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "docker-compose {files:?} config: {}",
            printed(&output)
        );
    }
}

#[test]
fn kubernetes_manifests_are_valid() {
    let root = repo_root();
    let mut files = Vec::new();
    // The base manifests, the examples, and the Redis variants that replace
    // redis.yaml (each directory must hold at least one manifest).
    for dir in [
        "deploy/k8s",
        "deploy/k8s/examples",
        "deploy/k8s/redis-sentinel",
        "deploy/k8s/redis-cluster",
    ] {
        let before = files.len();
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
        assert!(files.len() > before, "no manifests in {dir}");
    }
    assert!(files.len() >= 13, "manifests: {files:?}");
    // The oldest Kubernetes release the manifests claim (autoscaling/v2 and
    // policy/v1 are GA since 1.23 and 1.21), and the tool's newest.
    for version in [Some("1.27.0"), None] {
        let mut command = Command::new(tool("kubernetes-validate"));
        command.arg("--strict");
        if let Some(version) = version {
            command.args(["--kubernetes-version", version]);
        }
        let output = run(command.args(&files));
        let text = printed(&output);
        assert!(
            output.status.success() && !text.contains("WARN") && !text.contains("ERROR"),
            "kubernetes-validate ({version:?}): {text}"
        );
    }
}

/// The Prometheus scrape config loads, with alerts.yml as written by the
/// metrics work (or an empty rule file until it exists).
#[test]
fn prometheus_config_is_valid() {
    let root = repo_root().join("deploy/prometheus");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .unwrap();
    let alerts = root.join("alerts.yml");
    if alerts.exists() {
        std::fs::copy(&alerts, dir.path().join("alerts.yml")).unwrap();
    } else {
        std::fs::write(dir.path().join("alerts.yml"), "groups: []\n").unwrap();
    }
    let output = run(Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(dir.path().join("prometheus.yml")));
    assert!(output.status.success(), "promtool: {}", printed(&output));
}
