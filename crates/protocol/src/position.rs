//! Stream positions: where a client stands in a channel's history.
//!
//! Every message of a channel with history carries an `offset`: consecutive
//! integers per channel, starting at 1. The channel's stream also has an
//! `epoch`, an opaque string that changes whenever the stream's past is lost
//! (Redis restarted without persistence, keys evicted or expired). A client
//! that remembers `{offset, epoch}` of the last message it saw can resume
//! from there (`since`); offsets of different epochs are not comparable.

use serde::{Deserialize, Serialize};

/// The longest epoch accepted from a client, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

/// The most messages one `history` command or request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// A position in a channel's stream: the offset of the last message seen
/// (0 before the first) in an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

impl Position {
    pub fn new(offset: u64, epoch: impl Into<String>) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }
}

/// Whether `epoch` is a well-formed epoch: 1 to [`MAX_EPOCH_LEN`] ASCII
/// letters, digits, `-` or `_`. Servers only hand out such epochs, so any
/// other string cannot name a stream.
pub fn valid_epoch(epoch: &str) -> bool {
    !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH_LEN
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs() {
        assert!(valid_epoch("a1b2c3d4"));
        assert!(valid_epoch("x-y_z"));
        assert!(!valid_epoch(""));
        assert!(!valid_epoch("with space"));
        assert!(!valid_epoch(&"a".repeat(65)));
        assert!(valid_epoch(&"a".repeat(64)));
    }
}
