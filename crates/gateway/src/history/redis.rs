//! Channel history in Redis: two keys per channel and two Lua scripts.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `sb:hist:{<channel>}:meta` | hash | `epoch`, `top` (the latest offset); expires [`HISTORY_META_TTL`] after the last publish (`history_ttl` after a read created it, for a channel never published) |
//! | `sb:hist:{<channel>}:list` | list | the newest `history_size` frames, oldest first; expires `history_ttl` after the last publish |
//!
//! Both keys carry the channel in a hash tag, so each script touches one
//! slot (ready for Redis Cluster). The list holds frames only: the frame at
//! index `-k` has offset `top - k + 1`, so no offset is stored twice.
//!
//! The publish script increments `top`, completes the frame with that
//! offset, appends and trims the list, refreshes both TTLs and PUBLISHes
//! `<offset>:<epoch>:<frame>` on the channel's Pub/Sub channel, all in one
//! atomic step: an acknowledged message is stored and published, and no two
//! nodes ever hand out the same offset. When the meta hash is missing
//! (never published, expired, evicted, or Redis restarted without
//! persistence) the script starts a new epoch (a random value the node
//! passes in) and drops any orphaned list, so offsets of an epoch always
//! describe one unbroken stream.

use std::sync::LazyLock;

use switchboard_protocol::{MessageParts, Position};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::namespaces::{HistoryPolicy, HISTORY_META_TTL};
use crate::history::{new_epoch, select, HistoryPage, HistoryQuery};
use crate::redis::link::Link;
use crate::redis::pubsub::{publish_command, pubsub_channel};

/// The hash holding a channel's epoch and latest offset.
pub fn meta_key(channel: &str) -> String {
    format!("sb:hist:{{{channel}}}:meta")
}

/// The list holding a channel's newest frames.
pub fn list_key(channel: &str) -> String {
    format!("sb:hist:{{{channel}}}:list")
}

/// The check both scripts start with: whether the channel's meta was
/// written by a master this server has since replaced. Replication is
/// asynchronous, so a replica promoted by a failover (Sentinel, or a
/// cluster shard's) may lack its old master's last writes: offsets it would
/// hand out next may already have been used, and messages readers saw may be
/// gone. Such a stream restarts under a new epoch, so subscribers are told
/// (`reset`, `recovered: false`) instead of missing messages silently.
/// A promoted server has a non-zero `master_replid2` (the old master's
/// replication id) until it restarts; a master restarted from its own
/// append-only file has none, so it keeps its epochs. Sets `replid` (this
/// server's id) and `promoted_stale` (the meta's writer is not this server,
/// and this server was promoted). KEYS[1] is the meta hash.
const STALE_CHECK: &str = r"
local info = redis.call('INFO', 'replication')
local replid = string.match(info, 'master_replid:(%x+)') or ''
local replid2 = string.match(info, 'master_replid2:(%x+)') or ''
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'rid')
local epoch = meta[1]
local promoted_stale = epoch and meta[2] ~= replid and string.find(replid2, '[^0]') ~= nil
";

/// KEYS: meta, list. ARGV: Pub/Sub channel, frame head, frame tail, size,
/// ttl ms, meta ttl ms, epoch to start if none, publish command (`PUBLISH`,
/// or `SPUBLISH` on a cluster). Returns {offset, epoch}.
static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{STALE_CHECK}{}",
        r"
if (not epoch) or promoted_stale then
  epoch = ARGV[7]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0, 'rid', replid)
elseif meta[2] ~= replid then
  redis.call('HSET', KEYS[1], 'rid', replid)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
local frame = ARGV[2] .. offset .. ARGV[3]
redis.call('RPUSH', KEYS[2], frame)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call(ARGV[8], ARGV[1], offset .. ':' .. epoch .. ':' .. frame)
return {offset, epoch}
"
    ))
});

/// KEYS: meta, list. ARGV: since offset (-1: none), since epoch, limit,
/// epoch to start if none, ttl ms of a meta created here (a channel never
/// published: kept as long as its messages would be, so reads of random
/// names cannot pile up keys for a day). Returns {top, epoch, first, frames}
/// with the same selection as [`crate::history::select`].
static READ: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{STALE_CHECK}{}",
        r"
local top = 0
if (not epoch) or promoted_stale then
  local created = not epoch
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0, 'rid', replid)
  if created then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
else
  top = tonumber(redis.call('HGET', KEYS[1], 'top'))
