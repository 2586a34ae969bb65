//! Cluster mode's settings: `redis_url` (one server, Sentinel or Redis
//! Cluster; parsed by [`Target::parse`]) and, for a TLS URL, the CA bundle
//! and client certificate files, read and checked here so that a wrong path
//! or a file that is not PEM stops the start naming its key rather than
//! failing the first connection.

use std::path::{Path, PathBuf};

use crate::config::env::{env_str, ConfigError, Env, Key};
use crate::redis::target::{Target, TlsFiles};

const REDIS_URL: Key = Key::new("redis_url", "SWITCHBOARD_REDIS_URL");
const REDIS_CA_FILE: Key = Key::new("redis_ca_file", "SWITCHBOARD_REDIS_CA_FILE");
const REDIS_TLS_CERT_FILE: Key = Key::new("redis_tls_cert_file", "SWITCHBOARD_REDIS_TLS_CERT_FILE");
const REDIS_TLS_KEY_FILE: Key = Key::new("redis_tls_key_file", "SWITCHBOARD_REDIS_TLS_KEY_FILE");

/// The file's Redis settings.
pub(super) struct FileRedis {
    pub(super) url: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
}

/// The Redis to use, with its TLS files read; `None` (a single in-memory
/// node) when no URL is set, in which case no TLS file may be either.
pub(super) fn redis_target(env: &dyn Env, file: FileRedis) -> Result<Option<Target>, ConfigError> {
    let url = env_str(env, &REDIS_URL)
        .or(file.url)
        .map(|u| u.trim().to_owned());
    let in_file = [
        file.ca_file.is_some(),
        file.tls_cert_file.is_some(),
        file.tls_key_file.is_some(),
    ];
    let Some(url) = url else {
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
        return Ok(None);
    };
    let target = Target::parse(&url).map_err(|e| ConfigError::new(REDIS_URL.name(), e))?;
    let files = [file.ca_file, file.tls_cert_file, file.tls_key_file];
    let tls = redis_tls_files(env, files, target.tls())?;
    Ok(Some(target.with_tls_files(tls)))
}

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
