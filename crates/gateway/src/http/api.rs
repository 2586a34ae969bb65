//! The server API (`/api/*`): how an application's backend talks to the
//! gateway without holding a WebSocket. It publishes to any channel (server
//! events, notifications), lists who is present in a channel, and
//! disconnects every connection of a user (a ban, a logout, a revoked token)
//! on every node.
//!
//! One bearer key (`SWITCHBOARD_API_KEY`) guards every route; without a
//! configured key the API is closed. The key is checked before anything
//! else, so an unauthenticated caller learns nothing, not even which routes
//! exist. Publishing goes straight to the broker: the backend is trusted, so
//! neither token grants nor per-connection rate limits apply to it.
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/publish` `{"channel", "data"}` | `{"ok": true}`, with `offset` and `epoch` on channels with history |
//! | `POST /api/batch` `{"messages": [{"channel", "data"}, ...]}` | `{"replies": [...]}`: each message's publish answer or its own error (`batch`) |
//! | `GET /api/presence/{channel}` | `{"members": [{"user", "connection_id", "info"}]}` |
//! | `GET /api/history/{channel}?limit=&since=&epoch=` | `{"offset", "epoch", "messages", "recovered"?}` |
//! | `POST /api/disconnect` `{"user", "code"?, "reason"?}` | `{"ok": true}` |
//! | `GET /api/channels?prefix=&limit=&cursor=` | `{"channels": [{"channel", "subscribers", "users"}], "next_cursor"?}` |
//! | `GET /api/channels/{channel}` | `{"channel", "subscribers", "users"}` |
//!
//! Failures use the contract's body `{"error": "<code>", "message": "..."}`.
//!
//! The admin UI (`http::admin::api`) answers its publish, disconnect and
//! channel pages with the same functions ([`parse_publish`] + [`publish`],
//! [`parse_disconnect`] + [`disconnect`], [`channels`], [`channel_counts`],
//! [`presence`], [`history`]), behind its own login instead of the key, so
//! both answer a body the same way.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use subtle::{Choice, ConstantTimeEq};
use switchboard_protocol::batch::decode_messages;
use switchboard_protocol::channel::validate_channel;
use switchboard_protocol::frame::{nesting_depth, MAX_DATA_DEPTH};
use switchboard_protocol::position::{valid_epoch, MAX_EPOCH_LEN, MAX_HISTORY_LIMIT};
use switchboard_protocol::{close, ChannelName, ErrorCode, Position};

use crate::broker;
use crate::history::{self, HistoryQuery, DEFAULT_HISTORY_LIMIT};
use crate::http::batch;
use crate::http::response::{self, Body};
use crate::node::Node;
use crate::occupancy::{ListQuery, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

/// The routes under `/api/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Publish,
    Batch,
    /// The channel as it appears in the path, still percent-encoded.
    Presence(&'a str),
    History(&'a str),
    Disconnect,
    Channels,
    Channel(&'a str),
    Unknown,
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Route<'a> {
        match path {
            "/api/publish" => Route::Publish,
            "/api/batch" => Route::Batch,
            "/api/disconnect" => Route::Disconnect,
            "/api/channels" => Route::Channels,
            _ => {
                if let Some(channel) = path.strip_prefix("/api/presence/") {
                    Route::Presence(channel)
                } else if let Some(channel) = path.strip_prefix("/api/history/") {
                    Route::History(channel)
                } else if let Some(channel) = path.strip_prefix("/api/channels/") {
                    Route::Channel(channel)
                } else {
                    Route::Unknown
                }
            }
        }
    }

    /// A fixed name for logs (the path itself is caller-controlled).
    fn label(self) -> &'static str {
        match self {
            Route::Publish => "publish",
            Route::Batch => "batch",
            Route::Presence(_) => "presence",
            Route::History(_) => "history",
            Route::Disconnect => "disconnect",
            Route::Channels => "channels",
            Route::Channel(_) => "channel",
            Route::Unknown => "unknown",
        }
    }
}

