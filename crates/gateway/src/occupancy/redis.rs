//! Cluster-wide occupancy in Redis, and the presence and occupancy events
//! it turns into (the webhook queue).
//!
//! Each node writes its own counts (a user's connections, a user's
//! subscriptions to a channel) into its hash, and one Lua script adds the
//! difference to the cluster's sums. When a sum crosses zero the same
//! script records the transition: `user_online`/`user_offline` (a user's
//! connections), `member_added`/`member_removed` (a user's subscriptions
//! to a channel of a presence namespace), `channel_occupied`/
//! `channel_vacated` (a channel's subscriptions). Going away is held for
//! the grace period in a sorted set: coming back within it cancels the
//! pair, so a flapping connection sends nothing; otherwise a node moves it
//! to the queue when due. Events go to one Redis Stream, which
//! `webhooks` delivers in the order they were queued.
//!
//! That order is the contract in docs/protocol.md ("Order"), and the
//! script makes it by construction (see `OCCUPANCY`). The held departures
//! keep the order they happened in, so a grace period delays them without
//! reordering them.
//!
//! Writing counts, detecting transitions and queueing events happen in one
//! script, so a node crash can never leave a transition without its event.
//! That needs every key in one slot: they share the `{occ}` hash tag, so on
//! a Redis Cluster all occupancy lives on one shard. It is written per
//! connect and subscribe (batched per node), never per message.
//!
//! A dead node's counts are removed by the node that reaps it
//! (`presence::redis`), through the same script (its subscriptions, then
//! its connections), so its users go offline (after the grace period)
//! within the lease bound, in the same order as a clean exit.
//!
//! Keys (docs/architecture.md lists them):
//! - `sb:{occ}:node:<node>` HASH `["u","",user]` / `["s"|"m",channel,user]` → this node's count
//! - `sb:{occ}:online` HASH user → connections in the cluster
//! - `sb:{occ}:subs` HASH channel → subscriptions in the cluster
//! - `sb:{occ}:users:<channel>` HASH user → the user's subscriptions to it
//! - `sb:{occ}:channels` ZSET (score 0) of channels with subscribers, for listing
//! - `sb:{occ}:held` ZSET held departures `["u"|"m"|"c",channel,user]` → when it happened (µs), growing in the order held
//! - `sb:{occ}:grace` ZSET, the same by due time (ms), from earlier versions: drained, never written
//! - `sb:{occ}:events` STREAM of events; a consumer group per webhook URL
//! - `sb:{occ}:epoch` STRING, the queue's random epoch (part of event ids)

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::webhooks::WebhookMetrics;
use crate::occupancy::{ChannelCounts, ChannelPage, Count, ListQuery, Occupancy};
use crate::redis::link::Link;

const PREFIX: &str = "sb:{occ}:";
pub const ONLINE_KEY: &str = "sb:{occ}:online";
pub const CHANNELS_KEY: &str = "sb:{occ}:channels";
pub const SUBS_KEY: &str = "sb:{occ}:subs";
pub const HELD_KEY: &str = "sb:{occ}:held";
/// Where versions before `HELD_KEY` held departures (scored by due time,
/// in ms, which did not keep their order); still drained and cancelled.
pub const LEGACY_GRACE_KEY: &str = "sb:{occ}:grace";
pub const EVENTS_KEY: &str = "sb:{occ}:events";
pub const EPOCH_KEY: &str = "sb:{occ}:epoch";
/// Counts per script call: bounds how long one call holds Redis.
const BATCH: usize = 500;
/// How often a node moves due departures to the queue.
const DUE_EVERY: Duration = Duration::from_millis(250);
/// Wait after a failed write before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

