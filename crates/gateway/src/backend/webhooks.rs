//! Webhooks: delivers the presence and occupancy events queued by
//! `occupancy::redis` to the backend's URLs, signed, in batches, at least
//! once.
//!
//! Every URL has its own consumer group on the event stream, so a slow or
//! failing endpoint holds back only itself. One node at a time delivers to
//! a URL (it holds a short lease in Redis, renewed while it works), so
//! events arrive in the order they were queued; when that node dies its
//! lease lapses, another node takes it over, claims the events the dead
//! one had read but not delivered, and sends those first. A batch is sent
//! again (exponential backoff with full jitter) until the backend answers
//! 2xx; an event older than `webhook_max_age` is dead-lettered instead: it
//! is counted, logged and copied to a capped stream an operator can read.
//! Receivers deduplicate by event `id`, as at-least-once delivery means a
//! batch can arrive twice (a timeout after the backend processed it, or a
//! lease change mid-request).
//!
//! Delivery runs in its own tasks and reads Redis by polling without
//! `BLOCK` (a blocked read would stall a shared cluster connection); a
//! slow backend never touches the publish or fan-out path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::backend;
use crate::config::backend::WebhookConfig;
use crate::metrics::webhooks::WebhookMetrics;
use crate::occupancy::redis::EVENTS_KEY;
use crate::redis::link::Link;

/// Events per request at most.
pub const BATCH_MAX: usize = 100;
/// The delivery lease: how long a dead deliverer holds a URL.
const LEAD: Duration = Duration::from_secs(5);
/// How often the deliverer renews its lease while it works.
const RENEW_EVERY: Duration = Duration::from_millis(1500);
/// First retry delay; doubles per failure up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Dead-lettered events kept per URL for operators (approximate cap).
const DEAD_KEEP: usize = 10_000;

/// Takes or renews the lease (KEYS: lease; ARGV: holder, ms). 1 if held.
const LEAD_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// Gives the lease back if held (KEYS: lease; ARGV: holder).
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The consumer group of a URL: named by a hash of the URL, so reordering
/// the configured list keeps each URL's progress.
pub fn group_name(url: &url::Url) -> String {
    let digest = Sha256::digest(url.as_str().as_bytes());
    format!("hooks:{}", &hex::encode(digest)[..16])
}

fn lease_key(group: &str) -> String {
    format!("sb:{{occ}}:lead:{group}")
}

fn dead_key(group: &str) -> String {
    format!("sb:{{occ}}:dead:{group}")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One event as the backend receives it (and, for receivers written in
/// Rust, reads it back: [`crate::backend::webhook_order`] checks a stream of
/// them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Unique per event: the queue's epoch and the stream entry id.
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When it happened (for a departure: when the user left, not when
    /// the grace period ended), unix milliseconds.
    pub time_ms: u64,
}

/// A queued event with its stream entry id.
#[derive(Debug, Clone)]
struct Queued {
    entry: String,
    event: Event,
}

fn field(map: &HashMap<String, redis::Value>, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .filter(|s| !s.is_empty())
}

impl Queued {
    fn from_entry(entry: StreamId) -> Queued {
        let map = &entry.map;
        let epoch = field(map, "epoch").unwrap_or_default();
        Queued {
            event: Event {
                id: format!("{epoch}-{}", entry.id),
                name: field(map, "name").unwrap_or_default(),
                channel: field(map, "channel"),
                user: field(map, "user"),
                time_ms: field(map, "time_ms")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
            },
            entry: entry.id,
        }
    }
}

/// How a delivery attempt loop ended.
enum Outcome {
    Done,
    /// Another node delivers now, or the node is stopping: what was not
    /// delivered stays pending for the next holder.
    Stopped,
}

/// Delivers the queue to one URL.
pub struct Deliverer {
    link: Link,
    node: String,
    endpoint: String,
    url: url::Url,
    group: String,
    secret: Arc<[u8]>,
    client: reqwest::Client,
    config: WebhookConfig,
    metrics: Arc<WebhookMetrics>,
    lead: redis::Script,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Starts a deliverer per configured URL.
pub fn start(
    link: &Link,
    node: &str,
    config: &WebhookConfig,
    secret: &str,
    metrics: &Arc<WebhookMetrics>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let client = backend::client()?;
    let secret: Arc<[u8]> = Arc::from(secret.as_bytes());
    for (index, url) in config.urls.iter().enumerate() {
        let deliverer = Deliverer {
            link: link.clone(),
            node: node.to_owned(),
            endpoint: index.to_string(),
            url: url.clone(),
            group: group_name(url),
            secret: Arc::clone(&secret),
            client: client.clone(),
            config: config.clone(),
            metrics: Arc::clone(metrics),
            lead: redis::Script::new(LEAD_SCRIPT),
        };
        tracing::info!(
            message = "webhook endpoint",
            endpoint = index,
            url = %backend::redacted(url),
            group = %deliverer.group
        );
        tokio::spawn(probe(url.clone(), index));
        tokio::spawn(deliverer.run(shutdown.clone()));
    }
    Ok(())
}

/// Warns at start-up when an endpoint cannot be reached: events are kept
/// and retried, so this is not fatal, but it is likely a mistake.
async fn probe(url: url::Url, endpoint: usize) {
    let Some(host) = url.host_str().map(str::to_owned) else {
        return;
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let connect = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port));
    let problem = match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(_)) => return,
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 3 s".to_owned(),
    };
    tracing::warn!(
        message = "webhook endpoint unreachable at start-up; its events are queued in Redis and retried until webhook_max_age",
        endpoint,
        url = %backend::redacted(&url),
        error = %problem
    );
}

