//! Error codes carried in `reply`/`error` frames and WebSocket close codes.
//! Both are part of the public contract (docs/protocol.md).

use std::fmt;

/// The `error.code` of a reply or error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame or command is malformed, or breaks a protocol rule.
    BadRequest,
    /// The token in a `refresh` could not be verified.
    Unauthorized,
    /// The token's claims do not grant this channel or operation.
    Forbidden,
    /// The connection sends commands faster than its allowance.
    RateLimited,
    /// The frame or payload is larger than allowed.
    TooLarge,
    /// The token in a `refresh` has expired.
    TokenExpired,
    /// The gateway could not do what was asked (for example the broker is down).
    Internal,
    /// A service the gateway must ask first did not answer in time or
    /// failed (the subscribe proxy's backend); the command was refused and
    /// may succeed when retried later.
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::TokenExpired,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the gateway sends.
pub mod close {
    /// Normal closure (the client asked to close).
    pub const NORMAL: u16 = 1000;
    /// The client stopped answering pings within the timeout.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame the protocol does not accept at all (for example invalid UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (rate limit abuse).
    pub const POLICY: u16 = 1008;
    /// A frame larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The gateway failed internally.
    pub const INTERNAL: u16 = 1011;
    /// The node is draining or shutting down: reconnect (to another node).
    pub const DRAINING: u16 = 1012;
    /// The client reads too slowly and its send queue overflowed.
    pub const SLOW_CONSUMER: u16 = 1013;
    /// The token expired without a `refresh`.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Disconnected through the server API.
    pub const DISCONNECTED: u16 = 4003;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
