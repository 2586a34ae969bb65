//! Publishers: several workers share one message counter `k`. Each takes the
//! next `k`, waits until it is due (fixed rate) or until the in-flight window
//! has room (saturation), stamps the send time into the payload and
//! publishes it, through the server API, as a WebSocket client, or (taking
//! `batch_size` numbers at once) through the batch API.
//!
//! The send time is taken just before the message leaves, so a publisher that
//! falls behind its schedule does not show up as delivery latency; the
//! progress line shows the publish rate, which tells when that happens.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::body;
use crate::conn::{self, ServerFrame};
use crate::context::Context;
use crate::http_client;
use crate::stats::now_us;

/// Waits for the next message this worker should publish; `None` when the
/// publishing phase is over.
async fn next_message(ctx: &Context, start: Instant, end: Instant) -> Option<u64> {
    next_messages(ctx, 1, start, end).await
}

/// Takes the next `count` message numbers and waits until the first is due
/// (fixed rate) and the in-flight window has room (saturation); returns
/// the first, or `None` when the publishing phase is over.
async fn next_messages(ctx: &Context, count: u64, start: Instant, end: Instant) -> Option<u64> {
    let k = ctx.next_k.fetch_add(count, Ordering::Relaxed);
    if ctx.plan.rate > 0.0 {
        let due = start + Duration::from_secs_f64(k as f64 / ctx.plan.rate);
        if due >= end {
            return None;
        }
        sleep_until(due).await;
    }
    // Saturation (and a safety net at a fixed rate): keep at most `window`
    // messages per subscription in flight.
    let limit = ctx.plan.window.max(1) * ctx.subscriptions_total.max(1);
    while ctx.expected.load(Ordering::Relaxed)
        > ctx.stats.deliveries.load(Ordering::Relaxed) + limit
    {
        if Instant::now() >= end || ctx.stop.is_cancelled() {
            return None;
        }
        sleep(Duration::from_micros(200)).await;
    }
    (Instant::now() < end).then_some(k)
}

/// The `data` of message `k`, stamped now.
fn payload(ctx: &Context, k: u64, pad: &str) -> String {
    body::data(ctx.plan.payload_kind, k, now_us(), pad)
}

/// Records an accepted message.
fn accepted(ctx: &Context, k: u64) {
    ctx.stats.published.fetch_add(1, Ordering::Relaxed);
    let channel = (k % ctx.channels.len() as u64) as usize;
    ctx.expected
        .fetch_add(ctx.subscribers_per_channel[channel], Ordering::Relaxed);
    if let Some(acks) = &ctx.acks {
        let mut acks = acks.lock().unwrap_or_else(|e| e.into_inner());
        let word = (k / 64) as usize;
        if acks.len() <= word {
            acks.resize(word + 1, 0);
        }
        acks[word] |= 1u64 << (k % 64);
    }
}

