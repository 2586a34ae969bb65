//! Helpers for reading client JSON without re-parsing it into a tree: how
//! deep a `data` value nests, and optional raw fields where `null` counts as
//! present. Shared by command frames (`frame`), batch entries (`batch`) and
//! the gateway's server API bodies.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The deepest nesting of arrays and objects accepted in `data`. serde_json
/// already refuses frames nested past 128 levels while decoding; the limit
/// here is lower so subscribers' own parsers (often recursive) stay safe.
pub const MAX_DATA_DEPTH: usize = 32;

/// The deepest array/object nesting of a valid JSON text, by one scan that
/// skips strings. Written by hand: serde_json does not expose depth, and
/// re-parsing `data` into a tree just to measure it would cost an allocation
/// per node on every publish.
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Deserializes an optional raw field so that `null` counts as present
/// (`Some("null")`), unlike serde's default where it reads as absent. For
/// `#[serde(default, deserialize_with = "...")]` on `Option<&RawValue>`.
pub fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue as Deserialize>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_depth_skips_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":"[[[["}]}"#), 3);
        assert_eq!(nesting_depth(r#"["\"[", []]"#), 2);
    }
}
