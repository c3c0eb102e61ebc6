//! `wharf demo --quick` end to end: it starts its own PostgreSQL and
//! pooler, prints the comparison, writes the files, and leaves no server
//! behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Processes whose working directory or command line is inside `dir`
/// (PostgreSQL's backends run with the data directory as cwd).
fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.to_string_lossy().into_owned();
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(dir));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle));
            cwd || cmdline
        })
        .collect()
}

/// The cluster's root directory, from the line naming its data directory.
fn cluster_root(line: &str) -> Option<PathBuf> {
    let (_, rest) = line.split_once("(data directory: ")?;
    Some(Path::new(rest.trim_end_matches(')')).parent()?.to_owned())
}

fn assert_gone(root: &Path) {
    assert!(!root.exists(), "{} left behind", root.display());
    assert_eq!(
        processes_in(root),
        Vec::<u32>::new(),
        "processes left in {}",
        root.display()
    );
}

#[test]
fn the_quick_demo_measures_writes_and_cleans_up() {
    let out_dir: PathBuf =
        std::env::temp_dir().join(format!("wharf-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["demo", "--quick", "--out"])
        .arg(&out_dir)
        .output()
        .expect("run wharf demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let header = stdout
        .lines()
        .find(|l| l.starts_with("strategy "))
        .unwrap_or_else(|| panic!("no table in\n{stdout}"));
    assert!(
        header.contains("req/s") && header.contains("p99 ms"),
        "{header}"
    );
    for row in ["per-request ", "pool (", "proxy "] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} row in\n{stdout}"));
        // requests, then req/s: something was measured.
        let requests = line[16..]
            .split_whitespace()
            .next()
            .expect("a request count")
            .replace(',', "");
        assert!(requests.parse::<u64>().expect("a number") > 0, "{line}");
    }
    assert!(stdout.contains("pool-size sweep"), "{stdout}");
    assert!(stdout.contains("<- (cores x 2) + 1"), "{stdout}");

    for file in [
        "summary.json",
        "samples.csv",
        "sweep-samples.csv",
        "latency.svg",
        "sweep-throughput.svg",
        "sweep-p99.svg",
    ] {
        let path = out_dir.join(file);
        assert!(path.is_file(), "{} missing", path.display());
        assert!(
            stdout.contains(&path.display().to_string()),
            "{file} not listed in\n{stdout}"
        );
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("summary.json")).expect("summary"),
    )
    .expect("JSON");
    let strategies: Vec<&str> = summary["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["strategy"].as_str().expect("strategy"))
        .collect();
    assert_eq!(strategies, ["per-request", "pool", "proxy"]);
    for run in summary["runs"].as_array().expect("runs") {
        assert_eq!(run["errors"], 0, "{run}");
    }

    // The cluster is gone: its directory and every process that ran in it.
    let root = stdout
        .lines()
        .find_map(cluster_root)
        .unwrap_or_else(|| panic!("no data directory in\n{stdout}"));
    assert_gone(&root);
    assert!(
        stderr.contains("stopped the throwaway PostgreSQL"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn ctrl_c_stops_the_demo_and_its_server() {
    let out_dir: PathBuf =
        std::env::temp_dir().join(format!("wharf-demo-test-int-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["demo", "--out"])
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wharf demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let root = lines
        .by_ref()
        .find_map(|line| cluster_root(&line))
        .expect("the demo names its data directory");
    // Interrupt once the benchmark itself is under way.
    let pooler = lines.find(|l| l.starts_with("wharf pooler on"));
    assert!(pooler.is_some(), "the demo starts its pooler");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("the demo exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_gone(&root);
    assert!(!out_dir.exists(), "an interrupted demo writes nothing");
}

#[test]
fn missing_server_binaries_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["demo", "--quick", "--out", "/nonexistent/never-written"])
        .env("WHARF_PG_BIN", "/nonexistent/postgresql/bin")
        .output()
        .expect("run wharf demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start a throwaway PostgreSQL")
            && stderr.contains("/nonexistent/postgresql/bin"),
        "{stderr}"
    );
}
