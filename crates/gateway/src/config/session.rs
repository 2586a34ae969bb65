//! Per-connection limits and timers (`[session]`): the largest frame, the
//! channels one connection may hold, the bytes queued for it before it
//! counts as a slow consumer, the ping/pong timers, write coalescing and
//! permessage-deflate.
//!
//! The send queue must hold at least one maximum-size message, counted as
//! the queue counts it ([`MESSAGE_ENVELOPE_BYTES`] and
//! [`QUEUE_ENTRY_OVERHEAD`] on top of the data): a frame that can never fit
//! would be dropped for every subscriber.

use std::time::Duration;

use serde::Deserialize;

use crate::config::env::{
    check_duration, check_range, env_duration, env_parse, ConfigError, Env, Key,
};

/// What one queued frame costs beyond its bytes: the queue slot and the
/// shared buffer's header, rounded up.
pub const QUEUE_ENTRY_OVERHEAD: usize = 64;
/// A bound on what a `message` frame adds to its data: the type, the
/// longest channel name and an offset (see the test below).
pub const MESSAGE_ENVELOPE_BYTES: usize = 512;
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_CHANNELS: usize = 128;
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 1 << 20;
/// The largest `session.send_queue_bytes`: 1 GiB. The hub keeps each
/// session's bound as a `u32` (its handle then fits a smaller allocation),
/// so this must stay within `u32::MAX`.
pub const MAX_SEND_QUEUE_BYTES: usize = 1 << 30;
const _: () = assert!(MAX_SEND_QUEUE_BYTES <= u32::MAX as usize);
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// Chosen from measurements (docs/benchmarks.md, write coalescing, and
/// coalescing that never adds latency).
pub const DEFAULT_WRITE_COALESCE: Duration = Duration::from_millis(10);
/// Frames smaller than this are sent uncompressed: deflate's block header
/// and the CPU outweigh what a short frame saves.
pub const DEFAULT_DEFLATE_THRESHOLD: usize = 256;

const MAX_FRAME_BYTES: Key = Key::new("session.max_frame_bytes", "SWITCHBOARD_MAX_FRAME_BYTES");
const MAX_CHANNELS: Key = Key::new("session.max_channels", "SWITCHBOARD_MAX_CHANNELS");
const SEND_QUEUE_BYTES: Key = Key::new("session.send_queue_bytes", "SWITCHBOARD_SEND_QUEUE_BYTES");
const PING_INTERVAL: Key = Key::new("session.ping_interval", "SWITCHBOARD_PING_INTERVAL");
const PONG_TIMEOUT: Key = Key::new("session.pong_timeout", "SWITCHBOARD_PONG_TIMEOUT");
const WRITE_COALESCE: Key = Key::new("session.write_coalesce", "SWITCHBOARD_WRITE_COALESCE");
const DEFLATE: Key = Key::new("session.deflate", "SWITCHBOARD_DEFLATE");
const DEFLATE_THRESHOLD: Key =
    Key::new("session.deflate_threshold", "SWITCHBOARD_DEFLATE_THRESHOLD");

/// Per-connection limits and timers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub max_frame_bytes: usize,
    pub max_channels: usize,
    /// Bytes of frames queued for one connection before it counts as a
    /// slow consumer and is closed with 1013.
    pub send_queue_bytes: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Adaptive write coalescing's window: a connection whose last writes
    /// showed frames arriving faster than this (a write found 3 or more
    /// queued, or the last held window gathered 2 or more) holds a new
    /// frame until this long after its last write, then writes everything
    /// queued at once; any other frame is written at once. 0: every frame
    /// is written as soon as it is taken off the queue.
    pub write_coalesce: Duration,
    /// permessage-deflate (RFC 7692) is negotiated with clients that offer
    /// it; channel messages are compressed in namespaces with `deflate`.
    pub deflate: bool,
    /// Frames shorter than this go out uncompressed.
    pub deflate_threshold: usize,
}

/// The `[session]` table as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSession {
    max_frame_bytes: Option<usize>,
    max_channels: Option<usize>,
    send_queue_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    ping_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pong_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    write_coalesce: Option<Duration>,
    deflate: Option<bool>,
    deflate_threshold: Option<usize>,
}

