//! Which Redis a node talks to, and the clients that reach it: one server,
//! the master a set of Redis Sentinels names, or a Redis Cluster, each in
//! plain TCP or TLS.
//!
//! [`Target`] is `redis_url` parsed and checked, plus the TLS files
//! (configuration loading refuses a malformed URL, naming the key). It
//! builds the redis crate's client for its mode: the pooled [`Link`]
//! (`link`) opens its connections through them, and the broker opens its
//! Pub/Sub connections through [`Target::pubsub_client`] (one server or the
//! master the sentinels name) and [`Target::cluster_client`] (sharded
//! subscriptions on a cluster). [`Target::explain`] adds the setting to
//! check to an error of the redis crate.
//!
//! The URL forms (docs/configuration.md):
//! - `redis://[[user]:password@]host:port[/db]`, `rediss://...` (TLS), `unix:///path`
//! - `redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/<db>][?sentinel_password=..&sentinel_username=..]`
//!   (`rediss+sentinel://`: TLS to the sentinels and to Redis)
//! - `redis+cluster://[[user]:password@]host:port[,host:port...]` (`rediss+cluster://`)
//!
//! Multi-host URLs are split here by hand: no URL library accepts several
//! hosts in one authority. Each host is then parsed by the redis crate.
//!
//! Depends on nothing else in the crate: configuration (at the bottom
//! layer) parses `redis_url` with it.
//!
//! [`Link`]: super::link::Link

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, RedisError, TlsCertificates, TlsMode,
};

/// A Redis command (or connection attempt) that takes longer than this
/// counts as failed: the cluster clients built here time out after it, and
/// so do the `Link`'s commands and the broker's Pub/Sub calls.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_SENTINEL_PORT: u16 = 26379;
const DEFAULT_PORT: u16 = 6379;

/// Which kind of Redis deployment the node talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Server,
    Sentinel,
    Cluster,
}

/// `redis_url` parsed, plus the TLS files.
#[derive(Debug, Clone)]
pub struct Target {
    kind: Kind,
    tls: bool,
    certificates: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
enum Kind {
    Server(ConnectionInfo),
    Sentinel {
        sentinels: Vec<ConnectionAddr>,
        master: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        sentinel_username: Option<String>,
        sentinel_password: Option<String>,
    },
    Cluster {
        seeds: Vec<ConnectionInfo>,
        username: Option<String>,
        password: Option<String>,
    },
}

/// PEM bytes read from `redis_ca_file` and `redis_tls_cert_file` / `redis_tls_key_file`.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }
}

const SENTINEL_FORM: &str = "expected redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/<db>][?sentinel_password=...] (rediss+sentinel:// for TLS)";
const CLUSTER_FORM: &str =
    "expected redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// for TLS)";
const SERVER_FORM: &str = "expected a URL like redis://host:6379/0, rediss://host:6380/0, unix:///path/redis.sock, redis+sentinel://... or redis+cluster://...";

