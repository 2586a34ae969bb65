//! One subscriber connection: bind a loopback source address, upgrade to a
//! WebSocket, wait for the welcome, subscribe, then read message frames until
//! the run stops, recording each message's latency from the timestamp the
//! publisher put in its payload.
//!
//! A connection is one task with one small read buffer; nothing else is kept
//! per connection unless the exactly-once ledger is on.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::conn::{close_reason, connect, next_text, welcome, ServerFrame, Ws};
use crate::context::Context;
use crate::stats::now_us;

/// Opening and subscribing one connection may take this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the publisher puts in `data`: message number and send time (µs).
#[derive(Deserialize)]
pub struct Payload {
    pub k: u64,
    pub ts: u64,
}

/// The messages one subscriber received, per subscribed channel, by
/// sequence number on that channel.
#[derive(Debug, Default)]
pub struct Received {
    /// (channel index, bit set of sequence numbers).
    pub channels: Vec<(usize, Vec<u64>)>,
    pub duplicates: u64,
}

impl Received {
    fn record(&mut self, channel: usize, seq: u64) {
        let Some((_, bits)) = self.channels.iter_mut().find(|(c, _)| *c == channel) else {
            return;
        };
        let word = (seq / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        if bits[word] & bit != 0 {
            self.duplicates += 1;
        }
        bits[word] |= bit;
    }

    pub fn has(bits: &[u64], seq: u64) -> bool {
        bits.get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }
}

/// Runs subscriber `i` until the run stops. The permit is held while the
/// connection opens, bounding handshakes in flight.
pub async fn run(ctx: Arc<Context>, i: usize, permit: OwnedSemaphorePermit) -> Option<Received> {
    let subscriptions = ctx.plan.subscriptions(i);
    let opened = tokio::time::timeout(OPEN_TIMEOUT, open(&ctx, i, &subscriptions)).await;
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            ctx.connect_failed(i, &error);
            return None;
        }
        Err(_) => {
            ctx.connect_failed(i, "timed out opening");
            return None;
        }
    };
    ctx.stats.opened();
    drop(permit);
    let mut received = ctx.plan.exactly_once.then(|| Received {
        channels: subscriptions.iter().map(|&c| (c, Vec::new())).collect(),
        duplicates: 0,
    });
    loop {
        let message = tokio::select! {
            () = ctx.stop.cancelled() => break,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                ctx.stats
                    .lost(close_reason(frame.map(|f| u16::from(f.code))));
                return received;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                ctx.stats.lost(error_kind(&error).to_owned());
                return received;
            }
            None => {
                ctx.stats.lost("eof".into());
                return received;
            }
        };
        let now = now_us();
        for line in text.as_str().split('\n') {
            take(&ctx, i, line, now, &subscriptions, &mut received);
        }
    }
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    received
}

fn error_kind(error: &WsError) -> &'static str {
    match error {
        WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => "reset",
        WsError::Protocol(_) => "protocol error",
        _ => "read error",
    }
}

/// Counts one message line received by subscriber `i` at `now`.
fn take(
    ctx: &Context,
    i: usize,
    line: &str,
    now: u64,
    subscriptions: &[usize],
    received: &mut Option<Received>,
) {
    let channel_count = ctx.channels.len() as u64;
    let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(line) else {
        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if frame.kind != "message" {
        if frame.error.is_some() {
            ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let payload = frame
        .data
        .and_then(|d| serde_json::from_str::<Payload>(d.get()).ok());
    let (Some(channel), Some(payload)) = (frame.channel, payload) else {
        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let index = (payload.k % channel_count.max(1)) as usize;
    let mine = subscriptions.contains(&index) && ctx.channels[index] == channel;
    if !mine {
        ctx.stats.strays.fetch_add(1, Ordering::Relaxed);
        return;
    }
    ctx.stats.delivered(i, payload.ts, now);
    if let Some(received) = received {
        received.record(index, payload.k / channel_count);
    }
}

/// Connects, waits for the welcome and subscribes to every channel in
/// `subscriptions`, waiting for each reply.
async fn open(ctx: &Context, i: usize, subscriptions: &[usize]) -> Result<Ws, String> {
    let source = SocketAddr::new(ctx.plan.source(i).into(), 0);
    let token = ctx.subscriber_token(i)?;
    let mut ws = connect(source, ctx.plan.target(i), &token, ctx.plan.batch).await?;
    welcome(&mut ws).await?;
    for (n, &channel) in subscriptions.iter().enumerate() {
        let command = serde_json::json!({
            "type": "subscribe",
            "channel": ctx.channels[channel],
            "id": n + 1,
        });
        ws.send(Message::text(command.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let mut pending = subscriptions.len();
    while pending > 0 {
        let text = next_text(&mut ws).await?;
        for line in text.split('\n') {
            let frame = serde_json::from_str::<ServerFrame<'_>>(line)
                .map_err(|_| format!("unexpected frame {line}"))?;
            if frame.kind == "reply" {
                if let Some(error) = frame.error {
                    return Err(format!("subscribe refused: {}", error.get()));
                }
                pending = pending.saturating_sub(1);
            }
        }
    }
    Ok(ws)
}
