//! The `trusted_proxies` setting: the CIDR ranges whose `X-Forwarded-For`
//! and `X-Real-IP` are believed, and the client address they yield.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::env::{env_list, ConfigError, Env, Key};

const TRUSTED_PROXIES: Key = Key::new("trusted_proxies", "SWITCHBOARD_TRUSTED_PROXIES");

/// The CIDR ranges whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `127.0.0.1` (a single address) or `fd00::/8`.
    pub fn parse(items: &[String]) -> Result<TrustedProxies, String> {
        let nets = items
            .iter()
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!("{item:?} is not a CIDR range like 10.0.0.0/8 or an IP address")
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy;
    /// then the right-most address of `X-Forwarded-For` that is not itself a
    /// trusted proxy (addresses left of it were written by the client and
    /// prove nothing), or `X-Real-IP` when there is no `X-Forwarded-For`.
    /// A malformed chain falls back to the peer: we never guess.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = canonical(peer.ip());
        if !self.contains(peer_ip) {
            return peer_ip;
        }
        let mut forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
            .map(str::trim)
            .peekable();
        if forwarded.peek().is_none() {
            return headers
                .get("x-real-ip")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_forwarded)
                .unwrap_or(peer_ip);
        }
        let hops: Vec<&str> = forwarded.collect();
        let mut client = peer_ip;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_forwarded(hop) else {
                return peer_ip;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// An address from a forwarding header: `1.2.3.4`, `1.2.3.4:5678`,
/// `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_forwarded(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) count as their IPv4 self,
/// so a dual-stack listener does not give one client two identities.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `trusted_proxies` setting: the environment's comma-separated list,
/// else the file's (empty when neither is set: no header is believed).
pub(super) fn trusted_proxies(
    env: &dyn Env,
    from_file: Option<Vec<String>>,
) -> Result<TrustedProxies, ConfigError> {
    let proxies = env_list(env, &TRUSTED_PROXIES).unwrap_or_else(|| from_file.unwrap_or_default());
    TrustedProxies::parse(&proxies)
        .map_err(|message| ConfigError::new(TRUSTED_PROXIES.name(), message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(items: &[&str]) -> TrustedProxies {
        let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
        TrustedProxies::parse(&items).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn parses_ranges_and_single_addresses() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("192.168.1.7".parse().unwrap()));
        assert!(!trusted.contains("192.168.1.8".parse().unwrap()));
        assert!(trusted.contains("fd12::1".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.9.9.9".parse().unwrap()));
        let error = TrustedProxies::parse(&["10.0.0.0/33".to_owned()]).unwrap_err();
        assert!(error.contains("\"10.0.0.0/33\""), "{error}");
        assert!(TrustedProxies::parse(&["nginx".to_owned()]).is_err());
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-real-ip", "2.2.2.2")]);
        assert_eq!(
            trusted.client_ip(peer("203.0.113.9"), &spoofed),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            TrustedProxies::default().client_ip(peer("10.0.0.1"), &spoofed),
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "no trusted proxies: only the peer counts"
        );
    }

    #[test]
    fn right_most_untrusted_forwarded_address_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // The client wrote a fake first hop; nginx appended the real one.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4")]);
        assert_eq!(
            trusted.client_ip(peer("10.0.0.2"), &chain),
            ip("198.51.100.4")
        );
        // Two proxies in the chain.
        let chain = headers(&[
            ("x-forwarded-for", "198.51.100.4"),
            ("x-forwarded-for", "10.0.0.7"),
        ]);
        assert_eq!(
            trusted.client_ip(peer("10.0.0.2"), &chain),
            ip("198.51.100.4")
        );
        // Ports and brackets.
        let chain = headers(&[("x-forwarded-for", "[2001:db8::5]:443")]);
        assert_eq!(
            trusted.client_ip(peer("10.0.0.2"), &chain),
            ip("2001:db8::5")
        );
        // Every hop trusted: the left-most is the best we know.
        let chain = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(trusted.client_ip(peer("10.0.0.2"), &chain), ip("10.1.1.1"));
        // Garbage where an address must be: the peer, never a guess.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip")]);
        assert_eq!(trusted.client_ip(peer("10.0.0.2"), &chain), ip("10.0.0.2"));
        // X-Real-IP only without X-Forwarded-For.
        let real = headers(&[("x-real-ip", "198.51.100.9")]);
        assert_eq!(
            trusted.client_ip(peer("10.0.0.2"), &real),
            ip("198.51.100.9")
        );
        let bad_real = headers(&[("x-real-ip", "nope")]);
        assert_eq!(
            trusted.client_ip(peer("10.0.0.2"), &bad_real),
            ip("10.0.0.2")
        );
    }
}