/// A failed API request, rendered as the contract's error body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The `Allow` header of a 405.
    allow: Option<Method>,
    /// The `Retry-After` header, in seconds.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Redis (or the shard a channel lives on) is away for now: 503 with
    /// `Retry-After: 1`, as the handshake's 503s.
    fn unavailable(message: &str) -> ApiError {
        ApiError {
            retry_after: Some(response::RETRY_AFTER_SECS),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    fn method_not_allowed(allowed: Method) -> ApiError {
        ApiError {
            allow: Some(allowed.clone()),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                format!("use {allowed}"),
            )
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = response::error(self.status, self.code, &self.message, self.retry_after);
        if let Some(allow) = self
            .allow
            .and_then(|m| HeaderValue::from_str(m.as_str()).ok())
        {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        response
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No key is configured: the API is closed.
    Disabled,
    /// The `Authorization` header is missing, malformed or holds another key.
    InvalidKey,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Disabled => "api_disabled",
            Refusal::InvalidKey => "invalid_key",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Disabled => "the server API is disabled: set SWITCHBOARD_API_KEY",
            Refusal::InvalidKey => "missing or invalid API key",
        }
    }
}

/// Serves one request under `/api/`.
pub async fn handle(node: &Node, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = Route::of(&path);
    let response = match authenticate(node.config.api_key.as_deref(), request.headers()) {
        Err(refusal) => {
            tracing::info!(
                message = "server API request refused",
                %peer,
                %method,
                route = route.label(),
                reason = refusal.reason()
            );
            response::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                refusal.message(),
                None,
            )
        }
        Ok(()) => match dispatch(node, route, request).await {
            Ok(body) => response::json(StatusCode::OK, &body),
            Err(error) => error.into_response(),
        },
    };
    tracing::debug!(
        message = "server API request",
        %peer,
        %method,
        route = route.label(),
        status = response.status().as_u16()
    );
    node.metrics
        .api_request(route.label(), response.status(), started.elapsed());
    response
}

async fn dispatch(
    node: &Node,
    route: Route<'_>,
    request: Request<Incoming>,
) -> Result<Value, ApiError> {
    let method = request.method().clone();
    match (route, method) {
        (Route::Publish, Method::POST) => {
            let bytes = read_body(request.into_body(), node.config.session.max_frame_bytes).await?;
            publish(node, &parse_publish(&bytes)?).await
        }
        (Route::Batch, Method::POST) => publish_batch(node, request.into_body()).await,
        (Route::Presence(channel), Method::GET) => presence(node, &path_channel(channel)?).await,
        (Route::History(channel), Method::GET) => {
            let channel = path_channel(channel)?;
            history(node, &channel, request.uri().query().unwrap_or("")).await
        }
        (Route::Disconnect, Method::POST) => {
            let bytes = read_body(request.into_body(), node.config.session.max_frame_bytes).await?;
            disconnect(node, &parse_disconnect(&bytes)?).await
        }
        (Route::Channels, Method::GET) => channels(node, request.uri().query().unwrap_or("")).await,
        (Route::Channel(channel), Method::GET) => {
            channel_counts(node, &path_channel(channel)?).await
        }
        (Route::Publish | Route::Batch | Route::Disconnect, _) => {
            Err(ApiError::method_not_allowed(Method::POST))
        }
        (Route::Presence(_) | Route::History(_) | Route::Channels | Route::Channel(_), _) => {
            Err(ApiError::method_not_allowed(Method::GET))
        }
        (Route::Unknown, _) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        )),
    }
}

/// Checks `Authorization: Bearer <key>` against the configured key.
fn authenticate(expected: Option<&str>, headers: &HeaderMap) -> Result<(), Refusal> {
    let expected = expected.ok_or(Refusal::Disabled)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer(value.as_bytes()))
        .ok_or(Refusal::InvalidKey)?;
    if key_matches(expected.as_bytes(), presented) {
        Ok(())
    } else {
        Err(Refusal::InvalidKey)
    }
}

