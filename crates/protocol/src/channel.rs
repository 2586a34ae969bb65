//! Channel names and the patterns a token grants.
//!
//! A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of ASCII letters, digits
//! and `_ - : . @ / = +`. The part before the first `:` is the channel's
//! namespace (`chat` in `chat:lobby`); a name without `:` is in the default
//! namespace `""`. `*` is reserved: a pattern is either an exact channel name
//! or a prefix ending in one `*` (`chat:*`, or `*` for every channel).

use std::fmt;

use thiserror::Error;

/// The longest channel name or pattern accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

/// Why a channel name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name contains {0:?}; allowed are letters, digits and _ - : . @ / = +")]
    BadChar(char),
    #[error("'*' may only end a pattern")]
    MisplacedWildcard,
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '@' | '/' | '=' | '+')
}

fn check_chars(s: &str) -> Result<(), ChannelError> {
    match s.chars().find(|c| !is_channel_char(*c)) {
        Some('*') => Err(ChannelError::MisplacedWildcard),
        Some(c) => Err(ChannelError::BadChar(c)),
        None => Ok(()),
    }
}

/// Validates a channel name.
pub fn validate_channel(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    check_chars(name)
}

/// The namespace of a channel: the part before the first `:`, or `""`.
pub fn namespace(name: &str) -> &str {
    name.split_once(':').map_or("", |(ns, _)| ns)
}

/// A validated channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn parse(name: &str) -> Result<ChannelName, ChannelError> {
        validate_channel(name)?;
        Ok(ChannelName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn namespace(&self) -> &str {
        namespace(&self.0)
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One grant: an exact channel or a prefix (`chat:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(pattern: &str) -> Result<Pattern, ChannelError> {
        if pattern.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                check_chars(prefix)?;
                Ok(Pattern::Prefix(prefix.to_owned()))
            }
            None => {
                validate_channel(pattern)?;
                Ok(Pattern::Exact(pattern.to_owned()))
            }
        }
    }

    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == channel,
            Pattern::Prefix(prefix) => channel.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// The patterns of one claim (`channels` or `publish`); empty grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSet(Vec<Pattern>);

impl PatternSet {
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<PatternSet, ChannelError> {
        patterns
            .iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(PatternSet)
    }

    pub fn allows(&self, channel: &str) -> bool {
        self.0.iter().any(|p| p.matches(channel))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(validate_channel("chat:lobby").is_ok());
        assert!(validate_channel("user@example.com/inbox=1+2").is_ok());
        assert_eq!(validate_channel(""), Err(ChannelError::Empty));
        assert_eq!(validate_channel("a b"), Err(ChannelError::BadChar(' ')));
        assert_eq!(
            validate_channel("chat:*"),
            Err(ChannelError::MisplacedWildcard)
        );
        assert_eq!(validate_channel("é"), Err(ChannelError::BadChar('é')));
        assert_eq!(
            validate_channel(&"a".repeat(201)),
            Err(ChannelError::TooLong)
        );
        assert!(validate_channel(&"a".repeat(200)).is_ok());
    }

    #[test]
    fn namespaces() {
        assert_eq!(namespace("chat:lobby:1"), "chat");
        assert_eq!(namespace("lobby"), "");
        assert_eq!(namespace(":x"), "");
    }

    #[test]
    fn patterns() {
        let set = PatternSet::parse(&["chat:*", "news", "*"][..2]).unwrap();
        assert!(set.allows("chat:lobby"));
        assert!(set.allows("chat:"));
        assert!(set.allows("news"));
        assert!(!set.allows("news:x"));
        assert!(!set.allows("cha"));
        let all = PatternSet::parse(&["*"]).unwrap();
        assert!(all.allows("anything:at:all"));
        assert!(!PatternSet::default().allows("x"));
        assert_eq!(Pattern::parse("a*b"), Err(ChannelError::MisplacedWildcard));
        assert_eq!(Pattern::parse("a**"), Err(ChannelError::MisplacedWildcard));
        assert_eq!(Pattern::parse("chat:*").unwrap().to_string(), "chat:*");
    }
}
