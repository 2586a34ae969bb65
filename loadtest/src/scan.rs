//! Reads the few fields of a MessagePack server frame the load tool needs
//! (`type`, `channel`, `id`, whether it has an `error`, a `close` event's
//! `code`, and `data.k` / `data.ts`) straight from the bytes, skipping
//! everything else without building a value.
//!
//! Translating every delivered frame to JSON text and parsing that (what
//! `switchboard_protocol::msgpack::to_json` is for) costs the load tool far
//! more per delivery than the JSON path, and on a machine the load tool
//! shares with the gateway that would show up as a slower MessagePack
//! gateway. A real MessagePack client decodes straight into its types; this
//! is the load tool's equivalent. Its own module, below the subscriber.

/// The fields of one frame, borrowed from its bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub kind: &'a str,
    pub channel: Option<&'a str>,
    pub id: Option<u64>,
    pub error: bool,
    pub code: Option<u64>,
    /// `data.k` and `data.ts`, when `data` is a map holding both as
    /// non-negative integers.
    pub payload: Option<(u64, u64)>,
}

/// How many values a frame may hold before it is refused (a bound on the
/// work of skipping, not a limit any real frame reaches).
const MAX_VALUES: usize = 1 << 20;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    /// A big-endian unsigned number of `n` bytes (1, 2, 4 or 8).
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    }

    /// A map header: its entry count.
    fn map(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(usize::from(b & 0x0f)),
            0xde => Some(self.be(2)? as usize),
            0xdf => Some(self.be(4)? as usize),
            _ => None,
        }
    }

    /// A string, if the next value is one (consumed only then).
    fn str(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let read = self.str_at();
        if read.is_none() {
            self.pos = start;
        }
        read
    }

    fn str_at(&mut self) -> Option<&'a str> {
        let len = match *self.bytes.get(self.pos)? {
            b @ 0xa0..=0xbf => {
                self.pos += 1;
                usize::from(b & 0x1f)
            }
            0xd9 => {
                self.pos += 1;
                self.be(1)? as usize
            }
            0xda => {
                self.pos += 1;
                self.be(2)? as usize
            }
            0xdb => {
                self.pos += 1;
                self.be(4)? as usize
            }
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// A non-negative integer, if the next value is one (consumed only then).
    fn uint(&mut self) -> Option<u64> {
        let start = self.pos;
        let read = self.uint_at();
        if read.is_none() {
            self.pos = start;
        }
        read
    }

    fn uint_at(&mut self) -> Option<u64> {
        let b = *self.bytes.get(self.pos)?;
        let value = match b {
            0x00..=0x7f => {
                self.pos += 1;
                return Some(u64::from(b));
            }
            0xcc..=0xcf => {
                self.pos += 1;
                self.be(1 << (b - 0xcc))?
            }
            0xd0..=0xd3 => {
                self.pos += 1;
                let n = 1usize << (b - 0xd0);
                let raw = self.be(n)?;
                // Sign-extend; a negative number is not what is wanted.
                let shift = 64 - 8 * n as u32;
                let signed = ((raw << shift) as i64) >> shift;
                u64::try_from(signed).ok()?
            }
            _ => return None,
        };
        Some(value)
    }

    /// Skips one value (and everything inside it).
    fn skip(&mut self) -> Option<()> {
        let mut pending: usize = 1;
        let mut seen = 0usize;
        while pending > 0 {
            pending -= 1;
            seen += 1;
            if seen > MAX_VALUES {
                return None;
            }
            let b = self.byte()?;
            let (bytes, values) = match b {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (0, 2 * usize::from(b & 0x0f)),
                0x90..=0x9f => (0, usize::from(b & 0x0f)),
                0xa0..=0xbf => (usize::from(b & 0x1f), 0),
                0xc4 | 0xd9 => (self.be(1)? as usize, 0),
                0xc5 | 0xda => (self.be(2)? as usize, 0),
                0xc6 | 0xdb => (self.be(4)? as usize, 0),
                0xc7 => (self.be(1)? as usize + 1, 0),
                0xc8 => (self.be(2)? as usize + 1, 0),
                0xc9 => (self.be(4)? as usize + 1, 0),
                0xca => (4, 0),
                0xcb => (8, 0),
                0xcc..=0xcf => (1 << (b - 0xcc), 0),
                0xd0..=0xd3 => (1 << (b - 0xd0), 0),
                0xd4..=0xd8 => (1 + (1 << (b - 0xd4)), 0),
                0xdc => (0, self.be(2)? as usize),
                0xdd => (0, self.be(4)? as usize),
                0xde => (0, 2 * self.be(2)? as usize),
                0xdf => (0, 2 * self.be(4)? as usize),
                _ => return None,
            };
            self.take(bytes)?;
            pending = pending.checked_add(values)?;
        }
        Some(())
    }

    /// `data`'s `k` and `ts`, skipping the rest of the map.
    fn payload(&mut self) -> Option<Option<(u64, u64)>> {
        let Some(entries) = self.map_if_map() else {
            self.skip()?;
            return Some(None);
        };
        let (mut k, mut ts) = (None, None);
        for _ in 0..entries {
            match self.str() {
                Some("k") if k.is_none() => k = self.uint_or_skip()?,
                Some("ts") if ts.is_none() => ts = self.uint_or_skip()?,
                Some(_) => self.skip()?,
                // A key that is not a string: skip it and its value.
                None => {
                    self.skip()?;
                    self.skip()?;
                }
            }
        }
        Some(k.zip(ts))
    }

    /// The next value as a non-negative integer, or skipped (`Some(None)`).
    fn uint_or_skip(&mut self) -> Option<Option<u64>> {
        match self.uint() {
            Some(n) => Some(Some(n)),
            None => self.skip().map(|()| None),
        }
    }

    /// A map header if the next value is a map.
    fn map_if_map(&mut self) -> Option<usize> {
        match *self.bytes.get(self.pos)? {
            0x80..=0x8f | 0xde | 0xdf => self.map(),
            _ => None,
        }
    }
}

