//! A primary and its streaming replicas as one [`ReplicaSet`]: reads on the
//! least busy replica that is connected and at most `max_lag` behind,
//! writes on the primary, and a write read back on the primary until the
//! replicas have it. Each member's probed role and lag are printed.
//!
//! ```sh
//! PRIMARY_URL=postgres://app:secret@db-primary/app \
//! REPLICA_URLS=postgres://app:secret@db-replica-1/app,postgres://app:secret@db-replica-2/app \
//!     cargo run -p wharf-postgres --example replicas
//! ```
//!
//! Without replicas (`REPLICA_URLS` unset) every read goes to the primary.

use std::process::ExitCode;
use std::time::Duration;

use wharf_postgres::{PgManager, Pool, ReplicaSet};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Ok(primary) = std::env::var("PRIMARY_URL") else {
        eprintln!(
            "Set PRIMARY_URL to a PostgreSQL primary and REPLICA_URLS to its replicas \
             (comma-separated), e.g.\n\n    PRIMARY_URL=postgres://app@db-primary/app \
             REPLICA_URLS=postgres://app@db-replica/app cargo run -p wharf-postgres --example replicas"
        );
        return ExitCode::from(2);
    };
    let replicas = std::env::var("REPLICA_URLS").unwrap_or_default();
    match run(&primary, replicas.split(',').filter(|url| !url.is_empty())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn pool(url: &str, name: String) -> Result<Pool, Box<dyn std::error::Error>> {
    Ok(Pool::builder(PgManager::from_url(url)?)
        .name(name)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(2))
        // A replica that is down answers at once, and the read moves on.
        .fail_fast(true)
        .build()?)
}

async fn run<'a>(
    primary: &str,
    replicas: impl Iterator<Item = &'a str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = ReplicaSet::builder(pool(primary, "primary".to_owned())?)
        .name("app")
        .max_lag(Duration::from_secs(2))
        .probe_interval(Duration::from_millis(500));
    for (n, url) in replicas.enumerate() {
        builder = builder.replica(pool(url, format!("replica-{}", n + 1))?);
    }
    let set = builder.build()?;
    // Replicas take reads once probed; don't wait for the background task.
    set.probe().await;
    for member in std::iter::once(&set.status().primary).chain(&set.status().replicas) {
        println!(
            "{:<10} {:?} role {:?}{}",
            member.name,
            member.state,
            member.role,
            member
                .last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }

    let conn = set.replica().await?;
    let row = conn
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await?;
    let (port, standby): (Option<i32>, bool) = (row.get(0), row.get(1));
    println!("a read went to port {port:?} (standby: {standby})");
    drop(conn);

    // A write, then a read that must see it.
    let conn = set.primary().await?;
    let row = conn.query_one("SELECT txid_current()::text", &[]).await?;
    let txid: String = row.get(0);
    drop(conn);
    let written = set.wrote();
    let conn = set.replica_after(&written).await?;
    let standby: bool = conn
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    println!("after writing in transaction {txid}, the next read went to a standby: {standby}");
    drop(conn);

    let status = set.status();
    println!(
        "reads: {} on replicas, {} fell back to the primary, {} read-your-writes on the primary",
        status.replica_reads, status.primary_fallbacks, status.fresh_reads
    );
    set.close().await;
    Ok(())
}
