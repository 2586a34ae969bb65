//! A server-sent events stream as a session's wire (`GET /sse`): each frame
//! is one event, `data: <the frame's JSON>`, and the frames that move the
//! stream's position in a channel (a `message` with an offset, a `reset`,
//! a `subscription`) carry `id:` with the stream's position in every one of
//! its channels, so a browser's automatic reconnect sends it back as
//! `Last-Event-ID` and resumes every channel without loss.
//!
//! The id is `<offset>:<epoch>` per channel of the request, in its order,
//! joined by `,` (nothing for a channel without a position). It names every
//! channel, not the event's own, because `Last-Event-ID` is the only thing
//! a reconnecting `EventSource` sends. Its places are kept here, one small
//! entry per channel of the request; a frame is copied once per stream to
//! put its `data:` line around it (events are not framed by length).
//!
//! What the client sends on the stream is ignored until it closes: its
//! commands arrive over HTTP, through the session's queue.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use switchboard_protocol::position::valid_epoch;
use switchboard_protocol::{ChannelName, Position, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::wire::Wire;
use crate::hub::Delivery;
use crate::metrics::sessions::Transport;
use crate::node::Node;

/// The comment written at each ping interval: proxies see traffic on an
/// idle stream, clients ignore it.
const HEARTBEAT: &str = ": ping\n\n";

/// One channel the stream's request named, and the stream's position in
/// it (the last message the client was sent, or where its subscription
/// started).
#[derive(Debug)]
struct Place {
    channel: ChannelName,
    position: Option<(u64, Arc<str>)>,
}

/// A session's server-sent events stream over `S` (the client's TCP
/// connection, or a pipe into an HTTP response body).
pub struct EventStream<S> {
    io: S,
    places: Box<[Place]>,
    /// The client's side ended, or reading it failed: nothing more to read.
    ended: bool,
}

impl<S> EventStream<S> {
    /// A stream whose response head is written, for the request's channels
    /// and the positions its `Last-Event-ID` named (one per channel).
    pub fn new(io: S, channels: Vec<(ChannelName, Option<Position>)>) -> EventStream<S> {
        let places = channels
            .into_iter()
            .map(|(channel, since)| Place {
                channel,
                position: since.map(|p| (p.offset, Arc::from(p.epoch))),
            })
            .collect();
        EventStream {
            io,
            places,
            ended: false,
        }
    }

    /// The channels to subscribe when the stream opens, each with the
    /// position to resume from.
    pub(super) fn channels(&self) -> Vec<(ChannelName, Option<Position>)> {
        self.places
            .iter()
            .map(|place| {
                let since = place
                    .position
                    .as_ref()
                    .map(|(offset, epoch)| Position::new(*offset, epoch.as_ref()));
                (place.channel.clone(), since)
            })
            .collect()
    }

    /// Sets the stream's position in its `index`th channel.
    pub(super) fn set_position(&mut self, index: usize, position: Option<(u64, Arc<str>)>) {
        if let Some(place) = self.places.get_mut(index) {
            place.position = position;
        }
    }

    /// An event carrying `frame`, with the stream's id when `with_id`: one
    /// allocation per event (the id is written into it, not built apart).
    pub(super) fn event(&self, frame: &str, with_id: bool) -> Bytes {
        // Room for the id's places: an offset's digits, a colon, an epoch
        // of 16 hex digits and a comma, usually.
        let id_room = if with_id {
            8 + 40 * self.places.len()
        } else {
            0
        };
        let mut event = String::with_capacity(id_room + frame.len() + 16);
        if with_id {
            event.push_str("id: ");
            write_event_id(&mut event, self.places.iter().map(|p| p.position.as_ref()));
            event.push('\n');
        }
        event.push_str("data: ");
        event.push_str(frame);
        event.push_str("\n\n");
        Bytes::from(event)
    }

    /// The event carrying a frame the hub queued: with the stream's id
    /// when the frame moves a position in one of its channels.
    pub(super) fn delivery_event(&mut self, delivery: &Delivery) -> Bytes {
        let moved = delivery.position.as_ref().and_then(|(offset, epoch)| {
            let place = self
                .places
                .iter_mut()
                .find(|p| p.channel.as_str() == &*delivery.channel)?;
            place.position = Some((*offset, Arc::clone(epoch)));
            Some(())
        });
        self.event(&delivery.frame, moved.is_some())
    }
}

impl<S> Wire for EventStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Io = S;
    const TRANSPORT: Transport = Transport::Sse;

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        // Nothing the client sends here means anything: read it away and
        // wait for its end.
        let mut scratch = [0u8; 64];
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    self.ended = true;
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(WsError::Io(error))));
                }
            }
        }
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn io(&mut self) -> &mut S {
        &mut self.io
    }

    fn header(len: usize, out: &mut [u8; 10]) -> usize {
        super::wire::no_header(len, out)
    }

    fn delivery(&mut self, delivery: &Delivery, _node: &Node) -> Bytes {
        self.delivery_event(delivery)
    }

    fn frame(&self, text: String, _node: &Node) -> Bytes {
        self.event(&text, false)
    }

    async fn ping(&mut self) -> Result<(), WsError> {
        Ok(())
    }

    fn heartbeat() -> Option<Bytes> {
        Some(Bytes::from_static(HEARTBEAT.as_bytes()))
    }

    async fn close(&mut self, frame: CloseFrame) -> Option<Bytes> {
        let close = ServerFrame::Close {
            code: frame.code.into(),
            reason: frame.reason.as_str(),
        }
        .encode();
        Some(self.event(&close, false))
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        Ok(())
    }

    fn opening_channels(&self) -> Vec<(ChannelName, Option<Position>)> {
        self.channels()
    }

    fn set_position(&mut self, index: usize, position: Option<(u64, Arc<str>)>) {
        EventStream::set_position(self, index, position);
    }

    fn positioned(&self, text: String, _node: &Node) -> Bytes {
        self.event(&text, true)
    }
}

