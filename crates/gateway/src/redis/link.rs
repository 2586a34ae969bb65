//! How a node reaches Redis: one server, the master a set of Redis Sentinels
//! names, or a Redis Cluster, each in plain TCP or TLS.
//!
//! [`Target`] is `redis_url` parsed and checked (configuration loading
//! refuses a malformed one, naming the key). [`Link`] runs commands,
//! pipelines and scripts on it within [`REDIS_TIMEOUT`]:
//! - one server or Sentinel: a pool of multiplexed connections. Under
//!   Sentinel each new connection asks the sentinels for the master again
//!   (and checks its `ROLE`), so a failover is followed as soon as the old
//!   master's connections break; a connection that fails, times out or meets
//!   a read-only replica leaves the pool instead of going back to it.
//! - Cluster: one multiplexed cluster connection that routes each command to
//!   the shard owning its key's slot; the redis crate follows `MOVED`/`ASK`
//!   and refreshes the slot map after a shard failover. Pipelines there are
//!   not atomic and run command by command (see [`Link::query_pipe`]).
//!
//! The Pub/Sub side (a dedicated connection, or sharded subscriptions on a
//! cluster) is `redis_broker`'s; it opens its connections through
//! [`Target::pubsub_client`] and [`Target::cluster_client`].
//!
//! The URL forms (docs/configuration.md):
//! - `redis://[[user]:password@]host:port[/db]`, `rediss://...` (TLS), `unix:///path`
//! - `redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/<db>][?sentinel_password=..&sentinel_username=..]`
//!   (`rediss+sentinel://`: TLS to the sentinels and to Redis)
//! - `redis+cluster://[[user]:password@]host:port[,host:port...]` (`rediss+cluster://`)
//!
//! Multi-host URLs are split here by hand: no URL library accepts several
//! hosts in one authority. Each host is then parsed by the redis crate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics as PoolMetrics, Object, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    TlsCertificates, TlsMode,
};

/// A Redis command that takes longer than this counts as failed.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled connections per node (one server or Sentinel).
const POOL_SIZE: usize = 32;
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
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => {
                let info = url
                    .into_connection_info()
                    .map_err(|e| format!("{SERVER_FORM}: {e}"))?;
                Ok(Target {
                    kind: Kind::Server(info),
                    tls: scheme == "rediss",
                    certificates: None,
                })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme.starts_with("rediss");
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
                Ok(Target {
                    kind: Kind::Sentinel {
                        sentinels,
                        master,
                        db,
                        username,
                        password,
                        sentinel_username,
                        sentinel_password,
                    },
                    tls,
                    certificates: None,
                })
            }
            "redis+cluster" | "rediss+cluster" => {
                let tls = scheme.starts_with("rediss");
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
                Ok(Target {
                    kind: Kind::Cluster {
                        seeds,
                        username,
                        password,
                    },
                    tls,
                    certificates: None,
                })
            }
            other => Err(format!("{SERVER_FORM}; unknown scheme {other:?}")),
        }
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

    /// A client for one server; `None` for a cluster.
    fn server_client(&self) -> Option<Result<redis::Client, RedisError>> {
        match &self.kind {
            Kind::Server(info) if self.tls => Some(redis::Client::build_with_tls(
                info.clone(),
                self.tls_certificates(),
            )),
            Kind::Server(info) => Some(redis::Client::open(info.clone())),
            _ => None,
        }
    }

    fn sentinel_client(&self) -> Option<Result<SentinelClient, RedisError>> {
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

    /// A client for the node's dedicated Pub/Sub connection (one server, or
    /// the master the sentinels name now). Not for a cluster.
    pub async fn pubsub_client(&self) -> Result<redis::Client, String> {
        if let Some(client) = self.server_client() {
            return client.map_err(|e| self.explain(&e));
        }
        match self.sentinel_client() {
            Some(client) => {
                let mut client = client.map_err(|e| self.explain(&e))?;
                client
                    .async_get_client()
                    .await
                    .map_err(|e| self.explain(&e))
            }
            None => Err("a cluster has no single Pub/Sub server".to_owned()),
        }
    }

    /// An error from the redis crate, with a hint at the setting to check.
    pub fn explain(&self, error: &RedisError) -> String {
        explain(error, self.tls)
    }
}

