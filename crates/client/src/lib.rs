//! A Rust client for Switchboard, the WebSocket pub/sub gateway.
//!
//! The gateway's integration tests and the load tool need to speak the wire
//! protocol exactly as a real client does, without a browser. This crate
//! gives them two levels:
//!
//! - [`Connection`]: one WebSocket, no reconnect. Request helpers send a
//!   command with a fresh `id` and wait for its reply, buffering pushes that
//!   arrive meanwhile; raw helpers send and read arbitrary frames. For tests.
//! - [`Client`]: a long-lived client that reconnects with exponential backoff
//!   and full jitter, resubscribes its channels on every connect, and reports
//!   what happens as [`Event`]s on a channel. For the load tool and drain tests.
//!
//! No call here takes a timeout; wrap waits in `tokio::time::timeout`.

pub mod backoff;
pub mod client;
pub mod connection;
pub mod error;

pub use backoff::{backoff_cap, backoff_delay};
pub use client::{Client, ClientConfig, Event};
pub use connection::{Connection, Frame, Member, Welcome};
pub use error::ClientError;
pub use switchboard_protocol::{close, ErrorBody, ErrorCode, Incoming};
pub use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
