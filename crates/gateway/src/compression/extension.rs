//! Which `permessage-deflate` offer of an upgrade request the server
//! accepts (RFC 7692 §5 and §7.1, docs/protocol.md "Compression").
//!
//! The request's `Sec-WebSocket-Extensions` headers hold a list of offers,
//! in the client's order of preference (RFC 6455 §9.1):
//!
//! ```text
//! extension       = extension-token *( ";" extension-param )
//! extension-param = token [ "=" ( token / quoted-string ) ]
//! ```
//!
//! with optional whitespace around the separators and empty list elements
//! allowed (RFC 7230 §7). The server takes the first `permessage-deflate`
//! offer whose parameters it can honour and answers [`ACCEPTED`]: it
//! compresses each message on its own with a 32 KiB window, and asks the
//! client to do the same so that it keeps no window per connection. An
//! offer with `server_max_window_bits=15` gets [`ACCEPTED_WINDOW`], which
//! repeats it, as RFC 7692 §7.1.2.1 requires of a server accepting it. An
//! offer is declined (and the next one tried) for an unknown or repeated
//! parameter, a bad value, a value where none belongs, or
//! `server_max_window_bits` below 15. A malformed offer is declined the
//! same way; the parser resumes at the next comma outside a quoted string.
//! Other extensions are ignored.

/// The `Sec-WebSocket-Extensions` of a 101 that accepted an offer.
pub const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The same, for an offer that named `server_max_window_bits=15`.
pub const ACCEPTED_WINDOW: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// The 101's `Sec-WebSocket-Extensions` for the request's headers of that
/// name (`headers.get_all(SEC_WEBSOCKET_EXTENSIONS)`, in order), or `None`
/// when no acceptable `permessage-deflate` is offered: the connection then
/// opens uncompressed.
pub fn negotiate<I>(values: I) -> Option<&'static str>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let seen = values
        .into_iter()
        .find_map(|value| accepted_offer(value.as_ref()))?;
    Some(if seen & SERVER_MAX_WINDOW_BITS != 0 {
        ACCEPTED_WINDOW
    } else {
        ACCEPTED
    })
}

/// The parameters of permessage-deflate, one bit each (to find repeats).
const SERVER_NO_CONTEXT_TAKEOVER: u8 = 1;
const CLIENT_NO_CONTEXT_TAKEOVER: u8 = 2;
const SERVER_MAX_WINDOW_BITS: u8 = 4;
const CLIENT_MAX_WINDOW_BITS: u8 = 8;

/// A parameter's value as far as permessage-deflate cares: the window
/// sizes are decimal integers with no leading zero (RFC 7692 §7.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    Absent,
    Number(u8),
    /// Anything else: no parameter of permessage-deflate takes it.
    Other,
}

/// The parameters of the first acceptable offer in one header value.
fn accepted_offer(value: &[u8]) -> Option<u8> {
    let mut parser = Parser { text: value, at: 0 };
    while !parser.done() {
        match parser.offer() {
            Ok(Some(seen)) => return Some(seen),
            Ok(None) => {}
            Err(Malformed) => parser.skip_element(),
        }
    }
    None
}

struct Malformed;

