//! Commands, pipelines and scripts on the configured Redis ([`Link`]), each
//! within [`REDIS_TIMEOUT`]:
//! - one server or Sentinel: one shared multiplexed connection. Every
//!   command of the node goes out on it as soon as it is issued, so
//!   concurrent commands are pipelined (the connection writes whatever is
//!   queued in one go and matches the replies in order) instead of taking
//!   turns on a pool. A command never waits for a check first: a connection
//!   that fails a command, times out or meets a read-only replica is
//!   replaced for the next one, one the server closed is replaced before
//!   the next (its driver says so), and one that carried nothing for
//!   [`HEALTH_CHECK_AFTER`] is checked (`INFO replication`) before its next
//!   command, so a server that went away while the node was quiet costs no
//!   failed command. Under Sentinel a new connection asks the sentinels for
//!   the master again (and checks its `ROLE`), so a failover is followed as
//!   soon as the old master's connection breaks.
//! - Cluster: one multiplexed cluster connection that routes each command to
//!   the shard owning its key's slot; the redis crate follows `MOVED`/`ASK`
//!   and refreshes the slot map after a shard failover; a command that
//!   times out replaces the connection, whose map is then read afresh.
//!   Pipelines there are not atomic and run command by command (see
//!   [`Link::query_pipe`]).
//!
//! The check a connection opens with also reads the server's replication
//! id, which the history scripts take as an argument ([`Link::run_script_as`])
//! instead of asking the server on every publish; see `history::redis`.
//!
//! The clients come from the [`Target`] (`target`). The Pub/Sub side (a
//! dedicated connection, or sharded subscriptions on a cluster) is the
//! broker's, not the link's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::AsyncConnectionConfig;
use redis::RedisError;
use redis::{PushInfo, PushKind};
use tokio::time::Instant;

use crate::redis::replication;
use crate::redis::target::{explain, Mode, Target, REDIS_TIMEOUT};

/// A shared connection that carried no reply for this long is checked
/// before its next command.
pub const HEALTH_CHECK_AFTER: Duration = Duration::from_secs(1);

