//! Subscribe authorization by the application's backend: a namespace with
//! `subscribe_proxy = "<url>"` lets a subscribe its token does not grant be
//! decided by the backend, so an application can authorize channels it
//! cannot list in a token (a document's collaborators, a game's players)
//! without reissuing tokens.
//!
//! The node POSTs `{"user", "channel", "connection_id", "info"}`, signed with
//! the backend secret (see [`crate::backend`]), and reads
//! `{"allow": true, "info"?, "ttl"?}` or `{"allow": false, "reason"?, "ttl"?}`
//! from a 200 answer. Anything else (another status, a body outside that
//! shape, a timeout, a refused connection) is an error, and the session
//! fails closed. Allow and deny answers with a `ttl` are cached per user and
//! channel on this node for that long (at most [`MAX_TTL`]); errors never
//! are. docs/protocol.md, "Subscribe authorization by the backend", is the
//! contract.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::backend;
use crate::metrics::subscribe_proxy::ProxyResult;
use crate::metrics::Metrics;

/// The longest a backend answer is cached, whatever `ttl` it names.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Cached answers per node; the least used go first beyond it.
pub const CACHE_ENTRIES: u64 = 100_000;
/// A larger answer body is refused as malformed.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// A longer deny `reason` is cut to this many characters.
pub const MAX_REASON_CHARS: usize = 200;

/// The backend's decision on one subscribe.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Subscribe; `info` (when the backend sent one) replaces the token's
    /// `info` in this subscription's presence entry and `join` frame.
    Allow { info: Option<Arc<RawValue>> },
    /// Refuse, with the backend's reason if it gave one.
    Deny { reason: Option<String> },
}

impl PartialEq for Decision {
    fn eq(&self, other: &Decision) -> bool {
        match (self, other) {
            (Decision::Allow { info: a }, Decision::Allow { info: b }) => {
                a.as_deref().map(RawValue::get) == b.as_deref().map(RawValue::get)
            }
            (Decision::Deny { reason: a }, Decision::Deny { reason: b }) => a == b,
            _ => false,
        }
    }
}

/// Why the backend gave no decision. `Display` is for logs (it names the
/// URL); [`ProxyError::client_message`] is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Timeout(String, Duration),
    #[error("{0}")]
    Unreachable(String),
    #[error("{url} answered with HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered with a body that is not the contract's: {problem}")]
    Malformed { url: String, problem: String },
}

impl ProxyError {
    /// The `unavailable` error's message: what failed, without the URL.
    pub fn client_message(&self) -> String {
        let why = match self {
            ProxyError::Timeout(_, timeout) => format!(
                "the backend did not answer within {} ms",
                timeout.as_millis()
            ),
            ProxyError::Unreachable(_) => "the backend could not be reached".to_owned(),
            ProxyError::Status { status, .. } => {
                format!("the backend answered with HTTP {status}")
            }
            ProxyError::Malformed { .. } => "the backend's answer is malformed".to_owned(),
        };
        format!("subscribe authorization unavailable: {why}")
    }
}

/// The request body.
#[derive(Serialize)]
struct Ask<'a> {
    user: &'a str,
    channel: &'a str,
    connection_id: &'a str,
    info: Option<&'a RawValue>,
}

/// The answer body (unknown fields are ignored).
#[derive(Deserialize)]
struct Reply {
    allow: bool,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
}

