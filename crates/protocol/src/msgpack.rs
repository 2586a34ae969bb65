//! The `switchboard.msgpack` format: every frame's MessagePack form, as a
//! translation of its JSON text, both ways.
//!
//! Why translate rather than give every frame a second serializer: a
//! message is stored in history, relayed between nodes and sent to webhooks
//! as JSON, and the gateway handles commands as JSON text (borrowing `data`
//! without a tree). So MessagePack lives only at the edge: a msgpack
//! client's frame becomes JSON text once as it arrives, and a frame for
//! msgpack clients is translated once per message on each node.
//!
//! JSON to MessagePack streams one into the other (`serde-transcode`), with
//! no tree in between. MessagePack to JSON reads an `rmpv` value and writes
//! the JSON text by hand, because several MessagePack values have no JSON
//! form (`bin`, `ext`, non-string map keys, NaN and infinities): serde's
//! JSON writer would turn bytes into an array of numbers and NaN into
//! `null`, silently changing what subscribers receive. Here they are refused
//! with the path of the value, so the client learns what to send instead.

use std::fmt::{self, Write as _};

use rmpv::Value;

/// How deep a MessagePack frame may nest: serde_json refuses JSON frames
/// nested past 128 levels, so a MessagePack frame gets the same bound (the
/// tighter limit on `data`, 32 levels, is checked on the JSON afterwards
/// like any JSON frame's).
pub const MAX_DEPTH: usize = 128;

/// Why a binary frame has no JSON text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    /// Not one MessagePack map (bad bytes, trailing bytes, another type).
    #[error("frame is not a valid MessagePack map: {0}")]
    Malformed(String),
    /// A valid map holding a value JSON cannot carry.
    #[error("frame has no JSON form: {what} at {path}{hint}")]
    NoJsonForm {
        what: &'static str,
        path: String,
        hint: &'static str,
    },
}

/// The MessagePack form of a JSON text (a frame the gateway built, or a
/// client's): maps with string keys, the smallest integer encodings, floats
/// as float 64.
/// Fails only on a text that is not JSON (the error says why).
pub fn to_msgpack(json: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(json.len());
    to_msgpack_into(json, &mut out)?;
    Ok(out)
}

/// [`to_msgpack`], appending to `out` (so a caller can put a frame header
/// before it without a second copy).
pub fn to_msgpack_into(json: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let mut reader = serde_json::Deserializer::from_str(json);
    let mut writer = rmp_serde::Serializer::new(&mut *out);
    serde_transcode::transcode(&mut reader, &mut writer).map_err(|error| error.to_string())?;
    reader.end().map_err(|error| error.to_string())
}

/// The JSON text of a MessagePack frame, which must be one map.
pub fn to_json(bytes: &[u8]) -> Result<String, MsgpackError> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|error| MsgpackError::Malformed(error.to_string()))?;
    if !reader.is_empty() {
        return Err(MsgpackError::Malformed(format!(
            "{} bytes after the map",
            reader.len()
        )));
    }
    if !value.is_map() {
        return Err(MsgpackError::Malformed(format!(
            "{} where a map belongs",
            kind(&value)
        )));
    }
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 4);
    let mut path = Path(Vec::new());
    write_json(&value, &mut out, &mut path)?;
    Ok(out)
}

/// The `id` of a MessagePack command that could not be handled, when it
/// can be read (a non-negative integer at the top of a map), so its error
/// goes out as a `reply` like a JSON command's.
pub fn command_id(bytes: &[u8]) -> Option<u64> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH).ok()?;
    value
        .as_map()?
        .iter()
        .find(|(key, _)| key.as_str() == Some("id"))
        .and_then(|(_, id)| id.as_u64())
}

/// Where a value sits in the frame, for the refusal's message
/// (`data.items[2].photo`).
struct Path<'a>(Vec<Step<'a>>);

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("the top");
        }
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => f.write_str(key)?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

fn refuse(what: &'static str, path: &Path<'_>, hint: &'static str) -> MsgpackError {
    MsgpackError::NoJsonForm {
        what,
        path: path.to_string(),
        hint,
    }
}

