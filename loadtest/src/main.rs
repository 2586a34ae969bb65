//! `switchboard-loadtest`: opens many WebSocket connections (or server-sent
//! event streams, `--transport sse`) to one or more Switchboard nodes,
//! publishes timestamped messages and reports connections held, deliveries
//! per second, latency percentiles, errors and disconnects. Every run is
//! bounded in connections and time and ends by itself.
//!
//! ```text
//! switchboard-loadtest --target 127.0.0.1:8080 --secret "$SECRET" --api-key "$KEY" \
//!     --connections 10000 --shape one --rate 20 --duration 30s
//! ```
//!
//! The same subscribers as event streams (`GET /sse?channel=bench:all`),
//! still published to through the server API:
//!
//! ```text
//! switchboard-loadtest --target 127.0.0.1:8080 --secret "$SECRET" --api-key "$KEY" \
//!     --transport sse --connections 1000 --shape one --rate 500 --duration 15s
//! ```
//!
//! 1,000 MessagePack subscribers with permessage-deflate, each message a
//! 4 KB JSON document, reporting bytes on the wire per delivery (the node
//! runs with `SWITCHBOARD_DEFLATE=true` and `bench` has `deflate = true`):
//!
//! ```text
//! switchboard-loadtest --target 127.0.0.1:8080 --secret "$SECRET" --api-key "$KEY" \
//!     --connections 1000 --shape one --rate 100 --duration 15s \
//!     --format msgpack --deflate --payload-kind doc
//! ```
//!
//! The batch API across 1,000 channels with no subscribers, then every
//! accepted message read back from history:
//!
//! ```text
//! switchboard-loadtest --target 127.0.0.1:8080 --secret "$SECRET" --api-key "$KEY" \
//!     --connections 0 --shape rooms --channels 1000 --via batch --batch-size 100 \
//!     --publishers 1 --rate 0 --duration 8s --history-check --redis-pid "$REDIS_PID"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchboard_loadtest::{
    raise_open_files, run, Format, PayloadKind, Plan, PublishVia, Shape, Transport,
};

