//! Connections the server has closed are never handed out again.

use std::time::Duration;

use wharf::CloseReason;
use wharf_redis::{Connection, Pool, RedisManager};
use wharf_testkit::redis::RedisServer;

async fn client_id(conn: &mut Connection) -> redis::RedisResult<i64> {
    redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut **conn)
        .await
}

fn kill_client(redis: &RedisServer, id: i64) {
    let killed = redis
        .command(&["CLIENT", "KILL", "ID", &id.to_string()])
        .unwrap();
    assert_eq!(killed, "1");
}

#[tokio::test]
async fn killed_while_in_use_it_is_closed_on_return() {
    let redis = RedisServer::start().unwrap();
    let pool = Pool::builder(RedisManager::new(redis.url()).unwrap())
        .max_size(1)
        .validate_after(None)
        .build()
        .unwrap();

    let mut conn = pool.get().await.unwrap();
    let id = client_id(&mut conn).await.unwrap();
    kill_client(&redis, id);
    let error = client_id(&mut conn).await.unwrap_err();
    eprintln!("a command on a killed connection fails with: {error}");
    assert!(conn.is_broken(), "{error}");
    drop(conn);

    assert_eq!(pool.metrics().closed_for(CloseReason::Broken), 1);
    assert_eq!(pool.status().size, 0);
    let mut conn = pool.get().await.unwrap();
    assert_ne!(client_id(&mut conn).await.unwrap(), id);
    drop(conn);
    pool.close().await;
}

#[tokio::test]
async fn killed_while_idle_it_fails_its_ping_and_the_caller_gets_another() {
    let redis = RedisServer::start().unwrap();
    let pool = Pool::builder(RedisManager::new(redis.url()).unwrap())
        .max_size(1)
        .validate_after(Duration::ZERO)
        .build()
        .unwrap();

    let mut conn = pool.get().await.unwrap();
    let id = client_id(&mut conn).await.unwrap();
    drop(conn);
    kill_client(&redis, id);

    // The caller never sees the dead connection.
    let mut conn = pool.get().await.unwrap();
    let new_id = client_id(&mut conn).await.unwrap();
    assert_ne!(new_id, id);
    assert!(!conn.is_broken());
    drop(conn);
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);
    assert_eq!(pool.status().size, 1);
    pool.close().await;
}

#[tokio::test]
async fn marked_broken_by_the_caller_it_is_closed_on_return() {
    let redis = RedisServer::start().unwrap();
    let pool = Pool::builder(RedisManager::new(redis.url()).unwrap())
        .max_size(1)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let () = redis::cmd("MULTI").query_async(&mut *conn).await.unwrap();
    conn.mark_broken();
    drop(conn);
    assert_eq!(pool.metrics().closed_for(CloseReason::Broken), 1);
    pool.close().await;
}