fn write_json<'a>(
    value: &'a Value,
    out: &mut String,
    path: &mut Path<'a>,
) -> Result<(), MsgpackError> {
    match value {
        Value::Nil => out.push_str("null"),
        Value::Boolean(true) => out.push_str("true"),
        Value::Boolean(false) => out.push_str("false"),
        Value::Integer(n) => {
            // An rmpv integer is an i64 or a u64; both print exactly.
            let _ = write!(out, "{n}");
        }
        Value::F32(x) => write_float(f64::from(*x), out, path)?,
        Value::F64(x) => write_float(*x, out, path)?,
        Value::String(s) => match s.as_str() {
            Some(s) => write_string(s, out),
            None => return Err(refuse("str value that is not UTF-8", path, "")),
        },
        Value::Binary(_) => {
            return Err(refuse(
                "bin value",
                path,
                "; send binary data as a base64 string",
            ))
        }
        Value::Ext(..) => {
            return Err(refuse(
                "ext value",
                path,
                "; send timestamps as numbers or strings",
            ))
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                path.0.push(Step::Index(i));
                write_json(item, out, path)?;
                path.0.pop();
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                let Some(key) = key.as_str() else {
                    return Err(refuse(
                        "map key that is not a string",
                        path,
                        "; JSON object keys are strings",
                    ));
                };
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                path.0.push(Step::Key(key));
                write_json(item, out, path)?;
                path.0.pop();
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_float(x: f64, out: &mut String, path: &Path<'_>) -> Result<(), MsgpackError> {
    if !x.is_finite() {
        return Err(refuse("NaN or infinite float", path, ""));
    }
    // serde_json prints the shortest form that reads back exactly, and keeps
    // a float a float (`1.0`, not `1`).
    match serde_json::to_string(&x) {
        Ok(text) => out.push_str(&text),
        Err(_) => return Err(refuse("float", path, "")),
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's escaping: writing a &str into a String cannot fail.
    if let Ok(text) = serde_json::to_string(s) {
        out.push_str(&text);
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a bool",
        Value::Integer(_) => "an int",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a str",
        Value::Binary(_) => "a bin",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an ext",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: Vec<(&str, Value)>) -> Vec<u8> {
        let value = Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        );
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &value).unwrap();
        out
    }

    #[test]
    fn json_round_trips_through_msgpack() {
        let json = r#"{"type":"message","channel":"chat:a","data":{"text":"h\u00e9\"llo\n","n":-3,"big":18446744073709551615,"x":1.5,"one":1.0,"ok":true,"none":null,"list":[1,[2,{}],"s"]},"offset":7}"#;
        let packed = to_msgpack(json).unwrap();
        let back = to_json(&packed).unwrap();
        let a: serde_json::Value = serde_json::from_str(json).unwrap();
        let b: serde_json::Value = serde_json::from_str(&back).unwrap();
        assert_eq!(a, b);
        assert!(
            back.contains("\"one\":1.0"),
            "a float stays a float: {back}"
        );
        // Smaller than the text: small ints and short strings pack tight.
        assert!(packed.len() < json.len());
    }

    #[test]
    fn msgpack_maps_become_json_text() {
        let bytes = map(vec![
            ("type", Value::from("publish")),
            ("id", Value::from(3u64)),
            (
                "data",
                Value::Map(vec![(Value::from("k"), Value::F32(0.5))]),
            ),
        ]);
        assert_eq!(
            to_json(&bytes).unwrap(),
            r#"{"type":"publish","id":3,"data":{"k":0.5}}"#
        );
    }

    #[test]
    fn values_with_no_json_form_are_refused_with_their_path() {
        let bytes = map(vec![(
            "data",
            Value::Map(vec![(
                Value::from("items"),
                Value::Array(vec![Value::Nil, Value::Binary(vec![1, 2])]),
            )]),
        )]);
        let error = to_json(&bytes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "frame has no JSON form: bin value at data.items[1]; send binary data as a base64 string"
        );
        let bytes = map(vec![("data", Value::Ext(-1, vec![0; 4]))]);
        assert_eq!(
            to_json(&bytes).unwrap_err().to_string(),
            "frame has no JSON form: ext value at data; send timestamps as numbers or strings"
        );
        let bytes = map(vec![(
            "data",
            Value::Map(vec![(Value::from(1), Value::Nil)]),
        )]);
        assert_eq!(
            to_json(&bytes).unwrap_err().to_string(),
            "frame has no JSON form: map key that is not a string at data; JSON object keys are strings"
        );
        let bytes = map(vec![("data", Value::F64(f64::NAN))]);
        assert_eq!(
            to_json(&bytes).unwrap_err().to_string(),
            "frame has no JSON form: NaN or infinite float at data"
        );
    }

    #[test]
    fn the_id_of_a_refused_command_is_read() {
        let bytes = map(vec![
            ("type", Value::from("publish")),
            ("id", Value::from(9u64)),
            ("data", Value::Binary(vec![1])),
        ]);
        assert_eq!(command_id(&bytes), Some(9));
        assert_eq!(command_id(&map(vec![("id", Value::from(-1))])), None);
        assert_eq!(command_id(&[0xc1]), None);
    }

    #[test]
    fn anything_but_one_map_is_malformed() {
        let mut array = Vec::new();
        rmpv::encode::write_value(&mut array, &Value::Array(vec![])).unwrap();
        assert_eq!(
            to_json(&array).unwrap_err().to_string(),
            "frame is not a valid MessagePack map: an array where a map belongs"
        );
        let mut two = map(vec![("type", Value::from("ping"))]);
        two.push(0xc0);
        assert_eq!(
            to_json(&two).unwrap_err().to_string(),
            "frame is not a valid MessagePack map: 1 bytes after the map"
        );
        assert!(matches!(
            to_json(&[0x81, 0xa4, b't']),
            Err(MsgpackError::Malformed(_))
        ));
        assert!(matches!(to_json(&[]), Err(MsgpackError::Malformed(_))));
        // Nesting past the bound is refused, not a stack overflow.
        let deep = [vec![0x81, 0xa1, b'a'], vec![0x91; 10_000], vec![0xc0]].concat();
        assert!(matches!(to_json(&deep), Err(MsgpackError::Malformed(_))));
    }
}
