//! Throwaway Redis servers for tests.
//!
//! A [`RedisServer`] is a private `redis-server` process with its own
//! temporary directory (working directory and log) and its own TCP port on
//! `127.0.0.1`, without persistence (`--save '' --appendonly no`). It can be
//! killed and started again on the same port, which is what reconnect tests
//! need.
//!
//! ```no_run
//! use wharf_testkit::redis::RedisServer;
//!
//! let mut redis = RedisServer::start()?;
//! let url = redis.url(); // redis://127.0.0.1:<port>/
//! assert_eq!(redis.command(&["PING"])?, "PONG");
//! redis.kill()?; // simulate a crash
//! redis.start_again()?; // same port, empty data
//! # let _ = url;
//! # Ok::<(), wharf_testkit::Error>(())
//! ```
//!
//! The binary is `$WHARF_REDIS_SERVER` if set, else `/usr/bin/redis-server`
//! if it exists, else `redis-server` from `PATH` (Debian package
//! `redis-server`). Nothing needs to be running beforehand, and running as
//! root is fine.

use std::env;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::os;
use crate::process::{self, free_port, read_log_from, tail, Launch, Readiness};
use crate::{io_context, Error};

const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds every exchange with the server, so that a wedged server fails a
/// test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 20;
const PROGRAM: &str = "redis-server";
const DEFAULT_BINARY: &str = "/usr/bin/redis-server";

