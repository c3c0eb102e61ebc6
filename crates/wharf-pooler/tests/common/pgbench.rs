//! pgbench as load and as a witness that no transaction failed.
//!
//! Self-contained (std and tokio only) so that wharf-cli's tests can use it
//! too, through `#[path]`.
// Each test binary uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `pgbench -i` straight against the server on `server_port` (not through a
/// pooler), asserting it worked.
pub fn init(pgbench: &Path, server_port: u16) {
    let port = server_port.to_string();
    let args = [
        "-i",
        "-q",
        "-s",
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "postgres",
    ];
    let output = command(pgbench, &args).output().expect("pgbench -i runs");
    assert!(
        output.status.success(),
        "pgbench -i: {}",
        text(&output.stderr)
    );
}

/// Runs pgbench as `postgres` against database `postgres` on
/// `127.0.0.1:port` with `extra` arguments, skipping its vacuum (`-n`).
pub fn run(pgbench: &Path, port: u16, extra: &[&str]) -> Output {
    command(pgbench, &bench_args(port, extra))
        .output()
        .expect("pgbench runs")
}

/// [`run`] on tokio's blocking pool, for load while the test acts.
pub fn spawn(pgbench: PathBuf, port: u16, extra: &[&str]) -> tokio::task::JoinHandle<Output> {
    let args = bench_args(port, extra);
    tokio::task::spawn_blocking(move || command(&pgbench, &args).output().expect("pgbench runs"))
}

/// Asserts pgbench succeeded and no transaction failed.
pub fn assert_clean(output: &Output) {
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "pgbench failed\n{out}\n{err}");
    assert!(
        out.contains("number of failed transactions: 0 "),
        "pgbench: failed transactions\n{out}\n{err}"
    );
}

/// [`assert_clean`], and also that pgbench reported no error at all (a
/// retried or ignored one would not fail a transaction).
pub fn assert_error_free(output: &Output) {
    assert_clean(output);
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(
        !format!("{out}{err}").to_lowercase().contains("error"),
        "pgbench reported errors\n{out}\n{err}"
    );
}

fn bench_args(port: u16, extra: &[&str]) -> Vec<String> {
    let port = port.to_string();
    ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-n"]
        .iter()
        .chain(extra)
        .chain(&["postgres"])
        .map(|arg| arg.to_string())
        .collect()
}

fn command(pgbench: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut command = Command::new(pgbench);
    command
        .args(args)
        .env("PGPASSWORD", "postgres")
        // A hung login fails the test instead of stalling it.
        .env("PGCONNECT_TIMEOUT", "10");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
