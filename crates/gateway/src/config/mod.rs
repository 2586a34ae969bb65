//! Configuration: a TOML file (`--config`) overlaid by `SWITCHBOARD_*`
//! environment variables, validated once at start-up.
//!
//! Every value is read through [`Env`] so tests build configurations without
//! touching the process environment. A bad value is a [`ConfigError`] naming
//! the key (and its variable) so the operator knows exactly what to fix.

pub mod origins;
pub mod proxies;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::redis::target::{Target, TlsFiles};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::config::origins::AllowedOrigins;
use crate::config::proxies::TrustedProxies;

/// Messages kept per channel unless the namespace says otherwise.
pub const DEFAULT_HISTORY_SIZE: usize = 100;
/// How long a channel's messages are kept after its last publish.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(120);
/// The largest `history_size` a namespace may set: a recovery replays at
/// most this many frames at once.
pub const MAX_HISTORY_SIZE: usize = 10_000;
/// How long a channel's position (top offset and epoch) outlives its last
/// publish. Longer than the messages' TTL, so a client that was away from an
/// idle channel resumes with `recovered: true` when it missed nothing,
/// instead of being told to reload because the channel was quiet.
pub const HISTORY_META_TTL: Duration = Duration::from_secs(24 * 3600);

/// A namespace's history settings; `size == 0` means no history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    pub size: usize,
    pub ttl: Duration,
}

impl HistoryPolicy {
    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

/// What one queued frame costs beyond its bytes: the queue slot and the
/// shared buffer's header, rounded up.
pub const QUEUE_ENTRY_OVERHEAD: usize = 64;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(5);
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_CHANNELS: usize = 128;
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 1 << 20;
/// A bound on what a `message` frame adds to its data: the type, the
/// longest channel name and an offset (see the test below).
pub const MESSAGE_ENVELOPE_BYTES: usize = 512;
pub const DEFAULT_CONN_RATE_PER_IP: u32 = 20;
pub const DEFAULT_CONN_BURST_PER_IP: u32 = 40;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 50;
pub const DEFAULT_MSG_RATE: u32 = 50;
pub const DEFAULT_MSG_BURST: u32 = 100;
pub const DEFAULT_MSG_CLOSE_AFTER: u32 = 50;
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// Chosen from measurements (docs/benchmarks.md, write coalescing).
pub const DEFAULT_WRITE_COALESCE: Duration = Duration::from_millis(10);
pub const DEFAULT_WEBHOOK_GRACE: Duration = Duration::from_secs(5);
pub const DEFAULT_WEBHOOK_MAX_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_WEBHOOK_BATCH_WINDOW: Duration = Duration::from_millis(50);
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SUBSCRIBE_PROXY_TIMEOUT: Duration = Duration::from_secs(2);
/// HS256 secrets shorter than this are refused: they can be brute-forced.
/// Backend secrets (webhooks, subscribe proxy) shorter than this are refused.
pub const MIN_SECRET_BYTES: usize = 32;
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Where configuration values come from besides the file.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// A value that stops start-up, named by its key.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected \"text\" or \"json\"".into()),
        }
    }
}

/// What a namespace (the part of a channel before the first `:`) enables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Connections subscribed to its channels are listed by `presence`.
    pub presence: bool,
    /// Subscribers get `join`/`leave` frames (needs `presence`).
    pub join_leave: bool,
    /// Messages kept per channel for recovery and `history`; 0 turns
    /// history (and offsets) off.
    pub history_size: usize,
    /// How long a channel's messages are kept after its last publish.
    pub history_ttl: Duration,
    /// The backend asked about a subscribe the token does not grant
    /// (`subscribe_proxy`); without it such a subscribe is refused.
    pub subscribe_proxy: Option<url::Url>,
}

/// A `[namespaces.<name>]` table as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNamespace {
    #[serde(default = "yes")]
    presence: bool,
    #[serde(default)]
    join_leave: bool,
    #[serde(default = "default_history_size")]
    history_size: usize,
    #[serde(default = "default_history_ttl", with = "humantime_serde")]
    history_ttl: Duration,
    subscribe_proxy: Option<String>,
}

/// The settings of every namespace not listed in the file.
static DEFAULT_NAMESPACE: NamespaceConfig = NamespaceConfig {
    presence: true,
    join_leave: false,
    history_size: DEFAULT_HISTORY_SIZE,
    history_ttl: DEFAULT_HISTORY_TTL,
    subscribe_proxy: None,
};

fn yes() -> bool {
    true
}

fn default_history_size() -> usize {
    DEFAULT_HISTORY_SIZE
}

fn default_history_ttl() -> Duration {
    DEFAULT_HISTORY_TTL
}

impl Default for NamespaceConfig {
    fn default() -> NamespaceConfig {
        DEFAULT_NAMESPACE.clone()
    }
}

impl NamespaceConfig {
    /// The namespace's history settings.
    pub fn history(&self) -> HistoryPolicy {
        HistoryPolicy {
            size: self.history_size,
            ttl: self.history_ttl,
        }
    }
}

