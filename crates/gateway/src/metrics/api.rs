//! The server API (`/api/*`): requests by route and status, and the time
//! to answer each. The route is a fixed name, never the request's path.

use std::time::Duration;

use http::StatusCode;
use prometheus::{HistogramVec, IntCounterVec, Registry};

use crate::metrics::registry::{counter_vec, histogram_vec, IO_BUCKETS};

/// The server API metrics of one node.
#[derive(Debug)]
pub(super) struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl ApiMetrics {
    pub(super) fn new(r: &Registry) -> ApiMetrics {
        ApiMetrics {
            requests: counter_vec(
                r,
                "switchboard_api_requests_total",
                "Server API requests by route and HTTP status.",
                &["route", "status"],
            ),
            duration: histogram_vec(
                r,
                "switchboard_api_request_duration_seconds",
                "Time to answer a server API request.",
                &["route"],
                IO_BUCKETS,
            ),
        }
    }

    pub(super) fn request(&self, route: &'static str, status: StatusCode, elapsed: Duration) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }
}
