//! A run from start to end: ramp up the subscriber connections, publish for
//! the planned duration, wait for the last deliveries, close everything and
//! report. Every phase has a deadline, so a run always ends by itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::plan::{Plan, PublishVia};
use crate::stats::{now_us, Ledger, Percentiles, Report, Window};
use crate::subscriber::{self, Received};
use crate::{cpu, history, publisher};

/// Runs a plan to its end and reports what it measured.
pub async fn run(plan: Plan) -> Report {
    let ctx = Arc::new(Context::new(plan));
    let started = Instant::now();
    let progress = CancellationToken::new();
    if ctx.plan.progress {
        tokio::spawn(show_progress(
            Arc::clone(&ctx),
            started,
            progress.child_token(),
        ));
    }

    let subscribers = ramp(&ctx, started).await;
    if ctx.plan.progress {
        eprintln!(
            "ramp done in {:.1}s: {} open, {} failed",
            started.elapsed().as_secs_f64(),
            ctx.stats.open.load(Ordering::Relaxed),
            ctx.stats.connect_errors.load(Ordering::Relaxed)
        );
    }

    let (measured, window) = publish(&ctx).await;
    drain(&ctx).await;
    progress.cancel();
    ctx.stop.cancel();
    let received: Vec<Received> = subscribers.join_all().await.into_iter().flatten().collect();
    let ledger = ctx.acks.as_ref().map(|acks| {
        let acks = acks.lock().unwrap_or_else(|e| e.into_inner());
        check_exactly_once(&ctx, &acks, &received)
    });
    let mut report = ctx.stats.report(measured, ledger);
    report.undelivered = ctx
        .expected
        .load(Ordering::Relaxed)
        .saturating_sub(ctx.stats.deliveries.load(Ordering::Relaxed));
    if let Some(window) = &window {
        report.set_window(window);
    }
    if ctx.plan.via == PublishVia::Batch {
        report.batch = Some(ctx.stats.batch_figures(ctx.plan.batch_size));
    }
    if ctx.plan.history_check {
        if ctx.plan.progress {
            eprintln!("reading history back...");
        }
        report.history_check = history::check(Arc::clone(&ctx)).await;
    }
    report
}

/// Opens the subscriber connections at the planned rate; returns once every
/// attempt has finished (opened or failed) or the ramp deadline passed.
async fn ramp(ctx: &Arc<Context>, started: Instant) -> JoinSet<Option<Received>> {
    let plan = &ctx.plan;
    let deadline = started + plan.ramp_timeout;
    let concurrency = plan.connect_concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut subscribers = JoinSet::new();
    for i in 0..plan.connections {
        if plan.ramp_rate > 0.0 {
            sleep_until(started + Duration::from_secs_f64(i as f64 / plan.ramp_rate)).await;
        }
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.ok(),
            () = sleep_until(deadline) => None,
        };
        let Some(permit) = permit else {
            let left = (plan.connections - i) as u64;
            ctx.stats.connect_errors.fetch_add(left, Ordering::Relaxed);
            eprintln!("error: ramp deadline passed; {left} connections not attempted");
            break;
        };
        subscribers.spawn(subscriber::run(Arc::clone(ctx), i, permit));
    }
    // Every permit back means every handshake finished.
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        () = sleep_until(deadline) => eprintln!("error: ramp deadline passed with handshakes in flight"),
    }
    subscribers
}