/// The file's shape: every field optional so the environment can fill gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    node_id: Option<String>,
    redis_url: Option<String>,
    redis_ca_file: Option<PathBuf>,
    redis_tls_cert_file: Option<PathBuf>,
    redis_tls_key_file: Option<PathBuf>,
    api_key: Option<String>,
    backend_secret: Option<String>,
    webhook_urls: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    webhook_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    webhook_max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    webhook_batch_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    webhook_timeout: Option<Duration>,
    allowed_origins: Option<Vec<String>>,
    max_connections: Option<usize>,
    log_format: Option<LogFormat>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain_window: Option<Duration>,
    #[serde(default)]
    jwt: FileJwt,
    trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    session: FileSession,
    #[serde(default)]
    namespaces: BTreeMap<String, FileNamespace>,
    #[serde(default, with = "humantime_serde")]
    subscribe_proxy_timeout: Option<Duration>,
    demo_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJwt {
    hs256_secret: Option<String>,
    public_key_file: Option<PathBuf>,
    audience: Option<String>,
    issuer: Option<String>,
    #[serde(default, with = "humantime_serde")]
    leeway: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSession {
    max_frame_bytes: Option<usize>,
    max_channels: Option<usize>,
    send_queue_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    ping_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pong_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    write_coalesce: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    conn_rate_per_ip: Option<u32>,
    conn_burst_per_ip: Option<u32>,
    max_connections_per_ip: Option<usize>,
    max_connections_per_user: Option<usize>,
    msg_rate: Option<u32>,
    msg_burst: Option<u32>,
    msg_close_after: Option<u32>,
}

/// Admission and message-rate limits (docs/security.md explains each).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// New connections per second per client IP (token bucket refill).
    pub conn_rate_per_ip: u32,
    /// New connections a client IP may open at once (bucket size).
    pub conn_burst_per_ip: u32,
    /// Concurrent connections per client IP on this node.
    pub max_connections_per_ip: usize,
    /// Concurrent connections per user, counted over the whole cluster.
    pub max_connections_per_user: usize,
    /// Client frames per second per connection (bucket refill).
    pub msg_rate: u32,
    /// Client frames a connection may send at once (bucket size).
    pub msg_burst: u32,
    /// Rate-limited frames tolerated in a burst (refilling at `msg_rate`)
    /// before the connection is closed with 1008.
    pub msg_close_after: u32,
}

/// JWT verification settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub hs256_secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway: Duration,
}

/// Per-connection limits and timers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub max_frame_bytes: usize,
    pub max_channels: usize,
    /// Bytes of frames queued for one connection before it counts as a
    /// slow consumer and is closed with 1013.
    pub send_queue_bytes: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// A connection that wrote less than this long ago holds new frames
    /// until this long after that write, then writes them all at once
    /// (0: every frame is written as soon as it is queued).
    pub write_coalesce: Duration,
}