impl Deliverer {
    async fn run(self, shutdown: CancellationToken) {
        let gauge = self.metrics.delivering.with_label_values(&[&self.endpoint]);
        while !shutdown.is_cancelled() {
            match self.hold().await {
                Ok(true) => {
                    gauge.set(1);
                    tracing::info!(message = "delivering webhooks", endpoint = %self.endpoint);
                    if let Err(error) = self.deliver_while_holding(&shutdown).await {
                        tracing::warn!(message = "webhook delivery interrupted", endpoint = %self.endpoint, %error);
                    }
                    gauge.set(0);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(message = "webhook lease not taken", endpoint = %self.endpoint, %error);
                }
            }
            // Nodes without the lease look again now and then; spread them.
            let pause = rand::rng().random_range(LEAD / 5..=LEAD / 2);
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        let script = redis::Script::new(RELEASE_SCRIPT);
        let mut release = script.prepare_invoke();
        release.key(lease_key(&self.group)).arg(&self.node);
        let _ = self.link.run_script::<i64>(&release).await;
    }

    /// Takes or renews the delivery lease; true while this node holds it.
    async fn hold(&self) -> Result<bool, String> {
        let mut invocation = self.lead.prepare_invoke();
        invocation
            .key(lease_key(&self.group))
            .arg(&self.node)
            .arg(LEAD.as_millis() as u64);
        Ok(self.link.run_script::<i64>(&invocation).await? == 1)
    }

    /// Runs `work` while renewing the lease; `None` if the lease was lost
    /// (or Redis could not renew it) before `work` finished.
    async fn holding<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.tick().await;
        loop {
            tokio::select! {
                value = &mut work => return Some(value),
                _ = renew.tick() => {
                    if !matches!(self.hold().await, Ok(true)) {
                        return None;
                    }
                }
            }
        }
    }

