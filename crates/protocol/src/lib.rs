//! Switchboard's wire contract, with no I/O and no runtime: the frames clients
//! and servers exchange, the error and close codes, and the rules for channel
//! names and the patterns a token grants.
//!
//! Everything here is pure so the gateway, the Rust client and the load tool
//! share one definition of the protocol, and so it can be tested (and fuzzed)
//! without sockets or clocks.

pub mod batch;
pub mod channel;
pub mod codes;
pub mod frame;
pub mod json;
pub mod msgpack;
pub mod position;

pub use channel::{ChannelError, ChannelName, Pattern, PatternSet};
pub use codes::{close, ErrorCode};
pub use frame::{
    decode_command, Command, CommandError, ErrorBody, Incoming, MessageParts, Outgoing, Request,
    ServerFrame,
};
pub use position::Position;
