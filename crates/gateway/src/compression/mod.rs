//! permessage-deflate (RFC 7692), done by the gateway itself:
//! tokio-tungstenite refuses frames with RSV1 set and has no extension
//! hook, so the server writes compressed frames with headers of its own and
//! inflates the client's compressed messages in a stream layer below
//! tungstenite ([`inflating::Inflating`]), which hands tungstenite plain
//! frames.
//!
//! The contract (docs/protocol.md, "Compression: permessage-deflate"):
//! no context takeover in either direction, so every message is compressed
//! and inflated on its own. A message is compressed once on the node and
//! the same bytes go to every subscriber, and the node keeps no window
//! per connection: the compressor and the inflater are one per thread
//! (each costs tens of KiB and is slow to build), reset for each message.
//!
//! - [`extension::negotiate`]: the 101's `Sec-WebSocket-Extensions`, if
//!   the request offers a permessage-deflate the server can honour.
//! - [`compress`] / [`compress_into`]: one whole message as the payload of
//!   a frame with RSV1 set (raw DEFLATE, sync flush, the trailing
//!   `00 00 ff ff` removed; RFC 7692 §7.2.1).
//! - [`inflating::Inflating`]: the server side's read half, inflating
//!   compressed client messages within `max_frame_bytes`; failures are an
//!   [`InflateError`] inside an `io::Error`.
//!
//! This module depends on nothing else in the crate (the bottom layer).

pub mod extension;
pub mod inflating;

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The deflate level of the server's frames: 6, zlib's default. Measured
/// with an optimized build (`compression::tests::timing` prints the
/// figures; `cargo test --release`): a 313-byte chat message takes 8-10 µs
/// at any level (the per-message reset dominates) and compresses to 152
/// bytes at each; a 4 KiB JSON message takes 12 µs at level 1 (720 bytes),
/// 30 µs at 6 (581 bytes) and 31 µs at 9 (581 bytes). A message is compressed once on the
/// node and sent to every subscriber, so the smaller frames of level 6
/// are worth its extra microseconds; level 9 buys nothing more.
const LEVEL: u32 = 6;

/// The empty stored block a sync flush ends with: removed from each
/// message sent, appended to each message received (RFC 7692 §7.2.1-2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// This thread's compressor: raw DEFLATE (no zlib header), 32 KiB
    /// window, reset before each message.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    /// This thread's inflater: raw DEFLATE with a 32 KiB window (any
    /// `client_max_window_bits` fits in it), reset before each message.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Why a client's compressed message was refused. It reaches the session
/// inside the `io::Error` (`ErrorKind::InvalidData`) that tungstenite
/// returns: `error.get_ref()` and `downcast_ref::<InflateError>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The message, compressed or inflated, is larger than the session's
    /// `max_frame_bytes`: close 1009.
    #[error("compressed message exceeds the frame size limit")]
    TooBig,
    /// The data does not inflate: close 1007.
    #[error("compressed frame does not inflate")]
    Corrupt,
}

impl From<InflateError> for std::io::Error {
    fn from(error: InflateError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }
}

/// `payload` compressed as one message with no context takeover: the
/// payload of a frame with RSV1 set. `None` only if the compressor fails,
/// which it does not on in-memory buffers; the frame is then sent
/// uncompressed.
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    // Chat JSON compresses to about half; a small start, grown as needed.
    let mut out = Vec::with_capacity(payload.len() / 2 + 16);
    compress_into(payload, &mut out).then_some(out)
}

/// [`compress`], appending to `out` (for a caller that put a frame header
/// in front). Returns false, with `out` as it was, if the compressor fails.
pub fn compress_into(payload: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let done = COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        deflate(&mut compressor, payload, out)
    });
    if done && out[start..].ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
        true
    } else {
        out.truncate(start);
        false
    }
}

/// Runs `compressor` over all of `input` with a sync flush, appending to
/// `out`; false if it failed.
fn deflate(compressor: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(64));
        }
        let consumed = compressor.total_in() as usize;
        let space = out.capacity() - out.len();
        let before = out.len();
        let status = match compressor.compress_vec(&input[consumed..], out, FlushCompress::Sync) {
            Ok(status) => status,
            Err(_) => return false,
        };
        let all_in = compressor.total_in() as usize == input.len();
        let written = out.len() - before;
        match status {
            // The flush is complete once a call had room to spare.
            Status::Ok if all_in && written < space => return true,
            Status::Ok => {}
            // No progress possible: with all input taken, the flush is done.
            Status::BufError if all_in => return true,
            Status::BufError | Status::StreamEnd => return false,
        }
    }
}

/// Inflates one message's compressed payloads (`compressed`, the tail
/// appended here) into a new buffer that starts with `head` zero bytes
/// (room for a frame header), refusing more than `max` inflated bytes:
/// inflation stops as soon as the output passes `max`.
fn inflate(compressed: &mut Vec<u8>, max: usize, head: usize) -> Result<Vec<u8>, InflateError> {
    compressed.extend_from_slice(&SYNC_TAIL);
    INFLATER.with(|inflater| {
        let mut inflater = inflater.borrow_mut();
        inflater.reset(false);
        inflate_with(&mut inflater, compressed, max, head)
    })
}

