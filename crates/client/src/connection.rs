//! One WebSocket connection without reconnects: request helpers that wait for
//! their reply while buffering pushes, and raw access for protocol tests.
//! It speaks either format (JSON text or MessagePack binary frames, see
//! [`Format`]): commands are built as JSON and encoded on the way out,
//! frames decoded to the same [`Incoming`] values on the way in.

use std::collections::VecDeque;
use std::io::ErrorKind;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use switchboard_protocol::batch::BatchMessage;
use switchboard_protocol::{close, ErrorBody, Incoming, Outgoing, Position};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, error::ProtocolError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::format::Format;
use crate::ClientError;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The server's first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub connection_id: String,
    pub node_id: String,
    pub user: String,
    /// Seconds until the connection's token expires; `refresh` before then.
    pub expires_in: Option<u64>,
    /// The server sends batched frames (the URL asked with `batch=1`):
    /// several messages per text frame, one per line. [`Connection`] splits
    /// them; callers see one [`Incoming`] per message either way.
    pub batch: bool,
}

/// The entries of a `publish_batch` reply's `{"replies": [...]}`: an entry
/// with `error` is that message's error.
fn batch_replies(result: Value) -> Result<Vec<Result<Value, ErrorBody>>, ClientError> {
    let Value::Object(mut result) = result else {
        return Err(ClientError::Protocol(
            "publish_batch result is not an object".into(),
        ));
    };
    let Some(Value::Array(replies)) = result.remove("replies") else {
        return Err(ClientError::Protocol(
            "publish_batch result has no replies".into(),
        ));
    };
    replies
        .into_iter()
        .map(|reply| match reply.get("error") {
            Some(error) => serde_json::from_value::<ErrorBody>(error.clone())
                .map(Err)
                .map_err(|e| ClientError::Protocol(format!("bad error in a batch reply: {e}"))),
            None => Ok(Ok(reply)),
        })
        .collect()
}

/// One member in a `presence` reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    pub user: String,
    pub connection_id: String,
    #[serde(default)]
    pub info: Option<Value>,
}

/// A frame read from the server, or the end of the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Incoming(Incoming),
    /// The server sent a Close frame (`code` is `None` if it carried no code),
    /// or the connection ended without one (`code: None`).
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// One WebSocket connection to the gateway. It never reconnects; see
/// [`crate::Client`] for that. No method takes a timeout: wrap calls in
/// `tokio::time::timeout`.
pub struct Connection {
    socket: Socket,
    /// Frames read while waiting for a reply, handed out by [`Connection::next_frame`].
    buffered: VecDeque<Incoming>,
    /// The messages of a batched frame after its first, read before the
    /// socket (each decoded, or the error it gave).
    lines: VecDeque<Result<Incoming, ClientError>>,
    next_id: u64,
    /// Set once the connection has ended; every later read returns it.
    closed: Option<(Option<u16>, String)>,
    /// What the server agreed to speak.
    format: Format,
}

/// Where a frame read while waiting for reply `id` goes.
#[derive(Debug, PartialEq)]
enum Routed {
    /// The awaited reply: its `result` (`null` if absent) or its `error`.
    Reply(Result<Value, ErrorBody>),
    /// Anything else, kept for [`Connection::next_frame`].
    Other(Incoming),
}

fn route(frame: Incoming, id: u64) -> Routed {
    match frame {
        Incoming::Reply {
            id: got,
            result,
            error,
        } if got == id => Routed::Reply(match error {
            Some(error) => Err(error),
            None => Ok(result.unwrap_or(Value::Null)),
        }),
        other => Routed::Other(other),
    }
}

fn parse_members(result: Value) -> Result<Vec<Member>, ClientError> {
    #[derive(Deserialize)]
    struct Presence {
        members: Vec<Member>,
    }
    serde_json::from_value::<Presence>(result)
        .map(|p| p.members)
        .map_err(|e| ClientError::Protocol(format!("malformed presence reply: {e}")))
}