/// Publishes for the planned duration; returns how long deliveries were
/// measured, and what the measured window saw (publishes accepted in it,
/// the watched processes' CPU time).
async fn publish(ctx: &Arc<Context>) -> (Duration, Option<Window>) {
    let plan = &ctx.plan;
    let start = Instant::now();
    let end = start + plan.duration;
    ctx.stats
        .measure_from_us
        .store(now_us() + plan.warmup.as_micros() as u64, Ordering::Relaxed);
    if ctx.channels.is_empty() || plan.publishers == 0 {
        // Nothing to publish: hold the connections.
        tokio::select! {
            () = sleep_until(end) => {}
            () = ctx.stop.cancelled() => {}
        }
        return (Duration::ZERO, None);
    }
    // The measured window: from the end of the warm-up to the end of
    // publishing. Publishes accepted and CPU used are read at both ends.
    let window = {
        let ctx = Arc::clone(ctx);
        let (from, to) = (start + plan.warmup, end);
        tokio::spawn(async move {
            let (servers, redis) = (&ctx.plan.server_pids, &ctx.plan.redis_pids);
            sleep_until(from).await;
            let published = ctx.stats.published.load(Ordering::Relaxed);
            let (servers_before, redis_before) = (cpu::cpu_times(servers), cpu::cpu_times(redis));
            sleep_until(to).await;
            Window {
                published: ctx.stats.published.load(Ordering::Relaxed) - published,
                servers: cpu::used(&servers_before, &cpu::cpu_times(servers)),
                redis: cpu::used(&redis_before, &cpu::cpu_times(redis)),
                server_pids: servers.clone(),
                redis_pids: redis.clone(),
            }
        })
    };
    let mut workers = JoinSet::new();
    for n in 0..plan.publishers {
        let ctx = Arc::clone(ctx);
        match plan.via {
            PublishVia::Api => workers.spawn(publisher::api(ctx, n, start, end)),
            PublishVia::Client => workers.spawn(publisher::client(ctx, n, start, end)),
            PublishVia::Batch => workers.spawn(publisher::batch(ctx, n, start, end)),
        };
    }
    workers.join_all().await;
    if Instant::now() + Duration::from_millis(100) < end {
        // Every publisher gave up (say, a gateway without the batch API):
        // nothing left to measure.
        window.abort();
        return (Duration::ZERO, None);
    }
    (plan.duration.saturating_sub(plan.warmup), window.await.ok())
}

/// Waits until every owed delivery arrived, nothing arrived for half a
/// second, or the drain time is up.
async fn drain(ctx: &Context) {
    let deadline = Instant::now() + ctx.plan.drain;
    let mut last = ctx.stats.deliveries.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let now = ctx.stats.deliveries.load(Ordering::Relaxed);
        let owed = ctx.expected.load(Ordering::Relaxed);
        if now >= owed {
            return;
        }
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_millis(500) {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Compares what every subscriber received with what the gateway accepted.
fn check_exactly_once(ctx: &Context, acks: &[u64], received: &[Received]) -> Ledger {
    let channels = ctx.channels.len().max(1) as u64;
    let published = acks.len() as u64 * 64;
    let mut ledger = Ledger::default();
    let mut lost: Vec<u64> = Vec::new();
    for subscriber in received {
        ledger.duplicates += subscriber.duplicates;
        for (channel, bits) in &subscriber.channels {
            ledger.streams += 1;
            let mut k = *channel as u64;
            while k < published.max(bits.len() as u64 * 64 * channels) {
                let acked = Received::has(acks, k);
                let got = Received::has(bits, k / channels);
                match (acked, got) {
                    (true, false) => {
                        ledger.missing += 1;
                        let word = (k / 64) as usize;
                        if lost.len() <= word {
                            lost.resize(word + 1, 0);
                        }
                        lost[word] |= 1u64 << (k % 64);
                    }
                    (false, true) => ledger.unacknowledged += 1,
                    _ => {}
                }
                k += channels;
            }
        }
    }
    ledger.lost_messages = lost.iter().map(|w| u64::from(w.count_ones())).sum();
    ledger
}

/// Prints one line a second: connections, publish and delivery rates, and
/// the latency of the last second.
async fn show_progress(ctx: Arc<Context>, started: Instant, done: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut published, mut delivered) = (0, 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = done.cancelled() => return,
        }
        let stats = &ctx.stats;
        let now_published = stats.published.load(Ordering::Relaxed);
        let now_delivered = stats.deliveries.load(Ordering::Relaxed);
        let latency = Percentiles::of(&stats.take_interval());
        eprintln!(
            "[{:>4.0}s] open {}/{} failed {} lost {} | published {} ({}/s) | delivered {} ({}/s) | p50 {:.2}ms p99 {:.2}ms max {:.2}ms | errors {}",
            started.elapsed().as_secs_f64(),
            stats.open.load(Ordering::Relaxed),
            ctx.plan.connections,
            stats.connect_errors.load(Ordering::Relaxed),
            stats.disconnects.load(Ordering::Relaxed),
            now_published,
            now_published - published,
            now_delivered,
            now_delivered - delivered,
            latency.p50 as f64 / 1000.0,
            latency.p99 as f64 / 1000.0,
            latency.max as f64 / 1000.0,
            stats.errors.load(Ordering::Relaxed) + stats.publish_errors.load(Ordering::Relaxed),
        );
        published = now_published;
        delivered = now_delivered;
    }
}
