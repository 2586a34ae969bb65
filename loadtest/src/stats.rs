//! Counters and latency histograms shared by every connection task, and the
//! report a run ends with.
//!
//! Latency goes into HDR histograms (microseconds, 3 significant digits).
//! One histogram per connection would cost tens of KiB each, so connections
//! share a few mutex-guarded shards; a lock is held for one `record`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

const SHARDS: usize = 16;
/// Latencies above this (60 s, in µs) are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Microseconds since the Unix epoch; every process on the machine agrees on it.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct Shard {
    /// Every measured delivery of the run.
    total: Histogram<u64>,
    /// Deliveries since the last progress line.
    interval: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// Live counters of a run.
pub struct Stats {
    /// Subscriber connections open now (welcomed and subscribed).
    pub open: AtomicU64,
    /// Most subscriber connections open at once.
    pub peak_open: AtomicU64,
    /// Connections that failed to open (refused, timed out, closed early).
    pub connect_errors: AtomicU64,
    /// Connections the server closed (or that broke) while the run went on.
    pub disconnects: AtomicU64,
    /// Error replies and frames that could not be understood.
    pub errors: AtomicU64,
    /// Messages the gateway accepted (API 200 or a positive reply).
    pub published: AtomicU64,
    /// Publish attempts that failed.
    pub publish_errors: AtomicU64,
    /// Messages received by subscribers.
    pub deliveries: AtomicU64,
    /// Messages received on a channel the connection did not subscribe to.
    pub strays: AtomicU64,
    /// Bytes WebSocket subscribers read from their sockets once subscribed
    /// (frame headers, compressed payloads, heartbeats: what crossed the wire).
    pub wire_bytes: AtomicU64,
    /// Deliveries of messages sent before this time (µs) are not measured.
    pub measure_from_us: AtomicU64,
    /// `POST /api/batch` requests answered 200, and those that failed
    /// (HTTP error or broken connection), with the last failure's text.
    pub batch_requests: AtomicU64,
    pub batch_request_errors: AtomicU64,
    pub last_request_error: Mutex<Option<String>>,
    /// Messages of a 200 batch whose own reply was an error.
    pub message_errors: AtomicU64,
    close_codes: Mutex<BTreeMap<String, u64>>,
    shards: Vec<Mutex<Shard>>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            open: AtomicU64::new(0),
            peak_open: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            strays: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            measure_from_us: AtomicU64::new(u64::MAX),
            batch_requests: AtomicU64::new(0),
            batch_request_errors: AtomicU64::new(0),
            last_request_error: Mutex::new(None),
            message_errors: AtomicU64::new(0),
            close_codes: Mutex::new(BTreeMap::new()),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        total: histogram(),
                        interval: histogram(),
                    })
                })
                .collect(),
        }
    }
}

impl Stats {
    /// Records one delivery seen by connection `conn`, sent at `sent_us`.
    pub fn delivered(&self, conn: usize, sent_us: u64, now_us: u64) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        if sent_us < self.measure_from_us.load(Ordering::Relaxed) {
            return;
        }
        let latency = now_us.saturating_sub(sent_us).clamp(1, MAX_LATENCY_US);
        let mut shard = self.shards[conn % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.total.saturating_record(latency);
        shard.interval.saturating_record(latency);
    }

