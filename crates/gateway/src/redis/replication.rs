//! What a server says of its replication role (`INFO replication`), read
//! when the node's shared connection opens and when it is checked after a
//! quiet spell, never per command.
//!
//! The history scripts need to know whether a channel's stream was written
//! by the server they run on, or by a master this server replaced in a
//! failover (see `history::redis`). Asking the server inside every script
//! (`INFO` and two pattern matches over its text) was a third of the Redis
//! time of a publish; the id read here is passed to the scripts instead.
//! It stays right for the connection's life: a server's replication id
//! changes only when it is promoted or restarted, a restart breaks the
//! connection, a promoted replica was not a master when the connection
//! read it (so its id is not trusted), and Sentinel kills the clients of
//! the servers it reconfigures.

use redis::aio::ConnectionLike;

/// The server's replication id if it is a master; empty otherwise (a
/// replica's id is its master's, and it changes when the replica is
/// promoted, so it must not be trusted).
pub async fn check(conn: &mut impl ConnectionLike) -> redis::RedisResult<String> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await?;
    Ok(master_replid(&info).unwrap_or_default().to_owned())
}

/// `master_replid` of an `INFO replication` text whose `role` is master.
pub fn master_replid(info: &str) -> Option<&str> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
    };
    if field("role")? != "master" {
        return None;
    }
    field("master_replid").filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_gives_its_id() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_replid:3e1f0c2a9b\r\nmaster_replid2:0000000000\r\n";
        assert_eq!(master_replid(info), Some("3e1f0c2a9b"));
    }

    #[test]
    fn a_replica_or_garbage_gives_none() {
        assert_eq!(
            master_replid("role:slave\r\nmaster_replid:3e1f0c2a9b\r\n"),
            None
        );
        assert_eq!(master_replid("role:master\r\nmaster_replid:\r\n"), None);
        assert_eq!(master_replid("role:master\r\nmaster_replid:x;y\r\n"), None);
        assert_eq!(master_replid(""), None);
    }
}