end
local len = math.min(redis.call('LLEN', KEYS[2]), top)
local first = top - len + 1
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local from = first
if since < 0 then
  from = math.max(first, top + 1 - limit)
elseif ARGV[2] == epoch then
  from = math.max(first, since + 1)
end
local frames = {}
if len > 0 and from <= top then
  local to = math.min(top, from + limit - 1)
  frames = redis.call('LRANGE', KEYS[2], from - top - 1, to - top - 1)
end
return {top, epoch, first, frames}
"
    ))
});

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Stores and publishes one message; returns its position.
pub async fn append(
    link: &Link,
    channel: &str,
    message: &MessageParts,
    policy: HistoryPolicy,
) -> Result<Position, String> {
    let mut invocation = PUBLISH.prepare_invoke();
    invocation
        .key(meta_key(channel))
        .key(list_key(channel))
        .arg(pubsub_channel(link.mode(), channel))
        .arg(&message.head)
        .arg(&message.tail)
        .arg(policy.size.max(1))
        .arg(millis(policy.ttl))
        .arg(millis(HISTORY_META_TTL))
        .arg(new_epoch())
        .arg(publish_command(link.mode()));
    let (offset, epoch): (u64, String) = link.run_script(&invocation).await?;
    Ok(Position { offset, epoch })
}

/// Reads a page of a channel's history; a channel never published gets its
/// position now, kept for `created_ttl` unless a publish extends it.
pub async fn read(
    link: &Link,
    channel: &str,
    query: &HistoryQuery,
    created_ttl: std::time::Duration,
) -> Result<HistoryPage, String> {
    let (since_offset, since_epoch) = match &query.since {
        // Offsets beyond i64 cannot exist in Redis; such a `since` reads as
        // "beyond the top" once compared with the page.
        Some(since) => (
            i64::try_from(since.offset).unwrap_or(i64::MAX),
            since.epoch.as_str(),
        ),
        None => (-1, ""),
    };
    let mut invocation = READ.prepare_invoke();
    invocation
        .key(meta_key(channel))
        .key(list_key(channel))
        .arg(since_offset)
        .arg(since_epoch)
        .arg(query.limit.max(1))
        .arg(new_epoch())
        .arg(millis(created_ttl));
    let (top, epoch, first, frames): (u64, String, u64, Vec<String>) =
        link.run_script(&invocation).await?;
    // The script selected with the same rule; recompute where it started.
    let len = (top + 1).saturating_sub(first);
    let from = select(top, len, &epoch, query).map_or(first, |(from, _)| from);
    let messages = frames
        .into_iter()
        .enumerate()
        .map(|(i, frame)| (from + i as u64, Utf8Bytes::from(frame)))
        .collect();
    Ok(HistoryPage {
        top: Position { offset: top, epoch },
        first,
        messages,
    })
}

/// A Pub/Sub payload: a frame outside history, or a stored one with its position.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Plain(&'a str),
    Stored {
        offset: u64,
        epoch: &'a str,
        frame: &'a str,
    },
}

/// Splits a payload from Redis; `None` when it is not UTF-8 or its header is
/// malformed. A frame is a JSON object, so it starts with `{`; a stored
/// message starts with its offset.
pub fn parse_payload(payload: &[u8]) -> Option<Payload<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    if text.starts_with('{') {
        return Some(Payload::Plain(text));
    }
    let (offset, rest) = text.split_once(':')?;
    let (epoch, frame) = rest.split_once(':')?;
    Some(Payload::Stored {
        offset: offset.parse().ok()?,
        epoch,
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            parse_payload(br#"{"type":"join"}"#),
            Some(Payload::Plain(r#"{"type":"join"}"#))
        );
        assert_eq!(
            parse_payload(br#"12:ab:{"type":"message","x":"a:b"}"#),
            Some(Payload::Stored {
                offset: 12,
                epoch: "ab",
                frame: r#"{"type":"message","x":"a:b"}"#
            })
        );
        assert_eq!(parse_payload(b"x:ab:{}"), None);
        assert_eq!(parse_payload(b"12"), None);
        assert_eq!(parse_payload(&[0xff, b'{']), None);
    }

    #[test]
    fn keys_share_a_hash_tag() {
        assert_eq!(meta_key("chat:a"), "sb:hist:{chat:a}:meta");
        assert_eq!(list_key("chat:a"), "sb:hist:{chat:a}:list");
    }
}
