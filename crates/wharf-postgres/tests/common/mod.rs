//! Shared by this crate's integration tests: throwaway clusters, the
//! cluster's blocking lifecycle steps run off the runtime, pools tagged with
//! an application name, what the server says about their backends, and a
//! manager that records every connect attempt the pool makes.

// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::error::{DbError, SqlState};
use wharf_postgres::{PgManager, Pool};
use wharf_testkit::{PgCluster, PgClusterBuilder};

/// Starts a cluster without blocking the runtime.
pub async fn cluster(builder: PgClusterBuilder) -> PgCluster {
    tokio::task::spawn_blocking(move || builder.start())
        .await
        .expect("cluster start task")
        .expect("start a throwaway PostgreSQL")
}

/// Runs a blocking lifecycle step (stop, start_again) off the runtime's
/// threads, so the pool keeps working meanwhile.
pub async fn lifecycle(
    mut cluster: PgCluster,
    step: fn(&mut PgCluster) -> Result<(), wharf_testkit::Error>,
) -> PgCluster {
    tokio::task::spawn_blocking(move || {
        step(&mut cluster).expect("cluster lifecycle step");
        cluster
    })
    .await
    .expect("lifecycle task")
}

/// Client settings for the superuser, tagged with `app` so the pool's
/// backends can be found in `pg_stat_activity`.
pub fn pg_config(cluster: &PgCluster, app: &str) -> tokio_postgres::Config {
    let mut config: tokio_postgres::Config = cluster.url("postgres").parse().expect("cluster URL");
    config.application_name(app);
    config
}

pub fn psql(cluster: &PgCluster, sql: &str) -> String {
    cluster.psql("postgres", sql).expect("psql")
}

/// Server-side sessions opened with `application_name = app`.
pub fn backends(cluster: &PgCluster, app: &str) -> usize {
    psql(
        cluster,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"),
    )
    .parse()
    .expect("a count")
}

/// A pool whose connections carry `application_name = app`, so the tests
/// can find their backends in `pg_stat_activity`.
pub fn pool(manager: PgManager, app: &str, max_size: usize) -> Pool {
    let set_name = format!("SET application_name = '{app}'");
    Pool::builder(manager)
        .max_size(max_size)
        .acquire_timeout(Duration::from_secs(5))
        .on_connect(move |client| {
            let set_name = set_name.clone();
            Box::pin(async move {
                client.batch_execute(&set_name).await?;
                Ok(())
            })
        })
        .build()
        .expect("build the pool")
}

/// The `state` of every backend serving `app`.
pub fn backend_states(cluster: &PgCluster, app: &str) -> Vec<String> {
    let out = psql(
        cluster,
        &format!(
            "SELECT state FROM pg_stat_activity WHERE application_name = '{app}' ORDER BY pid"
        ),
    );
    out.lines().map(str::to_owned).collect()
}

/// Waits (up to 10 s) until the backends serving `app` are in exactly
/// `expected` states, and returns what it last saw.
pub async fn await_backend_states(
    cluster: &PgCluster,
    app: &str,
    expected: &[&str],
) -> Vec<String> {
    let mut states = Vec::new();
    eventually(Duration::from_secs(10), || {
        states = backend_states(cluster, app);
        states == expected
    })
    .await;
    states
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns
/// whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that the pool holds no connection for anyone and that every
/// connection it counts is idle: nothing leaked by the fault.
pub async fn assert_settled<M: wharf::Manager>(pool: &wharf::Pool<M>) -> wharf::Status {
    // A connect started for a waiter that has since given up may still be
    // finishing; it lands in the idle list.
    let settled = eventually(Duration::from_secs(5), || {
        let s = pool.status();
        s.in_use == 0 && s.waiting == 0 && s.size == s.idle
    })
    .await;
    let status = pool.status();
    assert!(settled, "pool did not settle: {status:?}");
    assert!(status.size <= status.max_size, "{status:?}");
    let m = pool.metrics();
    assert_eq!(
        m.created - m.closed_total(),
        status.size as u64,
        "opened minus closed should be what the pool holds: {m:?}"
    );
    status
}

/// The times at which a [`Recording`] manager was asked to connect.
#[derive(Clone, Default)]
pub struct Attempts(Arc<Mutex<Vec<Instant>>>);

impl Attempts {
    fn record(&self) {
        self.0.lock().unwrap().push(Instant::now());
    }

    /// The attempts made in `[from, to]`, in order.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| (from..=to).contains(t))
            .collect()
    }

    pub fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// The most attempts that fall within any window of length `window`.
pub fn densest(attempts: &[Instant], window: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..attempts.len() {
        while attempts[end] - attempts[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// The gaps between consecutive attempts.
pub fn gaps(attempts: &[Instant]) -> Vec<Duration> {
    attempts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The adapter's manager, noting the time of every connect attempt: the
/// pool's backoff is only visible from here.
pub struct Recording {
    inner: PgManager,
    attempts: Attempts,
}

impl Recording {
    pub fn new(inner: PgManager) -> (Self, Attempts) {
        let attempts = Attempts::default();
        (
            Self {
                inner,
                attempts: attempts.clone(),
            },
            attempts,
        )
    }
}

impl wharf::Manager for Recording {
    type Connection = <PgManager as wharf::Manager>::Connection;
    type Error = <PgManager as wharf::Manager>::Error;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        self.attempts.record();
        self.inner.connect().await
    }

    async fn check(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        self.inner.check(conn).await
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        self.inner.has_broken(conn)
    }
}

/// The SQLSTATE of the first PostgreSQL error in `error`'s source chain.
pub fn sqlstate(error: &(dyn StdError + 'static)) -> Option<SqlState> {
    let mut next = Some(error);
    while let Some(error) = next {
        // A transparent wrapper hands out its inner error's source, so the
        // server's report itself may be the first thing seen.
        if let Some(db) = error.downcast_ref::<DbError>() {
            return Some(db.code().clone());
        }
        if let Some(code) = error
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
        {
            return Some(code.clone());
        }
        next = error.source();
    }
    None
}
