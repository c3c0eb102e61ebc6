//! Starting, stopping, crashing and removing clusters.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bin::pg_bin_dir;
use crate::os::{self, run, run_as, Owner};
use crate::process::{
    self, free_port, percent_encode, read_log_from, tail, Launch, Readiness, PORT_ATTEMPTS,
};
use crate::template::{ensure_template, PASSWORD, SUPERUSER};
use crate::{io_context, Error};

const HOST: &str = "127.0.0.1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const DROP_TIMEOUT: Duration = Duration::from_secs(10);
const STRAGGLER_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 30;

/// Configures a [`PgCluster`] before starting it; see [`PgCluster::builder`].
#[derive(Debug, Clone)]
pub struct PgClusterBuilder {
    max_connections: u32,
    settings: Vec<(String, String)>,
    /// Written into the data directory before the server first starts.
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Default for PgClusterBuilder {
    fn default() -> Self {
        Self {
            max_connections: 100,
            settings: Vec::new(),
            files: Vec::new(),
        }
    }
}

impl PgClusterBuilder {
    /// Sets the server's `max_connections` (default 100).
    #[must_use]
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Passes `-c key=value` to the server, after (and so overriding) the
    /// testkit's own settings.
    #[must_use]
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Writes `contents` to `name`, a path relative to the data directory,
    /// before the server first starts: for files a setting names, such as
    /// `ssl_cert_file` and `ssl_key_file` (relative paths in settings are
    /// resolved against the data directory). The file gets mode 0600 and
    /// the server's owner, as PostgreSQL demands of private keys.
    #[must_use]
    pub fn file(mut self, name: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), contents.into()));
        self
    }

    /// Creates the cluster and starts its server, waiting until it accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// Fails if the binaries are missing, initdb or copying the template
    /// fails, or the server does not come up within 30 seconds.
    pub fn start(self) -> Result<PgCluster, Error> {
        os::reap_orphans();
        let bin_dir = pg_bin_dir()?;
        let owner = os::server_owner()?;
        let template = ensure_template(&bin_dir, owner)?;

        let root = os::create_unique_dir()?;
        // From here on, dropping `cluster` removes whatever was created.
        let mut cluster = PgCluster {
            data_dir: root.join("data"),
            socket_dir: root.join("socket"),
            log_path: root.join("server.log"),
            root,
            bin_dir,
            owner,
            port: 0,
            server_settings: self.server_settings(),
            server: None,
        };
        cluster.populate(&template, &self.files)?;

        let launched = process::launch_retrying(Duration::ZERO, || {
            cluster.port = free_port()?;
            cluster.launch()
        })?;
        let server = launched.ready_or(|log_tail| Error::Start {
            reason: format!(
                "every one of {PORT_ATTEMPTS} free ports was taken before postgres could bind it"
            ),
            log: cluster.log_path.clone(),
            log_tail,
        })?;
        cluster.server = Some(server);
        tracing::debug!(
            port = cluster.port,
            dir = %cluster.root.display(),
            "PostgreSQL cluster started"
        );
        Ok(cluster)
    }

    fn server_settings(&self) -> Vec<String> {
        let ours = [
            ("listen_addresses", HOST.to_owned()),
            // Durability against OS crashes is pointless for throwaway data
            // and costs time. synchronous_commit stays on: without fsync it
            // costs only a write(), and `kill` must not lose commits.
            ("fsync", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            // Puts dynamic shared memory in the data directory rather than
            // /dev/shm, where a killed cluster would leak it.
            ("dynamic_shared_memory_type", "mmap".to_owned()),
            ("max_connections", self.max_connections.to_string()),
            ("shared_buffers", "16MB".to_owned()),
        ];
        ours.into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .chain(
                self.settings
                    .iter()
                    .map(|(key, value)| format!("{key}={value}")),
            )
            .collect()
    }
}

