//! The decoder allocates in proportion to its input, never more: measured
//! with a counting global allocator over property-generated frames. In its
//! own test binary, with a single test, so nothing else allocates meanwhile.

#![allow(clippy::unwrap_used)]

use std::alloc::System;

use proptest::prelude::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use switchboard_protocol::frame::nesting_depth;
use switchboard_protocol::{decode_command, Pattern};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated while `work` runs.
fn allocated_by(work: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    work();
    region.change().bytes_allocated
}

fn frames() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,2000}",
        "\\{\"type\":\"(publish|subscribe|ping)\",\"channel\":\"[a-z:*]{0,300}\",\"id\":[0-9]{1,25},\"data\":[\\[\\]{}\"a-z0-9,:]{0,2000}\\}",
        (1usize..5000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (1usize..3000).prop_map(|n| format!(r#"{{"type":"publish","channel":"c","data":{}1{}}}"#, r#"{"a":"#.repeat(n), "}".repeat(n))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decoding_allocates_in_proportion_to_the_input(text in frames()) {
        let bytes = allocated_by(|| {
            let _ = decode_command(&text);
            let _ = nesting_depth(&text);
            let _ = Pattern::parse(&text);
        });
        prop_assert!(
            bytes <= 2 * text.len() + 4096,
            "{} bytes allocated for {} bytes of input", bytes, text.len()
        );
    }
}