/// A throwaway `redis-server` on `127.0.0.1`. Dropping it kills the server
/// and deletes its directory.
///
/// [`kill`](Self::kill), [`stop`](Self::stop) and
/// [`start_again`](Self::start_again) may be used any number of times; the
/// server always comes back on the same port, with an empty dataset (nothing
/// is persisted).
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    /// Arguments after the defaults (cluster mode, for one).
    extra_args: Vec<String>,
    /// A configuration file, given before every other argument (Sentinel
    /// needs one it can rewrite).
    config_file: Option<PathBuf>,
    /// The server, while we believe it runs.
    server: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// Fails if the binary cannot be run, or the server does not answer
    /// within 10 seconds (the error carries the tail of its log).
    pub fn start() -> Result<RedisServer, Error> {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with more `redis-server` arguments
    /// after the defaults (`["--cluster-enabled", "yes"]`, say); they apply
    /// to every [`start_again`](Self::start_again) too.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_with_args(args: &[&str]) -> Result<RedisServer, Error> {
        // Also stops servers of earlier test processes that were killed:
        // redis-server works in its directory, as postgres does.
        os::reap_orphans();
        let dir = os::create_unique_dir()?;
        // From here on, dropping `server` removes the directory.
        let mut server = RedisServer {
            binary: binary(),
            log_path: dir.join("redis.log"),
            dir,
            port: 0,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            config_file: None,
            server: None,
        };
        // A cluster node also listens on port + 10000 (its bus), which
        // must be a port too.
        let cluster = args.contains(&"--cluster-enabled");
        let launched = process::launch_retrying(Duration::ZERO, || {
            server.port = loop {
                let port = free_port()?;
                if !cluster || port <= u16::MAX - 10_000 {
                    break port;
                }
            };
            server.launch()
        })?;
        let child = launched.ready_on(PROGRAM, server.port, true)?;
        server.server = Some(child);
        tracing::debug!(
            port = server.port,
            dir = %server.dir.display(),
            "redis-server started"
        );
        Ok(server)
    }

    /// Starts a Redis Sentinel (`redis-server <file> --sentinel`) whose
    /// configuration file holds `config` (`sentinel monitor ...` lines); it
    /// listens on a port of its own like any server here.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), or if the file cannot be written.
    pub fn start_sentinel(config: &str) -> Result<RedisServer, Error> {
        os::reap_orphans();
        let dir = os::create_unique_dir()?;
        let config_file = dir.join("sentinel.conf");
        std::fs::write(&config_file, config)
            .map_err(io_context(format!("writing {}", config_file.display())))?;
        let mut server = RedisServer {
            binary: binary(),
            log_path: dir.join("redis.log"),
            dir,
            port: 0,
            extra_args: vec!["--sentinel".to_owned()],
            config_file: Some(config_file),
            server: None,
        };
        let launched = process::launch_retrying(Duration::ZERO, || {
            server.port = free_port()?;
            server.launch()
        })?;
        server.server = Some(launched.ready_on(PROGRAM, server.port, true)?);
        Ok(server)
    }

    /// The TCP port the server listens on at `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((HOST, self.port))
    }

    /// A URL for Redis clients: `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://{HOST}:{}/", self.port)
    }

    /// The server's working directory (it also holds the log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the server process is alive.
    pub fn is_running(&mut self) -> bool {
        process::is_running(&mut self.server)
    }

    /// Simulates a crash: SIGKILLs the server and waits for it to exit. The
    /// kernel then resets every client connection. Does nothing if it is
    /// not running.
    ///
    /// # Errors
    ///
    /// Fails if waiting for the process fails.
    pub fn kill(&mut self) -> Result<(), Error> {
        process::kill(&mut self.server, PROGRAM)
    }

    /// Shuts the server down with SIGTERM (it closes its clients and exits)
    /// and waits up to 10 seconds, after which it is killed. Does nothing if
    /// it is not running.
    ///
    /// # Errors
    ///
    /// Fails if signalling or waiting for the process fails.
    pub fn stop(&mut self) -> Result<(), Error> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        if !process::stop(server, "TERM", STOP_TIMEOUT)? {
            tracing::warn!(
                port = self.port,
                "redis-server ignored SIGTERM for {STOP_TIMEOUT:?}; killed it"
            );
        }
        Ok(())
    }

    /// Starts the server again after [`kill`](Self::kill) or
    /// [`stop`](Self::stop), on the same port, and waits until it answers
    /// `PING`. The dataset starts empty.
    ///
    /// # Errors
    ///
    /// Fails if the server is still running, if the port stays taken by
    /// another process, or as [`start`](Self::start).
    pub fn start_again(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::Unexpected {
                what: format!("RedisServer::start_again on port {}", self.port),
                detail: "the server is still running; kill() or stop() it first".into(),
            });
        }
        self.server = None;
        let launched = process::launch_retrying(Duration::from_millis(200), || self.launch())?;
        let child = launched.ready_on(PROGRAM, self.port, false)?;
        self.server = Some(child);
        Ok(())
    }

    /// Sends one command over a fresh connection and returns the reply:
    /// the text of a simple string, integer or bulk string reply (`""` for a
    /// nil one). Array replies are not supported.
    ///
    /// ```no_run
    /// # let redis = wharf_testkit::redis::RedisServer::start()?;
    /// let info = redis.command(&["INFO", "clients"])?;
    /// assert!(info.contains("connected_clients:"));
    /// # Ok::<(), wharf_testkit::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Fails if the server cannot be reached, answers with an error reply,
    /// or sends something else than described.
    pub fn command(&self, args: &[&str]) -> Result<String, Error> {
        let context = || format!("sending {args:?} to redis-server on port {}", self.port);
        let stream =
            TcpStream::connect_timeout(&self.addr(), IO_TIMEOUT).map_err(io_context(context()))?;
        exchange(stream, args).map_err(|error| match error {
            Reply::Io(source) => io_context(context())(source),
            Reply::Bad(detail) => Error::Unexpected {
                what: context(),
                detail,
            },
        })
    }

    /// The server's `connected_clients` from `INFO clients`, less the
    /// connection that asks.
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command), or if the field is missing.
    pub fn connected_clients(&self) -> Result<usize, Error> {
        let info = self.command(&["INFO", "clients"])?;
        info.lines()
            .find_map(|line| line.strip_prefix("connected_clients:"))
            .and_then(|count| count.trim().parse::<usize>().ok())
            .map(|count| count.saturating_sub(1))
            .ok_or_else(|| Error::Unexpected {
                what: "INFO clients".into(),
                detail: format!("no parsable `connected_clients:` line in {info:?}"),
            })
    }

    /// Spawns redis-server on `self.port` and waits until it answers PING.
    fn launch(&self) -> Result<Launch, Error> {
        let log = process::open_log(&self.log_path, true)?;
        let log_start = log.start;

        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config_file {
            command.arg(config);
        }
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            // Messages before the config is applied go to stdout, so both
            // end up in the file.
            .arg("--logfile")
            .arg(&self.log_path)
            .args(&self.extra_args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.stdout)
            .stderr(log.stderr);
        let mut child = command.spawn().map_err(io_context(format!(
            "starting {} (install the Debian package `redis-server`, or set \
             WHARF_REDIS_SERVER to the binary)",
            self.binary.display()
        )))?;

        let pauses = (Duration::from_millis(20), Duration::from_millis(20));
        let readiness = process::wait_ready(&mut child, PROGRAM, READY_TIMEOUT, pauses, || {
            self.answers_ping()
        })?;
        match readiness {
            Readiness::Ready => Ok(Launch::Ready(child)),
            Readiness::Exited(status) => {
                let tail = self.log_tail(log_start);
                if process::port_taken(&tail) {
                    return Ok(Launch::PortTaken(tail));
                }
                Err(process::start_error(
                    PROGRAM,
                    self.port,
                    format!("it exited ({status})"),
                    &tail,
                ))
            }
            Readiness::TimedOut => Err(process::start_error(
                PROGRAM,
                self.port,
                format!("it did not answer PING within {READY_TIMEOUT:?}"),
                &self.log_tail(log_start),
            )),
        }
    }

    fn answers_ping(&self) -> bool {
        TcpStream::connect_timeout(&self.addr(), IO_TIMEOUT)
            .ok()
            .and_then(|stream| exchange(stream, &["PING"]).ok())
            .is_some_and(|reply| reply == "PONG")
    }

    /// The last lines the server logged since `start` (a byte offset).
    fn log_tail(&self, start: u64) -> String {
        tail(&read_log_from(&self.log_path, start), LOG_TAIL_LINES)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!(
                "wharf-testkit: killing redis-server on port {}: {error}",
                self.port
            );
        }
        process::remove_dir(&self.dir);
    }
}

