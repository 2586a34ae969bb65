//! What every task of a run shares: the plan, the live counters, the
//! channel list, the publish counter and the exactly-once acks, and the
//! stop signal.
//!
//! Its own module, below the run and its workers: the run creates it and
//! spawns publishers and subscribers, which read and update it, so neither
//! worker needs to import the run (nor the run's other worker).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::plan::Plan;
use crate::stats::Stats;
use crate::token;

/// What every task of a run shares.
pub struct Context {
    pub plan: Plan,
    pub stats: Stats,
    pub channels: Vec<String>,
    pub subscribers_per_channel: Vec<u64>,
    /// Sum of `subscribers_per_channel`.
    pub subscriptions_total: u64,
    /// The next message number to publish.
    pub next_k: AtomicU64,
    /// Deliveries owed for the messages accepted so far.
    pub expected: AtomicU64,
    /// Accepted message numbers (bit set), kept for the exactly-once check.
    pub acks: Option<Mutex<Vec<u64>>>,
    /// Every accepted message with the offset and epoch of its reply (batch
    /// and API publishers), kept for the history check.
    pub accepted_log: Option<Mutex<AcceptedLog>>,
    /// Cancelled when the run is over: subscribers close.
    pub stop: CancellationToken,
    /// Errors already printed, so a failure storm prints a few lines only.
    printed: AtomicU64,
}

/// One accepted message, as its reply gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The message number (its channel is `k % channels`).
    pub k: u64,
    pub offset: Option<u64>,
    /// Index into [`AcceptedLog::epochs`].
    pub epoch: Option<u32>,
    /// The publisher worker that sent it.
    pub publisher: u32,
}

/// The accepted messages of a run, with their epochs stored once.
#[derive(Debug, Default)]
pub struct AcceptedLog {
    pub entries: Vec<Accepted>,
    pub epochs: Vec<String>,
}

impl AcceptedLog {
    /// Records message `k` accepted by `publisher` at `offset` of `epoch`.
    pub fn push(&mut self, k: u64, publisher: u32, offset: Option<u64>, epoch: Option<&str>) {
        let epoch = epoch.map(|e| match self.epochs.iter().position(|known| known == e) {
            Some(i) => i as u32,
            None => {
                self.epochs.push(e.to_owned());
                (self.epochs.len() - 1) as u32
            }
        });
        self.entries.push(Accepted {
            k,
            offset,
            epoch,
            publisher,
        });
    }
}

/// At most this many individual error lines per run.
const PRINTED_ERRORS: u64 = 10;

impl Context {
    /// The shared state of a run of `plan`, before anything started.
    pub fn new(plan: Plan) -> Context {
        let channels = plan.channels();
        let subscribers_per_channel = plan.subscribers_per_channel();
        Context {
            subscriptions_total: subscribers_per_channel.iter().sum(),
            acks: plan.exactly_once.then(|| Mutex::new(Vec::new())),
            accepted_log: plan
                .history_check
                .then(|| Mutex::new(AcceptedLog::default())),
            stats: Stats::default(),
            channels,
            subscribers_per_channel,
            next_k: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            stop: CancellationToken::new(),
            printed: AtomicU64::new(0),
            plan,
        }
    }

    pub fn subscriber_token(&self, i: usize) -> Result<String, String> {
        token::mint(&self.plan.secret, &format!("load-{i}"), &["bench:*"], &[])
    }

    pub fn publisher_token(&self, n: usize) -> Result<String, String> {
        token::mint(
            &self.plan.secret,
            &format!("load-publisher-{n}"),
            &[],
            &["bench:*"],
        )
    }

    pub fn connect_failed(&self, i: usize, error: &str) {
        self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
        self.print_error(&format!("connection {i}: {error}"));
    }

    pub fn publish_failed(&self, error: &str) {
        self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
        self.print_error(error);
    }

    pub fn print_error(&self, line: &str) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED_ERRORS {
            eprintln!("error: {line}");
        } else if n == PRINTED_ERRORS {
            eprintln!("error: (more errors are counted, not printed)");
        }
    }
}