/// The longest run the tool accepts.
const MAX_DURATION: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ShapeArg {
    /// Connect and subscribe to nothing.
    Idle,
    /// Everyone on one channel (`bench:all`).
    One,
    /// Rooms of --room-size connections.
    Rooms,
    /// A room each, plus `bench:all`.
    Mix,
    /// Everyone on the same --subscriptions channels.
    Many,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    /// `GET /ws` and a `subscribe` command per channel.
    Websocket,
    /// `GET /sse?channel=...&token=...`: a server-sent event stream with
    /// its channels named in the request.
    Sse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// JSON text frames.
    Json,
    /// `Sec-WebSocket-Protocol: switchboard.msgpack`: binary MessagePack frames.
    Msgpack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PayloadKindArg {
    /// `{"k","ts","p"}` with --payload bytes of padding.
    Padded,
    /// A chat message of about 300 bytes (user, room, text, timestamps, ids).
    Chat,
    /// A JSON document of about 4 KB (an invoice with line items).
    Doc,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ViaArg {
    /// POST /api/publish with the API key.
    Api,
    /// `publish` commands from WebSocket clients.
    Client,
    /// POST /api/batch with the API key, --batch-size messages per request.
    Batch,
}

/// Load generator for Switchboard gateways.
#[derive(Debug, Parser)]
#[command(name = "switchboard-loadtest", version)]
struct Args {
    /// Gateway address host:port; repeat (or comma-separate) to spread
    /// subscribers over several nodes.
    #[arg(long = "target", required = true, value_delimiter = ',')]
    targets: Vec<SocketAddr>,
    /// The node publishers talk to (default: the first --target).
    #[arg(long)]
    publish_target: Option<SocketAddr>,
    /// The gateway's HS256 secret, to mint tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_HS256_SECRET", hide_env_values = true)]
    secret: String,
    /// The gateway's server API key (for --via api).
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Subscriber connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    ramp: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Last octet of the first source address (127.0.0.N).
    #[arg(long, default_value_t = 2)]
    source_first: u8,
    /// How many consecutive source addresses to spread connections over.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// How subscribers are spread over channels.
    #[arg(long, value_enum, default_value_t = ShapeArg::One)]
    shape: ShapeArg,
    /// How subscribers connect; publishers are the same either way (--via).
    #[arg(long, value_enum, default_value_t = TransportArg::Websocket)]
    transport: TransportArg,
    /// Connections per room (rooms, mix).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Channels each connection subscribes to (many): all connections share
    /// them, so the figure is what each subscription of a connection costs.
    #[arg(long, default_value_t = 5)]
    subscriptions: usize,
    /// Publish over this many channels (rooms only): rooms past those the
    /// connections fill have no subscribers, e.g. `--connections 0 --shape
    /// rooms --channels 1000`.
    #[arg(long)]
    channels: Option<usize>,
    /// How messages are published.
    #[arg(long, value_enum, default_value_t = ViaArg::Api)]
    via: ViaArg,
    /// Publisher connections working in parallel (with --via batch: batch
    /// requests in flight, one per connection).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Publish commands each WebSocket publisher (--via client) keeps in
    /// flight: 1 waits for each acknowledgement before the next publish (a
    /// serial publisher); 0 pipelines without a limit.
    #[arg(long, default_value_t = 0)]
    in_flight: usize,
    /// Messages per POST /api/batch request (--via batch), 1 to 10000.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Messages per second over all channels; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Messages in flight per subscription before publishing pauses.
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Extra payload bytes per message (--payload-kind padded).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// What each message's data holds besides its number and send time:
    /// padding, or realistic JSON text (what compression is measured on).
    #[arg(long, value_enum, default_value_t = PayloadKindArg::Padded)]
    payload_kind: PayloadKindArg,
    /// The wire format of WebSocket subscribers and of --via client publishers.
    #[arg(long, value_enum, default_value_t = FormatArg::Json)]
    format: FormatArg,
    /// WebSocket subscribers offer permessage-deflate (no context takeover
    /// either way) and read their frames over a raw socket, inflating
    /// compressed messages; a node that does not accept it fails the
    /// connection. Publishers send uncompressed.
    #[arg(long)]
    deflate: bool,
    /// How long to publish (or hold connections when nothing is published).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Deliveries of the first part of publishing are not measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    /// How long to wait for the last deliveries after publishing.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    drain: Duration,
    /// The ramp must finish within this time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    ramp_timeout: Duration,
    /// Check that every subscriber received every accepted message exactly once.
    #[arg(long)]
    exactly_once: bool,
    /// Exit 1 on any error, disconnect or failed connection.
    #[arg(long)]
    strict: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A gateway process (repeat for several) whose CPU time over the
    /// measured window is reported per delivery (read from /proc).
    #[arg(long = "server-pid", value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// A Redis server process (repeat or comma-separate for every shard of
    /// a Cluster: they are summed) whose CPU time over the measured window
    /// is reported per accepted publish (read from /proc).
    #[arg(long = "redis-pid", value_delimiter = ',')]
    redis_pids: Vec<u32>,
    /// After a --via batch (or api) run, read every channel's history back
    /// (GET /api/history) and check that every accepted message is there at
    /// its offset, in order, with no gaps; --strict fails when it is not.
    #[arg(long)]
    history_check: bool,
    /// Subscribers ask for batched frames (`batch=1`: several messages per
    /// frame, one per line), as the JS SDK does by default.
    #[arg(long)]
    batch: bool,
}

fn plan(args: &Args) -> Result<Plan, String> {
    for (name, value) in [
        ("--duration", args.duration),
        ("--warmup", args.warmup),
        ("--drain", args.drain),
        ("--ramp-timeout", args.ramp_timeout),
    ] {
        if value > MAX_DURATION {
            return Err(format!("{name} must be at most 1h"));
        }
    }
    if args.warmup >= args.duration && args.shape != ShapeArg::Idle && args.publishers > 0 {
        return Err("--warmup must be shorter than --duration".into());
    }
    if matches!(args.via, ViaArg::Api | ViaArg::Batch)
        && args.api_key.is_none()
        && args.publishers > 0
    {
        return Err("--via api and --via batch need --api-key (or SWITCHBOARD_API_KEY)".into());
    }
    if !(1..=10_000).contains(&args.batch_size) {
        return Err("--batch-size must be from 1 to 10000".into());
    }
    if args.channels.is_some() && args.shape != ShapeArg::Rooms {
        return Err("--channels goes with --shape rooms".into());
    }
    if !(1..=128).contains(&args.subscriptions) {
        return Err(
            "--subscriptions must be from 1 to 128 (the gateway's default session.max_channels)"
                .into(),
        );
    }
    if args.batch && args.transport == TransportArg::Sse {
        return Err(
            "--batch is for WebSocket subscribers: an event stream sends one frame per event"
                .into(),
        );
    }
    if (args.deflate || args.format != FormatArg::Json) && args.transport == TransportArg::Sse {
        return Err(
            "--format and --deflate are for WebSocket subscribers: an event stream is JSON, uncompressed"
                .into(),
        );
    }
    if args.payload > 0 && args.payload_kind != PayloadKindArg::Padded {
        return Err("--payload goes with --payload-kind padded".into());
    }
    if args.history_check && matches!(args.via, ViaArg::Client) {
        return Err("--history-check goes with --via batch or --via api".into());
    }
    let limit = raise_open_files().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    let needed = (args.connections + args.publishers * 2 + 64) as u64;
    if needed > limit {
        return Err(format!(
            "{} connections need about {needed} open files; this process may have {limit}: \
             run several load processes",
            args.connections
        ));
    }
    if args.sources == 0 || usize::from(args.source_first) + usize::from(args.sources) > 255 {
        return Err("--source-first + --sources must stay within 127.0.0.1-254".into());
    }
    let mut plan = Plan::new(args.targets[0], &args.secret);
    plan.targets.clone_from(&args.targets);
    plan.publish_target = args.publish_target;
    plan.api_key.clone_from(&args.api_key);
    plan.connections = args.connections;
    plan.ramp_rate = args.ramp;
    plan.connect_concurrency = args.connect_concurrency;
    plan.source_first = args.source_first;
    plan.source_count = args.sources;
    plan.shape = match args.shape {
        ShapeArg::Idle => Shape::Idle,
        ShapeArg::One => Shape::OneChannel,
        ShapeArg::Rooms => Shape::Rooms {
            size: args.room_size.max(1),
        },
        ShapeArg::Mix => Shape::Mix {
            size: args.room_size.max(1),
        },
        ShapeArg::Many => Shape::Many {
            count: args.subscriptions,
        },
    };
    plan.transport = match args.transport {
        TransportArg::Websocket => Transport::WebSocket,
        TransportArg::Sse => Transport::Sse,
    };
    plan.via = match args.via {
        ViaArg::Api => PublishVia::Api,
        ViaArg::Client => PublishVia::Client,
        ViaArg::Batch => PublishVia::Batch,
    };
    plan.channel_count = args.channels;
    plan.in_flight = args.in_flight;
    plan.batch_size = args.batch_size;
    plan.redis_pids.clone_from(&args.redis_pids);
    plan.history_check = args.history_check;
    plan.publishers = args.publishers;
    plan.rate = args.rate;
    plan.window = args.window;
    plan.payload = args.payload;
    plan.payload_kind = match args.payload_kind {
        PayloadKindArg::Padded => PayloadKind::Padded,
        PayloadKindArg::Chat => PayloadKind::Chat,
        PayloadKindArg::Doc => PayloadKind::Doc,
    };
    plan.format = match args.format {
        FormatArg::Json => Format::Json,
        FormatArg::Msgpack => Format::MsgPack,
    };
    plan.deflate = args.deflate;
    plan.duration = args.duration;
    plan.warmup = args.warmup;
    plan.server_pids = args.server_pids.clone();
    plan.batch = args.batch;
    plan.drain = args.drain;
    plan.ramp_timeout = args.ramp_timeout;
    plan.exactly_once = args.exactly_once;
    plan.progress = !args.quiet;
    Ok(plan)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("switchboard-loadtest: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard-loadtest: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let report = runtime.block_on(run(plan));
    println!("{report}");
    if let Some(path) = &args.json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
        if let Err(error) = written {
            eprintln!(
                "switchboard-loadtest: cannot write {}: {error}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    let failed_check = report.exactly_once.as_ref().is_some_and(|l| !l.ok());
    if failed_check || (args.strict && !report.clean()) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