/// Opens the shared connection: to one server, or to the master the
/// sentinels name at that moment.
enum Connector {
    Server(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Connector {
    /// A new connection, and the flag its driver raises when the server
    /// closes it, so the node knows without sending anything.
    async fn connect(&self) -> redis::RedisResult<(MultiplexedConnection, Arc<AtomicBool>)> {
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        let config = AsyncConnectionConfig::new().set_push_sender(move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                flag.store(true, Ordering::Relaxed);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        let conn = match self {
            Connector::Server(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
            Connector::Sentinel(sentinel) => {
                sentinel
                    .lock()
                    .await
                    .get_async_connection_with_config(&config)
                    .await?
            }
        };
        Ok((conn, closed))
    }
}

/// The shared connection to one server and what the node knows of it.
struct Shared {
    conn: MultiplexedConnection,
    /// The server's replication id when its last check found a master;
    /// empty otherwise (the scripts then read it themselves).
    replid: String,
    /// When it last answered, in milliseconds since the link's `born`.
    answered: AtomicU64,
    /// Raised when the server closed it.
    closed: Arc<AtomicBool>,
}

/// Commands, pipelines and scripts on the configured Redis.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
    mode: Mode,
}

struct Inner {
    kind: Kind,
    tls: bool,
    born: Instant,
}

enum Kind {
    Shared {
        connector: Box<Connector>,
        current: Mutex<Option<Arc<Shared>>>,
        connecting: tokio::sync::Mutex<()>,
    },
    Cluster {
        client: Box<ClusterClient>,
        /// The connection and its generation (see [`Link::forget_cluster`]).
        connection: Mutex<Option<(u64, ClusterConnection)>>,
        connecting: tokio::sync::Mutex<u64>,
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
        let tls = target.tls();
        let shared = |connector| Kind::Shared {
            connector: Box::new(connector),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        };
        let kind = if let Some(client) = target.server_client(true) {
            shared(Connector::Server(client.map_err(|e| target.explain(&e))?))
        } else if let Some(client) = target.sentinel_client(true) {
            let client = client.map_err(|e| target.explain(&e))?;
            shared(Connector::Sentinel(tokio::sync::Mutex::new(client)))
        } else {
            let client = target
                .cluster_client(None)
                .ok_or("no Redis target")?
                .map_err(|e| target.explain(&e))?;
            Kind::Cluster {
                client: Box::new(client),
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(0),
            }
        };
        Ok(Link {
            inner: Arc::new(Inner {
                kind,
                tls,
                born: Instant::now(),
            }),
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
        self.with_connection(async |conn: &mut Connection, _: &str| {
            command.query_async::<T>(conn).await
        })
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
        match &self.inner.kind {
            Kind::Shared { .. } => {
                self.with_connection(async |conn: &mut Connection, _: &str| {
                    pipe.query_async::<T>(conn).await
                })
                .await
            }
            Kind::Cluster { .. } => {
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
        self.with_connection(async |conn: &mut Connection, _: &str| {
            invocation.invoke_async::<T>(conn).await
        })
        .await
    }

    /// Runs the script `build` makes for the server's replication id as the
    /// node last read it on this connection (empty when not known: on a
    /// cluster, or when the server was not a master).
    pub async fn run_script_as<T: redis::FromRedisValue + Send>(
        &self,
        build: impl FnOnce(&str) -> redis::ScriptInvocation<'static>,
    ) -> Result<T, String> {
        self.with_connection(async |conn: &mut Connection, replid: &str| {
            build(replid).invoke_async::<T>(conn).await
        })
        .await
    }

    /// Takes a connection and runs `work` on it, all within [`REDIS_TIMEOUT`].
    async fn with_connection<T>(
        &self,
        work: impl AsyncFnOnce(&mut Connection, &str) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + REDIS_TIMEOUT;
        let (mut conn, shared, generation) =
            match tokio::time::timeout_at(deadline, self.connection()).await {
                Ok(Ok(taken)) => taken,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err("redis timed out".to_owned()),
            };
        let replid = shared.as_ref().map_or("", |shared| shared.replid.as_str());
        match tokio::time::timeout_at(deadline, work(&mut conn, replid)).await {
            Ok(Ok(value)) => {
                if let Some(shared) = &shared {
                    shared.answered.store(self.now_ms(), Ordering::Relaxed);
                }
                Ok(value)
            }
            Ok(Err(error)) => {
                if broken(&error) {
                    self.forget(shared.as_ref());
                }
                if error.is_timeout() {
                    self.forget_cluster(generation);
                }
                Err(explain(&error, self.inner.tls))
            }
            Err(_) => {
                // Whatever this connection is stuck on, the next command
                // should not wait behind it.
                self.forget(shared.as_ref());
                self.forget_cluster(generation);
                Err("redis timed out".to_owned())
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection for one command: on one server or Sentinel with its
    /// shared state, on a cluster with its generation.
    async fn connection(&self) -> Result<(Connection, Option<Arc<Shared>>, u64), String> {
        match &self.inner.kind {
            Kind::Shared {
                connector,
                current,
                connecting,
            } => {
                let shared = self.shared(connector, current, connecting).await?;
                Ok((Connection::Shared(shared.conn.clone()), Some(shared), 0))
            }
            Kind::Cluster {
                client,
                connection,
                connecting,
            } => cluster_connection(client, connection, connecting, self.inner.tls)
                .await
                .map(|(generation, conn)| (Connection::Cluster(conn), None, generation)),
        }
    }

    /// The shared connection: the current one while it answers, else a
    /// checked one. A caller that finds the current one fresh takes it
    /// without waiting, so the commands of one caller leave in the order it
    /// issued them.
    async fn shared(
        &self,
        connector: &Connector,
        current: &Mutex<Option<Arc<Shared>>>,
        connecting: &tokio::sync::Mutex<()>,
    ) -> Result<Arc<Shared>, String> {
        let cached = || current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let idle_limit = u64::try_from(HEALTH_CHECK_AFTER.as_millis()).unwrap_or(u64::MAX);
        let fresh = |shared: &Shared| {
            !shared.closed.load(Ordering::Relaxed)
                && self
                    .now_ms()
                    .saturating_sub(shared.answered.load(Ordering::Relaxed))
                    < idle_limit
        };
        if let Some(shared) = cached().filter(|shared| fresh(shared)) {
            return Ok(shared);
        }
        let _one_at_a_time = connecting.lock().await;
        let mut open = match cached() {
            Some(shared) if fresh(&shared) => return Ok(shared),
            // Quiet for a while: check it rather than trust it.
            Some(shared) if !shared.closed.load(Ordering::Relaxed) => {
                Some((shared.conn.clone(), Arc::clone(&shared.closed)))
            }
            _ => None,
        };
        let mut checked = None;
        if let Some((conn, _)) = &mut open {
            checked = replication::check(conn).await.ok();
        }
        let (conn, closed, replid) = match (open, checked) {
            (Some((conn, closed)), Some(replid)) => (conn, closed, replid),
            _ => {
                let (mut conn, closed) = connector
                    .connect()
                    .await
                    .map_err(|e| explain(&e, self.inner.tls))?;
                let replid = replication::check(&mut conn)
                    .await
                    .map_err(|e| explain(&e, self.inner.tls))?;
                (conn, closed, replid)
            }
        };
        let shared = Arc::new(Shared {
            conn,
            replid,
            answered: AtomicU64::new(self.now_ms()),
            closed,
        });
        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&shared));
        Ok(shared)
    }

    /// Drops a failed shared connection, unless it was replaced already.
    /// Drops the cluster connection of `generation` (if it is still the
    /// current one) after a command on it timed out, so the next command
    /// opens a new one with a slot map read afresh from the seeds. The
    /// crate's connection refreshes its map only after errors it sees
    /// itself; after a primary died with commands waiting on it, one was
    /// seen to time out every command, the lease renewal included, for over
    /// 15 s after the replica's promotion (tests/failover_windows.rs, about
    /// one run in three). Commands already running on the old connection
    /// finish on it.
    fn forget_cluster(&self, generation: u64) {
        let Kind::Cluster { connection, .. } = &self.inner.kind else {
            return;
        };
        let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
        if connection
            .as_ref()
            .is_some_and(|(current, _)| *current == generation)
        {
            *connection = None;
            tracing::info!(
                message = "redis cluster connection replaced after a timeout",
                generation
            );
        }
    }

    fn forget(&self, failed: Option<&Arc<Shared>>) {
        let (Kind::Shared { current, .. }, Some(failed)) = (&self.inner.kind, failed) else {
            // The cluster connection reconnects its shards by itself.
            return;
        };
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if current
            .as_ref()
            .is_some_and(|shared| Arc::ptr_eq(shared, failed))
        {
            *current = None;
        }
    }
}

/// A connection taken for one command, pipeline or script.
enum Connection {
    Shared(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Shared(conn) => conn.req_packed_command(cmd),
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
            Connection::Shared(conn) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Shared(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The shared cluster connection, opened on first use and again after the
/// seeds could not be reached.
async fn cluster_connection(
    client: &ClusterClient,
    connection: &Mutex<Option<(u64, ClusterConnection)>>,
    connecting: &tokio::sync::Mutex<u64>,
    tls: bool,
) -> Result<(u64, ClusterConnection), String> {
    let cached = || connection.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(taken) = cached() {
        return Ok(taken);
    }
    let mut made = connecting.lock().await;
    if let Some(taken) = cached() {
        return Ok(taken);
    }
    let conn = client
        .get_async_connection()
        .await
        .map_err(|e| format!("redis cluster: {}", explain(&e, tls)))?;
    *made += 1;
    let taken = (*made, conn);
    *connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(taken.clone());
    Ok(taken)
}

/// Whether the connection that returned `error` should be replaced: it is
/// broken, or it reaches a server that can no longer take writes (a master
/// demoted by a failover answers READONLY).
fn broken(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || error.is_timeout()
        || error.to_string().contains("READONLY")
}
