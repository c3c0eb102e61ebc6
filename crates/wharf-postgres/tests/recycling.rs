//! Recycling returned connections against a real server: `DISCARD ALL`, a
//! query of one's own, or nothing; and the serde `Config` building a pool.

mod common;

use std::time::Duration;

use common::{cluster, pg_config};
use wharf::CloseReason;
use wharf_postgres::{Config, PgManager, Pool, Recycling};
use wharf_testkit::PgCluster;

fn one_connection(manager: PgManager) -> Pool {
    Pool::builder(manager)
        .max_size(1)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The backend's pid and what it remembers of the last user: a custom
/// setting, and whether its temporary table exists.
async fn session(pool: &Pool) -> (i32, String, bool) {
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT pg_backend_pid(), coalesce(current_setting('wharf.owner', true), ''), \
             to_regclass('pg_temp.scratch') IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Leaves a setting and a temporary table behind, as a careless user would.
async fn leave_a_mess(pool: &Pool) -> i32 {
    let conn = pool.get().await.unwrap();
    conn.batch_execute("SET wharf.owner = 'alice'; CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_recycling_gives_the_next_user_a_reset_session_on_the_same_connection() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = one_connection(
        PgManager::new(pg_config(&cluster, "recycle_clean")).recycling(Recycling::Clean),
    );
    let pid = leave_a_mess(&pool).await;
    assert_eq!(session(&pool).await, (pid, String::new(), false));
    assert_eq!(pool.metrics().closed_total(), 0);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_recycling_leaves_the_session_as_the_last_user_left_it() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = one_connection(PgManager::new(pg_config(&cluster, "recycle_fast")));
    let pid = leave_a_mess(&pool).await;
    assert_eq!(session(&pool).await, (pid, "alice".to_owned(), true));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_recycling_runs_the_given_statements_on_each_return() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = one_connection(
        PgManager::new(pg_config(&cluster, "recycle_query"))
            .recycling(Recycling::Query("RESET ALL".into())),
    );
    let pid = leave_a_mess(&pool).await;
    // RESET ALL forgets the setting but, unlike DISCARD ALL, keeps the table.
    assert_eq!(session(&pool).await, (pid, String::new(), true));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_returned_inside_a_transaction_fails_clean_recycling_and_is_closed() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = one_connection(
        PgManager::new(pg_config(&cluster, "recycle_in_tx")).recycling(Recycling::Clean),
    );
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = conn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(conn);
    let (next_pid, _, _) = session(&pool).await;
    assert_ne!(next_pid, pid, "a fresh connection");
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_loaded_from_toml_builds_a_pool_that_recycles() {
    let cluster = cluster(PgCluster::builder()).await;
    let config: Config = toml::from_str(&format!(
        r#"
        url = "{}"
        recycling = "clean"
        statement_cache = 4
        [pool]
        max_size = 1
        acquire_timeout = "5s"
        "#,
        cluster.url("postgres")
    ))
    .unwrap();
    let pool = config.create_pool().unwrap();
    assert_eq!(pool.status().max_size, 1);
    assert_eq!(pool.manager().statement_cache_capacity(), 4);
    let pid = leave_a_mess(&pool).await;
    assert_eq!(session(&pool).await, (pid, String::new(), false));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_recycling_empties_the_statement_cache_with_the_session() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = one_connection(
        PgManager::new(pg_config(&cluster, "recycle_cache"))
            .statement_cache(4)
            .recycling(Recycling::Clean),
    );
    let conn = pool.get().await.unwrap();
    conn.query_one_cached("SELECT $1::int + 1", &[&1])
        .await
        .unwrap();
    assert_eq!(conn.cached_statements(), 1);
    drop(conn);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.cached_statements(), 0);
    // And caching works again afterwards.
    let row = conn
        .query_one_cached("SELECT $1::int + 1", &[&1])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    drop(conn);
    pool.close().await;
}
