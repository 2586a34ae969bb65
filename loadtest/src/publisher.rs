//! Publishers: several workers share one message counter `k`. Each takes the
//! next `k`, waits until it is due (fixed rate) or until the in-flight window
//! has room (saturation), stamps the send time into the payload and
//! publishes it, through the server API or as a WebSocket client.
//!
//! The send time is taken just before the message leaves, so a publisher that
//! falls behind its schedule does not show up as delivery latency; the
//! progress line shows the publish rate, which tells when that happens.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, ServerFrame};
use crate::context::Context;
use crate::stats::now_us;

/// Waits for the next message this worker should publish; `None` when the
/// publishing phase is over.
async fn next_message(ctx: &Context, start: Instant, end: Instant) -> Option<u64> {
    let k = ctx.next_k.fetch_add(1, Ordering::Relaxed);
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

/// The `data` of message `k`.
fn payload(k: u64, pad: &str) -> String {
    format!(r#"{{"k":{k},"ts":{},"p":"{pad}"}}"#, now_us())
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

/// Publishes through `POST /api/publish` over one keep-alive connection
/// until `end`.
pub async fn api(ctx: Arc<Context>, start: Instant, end: Instant) {
    let target = ctx.plan.publish_target();
    let Some(key) = ctx.plan.api_key.clone() else {
        eprintln!("publishing through the API needs --api-key");
        ctx.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let auth = format!("Bearer {key}");
    let pad = "x".repeat(ctx.plan.payload);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while let Some(k) = next_message(&ctx, start, end).await {
        let channel = &ctx.channels[(k % ctx.channels.len() as u64) as usize];
        let body = format!(r#"{{"channel":"{channel}","data":{}}}"#, payload(k, &pad));
        if sender.is_none() {
            match http_connect(target).await {
                Ok(s) => sender = Some(s),
                Err(error) => {
                    ctx.publish_failed(&error);
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        match api_publish(s, target, &auth, body).await {
            Ok(()) => accepted(&ctx, k),
            Err(error) => {
                ctx.publish_failed(&error);
                sender = None;
            }
        }
    }
}

async fn http_connect(target: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("api connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("api handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn api_publish(
    sender: &mut SendRequest<Full<Bytes>>,
    target: SocketAddr,
    auth: &str,
    body: String,
) -> Result<(), String> {
    sender.ready().await.map_err(|e| format!("api: {e}"))?;
    let request = Request::post("/api/publish")
        .header(header::HOST, target.to_string())
        .header(header::AUTHORIZATION, auth)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("api request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("api: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("api body: {e}"))?
        .to_bytes();
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!(
            "api publish: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        ))
    }
}

/// Publishes as WebSocket client `n` (a token granted `bench:*`) until `end`,
/// pipelining `publish` commands; every command carries `id = k + 1` and
/// counts as accepted when its positive reply arrives.
pub async fn client(ctx: Arc<Context>, n: usize, start: Instant, end: Instant) {
    let target = ctx.plan.publish_target();
    let source = SocketAddr::new(ctx.plan.source(n).into(), 0);
    let opened = async {
        let token = ctx.publisher_token(n)?;
        let mut ws = conn::connect(source, target, &token, false).await?;
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
    let reader = {
        let ctx = Arc::clone(&ctx);
        let outstanding = Arc::clone(&outstanding);
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let Ok(Message::Text(text)) = message else {
                    if message.is_err() {
                        break;
                    }
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) else {
                    continue;
                };
                let (true, Some(id)) = (frame.kind == "reply", frame.id) else {
                    continue;
                };
                outstanding.fetch_sub(1, Ordering::Relaxed);
                match frame.error {
                    None => accepted(&ctx, id - 1),
                    Some(error) => ctx.publish_failed(&format!("publish refused: {}", error.get())),
                }
            }
        })
    };
    let pad = "x".repeat(ctx.plan.payload);
    while let Some(k) = next_message(&ctx, start, end).await {
        let channel = &ctx.channels[(k % ctx.channels.len() as u64) as usize];
        let frame = format!(
            r#"{{"type":"publish","channel":"{channel}","data":{},"id":{}}}"#,
            payload(k, &pad),
            k + 1
        );
        outstanding.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = sink.send(Message::text(frame)).await {
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
