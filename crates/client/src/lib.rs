//! A Rust client for Switchboard, the WebSocket pub/sub gateway.
//!
//! The gateway's integration tests and the load tool need to speak the wire
//! protocol exactly as a real client does, without a browser. This crate
//! gives them two levels:
//!
//! - [`Connection`]: one WebSocket, no reconnect. Request helpers send a
//!   command with a fresh `id` and wait for its reply, buffering pushes that
//!   arrive meanwhile (among them [`Connection::publish_batch`], many
//!   publishes in one command with a result or error per message); raw
//!   helpers send and read arbitrary frames. For tests.
//! - [`Client`]: a long-lived client that reconnects with exponential backoff
//!   and full jitter, resubscribes its channels on every connect, and reports
//!   what happens as [`Event`]s on a channel. For the load tool and drain tests.
//!
//! # Recovery
//!
//! On channels with history every message carries an `offset`, and a
//! subscribe reply names the stream's position `{offset, epoch}`. [`Client`]
//! keeps one [`Position`] per subscribed channel (from the subscribe reply,
//! advanced by each message, replaced by a `reset` frame) and resubscribes
//! with `since` set to it, so the server replays what was missed while the
//! client was away. Each reply becomes [`Event::Subscribed`]: `recovered:
//! Some(false)` and [`Event::Reset`] mean messages were lost and the
//! application should reload the channel's state. A message at or before the
//! position already seen is dropped, so the client never reports one twice.
//! [`Connection::subscribe_since`] and [`Connection::history`] expose the
//! same commands one at a time.
//!
//! # Tokens
//!
//! [`Client`] takes its token either in the URL (`?token=`, fixed for the
//! client's life) or from a [`TokenProvider`]
//! ([`ClientConfig::with_token_provider`]), an async function it calls for a
//! fresh token before connecting, after a 401 refusal and after a 4001 close
//! (token expired). The token goes in `Authorization: Bearer`, and before it
//! expires (at about 80% of the `expires_in` the server announced) the client
//! sends a `refresh` with a new one. After `max_auth_failures` 401 refusals
//! or provider errors in a row, it gives up with a final
//! [`Event::Disconnected`] rather than retry a bad token forever.
//!
//! # Formats
//!
//! Both levels speak JSON text frames unless asked for MessagePack
//! ([`Format::MsgPack`]: [`Connection::connect_with`],
//! [`ClientConfig::format`]), which they ask for with
//! `Sec-WebSocket-Protocol: switchboard.msgpack` and check in the answer.
//! Commands then go as binary MessagePack maps and binary frames decode to
//! the same [`Incoming`] values, so nothing else changes for the caller.
//!
//! No call here takes a timeout; wrap waits in `tokio::time::timeout`.

pub mod auth;
pub mod backoff;
pub mod client;
pub mod connection;
pub mod error;
pub mod format;
mod subscriptions;

pub use auth::{TokenFuture, TokenProvider};
pub use backoff::{backoff_cap, backoff_delay};
pub use client::{Client, ClientConfig, Event};
pub use connection::{Connection, Frame, Member, Welcome};
pub use error::ClientError;
pub use format::Format;
pub use switchboard_protocol::batch::BatchMessage;
pub use switchboard_protocol::{close, ErrorBody, ErrorCode, Incoming, Position};
pub use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
