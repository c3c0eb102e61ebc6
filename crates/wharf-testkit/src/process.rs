//! The life cycle every throwaway server shares, whatever it serves:
//! picking a port, spawning with a log, waiting for readiness, stopping,
//! killing and removing its directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::os;
use crate::{io_context, Error};

/// How often to try another port (or, restarting, the same one again) when
/// the chosen one gets taken between probing and binding.
pub(crate) const PORT_ATTEMPTS: u32 = 5;

/// What a server logs when the port it was given is no longer free.
const PORT_TAKEN: &str = "Address already in use";

/// The outcome of one attempt at starting a server.
pub(crate) enum Launch {
    Ready(Child),
    /// Another process bound the port first; carries the log tail.
    PortTaken(String),
}

impl Launch {
    /// The started server, or the error `port_taken` makes of the log tail
    /// when the port was taken.
    pub(crate) fn ready_or(self, port_taken: impl FnOnce(String) -> Error) -> Result<Child, Error> {
        match self {
            Launch::Ready(server) => Ok(server),
            Launch::PortTaken(log_tail) => Err(port_taken(log_tail)),
        }
    }

    /// [`ready_or`](Self::ready_or) for a server other than PostgreSQL,
    /// whose error says that every fresh port tried was taken
    /// (`fresh_ports`), or that its own port was.
    pub(crate) fn ready_on(
        self,
        program: &str,
        port: u16,
        fresh_ports: bool,
    ) -> Result<Child, Error> {
        self.ready_or(|log_tail| {
            let reason = if fresh_ports {
                format!(
                    "every one of {PORT_ATTEMPTS} free ports was taken before it could bind one"
                )
            } else {
                "the port is taken by another process".to_owned()
            };
            start_error(program, port, reason, &log_tail)
        })
    }
}

/// Runs `launch` until it does not find its port taken, at most
/// [`PORT_ATTEMPTS`] times, pausing `pause` between attempts. Returns the
/// last attempt's outcome, so `PortTaken` means every attempt lost the race.
pub(crate) fn launch_retrying(
    pause: Duration,
    mut launch: impl FnMut() -> Result<Launch, Error>,
) -> Result<Launch, Error> {
    let mut outcome = Launch::PortTaken(String::new());
    for attempt in 0..PORT_ATTEMPTS {
        if attempt > 0 && !pause.is_zero() {
            thread::sleep(pause);
        }
        outcome = launch()?;
        if matches!(outcome, Launch::Ready(_)) {
            break;
        }
    }
    Ok(outcome)
}

/// Binding port 0 makes the kernel pick a free port; the server binds it
/// moments later, and its `launch` notices if someone else was faster.
pub(crate) fn free_port() -> Result<u16, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_context("finding a free TCP port"))
}

/// A server's log opened for appending, once for its stdout and once for its
/// stderr, and where this run's part of it begins.
pub(crate) struct Log {
    pub(crate) stdout: File,
    pub(crate) stderr: File,
    /// The byte offset this run's output starts at, for [`read_log_from`].
    pub(crate) start: u64,
}

/// Opens `path` for a server's output; `create` allows it not to exist yet.
pub(crate) fn open_log(path: &Path, create: bool) -> Result<Log, Error> {
    let context = || format!("opening {}", path.display());
    let stdout = OpenOptions::new()
        .create(create)
        .append(true)
        .open(path)
        .map_err(io_context(context()))?;
    let start = stdout.metadata().map_err(io_context(context()))?.len();
    let stderr = stdout.try_clone().map_err(io_context(context()))?;
    Ok(Log {
        stdout,
        stderr,
        start,
    })
}