impl Target {
    /// Parses `redis_url`; the error says what form was expected.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url.split_once("://").ok_or(SERVER_FORM)?;
        if url.contains('#') {
            // The redis crate reads `#insecure` as "skip certificate checks".
            return Err(format!(
                "{SERVER_FORM}; a URL fragment (#...) is not accepted: certificate checks cannot be turned off"
            ));
        }
        let (kind, tls) = match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => (server(url)?, scheme == "rediss"),
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme.starts_with("rediss");
                (sentinel(rest, tls)?, tls)
            }
            "redis+cluster" | "rediss+cluster" => {
                let tls = scheme.starts_with("rediss");
                (cluster(rest, tls)?, tls)
            }
            other => return Err(format!("{SERVER_FORM}; unknown scheme {other:?}")),
        };
        Ok(Target {
            kind,
            tls,
            certificates: None,
        })
    }

    /// Uses these certificates for TLS (a CA instead of the system's roots,
    /// and a client certificate).
    pub fn with_tls_files(mut self, files: TlsFiles) -> Target {
        self.certificates = Some(files);
        self
    }

    pub fn mode(&self) -> Mode {
        match self.kind {
            Kind::Server(_) => Mode::Server,
            Kind::Sentinel { .. } => Mode::Sentinel,
            Kind::Cluster { .. } => Mode::Cluster,
        }
    }

    /// Whether the URL asks for TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// What to log and show in errors: the hosts, never the password.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Server(info) => format!("server {}", info.addr()),
            Kind::Sentinel {
                sentinels, master, ..
            } => format!(
                "master {master:?} via sentinels {}",
                sentinels
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Kind::Cluster { seeds, .. } => format!(
                "cluster seeds {}",
                seeds
                    .iter()
                    .map(|s| s.addr().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    fn tls_certificates(&self) -> TlsCertificates {
        self.certificates
            .as_ref()
            .map(TlsFiles::certificates)
            .unwrap_or(TlsCertificates {
                client_tls: None,
                root_cert: None,
            })
    }

    /// A client for one server; `None` for a cluster. With `resp3` its
    /// connections speak RESP3 (needed to hear when the server closes them).
    pub(super) fn server_client(&self, resp3: bool) -> Option<Result<redis::Client, RedisError>> {
        let Kind::Server(info) = &self.kind else {
            return None;
        };
        let mut info = info.clone();
        if resp3 {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
        }
        Some(if self.tls {
            redis::Client::build_with_tls(info, self.tls_certificates())
        } else {
            redis::Client::open(info)
        })
    }

    /// A client for the master the sentinels name; `resp3` as for
    /// [`Target::server_client`].
    pub(super) fn sentinel_client(
        &self,
        resp3: bool,
    ) -> Option<Result<SentinelClient, RedisError>> {
        let Kind::Sentinel {
            sentinels,
            master,
            db,
            username,
            password,
            sentinel_username,
            sentinel_password,
        } = &self.kind
        else {
            return None;
        };
        let build = || {
            let mut builder = SentinelClientBuilder::new(
                sentinels.iter().cloned(),
                master,
                SentinelServerType::Master,
            )?
            .set_client_to_redis_db(*db);
            if resp3 {
                builder = builder.set_client_to_redis_protocol(ProtocolVersion::RESP3);
            }
            if let Some(username) = username {
                builder = builder.set_client_to_redis_username(username);
            }
            if let Some(password) = password {
                builder = builder.set_client_to_redis_password(password);
            }
            if let Some(username) = sentinel_username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            if let Some(password) = sentinel_password {
                builder = builder.set_client_to_sentinel_password(password);
            }
            if self.tls {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                    .set_client_to_redis_certificates(self.tls_certificates())
                    .set_client_to_sentinel_certificates(self.tls_certificates());
            }
            builder.build()
        };
        Some(build())
    }

    /// A cluster client; with `push` (RESP3) its connections hand pushed
    /// messages (Pub/Sub) to the sender.
    pub fn cluster_client(
        &self,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Option<Result<ClusterClient, RedisError>> {
        let Kind::Cluster {
            seeds,
            username,
            password,
        } = &self.kind
        else {
            return None;
        };
        let mut builder = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(REDIS_TIMEOUT)
            .response_timeout(REDIS_TIMEOUT)
            .retries(3);
        if let Some(username) = username {
            builder = builder.username(username);
        }
        if let Some(password) = password {
            builder = builder.password(password);
        }
        if self.tls {
            builder = builder.tls(TlsMode::Secure).certs(self.tls_certificates());
        }
        if let Some(push) = push {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push);
        }
        Some(builder.build())
    }

    /// On a cluster: the seed nodes of the URL, as `(host, port)`.
    pub fn cluster_seeds(&self) -> Vec<(String, u16)> {
        let Kind::Cluster { seeds, .. } = &self.kind else {
            return Vec::new();
        };
        seeds
            .iter()
            .filter_map(|seed| match seed.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            })
            .collect()
    }

    /// On a cluster: a client for one of its nodes, as the cluster client
    /// reaches it (the URL's credentials, TLS with its certificates); for
    /// the node's own checks of the cluster (`shards`).
    pub(super) fn cluster_node_client(
        &self,
        host: &str,
        port: u16,
    ) -> Option<Result<redis::Client, RedisError>> {
        let Kind::Cluster {
            seeds,
            username,
            password,
        } = &self.kind
        else {
            return None;
        };
        let seed = seeds.first()?;
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let mut settings = seed.redis_settings().clone();
        if let Some(username) = username {
            settings = settings.set_username(username);
        }
        if let Some(password) = password {
            settings = settings.set_password(password);
        }
        let info = seed.clone().set_addr(addr).set_redis_settings(settings);
        Some(if self.tls {
            redis::Client::build_with_tls(info, self.tls_certificates())
        } else {
            redis::Client::open(info)
        })
    }

    /// A client for the node's dedicated Pub/Sub connection (one server, or
    /// the master the sentinels name now). Not for a cluster.
    pub async fn pubsub_client(&self) -> Result<redis::Client, String> {
        if let Some(client) = self.server_client(false) {
            return client.map_err(|e| self.explain(&e));
        }
        match self.sentinel_client(false) {
            Some(client) => {
                let mut client = client.map_err(|e| self.explain(&e))?;
                match client.async_get_client().await {
                    Ok(client) => Ok(client),
                    // Say which server is away: the master the sentinels
                    // name (when they name one they still trust).
                    Err(error) if error.kind() == ErrorKind::MasterNameNotFoundBySentinel => {
                        Err(self.explain(&error))
                    }
                    Err(error) => Err(match self.named_master(&mut client).await {
                        Some(addr) => format!("{addr}: {}", self.explain(&error)),
                        None => self.explain(&error),
                    }),
                }
            }
            None => Err("a cluster has no single Pub/Sub server".to_owned()),
        }
    }

    /// Under Sentinel: the master's address as a sentinel names it now
    /// (`host:port`), asked within half a second, for an error message.
    async fn named_master(&self, client: &mut SentinelClient) -> Option<String> {
        let Kind::Sentinel { master, .. } = &self.kind else {
            return None;
        };
        let ask = async {
            let sentinel = client.async_get_sentinel_client().await.ok()?;
            let mut conn = sentinel.get_multiplexed_async_connection().await.ok()?;
            let addr: Vec<String> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async(&mut conn)
                .await
                .ok()?;
            match addr.as_slice() {
                [host, port] => Some(format!("{host}:{port}")),
                _ => None,
            }
        };
        tokio::time::timeout(Duration::from_millis(500), ask)
            .await
            .ok()
            .flatten()
    }

    /// An error from the redis crate, with a hint at the setting to check.
    pub fn explain(&self, error: &RedisError) -> String {
        explain(error, self.tls)
    }
}

/// `redis://`, `rediss://` or `unix://`: the whole URL, read by the redis
/// crate.
fn server(url: &str) -> Result<Kind, String> {
    let info = url
        .into_connection_info()
        .map_err(|e| format!("{SERVER_FORM}: {e}"))?;
    Ok(Kind::Server(info))
}

/// `redis+sentinel://` after the scheme: the sentinels, the master's name,
/// its database and the sentinels' own credentials.
fn sentinel(rest: &str, tls: bool) -> Result<Kind, String> {
    let parts = split_multi(rest).map_err(|e| format!("{SENTINEL_FORM}: {e}"))?;
    let mut path = parts.path.split('/').filter(|s| !s.is_empty());
    let master = path
        .next()
        .ok_or_else(|| format!("{SENTINEL_FORM}: the master name is missing"))?
        .to_owned();
    let db = match path.next() {
        None => 0,
        Some(db) => db
            .parse::<i64>()
            .map_err(|_| format!("{SENTINEL_FORM}: database {db:?} is not a number"))?,
    };
    if path.next().is_some() {
        return Err(format!("{SENTINEL_FORM}: unexpected path {:?}", parts.path));
    }
    let mut sentinel_username = None;
    let mut sentinel_password = None;
    for (key, value) in form_urlencoded::parse(parts.query.as_bytes()) {
        match key.as_ref() {
            "sentinel_password" => sentinel_password = Some(value.into_owned()),
            "sentinel_username" => sentinel_username = Some(value.into_owned()),
            other => {
                return Err(format!(
                    "{SENTINEL_FORM}: unknown parameter {other:?} (known: sentinel_password, sentinel_username)"
                ))
            }
        }
    }
    let (username, password) = parts.credentials()?;
    let sentinels = parts
        .hosts_info(tls, DEFAULT_SENTINEL_PORT, SENTINEL_FORM)?
        .into_iter()
        .map(|info| info.addr().clone())
        .collect();
    Ok(Kind::Sentinel {
        sentinels,
        master,
        db,
        username,
        password,
        sentinel_username,
        sentinel_password,
    })
}

/// `redis+cluster://` after the scheme: the seed nodes (database 0 only).
fn cluster(rest: &str, tls: bool) -> Result<Kind, String> {
    let parts = split_multi(rest).map_err(|e| format!("{CLUSTER_FORM}: {e}"))?;
    if !matches!(parts.path.trim_matches('/'), "" | "0") {
        return Err(format!(
            "{CLUSTER_FORM}: a cluster has only database 0, got path {:?}",
            parts.path
        ));
    }
    if !parts.query.is_empty() {
        return Err(format!(
            "{CLUSTER_FORM}: unexpected parameters {:?}",
            parts.query
        ));
    }
    let (username, password) = parts.credentials()?;
    let seeds = parts.hosts_info(tls, DEFAULT_PORT, CLUSTER_FORM)?;
    Ok(Kind::Cluster {
        seeds,
        username,
        password,
    })
}

/// Adds the setting to check to errors whose cause is one.
pub(super) fn explain(error: &RedisError, tls: bool) -> String {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    if tls && (lower.contains("certificate") || lower.contains("unknownissuer")) {
        format!("{text} (TLS: the server's certificate was refused; check SWITCHBOARD_REDIS_CA_FILE (redis_ca_file))")
    } else if lower.contains("master with given name not found")
        || lower.contains("no master found")
        || lower.contains("no valid master")
    {
        format!("{text} (no sentinel names a reachable master: an unknown master name in SWITCHBOARD_REDIS_URL (redis_url), or a failover in progress)")
    } else {
        text
    }
}

/// A multi-host URL after its scheme.
struct MultiHost<'a> {
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
    query: &'a str,
}