/// Read errors that mean "the peer went away" rather than a client failure.
fn ended_without_close(error: &tungstenite::Error) -> bool {
    match error {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        tungstenite::Error::Io(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// A short, printable excerpt of a frame for error messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

impl Connection {
    /// Connects to `url` (`ws://host:port/ws?token=<JWT>`) and reads the welcome.
    pub async fn connect(url: &str) -> Result<(Connection, Welcome), ClientError> {
        Connection::connect_request(url.into_client_request()?).await
    }

    /// Connects with a prepared request, so callers can add headers such as
    /// `Authorization: Bearer <JWT>` or `Origin`. Build it with
    /// [`IntoClientRequest::into_client_request`] and edit its headers.
    /// An HTTP refusal becomes [`ClientError::Refused`]; any first frame other
    /// than a welcome is an error.
    pub async fn connect_request(
        request: http::Request<()>,
    ) -> Result<(Connection, Welcome), ClientError> {
        Connection::connect_request_with(request, Format::Json).await
    }

    /// Connects to `url` speaking `format` and reads the welcome.
    pub async fn connect_with(
        url: &str,
        format: Format,
    ) -> Result<(Connection, Welcome), ClientError> {
        Connection::connect_request_with(url.into_client_request()?, format).await
    }

    /// Connects with a prepared request speaking `format`: with
    /// [`Format::MsgPack`] the request asks for `Sec-WebSocket-Protocol:
    /// switchboard.msgpack` (replacing any it had) and the server must
    /// answer with it, else [`ClientError::Protocol`]. With [`Format::Json`]
    /// the request goes as given, so a test may name subprotocols itself;
    /// the connection then speaks whichever format the server chose.
    pub async fn connect_request_with(
        mut request: http::Request<()>,
        format: Format,
    ) -> Result<(Connection, Welcome), ClientError> {
        if let Some(protocol) = format.subprotocol() {
            request.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(protocol),
            );
        }
        let asked = request
            .headers()
            .contains_key(http::header::SEC_WEBSOCKET_PROTOCOL);
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(ClientError::handshake)?;
        let answer = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.to_str().unwrap_or("<not text>"));
        let format = if format == Format::Json && asked {
            // The caller named the subprotocols: speak what the server chose.
            match answer {
                Some(crate::format::MSGPACK_PROTOCOL) => Format::MsgPack,
                _ => Format::Json,
            }
        } else {
            format.check_answer(answer)?;
            format
        };
        let mut connection = Connection {
            socket,
            buffered: VecDeque::new(),
            lines: VecDeque::new(),
            next_id: 1,
            closed: None,
            format,
        };
        let welcome = match connection.next_frame().await? {
            Frame::Incoming(Incoming::Welcome {
                connection_id,
                node_id,
                user,
                expires_in,
                batch,
                ..
            }) => Welcome {
                connection_id,
                node_id,
                user,
                expires_in,
                batch,
            },
            Frame::Incoming(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected a welcome frame, got {other:?}"
                )))
            }
            Frame::Closed { code, reason } => return Err(ClientError::Closed { code, reason }),
        };
        Ok((connection, welcome))
    }

    /// The format the connection speaks.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Subscribes to `channel`; returns the reply's `result`.
    pub async fn subscribe(&mut self, channel: &str) -> Result<Value, ClientError> {
        self.subscribe_since(channel, None).await
    }

    /// Subscribes to `channel`, resuming after `since` when given; returns
    /// the reply's `result` (`{"offset", "epoch"}` on channels with history,
    /// plus `"recovered"` when `since` was sent).
    pub async fn subscribe_since(
        &mut self,
        channel: &str,
        since: Option<&Position>,
    ) -> Result<Value, ClientError> {
        self.request(Outgoing {
            channel: Some(channel),
            since,
            ..Outgoing::new("subscribe")
        })
        .await
    }

    /// Unsubscribes from `channel`; returns the reply's `result`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<Value, ClientError> {
        self.request(Outgoing {
            channel: Some(channel),
            ..Outgoing::new("unsubscribe")
        })
        .await
    }

    /// Publishes `data` to `channel`; returns the reply's `result`
    /// (`{"offset", "epoch"}` on channels with history).
    pub async fn publish(&mut self, channel: &str, data: &Value) -> Result<Value, ClientError> {
        self.request(Outgoing {
            channel: Some(channel),
            data: Some(data),
            ..Outgoing::new("publish")
        })
        .await
    }

    /// Publishes many messages in one `publish_batch` command, handed to the
    /// broker in list order. Returns, in the same order, each message's
    /// result (what [`Connection::publish`] returns for it) or its own error
    /// (bad channel, no grant, over the message rate, broker unavailable).
    /// The call as a whole fails only as any command does (an empty or
    /// over-long list, a closed connection).
    pub async fn publish_batch(
        &mut self,
        messages: &[BatchMessage<'_>],
    ) -> Result<Vec<Result<Value, ErrorBody>>, ClientError> {
        let result = self
            .request(Outgoing {
                messages: Some(messages),
                ..Outgoing::new("publish_batch")
            })
            .await?;
        batch_replies(result)
    }

    /// Reads `channel`'s stored messages: those after `since`, or the newest
    /// ones, at most `limit`. Returns the reply's `result`:
    /// `{"offset", "epoch", "messages": [<message frames>]}`, plus
    /// `"recovered"` when `since` was sent.
    pub async fn history(
        &mut self,
        channel: &str,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<Value, ClientError> {
        self.request(Outgoing {
            channel: Some(channel),
            since,
            limit,
            ..Outgoing::new("history")
        })
        .await
    }

    /// Lists the members present in `channel`.
    pub async fn presence(&mut self, channel: &str) -> Result<Vec<Member>, ClientError> {
        let result = self
            .request(Outgoing {
                channel: Some(channel),
                ..Outgoing::new("presence")
            })
            .await?;
        parse_members(result)
    }

    /// Replaces the connection's token; returns the reply's `result`
    /// (`{"expires_in": <seconds>}`).
    pub async fn refresh(&mut self, token: &str) -> Result<Value, ClientError> {
        self.request(Outgoing {
            token: Some(token),
            ..Outgoing::new("refresh")
        })
        .await
    }

    /// Sends an application-level `ping`; returns the reply's `result`.
    pub async fn ping(&mut self) -> Result<Value, ClientError> {
        self.request(Outgoing::new("ping")).await
    }

    /// Sends `command` with the next id and waits for the reply with that id.
    /// Other frames read meanwhile are buffered for [`Connection::next_frame`].
    /// Not cancel-safe in the sense that a reply arriving after the caller gave
    /// up is later returned by `next_frame` like any other frame.
    async fn request(&mut self, command: Outgoing<'_>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let command = Outgoing {
            id: Some(id),
            ..command
        };
        self.send_command(command.encode()).await?;
        loop {
            match self.read_frame().await? {
                Frame::Closed { code, reason } => return Err(ClientError::Closed { code, reason }),
                Frame::Incoming(frame) => match route(frame, id) {
                    Routed::Reply(reply) => return reply.map_err(ClientError::Reply),
                    Routed::Other(frame) => self.buffered.push_back(frame),
                },
            }
        }
    }

    /// Sends a command given as JSON text in the connection's format: a text
    /// frame, or its MessagePack map in a binary frame.
    pub async fn send_command(&mut self, json: impl Into<String>) -> Result<(), ClientError> {
        let message = self.format.command(json.into())?;
        self.send_message(message).await
    }

    /// Sends a raw text frame (for malformed-frame tests), whatever the format.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.send_message(Message::text(text.into())).await
    }

    /// Sends a raw WebSocket message (binary, ping, close, ...).
    pub async fn send_message(&mut self, message: Message) -> Result<(), ClientError> {
        if let Some((code, reason)) = &self.closed {
            return Err(ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            });
        }
        Ok(self.socket.send(message).await?)
    }

    /// The next frame: a buffered one first, else one from the socket.
    /// Server pings are answered while reading. After the connection ended,
    /// every call returns the same [`Frame::Closed`]. A text frame that does not
    /// decode is a [`ClientError::Protocol`]; reading can continue after it.
    /// Cancel-safe: no frame is lost if the future is dropped.
    pub async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        match self.buffered.pop_front() {
            Some(frame) => Ok(Frame::Incoming(frame)),
            None => self.read_frame().await,
        }
    }

    /// The next frame as an [`Incoming`], with the end of the connection as
    /// [`ClientError::Closed`]. Nothing is skipped.
    pub async fn next_event(&mut self) -> Result<Incoming, ClientError> {
        match self.next_frame().await? {
            Frame::Incoming(frame) => Ok(frame),
            Frame::Closed { code, reason } => Err(ClientError::Closed { code, reason }),
        }
    }

    /// The next frame, which must be a `message` push: returns its channel and
    /// data (see [`Connection::next_event`] for its offset). Any other frame
    /// (join, leave, reset, error, ...) is a [`ClientError::Protocol`] naming
    /// it; it is consumed, not skipped.
    pub async fn expect_message(&mut self) -> Result<(String, Value), ClientError> {
        match self.next_event().await? {
            Incoming::Message { channel, data, .. } => Ok((channel, data)),
            other => Err(ClientError::Protocol(format!(
                "expected a message push, got {other:?}"
            ))),
        }
    }

    /// Reads until the connection ends, discarding frames (also undecodable
    /// ones); returns the close code and reason.
    pub async fn wait_closed(&mut self) -> Result<(Option<u16>, String), ClientError> {
        loop {
            match self.next_frame().await {
                Ok(Frame::Closed { code, reason }) => return Ok((code, reason)),
                Ok(Frame::Incoming(_)) | Err(ClientError::Protocol(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes with code 1000 and waits for the server's close frame.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::from(close::NORMAL),
            reason: "".into(),
        };
        match self.socket.close(Some(frame)).await {
            Err(e) if !ended_without_close(&e) => return Err(e.into()),
            _ => {}
        }
        // Finish the closing handshake: read until the server's close arrives.
        while let Some(Ok(_)) = self.socket.next().await {}
        Ok(())
    }

    /// Reads the next frame from the socket (not the buffer).
    async fn read_frame(&mut self) -> Result<Frame, ClientError> {
        if let Some(line) = self.lines.pop_front() {
            return line.map(Frame::Incoming);
        }
        loop {
            if let Some((code, reason)) = &self.closed {
                return Ok(Frame::Closed {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            let message = match self.socket.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) if ended_without_close(&e) => {
                    self.closed = Some((None, e.to_string()));
                    continue;
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    self.closed = Some((None, "connection ended without a close frame".to_owned()));
                    continue;
                }
            };
            match message {
                Message::Binary(bytes) => {
                    // One MessagePack map: never a batch.
                    let text = self.format.binary_frame(&bytes)?;
                    return Incoming::decode(&text).map(Frame::Incoming).map_err(|e| {
                        ClientError::Protocol(format!(
                            "undecodable frame {:?}: {e}",
                            excerpt(&text)
                        ))
                    });
                }
                Message::Text(text) => {
                    // A batched frame: one message per line; the rest wait
                    // in `lines`, ahead of anything read later.
                    let mut lines = text.split('\n');
                    let first = lines.next().unwrap_or_default();
                    for line in lines {
                        self.lines.push_back(Incoming::decode(line).map_err(|e| {
                            ClientError::Protocol(format!(
                                "undecodable frame {:?}: {e}",
                                excerpt(line)
                            ))
                        }));
                    }
                    return Incoming::decode(first).map(Frame::Incoming).map_err(|e| {
                        ClientError::Protocol(format!(
                            "undecodable frame {:?}: {e}",
                            excerpt(first)
                        ))
                    });
                }
                Message::Close(frame) => {
                    self.closed = Some(frame.map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    }));
                    // Send tungstenite's queued close reply; the connection is over either way.
                    let _ = self.socket.flush().await;
                }
                // tungstenite queued the pong while reading; send it now rather
                // than on the next read, which may not come soon.
                Message::Ping(_) => {
                    let _ = self.socket.flush().await;
                }
                Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(text: &str) -> Incoming {
        Incoming::decode(text).unwrap()
    }

    #[test]
    fn batch_replies_split_results_and_errors() {
        let result = json!({"replies": [
            {"offset": 1, "epoch": "E"},
            {"error": {"code": "forbidden", "message": "no"}},
            {},
        ]});
        let replies = batch_replies(result).unwrap();
        assert_eq!(replies[0], Ok(json!({"offset": 1, "epoch": "E"})));
        assert_eq!(
            replies[1],
            Err(ErrorBody {
                code: "forbidden".into(),
                message: "no".into()
            })
        );
        assert_eq!(replies[2], Ok(json!({})));
        assert!(batch_replies(json!({})).is_err());
    }

    #[test]
    fn routes_the_awaited_reply_and_keeps_the_rest() {
        let ok = decode(r#"{"type":"reply","id":3,"result":{"channel":"a"}}"#);
        assert_eq!(route(ok, 3), Routed::Reply(Ok(json!({"channel": "a"}))));
        let empty = decode(r#"{"type":"reply","id":3}"#);
        assert_eq!(route(empty, 3), Routed::Reply(Ok(Value::Null)));
        let failed =
            decode(r#"{"type":"reply","id":3,"error":{"code":"forbidden","message":"no"}}"#);
        let Routed::Reply(Err(error)) = route(failed, 3) else {
            panic!("not an error reply")
        };
        assert_eq!(error.code, "forbidden");

        for other in [
            r#"{"type":"reply","id":2,"result":{}}"#,
            r#"{"type":"message","channel":"a","data":1}"#,
            r#"{"type":"join","channel":"a","user":"u","connection_id":"c"}"#,
            r#"{"type":"error","error":{"code":"bad_request","message":"x"}}"#,
        ] {
            assert_eq!(
                route(decode(other), 3),
                Routed::Other(decode(other)),
                "{other}"
            );
        }
    }

    #[test]
    fn parses_presence_members() {
        let members = parse_members(json!({"members": [
            {"user": "ann", "connection_id": "c1", "info": {"name": "Ann"}},
            {"user": "bob", "connection_id": "c2"},
        ]}))
        .unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].info, Some(json!({"name": "Ann"})));
        assert_eq!(
            (members[1].user.as_str(), members[1].info.as_ref()),
            ("bob", None)
        );
        assert!(matches!(
            parse_members(json!({})),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn excerpts_long_frames_on_char_boundaries() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(300);
        assert_eq!(excerpt(&long).chars().count(), 203);
    }
}