/// Writes the event id for these positions, one per channel in order.
fn write_event_id<'a>(
    id: &mut String,
    positions: impl Iterator<Item = Option<&'a (u64, Arc<str>)>>,
) {
    use std::fmt::Write;
    for (i, position) in positions.enumerate() {
        if i > 0 {
            id.push(',');
        }
        if let Some((offset, epoch)) = position {
            // Writing to a `String` cannot fail.
            let _ = write!(id, "{offset}:{epoch}");
        }
    }
}

/// Reads an event id (`Last-Event-ID`) back into one position per channel
/// of a request naming `channels` channels; the error is the message of the
/// 400 answer.
pub fn parse_event_id(id: &str, channels: usize) -> Result<Vec<Option<Position>>, String> {
    let places: Vec<&str> = if channels == 0 && id.is_empty() {
        Vec::new()
    } else {
        id.split(',').collect()
    };
    if places.len() != channels {
        return Err(format!(
            "Last-Event-ID names {} positions for {channels} channels",
            places.len()
        ));
    }
    places
        .into_iter()
        .map(|place| {
            if place.is_empty() {
                return Ok(None);
            }
            let malformed =
                || format!("Last-Event-ID position {place:?} is not <offset>:<epoch> (or empty)");
            let (offset, epoch) = place.split_once(':').ok_or_else(malformed)?;
            let offset: u64 = offset.parse().map_err(|_| malformed())?;
            if !valid_epoch(epoch) {
                return Err(malformed());
            }
            Ok(Some(Position::new(offset, epoch)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn stream(channels: &[(&str, Option<(u64, &str)>)]) -> EventStream<tokio::io::DuplexStream> {
        let (io, _) = tokio::io::duplex(64);
        EventStream::new(
            io,
            channels
                .iter()
                .map(|(c, p)| {
                    (
                        ChannelName::parse(c).unwrap(),
                        p.map(|(o, e)| Position::new(o, e)),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn ids_name_every_channel_in_order_and_read_back() {
        let mut stream = stream(&[("a", Some((5, "e1"))), ("b", None), ("c", None)]);
        let epoch: Arc<str> = Arc::from("e3");
        let delivery = Delivery {
            channel: "c".into(),
            position: Some((9, Arc::clone(&epoch))),
            frame: Utf8Bytes::from_static(
                r#"{"type":"message","channel":"c","offset":9,"data":1}"#,
            ),
            encoded: Default::default(),
        };
        let event = stream.delivery_event(&delivery);
        assert_eq!(
            std::str::from_utf8(&event).unwrap(),
            "id: 5:e1,,9:e3\ndata: {\"type\":\"message\",\"channel\":\"c\",\"offset\":9,\"data\":1}\n\n"
        );
        assert_eq!(
            parse_event_id("5:e1,,9:e3", 3),
            Ok(vec![
                Some(Position::new(5, "e1")),
                None,
                Some(Position::new(9, "e3"))
            ])
        );
    }

    #[test]
    fn frames_without_a_position_carry_no_id() {
        let mut stream = stream(&[("a", Some((5, "e1")))]);
        let join = Delivery {
            channel: "a".into(),
            position: None,
            frame: Utf8Bytes::from_static(r#"{"type":"join"}"#),
            encoded: Default::default(),
        };
        assert_eq!(
            std::str::from_utf8(&stream.delivery_event(&join)).unwrap(),
            "data: {\"type\":\"join\"}\n\n"
        );
        assert_eq!(
            std::str::from_utf8(&stream.event("{}", false)).unwrap(),
            "data: {}\n\n",
            "replies and the welcome carry no id"
        );
    }

    #[test]
    fn malformed_ids_are_refused_with_a_reason() {
        assert_eq!(
            parse_event_id("5:e1", 2),
            Err("Last-Event-ID names 1 positions for 2 channels".to_owned())
        );
        assert_eq!(
            parse_event_id("x:e1", 1),
            Err("Last-Event-ID position \"x:e1\" is not <offset>:<epoch> (or empty)".to_owned())
        );
        assert_eq!(
            parse_event_id("5:bad epoch", 1),
            Err(
                "Last-Event-ID position \"5:bad epoch\" is not <offset>:<epoch> (or empty)"
                    .to_owned()
            )
        );
        assert_eq!(parse_event_id("", 0), Ok(vec![]));
        assert_eq!(parse_event_id("", 1), Ok(vec![None]));
    }
}