/// The log written since byte `start`; empty if unreadable, since it only
/// decorates errors and readiness is polled again anyway.
pub(crate) fn read_log_from(path: &Path, start: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file
            .seek(SeekFrom::Start(start))
            .and_then(|_| file.read_to_end(&mut bytes));
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `lines` lines of `log`.
pub(crate) fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a server that exited during startup did so because its port was
/// taken, judging by what it logged.
pub(crate) fn port_taken(log: &str) -> bool {
    log.contains(PORT_TAKEN)
}

/// How waiting for a fresh server ended.
pub(crate) enum Readiness {
    Ready,
    Exited(ExitStatus),
    /// Not ready in time; the server has been killed and reaped.
    TimedOut,
}

/// Polls until `is_ready` says so or `server` exits, giving up after
/// `timeout`. The pause between polls doubles from `first_pause` up to
/// `max_pause`.
pub(crate) fn wait_ready(
    server: &mut Child,
    program: &str,
    timeout: Duration,
    (first_pause, max_pause): (Duration, Duration),
    mut is_ready: impl FnMut() -> bool,
) -> Result<Readiness, Error> {
    let deadline = Instant::now() + timeout;
    let mut pause = first_pause;
    loop {
        let exited = server
            .try_wait()
            .map_err(io_context(format!("waiting for {program} to start")));
        match exited {
            Ok(Some(status)) => return Ok(Readiness::Exited(status)),
            Ok(None) if is_ready() => return Ok(Readiness::Ready),
            Ok(None) if Instant::now() < deadline => {}
            // Left running, a server nobody waits for would hold the port
            // and its directory.
            outcome => {
                let _ = server.kill();
                let _ = server.wait();
                return outcome.map(|_| Readiness::TimedOut);
            }
        }
        thread::sleep(pause);
        pause = (pause * 2).min(max_pause);
    }
}

/// Whether the server `server` holds is alive.
pub(crate) fn is_running(server: &mut Option<Child>) -> bool {
    server
        .as_mut()
        .is_some_and(|server| matches!(server.try_wait(), Ok(None)))
}

/// Sends `signal` to `server` and waits up to `grace` for it to exit,
/// killing it if it does not. `Ok(false)` means it had to be killed.
///
/// A failed kill(1) counts only if the server is still there afterwards:
/// it fails too when the server exits between our check and the signal.
pub(crate) fn stop(mut server: Child, signal: &str, grace: Duration) -> Result<bool, Error> {
    let exited = match server.try_wait() {
        Ok(Some(_)) => Ok(true),
        _ => match os::signal(server.id(), signal) {
            Ok(()) => os::wait_timeout(&mut server, grace),
            Err(error) => match server.try_wait() {
                Ok(Some(_)) => Ok(true),
                _ => Err(error),
            },
        },
    };
    if !matches!(exited, Ok(true)) {
        let _ = server.kill();
        let _ = server.wait();
    }
    exited
}

/// SIGKILLs the server in `server`, if any, and reaps it; `program` names
/// it in errors.
pub(crate) fn kill(server: &mut Option<Child>, program: &str) -> Result<(), Error> {
    if let Some(mut server) = server.take() {
        // Fails only if it already exited, which is fine too.
        let _ = server.kill();
        server
            .wait()
            .map_err(io_context(format!("waiting for the killed {program}")))?;
    }
    Ok(())
}

/// Deletes a server's directory from `Drop`, where failing is not an
/// option, so a failure is only reported.
pub(crate) fn remove_dir(dir: &Path) {
    if let Err(error) = fs::remove_dir_all(dir) {
        eprintln!("wharf-testkit: removing {}: {error}", dir.display());
    }
}

/// The error for a server (other than PostgreSQL, which has
/// [`Error::Start`]) that failed to start.
pub(crate) fn start_error(program: &str, port: u16, reason: String, log_tail: &str) -> Error {
    Error::Unexpected {
        what: format!("{program} on port {port}"),
        detail: format!("failed to start: {reason}\n--- tail of its log ---\n{log_tail}"),
    }
}

/// Percent-encodes a URL path component.
pub(crate) fn percent_encode(component: &str) -> String {
    let mut encoded = String::with_capacity(component.len());
    for byte in component.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let log: String = (0..100).map(|n| format!("line {n}\n")).collect();
        let tail = tail(&log, 30);
        assert!(tail.starts_with("line 70\n"));
        assert!(tail.ends_with("line 99"));
    }

    #[test]
    fn url_encoding() {
        assert_eq!(percent_encode("test"), "test");
        assert_eq!(percent_encode("my db/ü"), "my%20db%2F%C3%BC");
    }
}
