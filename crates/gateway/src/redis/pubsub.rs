//! Pub/Sub channel names and the publish command of each connection mode,
//! shared by the broker (which subscribes), history (whose script publishes)
//! and presence (which publishes a crashed node's `leave` events).

use crate::redis::target::Mode;

/// The Pub/Sub channel carrying a Switchboard channel's frames.
pub const CHANNEL_PREFIX: &str = "sb:ch:";
/// The Pub/Sub channel every node listens to for cluster-wide commands.
pub const CONTROL_CHANNEL: &str = "sb:ctl";

/// The Pub/Sub channel carrying a Switchboard channel's frames:
/// `sb:ch:<channel>`, or on a cluster the shard channel `sb:ch:{<channel>}`,
/// which hashes to the slot of the channel's history keys (a script may only
/// SPUBLISH within its keys' slot).
pub fn pubsub_channel(mode: Mode, channel: &str) -> String {
    match mode {
        Mode::Cluster => format!("{CHANNEL_PREFIX}{{{channel}}}"),
        Mode::Server | Mode::Sentinel => format!("{CHANNEL_PREFIX}{channel}"),
    }
}

/// The Switchboard channel of a Pub/Sub channel name, `None` for others.
pub fn channel_of(mode: Mode, name: &str) -> Option<&str> {
    let rest = name.strip_prefix(CHANNEL_PREFIX)?;
    match mode {
        Mode::Cluster => rest.strip_prefix('{')?.strip_suffix('}'),
        Mode::Server | Mode::Sentinel => Some(rest),
    }
}

/// `SPUBLISH` on a cluster (sharded Pub/Sub), `PUBLISH` elsewhere.
pub fn publish_command(mode: Mode) -> &'static str {
    match mode {
        Mode::Cluster => "SPUBLISH",
        Mode::Server | Mode::Sentinel => "PUBLISH",
    }
}
