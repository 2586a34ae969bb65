//! The node's own settings: where it listens (`listen`, and `/metrics` on
//! `metrics_listen`), its id in the cluster (`node_id`), its log format, how
//! it shuts down (`shutdown_grace`, `drain_window`) and the development-only
//! demo page (`demo_dir`).
//!
//! Each is read from the environment, else the file, else its default, and
//! checked here so a bad value stops the start naming its key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::env::{check_duration, env_duration, env_str, ConfigError, Env, Key};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(5);

const LISTEN: Key = Key::new("listen", "SWITCHBOARD_LISTEN");
const METRICS_LISTEN: Key = Key::new("metrics_listen", "SWITCHBOARD_METRICS_LISTEN");
const NODE_ID: Key = Key::new("node_id", "SWITCHBOARD_NODE_ID");
const LOG_FORMAT: Key = Key::new("log_format", "SWITCHBOARD_LOG_FORMAT");
const SHUTDOWN_GRACE: Key = Key::new("shutdown_grace", "SWITCHBOARD_SHUTDOWN_GRACE");
const DRAIN_WINDOW: Key = Key::new("drain_window", "SWITCHBOARD_DRAIN_WINDOW");
const DEMO_DIR: Key = Key::new("demo_dir", "SWITCHBOARD_DEMO_DIR");

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

/// The address the node serves WebSockets, the API and `/metrics` on.
pub(super) fn listen(env: &dyn Env, from_file: Option<String>) -> Result<SocketAddr, ConfigError> {
    let text = env_str(env, &LISTEN)
        .or(from_file)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    text.trim().parse().map_err(|_| {
        ConfigError::new(
            LISTEN.name(),
            format!("{text:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

/// The second listener's address, if set: never the port of `listen`.
pub(super) fn metrics_listen(
    env: &dyn Env,
    from_file: Option<String>,
    listen: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = env_str(env, &METRICS_LISTEN).or(from_file) else {
        return Ok(None);
    };
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
    Ok(Some(addr))
}

/// The node's id: configured, or one unique to this process.
pub(super) fn node_id(env: &dyn Env, from_file: Option<String>) -> Result<String, ConfigError> {
    let node_id = env_str(env, &NODE_ID)
        .or(from_file)
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
    Ok(node_id)
}

/// A node id unique to this process when none is configured.
fn generated_node_id() -> String {
    format!("node-{:08x}", rand::random::<u32>())
}

/// `text` (the default) or `json`.
pub(super) fn log_format(
    env: &dyn Env,
    from_file: Option<LogFormat>,
) -> Result<LogFormat, ConfigError> {
    match env_str(env, &LOG_FORMAT) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|m: String| ConfigError::new(LOG_FORMAT.env, format!("{v:?}: {m}"))),
        None => Ok(from_file.unwrap_or(LogFormat::Text)),
    }
}

/// How long sessions' last writes may take after the drain window.
pub(super) fn shutdown_grace(
    env: &dyn Env,
    from_file: Option<Duration>,
) -> Result<Duration, ConfigError> {
    let shutdown_grace = env_duration(env, &SHUTDOWN_GRACE)?
        .or(from_file)
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    check_duration(
        &SHUTDOWN_GRACE,
        shutdown_grace,
        Duration::ZERO,
        Duration::from_secs(3600),
    )
}

/// The window over which sessions are closed after SIGTERM.
pub(super) fn drain_window(
    env: &dyn Env,
    from_file: Option<Duration>,
) -> Result<Duration, ConfigError> {
    check_duration(
        &DRAIN_WINDOW,
        env_duration(env, &DRAIN_WINDOW)?
            .or(from_file)
            .unwrap_or(DEFAULT_DRAIN_WINDOW),
        Duration::ZERO,
        Duration::from_secs(3600),
    )
}

/// The SDK folder whose demo page is served, if set: it must hold the page
/// and the SDK it loads.
pub(super) fn demo_dir(
    env: &dyn Env,
    from_file: Option<PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    let demo_dir = env_str(env, &DEMO_DIR).map(PathBuf::from).or(from_file);
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
    Ok(demo_dir)
}