/// A throwaway PostgreSQL cluster with its own server process, directory
/// and port. Dropping it stops the server and deletes the directory.
///
/// The superuser is [`user`](Self::user) with password
/// [`password`](Self::password). The lifecycle methods ([`stop`](Self::stop),
/// [`kill`](Self::kill), [`start_again`](Self::start_again), ...) can be
/// used any number of times; the server always comes back on the same port
/// with the same data.
#[derive(Debug)]
pub struct PgCluster {
    bin_dir: PathBuf,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    owner: Option<Owner>,
    /// `key=value` pairs, each passed with `-c`.
    server_settings: Vec<String>,
    /// The postmaster, while we believe it runs.
    server: Option<Child>,
}

impl PgCluster {
    /// Starts a cluster with default settings; see [`builder`](Self::builder)
    /// for the rest.
    ///
    /// # Errors
    ///
    /// As [`PgClusterBuilder::start`].
    pub fn start() -> Result<PgCluster, Error> {
        Self::builder().start()
    }

    /// A builder for a cluster with non-default settings.
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// The TCP port the server listens on at [`host`](Self::host).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The directory holding the server's Unix socket
    /// (`.s.PGSQL.<port>`); usable as libpq's `host`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file; it accumulates across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The temporary directory holding the data directory, socket directory
    /// and log; it is deleted on drop.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The superuser's name: `postgres`.
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password: `postgres`.
    pub fn password(&self) -> &str {
        PASSWORD
    }

