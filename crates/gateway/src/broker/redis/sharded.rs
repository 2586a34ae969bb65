//! The Pub/Sub task on a Redis Cluster: the channel is the shard channel
//! `sb:ch:{<channel>}`, SSUBSCRIBEd on the shard that owns its slot (the
//! slot of the channel's history keys) and published with SPUBLISH, so
//! each message crosses one shard instead of being broadcast to every
//! Redis node. All subscriptions share one RESP3 cluster connection, whose
//! pushes arrive on a channel.
//!
//! The redis crate reconnects a shard and moves its subscriptions after a
//! failover by itself; the node watches for the drop, stays not-ready until
//! every primary answers again and every channel is confirmed on its shard,
//! and repairs the channels from history through the `Feed` as they are
//! resubscribed.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::redis::subscriber::{
    Subscriber, SubscriptionOp, BACKOFF_MAX, BACKOFF_MIN, PUBSUB_PING,
};
use crate::broker::BrokerError;
use crate::redis::pubsub::{pubsub_channel, CONTROL_CHANNEL};
use crate::redis::target::{Mode, REDIS_TIMEOUT};

impl Subscriber {
    /// The Pub/Sub task on a Redis Cluster: sharded subscriptions on one
    /// RESP3 cluster connection, whose pushes arrive on a channel.
    pub(super) async fn run_sharded(
        self,
        mut ops: mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: CancellationToken,
    ) {
        let (push, mut pushes) = mpsc::unbounded_channel();
        let client = match self.target.cluster_client(Some(push)) {
            Some(Ok(client)) => client,
            Some(Err(error)) => {
                let error = self.target.explain(&error);
                self.health.record_pubsub_error(&error);
                tracing::error!(message = "redis cluster client refused its settings", %error);
                return;
            }
            None => return,
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = tokio::time::timeout(REDIS_TIMEOUT, self.connect_sharded(&client)) => connected,
            };
            let error = match connected {
                Ok(Ok(conn)) => {
                    self.health.set_pubsub(true);
                    tracing::info!(
                        message = "redis cluster pub/sub connected",
                        channels = self.hub.channel_count()
                    );
                    self.feed.repair_all().await;
                    // From here the connection lasts: the redis crate
                    // reconnects shards, and `serve_sharded` makes sure
                    // every channel is subscribed on its shard again.
                    self.serve_sharded(conn, &mut pushes, &mut ops, &shutdown)
                        .await;
                    return;
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

    /// Opens the cluster connection and subscribes to the control channel
    /// and, on their shards, every channel the hub needs.
    async fn connect_sharded(
        &self,
        client: &redis::cluster::ClusterClient,
    ) -> Result<redis::cluster_async::ClusterConnection, String> {
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|e| format!("redis cluster: {}", self.target.explain(&e)))?;
        conn.subscribe(CONTROL_CHANNEL)
            .await
            .map_err(|e| e.to_string())?;
        for channel in self.hub.channels() {
            conn.ssubscribe(pubsub_channel(Mode::Cluster, &channel))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(conn)
    }

    /// Subscribes again, concurrently and within a second, to the channels
    /// still `pending` after a shard connection dropped (`""` stands for the
    /// control channel); each is routed by the slot map as it is now, so it
    /// lands on the shard's new primary once the cluster has promoted one (a
    /// repeated subscription is only confirmed again). Confirmed ones, and
    /// channels no longer needed, leave the set.
    async fn resubscribe_sharded(
        &self,
        conn: &redis::cluster_async::ClusterConnection,
        pending: &mut HashSet<String>,
    ) {
        pending.retain(|channel| channel.is_empty() || self.hub.has_subscribers(channel));
        let attempts = pending.iter().map(|channel| {
            let mut conn = conn.clone();
            async move {
                let done = if channel.is_empty() {
                    conn.subscribe(CONTROL_CHANNEL).await
                } else {
                    conn.ssubscribe(pubsub_channel(Mode::Cluster, channel))
                        .await
                };
                done.is_ok().then(|| channel.clone())
            }
        });
        let confirmed = tokio::time::timeout(
            Duration::from_secs(1),
            futures_util::future::join_all(attempts),
        )
        .await
        .unwrap_or_default();
        for channel in confirmed.into_iter().flatten() {
            pending.remove(&channel);
        }
    }

    /// Serves the cluster connection until shutdown.
    ///
    /// When a shard connection drops (a RESP3 `Disconnection` push, or a
    /// failed PING of the primaries), the node turns not-ready and, every
    /// second, subscribes again to every channel it needs until each is
    /// confirmed by the shard that owns it now: during a shard failover
    /// that is once the cluster has promoted the replica. Then it repairs
    /// what the channels missed from history and is ready again.
    async fn serve_sharded(
        &self,
        mut conn: redis::cluster_async::ClusterConnection,
        pushes: &mut mpsc::UnboundedReceiver<redis::PushInfo>,
        ops: &mut mpsc::UnboundedReceiver<SubscriptionOp>,
        shutdown: &CancellationToken,
    ) {
        // Some while degraded: what still waits for its confirmation.
        let mut pending: Option<HashSet<String>> = None;
        let mut check = tokio::time::interval(PUBSUB_PING);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut degrade = None;
            tokio::select! {
                () = shutdown.cancelled() => return,
                push = pushes.recv() => match push {
                    None => return,
                    Some(push) => match push.kind {
                        redis::PushKind::Message | redis::PushKind::SMessage => {
                            if let [redis::Value::BulkString(name), redis::Value::BulkString(payload)] = push.data.as_slice() {
                                if let Ok(name) = std::str::from_utf8(name) {
                                    self.feed.on_message(name, payload).await;
                                }
                            }
                        }
                        redis::PushKind::Disconnection => {
                            degrade = Some("a redis cluster shard connection dropped; resubscribing".to_owned());
                        }
                        _ => {}
                    },
                },
                op = ops.recv() => match op {
                    None => return,
                    Some(op) => self.apply_sharded(&mut conn, op).await,
                },
                _ = check.tick() => match &mut pending {
                    Some(waiting) => {
                        self.resubscribe_sharded(&conn, waiting).await;
                        if waiting.is_empty() {
                            pending = None;
                            self.health.set_pubsub(true);
                            self.hub.metrics().redis_reconnected();
                            tracing::info!(message = "redis cluster: every channel is subscribed on its shard again");
                            check = tokio::time::interval(PUBSUB_PING);
                            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            check.reset();
                            self.feed.repair_all().await;
                        } else {
                            self.health.record_pubsub_error(format!(
                                "redis cluster: {} channels wait for their shard",
                                waiting.len()
                            ));
                        }
                    }
                    None => {
                        let ping = redis::cmd("PING");
                        let all = redis::cluster_routing::RoutingInfo::MultiNode((
                            redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                            Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                        ));
                        match tokio::time::timeout(REDIS_TIMEOUT, conn.route_command(ping, all)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(error)) => degrade = Some(format!("redis cluster: {error}")),
                            Err(_) => degrade = Some("redis cluster: a primary did not answer PING".to_owned()),
                        }
                    }
                },
            }
            if let (Some(reason), None) = (degrade, &pending) {
                self.health.set_pubsub(false);
                self.health.record_pubsub_error(&reason);
                tracing::warn!(message = "redis cluster degraded", %reason);
                let mut waiting: HashSet<String> = self.hub.channels().into_iter().collect();
                waiting.insert(String::new());
                pending = Some(waiting);
                check = tokio::time::interval(Duration::from_secs(1));
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first attempt a second from now: give the cluster a moment.
                check.reset();
            }
        }
    }

    /// Subscribes a channel on the shard that owns it, or unsubscribes it
    /// when, by now, it has no local subscriber left (one may have arrived
    /// since the unsubscribe was asked for, and then the subscription stays).
    async fn apply_sharded(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
        op: SubscriptionOp,
    ) {
        match op {
            SubscriptionOp::Subscribe(channel, reply) => {
                let name = pubsub_channel(Mode::Cluster, &channel);
                let result = match tokio::time::timeout(REDIS_TIMEOUT, conn.ssubscribe(&name)).await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(BrokerError::Unavailable(error.to_string())),
                    Err(_) => Err(BrokerError::Unavailable("subscribe timed out".into())),
                };
                let _ = reply.send(result);
            }
            SubscriptionOp::Unsubscribe(channel) => {
                if !self.hub.has_subscribers(&channel) {
                    self.feed.forget(&channel);
                    let name = pubsub_channel(Mode::Cluster, &channel);
                    if let Ok(Err(error)) =
                        tokio::time::timeout(REDIS_TIMEOUT, conn.sunsubscribe(&name)).await
                    {
                        tracing::warn!(message = "redis cluster unsubscribe failed", channel, %error);
                    }
                }
            }
        }
    }
}
