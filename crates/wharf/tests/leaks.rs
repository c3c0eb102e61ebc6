//! Leak detection: a connection held past `leak_detection_threshold` is
//! reported once, at WARN, with the call site of its `get()` and how long it
//! was held, and counted in `metrics().leaks`.

mod common;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::ScriptedManager;
use parking_lot::Mutex;
use tokio::time::sleep;
use tracing_subscriber::fmt::MakeWriter;
use wharf::Pool;

const LEAK: &str = "possible connection leak";

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().clone()).expect("log output is UTF-8")
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Routes this thread's tracing output (INFO and up) into a buffer. The
/// tests run on a current-thread runtime, so the pool's background tasks
/// log into it too.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

fn pool_with_threshold(threshold: Option<Duration>) -> Pool<ScriptedManager> {
    let (manager, _script) = ScriptedManager::new();
    Pool::builder(manager)
        .name("leaky")
        .max_size(4)
        .leak_detection_threshold(threshold)
        .maintenance_interval(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn call_site(line: u32) -> String {
    format!("{}:{}:", file!(), line)
}

#[tokio::test(start_paused = true)]
async fn a_connection_held_past_the_threshold_is_reported_once_with_its_call_site() {
    let (logs, _guard) = capture();
    let pool = pool_with_threshold(Some(Duration::from_secs(5)));

    let line = line!() + 1;
    let conn = pool.get().await.unwrap();
    sleep(Duration::from_millis(4500)).await;
    assert!(logs.lines_with(LEAK).is_empty(), "reported early");
    assert_eq!(pool.metrics().leaks, 0);

    sleep(Duration::from_secs(30)).await;
    let reports = logs.lines_with(LEAK);
    assert_eq!(reports.len(), 1, "reported more than once: {reports:#?}");
    let report = &reports[0];
    assert!(report.contains(" WARN "), "not at WARN: {report}");
    assert!(
        report.contains(&format!("checked out at {}", call_site(line))),
        "call site {} missing: {report}",
        call_site(line)
    );
    assert!(report.contains("held for 5s"), "{report}");
    assert!(report.contains("leaky"), "pool name missing: {report}");
    assert_eq!(pool.metrics().leaks, 1);

    // Its return is noted (at INFO), and it is not reported again.
    drop(conn);
    let returned = logs.lines_with("reported as leaked was returned");
    assert_eq!(returned.len(), 1);
    assert!(returned[0].contains(&call_site(line)), "{}", returned[0]);
    assert!(returned[0].contains("held_for=34.500s"), "{}", returned[0]);
    sleep(Duration::from_secs(30)).await;
    assert_eq!(logs.lines_with(LEAK).len(), 1);
    assert_eq!(pool.metrics().leaks, 1);
}

#[tokio::test(start_paused = true)]
async fn each_leak_names_its_own_call_site() {
    let (logs, _guard) = capture();
    let pool = pool_with_threshold(Some(Duration::from_secs(2)));

    let first_line = line!() + 1;
    let first = pool.get().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let second_line = line!() + 1;
    let second = pool.get_timeout(Duration::from_secs(1)).await.unwrap();
    sleep(Duration::from_secs(10)).await;

    let reports = logs.lines_with(LEAK);
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let first_report = call_site(first_line);
    let second_report = call_site(second_line);
    assert!(reports[0].contains(&first_report), "{reports:#?}");
    assert!(reports[0].contains("held for 2s"), "{reports:#?}");
    assert!(reports[1].contains(&second_report), "{reports:#?}");
    assert!(reports[1].contains("held for 2s"), "{reports:#?}");
    assert_eq!(pool.metrics().leaks, 2);
    drop((first, second));
}

#[tokio::test(start_paused = true)]
async fn connections_returned_under_the_threshold_are_not_reported() {
    let (logs, _guard) = capture();
    let pool = pool_with_threshold(Some(Duration::from_secs(5)));
    for _ in 0..10 {
        let conn = pool.get().await.unwrap();
        sleep(Duration::from_millis(4900)).await;
        drop(conn);
    }
    sleep(Duration::from_secs(60)).await;
    assert!(logs.lines_with(LEAK).is_empty(), "{}", logs.text());
    assert_eq!(pool.metrics().leaks, 0);
}

#[tokio::test(start_paused = true)]
async fn no_threshold_no_reports() {
    let (logs, _guard) = capture();
    let pool = pool_with_threshold(None);
    let conn = pool.get().await.unwrap();
    sleep(Duration::from_secs(3600)).await;
    drop(conn);
    assert!(!logs.text().contains("leak"), "{}", logs.text());
    assert_eq!(pool.metrics().leaks, 0);

    // The capture itself works: the same subscriber sees a threshold pool's
    // report.
    let pool = pool_with_threshold(Some(Duration::from_secs(1)));
    let _conn = pool.get().await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(logs.lines_with(LEAK).len(), 1);
}
