//! Bytes on the wire by format (JSON, MessagePack) and compression
//! (none, permessage-deflate), and how well deflate compresses, each way.
//!
//! Sent bytes are counted per write, as written (frame headers included);
//! received bytes are the data frames' payloads as they came off the wire
//! (compressed ones before inflation). The ratio is uncompressed bytes over
//! compressed bytes of every message deflated (once per message on the
//! node, so a message sent to 1,000 subscribers counts once) or inflated,
//! since the node started.

use prometheus::{Gauge, GaugeVec, IntCounter, Opts, Registry};

use crate::metrics::registry::{counter_vec, register};

/// A WebSocket session's frame format (the `format` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `switchboard.json`: text frames, the default.
    #[default]
    Json,
    /// `switchboard.msgpack`: binary MessagePack frames.
    Msgpack,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Json, Format::Msgpack];

    pub fn label(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Msgpack => "msgpack",
        }
    }
}

/// The direction of the compression counters (the `direction` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Sent,
    Received,
}

/// One direction's deflate totals and their ratio.
#[derive(Debug)]
struct Deflate {
    raw: IntCounter,
    compressed: IntCounter,
    ratio: Gauge,
}

impl Deflate {
    fn add(&self, raw: usize, compressed: usize) {
        self.raw.inc_by(raw as u64);
        self.compressed.inc_by(compressed as u64);
        let compressed = self.compressed.get();
        if compressed > 0 {
            self.ratio.set(self.raw.get() as f64 / compressed as f64);
        }
    }
}

/// The series, resolved once: `[format][compressed]`.
#[derive(Debug)]
pub(super) struct FormatMetrics {
    sent: [[IntCounter; 2]; 2],
    received: [[IntCounter; 2]; 2],
    deflate: [Deflate; 2],
}

impl FormatMetrics {
    pub(super) fn new(r: &Registry) -> FormatMetrics {
        let by_format = |name: &str, help: &str| {
            let family = counter_vec(r, name, help, &["format", "compression"]);
            Format::ALL.map(|format| {
                ["none", "deflate"].map(|c| family.with_label_values(&[format.label(), c]))
            })
        };
        let sent = by_format(
            "switchboard_wire_sent_bytes_total",
            "Bytes of WebSocket frames written to clients (headers included), by format (json, msgpack) and compression (none, deflate).",
        );
        let received = by_format(
            "switchboard_wire_received_bytes_total",
            "Bytes of WebSocket data frames received from clients as they came off the wire (compressed ones before inflation), by format and compression.",
        );
        let raw = counter_vec(
            r,
            "switchboard_deflate_raw_bytes_total",
            "Bytes of the messages deflated (sent; each message once per node) or inflated (received), before compression.",
            &["direction"],
        );
        let compressed = counter_vec(
            r,
            "switchboard_deflate_compressed_bytes_total",
            "Bytes of the same messages after compression.",
            &["direction"],
        );
        let ratio = GaugeVec::new(
            Opts::new(
                "switchboard_compression_ratio",
                "Uncompressed over compressed bytes of every message deflated (sent) or inflated (received) since the node started.",
            ),
            &["direction"],
        )
        .expect("valid metric name");
        let ratio = register(r, ratio);
        let deflate = ["sent", "received"].map(|direction| Deflate {
            raw: raw.with_label_values(&[direction]),
            compressed: compressed.with_label_values(&[direction]),
            ratio: ratio.with_label_values(&[direction]),
        });
        FormatMetrics {
            sent,
            received,
            deflate,
        }
    }

    pub(super) fn sent(&self, format: Format, plain: usize, compressed: usize) {
        let [none, deflate] = &self.sent[format as usize];
        if plain > 0 {
            none.inc_by(plain as u64);
        }
        if compressed > 0 {
            deflate.inc_by(compressed as u64);
        }
    }

    pub(super) fn received(&self, format: Format, compressed: bool, bytes: usize) {
        self.received[format as usize][usize::from(compressed)].inc_by(bytes as u64);
    }

    pub(super) fn deflated(&self, direction: Direction, raw: usize, compressed: usize) {
        self.deflate[direction as usize].add(raw, compressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_follows_the_totals() {
        let metrics = FormatMetrics::new(&Registry::new());
        metrics.deflated(Direction::Sent, 1000, 250);
        assert_eq!(metrics.deflate[0].ratio.get(), 4.0);
        metrics.deflated(Direction::Sent, 1000, 750);
        assert_eq!(metrics.deflate[0].ratio.get(), 2.0);
        assert_eq!(metrics.deflate[1].ratio.get(), 0.0, "nothing received");
        metrics.sent(Format::Msgpack, 10, 5);
        assert_eq!(metrics.sent[1][0].get(), 10);
        assert_eq!(metrics.sent[1][1].get(), 5);
        metrics.received(Format::Json, true, 7);
        assert_eq!(metrics.received[0][1].get(), 7);
    }
}