    pub fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
    }

    /// A connection lost while the run went on, with why (a close code or
    /// "reset").
    pub fn lost(&self, why: String) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        *self
            .close_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    /// Merges and clears the per-interval histograms.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut merged = histogram();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let _ = merged.add(&shard.interval);
            shard.interval.reset();
        }
        merged
    }

    fn total(&self) -> Histogram<u64> {
        let mut merged = histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let _ = merged.add(&shard.total);
        }
        merged
    }

    /// The final report; `measured` is how long deliveries were measured.
    pub fn report(&self, measured: Duration, exactly_once: Option<Ledger>) -> Report {
        let latency = self.total();
        let measured_deliveries = latency.len();
        let secs = measured.as_secs_f64().max(1e-9);
        let deliveries = self.deliveries.load(Ordering::Relaxed);
        let wire_bytes = self.wire_bytes.load(Ordering::Relaxed);
        Report {
            connections_open: self.open.load(Ordering::Relaxed),
            connections_peak: self.peak_open.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            disconnect_reasons: self
                .close_codes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            errors: self.errors.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            deliveries,
            strays: self.strays.load(Ordering::Relaxed),
            wire_bytes,
            wire_bytes_per_delivery: (deliveries > 0 && wire_bytes > 0)
                .then(|| wire_bytes as f64 / deliveries as f64),
            measured_secs: measured.as_secs_f64(),
            measured_deliveries,
            deliveries_per_sec: measured_deliveries as f64 / secs,
            latency_us: Percentiles::of(&latency),
            exactly_once,
            undelivered: 0,
            published_in_window: 0,
            publishes_per_sec: 0.0,
            server_cpu_secs: None,
            server_cpu_us_per_delivery: None,
            servers: Vec::new(),
            redis_cpu_secs: None,
            redis_cpu_us_per_publish: None,
            redis: Vec::new(),
            batch: None,
            history_check: None,
        }
    }

    /// The batch API figures, for a run that published through it.
    pub fn batch_figures(&self, size: usize) -> BatchFigures {
        BatchFigures {
            size,
            requests: self.batch_requests.load(Ordering::Relaxed),
            request_errors: self.batch_request_errors.load(Ordering::Relaxed),
            message_errors: self.message_errors.load(Ordering::Relaxed),
            last_request_error: self
                .last_request_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} p90 {} p99 {} p999 {} max {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        )
    }
}

/// The exactly-once check over every subscriber.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ledger {
    /// (subscriber, channel) pairs checked.
    pub streams: u64,
    /// Accepted messages a subscriber of their channel never received.
    pub missing: u64,
    /// Messages a subscriber received more than once.
    pub duplicates: u64,
    /// Messages received that the gateway never acknowledged (a failed
    /// publish that went out anyway); not an error.
    pub unacknowledged: u64,
    /// Accepted messages that at least one subscriber of their channel
    /// never received (each counted once, however many missed it).
    pub lost_messages: u64,
}

impl Ledger {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.duplicates == 0
    }
}

/// The check of every accepted batch message against the channels'
/// history, read back after publishing (`--history-check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryCheck {
    /// Channels read back.
    pub channels: u64,
    /// Accepted messages checked.
    pub accepted: u64,
    /// Found at their offset (or, without an offset, by number).
    pub found: u64,
    /// Not in history where their reply said, or their epoch is gone.
    pub missing: u64,
    /// Older than the oldest message history still holds (the namespace's
    /// `history_size` is too small for the run): not checkable.
    pub trimmed: u64,
    /// Places where consecutive stored messages skip an offset.
    pub gaps: u64,
    /// Stored messages of one publisher not in the order it sent them.
    pub out_of_order: u64,
    /// Messages stored twice.
    pub duplicates: u64,
    /// Stored messages the run never saw accepted (a failed request that
    /// went through); not an error.
    pub unaccepted: u64,
    /// History reads that failed.
    pub read_errors: u64,
}

impl HistoryCheck {
    /// Every accepted message found, nothing wrong; a check of nothing
    /// (no message accepted) proves nothing and is not ok.
    pub fn ok(&self) -> bool {
        self.accepted > 0
            && self.missing == 0
            && self.trimmed == 0
            && self.gaps == 0
            && self.out_of_order == 0
            && self.duplicates == 0
            && self.read_errors == 0
            && self.found == self.accepted
    }

    pub fn add(&mut self, other: &HistoryCheck) {
        self.channels += other.channels;
        self.accepted += other.accepted;
        self.found += other.found;
        self.missing += other.missing;
        self.trimmed += other.trimmed;
        self.gaps += other.gaps;
        self.out_of_order += other.out_of_order;
        self.duplicates += other.duplicates;
        self.unaccepted += other.unaccepted;
        self.read_errors += other.read_errors;
    }
}

impl fmt::Display for HistoryCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} channels, {} accepted: {} found, {} missing, {} trimmed, {} gaps, {} out of order, {} duplicates, {} read errors ({} stored unaccepted) -> {}",
            self.channels,
            self.accepted,
            self.found,
            self.missing,
            self.trimmed,
            self.gaps,
            self.out_of_order,
            self.duplicates,
            self.read_errors,
            self.unaccepted,
            if self.ok() { "OK" } else { "FAILED" }
        )
    }
}

