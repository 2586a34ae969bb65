//! The `[admin]` section: whether the node serves the admin UI under
//! `/admin/`, the key operators log in with, and how long a login lasts.
//!
//! Off by default: an operator's console is an attack surface, so it
//! exists only where someone asked for it. The login key is `admin.secret`
//! or, without one, the server API's `api_key`; enabled with neither is a
//! start-up error rather than a console nobody can log in to (or anyone
//! can). The key signs the session cookies too (`http::admin::auth`), so
//! every node of a cluster with the same key accepts the same login.

use std::time::Duration;

use serde::Deserialize;

use crate::config::auth::MIN_API_KEY_BYTES;
use crate::config::env::{check_duration, env_duration, env_parse, env_str, ConfigError, Env, Key};

/// How long a login lasts unless configured.
pub const DEFAULT_ADMIN_SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// The shortest `admin.session_ttl`.
pub const MIN_ADMIN_SESSION_TTL: Duration = Duration::from_secs(60);
/// The longest `admin.session_ttl`.
pub const MAX_ADMIN_SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Admin secrets shorter than this are refused, as API keys are.
pub const MIN_ADMIN_SECRET_BYTES: usize = MIN_API_KEY_BYTES;

const ADMIN: Key = Key::new("admin.enabled", "SWITCHBOARD_ADMIN");
const ADMIN_SECRET: Key = Key::new("admin.secret", "SWITCHBOARD_ADMIN_SECRET");
const ADMIN_SESSION_TTL: Key = Key::new("admin.session_ttl", "SWITCHBOARD_ADMIN_SESSION_TTL");

/// The admin UI's settings, present only when it is enabled.
#[derive(Clone)]
pub struct AdminConfig {
    /// What operators log in with and what signs their cookies:
    /// `admin.secret`, or the `api_key`.
    pub key: String,
    /// How long a login lasts (the cookie's `Max-Age`, checked by the server).
    pub session_ttl: Duration,
}

/// The key is never printed, not even in a debug dump of the configuration.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("key", &"<redacted>")
            .field("session_ttl", &self.session_ttl)
            .finish()
    }
}

/// The `[admin]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    enabled: Option<bool>,
    secret: Option<String>,
    #[serde(default, with = "humantime_serde")]
    session_ttl: Option<Duration>,
}

/// The admin settings: `None` when the UI is off. The secret and the TTL
/// are checked even then, so a wrong value never waits for the day the UI
/// is switched on.
pub(super) fn admin_config(
    env: &dyn Env,
    file: FileAdmin,
    api_key: Option<&str>,
) -> Result<Option<AdminConfig>, ConfigError> {
    let enabled = env_parse::<bool>(env, &ADMIN, "true or false")?
        .or(file.enabled)
        .unwrap_or(false);
    let secret = env_str(env, &ADMIN_SECRET).or(file.secret);
    if let Some(secret) = &secret {
        if secret.len() < MIN_ADMIN_SECRET_BYTES {
            return Err(ConfigError::new(
                ADMIN_SECRET.name(),
                format!(
                    "the secret is {} bytes; use at least {MIN_ADMIN_SECRET_BYTES}",
                    secret.len()
                ),
            ));
        }
    }
    let session_ttl = env_duration(env, &ADMIN_SESSION_TTL)?
        .or(file.session_ttl)
        .unwrap_or(DEFAULT_ADMIN_SESSION_TTL);
    check_duration(
        &ADMIN_SESSION_TTL,
        session_ttl,
        MIN_ADMIN_SESSION_TTL,
        MAX_ADMIN_SESSION_TTL,
    )?;
    if !enabled {
        return Ok(None);
    }
    let key = secret
        .or_else(|| api_key.map(str::to_owned))
        .ok_or_else(|| {
            ConfigError::new(ADMIN.name(), "admin.enabled needs admin.secret or api_key")
        })?;
    Ok(Some(AdminConfig { key, session_ttl }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(text: &str) -> FileAdmin {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_unless_enabled() {
        let config = admin_config(
            &env(&[]),
            FileAdmin::default(),
            Some("k".repeat(16).as_str()),
        );
        assert!(config.unwrap().is_none());
    }

    #[test]
    fn the_secret_wins_over_the_api_key() {
        let api_key = "a".repeat(16);
        let config = admin_config(
            &env(&[("SWITCHBOARD_ADMIN", "true")]),
            parse("secret = \"0123456789abcdef\"\nsession_ttl = \"5m\""),
            Some(&api_key),
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.key, "0123456789abcdef");
        assert_eq!(config.session_ttl, Duration::from_secs(300));
        let config = admin_config(&env(&[]), parse("enabled = true"), Some(&api_key))
            .unwrap()
            .unwrap();
        assert_eq!(config.key, api_key, "the api_key logs in without a secret");
        assert_eq!(config.session_ttl, DEFAULT_ADMIN_SESSION_TTL);
        assert!(
            !format!("{config:?}").contains(&api_key),
            "the key is never printed"
        );
    }

    #[test]
    fn bad_values_stop_start_up() {
        let error = |pairs: &[(&str, &str)], api_key: Option<&str>| {
            admin_config(&env(pairs), FileAdmin::default(), api_key).unwrap_err()
        };
        let e = error(&[("SWITCHBOARD_ADMIN", "true")], None);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "SWITCHBOARD_ADMIN (admin.enabled)",
                "admin.enabled needs admin.secret or api_key"
            )
        );
        let e = error(&[("SWITCHBOARD_ADMIN", "yes")], None);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("SWITCHBOARD_ADMIN", "\"yes\" is not true or false")
        );
        let e = error(&[("SWITCHBOARD_ADMIN_SECRET", "short")], None);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "SWITCHBOARD_ADMIN_SECRET (admin.secret)",
                "the secret is 5 bytes; use at least 16"
            )
        );
        let e = error(&[("SWITCHBOARD_ADMIN_SESSION_TTL", "30s")], None);
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            (
                "SWITCHBOARD_ADMIN_SESSION_TTL (admin.session_ttl)",
                "30s is outside 1m..=12h"
            )
        );
        let e = error(&[("SWITCHBOARD_ADMIN_SESSION_TTL", "13h")], None);
        assert_eq!(e.message, "13h is outside 1m..=12h");
    }
}