/// A cached decision and how long it lives.
#[derive(Debug, Clone)]
struct Cached {
    decision: Decision,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<(Arc<str>, Arc<str>), Cached> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &(Arc<str>, Arc<str>),
        value: &Cached,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &(Arc<str>, Arc<str>),
        value: &Cached,
        _updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// One node's subscribe proxy: the HTTP client, the secret and the cache.
pub struct SubscribeProxy {
    client: reqwest::Client,
    secret: Vec<u8>,
    timeout: Duration,
    cache: moka::sync::Cache<(Arc<str>, Arc<str>), Cached>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SubscribeProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeProxy")
            .field("timeout", &self.timeout)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl SubscribeProxy {
    pub fn new(
        secret: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<SubscribeProxy, String> {
        Ok(SubscribeProxy {
            client: backend::client()?,
            secret: secret.as_bytes().to_vec(),
            timeout,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(PerEntryTtl)
                .build(),
            metrics,
        })
    }

    /// The decision on `user` subscribing to `channel`: cached, or asked of
    /// the backend at `url`. `info` is the token's.
    pub async fn ask(
        &self,
        url: &url::Url,
        user: &Arc<str>,
        channel: &str,
        info: Option<&RawValue>,
        connection_id: &str,
    ) -> Result<Decision, ProxyError> {
        let key = (Arc::clone(user), Arc::<str>::from(channel));
        if let Some(cached) = self.cache.get(&key) {
            self.metrics.subscribe_proxy_cache_hit();
            return Ok(cached.decision);
        }
        let body = serde_json::to_vec(&Ask {
            user,
            channel,
            connection_id,
            info,
        })
        .map_err(|e| ProxyError::Malformed {
            url: backend::redacted(url),
            problem: format!("the request could not be encoded: {e}"),
        })?;
        let started = Instant::now();
        let answer =
            backend::post_signed(&self.client, url, &self.secret, body, self.timeout).await;
        let elapsed = started.elapsed();
        let result = match answer {
            // post_signed bounds the whole exchange by the timeout: an error
            // at the deadline is the timeout.
            Err(error) if elapsed >= self.timeout => Err(ProxyError::Timeout(error, self.timeout)),
            Err(error) => Err(ProxyError::Unreachable(error)),
            Ok(answer) if answer.status != 200 => Err(ProxyError::Status {
                url: backend::redacted(url),
                status: answer.status,
            }),
            Ok(answer) => parse(&answer.body).map_err(|problem| ProxyError::Malformed {
                url: backend::redacted(url),
                problem,
            }),
        };
        let label = match &result {
            Ok((Decision::Allow { .. }, _)) => ProxyResult::Allow,
            Ok((Decision::Deny { .. }, _)) => ProxyResult::Deny,
            Err(_) => ProxyResult::Error,
        };
        self.metrics.subscribe_proxy(label, elapsed);
        let (decision, ttl) = result?;
        if !ttl.is_zero() {
            self.cache.insert(
                key,
                Cached {
                    decision: decision.clone(),
                    ttl,
                },
            );
        }
        Ok(decision)
    }
}

/// Reads a 200 answer's body: the decision and how long to cache it.
fn parse(body: &[u8]) -> Result<(Decision, Duration), String> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(format!(
            "{} bytes, more than {MAX_ANSWER_BYTES}",
            body.len()
        ));
    }
    // serde would also read a struct from an array: only an object will do.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("not a JSON object".into());
    }
    let reply: Reply = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let ttl = Duration::from_secs(reply.ttl.unwrap_or(0)).min(MAX_TTL);
    let decision = if reply.allow {
        let info = match reply.info {
            Some(info) if !info.get().starts_with('{') => {
                return Err("info is not a JSON object".into());
            }
            info => info.map(Arc::from),
        };
        Decision::Allow { info }
    } else {
        let reason = reply
            .reason
            .map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>())
            .filter(|r| !r.is_empty());
        Decision::Deny { reason }
    };
    Ok((decision, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(info: Option<&str>) -> Decision {
        Decision::Allow {
            info: info.map(|i| Arc::from(RawValue::from_string(i.to_owned()).unwrap())),
        }
    }

    #[test]
    fn answers_in_the_contract_are_read() {
        assert_eq!(
            parse(br#"{"allow":true}"#),
            Ok((allow(None), Duration::ZERO))
        );
        assert_eq!(
            parse(br#"{"allow":true,"info":{"role":"editor"},"ttl":30,"extra":1}"#),
            Ok((allow(Some(r#"{"role":"editor"}"#)), Duration::from_secs(30)))
        );
        assert_eq!(
            parse(br#"{"allow":true,"info":null}"#),
            Ok((allow(None), Duration::ZERO))
        );
        assert_eq!(
            parse(br#"{"allow":false,"reason":"  not a member  ","ttl":5}"#),
            Ok((
                Decision::Deny {
                    reason: Some("not a member".into())
                },
                Duration::from_secs(5)
            ))
        );
        assert_eq!(
            parse(br#"{"allow":false,"reason":""}"#),
            Ok((Decision::Deny { reason: None }, Duration::ZERO))
        );
        assert_eq!(
            parse(br#"{"allow":true,"ttl":999999}"#).map(|(_, ttl)| ttl),
            Ok(MAX_TTL),
            "the ttl is capped"
        );
        let long = format!(r#"{{"allow":false,"reason":"{}"}}"#, "x".repeat(500));
        match parse(long.as_bytes()) {
            Ok((Decision::Deny { reason: Some(r) }, _)) => assert_eq!(r.len(), MAX_REASON_CHARS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_outside_the_contract_are_errors() {
        for body in [
            &b""[..],
            b"not json",
            b"{}",
            br#"{"allow":"yes"}"#,
            br#"{"allow":true,"info":"admin"}"#,
            br#"{"allow":true,"ttl":-1}"#,
            br#"{"allow":true,"ttl":1.5}"#,
            b"[true]",
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let big = format!(
            r#"{{"allow":true,"pad":"{}"}}"#,
            "x".repeat(MAX_ANSWER_BYTES)
        );
        assert!(parse(big.as_bytes()).is_err());
    }

    #[test]
    fn client_messages_never_name_the_url() {
        let url = "http://backend.internal:9000/auth".to_owned();
        let cases = [
            (
                ProxyError::Timeout(format!("{url} did not answer"), Duration::from_millis(2000)),
                "subscribe authorization unavailable: the backend did not answer within 2000 ms",
            ),
            (
                ProxyError::Unreachable(format!("{url}: connection refused")),
                "subscribe authorization unavailable: the backend could not be reached",
            ),
            (
                ProxyError::Status {
                    url: url.clone(),
                    status: 500,
                },
                "subscribe authorization unavailable: the backend answered with HTTP 500",
            ),
            (
                ProxyError::Malformed {
                    url: url.clone(),
                    problem: "missing field `allow`".into(),
                },
                "subscribe authorization unavailable: the backend's answer is malformed",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.client_message(), message);
            assert!(error.to_string().contains(&url), "{error}");
        }
    }
}
