//! Channel history in Redis: two keys per channel and two Lua scripts.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `sb:hist:{<channel>}:meta` | hash | `epoch`, `top` (the latest offset), `rid` (the replication id of the server that wrote it), `ex` (when the TTLs were last refreshed, Redis time in ms); expires [`HISTORY_META_TTL`] after the last publish (`history_ttl` after a read created it, for a channel never published) |
//! | `sb:hist:{<channel>}:list` | list | the newest `history_size` frames, oldest first (up to an eighth more between trims, never read); expires `history_ttl` after the last publish |
//!
//! Both keys carry the channel in a hash tag, so each script touches one
//! slot (ready for Redis Cluster). The list holds frames only: the frame at
//! index `-k` has offset `top - k + 1`, so no offset is stored twice.
//!
//! The publish script increments `top`, completes the frame with that
//! offset, appends to the list (trimming it once it is an eighth over
//! `history_size`, so most publishes skip the LTRIM), refreshes both TTLs
//! when an eighth of `history_ttl` has passed since they last were (each
//! TTL is set an eighth longer, so a key still lives at least its TTL after
//! the last publish, and most publishes skip both PEXPIREs) and PUBLISHes
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
use crate::config::session::QUEUE_ENTRY_OVERHEAD;
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

/// How both scripts learn whether a channel's meta was written by a master
/// this server has since replaced. Replication is asynchronous, so a
/// replica promoted by a failover (Sentinel, or a cluster shard's) may lack
/// its old master's last writes: offsets it would hand out next may already
/// have been used, and messages readers saw may be gone. Such a stream
/// restarts under a new epoch, so subscribers are told (`reset`,
/// `recovered: false`) instead of missing messages silently.
///
/// Each meta records `rid`, the replication id of the server that last
/// wrote it. The node passes the id of the server it is connected to
/// (`known`, read when its connection opened; see `redis::replication`),
/// or `''` when it does not know it. A meta whose `rid` is that id was
/// written here: nothing to ask. Otherwise (a new server, an unknown id)
/// the script reads `INFO replication` once per call: a promoted server has
/// a non-zero `master_replid2` (the old master's id) until it restarts, so
/// a meta from another writer on a promoted server is stale; a master
/// restarted from its own append-only file has none and keeps its epochs.
/// `stream(meta_key)` returns the meta's epoch (nil when none), whether it
/// is stale, this server's id, the meta's `rid` and its `ex`.
const STALE_CHECK: &str = r"
local known = ARGV[1]
local info_replid, info_replid2
local function stream(meta_key)
  local meta = redis.call('HMGET', meta_key, 'epoch', 'rid', 'ex')
  local epoch = meta[1]
  if known ~= '' and ((not epoch) or meta[2] == known) then
    return epoch, false, known, meta[2], meta[3]
  end
  if not info_replid then
    local info = redis.call('INFO', 'replication')
    info_replid = string.match(info, 'master_replid:(%x+)') or ''
    info_replid2 = string.match(info, 'master_replid2:(%x+)') or ''
  end
  local stale = epoch and meta[2] ~= info_replid and string.find(info_replid2, '[^0]') ~= nil
  return epoch, stale, info_replid, meta[2], meta[3]
end
";

/// Stores and publishes messages, one after the other: for each, the
/// channel's next offset, the list append (and trim, past the slack), the
/// TTLs (when due) and the PUBLISH, as one atomic step per call: four Redis
/// calls per message in the steady state. KEYS: meta and list of each
/// message. ARGV: known replication id, epoch to start where none,
/// meta ttl ms, publish command (`PUBLISH`, or `SPUBLISH` on a cluster),
/// then five per message: Pub/Sub channel, frame head, frame tail, size,
/// ttl ms. Returns {offset, epoch} of each message, flattened. On a
/// cluster every key of one call must share a slot (one channel).
static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{STALE_CHECK}{}",
        r"
local out = {}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for i = 0, #KEYS / 2 - 1 do
  local meta_key, list_key, a = KEYS[2 * i + 1], KEYS[2 * i + 2], 4 + 5 * i
  local epoch, stale, replid, rid, ex = stream(meta_key)
  local ttl = tonumber(ARGV[a + 5])
  if (not epoch) or stale then
    epoch = ARGV[2]
    ex = nil
    redis.call('DEL', list_key)
    redis.call('HSET', meta_key, 'epoch', epoch, 'top', 0, 'rid', replid)
  elseif rid ~= replid then
    redis.call('HSET', meta_key, 'rid', replid)
  end
  local offset = redis.call('HINCRBY', meta_key, 'top', 1)
  -- Lua formats a number as a double ('%.14g', a costly printf) wherever
  -- it meets a string; the integer form, once, is much cheaper.
  local digits = string.format('%d', offset)
  local frame = ARGV[a + 2] .. digits .. ARGV[a + 3]
  local size = tonumber(ARGV[a + 4])
  if redis.call('RPUSH', list_key, frame) > size + math.floor(size / 8) then
    redis.call('LTRIM', list_key, -size, -1)
  end
  ex = tonumber(ex)
  if (not ex) or math.abs(now - ex) >= math.floor(ttl / 8) then
    redis.call('PEXPIRE', list_key, ttl + math.floor(ttl / 8))
    redis.call('PEXPIRE', meta_key, tonumber(ARGV[3]) + math.floor(ttl / 8))
    redis.call('HSET', meta_key, 'ex', now)
  end
  redis.call(ARGV[4], ARGV[a + 1], digits .. ':' .. epoch .. ':' .. frame)
  out[2 * i + 1] = offset
  out[2 * i + 2] = epoch
end
return out
"
    ))
});