/// A cursor over one header value.
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn done(&self) -> bool {
        self.at >= self.text.len()
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    /// Optional whitespace.
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` if it is next (after optional whitespace).
    fn eat(&mut self, byte: u8) -> bool {
        self.ows();
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn token(&mut self) -> Result<&'a [u8], Malformed> {
        self.ows();
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        if self.at == start {
            return Err(Malformed);
        }
        Ok(&self.text[start..self.at])
    }

    /// A value after `=`: a token or a quoted string, read as a number
    /// when it is one.
    fn value(&mut self) -> Result<Value, Malformed> {
        self.ows();
        if self.peek() != Some(b'"') {
            return Ok(number(self.token()?.iter().copied()));
        }
        self.at += 1;
        let mut digits = Digits::default();
        loop {
            match self.peek() {
                None => return Err(Malformed),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(digits.value());
                }
                Some(b'\\') => {
                    let escaped = self.text.get(self.at + 1).ok_or(Malformed)?;
                    digits.push(*escaped);
                    self.at += 2;
                }
                Some(byte) => {
                    digits.push(byte);
                    self.at += 1;
                }
            }
        }
    }

    /// Reads one list element; its parameters if it is an acceptable
    /// permessage-deflate offer. An empty element is `Ok(None)`.
    fn offer(&mut self) -> Result<Option<u8>, Malformed> {
        if self.eat(b',') {
            return Ok(None);
        }
        self.ows();
        if self.done() {
            return Ok(None);
        }
        let name = self.token()?;
        let deflate = name.eq_ignore_ascii_case(b"permessage-deflate");
        let mut acceptable = deflate;
        let mut seen = 0u8;
        while self.eat(b';') {
            let param = self.token()?;
            let value = if self.eat(b'=') {
                self.value()?
            } else {
                Value::Absent
            };
            if deflate {
                match check(param, value) {
                    Some(bit) if seen & bit == 0 => seen |= bit,
                    _ => acceptable = false,
                }
            }
        }
        // The element ends here: at a comma or the end.
        if self.eat(b',') || self.done() {
            Ok(acceptable.then_some(seen))
        } else {
            Err(Malformed)
        }
    }

    /// Skips the rest of a malformed element: to just after the next comma
    /// outside a quoted string, or to the end.
    fn skip_element(&mut self) {
        let mut quoted = false;
        while let Some(byte) = self.peek() {
            self.at += 1;
            match byte {
                b'\\' if quoted => self.at += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => return,
                _ => {}
            }
        }
    }
}

/// The bit of a parameter the server accepts with this value, or `None`
/// when it declines the offer for it.
fn check(param: &[u8], value: Value) -> Option<u8> {
    let is = |name: &str| param.eq_ignore_ascii_case(name.as_bytes());
    match value {
        Value::Absent if is("server_no_context_takeover") => Some(SERVER_NO_CONTEXT_TAKEOVER),
        Value::Absent if is("client_no_context_takeover") => Some(CLIENT_NO_CONTEXT_TAKEOVER),
        // The server's window is 32 KiB: it cannot promise a smaller one.
        Value::Number(15) if is("server_max_window_bits") => Some(SERVER_MAX_WINDOW_BITS),
        Value::Absent | Value::Number(8..=15) if is("client_max_window_bits") => {
            Some(CLIENT_MAX_WINDOW_BITS)
        }
        _ => None,
    }
}

/// Reads a decimal integer of one or two digits with no leading zero.
fn number(bytes: impl Iterator<Item = u8>) -> Value {
    let mut digits = Digits::default();
    bytes.for_each(|byte| digits.push(byte));
    digits.value()
}

/// A value read byte by byte (a quoted string unescaped as it goes).
#[derive(Default)]
struct Digits {
    value: u8,
    count: u8,
    other: bool,
}

impl Digits {
    fn push(&mut self, byte: u8) {
        match byte {
            b'0'..=b'9' if self.count < 2 && !(self.count == 1 && self.value == 0) => {
                self.value = self.value * 10 + (byte - b'0');
                self.count += 1;
            }
            _ => self.other = true,
        }
    }

    fn value(&self) -> Value {
        if self.other || self.count == 0 || (self.count == 2 && self.value < 10) {
            Value::Other
        } else {
            Value::Number(self.value)
        }
    }
}

/// RFC 7230 §3.2.6 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &str) -> Option<&'static str> {
        negotiate([value])
    }

    #[test]
    fn the_rfc_offers() {
        // RFC 7692 §5.1 and §7.1.2.2: plain, and with client_max_window_bits.
        assert_eq!(one("permessage-deflate"), Some(ACCEPTED));
        assert_eq!(
            one("permessage-deflate; client_max_window_bits"),
            Some(ACCEPTED)
        );
        // §5.2: the first offer asks for a window below 15, the second is taken.
        assert_eq!(
            one(
                "permessage-deflate; client_max_window_bits; server_max_window_bits=10, \
                 permessage-deflate; client_max_window_bits"
            ),
            Some(ACCEPTED)
        );
        assert_eq!(
            one("permessage-deflate; client_max_window_bits; server_max_window_bits=10"),
            None
        );
    }

    #[test]
    fn each_parameter() {
        for accepted in [
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate; client_max_window_bits=\"10\"",
            "permessage-deflate; client_max_window_bits=\"1\\5\"",
            "permessage-deflate;client_max_window_bits = 12 ;server_no_context_takeover",
            "PerMessage-Deflate; Client_Max_Window_Bits",
        ] {
            assert_eq!(one(accepted), Some(ACCEPTED), "{accepted}");
        }
        // An accepted server_max_window_bits is repeated in the answer
        // (RFC 7692 §7.1.2.1).
        for accepted in [
            "permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; server_max_window_bits=\"15\"",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15; client_max_window_bits=9",
        ] {
            assert_eq!(one(accepted), Some(ACCEPTED_WINDOW), "{accepted}");
        }
        for declined in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=14",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=\"\"",
            "permessage-deflate; client_max_window_bits=\"1,5\"",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mystery",
            "permessage-deflate; mystery=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(one(declined), None, "{declined}");
        }
    }

    #[test]
    fn the_first_acceptable_offer_in_any_header() {
        assert_eq!(
            one("permessage-deflate; mystery, permessage-deflate"),
            Some(ACCEPTED)
        );
        assert_eq!(
            one("x-webkit-deflate-frame; no_context_takeover, permessage-deflate"),
            Some(ACCEPTED)
        );
        assert_eq!(
            negotiate(["foo; bar=1", "permessage-deflate; server_max_window_bits=9"]),
            None
        );
        assert_eq!(
            negotiate(["foo", "permessage-deflate; client_max_window_bits"]),
            Some(ACCEPTED)
        );
        assert_eq!(negotiate::<[&str; 0]>([]), None);
        assert_eq!(one(""), None);
        // Empty list elements (RFC 7230 §7).
        assert_eq!(one(" , ,permessage-deflate ,"), Some(ACCEPTED));
    }

    #[test]
    fn malformed_offers_are_declined() {
        for declined in [
            "permessage-deflate;",
            "permessage-deflate; ;",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate permessage-deflate",
            "permessage-deflate; client_max_window_bits=\"10",
            // An offer inside a quoted string is no offer.
            "foo; a=\"x, permessage-deflate\"",
            "foo; a=\"x\\\", permessage-deflate\"",
            "foo; a=\"x, permessage-deflate",
            "permessage-deflate\u{e9}",
        ] {
            assert_eq!(one(declined), None, "{declined}");
        }
        for accepted in [
            "permessage-deflate; ;, permessage-deflate",
            "permessage-deflate; client_max_window_bits=\"1,5\", permessage-deflate",
            "foo; a=\"x, y\", permessage-deflate",
            "foo bar, permessage-deflate",
            "=, permessage-deflate",
        ] {
            assert_eq!(one(accepted), Some(ACCEPTED), "{accepted}");
        }
        // Bytes that are not text do not stop the parser.
        assert_eq!(
            negotiate([&b"\xff\xfe, permessage-deflate"[..]]),
            Some(ACCEPTED)
        );
    }
}
