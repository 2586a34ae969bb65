//! Property tests over the parts of the protocol that read untrusted input:
//! the command decoder, the nesting scan and channel names and patterns.
//! They run in `make test` with a fixed number of cases (bounded in time);
//! `PROPTEST_CASES=100000 cargo test -p switchboard-protocol --test
//! properties` searches longer. The decoder must never panic, must accept
//! every well-formed command exactly as built, and must refuse data nested
//! past the limit whatever surrounds it.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{json, Value};
use switchboard_protocol::channel::{validate_channel, MAX_CHANNEL_LEN};
use switchboard_protocol::frame::{nesting_depth, MAX_DATA_DEPTH};
use switchboard_protocol::{decode_command, ChannelName, Command, Pattern, PatternSet};

const CHANNEL_CHARS: &str = "[A-Za-z0-9_\\-:.@/=+]";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn valid_channel() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{CHANNEL_CHARS}{{1,40}}")).unwrap()
}

/// Arbitrary JSON values, nested up to `depth` levels.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The real nesting depth of a value, by walking the tree.
fn depth_of(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// Text that looks like a command often enough to reach deep branches.
fn command_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just(json!("subscribe")),
        Just(json!("unsubscribe")),
        Just(json!("publish")),
        Just(json!("presence")),
        Just(json!("refresh")),
        Just(json!("ping")),
        json_value(2),
    ];
    let id = prop_oneof![
        Just(None),
        json_value(1).prop_map(Some),
        any::<u64>().prop_map(|n| Some(json!(n)))
    ];
    let channel = prop_oneof![
        Just(None),
        valid_channel().prop_map(|c| Some(json!(c))),
        ".{0,260}".prop_map(|c| Some(json!(c))),
        json_value(1).prop_map(Some),
    ];
    let data = prop_oneof![Just(None), json_value(6).prop_map(Some)];
    (kind, id, channel, data).prop_map(|(kind, id, channel, data)| {
        let mut command = json!({ "type": kind });
        if let Some(id) = id {
            command["id"] = id;
        }
        if let Some(channel) = channel {
            command["channel"] = channel;
        }
        if let Some(data) = data {
            command["data"] = data.clone();
            command["token"] = data;
        }
        command.to_string()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoder_never_panics_on_any_text(text in "\\PC{0,300}") {
        let _ = decode_command(&text);
    }

    #[test]
    fn decoder_never_panics_on_command_like_json(text in command_like()) {
        match decode_command(&text) {
            Ok(request) => {
                let parsed: Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(request.id, parsed["id"].as_u64());
                if let Command::Publish { channel, data } = request.command {
                    prop_assert!(validate_channel(channel.as_str()).is_ok());
                    prop_assert!(nesting_depth(data.get()) <= MAX_DATA_DEPTH);
                }
            }
            Err(error) => prop_assert!(!error.message.is_empty()),
        }
    }

    #[test]
    fn well_formed_publishes_round_trip(
        channel in valid_channel(),
        data in json_value(8),
        id in any::<u64>(),
    ) {
        let text = json!({"type": "publish", "channel": channel, "data": data, "id": id}).to_string();
        let request = decode_command(&text).unwrap();
        prop_assert_eq!(request.id, Some(id));
        match request.command {
            Command::Publish { channel: got, data: raw } => {
                prop_assert_eq!(got.as_str(), channel.as_str());
                // The raw data is passed through untouched, byte for byte.
                prop_assert_eq!(raw.get(), data.to_string());
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn nesting_scan_matches_the_tree(value in json_value(10)) {
        let text = value.to_string();
        prop_assert_eq!(nesting_depth(&text), depth_of(&value));
    }

    #[test]
    fn too_deep_data_is_refused_wherever_it_hides(
        extra in 1usize..200,
        wrap_in_object in any::<bool>(),
    ) {
        let levels = MAX_DATA_DEPTH + extra;
        let (open, close) = if wrap_in_object { (r#"{"k":"#, "}") } else { ("[", "]") };
        let data = format!("{}1{}", open.repeat(levels), close.repeat(levels));
        let text = format!(r#"{{"type":"publish","channel":"c","data":{data},"id":9}}"#);
        let error = decode_command(&text).unwrap_err();
        // Past serde_json's own limit (128 levels in all) the frame is
        // refused before its id is read.
        if levels < 120 {
            prop_assert_eq!(error.id, Some(9));
        }
    }

    #[test]
    fn channel_rules(name in ".{0,260}") {
        match ChannelName::parse(&name) {
            Ok(channel) => {
                prop_assert!(!name.is_empty() && name.len() <= MAX_CHANNEL_LEN);
                prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "_-:.@/=+".contains(c)));
                prop_assert_eq!(channel.as_str(), name.as_str());
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn patterns_match_what_they_name(channel in valid_channel(), suffix in proptest::string::string_regex(&format!("{CHANNEL_CHARS}{{0,20}}")).unwrap()) {
        let exact = Pattern::parse(&channel).unwrap();
        prop_assert!(exact.matches(&channel));
        let extended = format!("{channel}x");
        prop_assert!(!exact.matches(&extended));
        let prefix = Pattern::parse(&format!("{channel}*")).unwrap();
        let longer = format!("{channel}{suffix}");
        prop_assert!(prefix.matches(&longer));
        prop_assert_eq!(Pattern::parse(&prefix.to_string()).unwrap(), prefix.clone());
        let set = PatternSet::parse(&[format!("{channel}*")]).unwrap();
        prop_assert!(set.allows(&longer));
        let other = format!("x{channel}");
        prop_assert_eq!(set.allows(&other), other.starts_with(channel.as_str()));
    }

    #[test]
    fn pattern_parser_never_panics(pattern in "\\PC{0,260}", channel in "\\PC{0,60}") {
        if let Ok(parsed) = Pattern::parse(&pattern) {
            let _ = parsed.matches(&channel);
            prop_assert!(pattern.len() <= MAX_CHANNEL_LEN);
        }
    }
}