    async fn deliver_while_holding(&self, shutdown: &CancellationToken) -> Result<(), String> {
        self.claim_pending().await?;
        // First what this consumer already holds (claimed from a dead
        // node, or read before a lost lease), then new events.
        let mut backlog = true;
        let mut renewed = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if renewed.elapsed() >= RENEW_EVERY {
                if !self.hold().await? {
                    return Ok(());
                }
                renewed = Instant::now();
            }
            let mut batch = self
                .read(if backlog { "0" } else { ">" }, BATCH_MAX)
                .await?;
            if batch.is_empty() {
                if backlog {
                    backlog = false;
                    continue;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.config.batch_window) => {}
                }
                continue;
            }
            if !backlog && batch.len() < BATCH_MAX {
                // Let a burst gather into one request.
                tokio::time::sleep(self.config.batch_window).await;
                batch.extend(self.read(">", BATCH_MAX - batch.len()).await?);
            }
            match self.deliver(batch, shutdown).await? {
                Outcome::Done => renewed = Instant::now(),
                Outcome::Stopped => return Ok(()),
            }
        }
    }

    /// Moves every pending event of the group to this consumer.
    async fn claim_pending(&self) -> Result<(), String> {
        let mut start = "0-0".to_owned();
        loop {
            let mut claim = redis::cmd("XAUTOCLAIM");
            claim
                .arg(EVENTS_KEY)
                .arg(&self.group)
                .arg(&self.node)
                .arg(0)
                .arg(&start)
                .arg("COUNT")
                .arg(BATCH_MAX)
                .arg("JUSTID");
            let reply: StreamAutoClaimReply = match self.link.query(&claim).await {
                Ok(reply) => reply,
                Err(error) if lost_group(&error) => return self.recreate_group().await,
                Err(error) => return Err(error),
            };
            if !reply.claimed.is_empty() {
                tracing::info!(message = "claimed pending webhook events", endpoint = %self.endpoint, count = reply.claimed.len());
            }
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            start = reply.next_stream_id;
        }
    }

    /// After Redis lost the stream (it restarted empty): the group again,
    /// from the start of what was queued since, so nothing queued after the
    /// loss is skipped.
    async fn recreate_group(&self) -> Result<(), String> {
        tracing::warn!(message = "webhook consumer group recreated: Redis lost the event queue", endpoint = %self.endpoint);
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(EVENTS_KEY)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM");
        match self.link.query::<()>(&create).await {
            Ok(()) => Ok(()),
            Err(error) if error.contains("BUSYGROUP") => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn read(&self, from: &str, count: usize) -> Result<Vec<Queued>, String> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.group)
            .arg(&self.node)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(EVENTS_KEY)
            .arg(from);
        let reply: Option<StreamReadReply> = match self.link.query(&read).await {
            Ok(reply) => reply,
            Err(error) if lost_group(&error) => {
                self.recreate_group().await?;
                return Ok(Vec::new());
            }
            Err(error) => return Err(error),
        };
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(Queued::from_entry)
            .collect())
    }

    /// Sends a batch until the backend takes it, the events age out, or
    /// this node stops delivering.
    async fn deliver(
        &self,
        mut batch: Vec<Queued>,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, String> {
        let mut failures = 0u32;
        loop {
            self.dead_letter_expired(&mut batch).await?;
            if batch.is_empty() {
                return Ok(Outcome::Done);
            }
            let body = serde_json::json!({
                "time_ms": unix_ms(),
                "events": batch.iter().map(|q| &q.event).collect::<Vec<_>>(),
            })
            .to_string();
            let attempt = backend::post_signed(
                &self.client,
                &self.url,
                &self.secret,
                body.into_bytes(),
                self.config.timeout,
            );
            let Some(answer) = self.holding(attempt).await else {
                return Ok(Outcome::Stopped);
            };
            let problem = match answer {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    self.acknowledge(&batch).await?;
                    return Ok(Outcome::Done);
                }
                Ok(answer) => {
                    self.count_request("status");
                    format!(
                        "{} answered {}",
                        backend::redacted(&self.url),
                        answer.status
                    )
                }
                Err(error) => {
                    self.count_request("error");
                    error
                }
            };
            failures += 1;
            self.metrics
                .retried
                .with_label_values(&[&self.endpoint])
                .inc_by(batch.len() as u64);
            let wait = backoff(failures);
            tracing::warn!(
                message = "webhook request failed; will retry",
                endpoint = %self.endpoint,
                events = batch.len(),
                failures,
                retry_in_ms = wait.as_millis() as u64,
                error = %problem
            );
            let pause = async {
                tokio::select! {
                    () = shutdown.cancelled() => false,
                    () = tokio::time::sleep(wait) => true,
                }
            };
            match self.holding(pause).await {
                Some(true) => {}
                _ => return Ok(Outcome::Stopped),
            }
        }
    }

    fn count_request(&self, result: &str) {
        self.metrics
            .requests
            .with_label_values(&[&self.endpoint, result])
            .inc();
    }

    async fn acknowledge(&self, batch: &[Queued]) -> Result<(), String> {
        self.count_request("ok");
        let now = unix_ms();
        let latency = self.metrics.latency.with_label_values(&[&self.endpoint]);
        for queued in batch {
            latency.observe(now.saturating_sub(queued.event.time_ms) as f64 / 1000.0);
        }
        self.metrics
            .delivered
            .with_label_values(&[&self.endpoint])
            .inc_by(batch.len() as u64);
        let mut ack = redis::cmd("XACK");
        ack.arg(EVENTS_KEY).arg(&self.group);
        for queued in batch {
            ack.arg(&queued.entry);
        }
        self.link.query::<()>(&ack).await
    }

    /// Removes the events older than `webhook_max_age` from the batch: they
    /// are copied to the dead-letter stream, counted, logged and acked.
    async fn dead_letter_expired(&self, batch: &mut Vec<Queued>) -> Result<(), String> {
        let oldest = unix_ms().saturating_sub(self.config.max_age.as_millis() as u64);
        let (expired, kept): (Vec<Queued>, Vec<Queued>) = std::mem::take(batch)
            .into_iter()
            .partition(|q| q.event.time_ms < oldest);
        *batch = kept;
        if expired.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for queued in &expired {
            let event = serde_json::to_string(&queued.event).unwrap_or_default();
            pipe.cmd("XADD")
                .arg(dead_key(&self.group))
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_KEEP)
                .arg("*")
                .arg("event")
                .arg(event)
                .ignore();
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(EVENTS_KEY).arg(&self.group);
        for queued in &expired {
            ack.arg(&queued.entry);
        }
        pipe.add_command(ack).ignore();
        self.link.query_pipe::<()>(&pipe).await?;
        self.metrics
            .dead_lettered
            .with_label_values(&[&self.endpoint])
            .inc_by(expired.len() as u64);
        tracing::error!(
            message = "webhook events dead-lettered: not delivered within webhook_max_age",
            endpoint = %self.endpoint,
            url = %backend::redacted(&self.url),
            events = expired.len(),
            first_id = %expired.first().map(|q| q.event.id.as_str()).unwrap_or(""),
            dead_letter_stream = %dead_key(&self.group)
        );
        Ok(())
    }
}

