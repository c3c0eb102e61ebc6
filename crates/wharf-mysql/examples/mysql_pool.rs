//! A tour of wharf-mysql: a pool, concurrent checkouts, transactions that
//! commit or roll back, and the pool's status and metrics.
//!
//! Uses the server in `WHARF_MYSQL_URL` if set (its database must allow
//! `CREATE TABLE`); otherwise starts a throwaway MariaDB (Debian's
//! `mariadb-server` package must be installed; nothing needs to be running).
//!
//! ```text
//! cargo run -p wharf-mysql --example mysql_pool
//! WHARF_MYSQL_URL=mysql://app:secret@127.0.0.1:3306/app cargo run -p wharf-mysql --example mysql_pool
//! ```

use std::time::{Duration, Instant};

use wharf_mysql::mysql_async::prelude::*;
use wharf_mysql::{MysqlManager, Pool};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TASKS: usize = 20;
const TRANSFERS_PER_TASK: usize = 25;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Held until the end: dropping it stops the throwaway server.
    let (_server, url) = match std::env::var("WHARF_MYSQL_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            println!("starting a throwaway MariaDB…");
            let started = Instant::now();
            let db = tokio::task::spawn_blocking(wharf_testkit::mariadb::MariaDb::start).await??;
            println!("  up in {:?} on port {}", started.elapsed(), db.port());
            let url = db.url("test");
            (Some(db), url)
        }
    };

    let pool = Pool::builder(MysqlManager::from_url(&url)?)
        .name("example")
        .max_size(5)
        .min_idle(2)
        .acquire_timeout(Duration::from_secs(5))
        .build()?;
    pool.ready().await?;

    let mut conn = pool.get().await?;
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    println!("connected to {}", version.unwrap_or_default());
    conn.query_drop("DROP TABLE IF EXISTS wharf_example_accounts")
        .await?;
    conn.query_drop(
        "CREATE TABLE wharf_example_accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) \
         ENGINE=InnoDB",
    )
    .await?;
    conn.query_drop("INSERT INTO wharf_example_accounts VALUES (1, 100), (2, 100)")
        .await?;
    drop(conn);

    // Many tasks move money between two accounts, each move in its own
    // transaction on a dedicated connection; some moves are refused and
    // rolled back.
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for n in 0..TRANSFERS_PER_TASK {
                    let amount = ((task * TRANSFERS_PER_TASK + n) % 7) as i64 * 10;
                    let (from, to) = if task % 2 == 0 { (1, 2) } else { (2, 1) };
                    match transfer(&pool, from, to, amount).await {
                        Ok(()) => {}
                        Err(TransferError::Refused) => refused += 1,
                        Err(TransferError::Db(error)) => return Err(error),
                    }
                }
                Ok::<_, wharf_mysql::Error>(refused)
            })
        })
        .collect();
    let mut refused = 0;
    for task in tasks {
        refused += task.await??;
    }
    println!(
        "{} transfers from {TASKS} tasks in {:?}, {refused} refused and rolled back",
        TASKS * TRANSFERS_PER_TASK,
        started.elapsed()
    );

    let mut conn = pool.get().await?;
    let total: Option<i64> = conn
        .query_first("SELECT SUM(balance) FROM wharf_example_accounts")
        .await?;
    println!("total balance: {} (always 200)", total.unwrap_or_default());
    conn.query_drop("DROP TABLE wharf_example_accounts").await?;
    drop(conn);

    println!("{:?}", pool.status());
    let metrics = pool.metrics();
    println!(
        "{} checkouts over {} connections",
        metrics.acquired(),
        metrics.created
    );
    pool.close().await;
    Ok(())
}

#[derive(Debug)]
enum TransferError {
    /// The sender's balance would go negative.
    Refused,
    Db(wharf_mysql::Error),
}

impl From<wharf_mysql::Error> for TransferError {
    fn from(error: wharf_mysql::Error) -> Self {
        TransferError::Db(error)
    }
}

impl From<wharf_mysql::mysql_async::Error> for TransferError {
    fn from(error: wharf_mysql::mysql_async::Error) -> Self {
        TransferError::Db(error.into())
    }
}

async fn transfer(pool: &Pool, from: i32, to: i32, amount: i64) -> Result<(), TransferError> {
    wharf_mysql::transaction(pool, |tx| {
        Box::pin(async move {
            // Locking both rows in id order first keeps concurrent transfers
            // in opposite directions from deadlocking.
            tx.query_drop("SELECT id FROM wharf_example_accounts ORDER BY id FOR UPDATE")
                .await?;
            tx.exec_drop(
                "UPDATE wharf_example_accounts SET balance = balance + ? WHERE id = ?",
                (amount, to),
            )
            .await?;
            tx.exec_drop(
                "UPDATE wharf_example_accounts SET balance = balance - ? WHERE id = ?",
                (amount, from),
            )
            .await?;
            let left: Option<i64> = tx
                .exec_first(
                    "SELECT balance FROM wharf_example_accounts WHERE id = ?",
                    (from,),
                )
                .await?;
            if left.unwrap_or_default() < 0 {
                // Undoes both updates.
                return Err(TransferError::Refused);
            }
            Ok(())
        })
    })
    .await
}
