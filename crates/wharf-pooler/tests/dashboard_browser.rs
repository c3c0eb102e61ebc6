//! The dashboard in a real browser: headless Chromium loads `/` while
//! clients run transactions, and the page it renders has a chart per pool
//! with plotted points and the figures /metrics reports.

mod common;
#[path = "common/http.rs"]
mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start, Setup};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs Chromium headless on `url` with `extra` arguments; its stdout.
fn chromium(url: &str, profile: &Path, extra: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install the Debian package `chromium` (apt-get install chromium)"
    );
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=6000")
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The attributes of every start tag in `html` (a rough reader, enough for
/// the DOM Chromium serializes: attribute values are always quoted).
fn tags(html: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut out = Vec::new();
    for chunk in html.split('<').skip(1) {
        let Some(end) = chunk.find('>') else { continue };
        let inner = &chunk[..end];
        let (name, mut rest) = inner.split_once(' ').unwrap_or((inner, ""));
        let mut attrs = HashMap::new();
        while let Some(eq) = rest.find("=\"") {
            let key = rest[..eq].trim().to_owned();
            let after = &rest[eq + 2..];
            let Some(close) = after.find('"') else { break };
            attrs.insert(key, after[..close].replace("&amp;", "&"));
            rest = &after[close + 1..];
        }
        out.push((name.to_owned(), attrs));
    }
    out
}

fn figure(tags: &[(String, HashMap<String, String>)], metric: &str, pool: &str) -> f64 {
    let values: Vec<f64> = tags
        .iter()
        .filter(|(_, a)| {
            a.get("data-metric").map(String::as_str) == Some(metric)
                && a.get("data-pool").map(String::as_str) == Some(pool)
        })
        .filter_map(|(_, a)| a.get("data-value")?.parse().ok())
        .collect();
    assert!(!values.is_empty(), "no figure {metric} for {pool}");
    values[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_charts_and_the_exported_figures() {
    let settings = format!("http_listen_port = {}\n", common::free_port());
    let pooler = start(Setup {
        pgbouncer: &settings,
        ..Setup::default()
    })
    .await;
    let port = pooler.http_port.expect("the HTTP endpoint listens");
    let running = Arc::new(AtomicBool::new(true));
    let mut load = Vec::new();
    for i in 0..4 {
        let client = pooler.client().await;
        let running = running.clone();
        load.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                if i % 2 == 0 {
                    client.simple_query("SELECT 1").await.unwrap();
                } else {
                    client
                        .batch_execute("BEGIN; SELECT pg_sleep(0.005); COMMIT")
                        .await
                        .unwrap();
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let url = format!("http://127.0.0.1:{port}/");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let screenshot = dir.join("wharf-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    {
        let (url, dir, shot) = (url.clone(), dir.clone(), screenshot.clone());
        tokio::task::spawn_blocking(move || {
            let shot = format!("--screenshot={}", shot.display());
            chromium(
                &url,
                &dir.join("chromium-shot"),
                &[&shot, "--window-size=1400,1000"],
            )
        })
        .await
        .expect("screenshot task");
    }
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());

    // Figures that no longer move: load stopped, its clients idle.
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let dom = {
        let (url, dir) = (url.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            chromium(&url, &dir.join("chromium-dom"), &["--dump-dom"])
        })
        .await
        .expect("dump-dom task")
    };
    let (_, metrics) = http::get(port, "/metrics").await;
    let scrape = http::parse(&metrics);
    let tags = tags(&dom);
    let pool = "postgres/postgres";
    let labels = [("database", "postgres"), ("user", "postgres")];

    for chart in ["clients", "servers", "tps", "wait"] {
        let svg = tags
            .iter()
            .position(|(name, a)| {
                name == "svg"
                    && a.get("data-chart").map(String::as_str) == Some(chart)
                    && a.get("data-pool").map(String::as_str) == Some(pool)
            })
            .unwrap_or_else(|| panic!("no {chart} chart in {dom}"));
        let points: Vec<usize> = tags[svg..]
            .iter()
            .skip(1)
            .take_while(|(name, _)| name != "svg")
            .filter(|(name, _)| name == "polyline")
            .filter_map(|(_, a)| a.get("data-points")?.parse().ok())
            .collect();
        assert!(!points.is_empty(), "{chart} chart has no line");
        assert!(points.iter().all(|&n| n >= 3), "{chart} points: {points:?}");
    }
    let xacts = http::value(
        &scrape,
        "pgbouncer_stats_sql_transactions_pooled_total",
        &[("database", "postgres")],
    );
    assert!(xacts > 100.0, "{xacts} transactions");
    assert_eq!(figure(&tags, "xacts_total", pool), xacts);
    assert_eq!(figure(&tags, "xacts_total", "*"), xacts);
    assert_eq!(
        figure(&tags, "queries_total", pool),
        http::value(
            &scrape,
            "pgbouncer_stats_queries_pooled_total",
            &[("database", "postgres")]
        )
    );
    for (metric, exported) in [
        ("cl_active", "pgbouncer_pools_client_active_connections"),
        ("cl_waiting", "pgbouncer_pools_client_waiting_connections"),
        ("sv_active", "pgbouncer_pools_server_active_connections"),
    ] {
        assert_eq!(
            figure(&tags, metric, pool),
            http::value(&scrape, exported, &labels),
            "{metric}"
        );
    }
    let idle = http::value(&scrape, "pgbouncer_pools_server_idle_connections", &labels)
        + http::value(&scrape, "pgbouncer_pools_server_used_connections", &labels);
    assert_eq!(figure(&tags, "sv_idle", pool), idle);
    assert!(dom.contains("data-alert="), "no alert area");
    pooler.stop().await;
}
