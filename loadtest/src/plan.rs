//! What a load run does: where to connect, how many connections and how fast,
//! which channels they subscribe to, how messages are published, and for how
//! long. A `Plan` is plain data so the CLI and the tests build it the same way.
//!
//! Channels are named `bench:all` (the broadcast channel) and `bench:room.<n>`
//! (rooms). Message `k` of a run goes to channel `k % channels`, so every
//! subscriber can tell from `k` alone which channel it belongs to and which
//! sequence number it has there.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How subscribers are spread over channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Connections hold the socket and subscribe to nothing.
    Idle,
    /// Every connection subscribes to one channel, `bench:all`.
    OneChannel,
    /// Connections are grouped in rooms of `size`, one channel per room.
    Rooms { size: usize },
    /// Every connection subscribes to its room and to `bench:all`.
    Mix { size: usize },
    /// Every connection subscribes to the same `count` channels,
    /// `bench:room.0` to `bench:room.<count-1>`: what each further
    /// subscription of a connection costs, the channels' own state shared.
    Many { count: usize },
}

/// How subscribers connect. Publishers are the same either way (`PublishVia`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /ws`, then a `subscribe` command per channel.
    WebSocket,
    /// `GET /sse?channel=...&token=...`: a server-sent event stream whose
    /// channels are named in the request (docs/protocol.md, "Server-sent
    /// events").
    Sse,
}

/// The wire format of WebSocket connections (docs/protocol.md, "Formats
/// and compression").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// JSON text frames; no subprotocol asked.
    #[default]
    Json,
    /// `Sec-WebSocket-Protocol: switchboard.msgpack`: MessagePack maps in
    /// binary frames, both ways.
    MsgPack,
}

/// What the `data` of a published message holds besides `k` and `ts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PayloadKind {
    /// `"p"`: `payload` bytes of `x`.
    #[default]
    Padded,
    /// A realistic chat message of about 300 bytes.
    Chat,
    /// A realistic JSON document of about 4 KB.
    Doc,
}

/// How messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishVia {
    /// `POST /api/publish` with the API key, over keep-alive HTTP/1.1.
    Api,
    /// `publish` commands from WebSocket clients granted publishing.
    Client,
    /// `POST /api/batch` with the API key: `batch_size` messages per
    /// request, one request in flight per publisher.
    Batch,
}

/// One bounded load run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Gateway nodes (`host:port`); subscriber connections are spread over them.
    pub targets: Vec<SocketAddr>,
    /// The node publishers talk to; the first target when unset.
    pub publish_target: Option<SocketAddr>,
    /// The gateway's HS256 secret, to mint tokens.
    pub secret: String,
    /// The gateway's API key (needed for `PublishVia::Api`).
    pub api_key: Option<String>,
    /// Subscriber connections to open.
    pub connections: usize,
    /// New connections per second while ramping up.
    pub ramp_rate: f64,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Source addresses 127.0.0.<first>, <first+1>, ... connections bind to,
    /// each good for about 28k ephemeral ports.
    pub source_first: u8,
    pub source_count: u8,
    pub shape: Shape,
    /// How subscriber connections are made.
    pub transport: Transport,
    pub via: PublishVia,
    /// Publisher connections (HTTP or WebSocket), working in parallel.
    pub publishers: usize,
    /// Messages per second over all channels; 0 publishes as fast as the
    /// in-flight window allows (saturation).
    pub rate: f64,
    /// At most this many messages per subscriber published but not yet
    /// received (keeps a saturating run from overflowing send queues).
    pub window: u64,
    /// Extra payload bytes per message (`PayloadKind::Padded`).
    pub payload: usize,
    /// What a message's `data` holds.
    pub payload_kind: PayloadKind,
    /// The format of WebSocket subscribers and of WebSocket publishers
    /// (`PublishVia::Client`).
    pub format: Format,
    /// WebSocket subscribers offer permessage-deflate (no context takeover
    /// both ways) and read over a raw socket, inflating compressed
    /// messages; the connection fails if the server does not accept it.
    pub deflate: bool,
    /// Publishing starts after the ramp and lasts this long (connections are
    /// held this long when nothing is published).
    pub duration: Duration,
    /// Deliveries in the first `warmup` of publishing are not measured.
    pub warmup: Duration,
    /// How long after publishing stops to wait for the last deliveries.
    pub drain: Duration,
    /// The ramp must finish within this time; connections not open by then
    /// are counted as failed.
    pub ramp_timeout: Duration,
    /// Keep a ledger per subscriber and report missing and duplicate messages.
    pub exactly_once: bool,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
    /// Gateway processes whose CPU time (user + system) over the measured
    /// window is reported per delivery.
    pub server_pids: Vec<u32>,
    /// Subscribers ask for batched frames (several messages per frame).
    pub batch: bool,
    /// Messages per `POST /api/batch` request (`PublishVia::Batch`).
    pub batch_size: usize,
    /// Channels published to, when more than the shape gives (`Shape::Rooms`
    /// only): the rooms past the subscribed ones have no subscribers, so a
    /// run can spread publishes over many channels with few connections.
    pub channel_count: Option<usize>,
    /// `publish` commands a WebSocket publisher keeps in flight; 1 waits for
    /// each reply before the next publish (a serial publisher), 0 pipelines
    /// without a limit (only the delivery window bounds it).
    pub in_flight: usize,
    /// Redis server processes (one, or every shard of a Cluster) whose CPU
    /// time over the measured window is reported per accepted publish.
    pub redis_pids: Vec<u32>,
    /// After publishing, read every channel's history through
    /// `GET /api/history/{channel}` and check that every accepted message is
    /// there at its offset, in order, with no gaps (`PublishVia::Batch` or `Api`).
    pub history_check: bool,
}

