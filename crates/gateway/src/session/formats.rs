//! What a WebSocket frame looks like on a connection of each format
//! (`switchboard.json` text, `switchboard.msgpack` binary) and compression
//! (none, permessage-deflate).
//!
//! An uncompressed JSON connection, the usual one, gets the hub's shared
//! JSON text and the writer puts the header before it (no copy). Any other
//! connection gets **whole frames**, header included: a frame of the hub is
//! encoded once per message on the node, by the first session that needs
//! it, into the delivery's slot for that encoding, and every other session
//! of the node writes the same bytes. Whole frames are what let one
//! compressed message (RSV1 in its header) go to every subscriber as it is,
//! and keep the writer free of per-frame decisions.

use bytes::Bytes;
use switchboard_protocol::channel::namespace;
use switchboard_protocol::msgpack;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::compression;
use crate::hub::Delivery;
use crate::metrics::formats::{Direction, Format};
use crate::node::Node;

/// The first header byte of a final text frame (RFC 6455 §5.2).
pub(super) const TEXT: u8 = 0x81;
/// The first header byte of a final binary frame.
pub(super) const BINARY: u8 = 0x82;
/// The header bit of a compressed message (RFC 7692 §6).
pub(super) const RSV1: u8 = 0x40;

/// A connection's format and compression, fixed at its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode {
    pub format: Format,
    /// permessage-deflate was negotiated.
    pub deflate: bool,
}

impl Mode {
    /// Frames go out whole, header included (see the module's docs);
    /// otherwise the writer puts a text header before each JSON text.
    pub fn whole_frames(self) -> bool {
        self != Mode::default()
    }

    /// The hub's frame as this connection sends it: shared, encoded once
    /// per node.
    pub(super) fn delivery(self, delivery: &Delivery, node: &Node) -> Bytes {
        match self {
            Mode {
                format: Format::Json,
                deflate: false,
            } => delivery.frame.clone().into(),
            Mode {
                format: Format::Msgpack,
                deflate: false,
            } => delivery
                .encoded
                .msgpack
                .get_or_init(|| msgpack_frame(&delivery.frame))
                .clone(),
            Mode {
                format: Format::Json,
                deflate: true,
            } => delivery
                .encoded
                .json
                .get_or_init(|| {
                    let compress = deflates(&delivery.channel, node);
                    compressed_or_not(TEXT, delivery.frame.as_bytes(), compress, node)
                })
                .clone(),
            Mode {
                format: Format::Msgpack,
                deflate: true,
            } => delivery
                .encoded
                .msgpack_deflate
                .get_or_init(|| match msgpack::to_msgpack(&delivery.frame) {
                    Ok(packed) => {
                        let compress = deflates(&delivery.channel, node);
                        compressed_or_not(BINARY, &packed, compress, node)
                    }
                    Err(error) => untranslated(&error),
                })
                .clone(),
        }
    }

    /// A frame the session wrote itself (a reply, the welcome, a replayed
    /// message), as this connection sends it.
    pub(super) fn frame(self, text: String, node: &Node) -> Bytes {
        if self == Mode::default() {
            return Bytes::from(text);
        }
        self.own(&text, node)
    }

    /// A frame already shared as JSON text (a replayed message).
    pub(super) fn shared(self, frame: Utf8Bytes, node: &Node) -> Bytes {
        if self == Mode::default() {
            return frame.into();
        }
        self.own(frame.as_str(), node)
    }

    /// A frame of this connection's own as a whole frame: compressed when
    /// it reaches the threshold (the namespace's choice is for channel
    /// messages, shared by every subscriber).
    fn own(self, json: &str, node: &Node) -> Bytes {
        match self.format {
            Format::Json => compressed_or_not(TEXT, json.as_bytes(), self.deflate, node),
            Format::Msgpack if !self.deflate => msgpack_frame(json),
            Format::Msgpack => match msgpack::to_msgpack(json) {
                Ok(packed) => compressed_or_not(BINARY, &packed, true, node),
                Err(error) => untranslated(&error),
            },
        }
    }
}

/// Whether a channel's messages are compressed: its namespace opted in.
fn deflates(channel: &str, node: &Node) -> bool {
    node.config.namespace(namespace(channel)).deflate
}

/// A whole frame of `payload` with first byte `first`: compressed (RSV1
/// set) when `compress` and it reaches `session.deflate_threshold`, unless
/// compressing did not make it smaller (data that is already compressed).
fn compressed_or_not(first: u8, payload: &[u8], compress: bool, node: &Node) -> Bytes {
    if compress && payload.len() >= node.config.session.deflate_threshold {
        let mut size = None;
        let frame = whole(first | RSV1, |out| {
            let start = out.len();
            if compression::compress_into(payload, out) && out.len() - start < payload.len() {
                size = Some(out.len() - start);
            }
        });
        if let Some(size) = size {
            node.metrics.deflated(Direction::Sent, payload.len(), size);
            return frame;
        }
    }
    whole(first, |out| out.extend_from_slice(payload))
}

/// A frame whose JSON could not be translated: dropped and logged (see
/// [`msgpack_frame`]).
fn untranslated(error: &str) -> Bytes {
    tracing::error!(message = "frame not translated to MessagePack", %error);
    Bytes::new()
}

/// The binary frame holding the MessagePack form of a JSON frame. The JSON
/// is the server's own (a frame it built around validated data), so the
/// translation does not fail; if it ever did, the frame is dropped (an
/// empty whole frame writes nothing) and logged, rather than a client
/// getting a frame it cannot decode.
fn msgpack_frame(json: &str) -> Bytes {
    let mut failed = None;
    let frame = whole(BINARY, |out| {
        if let Err(error) = msgpack::to_msgpack_into(json, out) {
            failed = Some(error);
        }
    });
    match failed {
        None => frame,
        Some(error) => untranslated(&error),
    }
}

/// Builds a whole frame: `first` (FIN, RSV1 and the opcode), the length,
/// then the payload `build` writes. The payload is written after room left
/// for the longest header, and the header put right before it, so the
/// frame is one buffer and its payload is never moved.
pub(super) fn whole(first: u8, build: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    const ROOM: usize = 10;
    let mut buf = Vec::with_capacity(ROOM + 256);
    buf.resize(ROOM, 0);
    build(&mut buf);
    let mut header = [0u8; ROOM];
    let n = frame_header(first, buf.len() - ROOM, &mut header);
    buf[ROOM - n..ROOM].copy_from_slice(&header[..n]);
    Bytes::from(buf).slice(ROOM - n..)
}

/// Writes an unmasked frame header with first byte `first` for `len`
/// payload bytes (RFC 6455 §5.2); returns its length.
pub(super) fn frame_header(first: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = first;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_frames_carry_their_header() {
        let small = whole(BINARY, |out| out.extend_from_slice(b"abc"));
        assert_eq!(&small[..], [0x82, 3, b'a', b'b', b'c']);
        let big = whole(TEXT, |out| out.extend_from_slice(&[b'x'; 300]));
        assert_eq!(&big[..4], [0x81, 126, 1, 44]);
        assert_eq!(big.len(), 304);
    }

    #[test]
    fn a_msgpack_frame_is_the_json_translated() {
        let frame = msgpack_frame(r#"{"type":"message","data":[1,"a"]}"#);
        assert_eq!(frame[0], BINARY);
        let len = usize::from(frame[1]);
        let json = msgpack::to_json(&frame[2..2 + len]).unwrap();
        assert_eq!(json, r#"{"type":"message","data":[1,"a"]}"#);
    }
}
