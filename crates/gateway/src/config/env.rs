//! Reading one setting: where values come from besides the file ([`Env`]),
//! a setting's two names (`Key`: the file's key and its `SWITCHBOARD_*`
//! variable), parsing an environment value, the bounds checks, and the
//! [`ConfigError`] that stops start-up naming the key.
//!
//! Every section of `config` reads its values through these, so each error
//! names its key the same way: `SWITCHBOARD_X (x)` when a value is out of
//! bounds or refused, the variable alone when its text does not parse.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

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
    pub(super) fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// One setting's two names, for overlaying and for error messages.
pub(super) struct Key {
    /// The key in the file (`session.max_frame_bytes`).
    file: &'static str,
    /// The environment variable, which wins over the file.
    pub(super) env: &'static str,
}

impl Key {
    pub(super) const fn new(file: &'static str, env: &'static str) -> Key {
        Key { file, env }
    }

    /// Both names, as errors show them: `SWITCHBOARD_X (x)`.
    pub(super) fn name(&self) -> String {
        format!("{} ({})", self.env, self.file)
    }
}

/// Reads one variable, if set (an empty value counts as unset).
pub(super) fn env_str(env: &dyn Env, key: &Key) -> Option<String> {
    env.var(key.env).filter(|v| !v.trim().is_empty())
}

/// Reads a comma-separated list, if set; blank entries are dropped.
pub(super) fn env_list(env: &dyn Env, key: &Key) -> Option<Vec<String>> {
    env_str(env, key).map(|list| {
        list.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Parses one variable, if set; `what` says what was expected.
pub(super) fn env_parse<T: FromStr>(
    env: &dyn Env,
    key: &Key,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    env_str(env, key)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| ConfigError::new(key.env, format!("{v:?} is not {what}")))
        })
        .transpose()
}

/// Parses one variable as a duration like `25s`, if set.
pub(super) fn env_duration(env: &dyn Env, key: &Key) -> Result<Option<Duration>, ConfigError> {
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

/// `value` if it lies within `min..=max`.
pub(super) fn check_range<T: PartialOrd + std::fmt::Display>(
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

/// `value` if it lies within `min..=max`; the error writes the durations as
/// they are written in the file.
pub(super) fn check_duration(
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
