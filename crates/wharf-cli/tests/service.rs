//! `wharf serve` as a service manager sees it: logs on standard error,
//! without colour when that is not a terminal.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A directory for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("wharf-cli-service-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    /// A configuration that needs no PostgreSQL: nothing connects to its
    /// database.
    fn ini(&self, extra: &str) -> PathBuf {
        let path = self.0.join("pgbouncer.ini");
        std::fs::write(
            &path,
            format!(
                "[databases]\napp = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = /dev/null\n{extra}\n",
                port = free_port()
            ),
        )
        .expect("ini");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops a child left running by a failed assertion.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = Dir::new("ansi");
    let ini = dir.ini("");
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("serve")
            .arg(&ini)
            // Logs go to standard error, as PgBouncer's: a reader that
            // only sees standard output would never see "listening".
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wharf"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a log line");
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let log = seen.join("\n");
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains(" INFO "), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}
