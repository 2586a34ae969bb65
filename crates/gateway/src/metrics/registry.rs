//! Defining a metric in a node's registry: one constructor per kind, used
//! by every area of `metrics`, and the bucket set of round trips that
//! several areas share.
//!
//! Each constructor registers the collector and hands it back, so an area
//! keeps the handle it counts with and the registry exposes the same
//! series. The definitions are constants, so the only failure is a
//! programming error (a duplicate name), which the unit tests catch by
//! building the whole set.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Buckets for round trips to Redis or an API request: 100 µs to 2.5 s.
pub(super) const IO_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Registers a collector and hands it back.
pub(super) fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    // The definitions are constants and each name is registered once per
    // registry, so this only fails on a programming error (a unit test
    // builds the whole set).
    registry
        .register(Box::new(collector.clone()))
        .expect("metric definitions are valid and unique");
    collector
}

pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric name");
    register(registry, counter)
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    register(registry, counter)
}

pub(super) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric name");
    register(registry, gauge)
}

pub(super) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
    register(registry, gauge)
}

pub(super) fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric name");
    register(registry, histogram)
}

pub(super) fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let histogram = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric name");
    register(registry, histogram)
}