/// The credentials of a `Bearer` authorization value (the scheme is
/// case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Compares keys without an early exit, so response time does not reveal how
/// many leading bytes of a guess were right.
///
/// `subtle`'s slice comparison returns at once when the lengths differ, so
/// the comparison runs over the expected key's bytes instead, reading the
/// presented key at the same positions (a zero past its end), and the length
/// check is folded in with a constant-time `&`. The time then depends only on
/// the configured key's length (which reveals nothing useful: every key has
/// at least `MIN_API_KEY_BYTES`), never on the presented bytes. No hash is
/// needed, so no extra dependency.
pub(crate) fn key_matches(expected: &[u8], presented: &[u8]) -> bool {
    let same_len = (expected.len() as u64).ct_eq(&(presented.len() as u64));
    let same_bytes = expected
        .iter()
        .enumerate()
        .fold(Choice::from(1), |acc, (i, byte)| {
            acc & byte.ct_eq(&presented.get(i).copied().unwrap_or(0))
        });
    (same_len & same_bytes).into()
}

/// The body of `POST /api/publish`, checked: a channel and its `data`,
/// borrowed from the body's bytes.
#[derive(Debug)]
pub(crate) struct Publication<'a> {
    pub channel: ChannelName,
    pub data: &'a RawValue,
}

/// Reads `{"channel": "...", "data": <any JSON>}`, the body of
/// `POST /api/publish`.
pub(crate) fn parse_publish(bytes: &[u8]) -> Result<Publication<'_>, ApiError> {
    #[derive(Deserialize)]
    struct PublishBody<'a> {
        #[serde(borrow)]
        channel: Option<&'a RawValue>,
        /// `null` is data, as in the WebSocket `publish`.
        #[serde(
            borrow,
            default,
            deserialize_with = "switchboard_protocol::frame::present"
        )]
        data: Option<&'a RawValue>,
    }

    let body: PublishBody<'_> = parse_object(bytes)?;
    let channel = channel_field(body.channel)?;
    let data = body
        .data
        .ok_or_else(|| ApiError::bad_request("missing field data"))?;
    if nesting_depth(data.get()) > MAX_DATA_DEPTH {
        return Err(ApiError::bad_request(format!(
            "data is nested deeper than {MAX_DATA_DEPTH} levels"
        )));
    }
    Ok(Publication { channel, data })
}

/// `POST /api/publish`: publishes a checked body through the broker,
/// stored in history where the channel's namespace keeps it.
pub(crate) async fn publish(node: &Node, publication: &Publication<'_>) -> Result<Value, ApiError> {
    let Publication { channel, data } = publication;
    let policy = node.config.namespace(channel.namespace()).history();
    let published = broker::publish_message(&*node.broker, channel.as_str(), data, policy)
        .await
        .map(|position| match position {
            Some(p) => json!({ "ok": true, "offset": p.offset, "epoch": p.epoch }),
            None => json!({ "ok": true }),
        });
    match published {
        Ok(result) => Ok(result),
        Err(error) => {
            tracing::warn!(message = "server API publish failed", channel = %channel, %error);
            Err(ApiError::unavailable(
                "message not published: broker unavailable",
            ))
        }
    }
}

/// `POST /api/batch` `{"messages": [{"channel", "data"}, ...]}`: the list
/// is checked here, each message in `batch`.
async fn publish_batch(node: &Node, body: Incoming) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    struct BatchBody<'a> {
        #[serde(borrow)]
        messages: Option<&'a RawValue>,
    }

    let limit = batch::body_limit(node.config.session.max_frame_bytes);
    let bytes = read_body(body, limit).await?;
    let body: BatchBody<'_> = parse_object(&bytes)?;
    let messages = body
        .messages
        .ok_or_else(|| ApiError::bad_request("missing field messages"))?;
    let entries = decode_messages(messages).map_err(ApiError::bad_request)?;
    Ok(batch::publish(node, entries).await)
}