/// What the batch publishers saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchFigures {
    /// Messages per request.
    pub size: usize,
    /// Requests answered 200.
    pub requests: u64,
    /// Requests that failed as a whole (an HTTP error, a broken connection,
    /// a reply that does not hold one answer per message).
    pub request_errors: u64,
    /// Messages of answered requests whose own answer was an error.
    pub message_errors: u64,
    /// The last whole-request failure, e.g. `HTTP 404 Not Found: ...`.
    pub last_request_error: Option<String>,
}

/// The CPU time of one process over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub cpu_secs: Option<f64>,
    /// Per message accepted within the window.
    pub cpu_us_per_publish: Option<f64>,
    /// Per delivery measured within the window.
    pub cpu_us_per_delivery: Option<f64>,
}

/// What was read at the start and the end of the measured window: how many
/// publishes were accepted in it, and the CPU time each watched process used.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub published: u64,
    pub server_pids: Vec<u32>,
    pub servers: Vec<Option<Duration>>,
    pub redis_pids: Vec<u32>,
    pub redis: Vec<Option<Duration>>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections_open: u64,
    pub connections_peak: u64,
    pub connect_errors: u64,
    pub disconnects: u64,
    pub disconnect_reasons: BTreeMap<String, u64>,
    pub errors: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub deliveries: u64,
    pub strays: u64,
    /// Bytes WebSocket subscribers read from their sockets once subscribed,
    /// and that over every delivery of the run (`None` when nothing was
    /// delivered or the subscribers are event streams).
    pub wire_bytes: u64,
    pub wire_bytes_per_delivery: Option<f64>,
    pub measured_secs: f64,
    pub measured_deliveries: u64,
    pub deliveries_per_sec: f64,
    pub latency_us: Percentiles,
    pub exactly_once: Option<Ledger>,
    /// Deliveries owed for the accepted messages that had not arrived when
    /// the run ended (0 when every subscriber got every accepted message).
    pub undelivered: u64,
    /// Messages accepted (acknowledged) within the measured window, and per
    /// second of it.
    pub published_in_window: u64,
    pub publishes_per_sec: f64,
    /// CPU time (user + system) of the `--server-pid` processes over the
    /// measured window, in seconds, and per measured delivery in µs.
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Each `--server-pid` process, in the order given.
    pub servers: Vec<ProcessCpu>,
    /// CPU time of the `--redis-pid` processes (summed: every shard of a
    /// Cluster) over the measured window, and per accepted publish in µs.
    pub redis_cpu_secs: Option<f64>,
    pub redis_cpu_us_per_publish: Option<f64>,
    pub redis: Vec<ProcessCpu>,
    /// Publishing through `POST /api/batch`.
    pub batch: Option<BatchFigures>,
    /// The history read-back (`--history-check`).
    pub history_check: Option<HistoryCheck>,
}

impl Report {
    /// Records the servers' CPU time over the measured window.
    pub fn set_server_cpu(&mut self, cpu: Option<Duration>) {
        self.server_cpu_secs = cpu.map(|c| c.as_secs_f64());
        self.server_cpu_us_per_delivery = cpu
            .filter(|_| self.measured_deliveries > 0)
            .map(|c| c.as_secs_f64() * 1e6 / self.measured_deliveries as f64);
    }

    /// Records what the measured window saw: publishes accepted in it and
    /// the CPU time of the watched processes.
    pub fn set_window(&mut self, window: &Window) {
        let publishes = window.published;
        let deliveries = self.measured_deliveries;
        self.published_in_window = publishes;
        self.publishes_per_sec = publishes as f64 / self.measured_secs.max(1e-9);
        let per = |cpu: Option<Duration>, n: u64| {
            cpu.filter(|_| n > 0)
                .map(|c| c.as_secs_f64() * 1e6 / n as f64)
        };
        let processes = |pids: &[u32], cpu: &[Option<Duration>]| -> Vec<ProcessCpu> {
            pids.iter()
                .zip(cpu)
                .map(|(&pid, &cpu)| ProcessCpu {
                    pid,
                    cpu_secs: cpu.map(|c| c.as_secs_f64()),
                    cpu_us_per_publish: per(cpu, publishes),
                    cpu_us_per_delivery: per(cpu, deliveries),
                })
                .collect()
        };
        self.servers = processes(&window.server_pids, &window.servers);
        self.redis = processes(&window.redis_pids, &window.redis);
        if !window.servers.is_empty() {
            self.set_server_cpu(window.servers.iter().copied().sum());
        }
        if !window.redis.is_empty() {
            let redis: Option<Duration> = window.redis.iter().copied().sum();
            self.redis_cpu_secs = redis.map(|c| c.as_secs_f64());
            self.redis_cpu_us_per_publish = per(redis, publishes);
        }
    }

