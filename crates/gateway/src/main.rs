//! The `switchboard` binary: parse the command line, load and validate the
//! configuration (exiting with a message naming a bad key), set up logging
//! (human-readable by default, JSON with `log_format = "json"`; levels from
//! `RUST_LOG`, `info` when unset), and run one gateway node (and its
//! optional metrics listener) until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchboard_gateway::auth::dev_token::{mint_hs256, DevToken};
use switchboard_gateway::config::env::ProcessEnv;
use switchboard_gateway::config::node::LogFormat;
use switchboard_gateway::config::Config;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: about 190 B less resident memory per
/// connection at 10k connections (no per-block header, one size class per
/// small object, freed pages given back at once; the settings are in
/// `.cargo/config.toml`). Measured in docs/benchmarks.md, "Allocator".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "WebSocket pub/sub gateway node"
)]
struct Cli {
    /// A TOML configuration file; SWITCHBOARD_* variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway node (the default).
    Serve,
    /// Print a development token signed with the configured HS256 secret.
    Token {
        /// The user id (`sub`).
        #[arg(long, default_value = "dev")]
        user: String,
        /// Channel patterns the token may subscribe to (repeatable).
        #[arg(long = "channel", default_values_t = ["*".to_string()])]
        channels: Vec<String>,
        /// Channel patterns the token may publish to (repeatable).
        #[arg(long = "publish", default_values_t = ["*".to_string()])]
        publish: Vec<String>,
        /// Lifetime, like 1h or 15m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The `info` object shown in presence, as JSON.
        #[arg(long)]
        info: Option<String>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// What `switchboard token` needs, printed when it cannot sign: the README's
/// Tokens section shows the same line.
const TOKEN_HINT: &str = "switchboard token signs with the HS256 secret the nodes verify with: \
set the same SWITCHBOARD_JWT_HS256_SECRET, e.g. for a node started by make run:\n  \
SWITCHBOARD_JWT_HS256_SECRET=switchboard-dev-secret-not-for-production switchboard token --user alice --channel 'chat:*'";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("switchboard: {error}");
            if matches!(cli.command, Some(Cmd::Token { .. })) {
                eprintln!("{TOKEN_HINT}");
            }
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => serve(config),
        Cmd::Token {
            user,
            channels,
            publish,
            ttl,
            info,
        } => {
            let Some(secret) = config.jwt.hs256_secret.as_deref() else {
                eprintln!("switchboard: minting tokens needs SWITCHBOARD_JWT_HS256_SECRET");
                eprintln!("{TOKEN_HINT}");
                return ExitCode::from(2);
            };
            let info = match info.map(|text| serde_json::from_str(&text)).transpose() {
                Ok(info) => info,
                Err(error) => {
                    eprintln!("switchboard: --info is not JSON: {error}");
                    return ExitCode::from(2);
                }
            };
            let token = DevToken {
                user,
                channels,
                publish,
                ttl,
                info,
                audience: config.jwt.audience.clone(),
                issuer: config.jwt.issuer.clone(),
            };
            match mint_hs256(secret, &token) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("switchboard: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> ExitCode {
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("switchboard: cannot listen on {}: {error}", config.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let metrics_listener = match config.metrics_listen {
            None => None,
            Some(metrics_addr) => match tokio::net::TcpListener::bind(metrics_addr).await {
                Ok(listener) => Some(listener),
                Err(error) => {
                    eprintln!("switchboard: cannot listen on {metrics_addr} (metrics_listen): {error}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let node_id = config.node_id.clone();
        let node = match switchboard_gateway::start(config) {
            Ok(node) => node,
            Err(error) => {
                eprintln!("switchboard: {error}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(message = "listening", addr = %addr, node_id = %node_id, broker = node.broker.kind());
        if let Some(metrics_listener) = metrics_listener {
            let metrics_addr = metrics_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(message = "metrics listening", addr = %metrics_addr);
            tokio::spawn(switchboard_gateway::http::server::serve_metrics(Arc::clone(&node), metrics_listener));
        }
        let shutdown = node.shutdown.clone();
        let node_drain_ms = node.config.drain_window.as_millis() as u64;
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                message = "shutdown signal received; draining",
                drain_window_ms = node_drain_ms
            );
            shutdown.cancel();
        });
        switchboard_gateway::serve(node, listener).await;
        tracing::info!(message = "stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(message = "cannot listen for SIGTERM", %error);
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
