//! The Switchboard load generator as a library, so tests can drive a
//! scenario in-process and the `switchboard-loadtest` binary is a thin CLI.
//!
//! A run ([`Plan`] → [`run`] → [`Report`]) opens many subscriber
//! connections (WebSockets, or server-sent event streams with
//! [`Transport::Sse`]) from several loopback source addresses, subscribes
//! them in a chosen [`Shape`], publishes timestamped, numbered messages at a target
//! rate (or as fast as an in-flight window allows), and measures
//! publish-to-receive latency with an HDR histogram. With the exactly-once
//! ledger on it also proves that every subscriber got every accepted message
//! once.
//!
//! Subscribers may speak MessagePack ([`Format::MsgPack`]) and negotiate
//! permessage-deflate (`Plan::deflate`), and messages may carry a realistic
//! chat message or JSON document ([`PayloadKind`]); a run then reports the
//! bytes its subscribers read from their sockets per delivery.
//!
//! The modules depend one way, bottom up: `plan`, `stats`, `token`, `cpu`,
//! `body` (what a message's data holds), `conn` (the WebSocket client
//! side), `wsraw` (the same over a raw socket, for permessage-deflate),
//! `sse` (the event-stream client side) and `http_client` (the server API
//! client side) use nothing above them but `plan`; `context` (what every task of a run
//! shares) sits on `plan` and `stats`; `subscriber`, `publisher` and
//! `history` (the read-back of a batch run) use `context`, `conn`, `sse` and
//! `http_client`, never each other; `run` drives them all.
//! `python3 scripts/check-layers.py` checks it.

pub mod body;
pub mod conn;
pub mod context;
pub mod cpu;
pub mod history;
pub mod http_client;
pub mod plan;
pub mod publisher;
pub mod run;
pub mod sse;
pub mod stats;
pub mod subscriber;
pub mod token;
pub mod wsraw;

pub use plan::{Format, PayloadKind, Plan, PublishVia, Shape, Transport};
pub use run::run;
pub use stats::{HistoryCheck, Ledger, Report};

/// Raises this process's open-file soft limit to its hard limit (each
/// connection is a descriptor); returns the limit now in force.
pub fn raise_open_files() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