/// `GET /api/presence/{channel}` (the channel may be percent-encoded in
/// the path).
pub(crate) async fn presence(node: &Node, channel: &ChannelName) -> Result<Value, ApiError> {
    if !node.config.namespace(channel.namespace()).presence {
        return Err(ApiError::bad_request(format!(
            "presence is disabled for namespace {:?}",
            channel.namespace()
        )));
    }
    match node.presence.members(channel.as_str()).await {
        Ok(members) => Ok(json!({ "members": members })),
        Err(error) => {
            tracing::warn!(message = "server API presence read failed", channel = %channel, %error);
            Err(ApiError::unavailable("presence unavailable"))
        }
    }
}

/// `GET /api/history/{channel}?limit=N&since=OFFSET&epoch=EPOCH`: the newest
/// `limit` messages (default 100, at most 1000), or those after
/// `{since, epoch}` (both or neither).
pub(crate) async fn history(
    node: &Node,
    channel: &ChannelName,
    query: &str,
) -> Result<Value, ApiError> {
    if !node
        .config
        .namespace(channel.namespace())
        .history()
        .enabled()
    {
        let (_, message) = history::disabled(channel);
        return Err(ApiError::bad_request(message));
    }
    let (mut limit, mut offset, mut epoch) = (None, None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "limit" => {
                limit = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}"
                            ))
                        })?,
                )
            }
            "since" => {
                offset = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request("since must be a non-negative integer (an offset)")
                })?)
            }
            "epoch" => {
                if !valid_epoch(&value) {
                    return Err(ApiError::bad_request(format!(
                        "epoch must be 1 to {MAX_EPOCH_LEN} letters, digits, '-' or '_'"
                    )));
                }
                epoch = Some(value.into_owned())
            }
            _ => {}
        }
    }
    let since = match (offset, epoch) {
        (Some(offset), Some(epoch)) => Some(Position { offset, epoch }),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("since and epoch go together")),
    };
    let query = HistoryQuery {
        since,
        limit: limit.unwrap_or(DEFAULT_HISTORY_LIMIT),
        max_bytes: None,
    };
    let policy = node.config.namespace(channel.namespace()).history();
    let page = node.broker.history(channel.as_str(), policy, &query).await;
    node.metrics.history_read("api", page.is_ok());
    let page = page.map_err(|error| {
        tracing::warn!(message = "server API history read failed", channel = %channel, %error);
        ApiError::unavailable("history unavailable")
    })?;
    history::reply(&query, page).map_err(|(code, message)| match code {
        ErrorCode::BadRequest => ApiError::bad_request(message),
        _ => ApiError::unavailable(&message),
    })
}

/// `GET /api/channels?prefix=P&limit=N&cursor=C`: channels with
/// subscribers, in name order, starting with `prefix`, after `cursor` (the
/// previous page's `next_cursor`), at most `limit` (default 100, at most
/// 1000). Read from an index of live channels: never a keyspace scan.
pub(crate) async fn channels(node: &Node, query: &str) -> Result<Value, ApiError> {
    let mut list = ListQuery {
        prefix: String::new(),
        cursor: None,
        limit: DEFAULT_LIST_LIMIT,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "prefix" => {
                if !value.is_empty() {
                    validate_channel(&value)
                        .map_err(|e| ApiError::bad_request(format!("invalid prefix: {e}")))?;
                }
                list.prefix = value.into_owned();
            }
            "cursor" if !value.is_empty() => {
                validate_channel(&value)
                    .map_err(|e| ApiError::bad_request(format!("invalid cursor: {e}")))?;
                list.cursor = Some(value.into_owned());
            }
            "limit" => {
                list.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a whole number from 1 to {MAX_LIST_LIMIT}"
                        ))
                    })?;
            }
            _ => {}
        }
    }
    let page = node.list_channels(&list).await.map_err(|error| {
        tracing::warn!(message = "server API channel listing failed", %error);
        ApiError::unavailable("channel listing unavailable")
    })?;
    Ok(json!(page))
}

