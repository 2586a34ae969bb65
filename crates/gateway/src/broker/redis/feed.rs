//! What arrives on the node's Pub/Sub subscriptions, handed to the hub:
//! channel messages in offset order, and commands on the control channel.
//!
//! Gap repair: messages of channels with history arrive as
//! `<offset>:<epoch>:<frame>` (see `history::redis`). The node remembers the
//! last offset it relayed per channel ([`Tracker`]); when Pub/Sub hands it a
//! later offset than the next one, or the link comes back after a drop, it
//! reads the missing range from history and delivers it, in order, before
//! anything newer, so local subscribers never see the gap. When history
//! cannot fill it (the epoch changed: Redis lost its data), the channel's
//! local subscribers get a `reset` frame with the new position instead of a
//! silent loss.
//!
//! The same [`Feed`] serves both Pub/Sub tasks (one server or Sentinel, and
//! Redis Cluster); the tasks own the connection, the feed what comes of it.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use switchboard_protocol::{close, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::namespaces::{DEFAULT_HISTORY_TTL, MAX_HISTORY_SIZE};
use crate::history::redis::{self as redis_history, Payload};
use crate::history::{HistoryQuery, Relay, Tracker};
use crate::hub::{Delivery, Hub};
use crate::redis::link::Link;
use crate::redis::pubsub::{channel_of, CONTROL_CHANNEL};
use crate::redis::target::Mode;

/// Cluster-wide commands on the control channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Control {
    /// `code` and `reason` are absent in what an older node sends: 4003
    /// `disconnected by the server` then.
    Disconnect {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

pub(super) fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

/// Relays the Pub/Sub messages of one node to its hub, repairing gaps from
/// history.
pub(super) struct Feed {
    /// How Pub/Sub channel names are spelled (sharded on a cluster).
    mode: Mode,
    /// For gap repair reads.
    link: Link,
    hub: Arc<Hub>,
    /// Shared with the broker, which seeds the position of a channel it
    /// read or published.
    tracker: Arc<Mutex<Tracker>>,
}

impl Feed {
    pub(super) fn new(mode: Mode, link: Link, hub: Arc<Hub>, tracker: Arc<Mutex<Tracker>>) -> Feed {
        Feed {
            mode,
            link,
            hub,
            tracker,
        }
    }

    /// A message arrived on the Pub/Sub channel `name`.
    pub(super) async fn on_message(&self, name: &str, payload: &[u8]) {
        let mode = self.mode;
        if let Some(channel) = channel_of(mode, name) {
            match redis_history::parse_payload(payload) {
                Some(Payload::Plain(text)) => {
                    self.hub
                        .deliver(&Delivery::plain(channel, Utf8Bytes::from(text)));
                }
                Some(Payload::Stored {
                    offset,
                    epoch,
                    frame,
                }) => self.relay(channel, offset, epoch, frame).await,
                None => tracing::warn!(message = "dropped a malformed payload from redis", channel),
            }
        } else if name == CONTROL_CHANNEL {
            match serde_json::from_slice::<Control>(payload) {
                Ok(Control::Disconnect { user, code, reason }) => {
                    let closed = self.hub.disconnect_user(
                        &user,
                        code.unwrap_or(close::DISCONNECTED),
                        reason
                            .as_deref()
                            .unwrap_or(crate::broker::DISCONNECT_REASON),
                    );
                    tracing::info!(message = "disconnect by server API", closed);
                }
                Err(error) => tracing::warn!(message = "unknown control message", %error),
            }
        }
    }

    /// The node no longer relays `channel` (its last local subscriber left).
    pub(super) fn forget(&self, channel: &str) {
        lock(&self.tracker).forget(channel);
    }

    /// Delivers a stored message in offset order, repairing a gap first.
    async fn relay(&self, channel: &str, offset: u64, epoch: &str, frame: &str) {
        let accepted = lock(&self.tracker).accept(channel, offset, epoch);
        let shared = match accepted {
            Ok(shared) => shared,
            Err(Relay::Duplicate) => {
                self.hub.metrics().relay_duplicate();
                return;
            }
            Err(_) => {
                if self.repair(channel).await.is_err() {
                    // History is out of reach: say so, then go on from here.
                    self.reset(channel, offset.saturating_sub(1), epoch);
                }
                let accepted = lock(&self.tracker).accept(channel, offset, epoch);
                match accepted {
                    Ok(shared) => shared,
                    Err(_) => {
                        // The repair delivered it (it was stored before published).
                        self.hub.metrics().relay_duplicate();
                        return;
                    }
                }
            }
        };
        self.hub.deliver(&Delivery::at(
            channel,
            offset,
            &shared,
            Utf8Bytes::from(frame),
        ));
    }

    /// Delivers what history holds after the last position relayed for
    /// `channel`. When that does not continue the stream (a new epoch, or
    /// messages trimmed or expired before they could be read), the channel's
    /// subscribers get a `reset` first. Errs when history cannot be read.
    async fn repair(&self, channel: &str) -> Result<(), ()> {
        let Some(known) = lock(&self.tracker).position(channel) else {
            return Ok(());
        };
        let query = HistoryQuery {
            since: Some(known.clone()),
            limit: MAX_HISTORY_SIZE,
            max_bytes: None,
        };
        let metrics = self.hub.metrics();
        // The channel was read (or published) before, so its position
        // exists; should it have vanished, the default TTL bounds the new one.
        let page = match redis_history::read(&self.link, channel, &query, DEFAULT_HISTORY_TTL, None)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                metrics.history_read("repair", false);
                tracing::warn!(message = "gap repair failed", channel, %error);
                return Err(());
            }
        };
        metrics.history_read("repair", true);
        if page.continues(&known) {
            if !page.messages.is_empty() {
                metrics.gap_repaired();
            }
        } else {
            let base = page
                .messages
                .first()
                .map_or(page.top.offset, |(offset, _)| offset - 1);
            tracing::warn!(
                message = "messages lost from history; subscribers told to reload",
                channel,
                known_offset = known.offset,
                known_epoch = %known.epoch,
                epoch = %page.top.epoch,
                offset = base
            );
            self.reset(channel, base, &page.top.epoch);
        }
        metrics.replayed("node", page.messages.len());
        for (offset, frame) in page.messages {
            let epoch = lock(&self.tracker).advance(channel, offset, &page.top.epoch);
            self.hub
                .deliver(&Delivery::at(channel, offset, &epoch, frame));
        }
        Ok(())
    }

    /// Tells the channel's local subscribers that messages up to `offset` of
    /// `epoch` may be lost; the stream continues after it.
    fn reset(&self, channel: &str, offset: u64, epoch: &str) {
        let frame = ServerFrame::Reset {
            channel,
            offset,
            epoch,
        }
        .encode();
        let epoch = lock(&self.tracker).advance(channel, offset, epoch);
        self.hub.metrics().stream_reset();
        self.hub.deliver(&Delivery::at(
            channel,
            offset,
            &epoch,
            Utf8Bytes::from(frame),
        ));
    }

    /// After a reconnect: repairs every channel the node still holds.
    pub(super) async fn repair_all(&self) {
        let positions = lock(&self.tracker).positions();
        for (channel, _) in positions {
            if !self.hub.has_subscribers(&channel) {
                lock(&self.tracker).forget(&channel);
                continue;
            }
            if self.repair(&channel).await.is_err() {
                // The link is likely down again; the next message or
                // reconnect retries.
                return;
            }
        }
    }
}