/// Where and how presence and occupancy events reach the backend
/// (`webhooks`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Every URL gets every event, each at its own pace.
    pub urls: Vec<url::Url>,
    /// A user, member or channel that comes back within this long after
    /// going away sends no offline/online pair.
    pub grace: Duration,
    /// Events not delivered after this long are dead-lettered.
    pub max_age: Duration,
    /// How long a batch waits for more events once one is ready.
    pub batch_window: Duration,
    /// How long one request to the backend may take.
    pub timeout: Duration,
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// A second listener serving only `/metrics` and `/healthz`, if set.
    pub metrics_listen: Option<SocketAddr>,
    pub node_id: String,
    /// Cluster mode when set (one Redis server, Sentinel or Redis Cluster,
    /// with its TLS files read); a single in-memory node when not.
    pub redis: Option<Target>,
    /// The bearer key of the server API (`/api/*`); the API is closed without it.
    pub api_key: Option<String>,
    /// Signs every request to the application's backend (webhooks, the
    /// subscribe proxy); see `backend`.
    pub backend_secret: Option<String>,
    /// Webhooks to the backend (cluster mode only), when URLs are set.
    pub webhooks: Option<WebhookConfig>,
    pub allowed_origins: AllowedOrigins,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` name the client.
    pub trusted_proxies: TrustedProxies,
    pub max_connections: usize,
    pub limits: LimitsConfig,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// After SIGTERM, sessions are closed with 1012 at random moments
    /// within this window, so their reconnects do not arrive as one herd.
    pub drain_window: Duration,
    pub jwt: JwtConfig,
    pub session: SessionConfig,
    /// How long the subscribe proxy's backend has to answer.
    pub subscribe_proxy_timeout: Duration,
    namespaces: BTreeMap<String, NamespaceConfig>,
    /// Development only: the SDK folder (`sdk/js`) whose demo page the node
    /// serves under `/demo/`. Unset (the default) in every production
    /// configuration: `/demo/` is then a 404.
    pub demo_dir: Option<PathBuf>,
}

/// One setting's two names, for overlaying and for error messages.
struct Key {
    file: &'static str,
    env: &'static str,
}

impl Key {
    fn name(&self) -> String {
        format!("{} ({})", self.env, self.file)
    }
}

macro_rules! key {
    ($file:literal, $env:literal) => {
        Key {
            file: $file,
            env: $env,
        }
    };
}

const LISTEN: Key = key!("listen", "SWITCHBOARD_LISTEN");
const METRICS_LISTEN: Key = key!("metrics_listen", "SWITCHBOARD_METRICS_LISTEN");
const NODE_ID: Key = key!("node_id", "SWITCHBOARD_NODE_ID");
const REDIS_URL: Key = key!("redis_url", "SWITCHBOARD_REDIS_URL");
const REDIS_CA_FILE: Key = key!("redis_ca_file", "SWITCHBOARD_REDIS_CA_FILE");
const REDIS_TLS_CERT_FILE: Key = key!("redis_tls_cert_file", "SWITCHBOARD_REDIS_TLS_CERT_FILE");
const REDIS_TLS_KEY_FILE: Key = key!("redis_tls_key_file", "SWITCHBOARD_REDIS_TLS_KEY_FILE");
const API_KEY: Key = key!("api_key", "SWITCHBOARD_API_KEY");
const BACKEND_SECRET: Key = key!("backend_secret", "SWITCHBOARD_BACKEND_SECRET");
const WEBHOOK_URLS: Key = key!("webhook_urls", "SWITCHBOARD_WEBHOOK_URLS");
const WEBHOOK_GRACE: Key = key!("webhook_grace", "SWITCHBOARD_WEBHOOK_GRACE");
const WEBHOOK_MAX_AGE: Key = key!("webhook_max_age", "SWITCHBOARD_WEBHOOK_MAX_AGE");
const WEBHOOK_BATCH_WINDOW: Key = key!("webhook_batch_window", "SWITCHBOARD_WEBHOOK_BATCH_WINDOW");
const WEBHOOK_TIMEOUT: Key = key!("webhook_timeout", "SWITCHBOARD_WEBHOOK_TIMEOUT");
/// Server API keys shorter than this are refused.
pub const MIN_API_KEY_BYTES: usize = 16;
const ALLOWED_ORIGINS: Key = key!("allowed_origins", "SWITCHBOARD_ALLOWED_ORIGINS");
const MAX_CONNECTIONS: Key = key!("max_connections", "SWITCHBOARD_MAX_CONNECTIONS");
const LOG_FORMAT: Key = key!("log_format", "SWITCHBOARD_LOG_FORMAT");
const SHUTDOWN_GRACE: Key = key!("shutdown_grace", "SWITCHBOARD_SHUTDOWN_GRACE");
const DRAIN_WINDOW: Key = key!("drain_window", "SWITCHBOARD_DRAIN_WINDOW");
const JWT_HS256_SECRET: Key = key!("jwt.hs256_secret", "SWITCHBOARD_JWT_HS256_SECRET");
const JWT_PUBLIC_KEY_FILE: Key = key!("jwt.public_key_file", "SWITCHBOARD_JWT_PUBLIC_KEY_FILE");
const JWT_AUDIENCE: Key = key!("jwt.audience", "SWITCHBOARD_JWT_AUDIENCE");
const JWT_ISSUER: Key = key!("jwt.issuer", "SWITCHBOARD_JWT_ISSUER");
const JWT_LEEWAY: Key = key!("jwt.leeway", "SWITCHBOARD_JWT_LEEWAY");
const MAX_FRAME_BYTES: Key = key!("session.max_frame_bytes", "SWITCHBOARD_MAX_FRAME_BYTES");
const MAX_CHANNELS: Key = key!("session.max_channels", "SWITCHBOARD_MAX_CHANNELS");
const SEND_QUEUE_BYTES: Key = key!("session.send_queue_bytes", "SWITCHBOARD_SEND_QUEUE_BYTES");
const TRUSTED_PROXIES: Key = key!("trusted_proxies", "SWITCHBOARD_TRUSTED_PROXIES");
const CONN_RATE_PER_IP: Key = key!("limits.conn_rate_per_ip", "SWITCHBOARD_CONN_RATE_PER_IP");
const CONN_BURST_PER_IP: Key = key!("limits.conn_burst_per_ip", "SWITCHBOARD_CONN_BURST_PER_IP");
const MAX_CONNECTIONS_PER_IP: Key = key!(
    "limits.max_connections_per_ip",
    "SWITCHBOARD_MAX_CONNECTIONS_PER_IP"
);
const MAX_CONNECTIONS_PER_USER: Key = key!(
    "limits.max_connections_per_user",
    "SWITCHBOARD_MAX_CONNECTIONS_PER_USER"
);
const MSG_RATE: Key = key!("limits.msg_rate", "SWITCHBOARD_MSG_RATE");
const MSG_BURST: Key = key!("limits.msg_burst", "SWITCHBOARD_MSG_BURST");
const MSG_CLOSE_AFTER: Key = key!("limits.msg_close_after", "SWITCHBOARD_MSG_CLOSE_AFTER");
const PING_INTERVAL: Key = key!("session.ping_interval", "SWITCHBOARD_PING_INTERVAL");
const PONG_TIMEOUT: Key = key!("session.pong_timeout", "SWITCHBOARD_PONG_TIMEOUT");
const WRITE_COALESCE: Key = key!("session.write_coalesce", "SWITCHBOARD_WRITE_COALESCE");
const DEMO_DIR: Key = key!("demo_dir", "SWITCHBOARD_DEMO_DIR");
const SUBSCRIBE_PROXY_TIMEOUT: Key = key!(
    "subscribe_proxy_timeout",
    "SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT"
);

/// Reads one variable, if set (an empty value counts as unset).
/// Reads the TLS files for Redis: a CA bundle and a client certificate and
/// key (both or neither), each a PEM file checked here, so a wrong path or
/// a file that is not PEM stops the start naming its key.
fn redis_tls_files(
    env: &dyn Env,
    [ca, cert, key]: [Option<PathBuf>; 3],
    tls: bool,
) -> Result<TlsFiles, ConfigError> {
    let path =
        |key: &Key, from_file: Option<PathBuf>| env_str(env, key).map(PathBuf::from).or(from_file);
    let ca = path(&REDIS_CA_FILE, ca);
    let cert = path(&REDIS_TLS_CERT_FILE, cert);
    let key = path(&REDIS_TLS_KEY_FILE, key);
    let read = |key: &Key, path: &Path, marker: &str| -> Result<Vec<u8>, ConfigError> {
        if !tls {
            return Err(ConfigError::new(
                key.name(),
                "set, but SWITCHBOARD_REDIS_URL (redis_url) does not use TLS (rediss://, rediss+sentinel:// or rediss+cluster://)",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::new(key.name(), format!("cannot read {}: {e}", path.display()))
        })?;
        if !String::from_utf8_lossy(&bytes).contains(marker) {
            return Err(ConfigError::new(
                key.name(),
                format!("{} is not a PEM file with a {marker}", path.display()),
            ));
        }
        Ok(bytes)
    };
    let ca = match &ca {
        Some(path) => Some(read(&REDIS_CA_FILE, path, "BEGIN CERTIFICATE")?),
        None => None,
    };
    let client = match (&cert, &key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((
            read(&REDIS_TLS_CERT_FILE, cert, "BEGIN CERTIFICATE")?,
            read(&REDIS_TLS_KEY_FILE, key, "PRIVATE KEY")?,
        )),
        (Some(_), None) => {
            return Err(ConfigError::new(
                REDIS_TLS_KEY_FILE.name(),
                "missing: a client certificate needs its key",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                REDIS_TLS_CERT_FILE.name(),
                "missing: a client key needs its certificate",
            ))
        }
    };
    Ok(TlsFiles { ca, client })
}

fn env_str(env: &dyn Env, key: &Key) -> Option<String> {
    env.var(key.env).filter(|v| !v.trim().is_empty())
}

fn env_parse<T: FromStr>(env: &dyn Env, key: &Key, what: &str) -> Result<Option<T>, ConfigError> {
    env_str(env, key)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| ConfigError::new(key.env, format!("{v:?} is not {what}")))
        })
        .transpose()
}

fn env_duration(env: &dyn Env, key: &Key) -> Result<Option<Duration>, ConfigError> {
    env_str(env, key)
        .map(|v| {
            humantime::parse_duration(v.trim()).map_err(|e| {
                ConfigError::new(
                    key.env,
                    format!("{v:?} is not a duration like \"25s\": {e}"),
                )
            })
        })
        .transpose()
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    key: &Key,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key.name(),
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(value)
}

fn check_duration(
    key: &Key,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key.name(),
            format!(
                "{} is outside {}..={}",
                humantime::format_duration(value),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(value)
}

/// Parses an `http://` or `https://` URL of the backend.
pub fn backend_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?} must be an http:// or https:// URL with a host"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("{text:?} has a #fragment, which is never sent"));
    }
    Ok(url)
}