/// The fields of `bytes`, one MessagePack map; `None` when it is not one
/// or has no `type` string.
pub fn fields(bytes: &[u8]) -> Option<Fields<'_>> {
    let mut reader = Reader { bytes, pos: 0 };
    let entries = reader.map()?;
    let mut fields = Fields::default();
    let mut kind = None;
    for _ in 0..entries {
        let Some(key) = reader.str() else {
            reader.skip()?;
            reader.skip()?;
            continue;
        };
        let read = match key {
            "type" => reader.str().map(|s| kind = Some(s)),
            "channel" => reader.str().map(|s| fields.channel = Some(s)),
            "id" => reader.uint().map(|n| fields.id = Some(n)),
            "code" => reader.uint().map(|n| fields.code = Some(n)),
            "data" => reader.payload().map(|p| fields.payload = p),
            "error" => {
                fields.error = true;
                None
            }
            _ => None,
        };
        if read.is_none() {
            reader.skip()?;
        }
    }
    if reader.pos != bytes.len() {
        return None;
    }
    fields.kind = kind?;
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::msgpack::to_msgpack;

    fn scan(json: &str) -> Option<Fields<'static>> {
        let bytes: &'static [u8] = Box::leak(to_msgpack(json).unwrap().into_boxed_slice());
        fields(bytes)
    }

    #[test]
    fn a_message_gives_its_channel_and_payload() {
        let got = scan(
            r#"{"type":"message","channel":"bench:all","offset":70000,"data":{"user":{"id":1,"tags":["a",null,true,-5,1.5,[]]},"k":12345678901,"text":"héllo","ts":1765000000123456,"x":-300000}}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            Fields {
                kind: "message",
                channel: Some("bench:all"),
                payload: Some((12_345_678_901, 1_765_000_000_123_456)),
                ..Fields::default()
            }
        );
    }

    #[test]
    fn replies_errors_and_close_events() {
        let reply = scan(r#"{"type":"reply","id":7,"result":{"offset":1,"epoch":"e"}}"#).unwrap();
        assert_eq!(
            (reply.kind, reply.id, reply.error),
            ("reply", Some(7), false)
        );
        let error =
            scan(r#"{"type":"reply","id":8,"error":{"code":"bad_request","message":"no"}}"#)
                .unwrap();
        assert!(error.error);
        let close = scan(r#"{"type":"close","code":1012}"#).unwrap();
        assert_eq!(close.code, Some(1012));
        let long = "x".repeat(70_000);
        let big = scan(&format!(
            r#"{{"type":"message","channel":"c","data":{{"k":1,"ts":2,"p":"{long}"}}}}"#
        ))
        .unwrap();
        assert_eq!(big.payload, Some((1, 2)));
    }

    #[test]
    fn data_without_both_numbers_has_no_payload() {
        for data in [
            r#"{"k":1}"#,
            r#"{"k":-1,"ts":2}"#,
            r#"{"k":"1","ts":2}"#,
            "[1,2]",
            "3",
        ] {
            let got = scan(&format!(
                r#"{{"type":"message","channel":"c","data":{data}}}"#
            ))
            .unwrap_or_else(|| panic!("{data}"));
            assert_eq!(got.payload, None, "{data}");
        }
    }

    #[test]
    fn what_is_not_one_map_is_refused() {
        assert_eq!(fields(&[0x93, 1, 2, 3]), None);
        assert_eq!(fields(&[0xc1]), None);
        assert_eq!(fields(&[0x81, 0xa4, b't', b'y', b'p', b'e']), None);
        let mut trailing = to_msgpack(r#"{"type":"x"}"#).unwrap();
        trailing.push(0);
        assert_eq!(fields(&trailing), None);
        assert_eq!(fields(&to_msgpack(r#"{"channel":"c"}"#).unwrap()), None);
    }
}