    /// A `postgres://` URL for the superuser over TCP.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{PASSWORD}@{HOST}:{}/{}",
            self.port,
            percent_encode(dbname)
        )
    }

    /// A libpq `key=value` connection string for the superuser over TCP.
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host={HOST} port={} user={SUPERUSER} password={PASSWORD} dbname={}",
            self.port,
            conninfo_value(dbname)
        )
    }

    /// Path of the PostgreSQL program `name` (`psql`, `pgbench`, ...) that
    /// belongs to this server.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Whether the server process is alive (it may still be starting up or
    /// shutting down).
    pub fn is_running(&mut self) -> bool {
        process::is_running(&mut self.server)
    }

    /// Stops the server with a fast shutdown (SIGINT: connections are
    /// terminated, a shutdown checkpoint is written) and waits for it to
    /// exit. Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// [`Error::StopTimeout`] if it takes longer than 30 seconds, in which
    /// case the server is killed.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.terminate("INT", STOP_TIMEOUT)
    }

    /// Simulates a crash: SIGKILLs the postmaster and then every backend
    /// and auxiliary process of the cluster, which would otherwise linger
    /// and keep serving their connections. Does nothing if it is not
    /// running.
    ///
    /// # Errors
    ///
    /// Fails if a process of the cluster survives SIGKILL for 10 seconds.
    pub fn kill(&mut self) -> Result<(), Error> {
        process::kill(&mut self.server, "postmaster")?;
        os::kill_all_working_in(&self.data_dir, STRAGGLER_TIMEOUT)
    }

    /// Starts the server again after [`stop`](Self::stop),
    /// [`kill`](Self::kill) or a crash, on the same port and data, and waits
    /// until it accepts connections (after crash recovery, if needed).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] if it is running; otherwise as for
    /// [`PgCluster::start`], including when another process has taken the
    /// port meanwhile.
    pub fn start_again(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::AlreadyRunning);
        }
        self.server = None;
        // Backends of a crashed postmaster keep its shared memory attached,
        // which would stop the new one from starting.
        os::kill_all_working_in(&self.data_dir, STRAGGLER_TIMEOUT)?;
        os::clear_crash_leftovers(&self.data_dir)?;

        let launched = process::launch_retrying(Duration::from_millis(200), || self.launch())?;
        let server = launched.ready_or(|log_tail| Error::Start {
            reason: format!("port {} is taken by another process", self.port),
            log: self.log_path.clone(),
            log_tail,
        })?;
        self.server = Some(server);
        Ok(())
    }

    /// A streaming replica of this cluster: a new cluster made with
    /// `pg_basebackup -R` from this one (which must be running), started on
    /// a port of its own and replaying this one's WAL in hot standby.
    ///
    /// # Errors
    ///
    /// Fails if the base backup fails or the replica does not start.
    pub fn replica(&self) -> Result<PgCluster, Error> {
        let root = os::create_unique_dir()?;
        let mut replica = PgCluster {
            data_dir: root.join("data"),
            socket_dir: root.join("socket"),
            log_path: root.join("server.log"),
            root,
            bin_dir: self.bin_dir.clone(),
            owner: self.owner,
            port: 0,
            server_settings: self.server_settings.clone(),
            server: None,
        };
        fs::create_dir(&replica.socket_dir).map_err(io_context(format!(
            "creating {}",
            replica.socket_dir.display()
        )))?;
        File::create(&replica.log_path).map_err(io_context(format!(
            "creating {}",
            replica.log_path.display()
        )))?;
        if let Some(owner) = self.owner {
            os::chown_tree(&replica.root, owner)?;
        }
        run(run_as(
            Command::new(self.bin("pg_basebackup"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-U", SUPERUSER])
                .arg("-D")
                .arg(&replica.data_dir)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
                .current_dir(&replica.root),
            self.owner,
        ))?;
        let launched = process::launch_retrying(Duration::ZERO, || {
            replica.port = free_port()?;
            replica.launch()
        })?;
        let server = launched.ready_or(|log_tail| Error::Start {
            reason: "no free port for the replica".to_owned(),
            log: replica.log_path.clone(),
            log_tail,
        })?;
        replica.server = Some(server);
        Ok(replica)
    }

    /// Promotes a replica made by [`replica`](Self::replica) to a primary,
    /// waiting until it takes writes.
    ///
    /// # Errors
    ///
    /// Fails if it is not a standby or the promotion does not finish.
    pub fn promote(&self) -> Result<(), Error> {
        match self
            .psql("postgres", "SELECT pg_promote(true, 30)")?
            .as_str()
        {
            "t" => Ok(()),
            other => Err(Error::Unexpected {
                what: "pg_promote()".to_owned(),
                detail: format!("returned {other:?}"),
            }),
        }
    }

    /// [`stop`](Self::stop) followed by [`start_again`](Self::start_again).
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop()?;
        self.start_again()
    }

    /// Runs `sql` with psql as the superuser over the Unix socket, in
    /// unaligned tuples-only mode, stopping at the first error. Returns the
    /// trimmed output: for `select 1, 2` that is `1|2`, one line per row.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] with psql's stderr if psql fails, e.g. on an SQL
    /// error.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, Error> {
        let mut psql = Command::new(self.bin("psql"));
        psql.arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", dbname])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null());
        // The caller's PGOPTIONS, PGSSLMODE and the like are not meant for
        // this server.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|key| key.starts_with("PG")) {
                psql.env_remove(key);
            }
        }
        run(&mut psql).map(|output| output.trim().to_owned())
    }

    /// Creates the database `name`, owned by the superuser.
    ///
    /// # Errors
    ///
    /// As [`psql`](Self::psql), e.g. if it exists.
    pub fn create_database(&self, name: &str) -> Result<(), Error> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(drop)
    }

    /// Creates a role `name` that can log in with `password`.
    ///
    /// # Errors
    ///
    /// As [`psql`](Self::psql), e.g. if it exists.
    pub fn create_user(&self, name: &str, password: &str) -> Result<(), Error> {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN PASSWORD {}",
                quote_ident(name),
                quote_literal(password)
            ),
        )
        .map(drop)
    }

    /// Fills the fresh root directory: data copied from the template plus
    /// the builder's `files`, a socket directory and a log file, all owned
    /// by the server's user.
    fn populate(&self, template: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<(), Error> {
        // `-a` keeps the template's owner and its 0700 mode, which postgres
        // insists on.
        run(Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&self.data_dir))?;
        fs::create_dir(&self.socket_dir).map_err(io_context(format!(
            "creating {}",
            self.socket_dir.display()
        )))?;
        File::create(&self.log_path)
            .map_err(io_context(format!("creating {}", self.log_path.display())))?;
        for (name, contents) in files {
            let path = self.data_dir.join(name);
            let context = || format!("writing {}", path.display());
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| file.write_all(contents))
                .map_err(io_context(context()))?;
        }
        if let Some(owner) = self.owner {
            os::chown_tree(&self.root, owner)?;
        }
        Ok(())
    }

    /// Spawns the postmaster on `self.port` and waits until it is ready.
    fn launch(&self) -> Result<Launch, Error> {
        let log = process::open_log(&self.log_path, false)?;
        let log_start = log.start;

        let mut postgres = Command::new(self.bin("postgres"));
        postgres
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir);
        for setting in &self.server_settings {
            postgres.arg("-c").arg(setting);
        }
        postgres
            .stdin(Stdio::null())
            .stdout(log.stdout)
            .stderr(log.stderr)
            .current_dir(&self.root);
        let mut server = run_as(&mut postgres, self.owner)
            .spawn()
            .map_err(io_context(format!(
                "starting {}",
                self.bin("postgres").display()
            )))?;

        let pid = server.id().to_string();
        let pid_file = self.data_dir.join("postmaster.pid");
        // pg_ctl's readiness test: the postmaster marks its lock file
        // "ready" once it accepts connections. Going by the file in our own
        // data directory, unlike probing the port, cannot be fooled by
        // another server that grabbed the port.
        let is_ready = || {
            fs::read_to_string(&pid_file).is_ok_and(|contents| {
                let lines: Vec<&str> = contents.lines().collect();
                lines.first() == Some(&pid.as_str())
                    // A hot standby says "standby" once it takes connections.
                    && lines
                        .get(7)
                        .is_some_and(|status| matches!(status.trim(), "ready" | "standby"))
            })
        };
        let pauses = (Duration::from_millis(2), Duration::from_millis(50));
        match process::wait_ready(&mut server, "postgres", READY_TIMEOUT, pauses, is_ready)? {
            Readiness::Ready => Ok(Launch::Ready(server)),
            Readiness::Exited(_) => {
                let log = read_log_from(&self.log_path, log_start);
                if process::port_taken(&log) {
                    tracing::debug!(port = self.port, "port taken, retrying");
                    Ok(Launch::PortTaken(tail(&log, LOG_TAIL_LINES)))
                } else {
                    Err(self.start_error("postgres exited during startup".into(), log_start))
                }
            }
            Readiness::TimedOut => Err(self.start_error(
                format!("not accepting connections after {READY_TIMEOUT:?}"),
                log_start,
            )),
        }
    }

    fn start_error(&self, reason: String, log_start: u64) -> Error {
        Error::Start {
            reason,
            log: self.log_path.clone(),
            log_tail: tail(&read_log_from(&self.log_path, log_start), LOG_TAIL_LINES),
        }
    }

    /// Sends `signal` to the postmaster, waits up to `grace` for it to exit
    /// (killing it if it does not), then makes sure no process of the
    /// cluster is left.
    fn terminate(&mut self, signal: &str, grace: Duration) -> Result<(), Error> {
        let mut outcome = Ok(());
        if let Some(server) = self.server.take() {
            let pid = server.id();
            outcome = match process::stop(server, signal, grace) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::StopTimeout {
                    pid,
                    timeout: grace,
                }),
                Err(error) => Err(error),
            };
        }
        let swept = os::kill_all_working_in(&self.data_dir, STRAGGLER_TIMEOUT);
        outcome.and(swept)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate shutdown: nothing needs to survive, so skip the
        // checkpoint.
        match self.terminate("QUIT", DROP_TIMEOUT) {
            Ok(()) => {
                if let Err(error) = os::clear_crash_leftovers(&self.data_dir) {
                    eprintln!("wharf-testkit: {error}");
                }
            }
            Err(error) => {
                eprintln!(
                    "wharf-testkit: stopping the cluster in {}: {error}",
                    self.root.display()
                );
            }
        }
        process::remove_dir(&self.root);
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Relies on `standard_conforming_strings`, on by default since 9.1.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(percent_encode("my db/ü"), "my%20db%2F%C3%BC");
        assert_eq!(conninfo_value("app"), "app");
        assert_eq!(conninfo_value(r"a b'c\"), r"'a b\'c\\'");
        assert_eq!(conninfo_value(""), "''");
    }

    #[test]
    fn builder_settings_come_last() {
        let settings = PgCluster::builder()
            .max_connections(7)
            .setting("work_mem", "8MB")
            .server_settings();
        assert!(settings.contains(&"max_connections=7".to_owned()));
        assert_eq!(settings.last().map(String::as_str), Some("work_mem=8MB"));
    }
}
