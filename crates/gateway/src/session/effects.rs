//! Running what a command decided ([`Effect`]): the session's calls to the
//! hub, the broker, presence, occupancy, history and the subscribe proxy,
//! with their failures logged and turned into the client's error.
//!
//! The rules (grants, namespace features, limits) were applied by
//! `commands::decide` before anything here runs; what is left is the order
//! of the calls, which the contract depends on. A subscribe joins the hub
//! and the broker before it reads the channel's position (so every later
//! message reaches the session, live or replayed), and a failure midway
//! leaves the hub again. The `join` and `leave` presence events go through
//! the broker like any message. These are methods of the session, called
//! by its main loop one command at a time.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_protocol::{ChannelName, ErrorCode, Position, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::clock::Moment;
use super::commands::{self, Effect, Refusal};
use super::recovery::{self, Resume};
use super::Session;
use crate::backend::subscribe_proxy::Decision;
use crate::broker::{self, BrokerError};
use crate::history::{self, HistoryPage, HistoryQuery};
use crate::presence::{connection_id, Member};

/// A command's result, and frames to write right after its reply.
type Done = (Value, Vec<Utf8Bytes>);

/// A result with nothing to write after its reply.
fn none(value: Value) -> Done {
    (value, Vec::new())
}

impl<W: super::Wire> Session<W> {
    /// Runs what a command decided; its result, or the client's error.
    pub(super) async fn execute(&mut self, effect: Effect<'_>) -> Result<Done, Refusal> {
        match effect {
            Effect::Reply(value) => Ok(none(value)),
            Effect::Subscribe {
                channel,
                since,
                info,
            } => self.subscribe(channel, since, info).await,
            Effect::AskBackend { channel, since } => {
                let info = self.authorize(&channel).await?;
                commands::subscription_room(self.subscriptions.len(), &self.node.config)?;
                self.subscribe(channel, since, info).await
            }
            Effect::Unsubscribe { channel } => {
                self.unsubscribe(&channel).await;
                Ok(none(json!({})))
            }
            Effect::Publish { channel, data } => self.publish(&channel, data).await.map(none),
            Effect::PublishBatch { messages } => self.publish_batch(messages).await.map(none),
            Effect::Presence { channel } => self.presence(&channel).await.map(none),
            Effect::History { channel, query } => {
                let page = self.read_history(&channel, &query, "history").await?;
                history::reply(&query, page).map(none)
            }
            Effect::Refresh { token } => self.refresh(&token).map(none),
        }
    }