/// KEYS: meta, list. ARGV: known replication id, since offset (-1: none),
/// since epoch, limit, epoch to start if none, the most messages to count
/// as kept (`history_size`; 0: all the list holds, which the publish script
/// trims only once it is an eighth over), ttl ms of a meta created here (a channel never
/// published: kept as long as its messages would be, so reads of random
/// names cannot pile up keys for a day), the most bytes to return (0: no
/// bound) and what each frame costs on top of its length. Returns {top,
/// epoch, first, frames} with the same selection as
/// [`crate::history::select`], cut as [`crate::history::fitting`] cuts it.
///
/// With a byte bound the frames are fetched in chunks, each sized from the
/// frames seen so far to what is left of the bound, and the script stops at
/// the first frame that does not fit: the reply (and the node) never holds
/// more than the bound, and Redis copies at most one chunk beyond it.
static READ: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{STALE_CHECK}{}",
        r"
local epoch, stale, replid, rid = stream(KEYS[1])
local top = 0
if (not epoch) or stale then
  local created = not epoch
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0, 'rid', replid)
  if created then
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
  end
else
  if rid ~= replid then
    redis.call('HSET', KEYS[1], 'rid', replid)
  end
  top = tonumber(redis.call('HGET', KEYS[1], 'top'))
end
local len = math.min(redis.call('LLEN', KEYS[2]), top)
local kept = tonumber(ARGV[6])
if kept > 0 then
  len = math.min(len, kept)
end
local first = top - len + 1
local since = tonumber(ARGV[2])
local limit = tonumber(ARGV[4])
local from = first
if since < 0 then
  from = math.max(first, top + 1 - limit)
elseif ARGV[3] == epoch then
  from = math.max(first, since + 1)
end
local frames = {}
if len > 0 and from <= top then
  local to = math.min(top, from + limit - 1)
  local max_bytes = tonumber(ARGV[8])
  if max_bytes <= 0 then
    frames = redis.call('LRANGE', KEYS[2], from - top - 1, to - top - 1)
  else
    local overhead = tonumber(ARGV[9])
    local used, n, at, chunk = 0, 0, from, 8
    while at <= to do
      local last = math.min(to, at + chunk - 1)
      local got = redis.call('LRANGE', KEYS[2], at - top - 1, last - top - 1)
      if #got == 0 then
        break
      end
      for i = 1, #got do
        used = used + #got[i] + overhead
        if used > max_bytes then
          return {top, epoch, first, frames}
        end
        n = n + 1
        frames[n] = got[i]
      end
      at = last + 1
      chunk = math.max(1, math.min(1024, math.floor((max_bytes - used) * n / used) + 1))
    end
  end
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

/// A message to store and publish: its channel, its frame in two parts
/// (around the offset) and the channel's history policy.
pub struct Append<'a> {
    pub channel: &'a str,
    pub message: &'a MessageParts,
    pub policy: HistoryPolicy,
}

/// Stores and publishes messages in one script call, in order; returns
/// their positions. On a cluster they must all be on one channel.
pub async fn append(link: &Link, messages: &[Append<'_>]) -> Result<Vec<Position>, String> {
    let mode = link.mode();
    let epoch = new_epoch();
    let publish = publish_command(mode);
    let flat: Vec<redis::Value> = link
        .run_script_as(|known| {
            let mut invocation = PUBLISH.prepare_invoke();
            invocation
                .arg(known)
                .arg(&epoch)
                .arg(millis(HISTORY_META_TTL))
                .arg(publish);
            for Append {
                channel,
                message,
                policy,
            } in messages
            {
                invocation
                    .key(meta_key(channel))
                    .key(list_key(channel))
                    .arg(pubsub_channel(mode, channel))
                    .arg(&message.head)
                    .arg(&message.tail)
                    .arg(policy.size.max(1))
                    .arg(millis(policy.ttl));
            }
            invocation
        })
        .await?;
    positions(flat, messages.len())
}

/// The publish script's reply: offset and epoch of each message.
fn positions(flat: Vec<redis::Value>, expected: usize) -> Result<Vec<Position>, String> {
    if flat.len() != 2 * expected {
        return Err(format!(
            "history script answered {} values for {expected} messages",
            flat.len()
        ));
    }
    let mut values = flat.into_iter();
    let mut positions = Vec::with_capacity(expected);
    while let (Some(offset), Some(epoch)) = (values.next(), values.next()) {
        positions.push(Position {
            offset: redis::from_redis_value(offset).map_err(|e| e.to_string())?,
            epoch: redis::from_redis_value(epoch).map_err(|e| e.to_string())?,
        });
    }
    Ok(positions)
}

/// Reads a page of a channel's history; a channel never published gets its
/// position now, kept for `created_ttl` unless a publish extends it.
/// `kept` is the channel's `history_size` (`None`: whatever the list holds).
pub async fn read(
    link: &Link,
    channel: &str,
    query: &HistoryQuery,
    created_ttl: std::time::Duration,
    kept: Option<usize>,
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
    let epoch = new_epoch();
    let (top, epoch, first, frames): (u64, String, u64, Vec<String>) = link
        .run_script_as(|known| {
            let mut invocation = READ.prepare_invoke();
            invocation
                .key(meta_key(channel))
                .key(list_key(channel))
                .arg(known)
                .arg(since_offset)
                .arg(since_epoch)
                .arg(query.limit.max(1))
                .arg(epoch)
                .arg(kept.unwrap_or(0))
                .arg(millis(created_ttl))
                .arg(query.max_bytes.map_or(0, |max| max.max(1)))
                .arg(QUEUE_ENTRY_OVERHEAD);
            invocation
        })
        .await?;
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