fn inflate_with(
    inflater: &mut Decompress,
    input: &[u8],
    max: usize,
    head: usize,
) -> Result<Vec<u8>, InflateError> {
    // At most one byte past the limit is ever asked for: enough to know
    // the message is too big.
    let bound = head + max + 1;
    let mut out = vec![0; (head + input.len().saturating_mul(4).max(256)).min(bound)];
    let mut len = head;
    loop {
        let consumed = inflater.total_in() as usize;
        let before = inflater.total_out();
        let status = inflater
            .decompress(&input[consumed..], &mut out[len..], FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        let written = (inflater.total_out() - before) as usize;
        let progress = written > 0 || inflater.total_in() as usize > consumed;
        len += written;
        if len > head + max {
            return Err(InflateError::TooBig);
        }
        let all_in = inflater.total_in() as usize == input.len();
        let full = len == out.len();
        match status {
            // A final block ended the stream: what follows it is ignored.
            Status::StreamEnd => break,
            _ if all_in && !full => break,
            // No progress with room to write: the input is used up.
            _ if !progress && !full => break,
            _ => {}
        }
        if full {
            let grown = (out.len() * 2).min(bound);
            out.resize(grown, 0);
        }
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// What a client does: raw DEFLATE of one message, tail removed.
    pub(crate) fn client_compress(payload: &[u8], level: u32) -> Vec<u8> {
        let mut compressor = Compress::new(Compression::new(level), false);
        let mut out = Vec::new();
        assert!(deflate(&mut compressor, payload, &mut out));
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - SYNC_TAIL.len());
        out
    }

    fn round_trip(payload: &[u8]) -> Vec<u8> {
        let mut compressed = compress(payload).unwrap();
        inflate(&mut compressed, 1 << 20, 0).unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let chat = br#"{"type":"message","channel":"chat:lobby","data":{"text":"hello"}}"#;
        assert_eq!(round_trip(chat), chat);
        assert_eq!(round_trip(b""), b"");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(round_trip(&big), big);
        // Each message stands alone: the same bytes compress the same way.
        assert_eq!(compress(chat), compress(chat));
    }

    /// RFC 7692 §7.2.3.1: "Hello" compressed with no context takeover.
    #[test]
    fn the_rfc_example_inflates() {
        let mut compressed = vec![0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&mut compressed, 100, 0).unwrap(), b"Hello");
        // §7.2.3.3: the same with a stored (uncompressed) block.
        let mut stored = vec![
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&mut stored, 100, 0).unwrap(), b"Hello");
        // §7.2.3.4: BFINAL set; the appended tail is ignored.
        let mut last = vec![0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate(&mut last, 100, 0).unwrap(), b"Hello");
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut bomb = client_compress(&zeros, 9);
        assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
        assert_eq!(inflate(&mut bomb, 65_536, 0), Err(InflateError::TooBig));
        // Exactly the limit is allowed.
        let mut exact = client_compress(&zeros[..65_536], 6);
        assert_eq!(inflate(&mut exact, 65_536, 14).unwrap().len(), 14 + 65_536);
        let mut over = client_compress(&zeros[..65_537], 6);
        assert_eq!(inflate(&mut over, 65_536, 14), Err(InflateError::TooBig));
    }

    #[test]
    fn corrupt_data_is_refused() {
        // BTYPE 11 is reserved.
        let mut bad = vec![0xff, 0xff, 0xff, 0xff];
        assert_eq!(inflate(&mut bad, 1000, 0), Err(InflateError::Corrupt));
        // A stored block whose length and its complement disagree.
        let mut bad = vec![0x00, 0x05, 0x00, 0x00, 0x00, b'H'];
        assert_eq!(inflate(&mut bad, 1000, 0), Err(InflateError::Corrupt));
    }

    /// Prints how long one message (313 B of chat JSON, 4 KiB of JSON)
    /// takes to compress at levels 1, 6 and 9 with the per-message reset,
    /// and the sizes: `cargo test -p switchboard-gateway --lib
    /// compression::tests::timing -- --nocapture` (add `--release` for
    /// the figures that matter). Figures, not checks.
    #[test]
    fn timing() {
        let chat = format!(
            r#"{{"type":"message","channel":"chat:lobby","offset":1234,"epoch":"aBcD1234","data":{{"user":"alice","text":"{}","ts":1733450000123}}}}"#,
            "hello everyone, the meeting moved to three o'clock in room B. ".repeat(3)
        );
        let items: Vec<String> = (0..58)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"name":"sensor-{i}","value":{}.{},"unit":"celsius","ok":true}}"#,
                    20 + i % 7,
                    i * 13 % 100
                )
            })
            .collect();
        let json4k = format!(
            r#"{{"type":"message","channel":"metrics:room","data":{{"items":[{}]}}}}"#,
            items.join(",")
        );
        for (name, payload) in [("chat", chat.as_bytes()), ("json", json4k.as_bytes())] {
            for level in [1, 6, 9] {
                let mut compressor = Compress::new(Compression::new(level), false);
                let mut out = Vec::with_capacity(payload.len() + 64);
                let rounds = 2_000;
                let start = Instant::now();
                for _ in 0..rounds {
                    out.clear();
                    compressor.reset();
                    deflate(&mut compressor, payload, &mut out);
                }
                let each = start.elapsed() / rounds;
                println!(
                    "{name} {} B, level {level}: {} B compressed, {:?} per message",
                    payload.len(),
                    out.len() - SYNC_TAIL.len(),
                    each
                );
            }
        }
        let start = Instant::now();
        for _ in 0..200 {
            drop(Compress::new(Compression::new(LEVEL), false));
        }
        println!("a new compressor: {:?}", start.elapsed() / 200);
    }
}
