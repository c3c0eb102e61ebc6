//! `wharf bench` against a throwaway PostgreSQL: exact request counts,
//! error accounting, the workloads, and the files it writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wharf_testkit::PgCluster;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wharf-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run wharf bench")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

struct Row {
    strategy: String,
    pool_size: String,
    client: u32,
    start_us: u64,
    ok: bool,
}

fn read_samples(path: &Path) -> Vec<Row> {
    let csv = std::fs::read_to_string(path).expect("samples CSV");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("strategy,pool_size,client,start_us,latency_us,ok")
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "{line}");
            Row {
                strategy: f[0].to_owned(),
                pool_size: f[1].to_owned(),
                client: f[2].parse().expect("client"),
                start_us: f[3].parse().expect("start_us"),
                ok: match f[5] {
                    "1" => true,
                    "0" => false,
                    other => panic!("ok column {other:?}"),
                },
            }
        })
        .collect()
}

fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

/// The `<polyline class="series">` elements of an SVG file (which must
/// parse as XML): their names and point counts.
fn series(path: &Path) -> Vec<(String, usize)> {
    let svg = std::fs::read_to_string(path).expect("SVG file");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(
        doc.descendants().any(|n| n.has_tag_name("title")),
        "a title"
    );
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("class") == Some("series"))
        .map(|n| {
            let name = n.attribute("data-series").expect("data-series").to_owned();
            let points = n.attribute("points").expect("points");
            for point in points.split_whitespace() {
                let (x, y) = point.split_once(',').expect("x,y");
                assert!(
                    x.parse::<f64>().is_ok() && y.parse::<f64>().is_ok(),
                    "{point}"
                );
            }
            (name, points.split_whitespace().count())
        })
        .collect()
}

