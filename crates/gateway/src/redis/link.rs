//! Commands, pipelines and scripts on the configured Redis ([`Link`]), each
//! within [`REDIS_TIMEOUT`]:
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
//! The clients come from the [`Target`] (`target`). The Pub/Sub side (a
//! dedicated connection, or sharded subscriptions on a cluster) is the
//! broker's, not the link's.

use std::sync::{Arc, Mutex};

use deadpool::managed::{self, Metrics as PoolMetrics, Object, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::RedisError;

use crate::redis::target::{explain, Mode, Target, REDIS_TIMEOUT};

/// Pooled connections per node (one server or Sentinel).
const POOL_SIZE: usize = 32;

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
        let tls = target.tls();
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
