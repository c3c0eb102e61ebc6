//! The per-connection statement cache: reuse, eviction, and recovery when
//! the server has forgotten or outdated a cached statement.

mod common;

use common::{cluster, pool, psql};
use wharf_postgres::tokio_postgres::error::SqlState;
use wharf_postgres::tokio_postgres::SimpleQueryMessage;
use wharf_postgres::{PgClient, PgManager, PoolExt};
use wharf_testkit::PgCluster;

/// The SQL of the statements prepared in `client`'s session, sorted.
/// Asked with the simple protocol, which prepares nothing itself.
async fn server_statements(client: &PgClient) -> Vec<String> {
    let messages = client
        .simple_query("SELECT statement FROM pg_prepared_statements ORDER BY statement")
        .await
        .unwrap();
    messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

const DOUBLE: &str = "SELECT $1::int * 2";
const TRIPLE: &str = "SELECT $1::int * 3";
const SQUARE: &str = "SELECT $1::int * $1::int";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_prepared_once_per_connection() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres"))
            .unwrap()
            .statement_cache(8),
        "cache_hits",
        1,
    );

    for i in 0..5i32 {
        let row = pool.query_one(DOUBLE, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
    pool.execute(TRIPLE, &[&1i32]).await.unwrap();

    let conn = pool.get().await.unwrap();
    assert_eq!(conn.statement_cache_capacity(), 8);
    assert_eq!(conn.cached_statements(), 2);
    assert_eq!(server_statements(&conn).await, [DOUBLE, TRIPLE]);

    // prepare_cached hands out the very statement the shortcuts used.
    let first = conn.prepare_cached(DOUBLE).await.unwrap();
    let again = conn.prepare_cached(DOUBLE).await.unwrap();
    assert_eq!(server_statements(&conn).await, [DOUBLE, TRIPLE]);
    drop(again);
    let row = conn.query_one(&first, &[&21i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(conn.cached_statements(), 2);
    assert_eq!(server_statements(&conn).await, [DOUBLE, TRIPLE]);
    drop(conn);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cache_nothing_stays_prepared() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres")).unwrap(),
        "cache_off",
        1,
    );
    for i in 0..3i32 {
        pool.query_one(DOUBLE, &[&i]).await.unwrap();
    }
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.statement_cache_capacity(), 0);
    assert_eq!(conn.cached_statements(), 0);
    let first = conn.prepare_cached(DOUBLE).await.unwrap();
    let again = conn.prepare_cached(DOUBLE).await.unwrap();
    // Two separate statements, each closed when dropped.
    assert_eq!(server_statements(&conn).await, [DOUBLE, DOUBLE]);
    drop((first, again));
    assert_eq!(server_statements(&conn).await, Vec::<String>::new());
    drop(conn);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_drops_the_least_recently_used() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres"))
            .unwrap()
            .statement_cache(2),
        "cache_lru",
        1,
    );
    let conn = pool.get().await.unwrap();
    conn.query_one_cached(DOUBLE, &[&1i32]).await.unwrap();
    conn.query_one_cached(TRIPLE, &[&1i32]).await.unwrap();
    // DOUBLE is now more recently used than TRIPLE.
    conn.query_one_cached(DOUBLE, &[&1i32]).await.unwrap();
    conn.query_one_cached(SQUARE, &[&3i32]).await.unwrap();

    assert_eq!(conn.cached_statements(), 2);
    // The evicted statement is closed on the server as well.
    assert_eq!(server_statements(&conn).await, [SQUARE, DOUBLE]);

    conn.clear_statement_cache();
    assert_eq!(conn.cached_statements(), 0);
    assert_eq!(server_statements(&conn).await, Vec::<String>::new());
    drop(conn);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_the_session_is_reset() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres"))
            .unwrap()
            .statement_cache(8),
        "cache_discard",
        1,
    );

    assert_eq!(
        pool.query_one(DOUBLE, &[&4i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        8
    );
    let conn = pool.get().await.unwrap();
    conn.query_one_cached(TRIPLE, &[&1i32]).await.unwrap();
    let stale = conn.prepare_cached(TRIPLE).await.unwrap();
    conn.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(server_statements(&conn).await, Vec::<String>::new());
    assert_eq!(conn.cached_statements(), 2);

    // Used directly, a forgotten statement fails as the server says...
    let err = conn.query_one(&stale, &[&1i32]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    drop(stale);
    drop(conn);

    // ...but the cached paths prepare it again by themselves.
    assert_eq!(
        pool.query_one(DOUBLE, &[&5i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        10
    );
    let conn = pool.get().await.unwrap();
    // One missing statement means the session was reset: the whole cache
    // was dropped, and only what ran since is back.
    assert_eq!(conn.cached_statements(), 1);
    assert_eq!(server_statements(&conn).await, [DOUBLE]);
    assert_eq!(
        conn.query_one_cached(TRIPLE, &[&2i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        6
    );
    assert_eq!(server_statements(&conn).await, [DOUBLE, TRIPLE]);
    drop(conn);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_a_table_changes_shape() {
    let cluster = cluster(PgCluster::builder()).await;
    psql(
        &cluster,
        "CREATE TABLE things (a int); INSERT INTO things VALUES (1)",
    );
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres"))
            .unwrap()
            .statement_cache(8),
        "cache_alter",
        1,
    );

    let row = pool.query_one("SELECT * FROM things", &[]).await.unwrap();
    assert_eq!(row.len(), 1);
    psql(
        &cluster,
        "ALTER TABLE things ADD COLUMN b text DEFAULT 'new'",
    );

    // The cached plan's result type no longer matches; the server refuses
    // it ("cached plan must not change result type") and it is re-prepared.
    let row = pool.query_one("SELECT * FROM things", &[]).await.unwrap();
    assert_eq!(row.len(), 2);
    assert_eq!(row.get::<_, &str>("b"), "new");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_failed_transaction_the_first_error_is_reported() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres"))
            .unwrap()
            .statement_cache(8),
        "cache_in_tx",
        1,
    );
    let conn = pool.get().await.unwrap();
    conn.query_one_cached(DOUBLE, &[&1i32]).await.unwrap();
    conn.batch_execute("BEGIN; DEALLOCATE ALL").await.unwrap();

    // The retry cannot succeed inside the now aborted transaction; the
    // caller hears why it was aborted, not just that it was.
    let err = conn.query_one_cached(DOUBLE, &[&1i32]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
        "{err:?}"
    );

    conn.batch_execute("ROLLBACK").await.unwrap();
    let row = conn.query_one_cached(DOUBLE, &[&8i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 16);
    drop(conn);
    pool.close().await;
}