/// Publishes as API worker `n` through `POST /api/publish` over one
/// keep-alive connection until `end`.
pub async fn api(ctx: Arc<Context>, n: usize, start: Instant, end: Instant) {
    let target = ctx.plan.publish_target();
    let Some(key) = ctx.plan.api_key.clone() else {
        eprintln!("publishing through the API needs --api-key");
        ctx.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let auth = format!("Bearer {key}");
    let pad = "x".repeat(ctx.plan.payload);
    let mut sender: Option<http_client::Sender> = None;
    while let Some(k) = next_message(&ctx, start, end).await {
        let channel = &ctx.channels[(k % ctx.channels.len() as u64) as usize];
        let body = format!(
            r#"{{"channel":"{channel}","data":{}}}"#,
            payload(&ctx, k, &pad)
        );
        if sender.is_none() {
            match http_client::connect(target).await {
                Ok(s) => sender = Some(s),
                Err(error) => {
                    ctx.publish_failed(&error);
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        match http_client::request(s, target, &auth, Method::POST, "/api/publish", Some(body)).await
        {
            Ok((StatusCode::OK, body)) => {
                accepted(&ctx, k);
                if let Some(log) = &ctx.accepted_log {
                    // `{"ok":true}`, plus `offset` and `epoch` with history.
                    let reply = serde_json::from_slice::<BatchReply>(&body).ok();
                    let reply = reply.as_ref();
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(
                        k,
                        n as u32,
                        reply.and_then(|r| r.offset),
                        reply.and_then(|r| r.epoch.as_deref()),
                    );
                }
            }
            Ok((status, body)) => ctx.publish_failed(&format!(
                "api publish: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )),
            Err(error) => {
                ctx.publish_failed(&error);
                sender = None;
            }
        }
    }
}

/// One message's answer in a `POST /api/batch` reply: `{"ok":true}` (with
/// `offset` and `epoch` on a channel with history) or
/// `{"error":"<code>","message":"..."}`.
#[derive(Debug, Deserialize)]
pub struct BatchReply {
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    #[serde(default)]
    pub message: Option<String>,
}

impl BatchReply {
    /// The message's error, when it has one (`error`, or no `ok: true`).
    pub fn failure(&self) -> Option<String> {
        match (&self.error, self.ok) {
            (Some(code), _) => Some(format!(
                "{}: {}",
                code.as_str()
                    .map_or_else(|| code.to_string(), str::to_owned),
                self.message.as_deref().unwrap_or("")
            )),
            (None, Some(true)) => None,
            (None, _) => Some("a reply with neither ok nor error".into()),
        }
    }
}

#[derive(Deserialize)]
struct BatchAnswer {
    replies: Vec<BatchReply>,
}

/// The replies of a 200 `POST /api/batch` answer to `count` messages:
/// one per message, in order, else the whole answer is an error.
pub fn parse_batch_answer(body: &[u8], count: usize) -> Result<Vec<BatchReply>, String> {
    let answer: BatchAnswer = serde_json::from_slice(body).map_err(|e| {
        format!(
            "batch answer is not {{\"replies\":[...]}}: {e}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    if answer.replies.len() != count {
        return Err(format!(
            "batch answer holds {} replies for {count} messages",
            answer.replies.len()
        ));
    }
    Ok(answer.replies)
}

/// The body of a `POST /api/batch` request for messages `ks`.
fn batch_body(ctx: &Context, ks: std::ops::Range<u64>, pad: &str) -> String {
    let mut body = String::with_capacity(64 + (ks.end - ks.start) as usize * (80 + pad.len()));
    body.push_str(r#"{"messages":["#);
    for k in ks {
        if !body.ends_with('[') {
            body.push(',');
        }
        let channel = &ctx.channels[(k % ctx.channels.len() as u64) as usize];
        body.push_str(&format!(
            r#"{{"channel":"{channel}","data":{}}}"#,
            payload(ctx, k, pad)
        ));
    }
    body.push_str("]}");
    body
}

/// A whole batch request failed: counted, printed (a few), remembered.
fn batch_failed(ctx: &Context, error: String) {
    ctx.stats
        .batch_request_errors
        .fetch_add(1, Ordering::Relaxed);
    ctx.publish_failed(&error);
    *ctx.stats
        .last_request_error
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(error);
}

/// Publisher `n` through `POST /api/batch`: `batch_size` consecutive
/// messages per request (spread over the channels as `k % channels`), one
/// request in flight, over one keep-alive connection, until `end`. Each
/// message is accepted or counted as an error by its own reply; a 404 (a
/// gateway without the batch API) stops the worker.
pub async fn batch(ctx: Arc<Context>, n: usize, start: Instant, end: Instant) {
    let target = ctx.plan.publish_target();
    let Some(key) = ctx.plan.api_key.clone() else {
        batch_failed(&ctx, "publishing through the API needs --api-key".into());
        return;
    };
    let auth = format!("Bearer {key}");
    let pad = "x".repeat(ctx.plan.payload);
    let size = ctx.plan.batch_size.max(1) as u64;
    let mut sender: Option<http_client::Sender> = None;
    while let Some(first) = next_messages(&ctx, size, start, end).await {
        let ks = first..first + size;
        if sender.is_none() {
            match http_client::connect(target).await {
                Ok(s) => sender = Some(s),
                Err(error) => {
                    batch_failed(&ctx, error);
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let body = batch_body(&ctx, ks.clone(), &pad);
        let answer =
            http_client::request(s, target, &auth, Method::POST, "/api/batch", Some(body)).await;
        let replies = match answer {
            Ok((StatusCode::OK, body)) => parse_batch_answer(&body, ks.clone().count()),
            Ok((status, body)) => {
                let error = format!(
                    "POST /api/batch: HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                );
                if status == StatusCode::NOT_FOUND {
                    batch_failed(&ctx, format!("{error} (this gateway has no batch API)"));
                    return;
                }
                Err(error)
            }
            Err(error) => {
                sender = None;
                Err(error)
            }
        };
        let replies = match replies {
            Ok(replies) => replies,
            Err(error) => {
                batch_failed(&ctx, error);
                continue;
            }
        };
        ctx.stats.batch_requests.fetch_add(1, Ordering::Relaxed);
        let mut log = ctx
            .accepted_log
            .as_ref()
            .map(|log| log.lock().unwrap_or_else(|e| e.into_inner()));
        for (k, reply) in ks.zip(&replies) {
            if let Some(error) = reply.failure() {
                ctx.stats.message_errors.fetch_add(1, Ordering::Relaxed);
                ctx.print_error(&format!("batch message {k}: {error}"));
                continue;
            }
            accepted(&ctx, k);
            if let Some(log) = log.as_mut() {
                log.push(k, n as u32, reply.offset, reply.epoch.as_deref());
            }
        }
    }
}

/// Publishes as WebSocket client `n` (a token granted `bench:*`) until `end`;
/// every command carries `id = k + 1` and counts as accepted when its
/// positive reply arrives. At most `in_flight` commands wait for their
/// reply at once (1: a serial publisher, which sends the next publish only
/// once the last one is acknowledged; 0: pipelined without a limit).
pub async fn client(ctx: Arc<Context>, n: usize, start: Instant, end: Instant) {
    let target = ctx.plan.publish_target();
    let source = SocketAddr::new(ctx.plan.source(n).into(), 0);
    let opened = async {
        let token = ctx.publisher_token(n)?;
        let mut ws = conn::connect(source, target, &token, false, ctx.plan.format).await?;
        conn::welcome(&mut ws).await?;
        Ok::<_, String>(ws)
    }
    .await;
    let ws = match opened {
        Ok(ws) => ws,
        Err(error) => {
            ctx.publish_failed(&format!("publisher connection: {error}"));
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let outstanding = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let slots = (ctx.plan.in_flight > 0).then(|| Arc::new(Semaphore::new(ctx.plan.in_flight)));
    let reader = {
        let ctx = Arc::clone(&ctx);
        let outstanding = Arc::clone(&outstanding);
        let slots = slots.clone();
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let text = match message {
                    Ok(Message::Text(text)) => text.as_str().to_owned(),
                    Ok(Message::Binary(bytes)) => match conn::binary_text(&bytes) {
                        Ok(text) => text,
                        Err(_) => continue,
                    },
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(&text) else {
                    continue;
                };
                let (true, Some(id)) = (frame.kind == "reply", frame.id) else {
                    continue;
                };
                outstanding.fetch_sub(1, Ordering::Relaxed);
                if let Some(slots) = &slots {
                    slots.add_permits(1);
                }
                match frame.error {
                    None => accepted(&ctx, id - 1),
                    Some(error) => ctx.publish_failed(&format!("publish refused: {}", error.get())),
                }
            }
        })
    };
    let pad = "x".repeat(ctx.plan.payload);
    loop {
        // A slot first (the last reply, for a serial publisher), then the
        // next message, so its send time is stamped when it can leave.
        if let Some(slots) = &slots {
            let slot = tokio::select! {
                slot = slots.acquire() => slot.ok(),
                () = sleep_until(end) => None,
            };
            let Some(slot) = slot else { break };
            slot.forget();
        }
        let Some(k) = next_message(&ctx, start, end).await else {
            break;
        };
        let channel = &ctx.channels[(k % ctx.channels.len() as u64) as usize];
        let frame = format!(
            r#"{{"type":"publish","channel":"{channel}","data":{},"id":{}}}"#,
            payload(&ctx, k, &pad),
            k + 1
        );
        let message = match conn::command(ctx.plan.format, frame) {
            Ok(message) => message,
            Err(error) => {
                ctx.publish_failed(&format!("publisher: {error}"));
                break;
            }
        };
        outstanding.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = sink.send(message).await {
            ctx.publish_failed(&format!("publisher send: {error}"));
            break;
        }
    }
    // Wait for the last replies, bounded by the drain time.
    let deadline = Instant::now() + ctx.plan.drain;
    while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    let _ = sink.close().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_answer_has_one_reply_per_message() {
        let body = br#"{"replies":[{"ok":true,"offset":7,"epoch":"e1"},{"ok":true},{"error":"bad_request","message":"invalid channel"}]}"#;
        let replies = parse_batch_answer(body, 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replies[0].failure(), None);
        assert_eq!(replies[0].offset, Some(7));
        assert_eq!(replies[0].epoch.as_deref(), Some("e1"));
        assert_eq!(replies[1].failure(), None);
        assert_eq!(replies[1].offset, None);
        assert_eq!(
            replies[2].failure().as_deref(),
            Some("bad_request: invalid channel")
        );
        assert!(parse_batch_answer(body, 4)
            .err()
            .is_some_and(|e| e.contains("3 replies for 4 messages")));
        assert!(parse_batch_answer(b"{\"error\":\"x\"}", 1).is_err());
        let neither =
            parse_batch_answer(br#"{"replies":[{}]}"#, 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(neither[0].failure().is_some());
    }
}