    /// True when nothing went wrong that the run can see.
    pub fn clean(&self) -> bool {
        self.connect_errors == 0
            && self.disconnects == 0
            && self.errors == 0
            && self.publish_errors == 0
            && self.strays == 0
            && self.exactly_once.as_ref().is_none_or(Ledger::ok)
            && self
                .batch
                .as_ref()
                .is_none_or(|b| b.request_errors == 0 && b.message_errors == 0)
            && self.history_check.as_ref().is_none_or(HistoryCheck::ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "connections   open {} (peak {}), failed to open {}, lost {} {:?}",
            self.connections_open,
            self.connections_peak,
            self.connect_errors,
            self.disconnects,
            self.disconnect_reasons
        )?;
        writeln!(
            f,
            "published     {} accepted, {} failed; {} accepted in the measured window = {:.0}/s",
            self.published, self.publish_errors, self.published_in_window, self.publishes_per_sec
        )?;
        if let Some(batch) = &self.batch {
            writeln!(
                f,
                "batch         {} requests of {} answered, {} failed{}; {} per-message errors",
                batch.requests,
                batch.size,
                batch.request_errors,
                batch
                    .last_request_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (last: {e})")),
                batch.message_errors
            )?;
        }
        writeln!(
            f,
            "deliveries    {} in all; {} measured over {:.1}s = {:.0}/s",
            self.deliveries, self.measured_deliveries, self.measured_secs, self.deliveries_per_sec
        )?;
        writeln!(f, "latency       {}", self.latency_us)?;
        if let Some(per) = self.wire_bytes_per_delivery {
            writeln!(
                f,
                "wire          {} bytes read by subscribers = {per:.1} B per delivery",
                self.wire_bytes
            )?;
        }
        writeln!(
            f,
            "undelivered   {} deliveries owed for accepted messages never arrived",
            self.undelivered
        )?;
        if let (Some(secs), Some(per)) = (self.server_cpu_secs, self.server_cpu_us_per_delivery) {
            writeln!(
                f,
                "server cpu    {secs:.2}s user+system over the window = {per:.2} µs per delivery"
            )?;
        }
        // Per Redis process only when there are several (Cluster shards).
        let redis: &[ProcessCpu] = if self.redis.len() > 1 {
            &self.redis
        } else {
            &[]
        };
        for (label, processes) in [("server", &self.servers[..]), ("redis", redis)] {
            for p in processes {
                writeln!(
                    f,
                    "{label:<6} {:<7} {} user+system over the window = {} µs per accepted publish",
                    p.pid,
                    p.cpu_secs.map_or("n/a".into(), |s| format!("{s:.2}s")),
                    p.cpu_us_per_publish
                        .map_or("n/a".into(), |u| format!("{u:.2}"))
                )?;
            }
        }
        if let (Some(secs), Some(per)) = (self.redis_cpu_secs, self.redis_cpu_us_per_publish) {
            writeln!(
                f,
                "redis cpu     {secs:.2}s user+system over the window = {per:.2} µs per accepted publish"
            )?;
        }
        write!(
            f,
            "errors        {} error frames, {} on unsubscribed channels",
            self.errors, self.strays
        )?;
        if let Some(ledger) = &self.exactly_once {
            write!(
                f,
                "\nexactly-once  {} streams: {} missing ({} messages lost), {} duplicates, {} unacknowledged received -> {}",
                ledger.streams,
                ledger.missing,
                ledger.lost_messages,
                ledger.duplicates,
                ledger.unacknowledged,
                if ledger.ok() { "OK" } else { "FAILED" }
            )?;
        }
        if let Some(check) = &self.history_check {
            write!(f, "\nhistory       {check}")?;
        }
        Ok(())
    }
}
