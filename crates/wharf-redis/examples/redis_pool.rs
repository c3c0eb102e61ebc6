//! Sixty-four tasks share eight pooled Redis connections.
//!
//! ```sh
//! cargo run -p wharf-redis --example redis_pool                       # throwaway server
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p wharf-redis --example redis_pool
//! ```

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use wharf_redis::{Config, RedisConnection};
use wharf_testkit::redis::RedisServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Without REDIS_URL, a private redis-server runs until the end of main.
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = RedisServer::start()?;
            (server.url(), Some(server))
        }
    };

    let mut config = Config::from_url(url);
    config.pool.name = "example".into();
    config.pool.max_size = 8;
    config.pool.acquire_timeout = Duration::from_secs(2);
    let pool = config.create_pool()?;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let mut conn = pool.get().await?;
                bump(&mut conn, task).await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await??;
    }

    let mut conn = pool.get().await?;
    let total: u64 = conn.get("example:total").await?;
    drop(conn);
    println!(
        "{total} INCRs from 64 tasks in {:?} over {} connections",
        start.elapsed(),
        pool.metrics().created
    );
    println!("{:?}", pool.status());
    // `pool.metrics().to_prometheus()` renders all of it for a scrape.
    let metrics = pool.metrics();
    println!(
        "acquired {} times, {} timeouts",
        metrics.acquired(),
        metrics.timeouts
    );
    pool.close().await;
    Ok(())
}

async fn bump(conn: &mut RedisConnection, task: usize) -> redis::RedisResult<()> {
    let () = redis::pipe()
        .incr("example:total", 1)
        .ignore()
        .incr(format!("example:task:{task}"), 1)
        .ignore()
        .query_async(conn)
        .await?;
    Ok(())
}
