//! What the integration tests share: a throwaway MariaDB, pools on it, and
//! a root connection that watches the server from outside the pool.

#![allow(dead_code)] // Each test binary uses its own share.

use std::time::Duration;

use wharf_mysql::mysql_async::prelude::*;
use wharf_mysql::mysql_async::{Conn, OptsBuilder};
use wharf_mysql::{MysqlManager, Pool};
use wharf_testkit::mariadb::MariaDb;

/// Starts a private MariaDB off the async threads (it blocks for a while).
pub async fn start_db() -> MariaDb {
    tokio::task::spawn_blocking(MariaDb::start)
        .await
        .unwrap()
        .unwrap()
}

/// A pool on `db`'s `test` database, as the `wharf` account over TCP, with
/// the settings `configure` adds.
///
/// `prefer_socket=false` keeps mysql_async from opening each connection over
/// TCP and then replacing it with one over the Unix socket, which would show
/// the server a second, closing connection per connect and blur the counts
/// the tests take.
pub fn pool(
    db: &MariaDb,
    configure: impl FnOnce(wharf::Builder<MysqlManager>) -> wharf::Builder<MysqlManager>,
) -> Pool {
    let url = format!("{}?prefer_socket=false", db.url("test"));
    let manager = MysqlManager::from_url(&url).unwrap();
    configure(Pool::builder(manager).acquire_timeout(Duration::from_secs(10)))
        .build()
        .unwrap()
}

/// A plain connection as MariaDB's `root` over the socket: outside every
/// pool, and not counted among the `wharf` account's connections.
pub async fn admin(db: &MariaDb) -> Conn {
    let opts = OptsBuilder::default()
        .socket(Some(db.socket_path().to_str().unwrap()))
        .user(Some("root"))
        .db_name(Some("test"));
    Conn::new(opts).await.unwrap()
}

/// The server's ids of the `wharf` account's connections.
pub async fn wharf_connections(admin: &mut Conn) -> Vec<u64> {
    admin
        .query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'wharf' ORDER BY ID")
        .await
        .unwrap()
}

/// Polls until `wharf_connections` satisfies `done`, for up to ten seconds
/// (closing a connection is asynchronous on both sides); returns the last
/// list seen.
pub async fn wait_for_connections(admin: &mut Conn, done: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids = wharf_connections(admin).await;
        if done(&ids) || tokio::time::Instant::now() >= deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `CONNECTION_ID()` of a pooled or plain connection.
pub async fn connection_id(conn: &mut Conn) -> u64 {
    conn.query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap()
}

/// Creates the table `t (id INT PRIMARY KEY, v VARCHAR(20))`, InnoDB.
pub async fn create_table(admin: &mut Conn) {
    admin
        .query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        .await
        .unwrap();
}

/// The ids in table `t`, read by `conn`.
pub async fn ids_in_t(conn: &mut Conn) -> Vec<i32> {
    conn.query("SELECT id FROM t ORDER BY id").await.unwrap()
}
