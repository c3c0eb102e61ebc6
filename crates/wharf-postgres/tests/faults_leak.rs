//! A task holds a real PostgreSQL connection past
//! `leak_detection_threshold`: the pool reports it once, at WARN, naming the
//! line of this file that took it, and counts it in `metrics().leaks`;
//! connections given back in time are not reported.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_settled, cluster, eventually, pg_config};
use tokio::time::sleep;
use tracing_subscriber::fmt::MakeWriter;
use wharf_postgres::{PgManager, Pool, PoolExt};
use wharf_testkit::PgCluster;

const APP: &str = "faults_leak";
const THRESHOLD: Duration = Duration::from_millis(300);
const LEAK: &str = "possible connection leak";

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .expect("log output is UTF-8")
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Routes this thread's tracing output into a buffer. The runtime is
/// current-thread, so the pool's maintenance task, which reports leaks,
/// logs into it too.
fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_connection_held_past_the_threshold_is_reported_with_its_call_site() {
    let (logs, _guard) = capture();
    let cluster = cluster(PgCluster::builder()).await;
    let pool: Pool = Pool::builder(PgManager::new(pg_config(&cluster, APP)))
        .name(APP)
        .max_size(4)
        .leak_detection_threshold(THRESHOLD)
        .maintenance_interval(Duration::from_millis(50))
        .build()
        .unwrap();

    // Given back in time, over and over: never reported.
    for _ in 0..20 {
        pool.query("SELECT 1", &[]).await.unwrap();
        let client = pool.get().await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        drop(client);
    }
    sleep(THRESHOLD * 2).await;
    assert!(
        logs.lines_with(LEAK).is_empty(),
        "{:?}",
        logs.lines_with(LEAK)
    );
    assert_eq!(pool.metrics().leaks, 0);

    let line = line!() + 1;
    let held = pool.get().await.unwrap();
    let held_pid: i32 = held
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let call_site = format!("faults_leak.rs:{line}:");

    let reported = eventually(THRESHOLD * 10, || pool.metrics().leaks == 1).await;
    let reports = logs.lines_with(LEAK);
    eprintln!("faults_leak: {reports:#?}");
    assert!(reported, "not reported within {:?}", THRESHOLD * 10);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert!(report.contains(" WARN "), "not at WARN: {report}");
    assert!(
        report.contains(&call_site),
        "call site {call_site} missing: {report}"
    );
    assert!(report.contains(APP), "pool name missing: {report}");

    // Held on: the report is not repeated, and the connection still works.
    sleep(THRESHOLD * 3).await;
    assert_eq!(logs.lines_with(LEAK).len(), 1);
    assert_eq!(pool.metrics().leaks, 1);
    assert_eq!(pool.status().in_use, 1);
    let pid: i32 = held
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, held_pid);

    // Given back at last: noted, and the connection is reused, not lost.
    drop(held);
    let returned = logs.lines_with("reported as leaked was returned");
    assert_eq!(returned.len(), 1, "{returned:#?}");
    assert!(returned[0].contains(&call_site), "{}", returned[0]);
    let row = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        held_pid,
        "the returned connection was not reused"
    );

    let m = pool.metrics();
    let status = assert_settled(&pool).await;
    eprintln!(
        "faults_leak: leaks reported {}, at {call_site}; afterwards {status:?}",
        m.leaks
    );
    assert_eq!(m.leaks, 1);
    assert_eq!(m.closed_total(), 0, "{m:?}");
    pool.close().await;
}
