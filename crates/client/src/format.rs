//! The wire format a connection speaks (docs/protocol.md, "Formats and
//! compression"): JSON text frames, as always, or MessagePack maps in binary
//! frames, chosen at connect with `Sec-WebSocket-Protocol:
//! switchboard.msgpack`.
//!
//! Both formats carry the same keys and values, so the client builds every
//! command as JSON text and decodes every frame from JSON text: with
//! MessagePack, a command is turned into its MessagePack map just before it
//! is sent and a binary frame into its JSON text just after it is read
//! (`switchboard_protocol::msgpack`), and callers see the same [`Incoming`]
//! values either way.
//!
//! [`Incoming`]: switchboard_protocol::Incoming

use switchboard_protocol::msgpack;
use tokio_tungstenite::tungstenite::Message;

use crate::ClientError;

/// The subprotocol that asks for MessagePack frames.
pub const MSGPACK_PROTOCOL: &str = "switchboard.msgpack";

/// How frames are encoded on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// JSON text frames; the upgrade request names no subprotocol.
    #[default]
    Json,
    /// MessagePack maps in binary frames (`switchboard.msgpack`).
    MsgPack,
}

impl Format {
    /// The `Sec-WebSocket-Protocol` the upgrade request carries, if any.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Format::Json => None,
            Format::MsgPack => Some(MSGPACK_PROTOCOL),
        }
    }

    /// Checks the 101's `Sec-WebSocket-Protocol` (`answer`): a MessagePack
    /// connection needs `switchboard.msgpack` back; a JSON one, asked with
    /// no subprotocol, needs none.
    pub fn check_answer(self, answer: Option<&str>) -> Result<(), ClientError> {
        match (self, answer) {
            (Format::Json, None) => Ok(()),
            (Format::MsgPack, Some(MSGPACK_PROTOCOL)) => Ok(()),
            (format, answer) => Err(ClientError::Protocol(format!(
                "asked for {} and the server answered Sec-WebSocket-Protocol {answer:?}",
                format.subprotocol().unwrap_or("no subprotocol")
            ))),
        }
    }

    /// The WebSocket message carrying the command `json` (one JSON object).
    pub fn command(self, json: String) -> Result<Message, ClientError> {
        match self {
            Format::Json => Ok(Message::text(json)),
            Format::MsgPack => msgpack::to_msgpack(&json)
                .map(Message::binary)
                .map_err(|e| {
                    ClientError::Protocol(format!("command has no MessagePack form: {e}"))
                }),
        }
    }

    /// The JSON text of a binary frame read on a connection of this format.
    pub fn binary_frame(self, bytes: &[u8]) -> Result<String, ClientError> {
        match self {
            Format::Json => Err(ClientError::Protocol(
                "unexpected binary frame on a JSON connection".to_owned(),
            )),
            Format::MsgPack => msgpack::to_json(bytes)
                .map_err(|e| ClientError::Protocol(format!("undecodable MessagePack frame: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_msgpack_names_a_subprotocol() {
        assert_eq!(Format::default(), Format::Json);
        assert_eq!(Format::Json.subprotocol(), None);
        assert_eq!(Format::MsgPack.subprotocol(), Some("switchboard.msgpack"));
    }

    #[test]
    fn the_answer_must_match_what_was_asked() {
        assert!(Format::Json.check_answer(None).is_ok());
        assert!(Format::MsgPack
            .check_answer(Some("switchboard.msgpack"))
            .is_ok());
        assert!(Format::MsgPack.check_answer(None).is_err());
        assert!(Format::MsgPack
            .check_answer(Some("switchboard.json"))
            .is_err());
        assert!(Format::Json
            .check_answer(Some("switchboard.msgpack"))
            .is_err());
    }

    #[test]
    fn commands_are_text_or_binary_and_binary_frames_decode_back() {
        let json = r#"{"type":"publish","channel":"a","data":{"n":1,"s":"x"},"id":7}"#;
        assert_eq!(
            Format::Json.command(json.to_owned()).unwrap(),
            Message::text(json)
        );
        let Message::Binary(bytes) = Format::MsgPack.command(json.to_owned()).unwrap() else {
            panic!("a MessagePack command is a binary frame")
        };
        // fixmap of 4 entries: a map, as the contract asks.
        assert_eq!(bytes[0], 0x84);
        let back: serde_json::Value =
            serde_json::from_str(&Format::MsgPack.binary_frame(&bytes).unwrap()).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
        assert!(Format::Json.binary_frame(&bytes).is_err());
        assert!(Format::MsgPack.binary_frame(&[0xc1]).is_err());
    }
}
