//! Concurrent writers through `Pool::interact` on a WAL database.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};

use wharf_sqlite::{Pool, SqliteManager};

/// A fresh database file, removed (with its WAL files) when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wharf-sqlite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("test.db")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_a_wal_database_all_commit() {
    const WRITERS: u32 = 8;
    const ROWS_EACH: u32 = 50;
    let db = TempDb::new("writers");
    let pool: Pool = Pool::builder(SqliteManager::new(db.file()))
        .max_size(4)
        .build()
        .unwrap();
    let mode: String = pool
        .interact(|conn| {
            conn.execute("CREATE TABLE log (writer INTEGER, n INTEGER)", [])?;
            conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mode, "wal");

    // Each writer's first insert waits until four are inside at once, so
    // four connections certainly write concurrently.
    let together = Arc::new(Barrier::new(4));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let pool = pool.clone();
            let together = together.clone();
            tokio::spawn(async move {
                for n in 0..ROWS_EACH {
                    let together = together.clone();
                    // One transaction per row: as many lock hand-overs
                    // between the pool's connections as possible.
                    pool.interact(move |conn| {
                        if n == 0 {
                            together.wait();
                        }
                        let tx = conn.transaction()?;
                        tx.execute("INSERT INTO log VALUES (?1, ?2)", (writer, n))?;
                        tx.commit()
                    })
                    .await
                    .unwrap()
                    .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    let (rows, writers_seen): (u32, u32) = pool
        .interact(|conn| {
            conn.query_row(
                "SELECT count(*), count(DISTINCT writer) FROM log",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rows, writers_seen), (WRITERS * ROWS_EACH, WRITERS));
    assert_eq!(pool.status().size, 4);
    pool.close().await;
}

#[tokio::test]
async fn a_connection_reads_what_another_committed() {
    let db = TempDb::new("visibility");
    let pool: Pool = Pool::builder(SqliteManager::new(db.file()))
        .max_size(2)
        .build()
        .unwrap();
    let writer = pool.get().await.unwrap();
    let reader = pool.get().await.unwrap();
    assert_ne!(writer.info().id, reader.info().id);
    drop(reader);
    writer
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (42)")
        .unwrap();
    let x: i64 = pool
        .interact(|conn| conn.query_row("SELECT x FROM t", [], |row| row.get(0)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(x, 42);
    drop(writer);
}
