//! One subscriber connection: bind a loopback source address, upgrade to a
//! WebSocket, wait for the welcome, subscribe, then read message frames until
//! the run stops, recording each message's latency from the timestamp the
//! publisher put in its payload. With `Transport::Sse` it opens an event
//! stream instead (`GET /sse?channel=...&token=...`), whose channels are
//! named in the request and confirmed by `subscription` events, then reads
//! `message` events the same way: every `data:` line is the frame a
//! WebSocket would get, so both count and time deliveries in one place.
//!
//! In the MessagePack format, frames are binary maps read back as their
//! JSON text. With `deflate`, a WebSocket subscriber offers
//! permessage-deflate and reads over a raw socket (`wsraw`), since
//! tungstenite cannot read compressed frames. Either way it adds the bytes
//! it read from its socket, once subscribed, to the run's wire bytes.
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

use crate::conn::{self, close_reason, connect, next_text, welcome, ServerFrame, Ws};
use crate::context::Context;
use crate::http_client::path_segment;
use crate::plan::{Format, Transport};
use crate::sse::{self, Line};
use crate::stats::now_us;
use crate::wsraw;

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
    match ctx.plan.transport {
        Transport::WebSocket if ctx.plan.deflate => run_raw(ctx, i, permit).await,
        Transport::WebSocket => run_ws(ctx, i, permit).await,
        Transport::Sse => run_sse(ctx, i, permit).await,
    }
}

/// What subscriber `i` keeps for the exactly-once check, if it is on.
fn ledger(ctx: &Context, subscriptions: &[usize]) -> Option<Received> {
    ctx.plan.exactly_once.then(|| Received {
        channels: subscriptions.iter().map(|&c| (c, Vec::new())).collect(),
        duplicates: 0,
    })
}

/// Subscriber `i`'s connection once `open` succeeds within
/// [`OPEN_TIMEOUT`] (counted as opened, its ramp permit given back), or
/// `None` after counting the failure.
async fn opened<T, E: std::fmt::Display>(
    ctx: &Context,
    i: usize,
    permit: OwnedSemaphorePermit,
    open: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    let connection = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            ctx.connect_failed(i, &error.to_string());
            return None;
        }
        Err(_) => {
            ctx.connect_failed(i, "timed out opening");
            return None;
        }
    };
    ctx.stats.opened();
    drop(permit);
    Some(connection)
}

