//! Starts a throwaway PostgreSQL, then runs the same 2,000 queries from 50
//! concurrent tasks twice: opening a connection per query (the seeds'
//! anti-pattern), and through a wharf pool of 10. Prints what each took.
//!
//! ```text
//! cargo run --release -p wharf --example postgres_pool
//! ```

#[path = "support/pg_manager.rs"]
mod pg_manager;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_manager::PgManager;
use tokio_postgres::NoTls;
use wharf::Pool;

const TASKS: usize = 50;
/// A multiple of `TASKS`, so every task runs the same share.
const QUERIES: usize = 2_000;
const QUERY: &str = "SELECT count(*) FROM pg_class";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    println!("starting a throwaway PostgreSQL cluster…");
    let cluster = tokio::task::spawn_blocking(wharf_testkit::PgCluster::start).await??;
    let url = cluster.url("postgres");

    let per_request = {
        let url = Arc::new(url.clone());
        run(move || {
            let url = url.clone();
            async move {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
                let driver = tokio::spawn(connection);
                client.simple_query(QUERY).await?;
                drop(client);
                let _ = driver.await;
                Ok(())
            }
        })
        .await?
    };

    let pool = Pool::builder(PgManager::new(&url)?)
        .name("example")
        .max_size(10)
        .min_idle(10)
        .acquire_timeout(Duration::from_secs(5))
        .build()?;
    pool.ready().await?;
    let pooled = {
        let pool = pool.clone();
        run(move || {
            let pool = pool.clone();
            async move {
                let client = pool.get().await?;
                client.simple_query(QUERY).await?;
                Ok(())
            }
        })
        .await?
    };

    let m = pool.metrics();
    println!();
    println!("{QUERIES} queries from {TASKS} concurrent tasks against {url}");
    println!("| strategy                | total     | queries/s |");
    println!("|-------------------------|-----------|-----------|");
    for (name, took) in [
        ("connection per query", per_request),
        ("wharf pool (max 10)", pooled),
    ] {
        println!(
            "| {name:<23} | {:>7.0}ms | {:>9.0} |",
            took.as_secs_f64() * 1000.0,
            QUERIES as f64 / took.as_secs_f64()
        );
    }
    println!();
    println!(
        "pool: {} connections opened, acquire wait p50 {:?} p99 {:?}, {} timeouts",
        m.created,
        m.acquire_wait.p50(),
        m.acquire_wait.p99(),
        m.timeouts
    );
    pool.close().await;
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `QUERIES` calls of `op` spread over `TASKS` tasks; returns the time.
async fn run<F, Fut>(op: F) -> Result<Duration, BoxError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..QUERIES / TASKS {
                    op().await?;
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}
