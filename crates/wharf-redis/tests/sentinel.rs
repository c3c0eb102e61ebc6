//! Redis Sentinel through the pool, against real servers: a master, its
//! replica and one sentinel (quorum 1). The pool reaches the master the
//! sentinel names, and after the master is killed and the sentinel
//! promotes the replica, new checkouts reach the promoted one.

use std::time::{Duration, Instant};

use wharf_redis::redis::{self, AsyncCommands};
use wharf_redis::{RedisSentinelManager, SentinelPool};
use wharf_testkit::redis::RedisServer;

/// The port of the server a pooled connection talks to.
async fn port_of(pool: &SentinelPool) -> redis::RedisResult<u16> {
    let mut conn = pool.get().await.map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Io, "no connection", e.to_string()))
    })?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut *conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("tcp_port:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_a_failover() {
    let (mut master, replica, sentinel) = tokio::task::spawn_blocking(|| {
        let master = RedisServer::start().unwrap();
        let port = master.port().to_string();
        let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]).unwrap();
        wait_for("the replica to sync", || {
            replica
                .command(&["INFO", "replication"])
                .is_ok_and(|info| info.contains("master_link_status:up"))
        });
        let sentinel = RedisServer::start_sentinel(&format!(
            "sentinel monitor svc 127.0.0.1 {port} 1\n\
             sentinel down-after-milliseconds svc 1000\n\
             sentinel failover-timeout svc 3000\n"
        ))
        .unwrap();
        wait_for("the sentinel to see the replica", || {
            sentinel
                .command(&["INFO", "sentinel"])
                .is_ok_and(|info| info.contains("slaves=1"))
        });
        (master, replica, sentinel)
    })
    .await
    .unwrap();
    let manager = RedisSentinelManager::master([sentinel.url()], "svc").unwrap();
    let pool = SentinelPool::builder(manager)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    assert_eq!(port_of(&pool).await.unwrap(), master.port());
    {
        let mut conn = pool.get().await.unwrap();
        let () = conn.set("before", 1).await.unwrap();
        // Replication is asynchronous: the key must be on the replica
        // before the master dies.
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(acked, 1, "the replica did not acknowledge the write");
    }
    master.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(port) = port_of(&pool).await {
            if port == replica.port() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pool never reached the promoted replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conn = pool.get().await.unwrap();
    let () = conn
        .set("after", 2)
        .await
        .expect("writes on the new master");
    let before: i64 = conn.get("before").await.unwrap();
    assert_eq!(before, 1, "the replica had the master's data");
}
