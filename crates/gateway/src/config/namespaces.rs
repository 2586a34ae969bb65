//! What each namespace (the part of a channel before the first `:`)
//! enables: presence, join/leave frames, history and the subscribe proxy
//! (`[namespaces.<name>]`), with the settings of every namespace the file
//! does not list, and the bounds of history.
//!
//! Namespaces are only in the file: their names are free-form, so no
//! environment variable could name them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::backend::{backend_url, BACKEND_SECRET};
use crate::config::env::ConfigError;

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
    /// Its channels' messages are sent compressed to connections that
    /// negotiated permessage-deflate (`session.deflate` on the node).
    pub deflate: bool,
}

/// A `[namespaces.<name>]` table as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileNamespace {
    #[serde(default = "yes")]
    presence: bool,
    #[serde(default)]
    join_leave: bool,
    #[serde(default = "default_history_size")]
    history_size: usize,
    #[serde(default = "default_history_ttl", with = "humantime_serde")]
    history_ttl: Duration,
    subscribe_proxy: Option<String>,
    #[serde(default)]
    deflate: bool,
}

/// The settings of every namespace not listed in the file.
pub(super) static DEFAULT_NAMESPACE: NamespaceConfig = NamespaceConfig {
    presence: true,
    join_leave: false,
    history_size: DEFAULT_HISTORY_SIZE,
    history_ttl: DEFAULT_HISTORY_TTL,
    subscribe_proxy: None,
    deflate: false,
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

/// The namespaces the file lists, checked: names without `:` or `*`, then
/// each one's presence and history settings, then each subscribe proxy (which
/// needs the backend secret to sign its requests).
pub(super) fn namespace_configs(
    file: BTreeMap<String, FileNamespace>,
    has_secret: bool,
) -> Result<BTreeMap<String, NamespaceConfig>, ConfigError> {
    for name in file.keys() {
        if name.contains(':') || name.contains('*') {
            return Err(ConfigError::new(
                format!("namespaces.{name}"),
                "a namespace is the part of a channel before the first ':'",
            ));
        }
    }
    for (name, ns) in &file {
        check_namespace(name, ns)?;
    }
    let mut namespaces = BTreeMap::new();
    for (name, ns) in file {
        let subscribe_proxy = match ns.subscribe_proxy {
            None => None,
            Some(text) => Some(proxy_url(&name, &text, has_secret)?),
        };
        namespaces.insert(
            name,
            NamespaceConfig {
                presence: ns.presence,
                join_leave: ns.join_leave,
                history_size: ns.history_size,
                history_ttl: ns.history_ttl,
                subscribe_proxy,
                deflate: ns.deflate,
            },
        );
    }
    Ok(namespaces)
}

/// One namespace's presence and history settings.
fn check_namespace(name: &str, ns: &FileNamespace) -> Result<(), ConfigError> {
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
    Ok(())
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