#[test]
fn every_strategy_runs_exactly_the_requests_asked_for() {
    let pg = PgCluster::start().expect("throwaway PostgreSQL");
    let url = pg.url("postgres");
    let dir = out_dir("counts");
    let out = bench(&[
        &url,
        "--strategy",
        "per-request,pool,proxy",
        "--proxy-url",
        &url,
        "-t",
        "20",
        "-c",
        "4",
        "--pool-size",
        "2",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for row in ["per-request ", "pool (2) ", "proxy "] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "no {row:?} row in\n{stdout}"
        );
    }

    let rows = read_samples(&dir.join("samples.csv"));
    assert_eq!(rows.len(), 3 * 80);
    let mut per: BTreeMap<(String, String, u32), usize> = BTreeMap::new();
    for row in &rows {
        assert!(row.ok);
        *per.entry((row.strategy.clone(), row.pool_size.clone(), row.client))
            .or_default() += 1;
    }
    let expected: BTreeMap<(String, String, u32), usize> =
        [("per-request", ""), ("pool", "2"), ("proxy", "")]
            .into_iter()
            .flat_map(|(s, p)| (0..4).map(move |c| ((s.to_owned(), p.to_owned(), c), 20)))
            .collect();
    assert_eq!(per, expected);

    let json = summary(&dir);
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["requests"], 80, "{run}");
        assert_eq!(run["ok"], 80, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
        assert!(run["latency_ms"]["p99"].as_f64().is_some(), "{run}");
    }
    assert_eq!(runs[0]["connects"], 80);
    assert_eq!(runs[1]["connects"], 2);
    assert_eq!(runs[1]["pool_size"], 2);
    assert_eq!(json["transactions_per_client"], 20);
    assert!(json["sweep"].is_null());
    // Never the password, in the report or the summary.
    assert!(!stdout.contains(":postgres@"), "{stdout}");
    assert!(!json.to_string().contains(":postgres@"), "{json}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_wrong_password_is_counted_as_errors_and_fails_the_run() {
    let pg = PgCluster::start().expect("throwaway PostgreSQL");
    let wrong = format!("postgres://postgres:wrong@127.0.0.1:{}/postgres", pg.port());
    let dir = out_dir("wrong-password");
    let out = bench(&[
        &pg.url("postgres"),
        "--strategy",
        "proxy",
        "--proxy-url",
        &wrong,
        "-t",
        "5",
        "-c",
        "2",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("password authentication failed for user \"postgres\""),
        "{stdout}"
    );
    assert!(stderr.contains("10 requests failed"), "{stderr}");
    let rows = read_samples(&dir.join("samples.csv"));
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| !r.ok));
    let json = summary(&dir);
    assert_eq!(json["runs"][0]["errors"], 10);
    assert_eq!(json["runs"][0]["ok"], 0);
    assert_eq!(json["runs"][0]["error_messages"][0]["count"], 10);
    assert!(json["runs"][0]["latency_ms"].is_null());

    // The database itself with a wrong password: nothing can be prepared.
    let out = bench(&[&wrong, "-t", "1", "-c", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("preparing the workload")
            && stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong@"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_pool_the_server_cannot_fill_is_reported_with_the_reason() {
    let pg = PgCluster::builder()
        .max_connections(6)
        .start()
        .expect("throwaway PostgreSQL");
    let out = bench(&[
        &pg.url("postgres"),
        "--strategy",
        "pool",
        "--pool-size",
        "20",
        "-t",
        "1",
        "-c",
        "1",
        "--connect-timeout",
        "2s",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("pool (20): could not start: the pool could not open its 20 connections")
            && stdout.contains("too many clients"),
        "{stdout}"
    );
    assert!(stderr.contains("1 request failed"), "{stderr}");
}

#[test]
fn a_sweep_writes_charts_with_one_line_per_series() {
    let pg = PgCluster::start().expect("throwaway PostgreSQL");
    let dir = out_dir("sweep");
    let out = bench(&[
        &pg.url("postgres"),
        "--strategy",
        "per-request,pool",
        "--sweep-pool-size",
        "4,1,2",
        "-t",
        "5",
        "-c",
        "4",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pool-size sweep"), "{stdout}");
    assert!(stdout.contains("<- best throughput"), "{stdout}");
    assert!(stdout.contains("(cores x 2) + 1 = "), "{stdout}");

    for chart in ["sweep-throughput.svg", "sweep-p99.svg"] {
        let lines = series(&dir.join(chart));
        assert_eq!(lines, [("in-process wharf pool".to_owned(), 3)], "{chart}");
    }
    let lines = series(&dir.join("latency.svg"));
    assert_eq!(
        lines,
        [("per-request".to_owned(), 31), ("pool (10)".to_owned(), 31)]
    );

    let rows = read_samples(&dir.join("sweep-samples.csv"));
    assert_eq!(rows.len(), 3 * 20);
    let sizes: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.pool_size.as_str()).collect();
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), ["1", "2", "4"]);

    let json = summary(&dir);
    let sweep = &json["sweep"];
    let sizes: Vec<u64> = sweep["runs"]
        .as_array()
        .expect("sweep runs")
        .iter()
        .map(|r| r["pool_size"].as_u64().expect("pool_size"))
        .collect();
    assert_eq!(sizes, [1, 2, 4]);
    let best = sweep["best_pool_size"].as_u64().expect("a best size");
    assert!(sizes.contains(&best));
    let cores = json["host_cores"].as_u64().expect("host_cores");
    assert_eq!(sweep["rule_of_thumb_pool_size"], cores * 2 + 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_workloads_do_what_they_say() {
    let pg = PgCluster::start().expect("throwaway PostgreSQL");
    let url = pg.url("postgres");

    // tpcb: every transaction commits its history row.
    let out = bench(&[
        &url,
        "--workload",
        "tpcb",
        "--strategy",
        "pool",
        "-t",
        "10",
        "-c",
        "3",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM wharf_bench_history")
            .expect("psql"),
        "30"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT (SELECT sum(abalance) FROM wharf_bench_accounts) \
             = (SELECT bbalance FROM wharf_bench_branches)"
        )
        .expect("psql"),
        "t"
    );

    // Custom SQL runs once per request.
    pg.psql("postgres", "CREATE TABLE hits (n int)")
        .expect("psql");
    let out = bench(&[
        &url,
        "--sql",
        "INSERT INTO hits VALUES (1)",
        "--strategy",
        "per-request,pool",
        "-t",
        "4",
        "-c",
        "2",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM hits")
            .expect("psql"),
        "16"
    );

    // Bad SQL is an error per request, with the server's message.
    let out = bench(&[
        &url,
        "--sql",
        "SELEC 1",
        "--strategy",
        "pool",
        "-t",
        "3",
        "-c",
        "2",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("6 x ERROR: syntax error"), "{stdout}");

    // sleep: each request holds its connection at least that long.
    let dir = out_dir("sleep");
    let out = bench(&[
        &url,
        "--workload",
        "sleep:0.02",
        "--strategy",
        "pool",
        "-t",
        "2",
        "-c",
        "2",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let json = summary(&dir);
    let p50 = json["runs"][0]["latency_ms"]["p50"].as_f64().expect("p50");
    assert!(p50 >= 20.0, "p50 {p50} ms below the 20 ms sleep");
    assert_eq!(json["workload"], "sleep:0.02");

    // A timed run: requests start only within the duration.
    let dir2 = out_dir("timed");
    let out = bench(&[
        &url,
        "-T",
        "300ms",
        "-c",
        "2",
        "--strategy",
        "pool",
        "--pool-size",
        "1",
        "--out",
        dir2.to_str().expect("utf-8 path"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rows = read_samples(&dir2.join("samples.csv"));
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.ok && r.start_us < 300_000));
    assert!(rows.iter().any(|r| r.client == 1));
    assert_eq!(summary(&dir2)["duration_s"], 0.3);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn bad_command_lines_are_refused_with_a_reason() {
    let url = "postgres://app:hunter2@127.0.0.1:1/app";
    let out = bench(&[url, "--strategy", "proxy"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--proxy-url"), "{stderr}");

    let out = bench(&[url, "-T", "1s", "-t", "5"]);
    assert_eq!(out.status.code(), Some(2));

    let out = bench(&[url, "--workload", "sleep:forever"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("sleep:0.05"), "{stderr}");

    let out = bench(&["postgres://app:hunter2@/app", "-t", "1"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no host"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // Nothing listens on port 1: the connect error is reported.
    let out = bench(&[url, "-t", "1", "--connect-timeout", "2s"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to app@127.0.0.1:1/app"),
        "{stderr}"
    );
}
