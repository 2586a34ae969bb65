//! Requests to the application's backend: the secret that signs every one
//! (`backend_secret`), the webhooks that carry presence and occupancy
//! events (`webhook_urls` and their timers), how long the subscribe proxy's
//! backend has to answer (`subscribe_proxy_timeout`), and [`backend_url`],
//! the check every backend URL passes (the namespaces' `subscribe_proxy`
//! too).
//!
//! Webhooks need the secret (the backend must be able to tell their requests
//! from forged ones) and cluster mode (their events are queued in Redis).

use std::time::Duration;

use crate::config::env::{check_duration, env_duration, env_list, env_str, ConfigError, Env, Key};

/// Backend secrets (webhooks, subscribe proxy) shorter than this are refused.
pub const MIN_SECRET_BYTES: usize = 32;
pub const DEFAULT_WEBHOOK_GRACE: Duration = Duration::from_secs(5);
pub const DEFAULT_WEBHOOK_MAX_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_WEBHOOK_BATCH_WINDOW: Duration = Duration::from_millis(50);
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SUBSCRIBE_PROXY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) const BACKEND_SECRET: Key = Key::new("backend_secret", "SWITCHBOARD_BACKEND_SECRET");
const WEBHOOK_URLS: Key = Key::new("webhook_urls", "SWITCHBOARD_WEBHOOK_URLS");
const WEBHOOK_GRACE: Key = Key::new("webhook_grace", "SWITCHBOARD_WEBHOOK_GRACE");
const WEBHOOK_MAX_AGE: Key = Key::new("webhook_max_age", "SWITCHBOARD_WEBHOOK_MAX_AGE");
const WEBHOOK_BATCH_WINDOW: Key =
    Key::new("webhook_batch_window", "SWITCHBOARD_WEBHOOK_BATCH_WINDOW");
const WEBHOOK_TIMEOUT: Key = Key::new("webhook_timeout", "SWITCHBOARD_WEBHOOK_TIMEOUT");
const SUBSCRIBE_PROXY_TIMEOUT: Key = Key::new(
    "subscribe_proxy_timeout",
    "SWITCHBOARD_SUBSCRIBE_PROXY_TIMEOUT",
);

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

/// The file's webhook settings.
pub(super) struct FileWebhooks {
    pub(super) urls: Option<Vec<String>>,
    pub(super) grace: Option<Duration>,
    pub(super) max_age: Option<Duration>,
    pub(super) batch_window: Option<Duration>,
    pub(super) timeout: Option<Duration>,
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

/// The secret that signs requests to the backend, if set.
pub(super) fn backend_secret(
    env: &dyn Env,
    from_file: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let backend_secret = env_str(env, &BACKEND_SECRET).or(from_file);
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
    Ok(backend_secret)
}

/// The webhook settings, when URLs are configured.
pub(super) fn webhook_config(
    env: &dyn Env,
    file: FileWebhooks,
    cluster: bool,
    has_secret: bool,
) -> Result<Option<WebhookConfig>, ConfigError> {
    let urls = env_list(env, &WEBHOOK_URLS).unwrap_or_else(|| file.urls.unwrap_or_default());
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

/// How long the subscribe proxy's backend has to answer.
pub(super) fn subscribe_proxy_timeout(
    env: &dyn Env,
    from_file: Option<Duration>,
) -> Result<Duration, ConfigError> {
    check_duration(
        &SUBSCRIBE_PROXY_TIMEOUT,
        env_duration(env, &SUBSCRIBE_PROXY_TIMEOUT)?
            .or(from_file)
            .unwrap_or(DEFAULT_SUBSCRIBE_PROXY_TIMEOUT),
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
}