fn node_key(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

fn users_key(channel: &str) -> String {
    format!("{PREFIX}users:{channel}")
}

/// The script behind every change. KEYS: 1 a node's hash, 2 online, 3
/// channels, 4 subs, 5 held, 6 events, 7 epoch, 8 the grace set of earlier
/// versions. ARGV: 1 mode, 2 events on (1/0), 3 grace ms, 4 queue retention
/// ms, 5 an epoch for a new queue, then for `set` field/count pairs, for
/// `reap` a scan cursor, a count and which counts (`s` subscriptions, `u`
/// connections), for `due` a count. Returns the scan cursor (or 0)
/// followed by the names of the events queued.
///
/// The order of the events (docs/protocol.md, "Order") is made here, by
/// construction rather than by timing:
/// - `apply` records a subscription's member before its channel when both
///   rise, and after it when both fall, so a channel opens after its first
///   member is added and closes after its last member is removed;
/// - callers hand a user's subscriptions in before their connections when
///   they fall (`flush` sorts each batch, `reap` makes two passes), so a
///   user goes offline after leaving their channels;
/// - departures held for the grace period leave `held` in the order they
///   went in: each is scored above everything held (when it happened, in
///   microseconds, pushed past the latest score if the clock repeats or
///   steps back), and a departure is queued directly only while nothing is
///   held. So with a grace period the queue gets the departures in the
///   order they happened, as without one, minus the pairs a return
///   cancelled.
const OCCUPANCY: &str = r"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local hooks = ARGV[2] == '1'
local grace = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local prefix = 'sb:{occ}:'
local epoch = nil
local latest = nil
local out = {'0'}
local RISE = {u = 'user_online', m = 'member_added', c = 'channel_occupied'}
local FALL = {u = 'user_offline', m = 'member_removed', c = 'channel_vacated'}

local function emit(name, channel, user, at)
  if epoch == nil then
    redis.call('SET', KEYS[7], ARGV[5], 'NX')
    epoch = redis.call('GET', KEYS[7])
  end
  redis.call('XADD', KEYS[6], 'MINID', '~', now - retention, '*',
    'name', name, 'channel', channel, 'user', user, 'time_ms', at, 'epoch', epoch)
  out[#out + 1] = name
end
-- Holds a departure, scored above everything held: `due` takes them in
-- the order they were held.
local function hold(key)
  if latest == nil then
    local top = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
    latest = tonumber(top[2] or '0')
  end
  local at = now_us
  if at <= latest then at = latest + 1 end
  latest = at
  redis.call('ZADD', KEYS[5], at, key)
end
local function rise(kind, channel, user)
  if not hooks then return end
  local key = cjson.encode({kind, channel, user})
  -- Back while the departure is held: neither is sent.
  if redis.call('ZREM', KEYS[5], key) == 1 or redis.call('ZREM', KEYS[8], key) == 1 then
    return
  end
  emit(RISE[kind], channel, user, now)
end
local function fall(kind, channel, user)
  if not hooks then return end
  -- Without a grace period a departure goes straight to the queue, unless
  -- departures are held (by a node with one): then it waits behind them.
  if grace > 0 or redis.call('EXISTS', KEYS[5], KEYS[8]) > 0 then
    hold(cjson.encode({kind, channel, user}))
  else
    emit(FALL[kind], channel, user, now)
  end
end
-- Adds delta to a sum kept only while positive; returns it before and after.
local function add(key, field, delta)
  local after = redis.call('HINCRBY', key, field, delta)
  local before = after - delta
  if after <= 0 then
    redis.call('HDEL', key, field)
    after = 0
  end
  return before, after
end
local function apply(field, count)
  local old = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  local delta = count - old
  if delta == 0 then return end
  if count > 0 then
    redis.call('HSET', KEYS[1], field, count)
  else
    redis.call('HDEL', KEYS[1], field)
  end
  local key = cjson.decode(field)
  local kind, channel, user = key[1], key[2], key[3]
  if kind == 'u' then
    local before, after = add(KEYS[2], user, delta)
    if before <= 0 and after > 0 then rise('u', '', user)
    elseif before > 0 and after <= 0 then fall('u', '', user) end
    return
  end
  local m_before, m_after = add(prefix .. 'users:' .. channel, user, delta)
  local c_before, c_after = add(KEYS[4], channel, delta)
  local member = kind == 'm'
  -- A channel opens once its first member is added, and closes once its
  -- last member is removed.
  if member and m_before <= 0 and m_after > 0 then rise('m', channel, user) end
  if c_before <= 0 and c_after > 0 then
    redis.call('ZADD', KEYS[3], 0, channel)
    rise('c', channel, '')
  end
  if member and m_before > 0 and m_after <= 0 then fall('m', channel, user) end
  if c_before > 0 and c_after <= 0 then
    redis.call('ZREM', KEYS[3], channel)
    fall('c', channel, '')
  end
end

local mode = ARGV[1]
if mode == 'set' then
  for i = 6, #ARGV, 2 do
    apply(ARGV[i], tonumber(ARGV[i + 1]))
  end
elseif mode == 'reap' then
  local connections = ARGV[8] == 'u'
  local scan = redis.call('HSCAN', KEYS[1], ARGV[6], 'COUNT', tonumber(ARGV[7]))
  local fields = scan[2]
  for i = 1, #fields, 2 do
    if (cjson.decode(fields[i])[1] == 'u') == connections then
      apply(fields[i], 0)
    end
  end
  out[1] = scan[1]
elseif mode == 'due' then
  local limit = tonumber(ARGV[6])
  -- Left by an earlier version, scored by when due (ms): drained, so a
  -- rolling upgrade loses none.
  local old = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #old, 2 do
    local key = cjson.decode(old[i])
    redis.call('ZREM', KEYS[8], old[i])
    emit(FALL[key[1]], key[2], key[3], tonumber(old[i + 1]) - grace)
  end
  -- The scores grow in the order the departures were held, so what is due
  -- comes first, in that order.
  local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now_us - grace * 1000, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    local key = cjson.decode(due[i])
    redis.call('ZREM', KEYS[5], due[i])
    emit(FALL[key[1]], key[2], key[3], math.floor(tonumber(due[i + 1]) / 1000))
  end
end
return out
";

/// How events are queued, when webhooks are on.
#[derive(Debug, Clone)]
pub struct EventQueue {
    pub grace: Duration,
    /// Events older than this are trimmed from the stream: the webhook
    /// `max_age`, plus a margin for the one delivering them to dead-letter
    /// them first.
    pub retention: Duration,
    /// The consumer groups (one per webhook URL) created before this node
    /// queues its first event, so none misses it.
    pub groups: Vec<String>,
    pub metrics: Arc<WebhookMetrics>,
}

/// This node's writer of occupancy to Redis.
pub struct RedisOccupancy {
    link: Link,
    node: String,
    occupancy: Arc<Occupancy>,
    queue: Option<EventQueue>,
    /// Proposed as the queue's epoch if it has none yet.
    epoch: String,
    script: redis::Script,
}

impl std::fmt::Debug for RedisOccupancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOccupancy")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// `text` matched literally by a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A count as its field in a node's hash.
fn field(count: &Count) -> String {
    let array = match count {
        Count::Online(user) => ["u", "", user],
        Count::Subscribed {
            channel,
            user,
            presence,
        } => [if *presence { "m" } else { "s" }, channel, user],
    };
    serde_json::Value::from(array.to_vec()).to_string()
}

/// Where a changed count goes in a batch: connections that opened, then
/// subscriptions that rose, subscriptions that fell, and connections that
/// closed. So a user comes online before joining a channel and goes
/// offline after leaving it, and a channel one user leaves as another
/// joins stays occupied. Batches are written in order, each batch in this
/// order (a failed one is taken again with what changed since).
fn order(count: &Count, value: u32) -> u8 {
    match (count, value > 0) {
        (Count::Online(_), true) => 0,
        (Count::Subscribed { .. }, true) => 1,
        (Count::Subscribed { .. }, false) => 2,
        (Count::Online(_), false) => 3,
    }
}

impl RedisOccupancy {
    pub fn new(
        link: Link,
        node: String,
        occupancy: Arc<Occupancy>,
        queue: Option<EventQueue>,
    ) -> Arc<RedisOccupancy> {
        Arc::new(RedisOccupancy {
            link,
            node,
            occupancy,
            queue,
            epoch: format!("{:08x}", rand::random::<u32>()),
            script: redis::Script::new(OCCUPANCY),
        })
    }

    /// Runs the script in `mode` on the hash of `node`.
    async fn run(&self, mode: &str, node: &str, args: &[String]) -> Result<String, String> {
        let mut invocation = self.script.prepare_invoke();
        for key in [
            node_key(node).as_str(),
            ONLINE_KEY,
            CHANNELS_KEY,
            SUBS_KEY,
            HELD_KEY,
            EVENTS_KEY,
            EPOCH_KEY,
            LEGACY_GRACE_KEY,
        ] {
            invocation.key(key);
        }
        let (grace, retention) = self.queue.as_ref().map_or((0, 0), |q| {
            (q.grace.as_millis() as u64, q.retention.as_millis() as u64)
        });
        invocation
            .arg(mode)
            .arg(u8::from(self.queue.is_some()))
            .arg(grace)
            .arg(retention)
            .arg(&self.epoch);
        for arg in args {
            invocation.arg(arg);
        }
        let reply: Vec<String> = self.link.run_script(&invocation).await?;
        let mut reply = reply.into_iter();
        let cursor = reply.next().unwrap_or_else(|| "0".to_owned());
        if let Some(queue) = &self.queue {
            for name in reply {
                queue.metrics.emitted(&name);
            }
        }
        Ok(cursor)
    }

    /// Creates the webhook consumer groups (at the stream's end: a URL
    /// gets the events queued from when it was first configured).
    async fn create_groups(&self) -> Result<(), String> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        for group in &queue.groups {
            let mut create = redis::cmd("XGROUP");
            create
                .arg("CREATE")
                .arg(EVENTS_KEY)
                .arg(group)
                .arg("$")
                .arg("MKSTREAM");
            match self.link.query::<()>(&create).await {
                Ok(()) => {}
                Err(error) if error.contains("BUSYGROUP") => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Writes changed counts until shutdown (and once more after it, so a
    /// clean exit takes this node's share away), and moves due departures
    /// to the queue.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        while let Err(error) = self.create_groups().await {
            tracing::warn!(message = "webhook consumer groups not created", %error);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
        let mut due = tokio::time::interval(DUE_EVERY);
        due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.occupancy.changed() => {
                    if let Err(error) = self.flush().await {
                        tracing::warn!(message = "occupancy not written", %error);
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(RETRY_AFTER) => self.occupancy.wake(),
                        }
                    }
                }
                _ = due.tick(), if self.queue.is_some() => {
                    if let Err(error) = self.move_due().await {
                        tracing::warn!(message = "due webhook events not queued", %error);
                    }
                }
            }
        }
    }

    /// Writes every changed count.
    pub async fn flush(&self) -> Result<(), String> {
        let mut changes = self.occupancy.take_changes();
        changes.sort_by_key(|(count, value)| order(count, *value));
        for (i, chunk) in changes.chunks(BATCH).enumerate() {
            let mut args = Vec::with_capacity(chunk.len() * 2);
            for (count, value) in chunk {
                args.push(field(count));
                args.push(value.to_string());
            }
            if let Err(error) = self.run("set", &self.node, &args).await {
                self.occupancy
                    .retry(changes[i * BATCH..].iter().map(|(count, _)| count.clone()));
                return Err(error);
            }
        }
        Ok(())
    }

    /// Queues the departures whose grace period is over.
    async fn move_due(&self) -> Result<(), String> {
        self.run("due", &self.node, &[BATCH.to_string()]).await?;
        Ok(())
    }

    /// Removes a dead node's counts (its users' departures are queued).
    /// Called by the node holding the reap lock.
    pub async fn reap(&self, node: &str) -> Result<(), String> {
        // Its subscriptions, then its connections: members leave their
        // channels before their users go offline.
        for counts in ["s", "u"] {
            let mut cursor = "0".to_owned();
            loop {
                cursor = self
                    .run(
                        "reap",
                        node,
                        &[cursor, BATCH.to_string(), counts.to_owned()],
                    )
                    .await?;
                if cursor == "0" {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Every count this node holds must be written again: its lease lapsed,
    /// so Redis lost its data or another node reaped this one. `presence`
    /// tells whether a channel's namespace lists members.
    pub fn resend_all(&self, presence: impl Fn(&str) -> bool) {
        self.occupancy.resend_all(presence);
    }

    /// A page of the cluster's channels with subscribers.
    pub async fn list(&self, query: &ListQuery) -> Result<ChannelPage, String> {
        use std::ops::Bound;
        let min = match query.start() {
            Bound::Excluded(after) => format!("({after}"),
            Bound::Included("") => "-".to_owned(),
            Bound::Included(prefix) => format!("[{prefix}"),
            Bound::Unbounded => "-".to_owned(),
        };
        // Channel names are ASCII, so every name with the prefix sorts
        // below the prefix followed by byte 0xff.
        let max: Vec<u8> = if query.prefix.is_empty() {
            b"+".to_vec()
        } else {
            [b"(", query.prefix.as_bytes(), &[0xff]].concat()
        };
        let mut range = redis::cmd("ZRANGE");
        range
            .arg(CHANNELS_KEY)
            .arg(min)
            .arg(max)
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(query.limit + 1);
        let channels: Vec<String> = self.link.query(&range).await?;
        let counts = self.counts(&channels).await?;
        Ok(query.page(counts))
    }

    /// One channel's counts over the cluster.
    pub async fn channel(&self, channel: &str) -> Result<ChannelCounts, String> {
        let mut counts = self.counts(&[channel.to_owned()]).await?;
        Ok(counts.pop().unwrap_or(ChannelCounts {
            channel: channel.to_owned(),
            subscribers: 0,
            users: 0,
        }))
    }

    /// The channels `user` is subscribed to on `node`, each with whether
    /// its namespace has presence and the user's subscriptions to it there
    /// (for the admin UI; an HSCAN of the node's hash, linear in it).
    pub async fn user_channels(
        &self,
        node: &str,
        user: &str,
    ) -> Result<Vec<(String, bool, u64)>, String> {
        let encoded = serde_json::Value::from(user).to_string();
        let pattern = format!("*,{}]", glob_escape(&encoded));
        let mut cursor = "0".to_owned();
        let mut found = Vec::new();
        loop {
            let mut scan = redis::cmd("HSCAN");
            scan.arg(node_key(node))
                .arg(&cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, pairs): (String, Vec<String>) = self.link.query(&scan).await?;
            for pair in pairs.chunks(2) {
                let [field, count] = pair else { continue };
                let Ok([kind, channel, of]) = serde_json::from_str::<[String; 3]>(field) else {
                    continue;
                };
                let count: u64 = count.parse().unwrap_or(0);
                if of == user && (kind == "s" || kind == "m") && count > 0 {
                    found.push((channel, kind == "m", count));
                }
            }
            if next == "0" {
                return Ok(found);
            }
            cursor = next;
        }
    }

    async fn counts(&self, channels: &[String]) -> Result<Vec<ChannelCounts>, String> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for channel in channels {
            pipe.cmd("HGET").arg(SUBS_KEY).arg(channel);
            pipe.cmd("HLEN").arg(users_key(channel));
        }
        let replies: Vec<Option<u64>> = self.link.query_pipe(&pipe).await?;
        Ok(channels
            .iter()
            .zip(replies.chunks(2))
            .map(|(channel, pair)| ChannelCounts {
                channel: channel.clone(),
                subscribers: pair.first().copied().flatten().unwrap_or(0),
                users: pair.get(1).copied().flatten().unwrap_or(0),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_opens_connections_first_and_closes_them_last() {
        let user: Arc<str> = Arc::from("alice");
        let sub = |channel: &str| Count::Subscribed {
            channel: Arc::from(channel),
            user: Arc::clone(&user),
            presence: true,
        };
        let mut batch = [
            (Count::Online(Arc::clone(&user)), 0),
            (sub("chat:left"), 0),
            (sub("chat:joined"), 1),
            (Count::Online(Arc::from("bob")), 2),
        ];
        batch.sort_by_key(|(count, value)| order(count, *value));
        let fields: Vec<String> = batch
            .iter()
            .map(|(count, value)| format!("{} {value}", field(count)))
            .collect();
        assert_eq!(
            fields,
            [
                r#"["u","","bob"] 2"#,
                r#"["m","chat:joined","alice"] 1"#,
                r#"["m","chat:left","alice"] 0"#,
                r#"["u","","alice"] 0"#,
            ]
        );
    }

    #[test]
    fn fields_are_json_arrays_the_script_decodes() {
        let user: Arc<str> = Arc::from("al\"ice");
        assert_eq!(
            field(&Count::Online(Arc::clone(&user))),
            r#"["u","","al\"ice"]"#
        );
        assert_eq!(
            field(&Count::Subscribed {
                channel: Arc::from("chat:a"),
                user: Arc::clone(&user),
                presence: true
            }),
            r#"["m","chat:a","al\"ice"]"#
        );
        assert_eq!(
            field(&Count::Subscribed {
                channel: Arc::from("feed"),
                user,
                presence: false
            }),
            r#"["s","feed","al\"ice"]"#
        );
    }
}
