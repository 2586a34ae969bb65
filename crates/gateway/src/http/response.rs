//! JSON HTTP responses: the refusal body of the public contract
//! (`{"error": "<code>", "message": "..."}`) and small status documents.
//! Details of internal failures go to the log, never into a body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

pub type Body = Full<Bytes>;

/// The `Retry-After` of a 503 `unavailable` (a node at its cap or draining,
/// Redis away): seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A JSON response with a status.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal: `{"error": code, "message": message}`, with `Retry-After` when given.
pub fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_secs: Option<u64>,
) -> Response<Body> {
    let mut response = json(status, &json!({ "error": code, "message": message }));
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
