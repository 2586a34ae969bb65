//! History and recovery: messages stored with their offsets, reads by
//! reason, clients' resumes, and how this node keeps its own feed whole
//! (gaps filled from history, resets, duplicates dropped after a repair).
//!
//! Every recovery outcome is exposed at 0 from the start, so rates and the
//! recovery alert work before the first resume.

use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::metrics::registry::{counter, counter_vec};

/// How a subscribe with `since` ended, as `switchboard_recoveries_total`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// Every missed message was replayed.
    Recovered,
    /// History holds every missed message but the replay was cut at the
    /// send queue's byte cap: the client pages the rest through `history`.
    Partial,
    /// Missed messages are gone: the client was told to reload.
    NotRecovered,
}

impl RecoveryOutcome {
    const ALL: [RecoveryOutcome; 3] = [
        RecoveryOutcome::Recovered,
        RecoveryOutcome::Partial,
        RecoveryOutcome::NotRecovered,
    ];

    fn label(self) -> &'static str {
        match self {
            RecoveryOutcome::Recovered => "recovered",
            RecoveryOutcome::Partial => "partial",
            RecoveryOutcome::NotRecovered => "not_recovered",
        }
    }
}

/// The history metrics of one node.
#[derive(Debug)]
pub(super) struct HistoryMetrics {
    appends: IntCounter,
    reads: IntCounterVec,
    recoveries: IntCounterVec,
    replayed: IntCounterVec,
    gaps_repaired: IntCounter,
    stream_resets: IntCounter,
    relay_duplicates: IntCounter,
}

impl HistoryMetrics {
    pub(super) fn new(r: &Registry) -> HistoryMetrics {
        let recoveries = counter_vec(
            r,
            "switchboard_recoveries_total",
            "Subscribes with since, by outcome: recovered (every missed message replayed), partial (replay cut at the send queue's byte cap, the rest left in history for the client to page) or not_recovered (the client was told to reload).",
            &["outcome"],
        );
        for outcome in RecoveryOutcome::ALL {
            recoveries.with_label_values(&[outcome.label()]);
        }
        HistoryMetrics {
            appends: counter(
                r,
                "switchboard_history_appends_total",
                "Messages this node stored in a channel's history (each with its offset) and published.",
            ),
            reads: counter_vec(
                r,
                "switchboard_history_reads_total",
                "History reads by reason (subscribe, history, api, repair) and result (ok or error).",
                &["reason", "result"],
            ),
            recoveries,
            replayed: counter_vec(
                r,
                "switchboard_messages_replayed_total",
                "Messages delivered from history instead of Pub/Sub: by session (a client's recovery) or node (gap repair, per node, before fan-out).",
                &["by"],
            ),
            gaps_repaired: counter(
                r,
                "switchboard_gaps_repaired_total",
                "Gaps in this node's Pub/Sub feed (a skipped offset, or a reconnect) filled from history.",
            ),
            stream_resets: counter(
                r,
                "switchboard_stream_resets_total",
                "Times this node told a channel's subscribers with a reset frame that messages may be lost (epoch changed, or a gap history could not fill).",
            ),
            relay_duplicates: counter(
                r,
                "switchboard_relay_duplicates_total",
                "Pub/Sub messages dropped because a gap repair had already delivered them.",
            ),
        }
    }

    pub(super) fn appended(&self) {
        self.appends.inc();
    }

    pub(super) fn read(&self, reason: &'static str, ok: bool) {
        self.reads
            .with_label_values(&[reason, if ok { "ok" } else { "error" }])
            .inc();
    }

    pub(super) fn recovery(&self, outcome: RecoveryOutcome) {
        self.recoveries.with_label_values(&[outcome.label()]).inc();
    }

    pub(super) fn replayed(&self, by: &'static str, count: usize) {
        if count > 0 {
            self.replayed.with_label_values(&[by]).inc_by(count as u64);
        }
    }

    pub(super) fn gap_repaired(&self) {
        self.gaps_repaired.inc();
    }

    pub(super) fn stream_reset(&self) {
        self.stream_resets.inc();
    }

    pub(super) fn relay_duplicate(&self) {
        self.relay_duplicates.inc();
    }
}