/// `GET /api/channels/{channel}`: its subscribers and distinct users (0
/// and 0 when nobody is subscribed).
pub(crate) async fn channel_counts(node: &Node, channel: &ChannelName) -> Result<Value, ApiError> {
    let counts = node
        .channel_counts(channel.as_str())
        .await
        .map_err(|error| {
            tracing::warn!(message = "server API channel counts failed", channel = %channel, %error);
            ApiError::unavailable("channel counts unavailable")
        })?;
    Ok(json!(counts))
}

/// A channel named in the path, percent-decoded and validated.
pub(crate) fn path_channel(encoded: &str) -> Result<ChannelName, ApiError> {
    let name = percent_decode(encoded).ok_or_else(|| {
        ApiError::bad_request("channel in the path is not valid percent-encoding")
    })?;
    ChannelName::parse(&name).map_err(|e| ApiError::bad_request(format!("invalid channel: {e}")))
}

/// The close codes a disconnect may name: the application's range.
pub const DISCONNECT_CODES: std::ops::RangeInclusive<u16> = 4000..=4999;
/// The longest close reason a disconnect may name: what fits a close
/// frame's payload (125 bytes) after the code.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The body of `POST /api/disconnect`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Disconnect {
    pub user: String,
    /// The close code, 4000..=4999 (4003 when the body names none).
    pub code: u16,
    /// The close reason, at most 123 bytes (`disconnected by the server`
    /// when the body names none).
    pub reason: String,
}

/// Reads `{"user": "...", "code"?: 4000..=4999, "reason"?: "..."}`, the
/// body of `POST /api/disconnect`.
pub(crate) fn parse_disconnect(bytes: &[u8]) -> Result<Disconnect, ApiError> {
    #[derive(Deserialize)]
    struct DisconnectBody<'a> {
        #[serde(borrow)]
        user: Option<&'a RawValue>,
        #[serde(borrow)]
        code: Option<&'a RawValue>,
        #[serde(borrow)]
        reason: Option<&'a RawValue>,
    }

    let body: DisconnectBody<'_> = parse_object(bytes)?;
    let raw = body
        .user
        .ok_or_else(|| ApiError::bad_request("missing field user"))?;
    let user: String = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::bad_request("user must be a string"))?;
    if user.is_empty() {
        return Err(ApiError::bad_request("user must not be empty"));
    }
    let code = match body.code {
        None => close::DISCONNECTED,
        Some(raw) => serde_json::from_str::<u16>(raw.get())
            .ok()
            .filter(|code| DISCONNECT_CODES.contains(code))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "code must be a whole number from {} to {}",
                    DISCONNECT_CODES.start(),
                    DISCONNECT_CODES.end()
                ))
            })?,
    };
    let reason = match body.reason {
        None => broker::DISCONNECT_REASON.to_owned(),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .ok()
            .filter(|reason| reason.len() <= MAX_CLOSE_REASON_BYTES)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "reason must be a string of at most {MAX_CLOSE_REASON_BYTES} bytes"
                ))
            })?,
    };
    Ok(Disconnect { user, code, reason })
}

/// `POST /api/disconnect`: closes every connection of the user on every
/// node with the body's close code and reason.
pub(crate) async fn disconnect(node: &Node, request: &Disconnect) -> Result<Value, ApiError> {
    let Disconnect { user, code, reason } = request;
    match node.broker.disconnect(user, *code, reason).await {
        Ok(()) => {
            tracing::info!(message = "server API disconnected user", user = %user, code);
            Ok(json!({ "ok": true }))
        }
        Err(error) => {
            tracing::warn!(message = "server API disconnect failed", user = %user, %error);
            Err(ApiError::unavailable(
                "user not disconnected: broker unavailable",
            ))
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body exceeds {limit} bytes"),
        )),
        Err(error) => {
            tracing::debug!(message = "server API body not read", %error);
            Err(ApiError::bad_request("the request body could not be read"))
        }
    }
}

/// Decodes a body that must be one JSON object; unknown fields are ignored.
fn parse_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("body is not valid UTF-8"))?;
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    // serde_json's messages name the line and column but never echo input.
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("body is not a valid JSON object: {e}")))
}