/// Redis no longer has the stream or its group.
fn lost_group(error: &str) -> bool {
    error.contains("NOGROUP") || error.contains("no such key")
}

/// The wait before retry `failures` (1, 2, ...): full jitter over an
/// exponentially growing cap, so retries from many events spread out.
fn backoff(failures: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1 << failures.min(16))
        .min(BACKOFF_MAX);
    rand::rng().random_range(cap / 2..=cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_stable_per_url() {
        let a = url::Url::parse("https://example.com/hooks").unwrap();
        let b = url::Url::parse("https://example.com/other").unwrap();
        assert_eq!(group_name(&a), group_name(&a.clone()));
        assert_ne!(group_name(&a), group_name(&b));
        assert!(group_name(&a).starts_with("hooks:"));
        assert_eq!(group_name(&a).len(), "hooks:".len() + 16);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for failures in 1..40 {
            let wait = backoff(failures);
            assert!(wait <= BACKOFF_MAX, "{failures}: {wait:?}");
            assert!(wait >= BACKOFF_BASE, "{failures}: {wait:?}");
        }
        assert!(backoff(1) <= BACKOFF_BASE * 2);
    }

    #[test]
    fn events_serialize_without_empty_fields() {
        let event = Event {
            id: "ab12cd34-1700000000000-0".into(),
            name: "user_online".into(),
            channel: None,
            user: Some("alice".into()),
            time_ms: 1_700_000_000_000,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"id":"ab12cd34-1700000000000-0","name":"user_online","user":"alice","time_ms":1700000000000}"#
        );
    }
}