/// The session settings, each within its bounds, with a send queue that
/// holds one maximum-size message.
pub(super) fn session_config(
    env: &dyn Env,
    file: FileSession,
) -> Result<SessionConfig, ConfigError> {
    let session = SessionConfig {
        max_frame_bytes: check_range(
            &MAX_FRAME_BYTES,
            env_parse(env, &MAX_FRAME_BYTES, "a whole number of bytes")?
                .or(file.max_frame_bytes)
                .unwrap_or(DEFAULT_MAX_FRAME_BYTES),
            256,
            16 << 20,
        )?,
        max_channels: check_range(
            &MAX_CHANNELS,
            env_parse(env, &MAX_CHANNELS, "a whole number")?
                .or(file.max_channels)
                .unwrap_or(DEFAULT_MAX_CHANNELS),
            1,
            100_000,
        )?,
        send_queue_bytes: check_range(
            &SEND_QUEUE_BYTES,
            env_parse(env, &SEND_QUEUE_BYTES, "a whole number of bytes")?
                .or(file.send_queue_bytes)
                .unwrap_or(DEFAULT_SEND_QUEUE_BYTES),
            4 * 1024,
            MAX_SEND_QUEUE_BYTES,
        )?,
        ping_interval: check_duration(
            &PING_INTERVAL,
            env_duration(env, &PING_INTERVAL)?
                .or(file.ping_interval)
                .unwrap_or(DEFAULT_PING_INTERVAL),
            Duration::from_millis(50),
            Duration::from_secs(3600),
        )?,
        pong_timeout: check_duration(
            &PONG_TIMEOUT,
            env_duration(env, &PONG_TIMEOUT)?
                .or(file.pong_timeout)
                .unwrap_or(DEFAULT_PONG_TIMEOUT),
            Duration::from_millis(50),
            Duration::from_secs(3600),
        )?,
        write_coalesce: check_duration(
            &WRITE_COALESCE,
            env_duration(env, &WRITE_COALESCE)?
                .or(file.write_coalesce)
                .unwrap_or(DEFAULT_WRITE_COALESCE),
            Duration::ZERO,
            Duration::from_secs(1),
        )?,
        deflate: env_parse(env, &DEFLATE, "true or false")?
            .or(file.deflate)
            .unwrap_or(false),
        deflate_threshold: check_range(
            &DEFLATE_THRESHOLD,
            env_parse(env, &DEFLATE_THRESHOLD, "a whole number of bytes")?
                .or(file.deflate_threshold)
                .unwrap_or(DEFAULT_DEFLATE_THRESHOLD),
            0,
            16 << 20,
        )?,
    };

    // A frame that can never fit is dropped for every subscriber.
    let needed = session.max_frame_bytes + MESSAGE_ENVELOPE_BYTES + QUEUE_ENTRY_OVERHEAD;
    if session.send_queue_bytes < needed {
        return Err(ConfigError::new(
            SEND_QUEUE_BYTES.name(),
            format!(
                "{} bytes cannot hold one maximum-size message: {} = {} bytes of data, plus {MESSAGE_ENVELOPE_BYTES} of message envelope and {QUEUE_ENTRY_OVERHEAD} of queue overhead, needs at least {needed}; raise the queue or lower the frame size",
                session.send_queue_bytes,
                MAX_FRAME_BYTES.name(),
                session.max_frame_bytes,
            ),
        ));
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_send_queue_that_cannot_hold_one_message_is_refused() {
        let refused = session_config(
            &env(&[
                ("SWITCHBOARD_SEND_QUEUE_BYTES", "8192"),
                ("SWITCHBOARD_MAX_FRAME_BYTES", "9000"),
            ]),
            FileSession::default(),
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "invalid configuration: SWITCHBOARD_SEND_QUEUE_BYTES (session.send_queue_bytes): \
             8192 bytes cannot hold one maximum-size message: \
             SWITCHBOARD_MAX_FRAME_BYTES (session.max_frame_bytes) = 9000 bytes of data, \
             plus 512 of message envelope and 64 of queue overhead, needs at least 9576; \
             raise the queue or lower the frame size"
        );
        let fits = env(&[
            ("SWITCHBOARD_SEND_QUEUE_BYTES", "9576"),
            ("SWITCHBOARD_MAX_FRAME_BYTES", "9000"),
        ]);
        assert!(session_config(&fits, FileSession::default()).is_ok());
        // The defaults fit.
        assert!(session_config(&env(&[]), FileSession::default()).is_ok());
    }

    #[test]
    fn a_send_queue_over_a_gibibyte_is_refused() {
        // The hub keeps the bound as a `u32`: 4 GiB must not wrap to 0.
        let refused = session_config(
            &env(&[("SWITCHBOARD_SEND_QUEUE_BYTES", "4294967296")]),
            FileSession::default(),
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "invalid configuration: SWITCHBOARD_SEND_QUEUE_BYTES (session.send_queue_bytes): \
             4294967296 is outside 4096..=1073741824"
        );
        let largest = env(&[("SWITCHBOARD_SEND_QUEUE_BYTES", "1073741824")]);
        assert!(session_config(&largest, FileSession::default()).is_ok());
    }

    #[test]
    fn the_message_envelope_bound_holds() {
        use switchboard_protocol::channel::MAX_CHANNEL_LEN;
        use switchboard_protocol::ServerFrame;
        let channel = "c".repeat(MAX_CHANNEL_LEN);
        let data = serde_json::value::RawValue::from_string("0".into()).unwrap();
        let frame = ServerFrame::Message {
            channel: &channel,
            offset: Some(u64::MAX),
            data: &data,
        }
        .encode();
        assert!(frame.len() - 1 <= MESSAGE_ENVELOPE_BYTES, "{}", frame.len());
    }
}