/// The `channel` field of a body, validated.
fn channel_field(raw: Option<&RawValue>) -> Result<ChannelName, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::bad_request("missing field channel"))?;
    let name: String = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::bad_request("channel must be a string"))?;
    ChannelName::parse(&name).map_err(|e| ApiError::bad_request(format!("invalid channel: {e}")))
}

/// Decodes `%XX` escapes in a path segment (`+` stays `+`, as in any path).
/// `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        let key = b"0123456789abcdef";
        assert!(key_matches(key, b"0123456789abcdef"));
        assert!(!key_matches(key, b"0123456789abcdeF"));
        assert!(!key_matches(key, b"0123456789abcde"));
        assert!(!key_matches(key, b"0123456789abcdef0"));
        assert!(!key_matches(key, b"0123456789abcdef\0"));
        assert!(!key_matches(key, b""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn authentication_fails_closed() {
        let mut headers = HeaderMap::new();
        assert_eq!(authenticate(None, &headers), Err(Refusal::Disabled));
        let key = "0123456789abcdef";
        assert_eq!(authenticate(Some(key), &headers), Err(Refusal::InvalidKey));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef"),
        );
        assert_eq!(authenticate(Some(key), &headers), Ok(()));
        assert_eq!(authenticate(None, &headers), Err(Refusal::Disabled));
    }

    #[test]
    fn routes() {
        assert_eq!(Route::of("/api/publish"), Route::Publish);
        assert_eq!(Route::of("/api/batch"), Route::Batch);
        assert_eq!(Route::of("/api/disconnect"), Route::Disconnect);
        assert_eq!(
            Route::of("/api/presence/chat:a/b"),
            Route::Presence("chat:a/b")
        );
        assert_eq!(Route::of("/api/presence/"), Route::Presence(""));
        assert_eq!(Route::of("/api/presence"), Route::Unknown);
        assert_eq!(Route::of("/api/history/chat:a"), Route::History("chat:a"));
        assert_eq!(Route::of("/api/publish/"), Route::Unknown);
        assert_eq!(Route::of("/api/channels"), Route::Channels);
        assert_eq!(Route::of("/api/channels/chat:a"), Route::Channel("chat:a"));
    }

    #[test]
    fn a_disconnect_may_name_its_close_code_and_reason() {
        let parsed = |body: &str| parse_disconnect(body.as_bytes()).map_err(|e| e.message);
        assert_eq!(
            parsed(r#"{"user":"alice"}"#),
            Ok(Disconnect {
                user: "alice".into(),
                code: 4003,
                reason: "disconnected by the server".into()
            })
        );
        assert_eq!(
            parsed(r#"{"user":"alice","code":4999,"reason":"banned"}"#),
            Ok(Disconnect {
                user: "alice".into(),
                code: 4999,
                reason: "banned".into()
            })
        );
        assert_eq!(
            parsed(r#"{"user":"alice","code":null,"reason":null}"#).map(|d| d.code),
            Ok(4003),
            "null is no code"
        );
        let code = "code must be a whole number from 4000 to 4999";
        for bad in ["3999", "5000", "4000.5", r#""4000""#, "-1", "1000"] {
            assert_eq!(
                parsed(&format!(r#"{{"user":"a","code":{bad}}}"#)),
                Err(code.to_owned()),
                "{bad}"
            );
        }
        let reason = "reason must be a string of at most 123 bytes";
        let long = "é".repeat(62);
        for bad in ["1".to_owned(), format!("{long:?}"), r#"["x"]"#.to_owned()] {
            assert_eq!(
                parsed(&format!(r#"{{"user":"a","reason":{bad}}}"#)),
                Err(reason.to_owned()),
                "{bad}"
            );
        }
        let fits = "x".repeat(123);
        assert_eq!(
            parsed(&format!(r#"{{"user":"a","reason":"{fits}"}}"#)).map(|d| d.reason),
            Ok(fits)
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("chat%3Alobby").as_deref(),
            Some("chat:lobby")
        );
        assert_eq!(percent_decode("a+b%2fc").as_deref(), Some("a+b/c"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%FF"), None);
    }
}
