//! The webhook deliverers' and the event queue's metrics: a handle built
//! once per node (when webhooks are on) and passed to the occupancy writer,
//! which counts queued events, and to the deliverers.

use std::sync::Arc;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};

use crate::metrics::registry::{counter_vec, gauge_vec, histogram_vec};

/// Every event name, for the metric's labels.
pub const EVENT_NAMES: [&str; 6] = [
    "user_online",
    "user_offline",
    "member_added",
    "member_removed",
    "channel_occupied",
    "channel_vacated",
];

/// Webhook metrics, in the node's registry.
#[derive(Debug)]
pub struct WebhookMetrics {
    pub(crate) emitted: IntCounterVec,
    pub(crate) delivered: IntCounterVec,
    pub(crate) retried: IntCounterVec,
    pub(crate) dead_lettered: IntCounterVec,
    pub(crate) requests: IntCounterVec,
    pub(crate) latency: HistogramVec,
    pub(crate) delivering: IntGaugeVec,
}

impl WebhookMetrics {
    pub fn new(registry: &Registry, endpoints: usize) -> Arc<WebhookMetrics> {
        let r = registry;
        let metrics = WebhookMetrics {
            emitted: counter_vec(
                r,
                "switchboard_webhook_events_emitted_total",
                "Presence and occupancy events this node queued for the webhooks, by event.",
                &["event"],
            ),
            delivered: counter_vec(
                r,
                "switchboard_webhook_events_delivered_total",
                "Events this node delivered (the endpoint answered 2xx), by endpoint index.",
                &["endpoint"],
            ),
            retried: counter_vec(
                r,
                "switchboard_webhook_events_retried_total",
                "Events in a webhook request that failed and will be sent again.",
                &["endpoint"],
            ),
            dead_lettered: counter_vec(
                r,
                "switchboard_webhook_events_dead_lettered_total",
                "Events given up after webhook_max_age without a 2xx answer.",
                &["endpoint"],
            ),
            requests: counter_vec(
                r,
                "switchboard_webhook_requests_total",
                "Webhook requests by endpoint and result (ok, status, error).",
                &["endpoint", "result"],
            ),
            latency: histogram_vec(
                r,
                "switchboard_webhook_delivery_seconds",
                "From an event's time to its delivery.",
                &["endpoint"],
                &[
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0, 3600.0,
                ],
            ),
            delivering: gauge_vec(
                r,
                "switchboard_webhook_delivering",
                "1 while this node holds an endpoint's delivery lease.",
                &["endpoint"],
            ),
        };
        // Every series exposed at 0 from the start, so rates and alerts
        // work before the first event.
        for event in EVENT_NAMES {
            metrics.emitted.with_label_values(&[event]);
        }
        for endpoint in 0..endpoints {
            let label = endpoint.to_string();
            for counter in [&metrics.delivered, &metrics.retried, &metrics.dead_lettered] {
                counter.with_label_values(&[&label]);
            }
            metrics.delivering.with_label_values(&[&label]).set(0);
            metrics.latency.with_label_values(&[&label]);
            for result in ["ok", "status", "error"] {
                metrics.requests.with_label_values(&[&label, result]);
            }
        }
        Arc::new(metrics)
    }

    /// The script queued an event.
    pub fn emitted(&self, event: &str) {
        if EVENT_NAMES.contains(&event) {
            self.emitted.with_label_values(&[event]).inc();
        }
    }
}
