//! Configuration: a TOML file (`--config`) overlaid by `SWITCHBOARD_*`
//! environment variables, validated once at start-up.
//!
//! Every value is read through [`Env`] so tests build configurations without
//! touching the process environment. A bad value is a [`ConfigError`] naming
//! the key (and its variable) so the operator knows exactly what to fix.
//!
//! One module per section, each with its keys, defaults, bounds and checks:
//! `node` (listeners, node id, logs, shutdown, demo page), `redis` (cluster
//! mode), `auth` (JWT keys, the server API key), `admin` (the admin UI's
//! switch, login key and session length), `backend` (the backend
//! secret, webhooks, the subscribe proxy's timeout), `origins`, `proxies`,
//! `limits`, `session` and `namespaces` (with history's bounds); `env` is
//! how one value is read and checked. `Config::build` reads the sections
//! in a fixed order, so when several values are wrong the same one is
//! reported first every time.
//!
//! Depends on nothing above it: only `crate::redis::target` (which parses
//! `redis_url` and depends on nothing in the crate).
//!
//! [`Env`]: env::Env
//! [`ConfigError`]: env::ConfigError

pub mod admin;
pub mod auth;
pub mod backend;
pub mod env;
pub mod limits;
pub mod namespaces;
pub mod node;
pub mod origins;
pub mod proxies;
pub mod redis;
pub mod session;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::admin::{AdminConfig, FileAdmin};
use crate::config::auth::{FileJwt, JwtConfig};
use crate::config::backend::{FileWebhooks, WebhookConfig};
use crate::config::env::{ConfigError, Env};
use crate::config::limits::{FileLimits, LimitsConfig};
use crate::config::namespaces::{FileNamespace, NamespaceConfig, DEFAULT_NAMESPACE};
use crate::config::node::LogFormat;
use crate::config::origins::AllowedOrigins;
use crate::config::proxies::TrustedProxies;
use crate::config::redis::FileRedis;
use crate::config::session::{FileSession, SessionConfig};
use crate::redis::target::Target;

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
    /// The admin UI under `/admin/`, when enabled (`None`: every `/admin`
    /// path is the ordinary 404).
    pub admin: Option<AdminConfig>,
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
    #[serde(default)]
    admin: FileAdmin,
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

    /// Reads and checks every section, in this order (the first wrong value
    /// found is the one reported).
    fn build(file: FileConfig, env: &dyn Env) -> Result<Config, ConfigError> {
        let listen = node::listen(env, file.listen)?;
        let metrics_listen = node::metrics_listen(env, file.metrics_listen, listen)?;
        let node_id = node::node_id(env, file.node_id)?;
        let redis = redis::redis_target(
            env,
            FileRedis {
                url: file.redis_url,
                ca_file: file.redis_ca_file,
                tls_cert_file: file.redis_tls_cert_file,
                tls_key_file: file.redis_tls_key_file,
            },
        )?;
        let api_key = auth::api_key(env, file.api_key)?;
        let backend_secret = backend::backend_secret(env, file.backend_secret)?;
        let webhooks = backend::webhook_config(
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
        let allowed_origins = origins::allowed_origins(env, file.allowed_origins)?;
        let max_connections = limits::max_connections(env, file.max_connections)?;
        let trusted_proxies = proxies::trusted_proxies(env, file.trusted_proxies)?;
        let limits = limits::limits_config(env, file.limits)?;
        let log_format = node::log_format(env, file.log_format)?;
        let shutdown_grace = node::shutdown_grace(env, file.shutdown_grace)?;
        let drain_window = node::drain_window(env, file.drain_window)?;
        let jwt = auth::jwt_config(env, file.jwt)?;
        let session = session::session_config(env, file.session)?;
        let namespaces = namespaces::namespace_configs(file.namespaces, backend_secret.is_some())?;
        let subscribe_proxy_timeout =
            backend::subscribe_proxy_timeout(env, file.subscribe_proxy_timeout)?;
        let demo_dir = node::demo_dir(env, file.demo_dir)?;
        let admin = admin::admin_config(env, file.admin, api_key.as_deref())?;

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
            admin,
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
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::config::env::ConfigError;
    use crate::config::namespaces::{HistoryPolicy, NamespaceConfig};
    use crate::config::node::DEFAULT_LISTEN;

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
        let e = error("", &[("SWITCHBOARD_DEFLATE", "maybe")]);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("SWITCHBOARD_DEFLATE", "\"maybe\" is not true or false")
        );
        let e = error("", &[("SWITCHBOARD_DEFLATE_THRESHOLD", "-1")]);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "SWITCHBOARD_DEFLATE_THRESHOLD",
                "\"-1\" is not a whole number of bytes"
            )
        );
        assert_eq!(
            error("[namespaces.chat]\ndeflate = \"yes\"", &[]).key,
            "--config"
        );
        let none = Config::from_toml("", &HashMap::new()).unwrap_err();
        assert!(none.message.starts_with("no JWT key configured"));
    }

    #[test]
    fn deflate_is_off_unless_the_node_and_a_namespace_opt_in() {
        let base = [(
            "SWITCHBOARD_JWT_HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        )];
        let config = Config::from_toml("", &env(&base)).unwrap();
        assert!(!config.session.deflate);
        assert_eq!(config.session.deflate_threshold, 256);
        assert!(!config.namespace("chat").deflate);
        let on = [
            base[0],
            ("SWITCHBOARD_DEFLATE", "true"),
            ("SWITCHBOARD_DEFLATE_THRESHOLD", "1024"),
        ];
        let config = Config::from_toml("[namespaces.docs]\ndeflate = true", &env(&on)).unwrap();
        assert!(config.session.deflate);
        assert_eq!(config.session.deflate_threshold, 1024);
        assert!(config.namespace("docs").deflate);
        assert!(!config.namespace("chat").deflate);
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