async fn run_ws(ctx: Arc<Context>, i: usize, permit: OwnedSemaphorePermit) -> Option<Received> {
    let subscriptions = ctx.plan.subscriptions(i);
    let mut ws = opened(&ctx, i, permit, open(&ctx, i, &subscriptions)).await?;
    let mut received = ledger(&ctx, &subscriptions);
    // Count from here: the handshake and the subscribe replies are not deliveries.
    ws.get_mut().take_read();
    loop {
        let message = tokio::select! {
            () = ctx.stop.cancelled() => break,
            message = ws.next() => message,
        };
        ctx.stats
            .wire_bytes
            .fetch_add(ws.get_mut().take_read(), Ordering::Relaxed);
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(bytes))) => {
                let now = now_us();
                match conn::binary_text(&bytes) {
                    Ok(text) => {
                        let _ = take(&ctx, i, &text, now, &subscriptions, &mut received);
                    }
                    Err(_) => {
                        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
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
            // A WebSocket ends with a close frame, never a `close` event.
            let _ = take(&ctx, i, line, now, &subscriptions, &mut received);
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

/// Counts one message line received by subscriber `i` at `now`; for a
/// `close` frame (an event stream's last), returns why it closed.
fn take(
    ctx: &Context,
    i: usize,
    line: &str,
    now: u64,
    subscriptions: &[usize],
    received: &mut Option<Received>,
) -> Option<String> {
    let channel_count = ctx.channels.len() as u64;
    let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(line) else {
        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    if frame.kind == "close" {
        return Some(close_reason(frame.code));
    }
    if frame.kind != "message" {
        if frame.error.is_some() {
            ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        return None;
    }
    let payload = frame
        .data
        .and_then(|d| serde_json::from_str::<Payload>(d.get()).ok());
    let (Some(channel), Some(payload)) = (frame.channel, payload) else {
        ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let index = (payload.k % channel_count.max(1)) as usize;
    let mine = subscriptions.contains(&index) && ctx.channels[index] == channel;
    if !mine {
        ctx.stats.strays.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    ctx.stats.delivered(i, payload.ts, now);
    if let Some(received) = received {
        received.record(index, payload.k / channel_count);
    }
    None
}

/// Connects, waits for the welcome and subscribes to every channel in
/// `subscriptions`, waiting for each reply.
async fn open(ctx: &Context, i: usize, subscriptions: &[usize]) -> Result<Ws, String> {
    let source = SocketAddr::new(ctx.plan.source(i).into(), 0);
    let token = ctx.subscriber_token(i)?;
    let format = ctx.plan.format;
    let mut ws = connect(source, ctx.plan.target(i), &token, ctx.plan.batch, format).await?;
    welcome(&mut ws).await?;
    for (n, &channel) in subscriptions.iter().enumerate() {
        ws.send(conn::command(format, subscribe(ctx, channel, n))?)
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

/// The `subscribe` command for channel index `channel`, with id `n + 1`.
fn subscribe(ctx: &Context, channel: usize, n: usize) -> String {
    serde_json::json!({
        "type": "subscribe",
        "channel": ctx.channels[channel],
        "id": n + 1,
    })
    .to_string()
}

/// A message's JSON text: a text frame as it is, a binary one (MessagePack)
/// translated.
fn message_text(binary: bool, payload: Vec<u8>) -> Result<String, String> {
    if binary {
        conn::binary_text(&payload)
    } else {
        String::from_utf8(payload).map_err(|_| "a text frame that is not UTF-8".to_owned())
    }
}

/// Subscriber `i` over a raw socket with permessage-deflate, until the run
/// stops or the connection ends: messages are handled as they are parsed,
/// pongs sent before each read.
async fn run_raw(ctx: Arc<Context>, i: usize, permit: OwnedSemaphorePermit) -> Option<Received> {
    let subscriptions = ctx.plan.subscriptions(i);
    let mut socket = opened(&ctx, i, permit, open_raw(&ctx, i, &subscriptions)).await?;
    let mut received = ledger(&ctx, &subscriptions);
    socket.take_read();
    let mut now = now_us();
    loop {
        loop {
            let message = match socket.buffered() {
                Ok(Some(wsraw::Received::Message { binary, payload })) => {
                    message_text(binary, payload)
                }
                Ok(Some(wsraw::Received::Close(code))) => {
                    ctx.stats.lost(close_reason(code));
                    return received;
                }
                Ok(None) => break,
                Err(_) => {
                    ctx.stats.lost("protocol error".into());
                    return received;
                }
            };
            match message {
                Ok(text) => {
                    for line in text.split('\n') {
                        let _ = take(&ctx, i, line, now, &subscriptions, &mut received);
                    }
                }
                Err(_) => {
                    ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if socket.flush().await.is_err() {
            ctx.stats.lost("reset".into());
            return received;
        }
        let filled = tokio::select! {
            () = ctx.stop.cancelled() => break,
            filled = socket.fill() => filled,
        };
        now = now_us();
        ctx.stats
            .wire_bytes
            .fetch_add(socket.take_read(), Ordering::Relaxed);
        match filled {
            Ok(true) => {}
            Ok(false) => {
                ctx.stats.lost("eof".into());
                return received;
            }
            Err(_) => {
                ctx.stats.lost("reset".into());
                return received;
            }
        }
    }
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close()).await;
    received
}

/// [`open`] over a raw socket offering permessage-deflate.
async fn open_raw(
    ctx: &Context,
    i: usize,
    subscriptions: &[usize],
) -> Result<wsraw::Socket, String> {
    let source = SocketAddr::new(ctx.plan.source(i).into(), 0);
    let token = ctx.subscriber_token(i)?;
    let format = ctx.plan.format;
    let binary = format == Format::MsgPack;
    let path = format!(
        "/ws?token={token}{}",
        if ctx.plan.batch { "&batch=1" } else { "" }
    );
    let mut socket = wsraw::connect(source, ctx.plan.target(i), &path, format, true).await?;
    let text = match socket.recv().await? {
        wsraw::Received::Message { binary, payload } => message_text(binary, payload)?,
        wsraw::Received::Close(code) => return Err(close_reason(code)),
    };
    match serde_json::from_str::<ServerFrame<'_>>(&text) {
        Ok(frame) if frame.kind == "welcome" => {}
        _ => return Err(format!("expected a welcome, got {text}")),
    }
    for (n, &channel) in subscriptions.iter().enumerate() {
        let command = subscribe(ctx, channel, n);
        let payload = match format {
            Format::Json => command.into_bytes(),
            Format::MsgPack => switchboard_protocol::msgpack::to_msgpack(&command)?,
        };
        socket.send_message(binary, &payload).await?;
    }
    let mut pending = subscriptions.len();
    while pending > 0 {
        let text = match socket.recv().await? {
            wsraw::Received::Message { binary, payload } => message_text(binary, payload)?,
            wsraw::Received::Close(code) => return Err(close_reason(code)),
        };
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
    Ok(socket)
}

/// Subscriber `i` over server-sent events, until the run stops or the
/// stream ends. Lines are handled as they arrive: every `data:` line is one
/// frame; `id:` lines, heartbeat comments and blank lines carry nothing the
/// load tool counts.
async fn run_sse(ctx: Arc<Context>, i: usize, permit: OwnedSemaphorePermit) -> Option<Received> {
    let subscriptions = ctx.plan.subscriptions(i);
    let mut stream = opened(&ctx, i, permit, open_sse(&ctx, i, &subscriptions)).await?;
    let mut received = ledger(&ctx, &subscriptions);
    let mut now = now_us();
    loop {
        loop {
            let line = match stream.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(_) => {
                    ctx.stats.lost("protocol error".into());
                    return received;
                }
            };
            let Ok(text) = std::str::from_utf8(&line) else {
                ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if let Line::Data(frame) = sse::classify(text) {
                if let Some(why) = take(&ctx, i, frame, now, &subscriptions, &mut received) {
                    ctx.stats.lost(why);
                    return received;
                }
            }
        }
        let filled = tokio::select! {
            () = ctx.stop.cancelled() => break,
            filled = stream.fill() => filled,
        };
        now = now_us();
        match filled {
            Ok(true) => {}
            Ok(false) => {
                ctx.stats.lost("eof".into());
                return received;
            }
            Err(_) => {
                ctx.stats.lost("reset".into());
                return received;
            }
        }
    }
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
    received
}

/// Opens the event stream of subscriber `i` with its channels in the
/// request, waits for the welcome and one `subscription` event per channel.
async fn open_sse(ctx: &Context, i: usize, subscriptions: &[usize]) -> Result<sse::Stream, String> {
    let source = SocketAddr::new(ctx.plan.source(i).into(), 0);
    let token = ctx.subscriber_token(i)?;
    let mut path = String::from("/sse?");
    for &channel in subscriptions {
        path.push_str("channel=");
        path.push_str(&path_segment(&ctx.channels[channel]));
        path.push('&');
    }
    path.push_str("token=");
    path.push_str(&token);
    let mut stream = sse::connect(source, ctx.plan.target(i), &path).await?;
    let data = stream.next_data().await?;
    match serde_json::from_str::<ServerFrame<'_>>(&data) {
        Ok(frame) if frame.kind == "welcome" => {}
        _ => return Err(format!("expected a welcome, got {data}")),
    }
    let mut pending = subscriptions.len();
    while pending > 0 {
        let data = stream.next_data().await?;
        let frame = serde_json::from_str::<ServerFrame<'_>>(&data)
            .map_err(|_| format!("unexpected event {data}"))?;
        match frame.kind {
            "subscription" => {
                if let Some(error) = frame.error {
                    return Err(format!("subscribe refused: {}", error.get()));
                }
                pending -= 1;
            }
            "close" => return Err(format!("closed while opening: {data}")),
            _ => {}
        }
    }
    Ok(stream)
}
