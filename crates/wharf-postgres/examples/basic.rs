//! The adapter in a few lines: a pool from `DATABASE_URL`, one-statement
//! shortcuts, a transaction, and the pool's status.
//!
//! ```sh
//! DATABASE_URL=postgres://user:password@localhost:5432/db \
//!     cargo run -p wharf-postgres --example basic
//! ```

use std::process::ExitCode;
use std::time::Duration;

use wharf_postgres::{transaction, Error, PgManager, Pool, PoolExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "Set DATABASE_URL to a PostgreSQL you may create a temporary table in, e.g.\n\
             \n    DATABASE_URL=postgres://user:password@localhost:5432/db \
             cargo run -p wharf-postgres --example basic"
        );
        return ExitCode::from(2);
    };
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let manager = PgManager::from_url(url)?.statement_cache(32);
    let pool: Pool = Pool::builder(manager)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .build()?;

    let row = pool.query_one("SELECT version()", &[]).await?;
    println!("connected: {}", row.get::<_, String>(0));

    // A temporary table lives in one session, so this part holds one
    // connection throughout.
    let conn = pool.get().await?;
    conn.batch_execute("CREATE TEMPORARY TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
        .await?;
    for body in ["first", "second", "third"] {
        conn.execute_cached("INSERT INTO notes (body) VALUES ($1)", &[&body])
            .await?;
    }
    let count: i64 = conn
        .query_one_cached("SELECT count(*) FROM notes", &[])
        .await?
        .get(0);
    println!(
        "{count} notes, {} statements cached",
        conn.cached_statements()
    );
    drop(conn);

    // Everything in the closure commits together, or not at all.
    let total: i64 = transaction(&pool, |tx| {
        Box::pin(async move {
            tx.batch_execute("CREATE TEMPORARY TABLE ledger (amount bigint) ON COMMIT DROP")
                .await?;
            tx.execute("INSERT INTO ledger VALUES (40), (2)", &[])
                .await?;
            let row = tx
                .query_one("SELECT sum(amount)::bigint FROM ledger", &[])
                .await?;
            Ok::<_, Error>(row.get(0))
        })
    })
    .await?;
    println!("the transaction added up to {total}");

    println!("{:?}", pool.status());
    pool.close().await;
    Ok(())
}
