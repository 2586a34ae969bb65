//! Minting development tokens (`switchboard token`): `make run` prints one so
//! a newcomer can connect at once. Production tokens come from the
//! application's backend, signed with the same secret or private key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

/// The claims of a development token.
#[derive(Debug, Clone)]
pub struct DevToken {
    pub user: String,
    pub channels: Vec<String>,
    pub publish: Vec<String>,
    pub ttl: Duration,
    pub info: Option<Value>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Signs a token with an HS256 secret.
pub fn mint_hs256(secret: &str, token: &DevToken) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = json!({
        "sub": token.user,
        "iat": now,
        "exp": now + token.ttl.as_secs(),
        "channels": token.channels,
        "publish": token.publish,
    });
    if let Some(info) = &token.info {
        claims["info"] = info.clone();
    }
    if let Some(aud) = &token.audience {
        claims["aud"] = json!(aud);
    }
    if let Some(iss) = &token.issuer {
        claims["iss"] = json!(iss);
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign token: {e}"))
}
