//! Who may connect and call: the keys clients' JWTs are verified with
//! (`[jwt]`: an HS256 secret or a PEM public key, audience, issuer, leeway)
//! and the bearer key of the server API (`api_key`).
//!
//! A token is never accepted unverified, so a node without a JWT key does
//! not start; short secrets and keys are refused because they can be
//! guessed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::env::{check_duration, env_duration, env_str, ConfigError, Env, Key};

pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(5);
/// HS256 secrets shorter than this are refused: they can be brute-forced.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Server API keys shorter than this are refused.
pub const MIN_API_KEY_BYTES: usize = 16;

const API_KEY: Key = Key::new("api_key", "SWITCHBOARD_API_KEY");
const JWT_HS256_SECRET: Key = Key::new("jwt.hs256_secret", "SWITCHBOARD_JWT_HS256_SECRET");
const JWT_PUBLIC_KEY_FILE: Key = Key::new("jwt.public_key_file", "SWITCHBOARD_JWT_PUBLIC_KEY_FILE");
const JWT_AUDIENCE: Key = Key::new("jwt.audience", "SWITCHBOARD_JWT_AUDIENCE");
const JWT_ISSUER: Key = Key::new("jwt.issuer", "SWITCHBOARD_JWT_ISSUER");
const JWT_LEEWAY: Key = Key::new("jwt.leeway", "SWITCHBOARD_JWT_LEEWAY");

/// JWT verification settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub hs256_secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway: Duration,
}

/// The `[jwt]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileJwt {
    hs256_secret: Option<String>,
    public_key_file: Option<PathBuf>,
    audience: Option<String>,
    issuer: Option<String>,
    #[serde(default, with = "humantime_serde")]
    leeway: Option<Duration>,
}

/// The JWT settings: at least one key, a long enough secret, a bounded
/// leeway.
pub(super) fn jwt_config(env: &dyn Env, file: FileJwt) -> Result<JwtConfig, ConfigError> {
    let jwt = JwtConfig {
        hs256_secret: env_str(env, &JWT_HS256_SECRET).or(file.hs256_secret),
        public_key_file: env_str(env, &JWT_PUBLIC_KEY_FILE)
            .map(PathBuf::from)
            .or(file.public_key_file),
        audience: env_str(env, &JWT_AUDIENCE).or(file.audience),
        issuer: env_str(env, &JWT_ISSUER).or(file.issuer),
        leeway: env_duration(env, &JWT_LEEWAY)?
            .or(file.leeway)
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
    Ok(jwt)
}

/// The server API's key, if set (the API is closed without it).
pub(super) fn api_key(
    env: &dyn Env,
    from_file: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let api_key = env_str(env, &API_KEY).or(from_file);
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
    Ok(api_key)
}
