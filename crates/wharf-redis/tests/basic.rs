//! Commands through the pool against a real redis-server.

use std::time::Duration;

use redis::AsyncCommands;
use wharf_redis::{Config, Pool, RedisManager};
use wharf_testkit::redis::RedisServer;

fn pool(redis: &RedisServer, max_size: usize) -> Pool {
    Pool::builder(RedisManager::new(redis.url()).unwrap())
        .max_size(max_size)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn set_and_get_through_the_pool() {
    let redis = RedisServer::start().unwrap();
    let pool = pool(&redis, 2);

    let mut conn = pool.get().await.unwrap();
    let () = conn.set("greeting", "hello").await.unwrap();
    drop(conn);

    let mut conn = pool.get().await.unwrap();
    let greeting: String = conn.get("greeting").await.unwrap();
    assert_eq!(greeting, "hello");
    let hits: i64 = redis::cmd("INCR")
        .arg("hits")
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(hits, 1);
    let (a, b): (i64, i64) = redis::pipe()
        .incr("hits", 1)
        .incr("hits", 1)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!((a, b), (2, 3));
    assert_eq!(conn.info().uses, 2, "the first connection was reused");
    drop(conn);

    // The server saw the writes, on one connection.
    assert_eq!(redis.command(&["GET", "greeting"]).unwrap(), "hello");
    assert_eq!(pool.metrics().created, 1);
    assert_eq!(redis.connected_clients().unwrap(), 1);
    pool.close().await;
}

#[tokio::test]
async fn a_server_error_reply_does_not_break_the_connection() {
    let redis = RedisServer::start().unwrap();
    let pool = pool(&redis, 1);

    let mut conn = pool.get().await.unwrap();
    let () = conn.set("text", "not a number").await.unwrap();
    let error = conn.incr::<_, _, i64>("text", 1).await.unwrap_err();
    assert!(error.to_string().contains("not an integer"), "{error}");
    assert!(!conn.is_broken());
    let id = conn.info().id;
    drop(conn);

    let conn = pool.get().await.unwrap();
    assert_eq!(conn.info().id, id, "kept after a plain error reply");
    drop(conn);
    pool.close().await;
}

#[tokio::test]
async fn the_check_is_a_ping() {
    let redis = RedisServer::start().unwrap();
    let pool = Pool::builder(RedisManager::new(redis.url()).unwrap())
        .max_size(1)
        // Check on every checkout.
        .validate_after(Duration::ZERO)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    // Counts only what follows: the testkit pings too, while starting.
    assert_eq!(redis.command(&["CONFIG", "RESETSTAT"]).unwrap(), "OK");
    for _ in 0..3 {
        drop(pool.get().await.unwrap());
    }
    let calls = redis.command(&["INFO", "commandstats"]).unwrap();
    let pings = calls
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_ping:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u32>().ok());
    assert_eq!(pings, Some(3), "{calls}");
    assert_eq!(pool.metrics().created, 1);
    pool.close().await;
}

#[tokio::test]
async fn a_pool_from_a_toml_config() {
    let redis = RedisServer::start().unwrap();
    let text = format!(
        "url = \"{}\"\n[pool]\nmax_size = 3\nacquire_timeout = \"2s\"\n",
        redis.url()
    );
    let config: Config = toml::from_str(&text).unwrap();
    let pool = config.create_pool().unwrap();
    assert_eq!(pool.status().max_size, 3);
    let mut conn = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
    drop(conn);
    pool.close().await;
}
