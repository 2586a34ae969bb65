//! The `data` of each published message: the two fields the load tool reads
//! back (`k`, the message number, and `ts`, the send time in µs since the
//! epoch, for latency), and around them either padding (`x` repeated) or a
//! realistic JSON body, so that compression sees text like an
//! application's and not one repeated byte:
//!
//! - `chat`, about 300 bytes: a chat message with ids, a room, a user, a
//!   text of varying words, ISO timestamps, a reply, mentions and reactions;
//! - `doc`, about 4 KB: an invoice-like document with a customer, an
//!   address, line items with descriptions and prices, tags and notes.
//!
//! The text varies with `k` (a small xorshift seeded by it), so no two
//! messages are the same and a compressor cannot learn one message by heart.

use std::fmt::Write as _;

use crate::plan::PayloadKind;

/// The `data` of message `k`, sent at `ts` (µs since the epoch).
pub fn data(kind: PayloadKind, k: u64, ts: u64, pad: &str) -> String {
    match kind {
        PayloadKind::Padded => format!(r#"{{"k":{k},"ts":{ts},"p":"{pad}"}}"#),
        PayloadKind::Chat => chat(k, ts),
        PayloadKind::Doc => doc(k, ts),
    }
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "meeting",
    "is",
    "moved",
    "to",
    "tomorrow",
    "morning",
    "please",
    "check",
    "new",
    "build",
    "before",
    "we",
    "ship",
    "release",
    "notes",
    "look",
    "good",
    "thanks",
    "for",
    "quick",
    "review",
    "can",
    "you",
    "send",
    "me",
    "latest",
    "numbers",
    "from",
    "dashboard",
    "customer",
    "called",
    "again",
    "about",
    "invoice",
    "i",
    "think",
    "deploy",
    "went",
    "fine",
    "but",
    "cache",
    "still",
    "cold",
    "lunch",
    "at",
    "noon",
    "anyone",
    "coffee",
    "after",
    "standup",
    "let's",
    "sync",
    "on",
    "this",
    "later",
    "today",
    "pushed",
    "fix",
    "flaky",
    "test",
    "in",
    "branch",
    "merged",
    "main",
    "waiting",
    "CI",
    "green",
    "ticket",
    "updated",
    "with",
    "logs",
    "and",
    "screenshots",
];

const NAMES: &[&str] = &[
    "Maria Lopez",
    "Ken Tanaka",
    "Aisha Bello",
    "Tom Becker",
    "Priya Nair",
    "Lars Jensen",
    "Chloe Martin",
    "Omar Haddad",
    "Sofia Rossi",
    "Ivan Petrov",
    "Grace Kim",
    "Diego Alvarez",
];

const ROOMS: &[&str] = &[
    "general",
    "support",
    "release-train",
    "design",
    "random",
    "backend",
    "oncall",
    "sales",
];

const PRODUCTS: &[&str] = &[
    "Standing desk, oak veneer, 160 x 80 cm",
    "Ergonomic office chair with lumbar support",
    "27-inch monitor, IPS panel, USB-C",
    "Wireless keyboard, US layout",
    "Noise-cancelling headset with boom microphone",
    "Laptop stand, aluminium, adjustable",
    "Cable management tray, black",
    "Desk lamp with dimmer and warm light",
    "Whiteboard, magnetic, 120 x 90 cm",
    "Annual software licence, team plan",
    "On-site installation and setup service",
    "Extended warranty, three years",
];

/// A small deterministic generator seeded by the message number.
struct Rng(u64);

impl Rng {
    fn new(k: u64) -> Rng {
        Rng(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    /// `count` words separated by spaces, the first capitalised.
    fn sentence(&mut self, count: usize, out: &mut String) {
        for i in 0..count {
            let word = self.pick(WORDS);
            if i == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(chars.as_str());
                }
            } else {
                out.push(' ');
                out.push_str(word);
            }
        }
        out.push('.');
    }
}

/// `ts` (µs since the epoch) as an ISO 8601 UTC time with milliseconds.
pub fn iso8601(ts: u64) -> String {
    let secs = ts / 1_000_000;
    let millis = (ts / 1000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A chat message of about 300 bytes.
fn chat(k: u64, ts: u64) -> String {
    let mut rng = Rng::new(k);
    let user = rng.below(NAMES.len());
    let mut text = String::with_capacity(96);
    let words = 9 + rng.below(7);
    rng.sentence(words, &mut text);
    let reply_to = k.saturating_sub(1 + rng.below(5) as u64);
    let mention = 1000 + rng.below(9000);
    let likes = rng.below(4);
    format!(
        r#"{{"k":{k},"ts":{ts},"id":"msg-{k:010}","room":"{}","user":{{"id":"u-{}","name":"{}"}},"text":"{text}","sent_at":"{}","edited_at":null,"reply_to":"msg-{reply_to:010}","mentions":["u-{mention}"],"reactions":{{"+1":{likes}}}}}"#,
        rng.pick(ROOMS),
        1000 + user,
        NAMES[user],
        iso8601(ts),
    )
}

/// The size [`doc`] grows its line items to.
const DOC_BYTES: usize = 4096;

/// An invoice-like document of about 4 KB.
fn doc(k: u64, ts: u64) -> String {
    let mut rng = Rng::new(k);
    let name = rng.pick(NAMES);
    let mut out = String::with_capacity(DOC_BYTES + 512);
    let _ = write!(
        out,
        r#"{{"k":{k},"ts":{ts},"id":"inv-{k:08}","type":"invoice","status":"open","created_at":"{}","currency":"EUR","customer":{{"id":"c-{}","name":"{name}","email":"{}@example.com","address":{{"street":"{} Keizersgracht","city":"Amsterdam","postcode":"10{:02} AB","country":"NL"}}}},"lines":["#,
        iso8601(ts),
        10_000 + rng.below(90_000),
        name.to_lowercase().replace(' ', "."),
        1 + rng.below(400),
        rng.below(100),
    );
    let mut line = 0;
    let mut total_cents: u64 = 0;
    // Leave room for the tail (notes, tags, totals: about 300 bytes).
    while out.len() < DOC_BYTES - 320 {
        if line > 0 {
            out.push(',');
        }
        line += 1;
        let quantity = 1 + rng.below(12) as u64;
        let unit_cents = 500 + rng.below(60_000) as u64;
        total_cents += quantity * unit_cents;
        let mut note = String::new();
        let words = 3 + rng.below(5);
        rng.sentence(words, &mut note);
        let _ = write!(
            out,
            r#"{{"line":{line},"sku":"SKU-{:05}","description":"{}","note":"{note}","quantity":{quantity},"unit_price":{}.{:02},"tax_rate":0.21}}"#,
            rng.below(100_000),
            rng.pick(PRODUCTS),
            unit_cents / 100,
            unit_cents % 100,
        );
    }
    let mut notes = String::new();
    let words = 14 + rng.below(8);
    rng.sentence(words, &mut notes);
    let tax = total_cents * 21 / 100;
    let _ = write!(
        out,
        r#"],"subtotal":{}.{:02},"tax":{}.{:02},"total":{}.{:02},"due_date":"{}","notes":"{notes}","tags":["{}","q{}","net-30"]}}"#,
        total_cents / 100,
        total_cents % 100,
        tax / 100,
        tax % 100,
        (total_cents + tax) / 100,
        (total_cents + tax) % 100,
        iso8601(ts + 30 * 86_400 * 1_000_000),
        rng.pick(ROOMS),
        1 + rng.below(4),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_kind_is_json_with_k_and_ts() {
        for kind in [PayloadKind::Padded, PayloadKind::Chat, PayloadKind::Doc] {
            for k in [0, 1, 77, 123_456_789] {
                let text = data(kind, k, 1_765_000_000_123_456, "xxx");
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{kind:?} {k}: {e}: {text}"));
                assert_eq!(value["k"], k, "{text}");
                assert_eq!(value["ts"], 1_765_000_000_123_456u64, "{text}");
            }
        }
    }

    #[test]
    fn chat_is_about_300_bytes_and_doc_about_4_kb_and_they_vary() {
        let sizes = |kind| (0..200).map(move |k| data(kind, k, 1_765_000_000_000_000, "").len());
        for size in sizes(PayloadKind::Chat) {
            assert!((250..=360).contains(&size), "chat of {size} bytes");
        }
        for size in sizes(PayloadKind::Doc) {
            assert!((3700..=4500).contains(&size), "doc of {size} bytes");
        }
        let ts = 1_765_000_000_000_000;
        let text = |k| {
            let v: Value = serde_json::from_str(&data(PayloadKind::Chat, k, ts, "")).unwrap();
            v["text"].as_str().unwrap().to_owned()
        };
        let distinct: std::collections::HashSet<String> = (0..50).map(text).collect();
        assert!(distinct.len() > 45, "{distinct:?}");
    }

    #[test]
    fn timestamps_are_iso_8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_765_000_000_123_456), "2025-12-06T05:46:40.123Z");
    }
}