    /// Joins a channel the session may subscribe to: hub and broker, then
    /// its position (and what the client missed), then presence.
    async fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Option<Position>,
        info: Option<Arc<RawValue>>,
    ) -> Result<Done, Refusal> {
        let node = Arc::clone(&self.node);
        let joined = node.hub.subscribe(channel.as_str(), &self.handle);
        if joined.first {
            if let Err(error) = node.broker.subscribe(channel.as_str()).await {
                tracing::warn!(message = "broker subscribe failed", channel = %channel, %error, connection_id = %self.connection_id());
                self.undo_subscribe(&channel).await;
                return Err((
                    ErrorCode::Internal,
                    "subscription failed: broker unavailable".into(),
                ));
            }
        }
        let namespace = node.config.namespace(channel.namespace());
        // Read after joining the hub and the broker: every message after the
        // position read here reaches this session, live or from history.
        let ((result, replay), resume) = if namespace.history().enabled() {
            match self.recover(&channel, since).await {
                Ok((done, resume)) => (done, Some(resume)),
                Err(error) => {
                    self.undo_subscribe(&channel).await;
                    return Err(error);
                }
            }
        } else {
            (none(recovery::without_history(since.as_ref())), None)
        };
        if namespace.presence {
            self.join(&channel, info).await;
        }
        node.metrics.subscribed(channel.as_str());
        node.occupancy
            .subscribed(channel.as_str(), &self.claims.user, namespace.presence);
        // The entry shares the hub's name and holds what the reply covered
        // (no frame is taken off the queue while a command runs).
        self.subscriptions.add(joined.channel, resume);
        Ok((result, replay))
    }

    /// Enters the channel's presence and, where the namespace asks for it,
    /// publishes the `join` event.
    async fn join(&mut self, channel: &ChannelName, info: Option<Arc<RawValue>>) {
        let node = &self.node;
        let member = Member {
            user: Arc::clone(&self.claims.user),
            connection_id: connection_id(&node.instance, self.handle.id),
            info,
        };
        // The hub holds what presence must rewrite should Redis lose it.
        node.hub
            .set_present(channel.as_str(), self.handle.id, member.info.clone());
        if let Err(error) = node.presence.join(channel.as_str(), &member).await {
            tracing::warn!(message = "presence join failed", channel = %channel, %error, connection_id = %self.connection_id());
        } else if node.config.namespace(channel.namespace()).join_leave {
            let frame = ServerFrame::Join {
                channel: channel.as_str(),
                user: &self.claims.user,
                connection_id: &member.connection_id,
                info: member.info.as_deref(),
            }
            .encode();
            if let Err(error) = node
                .broker
                .publish(channel.as_str(), Utf8Bytes::from(frame))
                .await
            {
                tracing::warn!(message = "join event not published", channel = %channel, %error, connection_id = %self.connection_id());
            }
        }
    }

    /// A subscribe the token does not grant, on a namespace with a
    /// subscribe proxy: asked of the backend. Allowed, it yields the
    /// subscription's presence `info`.
    async fn authorize(&mut self, channel: &ChannelName) -> Result<Option<Arc<RawValue>>, Refusal> {
        let node = &self.node;
        let (Some(url), Some(proxy)) = (
            node.config
                .namespace(channel.namespace())
                .subscribe_proxy
                .as_ref(),
            node.subscribe_proxy.as_ref(),
        ) else {
            return Err(commands::not_granted(channel));
        };
        let decision = proxy
            .ask(
                url,
                &self.claims.user,
                channel.as_str(),
                self.claims.info.as_deref(),
                &self.connection_id().to_string(),
            )
            .await;
        match decision {
            Ok(Decision::Allow { info }) => Ok(info.or_else(|| self.claims.info.clone())),
            Ok(Decision::Deny { reason }) => {
                tracing::info!(message = "subscribe refused by the backend", channel = %channel, reason = reason.as_deref().unwrap_or(""), connection_id = %self.connection_id());
                let mut message = format!("the backend refused subscribing to {channel}");
                if let Some(reason) = reason {
                    message.push_str(": ");
                    message.push_str(&reason);
                }
                Err((ErrorCode::Forbidden, message))
            }
            Err(error) => {
                tracing::warn!(message = "subscribe proxy failed", channel = %channel, %error, connection_id = %self.connection_id());
                Err((ErrorCode::Unavailable, error.client_message()))
            }
        }
    }

    /// Leaves the hub (and the broker) after a subscribe that failed midway
    /// (its entry, and so its resume, was never added).
    async fn undo_subscribe(&mut self, channel: &ChannelName) {
        let node = &self.node;
        let last = node.hub.unsubscribe(channel.as_str(), self.handle.id);
        // Occupancy reads counts from the hub: a write that saw this entry
        // meanwhile (another session of the user changed the channel's
        // count) is corrected.
        let presence = node.config.namespace(channel.namespace()).presence;
        node.occupancy
            .unsubscribed(channel.as_str(), &self.claims.user, presence);
        if last {
            let _ = node.broker.unsubscribe(channel.as_str()).await;
        }
    }

    /// Reads the channel's position (and, with `since`, what the client
    /// missed, up to the send queue's byte cap) for a subscribe; with the
    /// reply, what queued frames it covers (to drop).
    async fn recover(
        &mut self,
        channel: &ChannelName,
        since: Option<Position>,
    ) -> Result<(Done, Resume), Refusal> {
        let budget = self.node.config.session.send_queue_bytes;
        let query = recovery::query(since, budget);
        let page = self.read_history(channel, &query, "subscribe").await?;
        let node = &self.node;
        node.broker.holding(channel.as_str(), &page.top);
        let recovery = recovery::recover(query.since.as_ref(), page, budget)?;
        if let Some(outcome) = recovery.outcome {
            node.metrics.recovery(outcome);
            node.metrics.replayed("session", recovery.replay.len());
        }
        Ok(((recovery.result, recovery.replay), recovery.resume))
    }

    async fn read_history(
        &mut self,
        channel: &ChannelName,
        query: &HistoryQuery,
        reason: &'static str,
    ) -> Result<HistoryPage, Refusal> {
        let node = &self.node;
        let policy = node.config.namespace(channel.namespace()).history();
        let page = node.broker.history(channel.as_str(), policy, query).await;
        node.metrics.history_read(reason, page.is_ok());
        page.map_err(|BrokerError::Unavailable(error)| {
            tracing::warn!(message = "history read failed", channel = %channel, %error, connection_id = %self.connection_id());
            (ErrorCode::Internal, "history unavailable".into())
        })
    }

    async fn unsubscribe(&mut self, channel: &ChannelName) {
        if let Some(name) = self.subscriptions.remove(channel.as_str()) {
            self.leave(&name).await;
        }
    }

    /// Drops one subscription: hub, broker, presence and the `leave` event.
    async fn leave(&mut self, channel: &str) {
        let node = &self.node;
        node.metrics.unsubscribed(channel);
        let namespace = node
            .config
            .namespace(switchboard_protocol::channel::namespace(channel));
        let last = node.hub.unsubscribe(channel, self.handle.id);
        // After the hub entry is gone: occupancy reads the count from the hub.
        node.occupancy
            .unsubscribed(channel, &self.claims.user, namespace.presence);
        if last {
            if let Err(error) = node.broker.unsubscribe(channel).await {
                tracing::warn!(message = "broker unsubscribe failed", channel = %channel, %error, connection_id = %self.connection_id());
            }
        }
        if !namespace.presence {
            return;
        }
        if let Err(error) = node.presence.leave(channel, self.connection_id()).await {
            tracing::warn!(message = "presence leave failed", channel = %channel, %error, connection_id = %self.connection_id());
            return;
        }
        if namespace.join_leave {
            let frame = ServerFrame::Leave {
                channel,
                user: &self.claims.user,
                connection_id: &self.connection_id().to_string(),
            }
            .encode();
            if let Err(error) = node.broker.publish(channel, Utf8Bytes::from(frame)).await {
                tracing::warn!(message = "leave event not published", channel = %channel, %error, connection_id = %self.connection_id());
            }
        }
    }

    /// Leaves every channel (the session ends).
    pub(super) async fn leave_all(&mut self) {
        for channel in self.subscriptions.take_all() {
            self.leave(&channel).await;
        }
    }

    async fn publish(&mut self, channel: &ChannelName, data: &RawValue) -> Result<Value, Refusal> {
        let node = &self.node;
        let policy = node.config.namespace(channel.namespace()).history();
        let published = broker::publish_message(&*node.broker, channel.as_str(), data, policy)
            .await
            .map(|position| match position {
                Some(p) => json!({ "offset": p.offset, "epoch": p.epoch }),
                None => json!({}),
            });
        match published {
            Ok(result) => Ok(result),
            Err(error) => {
                tracing::warn!(message = "publish failed", channel = %channel, %error, connection_id = %self.connection_id());
                // Redis (or the shard of the channel) is away for now: the
                // client may publish again later.
                Err((
                    ErrorCode::Unavailable,
                    "message not published: broker unavailable".into(),
                ))
            }
        }
    }

    async fn presence(&mut self, channel: &ChannelName) -> Result<Value, Refusal> {
        match self.node.presence.members(channel.as_str()).await {
            Ok(members) => Ok(json!({ "members": members })),
            Err(error) => {
                tracing::warn!(message = "presence read failed", channel = %channel, %error, connection_id = %self.connection_id());
                Err((ErrorCode::Internal, "presence unavailable".into()))
            }
        }
    }

    /// A new token for this session: its claims and expiry replace the old.
    fn refresh(&mut self, token: &str) -> Result<Value, Refusal> {
        let verifier = &self.node.verifier;
        let refreshed = commands::refresh(
            verifier.verify(token),
            &self.claims.user,
            SystemTime::now(),
            verifier.leeway(),
        );
        let refreshed = refreshed.inspect_err(|(code, _)| {
            if *code == ErrorCode::Forbidden {
                tracing::info!(message = "refresh refused", reason = "other_user", connection_id = %self.connection_id());
            }
        })?;
        let result = refreshed.result();
        self.expires_at = Moment::now() + refreshed.lifetime;
        self.claims = refreshed.claims;
        Ok(result)
    }
}