/// A namespace's `subscribe_proxy`: an absolute http(s) URL, and a backend
/// secret to sign its requests with.
fn proxy_url(namespace: &str, text: &str, has_secret: bool) -> Result<url::Url, ConfigError> {
    let url = backend_url(text).map_err(|message| {
        ConfigError::new(format!("namespaces.{namespace}.subscribe_proxy"), message)
    })?;
    if !has_secret {
        return Err(ConfigError::new(
            BACKEND_SECRET.name(),
            format!(
                "namespaces.{namespace}.subscribe_proxy is set but no backend secret is: the subscribe proxy's requests are signed with it"
            ),
        ));
    }
    Ok(url)
}

/// The file's webhook settings.
struct FileWebhooks {
    urls: Option<Vec<String>>,
    grace: Option<Duration>,
    max_age: Option<Duration>,
    batch_window: Option<Duration>,
    timeout: Option<Duration>,
}

/// The webhook settings, when URLs are configured.
fn webhook_config(
    env: &dyn Env,
    file: FileWebhooks,
    cluster: bool,
    has_secret: bool,
) -> Result<Option<WebhookConfig>, ConfigError> {
    let urls: Vec<String> = match env_str(env, &WEBHOOK_URLS) {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        None => file.urls.unwrap_or_default(),
    };
    let duration = |key: &Key,
                    from_file: Option<Duration>,
                    default: Duration,
                    min: Duration,
                    max: Duration| {
        let value = env_duration(env, key)?.or(from_file).unwrap_or(default);
        check_duration(key, value, min, max)
    };
    let grace = duration(
        &WEBHOOK_GRACE,
        file.grace,
        DEFAULT_WEBHOOK_GRACE,
        Duration::ZERO,
        Duration::from_secs(600),
    )?;
    let max_age = duration(
        &WEBHOOK_MAX_AGE,
        file.max_age,
        DEFAULT_WEBHOOK_MAX_AGE,
        Duration::from_secs(1),
        Duration::from_secs(7 * 24 * 3600),
    )?;
    let batch_window = duration(
        &WEBHOOK_BATCH_WINDOW,
        file.batch_window,
        DEFAULT_WEBHOOK_BATCH_WINDOW,
        Duration::from_millis(10),
        Duration::from_secs(5),
    )?;
    let timeout = duration(
        &WEBHOOK_TIMEOUT,
        file.timeout,
        DEFAULT_WEBHOOK_TIMEOUT,
        Duration::from_millis(100),
        Duration::from_secs(60),
    )?;
    if urls.is_empty() {
        return Ok(None);
    }
    let urls = urls
        .iter()
        .map(|u| backend_url(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ConfigError::new(WEBHOOK_URLS.name(), message))?;
    if !has_secret {
        return Err(ConfigError::new(
            BACKEND_SECRET.name(),
            "missing: webhooks are signed with it (at least 32 random bytes, e.g. `openssl rand -hex 32`)",
        ));
    }
    if !cluster {
        return Err(ConfigError::new(
            WEBHOOK_URLS.name(),
            "webhooks need cluster mode: their events are queued in Redis so that a crash loses none; set SWITCHBOARD_REDIS_URL (redis_url)",
        ));
    }
    Ok(Some(WebhookConfig {
        urls,
        grace,
        max_age,
        batch_window,
        timeout,
    }))
}

/// A node id unique to this process when none is configured.
fn generated_node_id() -> String {
    format!("node-{:08x}", rand::random::<u32>())
}

impl Config {
    /// Loads the file (if any), overlays the environment and validates.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let file = match path {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
                })?;
                Config::parse_file(&text)?
            }
        };
        Config::build(file, env)
    }

    /// Builds from TOML text and the environment (for tests and `load`).
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        Config::build(Config::parse_file(text)?, env)
    }

    fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default();
            ConfigError::new("--config", format!("{}{at}", e.message()))
        })
    }

    fn build(file: FileConfig, env: &dyn Env) -> Result<Config, ConfigError> {
        let listen_text = env_str(env, &LISTEN)
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.trim().parse().map_err(|_| {
            ConfigError::new(
                LISTEN.name(),
                format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
            )
        })?;

        let metrics_listen = match env_str(env, &METRICS_LISTEN).or(file.metrics_listen) {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.trim().parse().map_err(|_| {
                    ConfigError::new(
                        METRICS_LISTEN.name(),
                        format!("{text:?} is not an address like 127.0.0.1:9090"),
                    )
                })?;
                if addr.port() != 0 && addr.port() == SocketAddr::port(&listen) {
                    return Err(ConfigError::new(
                        METRICS_LISTEN.name(),
                        format!("{addr} uses the port of listen ({listen}); /metrics is served there already, so leave metrics_listen unset or pick another port"),
                    ));
                }
                Some(addr)
            }
        };

        let node_id = env_str(env, &NODE_ID)
            .or(file.node_id)
            .unwrap_or_else(generated_node_id);
        if node_id.is_empty()
            || node_id.len() > 64
            || !node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::new(
                NODE_ID.name(),
                format!("{node_id:?} must be 1-64 letters, digits, '-', '_' or '.'"),
            ));
        }

        let redis_url = env_str(env, &REDIS_URL)
            .or(file.redis_url)
            .map(|u| u.trim().to_owned());
        let in_file = [
            file.redis_ca_file.is_some(),
            file.redis_tls_cert_file.is_some(),
            file.redis_tls_key_file.is_some(),
        ];
        let redis = match &redis_url {
            None => None,
            Some(url) => {
                let target =
                    Target::parse(url).map_err(|e| ConfigError::new(REDIS_URL.name(), e))?;
                let files = [
                    file.redis_ca_file,
                    file.redis_tls_cert_file,
                    file.redis_tls_key_file,
                ];
                let tls = redis_tls_files(env, files, target.tls())?;
                Some(target.with_tls_files(tls))
            }
        };
        if redis.is_none() {
            for (key, in_file) in [&REDIS_CA_FILE, &REDIS_TLS_CERT_FILE, &REDIS_TLS_KEY_FILE]
                .into_iter()
                .zip(in_file)
            {
                if in_file || env_str(env, key).is_some() {
                    return Err(ConfigError::new(
                        key.name(),
                        "set, but SWITCHBOARD_REDIS_URL (redis_url) is not",
                    ));
                }
            }
        }
        let api_key = env_str(env, &API_KEY).or(file.api_key);
        if let Some(key) = &api_key {
            if key.len() < MIN_API_KEY_BYTES {
                return Err(ConfigError::new(
                    API_KEY.name(),
                    format!(
                        "the key is {} bytes; use at least {MIN_API_KEY_BYTES}",
                        key.len()
                    ),
                ));
            }
        }

        let backend_secret = env_str(env, &BACKEND_SECRET).or(file.backend_secret);
        if let Some(secret) = &backend_secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::new(
                    BACKEND_SECRET.name(),
                    format!(
                        "the secret is {} bytes; use at least {MIN_SECRET_BYTES} (random, e.g. `openssl rand -hex 32`)",
                        secret.len()
                    ),
                ));
            }
        }

        let webhooks = webhook_config(
            env,
            FileWebhooks {
                urls: file.webhook_urls,
                grace: file.webhook_grace,
                max_age: file.webhook_max_age,
                batch_window: file.webhook_batch_window,
                timeout: file.webhook_timeout,
            },
            redis.is_some(),
            backend_secret.is_some(),
        )?;

        let origins: Vec<String> = match env_str(env, &ALLOWED_ORIGINS) {
            Some(list) => list
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            None => file.allowed_origins.unwrap_or_default(),
        };
        let allowed_origins = AllowedOrigins::parse(&origins)
            .map_err(|message| ConfigError::new(ALLOWED_ORIGINS.name(), message))?;

        let max_connections = env_parse(env, &MAX_CONNECTIONS, "a whole number")?
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_connections = check_range(&MAX_CONNECTIONS, max_connections, 1, 10_000_000)?;

        let proxies: Vec<String> = match env_str(env, &TRUSTED_PROXIES) {
            Some(list) => list
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            None => file.trusted_proxies.unwrap_or_default(),
        };
        let trusted_proxies = TrustedProxies::parse(&proxies)
            .map_err(|message| ConfigError::new(TRUSTED_PROXIES.name(), message))?;

        let file_limits = &file.limits;
        let rate = |key: &Key, file: Option<u32>, default: u32| {
            let value = env_parse(env, key, "a whole number")?
                .or(file)
                .unwrap_or(default);
            check_range(key, value, 1, 10_000_000)
        };
        let cap = |key: &Key, file: Option<usize>, default: usize| {
            let value = env_parse(env, key, "a whole number")?
                .or(file)
                .unwrap_or(default);
            check_range(key, value, 1, 10_000_000)
        };
        let limits = LimitsConfig {
            conn_rate_per_ip: rate(
                &CONN_RATE_PER_IP,
                file_limits.conn_rate_per_ip,
                DEFAULT_CONN_RATE_PER_IP,
            )?,
            conn_burst_per_ip: rate(
                &CONN_BURST_PER_IP,
                file_limits.conn_burst_per_ip,
                DEFAULT_CONN_BURST_PER_IP,
            )?,
            max_connections_per_ip: cap(
                &MAX_CONNECTIONS_PER_IP,
                file_limits.max_connections_per_ip,
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            )?,
            max_connections_per_user: cap(
                &MAX_CONNECTIONS_PER_USER,
                file_limits.max_connections_per_user,
                DEFAULT_MAX_CONNECTIONS_PER_USER,
            )?,
            msg_rate: rate(&MSG_RATE, file_limits.msg_rate, DEFAULT_MSG_RATE)?,
            msg_burst: rate(&MSG_BURST, file_limits.msg_burst, DEFAULT_MSG_BURST)?,
            msg_close_after: rate(
                &MSG_CLOSE_AFTER,
                file_limits.msg_close_after,
                DEFAULT_MSG_CLOSE_AFTER,
            )?,
        };

        let log_format = match env_str(env, &LOG_FORMAT) {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|m: String| ConfigError::new(LOG_FORMAT.env, format!("{v:?}: {m}")))?,
            None => file.log_format.unwrap_or(LogFormat::Text),
        };

        let shutdown_grace = env_duration(env, &SHUTDOWN_GRACE)?
            .or(file.shutdown_grace)
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        let shutdown_grace = check_duration(
            &SHUTDOWN_GRACE,
            shutdown_grace,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;

        let drain_window = check_duration(
            &DRAIN_WINDOW,
            env_duration(env, &DRAIN_WINDOW)?
                .or(file.drain_window)
                .unwrap_or(DEFAULT_DRAIN_WINDOW),
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;

        let jwt = JwtConfig {
            hs256_secret: env_str(env, &JWT_HS256_SECRET).or(file.jwt.hs256_secret),
            public_key_file: env_str(env, &JWT_PUBLIC_KEY_FILE)
                .map(PathBuf::from)
                .or(file.jwt.public_key_file),
            audience: env_str(env, &JWT_AUDIENCE).or(file.jwt.audience),
            issuer: env_str(env, &JWT_ISSUER).or(file.jwt.issuer),
            leeway: env_duration(env, &JWT_LEEWAY)?
                .or(file.jwt.leeway)
                .unwrap_or(DEFAULT_JWT_LEEWAY),
        };
        if jwt.hs256_secret.is_none() && jwt.public_key_file.is_none() {
            return Err(ConfigError::new(
                format!("{} / {}", JWT_HS256_SECRET.env, JWT_PUBLIC_KEY_FILE.env),
                "no JWT key configured: set an HS256 secret or a PEM public key file (tokens are never accepted unverified)",
            ));
        }
        if let Some(secret) = &jwt.hs256_secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(ConfigError::new(
                    JWT_HS256_SECRET.name(),
                    format!(
                        "the secret is {} bytes; use at least {MIN_HS256_SECRET_BYTES}",
                        secret.len()
                    ),
                ));
            }
        }
        check_duration(
            &JWT_LEEWAY,
            jwt.leeway,
            Duration::ZERO,
            Duration::from_secs(300),
        )?;

        let session = SessionConfig {
            max_frame_bytes: check_range(
                &MAX_FRAME_BYTES,
                env_parse(env, &MAX_FRAME_BYTES, "a whole number of bytes")?
                    .or(file.session.max_frame_bytes)
                    .unwrap_or(DEFAULT_MAX_FRAME_BYTES),
                256,
                16 << 20,
            )?,
            max_channels: check_range(
                &MAX_CHANNELS,
                env_parse(env, &MAX_CHANNELS, "a whole number")?
                    .or(file.session.max_channels)
                    .unwrap_or(DEFAULT_MAX_CHANNELS),
                1,
                100_000,
            )?,
            send_queue_bytes: check_range(
                &SEND_QUEUE_BYTES,
                env_parse(env, &SEND_QUEUE_BYTES, "a whole number of bytes")?
                    .or(file.session.send_queue_bytes)
                    .unwrap_or(DEFAULT_SEND_QUEUE_BYTES),
                4 * 1024,
                1 << 30,
            )?,
            ping_interval: check_duration(
                &PING_INTERVAL,
                env_duration(env, &PING_INTERVAL)?
                    .or(file.session.ping_interval)
                    .unwrap_or(DEFAULT_PING_INTERVAL),
                Duration::from_millis(50),
                Duration::from_secs(3600),
            )?,
            pong_timeout: check_duration(
                &PONG_TIMEOUT,
                env_duration(env, &PONG_TIMEOUT)?
                    .or(file.session.pong_timeout)
                    .unwrap_or(DEFAULT_PONG_TIMEOUT),
                Duration::from_millis(50),
                Duration::from_secs(3600),
            )?,
            write_coalesce: check_duration(
                &WRITE_COALESCE,
                env_duration(env, &WRITE_COALESCE)?
                    .or(file.session.write_coalesce)
                    .unwrap_or(DEFAULT_WRITE_COALESCE),
                Duration::ZERO,
                Duration::from_secs(1),
            )?,
        };

        // A frame that can never fit is dropped for every subscriber.
        let needed = session.max_frame_bytes + MESSAGE_ENVELOPE_BYTES + QUEUE_ENTRY_OVERHEAD;
        if session.send_queue_bytes < needed {
            return Err(ConfigError::new(
                SEND_QUEUE_BYTES.name(),
                format!(
                    "{} bytes cannot hold one maximum-size message: {} = {} bytes of data, plus {MESSAGE_ENVELOPE_BYTES} of message envelope and {QUEUE_ENTRY_OVERHEAD} of queue overhead, needs at least {needed}; raise the queue or lower the frame size",
                    session.send_queue_bytes,
                    MAX_FRAME_BYTES.name(),
                    session.max_frame_bytes,
                ),
            ));
        }

        for name in file.namespaces.keys() {
            if name.contains(':') || name.contains('*') {
                return Err(ConfigError::new(
                    format!("namespaces.{name}"),
                    "a namespace is the part of a channel before the first ':'",
                ));
            }
        }
        for (name, ns) in &file.namespaces {
            if ns.join_leave && !ns.presence {
                return Err(ConfigError::new(
                    format!("namespaces.{name}.join_leave"),
                    "join_leave needs presence = true",
                ));
            }
            if ns.history_size > MAX_HISTORY_SIZE {
                return Err(ConfigError::new(
                    format!("namespaces.{name}.history_size"),
                    format!(
                        "{} is outside 0..={MAX_HISTORY_SIZE} (0 turns history off)",
                        ns.history_size
                    ),
                ));
            }
            let (min, max) = (Duration::from_secs(1), HISTORY_META_TTL);
            if ns.history_ttl < min || ns.history_ttl > max {
                return Err(ConfigError::new(
                    format!("namespaces.{name}.history_ttl"),
                    format!(
                        "{} is outside {}..={}",
                        humantime::format_duration(ns.history_ttl),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }

        let mut namespaces = BTreeMap::new();
        for (name, ns) in file.namespaces {
            let subscribe_proxy = match ns.subscribe_proxy {
                None => None,
                Some(text) => Some(proxy_url(&name, &text, backend_secret.is_some())?),
            };
            namespaces.insert(
                name,
                NamespaceConfig {
                    presence: ns.presence,
                    join_leave: ns.join_leave,
                    history_size: ns.history_size,
                    history_ttl: ns.history_ttl,
                    subscribe_proxy,
                },
            );
        }
        let subscribe_proxy_timeout = check_duration(
            &SUBSCRIBE_PROXY_TIMEOUT,
            env_duration(env, &SUBSCRIBE_PROXY_TIMEOUT)?
                .or(file.subscribe_proxy_timeout)
                .unwrap_or(DEFAULT_SUBSCRIBE_PROXY_TIMEOUT),
            Duration::from_millis(50),
            Duration::from_secs(30),
        )?;

        let demo_dir = env_str(env, &DEMO_DIR).map(PathBuf::from).or(file.demo_dir);
        if let Some(dir) = &demo_dir {
            if !dir.join("demo/index.html").is_file() || !dir.join("src/switchboard.js").is_file() {
                return Err(ConfigError::new(
                    DEMO_DIR.name(),
                    format!(
                        "{} does not hold demo/index.html and src/switchboard.js (the SDK folder, sdk/js, is expected)",
                        dir.display()
                    ),
                ));
            }
        }

        Ok(Config {
            listen,
            metrics_listen,
            node_id,
            redis,
            api_key,
            backend_secret,
            webhooks,
            allowed_origins,
            trusted_proxies,
            max_connections,
            limits,
            log_format,
            shutdown_grace,
            drain_window,
            jwt,
            session,
            subscribe_proxy_timeout,
            namespaces,
            demo_dir,
        })
    }

    /// The settings of a channel's namespace (defaults when not listed).
    pub fn namespace(&self, namespace: &str) -> &NamespaceConfig {
        self.namespaces.get(namespace).unwrap_or(&DEFAULT_NAMESPACE)
    }

    /// Whether any namespace asks the backend about subscribes.
    pub fn has_subscribe_proxy(&self) -> bool {
        self.namespaces
            .values()
            .any(|ns| ns.subscribe_proxy.is_some())
    }

    /// The namespaces listed in `[namespaces.*]` (the metrics' namespace labels).
    pub fn namespace_names(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> HashMap<String, String> {
        env(&[("SWITCHBOARD_JWT_HS256_SECRET", SECRET)])
    }

    #[test]
    fn defaults_and_overlay() {
        let config = Config::from_toml("", &base()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.session.max_frame_bytes, 64 * 1024);
        assert_eq!(config.session.max_channels, 128);
        assert_eq!(config.session.ping_interval, Duration::from_secs(25));
        assert!(config.node_id.starts_with("node-"));

        let text = r#"
            listen = "127.0.0.1:9000"
            max_connections = 5
            [session]
            ping_interval = "2s"
            [namespaces.chat]
            join_leave = true
            [namespaces.quiet]
            history_size = 0
            [namespaces.feed]
            history_size = 500
            history_ttl = "10m"
        "#;
        let mut e = base();
        e.insert("SWITCHBOARD_MAX_CONNECTIONS".into(), "7".into());
        let config = Config::from_toml(text, &e).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(
            config.max_connections, 7,
            "the environment wins over the file"
        );
        assert_eq!(config.session.ping_interval, Duration::from_secs(2));
        assert_eq!(
            *config.namespace("chat"),
            NamespaceConfig {
                join_leave: true,
                ..NamespaceConfig::default()
            }
        );
        assert_eq!(*config.namespace("other"), NamespaceConfig::default());
        assert_eq!(
            config.namespace("other").history(),
            HistoryPolicy {
                size: 100,
                ttl: Duration::from_secs(120)
            },
            "history is on by default"
        );
        assert!(!config.namespace("quiet").history().enabled());
        assert_eq!(
            config.namespace("feed").history(),
            HistoryPolicy {
                size: 500,
                ttl: Duration::from_secs(600)
            }
        );
    }

    #[test]
    fn metrics_listener_is_optional() {
        let config = Config::from_toml("", &base()).unwrap();
        assert_eq!(config.metrics_listen, None, "off by default");
        let config = Config::from_toml("metrics_listen = \"127.0.0.1:9100\"", &base()).unwrap();
        assert_eq!(
            config.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9100")
        );
        let mut e = base();
        e.insert("SWITCHBOARD_METRICS_LISTEN".into(), " [::1]:9200 ".into());
        let config = Config::from_toml("metrics_listen = \"127.0.0.1:9100\"", &e).unwrap();
        assert_eq!(
            config.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("[::1]:9200"),
            "the environment wins over the file"
        );
        e.insert("SWITCHBOARD_LISTEN".into(), "127.0.0.1:0".into());
        e.insert("SWITCHBOARD_METRICS_LISTEN".into(), "127.0.0.1:0".into());
        assert!(
            Config::from_toml("", &e).is_ok(),
            "two ephemeral ports never clash"
        );
    }

    fn error(text: &str, pairs: &[(&str, &str)]) -> ConfigError {
        let mut e = base();
        e.extend(env(pairs));
        Config::from_toml(text, &e).unwrap_err()
    }

    #[test]
    fn a_send_queue_that_cannot_hold_one_message_is_refused() {
        let refused = error(
            "",
            &[
                ("SWITCHBOARD_SEND_QUEUE_BYTES", "8192"),
                ("SWITCHBOARD_MAX_FRAME_BYTES", "9000"),
            ],
        );
        assert_eq!(
            refused.to_string(),
            "invalid configuration: SWITCHBOARD_SEND_QUEUE_BYTES (session.send_queue_bytes): \
             8192 bytes cannot hold one maximum-size message: \
             SWITCHBOARD_MAX_FRAME_BYTES (session.max_frame_bytes) = 9000 bytes of data, \
             plus 512 of message envelope and 64 of queue overhead, needs at least 9576; \
             raise the queue or lower the frame size"
        );
        let fits = [
            ("SWITCHBOARD_SEND_QUEUE_BYTES", "9576"),
            ("SWITCHBOARD_MAX_FRAME_BYTES", "9000"),
        ];
        let mut pairs = base();
        pairs.extend(env(&fits));
        assert!(Config::from_toml("", &pairs).is_ok());
        // The defaults fit.
        assert!(Config::from_toml("", &base()).is_ok());
    }

    #[test]
    fn the_message_envelope_bound_holds() {
        use switchboard_protocol::channel::MAX_CHANNEL_LEN;
        use switchboard_protocol::ServerFrame;
        let channel = "c".repeat(MAX_CHANNEL_LEN);
        let data = serde_json::value::RawValue::from_string("0".into()).unwrap();
        let frame = ServerFrame::Message {
            channel: &channel,
            offset: Some(u64::MAX),
            data: &data,
        }
        .encode();
        assert!(frame.len() - 1 <= MESSAGE_ENVELOPE_BYTES, "{}", frame.len());
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            error("", &[("SWITCHBOARD_MAX_CONNECTIONS", "many")]).key,
            "SWITCHBOARD_MAX_CONNECTIONS"
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_MAX_CONNECTIONS", "0")]).key,
            "SWITCHBOARD_MAX_CONNECTIONS (max_connections)"
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_LISTEN", "nowhere")]).key,
            "SWITCHBOARD_LISTEN (listen)"
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_PING_INTERVAL", "soon")]).key,
            "SWITCHBOARD_PING_INTERVAL"
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_JWT_HS256_SECRET", "short")]).key,
            "SWITCHBOARD_JWT_HS256_SECRET (jwt.hs256_secret)"
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_ALLOWED_ORIGINS", "example.com")]).key,
            "SWITCHBOARD_ALLOWED_ORIGINS (allowed_origins)"
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_NODE_ID", "a b")]).key,
            "SWITCHBOARD_NODE_ID (node_id)"
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_LOG_FORMAT", "xml")]).key,
            "SWITCHBOARD_LOG_FORMAT"
        );
        let e = error("bogus = 1", &[]);
        assert_eq!(e.key, "--config");
        assert!(e.message.contains("bogus"), "{}", e.message);
        assert_eq!(
            error(
                "[namespaces.chat]\npresence = false\njoin_leave = true",
                &[]
            )
            .key,
            "namespaces.chat.join_leave"
        );
        let e = error("[namespaces.chat]\nhistory_size = 10001", &[]);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "namespaces.chat.history_size",
                "10001 is outside 0..=10000 (0 turns history off)"
            )
        );
        let e = error("[namespaces.chat]\nhistory_ttl = \"0s\"", &[]);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("namespaces.chat.history_ttl", "0s is outside 1s..=1day")
        );
        assert_eq!(
            error("[namespaces.chat]\nhistory_ttl = \"soon\"", &[]).key,
            "--config"
        );
        let e = error("", &[("SWITCHBOARD_DEMO_DIR", "/nonexistent")]);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "SWITCHBOARD_DEMO_DIR (demo_dir)",
                "/nonexistent does not hold demo/index.html and src/switchboard.js (the SDK folder, sdk/js, is expected)"
            )
        );
        assert_eq!(
            error("", &[("SWITCHBOARD_METRICS_LISTEN", "metrics")]).key,
            "SWITCHBOARD_METRICS_LISTEN (metrics_listen)"
        );
        assert_eq!(
            error(
                "listen = \"0.0.0.0:8080\"",
                &[("SWITCHBOARD_METRICS_LISTEN", "127.0.0.1:8080")]
            )
            .key,
            "SWITCHBOARD_METRICS_LISTEN (metrics_listen)"
        );
        let none = Config::from_toml("", &HashMap::new()).unwrap_err();
        assert!(none.message.starts_with("no JWT key configured"));
    }

    #[test]
    fn a_subscribe_proxy_needs_an_http_url_and_a_backend_secret() {
        let secret = [("SWITCHBOARD_BACKEND_SECRET", SECRET)];
        let mut e = base();
        e.extend(env(&secret));
        let config = Config::from_toml(
            "[namespaces.doc]\nsubscribe_proxy = \"https://app.example.com/switchboard/subscribe\"",
            &e,
        )
        .unwrap();
        assert_eq!(
            config
                .namespace("doc")
                .subscribe_proxy
                .as_ref()
                .map(url::Url::as_str),
            Some("https://app.example.com/switchboard/subscribe")
        );
        assert_eq!(config.namespace("other").subscribe_proxy, None);
        assert_eq!(config.subscribe_proxy_timeout, Duration::from_secs(2));

        let e = error("[namespaces.doc]\nsubscribe_proxy = \"not a url\"", &secret);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "namespaces.doc.subscribe_proxy",
                "\"not a url\" is not a URL: relative URL without a base"
            )
        );
        let e = error(
            "[namespaces.doc]\nsubscribe_proxy = \"ftp://app.example.com/x\"",
            &secret,
        );
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "namespaces.doc.subscribe_proxy",
                "\"ftp://app.example.com/x\" must be an http:// or https:// URL with a host"
            )
        );
        let e = error(
            "[namespaces.doc]\nsubscribe_proxy = \"http://127.0.0.1:9/x\"",
            &[],
        );
        assert_eq!(
            e.to_string(),
            "invalid configuration: SWITCHBOARD_BACKEND_SECRET (backend_secret): \
             namespaces.doc.subscribe_proxy is set but no backend secret is: \
             the subscribe proxy's requests are signed with it"
        );
    }

    #[test]
    fn the_subscribe_proxy_timeout_is_bounded() {
        let config = Config::from_toml("subscribe_proxy_timeout = \"300ms\"", &base()).unwrap();
        assert_eq!(config.subscribe_proxy_timeout, Duration::from_millis(300));
        let mut e = base();
        e.insert("SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT".into(), "5s".into());
        let config = Config::from_toml("subscribe_proxy_timeout = \"300ms\"", &e).unwrap();
        assert_eq!(
            config.subscribe_proxy_timeout,
            Duration::from_secs(5),
            "the environment wins over the file"
        );
        let e = error("", &[("SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT", "10ms")]);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT (subscribe_proxy_timeout)",
                "10ms is outside 50ms..=30s"
            )
        );
        let e = error("", &[("SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT", "1m")]);
        assert_eq!(e.message, "1m is outside 50ms..=30s");
        let e = error("", &[("SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT", "soon")]);
        assert_eq!(e.key, "SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT");
    }
}