/// Adds the setting to check to errors whose cause is one.
fn explain(error: &RedisError, tls: bool) -> String {
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

/// Opens pooled connections: to one server, or to the master the sentinels
/// name at that moment.
enum Connector {
    Server(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

struct Manager {
    connector: Connector,
    tls: bool,
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = String;

    async fn create(&self) -> Result<MultiplexedConnection, String> {
        let connected = match &self.connector {
            Connector::Server(client) => client.get_multiplexed_async_connection().await,
            Connector::Sentinel(sentinel) => sentinel.lock().await.get_async_connection().await,
        };
        connected.map_err(|e| explain(&e, self.tls))
    }

    /// A PING before a pooled connection is reused, as deadpool-redis does:
    /// the connection cannot tell by itself that its server went away (a
    /// restart, a failover), and a command sent on it would fail once for
    /// every connection in the pool.
    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        _: &PoolMetrics,
    ) -> RecycleResult<String> {
        redis::cmd("PING")
            .query_async::<()>(conn)
            .await
            .map_err(|e| managed::RecycleError::Message(e.to_string().into()))
    }
}

type Pool = managed::Pool<Manager>;

/// Commands, pipelines and scripts on the configured Redis.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
    mode: Mode,
}

enum Inner {
    Pooled {
        pool: Pool,
        tls: bool,
    },
    Cluster {
        client: Box<ClusterClient>,
        connection: Mutex<Option<ClusterConnection>>,
        connecting: tokio::sync::Mutex<()>,
        tls: bool,
    },
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    /// Builds the link; connections are opened on first use, so a Redis that
    /// is away at start-up shows as not ready rather than stopping the node.
    pub fn new(target: &Target) -> Result<Link, String> {
        let tls = target.tls;
        let inner = if let Some(client) = target.server_client() {
            Inner::Pooled {
                pool: pool(
                    Connector::Server(client.map_err(|e| target.explain(&e))?),
                    tls,
                )?,
                tls,
            }
        } else if let Some(client) = target.sentinel_client() {
            let client = client.map_err(|e| target.explain(&e))?;
            Inner::Pooled {
                pool: pool(Connector::Sentinel(tokio::sync::Mutex::new(client)), tls)?,
                tls,
            }
        } else {
            let client = target
                .cluster_client(None)
                .ok_or("no Redis target")?
                .map_err(|e| target.explain(&e))?;
            Inner::Cluster {
                client: Box::new(client),
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                tls,
            }
        };
        Ok(Link {
            inner: Arc::new(inner),
            mode: target.mode(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Runs one command.
    pub async fn query<T: redis::FromRedisValue + Send>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, String> {
        self.with_connection(async |conn: &mut Connection| command.query_async::<T>(conn).await)
            .await
    }

    /// Runs a pipeline. On a cluster a pipeline may span slots, so its
    /// commands run one by one, concurrently, each on its own shard: the
    /// pipeline must not be atomic, and either every command or none is
    /// `ignore()`d (the results are the commands' replies in order).
    pub async fn query_pipe<T: redis::FromRedisValue + Send>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, String> {
        match &*self.inner {
            Inner::Pooled { .. } => {
                self.with_connection(async |conn: &mut Connection| {
                    pipe.query_async::<T>(conn).await
                })
                .await
            }
            Inner::Cluster { .. } => {
                let replies = futures_util::future::try_join_all(
                    pipe.cmd_iter()
                        .map(|command| self.query::<redis::Value>(command)),
                )
                .await?;
                T::from_redis_value(redis::Value::Array(replies)).map_err(|e| e.to_string())
            }
        }
    }

    /// Runs a Lua script (EVALSHA, loading it on first use). On a cluster
    /// its keys must share one slot.
    pub async fn run_script<T: redis::FromRedisValue + Send>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        self.with_connection(async |conn: &mut Connection| invocation.invoke_async::<T>(conn).await)
            .await
    }

    /// Takes a connection and runs `work` on it, all within [`REDIS_TIMEOUT`].
    async fn with_connection<T>(
        &self,
        work: impl AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + REDIS_TIMEOUT;
        let mut conn = match tokio::time::timeout_at(deadline, self.connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err("redis timed out".to_owned()),
        };
        let tls = match &*self.inner {
            Inner::Pooled { tls, .. } | Inner::Cluster { tls, .. } => *tls,
        };
        match tokio::time::timeout_at(deadline, work(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if broken(&error) {
                    conn.discard();
                }
                Err(explain(&error, tls))
            }
            Err(_) => {
                // Whatever this connection is stuck on, the next command
                // should not wait behind it.
                conn.discard();
                Err("redis timed out".to_owned())
            }
        }
    }

    async fn connection(&self) -> Result<Connection, String> {
        match &*self.inner {
            Inner::Pooled { pool, .. } => match pool.get().await {
                Ok(conn) => Ok(Connection::Pooled(conn)),
                Err(managed::PoolError::Backend(error)) => Err(error),
                Err(error) => Err(error.to_string()),
            },
            Inner::Cluster {
                client,
                connection,
                connecting,
                tls,
            } => cluster_connection(client, connection, connecting, *tls)
                .await
                .map(Connection::Cluster),
        }
    }
}

/// A connection taken for one command, pipeline or script.
enum Connection {
    Pooled(Object<Manager>),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Keeps a failed pooled connection from going back to the pool. (The
    /// cluster connection reconnects its shards by itself.)
    fn discard(self) {
        if let Connection::Pooled(conn) = self {
            drop(Object::take(conn));
        }
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Pooled(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Pooled(conn) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Pooled(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The shared cluster connection, opened on first use and again after the
/// seeds could not be reached.
async fn cluster_connection(
    client: &ClusterClient,
    connection: &Mutex<Option<ClusterConnection>>,
    connecting: &tokio::sync::Mutex<()>,
    tls: bool,
) -> Result<ClusterConnection, String> {
    let cached = || connection.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(conn) = cached() {
        return Ok(conn);
    }
    let _one_at_a_time = connecting.lock().await;
    if let Some(conn) = cached() {
        return Ok(conn);
    }
    let conn = client
        .get_async_connection()
        .await
        .map_err(|e| format!("redis cluster: {}", explain(&e, tls)))?;
    *connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
    Ok(conn)
}

fn pool(connector: Connector, tls: bool) -> Result<Pool, String> {
    Pool::builder(Manager { connector, tls })
        .max_size(POOL_SIZE)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(REDIS_TIMEOUT))
        .create_timeout(Some(REDIS_TIMEOUT))
        .build()
        .map_err(|error| format!("cannot create the Redis pool: {error}"))
}

/// Whether a connection that returned `error` should leave the pool: it is
/// broken, or it reaches a server that can no longer take writes (a master
/// demoted by a failover answers READONLY).
fn broken(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || error.is_timeout()
        || error.to_string().contains("READONLY")
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
