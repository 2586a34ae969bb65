//! Requests from the gateway to the application's backend (webhooks and the
//! subscribe proxy): one HTTP client, and the signature every request
//! carries so the backend can tell them from forgeries and replays.
//!
//! Signature: `X-Switchboard-Signature: t=<unix seconds>,v1=<hex>` where
//! `<hex>` is HMAC-SHA256, keyed by the shared secret, over
//! `"<t>.<body>"` (the timestamp, a dot, the exact body bytes). Signing the
//! timestamp with the body lets a receiver refuse an old request replayed
//! later; docs/protocol.md has a verification snippet.

pub mod subscribe_proxy;
pub mod webhook_order;
pub mod webhooks;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// How far a signed timestamp may be from the verifier's clock.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The signature header's value for `body` signed at `timestamp`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signed timestamp is {0} s away from now")]
    Stale(u64),
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a signature header against `body`, as a receiver would: the
/// timestamp within `tolerance` of `now` (unix seconds), the HMAC compared
/// in constant time. Any `v1=` entry may match (a sender rotating secrets
/// can send two).
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", tag)) => {
                tags.push(hex::decode(tag).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now.abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        return Err(SignatureError::Stale(skew));
    }
    let expected = mac(secret, timestamp, body);
    if tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The HTTP client for backend requests. One per node: it keeps
/// connections to the backend alive between requests.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("cannot build the backend HTTP client: {e}"))
}

/// What the backend answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: bytes::Bytes,
}

/// POSTs a JSON body, signed, and reads the answer within `timeout` (the
/// whole exchange, body included). Errors name the URL and what failed.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &url::Url,
    secret: &[u8],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, String> {
    let signature = sign(secret, unix_now(), &body);
    let exchange = async {
        let response = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>(Answer { status, body })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(describe(url, &error)),
        Err(_) => Err(format!(
            "{} did not answer within {} ms",
            redacted(url),
            timeout.as_millis()
        )),
    }
}

/// The URL without credentials or query, for logs and errors.
pub fn redacted(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url.set_query(None);
    url.to_string()
}

fn describe(url: &url::Url, error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // reqwest's own text repeats the URL, query included: keep ours only.
    let text = text.replace(url.as_str(), "");
    format!("{}: {}", redacted(url), text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_verifies_and_a_changed_body_does_not() {
        let header = sign(SECRET, 1_700_000_000, b"{\"events\":[]}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify(
                SECRET,
                &header,
                b"{\"events\":[]}",
                1_700_000_010,
                SIGNATURE_TOLERANCE
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                SECRET,
                &header,
                b"{\"events\":[1]}",
                1_700_000_010,
                SIGNATURE_TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another secret of thirty-two bytes",
                &header,
                b"{\"events\":[]}",
                1_700_000_010,
                SIGNATURE_TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_and_malformed_signatures_are_refused() {
        let header = sign(SECRET, 1_700_000_000, b"x");
        assert_eq!(
            verify(SECRET, &header, b"x", 1_700_000_301, SIGNATURE_TOLERANCE),
            Err(SignatureError::Stale(301))
        );
        for bad in [
            "",
            "v1=00",
            "t=1700000000",
            "t=x,v1=00",
            "t=1700000000,v1=zz",
        ] {
            assert_eq!(
                verify(SECRET, bad, b"x", 1_700_000_000, SIGNATURE_TOLERANCE),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_known_vector_matches() {
        // From openssl: printf '1700000000.hello' | openssl dgst -sha256 -hmac <SECRET>
        assert_eq!(
            sign(SECRET, 1_700_000_000, b"hello"),
            "t=1700000000,v1=8edbb8a3ba0e213508cb595950ee7425d2c0461eba1b37af7a8d1e60bcca23b5"
        );
    }
}
