//! Token verification: a JWT from the handshake or a `refresh` command
//! becomes [`Claims`] or an [`AuthError`] that says why, without leaking keys.
//!
//! The algorithm is chosen by the key the operator configured, never by the
//! token: HS256 needs the shared secret, RS256/ES256 the PEM public key, and
//! anything else (`none`, HS256 against a public key, ...) is refused.

pub mod dev_token;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_protocol::{ChannelError, PatternSet};
use thiserror::Error;

use crate::config::auth::JwtConfig;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("missing token: pass ?token= or Authorization: Bearer")]
    Missing,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("token claims are invalid: {0}")]
    InvalidClaims(String),
}

impl AuthError {
    /// A short stable reason for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLong => "too_long",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::AlgorithmNotAllowed => "algorithm",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "audience",
            AuthError::WrongIssuer => "issuer",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InvalidClaims(_) => "invalid_claims",
        }
    }
}

/// What a verified token grants.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The user id (`sub`).
    pub user: Arc<str>,
    /// Seconds since the epoch at which the token expires (`exp`).
    pub exp: u64,
    /// Channels the user may subscribe to (and read presence of); shared
    /// between tokens granting the same list.
    pub channels: Arc<PatternSet>,
    /// Channels the user may publish to; shared likewise.
    pub publish: Arc<PatternSet>,
    /// The `info` object shown in presence, as JSON text.
    pub info: Option<Arc<RawValue>>,
}

#[derive(Deserialize)]
struct TokenClaims {
    // Optional here so a missing one is reported by jsonwebtoken's
    // required-claim check ("lacks the required claim") not as a parse error.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Verifies tokens against the configured keys.
#[derive(Clone)]
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Duration,
    grants: Arc<Grants>,
}

/// Grant lists shared between the connections whose tokens list the same
/// patterns (typically every token of an application grants the same few),
/// so each session holds a pointer instead of its own parsed copy.
#[derive(Default)]
struct Grants(Mutex<HashMap<Vec<String>, Weak<PatternSet>>>);

/// Lists longer than this are parsed per token, not shared.
const SHARED_GRANT_MAX: usize = 16;

impl Grants {
    fn get(&self, list: &[String]) -> Result<Arc<PatternSet>, ChannelError> {
        if list.len() > SHARED_GRANT_MAX {
            return PatternSet::parse(list).map(Arc::new);
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = map.get(list).and_then(Weak::upgrade) {
            return Ok(set);
        }
        let set = Arc::new(PatternSet::parse(list)?);
        // Forget lists no session holds any more, once they pile up.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, set| set.strong_count() > 0);
        }
        map.insert(list.to_vec(), Arc::downgrade(&set));
        Ok(set)
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("public", &self.public.as_ref().map(|(_, alg)| alg))
            .finish_non_exhaustive()
    }
}

/// The `alg` a token's header names, if the header is readable JSON.
fn declared_algorithm(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

/// Reads an RSA or EC public key from a PEM file.
fn load_public_key(path: &Path) -> Result<(DecodingKey, Algorithm), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    Err(format!(
        "{} holds no RSA or EC (P-256) public key in PEM form",
        path.display()
    ))
}

impl TokenVerifier {
    /// Builds the verifier; the error names what is wrong with the key file.
    pub fn new(config: &JwtConfig) -> Result<TokenVerifier, String> {
        let public = config
            .public_key_file
            .as_deref()
            .map(load_public_key)
            .transpose()
            .map_err(|error| {
                format!("invalid configuration: SWITCHBOARD_JWT_PUBLIC_KEY_FILE (jwt.public_key_file): {error}")
            })?;
        Ok(TokenVerifier {
            hs256: config
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway,
            grants: Arc::default(),
        })
    }

    /// The leeway allowed on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verifies a token and reads its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| match declared_algorithm(token) {
                // A readable header naming an algorithm jsonwebtoken does not know
                // (`none`, `HS1`): say so rather than "malformed".
                Some(_) => AuthError::AlgorithmNotAllowed,
                None => AuthError::Malformed,
            })?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|(_, allowed)| *allowed == alg)
                .map(|(key, _)| key),
        }
        .ok_or(AuthError::AlgorithmNotAllowed)?;

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured audience or issuer must be present, not just match
        // when present: jsonwebtoken only checks claims it is told to require.
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);

        let data =
            jsonwebtoken::decode::<TokenClaims>(token, key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                    ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                    ErrorKind::MissingRequiredClaim(claim) => {
                        AuthError::MissingClaim(claim.clone())
                    }
                    ErrorKind::InvalidClaimFormat(claim) => {
                        AuthError::InvalidClaims(format!("{claim} has the wrong type"))
                    }
                    ErrorKind::Json(error) => AuthError::InvalidClaims(error.to_string()),
                    _ => AuthError::Malformed,
                }
            })?;
        let claims = data.claims;
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(AuthError::MissingClaim("sub".into()));
        };
        if sub.is_empty() || sub.len() > 256 {
            return Err(AuthError::InvalidClaims(
                "sub must be 1 to 256 bytes".into(),
            ));
        }
        let patterns = |name: &str, list: &[String]| {
            if list.len() > 1024 {
                return Err(AuthError::InvalidClaims(format!(
                    "{name} lists more than 1024 patterns"
                )));
            }
            self.grants
                .get(list)
                .map_err(|e: ChannelError| AuthError::InvalidClaims(format!("{name}: {e}")))
        };
        let info = match claims.info {
            None => None,
            Some(map) => {
                let text = serde_json::to_string(&map)
                    .map_err(|e| AuthError::InvalidClaims(e.to_string()))?;
                let raw = RawValue::from_string(text)
                    .map_err(|e| AuthError::InvalidClaims(e.to_string()))?;
                Some(Arc::from(raw))
            }
        };
        Ok(Claims {
            user: Arc::from(sub),
            exp,
            channels: patterns("channels", &claims.channels)?,
            publish: patterns("publish", &claims.publish)?,
            info,
        })
    }
}

impl Claims {
    /// How long until the session must close for expiry (`exp` plus leeway),
    /// measured against `now`.
    pub fn lifetime(&self, now: SystemTime, leeway: Duration) -> Duration {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        (Duration::from_secs(self.exp) + leeway).saturating_sub(now)
    }
}
