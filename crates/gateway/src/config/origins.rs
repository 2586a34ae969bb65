//! The `allowed_origins` setting, for the `Origin` check of the handshake:
//! exact origins, `https://*.example.com` wildcards (any depth of
//! sub-domain, never the apex), or `*` for any.
//!
//! Browsers always send `Origin` on a WebSocket handshake, so a page from
//! another site cannot ride a user's token; non-browser clients send none and
//! are let through (they authenticate by token alone). With an empty list no
//! browser page may connect.

use crate::config::env::{env_list, ConfigError, Env, Key};

const ALLOWED_ORIGINS: Key = Key::new("allowed_origins", "SWITCHBOARD_ALLOWED_ORIGINS");

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Any,
    Exact(String),
    /// `scheme://` and `.domain[:port]` around one or more labels.
    Wildcard {
        scheme: String,
        suffix: String,
    },
}

/// The allowed browser origins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<Rule>);

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']')
}

impl AllowedOrigins {
    /// Parses the configured list; the error says which entry is wrong.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedOrigins, String> {
        let mut rules = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.as_ref().trim().to_ascii_lowercase();
            if entry == "*" {
                rules.push(Rule::Any);
                continue;
            }
            let bad = || {
                format!("{entry:?} is not an origin like https://app.example.com or https://*.example.com")
            };
            let (scheme, rest) = entry.split_once("://").ok_or_else(bad)?;
            if scheme != "http" && scheme != "https" {
                return Err(bad());
            }
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let host = rest.strip_prefix("*.").unwrap_or(rest);
            if host.is_empty() || !host.chars().all(is_host_char) || host.starts_with('.') {
                return Err(bad());
            }
            if rest.starts_with("*.") {
                rules.push(Rule::Wildcard {
                    scheme: format!("{scheme}://"),
                    suffix: format!(".{host}"),
                });
            } else {
                rules.push(Rule::Exact(format!("{scheme}://{host}")));
            }
        }
        Ok(AllowedOrigins(rules))
    }

    /// Whether a browser's `Origin` header value may connect.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        self.0.iter().any(|rule| match rule {
            Rule::Any => true,
            Rule::Exact(exact) => *exact == origin,
            Rule::Wildcard { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|labels| {
                    !labels.is_empty()
                        && !labels.starts_with('.')
                        && !labels.ends_with('.')
                        && labels
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                }),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `allowed_origins` setting: the environment's comma-separated list,
/// else the file's (empty when neither is set).
pub(super) fn allowed_origins(
    env: &dyn Env,
    from_file: Option<Vec<String>>,
) -> Result<AllowedOrigins, ConfigError> {
    let origins = env_list(env, &ALLOWED_ORIGINS).unwrap_or_else(|| from_file.unwrap_or_default());
    AllowedOrigins::parse(&origins)
        .map_err(|message| ConfigError::new(ALLOWED_ORIGINS.name(), message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let o = AllowedOrigins::parse(&[
            "https://app.example.com",
            "https://*.example.org:8443",
            "HTTP://localhost:3000/",
        ])
        .unwrap();
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("https://APP.example.com"));
        assert!(!o.allows("http://app.example.com"));
        assert!(!o.allows("https://app.example.com.evil.net"));
        assert!(o.allows("https://a.example.org:8443"));
        assert!(o.allows("https://a.b.example.org:8443"));
        assert!(
            !o.allows("https://example.org:8443"),
            "the apex is not a sub-domain"
        );
        assert!(
            !o.allows("https://a.example.org"),
            "the port is part of the origin"
        );
        assert!(!o.allows("https://evil.net/.example.org:8443"));
        assert!(!o.allows("https://x.evilexample.org:8443"));
        assert!(o.allows("http://localhost:3000"));
        assert!(!o.allows("null"));
    }

    #[test]
    fn any_and_none() {
        assert!(AllowedOrigins::parse(&["*"])
            .unwrap()
            .allows("https://whatever.test"));
        assert!(!AllowedOrigins::default().allows("https://app.example.com"));
    }

    #[test]
    fn bad_entries() {
        assert!(AllowedOrigins::parse(&["example.com"]).is_err());
        assert!(AllowedOrigins::parse(&["ftp://example.com"]).is_err());
        assert!(AllowedOrigins::parse(&["https://"]).is_err());
        assert!(AllowedOrigins::parse(&["https://a.com/path"]).is_err());
    }
}