impl Plan {
    /// A small plan against `target` with sensible defaults.
    pub fn new(target: SocketAddr, secret: &str) -> Plan {
        Plan {
            targets: vec![target],
            publish_target: None,
            secret: secret.to_owned(),
            api_key: None,
            connections: 100,
            ramp_rate: 2000.0,
            connect_concurrency: 128,
            source_first: 2,
            source_count: 1,
            shape: Shape::OneChannel,
            transport: Transport::WebSocket,
            via: PublishVia::Api,
            publishers: 4,
            rate: 100.0,
            window: 64,
            payload: 0,
            payload_kind: PayloadKind::Padded,
            format: Format::Json,
            deflate: false,
            duration: Duration::from_secs(5),
            warmup: Duration::ZERO,
            drain: Duration::from_secs(3),
            ramp_timeout: Duration::from_secs(120),
            exactly_once: false,
            progress: false,
            server_pids: Vec::new(),
            batch: false,
            batch_size: 100,
            channel_count: None,
            in_flight: 0,
            redis_pids: Vec::new(),
            history_check: false,
        }
    }

    /// The channels messages are published to, in order: message `k` goes to
    /// `channels()[k % len]`.
    pub fn channels(&self) -> Vec<String> {
        match self.shape {
            Shape::Idle => Vec::new(),
            Shape::OneChannel => vec![BROADCAST.to_owned()],
            Shape::Rooms { size } => {
                let subscribed = rooms(self.connections, size);
                (0..subscribed.max(self.channel_count.unwrap_or(0)))
                    .map(room)
                    .collect()
            }
            Shape::Mix { size } => std::iter::once(BROADCAST.to_owned())
                .chain((0..rooms(self.connections, size)).map(room))
                .collect(),
            Shape::Many { count } => (0..count).map(room).collect(),
        }
    }

    /// Indexes (into `channels()`) of the channels connection `i` subscribes to.
    pub fn subscriptions(&self, i: usize) -> Vec<usize> {
        match self.shape {
            Shape::Idle => Vec::new(),
            Shape::OneChannel => vec![0],
            Shape::Rooms { size } => vec![i / size.max(1)],
            Shape::Mix { size } => vec![0, 1 + i / size.max(1)],
            Shape::Many { count } => (0..count).collect(),
        }
    }

    /// How many subscribers each channel has when every connection is open.
    pub fn subscribers_per_channel(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.channels().len()];
        for i in 0..self.connections {
            for c in self.subscriptions(i) {
                counts[c] += 1;
            }
        }
        counts
    }

    /// The gateway connection `i` talks to.
    pub fn target(&self, i: usize) -> SocketAddr {
        self.targets[i % self.targets.len()]
    }

    pub fn publish_target(&self) -> SocketAddr {
        self.publish_target.unwrap_or(self.targets[0])
    }

    /// The local address connection `i` binds to.
    pub fn source(&self, i: usize) -> Ipv4Addr {
        let offset = (i % usize::from(self.source_count.max(1))) as u8;
        Ipv4Addr::new(127, 0, 0, self.source_first.saturating_add(offset))
    }
}

/// The channel of `Shape::OneChannel` and `Shape::Mix`.
pub const BROADCAST: &str = "bench:all";

fn room(n: usize) -> String {
    format!("bench:room.{n}")
}

fn rooms(connections: usize, size: usize) -> usize {
    connections.div_ceil(size.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_assign_channels() {
        let mut plan = Plan::new(
            "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            "s",
        );
        plan.connections = 25;
        plan.shape = Shape::Rooms { size: 10 };
        assert_eq!(plan.channels().len(), 3);
        assert_eq!(plan.subscriptions(24), vec![2]);
        assert_eq!(plan.subscribers_per_channel(), vec![10, 10, 5]);
        plan.shape = Shape::Mix { size: 10 };
        assert_eq!(plan.channels()[0], BROADCAST);
        assert_eq!(plan.subscriptions(11), vec![0, 2]);
        assert_eq!(plan.subscribers_per_channel(), vec![25, 10, 10, 5]);
        plan.shape = Shape::Many { count: 5 };
        assert_eq!(plan.channels()[4], "bench:room.4");
        assert_eq!(plan.subscriptions(9), vec![0, 1, 2, 3, 4]);
        assert_eq!(plan.subscribers_per_channel(), vec![25; 5]);
        plan.source_count = 3;
        assert_eq!(plan.source(4), Ipv4Addr::new(127, 0, 0, 3));
    }

    #[test]
    fn a_channel_count_spreads_rooms_past_the_subscribed_ones() {
        let mut plan = Plan::new(
            "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            "s",
        );
        plan.shape = Shape::Rooms { size: 10 };
        plan.connections = 0;
        plan.channel_count = Some(1000);
        let channels = plan.channels();
        assert_eq!(channels.len(), 1000);
        assert_eq!(channels[999], "bench:room.999");
        assert!(plan.subscribers_per_channel().iter().all(|&n| n == 0));
        // Fewer channels than the rooms the connections fill: the rooms win.
        plan.connections = 25;
        plan.channel_count = Some(2);
        assert_eq!(plan.subscribers_per_channel(), vec![10, 10, 5]);
    }
}