impl MultiHost<'_> {
    /// Each host parsed, with `default_port` where none is given; errors
    /// start with the URL form expected.
    fn hosts_info(
        &self,
        tls: bool,
        default_port: u16,
        form: &str,
    ) -> Result<Vec<ConnectionInfo>, String> {
        self.hosts
            .iter()
            .map(|host| host_info(host, tls, default_port).map_err(|e| format!("{form}: {e}")))
            .collect()
    }

    /// The percent-decoded user and password, read by the redis crate.
    fn credentials(&self) -> Result<(Option<String>, Option<String>), String> {
        let Some(userinfo) = self.userinfo else {
            return Ok((None, None));
        };
        let info = format!("redis://{userinfo}@localhost/")
            .into_connection_info()
            .map_err(|e| format!("bad user or password: {e}"))?;
        let settings = info.redis_settings();
        Ok((
            settings.username().map(str::to_owned),
            settings.password().map(str::to_owned),
        ))
    }
}

fn split_multi(rest: &str) -> Result<MultiHost<'_>, String> {
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (userinfo, location) = match before_query.rsplit_once('@') {
        Some((userinfo, location)) => (Some(userinfo), location),
        None => (None, before_query),
    };
    let (hosts, path) = match location.find('/') {
        Some(at) => (&location[..at], &location[at..]),
        None => (location, ""),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err("a host is missing".to_owned());
    }
    Ok(MultiHost {
        userinfo,
        hosts,
        path,
        query,
    })
}

