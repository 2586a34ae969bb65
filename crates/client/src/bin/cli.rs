//! `switchboard-cli <ws-url>`: an interactive Switchboard connection for
//! poking at a gateway by hand. Prints the welcome and every frame received
//! as one JSON line on stdout, sends each stdin line as a text frame, and
//! exits when the connection closes, printing the close code.

use std::process::ExitCode;

use serde_json::{json, Value};
use switchboard_client::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use switchboard_client::{ClientError, Connection, Frame, Incoming, Message};
use tokio::io::{AsyncBufReadExt, BufReader};

const USAGE: &str = "usage: switchboard-cli <ws-url>

Connects to a Switchboard gateway, for example
  switchboard-cli 'ws://localhost:8080/ws?token=<JWT>'
prints the welcome and every frame received as one JSON line, and sends each
line typed on stdin as a text frame, for example
  {\"type\":\"subscribe\",\"channel\":\"chat:lobby\",\"id\":1}
  {\"type\":\"publish\",\"channel\":\"chat:lobby\",\"data\":{\"text\":\"hi\"},\"id\":2}
Ctrl-C closes the connection; the close code is printed on exit.";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = match args.as_slice() {
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [url] => url,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (mut connection, welcome) = match Connection::connect(url).await {
        Ok(connected) => connected,
        Err(ClientError::Refused {
            status,
            body,
            retry_after,
        }) => {
            let retry = retry_after
                .map(|r| format!(" (retry after {r}s)"))
                .unwrap_or_default();
            eprintln!("switchboard-cli: handshake refused: HTTP {status}{retry}: {body}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("switchboard-cli: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{}",
        to_json(Incoming::Welcome {
            connection_id: welcome.connection_id,
            node_id: welcome.node_id,
            user: welcome.user,
            expires_in: welcome.expires_in,
            batch: welcome.batch,
            transport: None,
            format: None,
        })
    );

    // `None` after end of input: keep printing frames until the server closes.
    let mut stdin = Some(BufReader::new(tokio::io::stdin()).lines());
    loop {
        tokio::select! {
            frame = connection.next_frame() => match frame {
                Ok(Frame::Incoming(frame)) => println!("{}", to_json(frame)),
                Ok(Frame::Closed { code, reason }) => {
                    println!("{}", json!({"type": "closed", "code": code, "reason": reason}));
                    return ExitCode::SUCCESS;
                }
                Err(ClientError::Protocol(e)) => eprintln!("switchboard-cli: {e}"),
                Err(e) => {
                    eprintln!("switchboard-cli: {e}");
                    return ExitCode::FAILURE;
                }
            },
            line = async {
                match stdin.as_mut() {
                    Some(lines) => lines.next_line().await,
                    None => std::future::pending().await,
                }
            } => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    if let Err(e) = connection.send_text(line).await {
                        eprintln!("switchboard-cli: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                Ok(None) => stdin = None,
                Err(e) => {
                    eprintln!("switchboard-cli: reading stdin: {e}");
                    stdin = None;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                if let Err(e) = connection.send_message(Message::Close(Some(close))).await {
                    eprintln!("switchboard-cli: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
}

/// A frame as JSON, for printing.
fn to_json(frame: Incoming) -> Value {
    match frame {
        Incoming::Welcome {
            connection_id,
            node_id,
            user,
            expires_in,
            batch,
            ..
        } => {
            let mut welcome = json!({"type": "welcome", "connection_id": connection_id, "node_id": node_id, "user": user});
            if let Some(expires_in) = expires_in {
                welcome["expires_in"] = json!(expires_in);
            }
            if batch {
                welcome["batch"] = json!(true);
            }
            welcome
        }
        Incoming::Reply { id, result, error } => {
            let mut reply = json!({"type": "reply", "id": id});
            if let Some(result) = result {
                reply["result"] = result;
            }
            if let Some(error) = error {
                reply["error"] = json!(error);
            }
            reply
        }
        Incoming::Error { error } => json!({"type": "error", "error": error}),
        // Frames of server-sent events streams; a WebSocket gets none.
        Incoming::Subscription {
            channel,
            result,
            error,
        } => json!({"type": "subscription", "channel": channel, "result": result, "error": error}),
        Incoming::Close { code, reason } => {
            json!({"type": "close", "code": code, "reason": reason})
        }
        Incoming::Message {
            channel,
            offset,
            data,
        } => {
            let mut message = json!({"type": "message", "channel": channel});
            if let Some(offset) = offset {
                message["offset"] = json!(offset);
            }
            message["data"] = data;
            message
        }
        Incoming::Reset {
            channel,
            offset,
            epoch,
        } => json!({"type": "reset", "channel": channel, "offset": offset, "epoch": epoch}),
        Incoming::Join {
            channel,
            user,
            connection_id,
            info,
        } => {
            let mut join = json!({"type": "join", "channel": channel, "user": user, "connection_id": connection_id});
            if let Some(info) = info {
                join["info"] = info;
            }
            join
        }
        Incoming::Leave {
            channel,
            user,
            connection_id,
        } => {
            json!({"type": "leave", "channel": channel, "user": user, "connection_id": connection_id})
        }
    }
}
