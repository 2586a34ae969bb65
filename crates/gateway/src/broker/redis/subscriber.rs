//! The task that owns the node's Pub/Sub connection to one server, or to
//! the master the sentinels name: it SUBSCRIBEs to `sb:ch:<channel>` when
//! the channel's first local subscriber arrives and UNSUBSCRIBEs when the
//! last one leaves (the hub keeps the refcount; never PSUBSCRIBE, never one
//! subscription per client).
//!
//! When the connection drops, the node turns not-ready, reconnects with
//! backoff (under Sentinel, to the master the sentinels name now) and
//! resubscribes every channel the hub still needs; local clients stay
//! connected meanwhile. Under Sentinel it also leaves a master the
//! sentinels no longer name, even one still running. The Redis Cluster
//! form of the task is in `sharded`; both hand what arrives to the
//! [`Feed`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::redis::feed::Feed;
use crate::broker::BrokerError;
use crate::hub::Hub;
use crate::redis::health::RedisHealth;
use crate::redis::pubsub::{pubsub_channel, CONTROL_CHANNEL};
use crate::redis::target::{Mode, Target, REDIS_TIMEOUT};

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Short enough that a node finds a new master within about two seconds of
/// the sentinels' switch.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle Pub/Sub connection is pinged to find half-open sockets.
pub(super) const PUBSUB_PING: Duration = Duration::from_secs(5);

/// What the broker asks of the Pub/Sub task.
pub(super) enum SubscriptionOp {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

/// The task that owns the node's Pub/Sub connection.
pub(super) struct Subscriber {
    pub(super) target: Target,
    pub(super) hub: Arc<Hub>,
    pub(super) health: Arc<RedisHealth>,
    pub(super) feed: Feed,
}

impl Subscriber {
    pub(super) async fn run(
        self,
        mut ops: mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = tokio::time::timeout(REDIS_TIMEOUT, self.connect()) => connected,
            };
            let error = match connected {
                Ok(Ok((sink, stream, server))) => {
                    let since = tokio::time::Instant::now();
                    self.health.set_pubsub(true);
                    if !std::mem::take(&mut first) {
                        self.hub.metrics().redis_reconnected();
                    }
                    tracing::info!(
                        message = "redis pub/sub connected",
                        server = %server,
                        channels = self.hub.channel_count()
                    );
                    // Messages published while the link was down are in
                    // history; they go out before anything newer (the
                    // stream buffers what arrives meanwhile).
                    self.feed.repair_all().await;
                    let error = self.serve(sink, stream, &server, &mut ops, &shutdown).await;
                    self.health.set_pubsub(false);
                    // A connection that held for a while earns a quick retry;
                    // one that breaks at once keeps backing off.
                    if since.elapsed() > BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                    match error {
                        None => return,
                        Some(error) => error,
                    }
                }
                Ok(Err(error)) => error,
                Err(_) => "connect timed out".to_owned(),
            };
            if !self
                .wait_to_retry(&error, backoff, &mut ops, &shutdown)
                .await
            {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// After a failed connect: not ready with `error`, then waits `backoff`.
    /// Subscribes asked for meanwhile fail now rather than hang; the hub
    /// keeps the channel, so it is subscribed on reconnect. False on
    /// shutdown.
    pub(super) async fn wait_to_retry(
        &self,
        error: &str,
        backoff: Duration,
        ops: &mut mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: &CancellationToken,
    ) -> bool {
        self.health.set_pubsub(false);
        self.health.record_pubsub_error(error);
        tracing::warn!(message = "redis pub/sub unavailable; retrying", %error, backoff_ms = backoff.as_millis() as u64);
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = &mut sleep => return true,
                op = ops.recv() => match op {
                    Some(SubscriptionOp::Subscribe(_, reply)) => {
                        let _ = reply.send(Err(BrokerError::Unavailable(format!("redis pub/sub disconnected: {error}"))));
                    }
                    Some(SubscriptionOp::Unsubscribe(_)) => {}
                    None => return false,
                },
            }
        }
    }

    /// Connects (under Sentinel, to the master named now) and subscribes to
    /// the control channel and every channel the hub needs. Also returns the
    /// server's address, which a failed connect's error starts with.
    async fn connect(
        &self,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream, String), String> {
        let client = self.target.pubsub_client().await?;
        let server = client.get_connection_info().addr().to_string();
        // The address in the error, so `/readyz` says which server is away
        // (under Sentinel: the master the sentinels name).
        let pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| format!("{server}: {}", self.target.explain(&e)))?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(CONTROL_CHANNEL)
            .await
            .map_err(|e| e.to_string())?;
        let channels: Vec<String> = self
            .hub
            .channels()
            .into_iter()
            .map(|c| pubsub_channel(self.target.mode(), &c))
            .collect();
        for chunk in channels.chunks(512) {
            sink.subscribe(chunk).await.map_err(|e| e.to_string())?;
        }
        Ok((sink, stream, server))
    }

    /// Serves one connection; `None` on shutdown, else why it broke.
    async fn serve(
        &self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        server: &str,
        ops: &mut mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                message = stream.next() => match message {
                    Some(message) => self.feed.on_message(message.get_channel_name(), message.get_payload_bytes()).await,
                    None => return Some("pub/sub connection closed".into()),
                },
                op = ops.recv() => match op {
                    None => return None,
                    Some(SubscriptionOp::Subscribe(channel, reply)) => {
                        let key = pubsub_channel(self.target.mode(), &channel);
                        let result = tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(&key)).await;
                        match result {
                            Ok(Ok(())) => {
                                let _ = reply.send(Ok(()));
                            }
                            Ok(Err(error)) => {
                                let _ = reply.send(Err(BrokerError::Unavailable(error.to_string())));
                                return Some(error.to_string());
                            }
                            Err(_) => {
                                let _ = reply.send(Err(BrokerError::Unavailable("subscribe timed out".into())));
                                return Some("subscribe timed out".into());
                            }
                        }
                    }
                    Some(SubscriptionOp::Unsubscribe(channel)) => {
                        // Decided now, not when asked: a subscriber may have
                        // arrived since, and then the subscription stays.
                        if !self.hub.has_subscribers(&channel) {
                            self.feed.forget(&channel);
                            let key = pubsub_channel(self.target.mode(), &channel);
                            match tokio::time::timeout(REDIS_TIMEOUT, sink.unsubscribe(&key)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(error)) => return Some(error.to_string()),
                                Err(_) => return Some("unsubscribe timed out".into()),
                            }
                        }
                    }
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Some(error.to_string()),
                        Err(_) => return Some("ping timed out".into()),
                    }
                    if let Some(moved) = self.master_moved(server).await {
                        return Some(moved);
                    }
                }
            }
        }
    }

    /// Under Sentinel: whether the sentinels now name another master than
    /// the one this Pub/Sub connection is on (a failover that left the old
    /// master running, demoted), and which.
    async fn master_moved(&self, server: &str) -> Option<String> {
        if self.target.mode() != Mode::Sentinel {
            return None;
        }
        let client = self.target.pubsub_client().await.ok()?;
        let now = client.get_connection_info().addr().to_string();
        (now != server).then(|| format!("the sentinels name a new master: {now} (was {server})"))
    }
}