/// One `host[:port]` of a multi-host URL, with a default port.
fn host_info(host: &str, tls: bool, default_port: u16) -> Result<ConnectionInfo, String> {
    let has_port = match host.rfind(']') {
        Some(bracket) => host[bracket..].contains(':'),
        None => host.contains(':'),
    };
    let scheme = if tls { "rediss" } else { "redis" };
    let url = if has_port {
        format!("{scheme}://{host}/")
    } else {
        format!("{scheme}://{host}:{default_port}/")
    };
    url.into_connection_info()
        .map_err(|e| format!("bad host {host:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server() {
        let target = Target::parse("redis://:secret@127.0.0.1:6380/2").unwrap();
        assert_eq!(target.mode(), Mode::Server);
        assert!(!target.tls());
        assert_eq!(target.describe(), "server 127.0.0.1:6380");
        assert!(Target::parse("rediss://127.0.0.1:6380/").unwrap().tls());
        assert_eq!(
            Target::parse("unix:///run/redis.sock").unwrap().mode(),
            Mode::Server
        );
    }

    #[test]
    fn sentinel() {
        let target = Target::parse(
            "redis+sentinel://user:p%40ss@10.0.0.1:26379,10.0.0.2,[::1]:5000/mymaster/3?sentinel_password=s3",
        )
        .unwrap();
        assert_eq!(target.mode(), Mode::Sentinel);
        let Kind::Sentinel {
            sentinels,
            master,
            db,
            username,
            password,
            sentinel_password,
            ..
        } = &target.kind
        else {
            panic!("not sentinel")
        };
        assert_eq!(master, "mymaster");
        assert_eq!(*db, 3);
        assert_eq!(username.as_deref(), Some("user"));
        assert_eq!(password.as_deref(), Some("p@ss"));
        assert_eq!(sentinel_password.as_deref(), Some("s3"));
        let addrs: Vec<String> = sentinels.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["10.0.0.1:26379", "10.0.0.2:26379", "::1:5000"]);
        assert!(Target::parse("rediss+sentinel://h:1/m").unwrap().tls());
    }

    #[test]
    fn cluster() {
        let target = Target::parse("redis+cluster://a:7000,b:7001,c").unwrap();
        assert_eq!(target.mode(), Mode::Cluster);
        assert_eq!(target.describe(), "cluster seeds a:7000,b:7001,c:6379");
        assert!(Target::parse("rediss+cluster://a:7000/").unwrap().tls());
    }

    #[test]
    fn malformed_urls_say_what_was_expected() {
        let cases = [
            ("localhost:6379", "expected a URL like redis://"),
            ("http://x/", "unknown scheme \"http\""),
            ("redis+sentinel://h1:1,h2:2", "the master name is missing"),
            ("redis+sentinel://h1:1,,h2:2/m", "a host is missing"),
            (
                "redis+sentinel://h1:1/m/x",
                "database \"x\" is not a number",
            ),
            ("redis+sentinel://h1:1/m/0/extra", "unexpected path"),
            (
                "redis+sentinel://h1:1/m?password=x",
                "unknown parameter \"password\"",
            ),
            ("redis+sentinel://h1:notaport/m", "bad host \"h1:notaport\""),
            ("redis+cluster://a:1/3", "a cluster has only database 0"),
            ("redis+cluster://", "a host is missing"),
            ("redis+cluster://a:1?x=y", "unexpected parameters"),
            (
                "rediss://h:6380/#insecure",
                "certificate checks cannot be turned off",
            ),
        ];
        for (url, expected) in cases {
            let error = Target::parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }
}
