//! The HTTP endpoint: /metrics in the Prometheus text format with the
//! pgbouncer_exporter's names agreeing with the console, and /health
//! following PAUSE/RESUME and the server going away.

mod common;
#[path = "common/http.rs"]
mod http;

use std::time::{Duration, Instant};

use common::console::{console, show, CONSOLE_USERLIST};
use common::{start, Setup, TestPooler};
use prometheus_parse::Value;

async fn start_with_http() -> (TestPooler, u16) {
    let settings = format!(
        "admin_users = admin\nhttp_listen_port = {}\n",
        common::free_port()
    );
    let pooler = start(Setup {
        pgbouncer: &settings,
        userlist: CONSOLE_USERLIST,
        ..Setup::default()
    })
    .await;
    let port = pooler.http_port.expect("the HTTP endpoint listens");
    (pooler, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_console() {
    let (pooler, port) = start_with_http().await;
    let client = pooler.client().await;
    for _ in 0..15 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    for _ in 0..5 {
        client.simple_query("BEGIN").await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        client.simple_query("COMMIT").await.unwrap();
    }
    let admin = console(&pooler, "admin").await;
    let pools = show(&admin, "SHOW POOLS").await;
    let stats = show(&admin, "SHOW STATS").await;
    let (status, text) = http::get(port, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = http::parse(&text);

    // Well-formed: every sample is typed and documented, histograms
    // cumulative with +Inf equal to _count.
    assert!(
        scrape.samples.len() > 100,
        "{} samples",
        scrape.samples.len()
    );
    for s in &scrape.samples {
        let family = s
            .metric
            .strip_suffix("_sum")
            .or_else(|| s.metric.strip_suffix("_count"))
            .filter(|base| scrape.docs.contains_key(*base))
            .unwrap_or(&s.metric);
        assert!(scrape.docs.contains_key(family), "{} has no HELP", s.metric);
        if let Value::Histogram(buckets) = &s.value {
            assert!(
                buckets.windows(2).all(|w| w[0].count <= w[1].count),
                "{s:?}"
            );
            let inf = buckets.last().expect("buckets");
            assert!(inf.less_than.is_infinite());
            let labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = http::value(&scrape, &format!("{}_count", s.metric), &labels);
            assert_eq!(inf.count, count, "{}", s.metric);
        } else if family == s.metric {
            assert!(
                !matches!(s.value, Value::Untyped(_)),
                "{} untyped",
                s.metric
            );
        }
    }

    let db = [("database", "postgres")];
    let pool = [("database", "postgres"), ("user", "postgres")];
    assert_eq!(http::value(&scrape, "pgbouncer_up", &[]), 1.0);
    assert_eq!(
        http::value(
            &scrape,
            "pgbouncer_stats_sql_transactions_pooled_total",
            &db
        ),
        20.0
    );
    let stat = |col| stats.number("database", "postgres", col) as f64;
    assert_eq!(
        http::value(&scrape, "pgbouncer_stats_queries_pooled_total", &db),
        stat("total_query_count")
    );
    assert_eq!(
        http::value(&scrape, "pgbouncer_stats_received_bytes_total", &db),
        stat("total_received")
    );
    for (metric, col) in [
        ("client_active_connections", "cl_active"),
        ("client_waiting_connections", "cl_waiting"),
        ("server_active_connections", "sv_active"),
        ("server_idle_connections", "sv_idle"),
        ("server_used_connections", "sv_used"),
        ("server_login_connections", "sv_login"),
    ] {
        let console: f64 = pools
            .value2("database", "postgres", "user", "postgres", col)
            .parse()
            .unwrap();
        let exported = http::value(&scrape, &format!("pgbouncer_pools_{metric}"), &pool);
        assert_eq!(exported, console, "{metric} vs SHOW POOLS {col}");
    }
    assert_eq!(
        http::value(&scrape, "pgbouncer_pools_client_active_connections", &pool),
        1.0
    );
    // The histograms saw every transaction and assignment.
    assert_eq!(
        http::value(&scrape, "wharf_pooler_transaction_seconds_count", &pool),
        20.0
    );
    assert_eq!(
        http::value(&scrape, "wharf_pooler_client_wait_seconds_count", &pool),
        stat("total_server_assignment_count")
    );
    let engine = [("pool", "postgres/postgres")];
    assert!(http::value(&scrape, "wharf_pool_connections_created_total", &engine) >= 1.0);
    assert!(http::value(&scrape, "wharf_runtime_workers", &[]) >= 1.0);
    pooler.stop().await;
}

async fn health(port: u16) -> (u16, serde_json::Value) {
    let (status, body) = http::get(port, "/health").await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// Polls /health until it answers `want`, for up to 30 s, running
/// `poke` between tries.
async fn health_becomes<F: std::future::Future>(
    port: u16,
    want: u16,
    mut poke: impl FnMut() -> F,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, json) = health(port).await;
        if status == want {
            return json;
        }
        assert!(Instant::now() < deadline, "/health stays {status}: {json}");
        poke().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_pause_and_the_server() {
    let (mut pooler, port) = start_with_http().await;
    pooler.serves_a_new_client().await;
    let (status, json) = health(port).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["status"], "ok");
    assert_eq!(json["pools"][0]["database"], "postgres");
    assert_eq!(json["pools"][0]["reachable"], true);

    let admin = console(&pooler, "admin").await;
    admin.simple_query("PAUSE postgres").await.unwrap();
    let (status, json) = health(port).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["pools"][0]["paused"], true);
    admin.simple_query("RESUME postgres").await.unwrap();
    assert_eq!(health(port).await.0, 200);

    pooler.cluster.stop().expect("PostgreSQL stops");
    let url = pooler.url("postgres", "postgres", "postgres");
    let try_query = || {
        let url = url.clone();
        async move {
            if let Ok(Ok((client, conn))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_postgres::connect(&url, tokio_postgres::NoTls),
            )
            .await
            {
                tokio::spawn(conn);
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
                        .await;
            }
        }
    };
    let json = health_becomes(port, 503, try_query).await;
    assert_eq!(json["pools"][0]["reachable"], false, "{json}");
    assert!(json["pools"][0]["last_error"].is_string(), "{json}");

    pooler
        .cluster
        .start_again()
        .expect("PostgreSQL starts again");
    health_becomes(port, 200, try_query).await;
    pooler.stop().await;
}
