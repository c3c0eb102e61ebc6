//! Connections killed behind the pool's back (`KILL <id>` from another
//! session, as an operator or a proxy would) never reach a caller.

mod common;

use std::time::Duration;

use common::{admin, connection_id, pool, start_db, wait_for_connections};
use wharf_mysql::mysql_async::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_connections_are_replaced_on_checkout() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(2).validate_after(Duration::ZERO));
    let mut admin = admin(&db).await;

    let (mut a, mut b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let killed = vec![connection_id(&mut a).await, connection_id(&mut b).await];
    drop((a, b));
    assert_eq!(pool.status().idle, 2);
    for id in &killed {
        admin.query_drop(format!("KILL {id}")).await.unwrap();
    }
    assert_eq!(
        wait_for_connections(&mut admin, <[u64]>::is_empty).await,
        Vec::<u64>::new(),
        "the server still has the killed connections"
    );

    let (mut a, mut b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    for conn in [&mut a, &mut b] {
        let id = connection_id(conn).await;
        assert!(!killed.contains(&id), "got killed connection {id}");
        let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
    }
    assert_eq!(pool.status().size, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_while_in_use_is_not_returned_to_the_pool() {
    let db = start_db().await;
    // No validation on checkout: only `has_broken` stands between the dead
    // connection and the next caller.
    let pool = pool(&db, |b| b.max_size(1).validate_after(None));
    let mut admin = admin(&db).await;

    let mut conn = pool.get().await.unwrap();
    let killed = connection_id(&mut conn).await;
    admin.query_drop(format!("KILL {killed}")).await.unwrap();
    assert_eq!(
        wait_for_connections(&mut admin, <[u64]>::is_empty).await,
        Vec::<u64>::new(),
        "the server still has the killed connection"
    );
    conn.query_drop("SELECT 1")
        .await
        .expect_err("the connection was killed");
    drop(conn);
    assert_eq!(pool.status().size, 0, "the broken connection was closed");

    let mut conn = pool.get().await.unwrap();
    assert_ne!(connection_id(&mut conn).await, killed);
}
