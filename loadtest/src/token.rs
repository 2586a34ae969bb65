//! Tokens for load connections, signed with the gateway's HS256 secret in the
//! same claims shape as `switchboard token` (`sub`, `iat`, `exp`, `channels`,
//! `publish`), so the load tool needs no backend.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

/// Signs a token for `user` valid for a day, granting subscription to
/// `channels` and publishing to `publish` (patterns such as `bench:*`).
pub fn mint(
    secret: &str,
    user: &str,
    channels: &[&str],
    publish: &[&str],
) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = json!({
        "sub": user,
        "iat": now,
        "exp": now + 24 * 3600,
        "channels": channels,
        "publish": publish,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign token: {e}"))
}