fn binary() -> PathBuf {
    if let Some(path) = env::var_os("WHARF_REDIS_SERVER").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let default = Path::new(DEFAULT_BINARY);
    if default.exists() {
        default.to_owned()
    } else {
        PathBuf::from("redis-server")
    }
}

/// Why an exchange with the server failed.
enum Reply {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for Reply {
    fn from(error: std::io::Error) -> Self {
        Reply::Io(error)
    }
}

/// Sends `args` as a RESP array and reads one non-array reply.
fn exchange(mut stream: TcpStream, args: &[&str]) -> Result<String, Reply> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request)?;

    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let Some(line) = line.strip_suffix("\r\n") else {
        return Err(Reply::Bad(format!("truncated reply {line:?}")));
    };
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(Reply::Bad(format!("error reply: {rest}"))),
        "$" => {
            let Ok(len) = rest.parse::<i64>() else {
                return Err(Reply::Bad(format!("bad bulk length in {line:?}")));
            };
            let Ok(len) = usize::try_from(len) else {
                // `$-1`: nil.
                return Ok(String::new());
            };
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            String::from_utf8(body).map_err(|_| Reply::Bad("bulk reply is not UTF-8".into()))
        }
        _ => Err(Reply::Bad(format!("unsupported reply {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_restarts_on_the_same_port() {
        let mut redis = RedisServer::start().expect("start");
        let port = redis.port();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
        assert_eq!(redis.command(&["SET", "k", "v"]).expect("SET"), "OK");
        assert_eq!(redis.command(&["GET", "k"]).expect("GET"), "v");
        assert_eq!(redis.command(&["INCR", "n"]).expect("INCR"), "1");
        assert_eq!(redis.connected_clients().expect("INFO"), 0);
        assert!(redis.command(&["NO-SUCH-COMMAND"]).is_err());

        redis.kill().expect("kill");
        assert!(!redis.is_running());
        assert!(redis.command(&["PING"]).is_err(), "killed server answered");

        redis.start_again().expect("start again");
        assert_eq!(redis.port(), port);
        assert_eq!(
            redis.command(&["GET", "k"]).expect("GET"),
            "",
            "nothing persisted"
        );
        assert!(redis.start_again().is_err(), "already running");

        redis.stop().expect("stop");
        assert!(!redis.is_running());
        redis.start_again().expect("start after stop");
        assert_eq!(redis.command(&["PING"]).expect("PING"), "PONG");

        let dir = redis.dir().to_owned();
        assert!(dir.is_dir());
        drop(redis);
        assert!(!dir.exists(), "directory left behind");
    }
}
