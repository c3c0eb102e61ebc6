//! Throwaway MariaDB servers for tests.
//!
//! Each [`MariaDb`] is a private `mariadbd` with its own temporary directory
//! (data, Unix socket, pid file, log) and its own TCP port on `127.0.0.1`.
//! `mariadb-install-db` runs once per machine into a cached template that
//! already holds the test account and database; every server copies it, so
//! starting one costs a file copy plus server startup (well under a second).
//!
//! Logins use real password authentication: the account `wharf` with
//! password `wharf` may connect from anywhere and holds every privilege; the
//! database `test` exists. The MariaDB `root` account has no password and is
//! what [`MariaDb::sql`] uses over the Unix socket.
//!
//! ```no_run
//! use wharf_testkit::mariadb::MariaDb;
//!
//! let mut db = MariaDb::start()?;
//! assert_eq!(db.sql("test", "SELECT 1 + 1")?, "2");
//! let url = db.url("test"); // mysql://wharf:wharf@127.0.0.1:<port>/test
//! db.kill()?; // simulate a crash
//! db.start_again()?;
//! # let _ = url;
//! # Ok::<(), wharf_testkit::Error>(())
//! ```
//!
//! The binaries are looked up in `$WHARF_MARIADB_BIN`, then `/usr/sbin`,
//! `/usr/bin`, `/usr/local/sbin`, `/usr/local/bin` and `$PATH` (Debian's
//! `mariadb-server` package provides them). Directories live where the
//! PostgreSQL clusters' do (see the crate docs), and are cleaned up the same
//! way after a test process is killed.

use std::env;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::os::{self, base_dir, create_unique_dir, run, DIR_PREFIX};
use crate::process::{self, free_port, percent_encode, read_log_from, tail, Launch, Readiness};
use crate::{io_context, Error};

const HOST: &str = "127.0.0.1";
/// The account tests log in with.
const USER: &str = "wharf";
const PASSWORD: &str = "wharf";
/// The database created in the template.
const DATABASE: &str = "test";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const STRAGGLER_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 30;
/// What mariadbd logs once it accepts connections.
const READY_LINE: &str = "ready for connections";
const PROGRAM: &str = "mariadbd";

/// Bump whenever the template's contents or the options it is built with
/// change, so that templates made by older code are not reused.
const TEMPLATE_REVISION: u32 = 1;
/// Written into the template last; its presence means the template is whole.
const TEMPLATE_MARKER: &str = "wharf-template-complete";

/// Configures a [`MariaDb`] before starting it; see [`MariaDb::builder`].
#[derive(Debug, Clone)]
pub struct MariaDbBuilder {
    max_connections: u32,
    options: Vec<(String, String)>,
}

impl Default for MariaDbBuilder {
    fn default() -> Self {
        Self {
            max_connections: 151,
            options: Vec::new(),
        }
    }
}

impl MariaDbBuilder {
    /// Sets the server's `max_connections` (default 151, MariaDB's own).
    #[must_use]
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Passes `--key=value` to `mariadbd`, after (and so overriding) the
    /// testkit's own options.
    #[must_use]
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// Creates the server's directory from the template and starts it,
    /// waiting until it accepts connections.
    ///
    /// # Errors
    ///
    /// Fails if the binaries are missing, building or copying the template
    /// fails, or the server does not come up within 30 seconds.
    pub fn start(self) -> Result<MariaDb, Error> {
        os::reap_orphans();
        let binaries = Binaries::find()?;
        let template = ensure_template(&binaries)?;

        let root = create_unique_dir()?;
        // From here on, dropping `db` removes whatever was created.
        let mut db = MariaDb {
            data_dir: root.join("data"),
            socket_path: root.join("mysqld.sock"),
            log_path: root.join("server.log"),
            root,
            binaries,
            port: 0,
            options: self.server_options(),
            server: None,
        };
        db.populate(&template)?;

        let launched = process::launch_retrying(Duration::ZERO, || {
            db.port = free_port()?;
            db.launch()
        })?;
        let server = launched.ready_on(PROGRAM, db.port, true)?;
        db.server = Some(server);
        tracing::debug!(
            port = db.port,
            dir = %db.root.display(),
            "MariaDB server started"
        );
        Ok(db)
    }

    /// Options for the running server (the template's build adds its own
    /// share of [`storage_options`]).
    fn server_options(&self) -> Vec<String> {
        let ours = [
            ("bind-address", HOST.to_owned()),
            ("max-connections", self.max_connections.to_string()),
            // Tests pick random 127.0.0.1 clients; resolving them is slow
            // and pointless.
            ("skip-name-resolve", "1".to_owned()),
            ("character-set-server", "utf8mb4".to_owned()),
            ("collation-server", "utf8mb4_general_ci".to_owned()),
            // Many servers may run at once: keep each one's caches small.
            ("performance-schema", "OFF".to_owned()),
            ("key-buffer-size", "1M".to_owned()),
            ("aria-pagecache-buffer-size", "8M".to_owned()),
            ("query-cache-size", "0".to_owned()),
            // A commit reaches the OS before it is acknowledged, so `kill`
            // (a process crash, not a machine crash) loses nothing; syncing
            // throwaway data to disk would only cost time.
            ("innodb-flush-log-at-trx-commit", "2".to_owned()),
            ("innodb-doublewrite", "0".to_owned()),
        ];
        ours.into_iter()
            .map(|(key, value)| format!("--{key}={value}"))
            .chain(storage_options())
            .chain(
                self.options
                    .iter()
                    .map(|(key, value)| format!("--{key}={value}")),
            )
            .collect()
    }
}

/// Options that must agree between building the template and running a
/// copy of it, since they shape the files InnoDB creates.
fn storage_options() -> Vec<String> {
    [
        ("innodb-buffer-pool-size", "16M"),
        ("innodb-log-file-size", "8M"),
        ("innodb-temp-data-file-path", "ibtmp1:1M:autoextend"),
        // tmpfs rejects O_DIRECT, and containers often forbid io_uring and
        // native AIO.
        ("innodb-flush-method", "fsync"),
        ("innodb-use-native-aio", "0"),
    ]
    .into_iter()
    .map(|(key, value)| format!("--{key}={value}"))
    .collect()
}

/// A throwaway MariaDB server with its own process, directory and port.
/// Dropping it kills the server and deletes the directory.
///
/// Tests log in as [`user`](Self::user) with [`password`](Self::password),
/// usually through [`url`](Self::url). The lifecycle methods
/// ([`stop`](Self::stop), [`kill`](Self::kill),
/// [`start_again`](Self::start_again)) can be used any number of times; the
/// server always comes back on the same port with the same data.
#[derive(Debug)]
pub struct MariaDb {
    binaries: Binaries,
    root: PathBuf,
    data_dir: PathBuf,
    socket_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    /// `--key=value` options for mariadbd, after `--no-defaults`.
    options: Vec<String>,
    /// The server, while we believe it runs.
    server: Option<Child>,
}

impl MariaDb {
    /// Starts a server with default settings; see [`builder`](Self::builder)
    /// for the rest.
    ///
    /// # Errors
    ///
    /// As [`MariaDbBuilder::start`].
    pub fn start() -> Result<MariaDb, Error> {
        Self::builder().start()
    }

    /// A builder for a server with non-default settings.
    pub fn builder() -> MariaDbBuilder {
        MariaDbBuilder::default()
    }

    /// The TCP port the server listens on at [`host`](Self::host).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The account tests log in with: `wharf`, which holds every privilege.
    pub fn user(&self) -> &str {
        USER
    }

    /// The password of [`user`](Self::user): `wharf`.
    pub fn password(&self) -> &str {
        PASSWORD
    }

    /// The database that exists from the start: `test`.
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// A `mysql://` URL for [`user`](Self::user) over TCP, with `db` as the
    /// default database.
    pub fn url(&self, db: &str) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@{HOST}:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    /// The server's Unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log (its standard error); it accumulates across
    /// restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The temporary directory holding everything of this server; it is
    /// deleted on drop.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Whether the server process is alive (it may still be starting up or
    /// shutting down).
    pub fn is_running(&mut self) -> bool {
        process::is_running(&mut self.server)
    }

    /// Shuts the server down cleanly (SIGTERM: connections are closed,
    /// InnoDB flushes) and waits for it to exit. Does nothing if it is not
    /// running.
    ///
    /// # Errors
    ///
    /// Fails if it takes longer than 30 seconds, in which case the server
    /// is killed.
    pub fn stop(&mut self) -> Result<(), Error> {
        let mut outcome = Ok(());
        if let Some(server) = self.server.take() {
            let pid = server.id();
            outcome = match process::stop(server, "TERM", STOP_TIMEOUT) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::Unexpected {
                    what: format!("mariadbd (pid {pid}) on port {}", self.port),
                    detail: format!("did not exit within {STOP_TIMEOUT:?} and was killed"),
                }),
                Err(error) => Err(error),
            };
        }
        outcome.and(os::kill_all_working_in(&self.data_dir, STRAGGLER_TIMEOUT))
    }

    /// Simulates a crash: SIGKILLs the server, which closes every
    /// connection at once without telling the clients. Does nothing if it is
    /// not running.
    ///
    /// # Errors
    ///
    /// Fails if the process survives SIGKILL for 10 seconds.
    pub fn kill(&mut self) -> Result<(), Error> {
        process::kill(&mut self.server, PROGRAM)?;
        // mariadbd works in its data directory, so this also finds a server
        // that outlived our handle on it.
        os::kill_all_working_in(&self.data_dir, STRAGGLER_TIMEOUT)
    }

    /// Starts the server again after [`stop`](Self::stop),
    /// [`kill`](Self::kill) or a crash, on the same port and data, and waits
    /// until it accepts connections (after crash recovery, if needed).
    ///
    /// # Errors
    ///
    /// Fails if the server is running, if another process has taken the
    /// port meanwhile, or as [`MariaDb::start`].
    pub fn start_again(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::Unexpected {
                what: format!("MariaDb::start_again on port {}", self.port),
                detail: "the server is still running; kill() or stop() it first".into(),
            });
        }
        self.server = None;
        os::kill_all_working_in(&self.data_dir, STRAGGLER_TIMEOUT)?;

        let launched = process::launch_retrying(Duration::from_millis(200), || self.launch())?;
        let server = launched.ready_on(PROGRAM, self.port, false)?;
        self.server = Some(server);
        Ok(())
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

    /// Runs `sql` with the `mariadb` client as `root` over the Unix socket,
    /// in `db` (none if empty), stopping at the first error. Returns the
    /// trimmed output in batch mode without column names: for
    /// `SELECT 1, 2` that is `1\t2`, one line per row.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] with the client's stderr if it fails, e.g. on an
    /// SQL error.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let client = self.binaries.client.as_ref().ok_or_else(|| {
            not_found(
                "the MariaDB client `mariadb`",
                "install the Debian package mariadb-client",
            )
        })?;
        let mut command = Command::new(client);
        command
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--socket={}", self.socket_path.display()))
            .args(["--batch", "--skip-column-names"])
            .arg(format!("--execute={sql}"));
        if !db.is_empty() {
            command.arg(format!("--database={db}"));
        }
        // The caller's MYSQL_HOST, MYSQL_PWD and the like are not meant for
        // this server.
        for (key, _) in env::vars_os() {
            if key.to_str().is_some_and(|key| key.starts_with("MYSQL")) {
                command.env_remove(key);
            }
        }
        command.stdin(Stdio::null());
        run(&mut command).map(|output| output.trim().to_owned())
    }

    /// Fills the fresh root directory: data copied from the template and an
    /// empty log.
    fn populate(&self, template: &Path) -> Result<(), Error> {
        run(Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&self.data_dir))?;
        File::create(&self.log_path)
            .map_err(io_context(format!("creating {}", self.log_path.display())))?;
        Ok(())
    }

    /// Spawns mariadbd on `self.port` and waits until it is ready.
    fn launch(&self) -> Result<Launch, Error> {
        let log = process::open_log(&self.log_path, false)?;
        let log_start = log.start;

        let mut server = server_command(&self.binaries, &self.data_dir)?;
        server
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.socket_path.display()))
            .arg(format!(
                "--pid-file={}",
                self.root.join("mysqld.pid").display()
            ))
            .arg(format!("--tmpdir={}", self.root.display()))
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(log.stdout)
            .stderr(log.stderr)
            .current_dir(&self.root);
        let mut server = server.spawn().map_err(io_context(format!(
            "starting {}",
            self.binaries.server.display()
        )))?;

        // The log is this server's alone, so unlike probing the port this
        // cannot be fooled by another server that grabbed it.
        let is_ready = || read_log_from(&self.log_path, log_start).contains(READY_LINE);
        let pauses = (Duration::from_millis(2), Duration::from_millis(50));
        let readiness = process::wait_ready(&mut server, PROGRAM, READY_TIMEOUT, pauses, is_ready)?;
        let log_tail = || tail(&read_log_from(&self.log_path, log_start), LOG_TAIL_LINES);
        match readiness {
            Readiness::Ready => Ok(Launch::Ready(server)),
            Readiness::Exited(_) => {
                if process::port_taken(&read_log_from(&self.log_path, log_start)) {
                    tracing::debug!(port = self.port, "port taken, retrying");
                    Ok(Launch::PortTaken(log_tail()))
                } else {
                    Err(process::start_error(
                        PROGRAM,
                        self.port,
                        "mariadbd exited during startup".into(),
                        &log_tail(),
                    ))
                }
            }
            Readiness::TimedOut => Err(process::start_error(
                PROGRAM,
                self.port,
                format!("not accepting connections after {READY_TIMEOUT:?}"),
                &log_tail(),
            )),
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // Nothing needs to survive, so skip the clean shutdown.
        if let Err(error) = self.kill() {
            eprintln!(
                "wharf-testkit: killing MariaDB in {}: {error}",
                self.root.display()
            );
        }
        process::remove_dir(&self.root);
    }
}

/// The programs of a MariaDB installation.
#[derive(Debug, Clone)]
struct Binaries {
    server: PathBuf,
    install_db: PathBuf,
    /// Only [`MariaDb::sql`] needs it, so its absence is reported there.
    client: Option<PathBuf>,
}

impl Binaries {
    fn find() -> Result<Self, Error> {
        const HINT: &str = "install the Debian package mariadb-server \
                            or point WHARF_MARIADB_BIN at the directory holding it";
        Ok(Self {
            server: find_program(&["mariadbd", "mysqld"])
                .ok_or_else(|| not_found("the MariaDB server `mariadbd`", HINT))?,
            install_db: find_program(&["mariadb-install-db", "mysql_install_db"])
                .ok_or_else(|| not_found("`mariadb-install-db`", HINT))?,
            client: find_program(&["mariadb", "mysql"]),
        })
    }
}

/// The first of `names` found in `$WHARF_MARIADB_BIN`, the usual system
/// directories (mariadbd lives in an `sbin`, which is not always on a
/// user's `PATH`), then `$PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("WHARF_MARIADB_BIN")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
            .iter()
            .map(PathBuf::from),
    );
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

fn not_found(what: &str, hint: &str) -> Error {
    Error::Io {
        context: format!("looking for {what} in $WHARF_MARIADB_BIN, /usr/sbin, /usr/bin and $PATH"),
        source: io::Error::new(io::ErrorKind::NotFound, format!("not found; {hint}")),
    }
}

/// `mariadbd --no-defaults --datadir=<data>`, plus what it takes to run as
/// root: mariadbd refuses root unless told explicitly, and running as root
/// spares us handing the files to another account.
fn server_command(binaries: &Binaries, data_dir: &Path) -> Result<Command, Error> {
    let mut command = Command::new(&binaries.server);
    // `--no-defaults` must come first, and keeps the machine's my.cnf (a
    // system service's port, socket and datadir) out of our servers.
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data_dir.display()));
    if os::euid()? == 0 {
        command.arg("--user=root");
    }
    // A systemd-managed caller's notify socket is not for our server.
    command.env_remove("NOTIFY_SOCKET");
    Ok(command)
}

/// The server version, as in `mariadbd --version`'s `Ver 10.11.14-MariaDB`.
fn server_version(binaries: &Binaries) -> Result<String, Error> {
    let output = run(Command::new(&binaries.server).arg("--version"))?;
    let mut words = output.split_whitespace();
    words
        .by_ref()
        .find(|word| *word == "Ver")
        .and_then(|_| words.next())
        .map(|version| {
            version
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .ok_or_else(|| Error::Unexpected {
            what: format!("`{} --version`", binaries.server.display()),
            detail: format!("no `Ver <version>` in {:?}", output.trim()),
        })
}

/// Returns the path of a pristine data directory holding the test account
/// and database, building it only if no process on this machine has done so
/// yet.
///
/// Built under a private name and renamed into place, so concurrent test
/// processes never see a half-built one; whoever loses the rename race uses
/// the winner's.
fn ensure_template(binaries: &Binaries) -> Result<PathBuf, Error> {
    // Threads of one process queue here rather than all building one.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);

    let version = server_version(binaries)?;
    // Copies keep the template's owner, which must be the server's account.
    let uid = os::euid()?;
    let template = base_dir().join(format!(
        "{DIR_PREFIX}mariadb-template-{version}-uid{uid}-v{TEMPLATE_REVISION}"
    ));
    if template.join(TEMPLATE_MARKER).is_file() {
        return Ok(template);
    }
    if template.exists() {
        // Damaged, e.g. by a tmp cleaner: move it aside atomically so that
        // nobody takes a half-deleted one for whole, then delete it.
        let trash = create_unique_dir()?;
        let moved = fs::rename(&template, trash.join("template"));
        let _ = fs::remove_dir_all(&trash);
        if let Err(error) = moved {
            if template.exists() {
                return Err(io_context(format!(
                    "moving the broken template {} aside",
                    template.display()
                ))(error));
            }
        }
    }

    tracing::info!(template = %template.display(), "running mariadb-install-db for the template");
    let staging = create_unique_dir()?;
    let built = build_template(binaries, &staging, &template);
    let _ = fs::remove_dir_all(&staging);
    built.map(|()| template)
}

fn build_template(binaries: &Binaries, staging: &Path, template: &Path) -> Result<(), Error> {
    let data = staging.join("data");
    let mut install = Command::new(&binaries.install_db);
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        // A root without password, rather than one tied to the OS account
        // (unix_socket), so `sql()` works whoever runs the tests.
        .arg("--auth-root-authentication-method=normal")
        .args(["--skip-test-db", "--skip-name-resolve"])
        .args(storage_options())
        .current_dir(staging)
        .stdin(Stdio::null());
    if os::euid()? == 0 {
        install.arg("--user=root");
    }
    run(&mut install)?;

    // Bootstrap mode runs statements without a network or grant checks;
    // FLUSH PRIVILEGES loads the grant tables so that CREATE USER works.
    let setup = format!(
        "FLUSH PRIVILEGES;\n\
         CREATE DATABASE `{DATABASE}`;\n\
         CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n\
         GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION;\n"
    );
    let mut bootstrap = server_command(binaries, &data)?;
    bootstrap
        .arg("--bootstrap")
        .args(["--skip-name-resolve", "--log-warnings=0"])
        .args(storage_options())
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let context = || format!("running {} --bootstrap", binaries.server.display());
    let mut child = bootstrap.spawn().map_err(io_context(context()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(setup.as_bytes())
            .map_err(io_context(context()))?;
    }
    let output = child.wait_with_output().map_err(io_context(context()))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: context(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }

    let marker = data.join(TEMPLATE_MARKER);
    fs::write(&marker, b"").map_err(io_context(format!("writing {}", marker.display())))?;
    match fs::rename(&data, template) {
        Ok(()) => Ok(()),
        Err(_) if template.join(TEMPLATE_MARKER).is_file() => {
            tracing::debug!("another process published the MariaDB template first");
            Ok(())
        }
        Err(error) => Err(io_context(format!(
            "moving the new template to {}",
            template.display()
        ))(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encodes_the_database() {
        assert_eq!(percent_encode("test"), "test");
        assert_eq!(percent_encode("my db/ü"), "my%20db%2F%C3%BC");
    }

    #[test]
    fn builder_options_come_last() {
        let options = MariaDb::builder()
            .max_connections(7)
            .option("wait-timeout", "5")
            .server_options();
        assert!(options.contains(&"--max-connections=7".to_owned()));
        assert_eq!(options.last().map(String::as_str), Some("--wait-timeout=5"));
    }

    #[test]
    fn starts_answers_restarts_on_the_same_port() {
        let mut db = MariaDb::start().expect("start");
        assert_eq!(db.sql("test", "SELECT 1 + 1").expect("sql"), "2");
        assert_eq!(
            db.sql("", "SELECT COUNT(*) FROM mysql.user WHERE user = 'wharf'")
                .expect("sql"),
            "1"
        );
        db.sql("test", "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
            .expect("create");
        db.sql("test", "INSERT INTO t VALUES (1)").expect("insert");
        let port = db.port();

        db.kill().expect("kill");
        assert!(!db.is_running());
        assert!(db.sql("test", "SELECT 1").is_err(), "the server is down");
        db.start_again().expect("start again");
        assert_eq!(db.port(), port);
        assert_eq!(
            db.sql("test", "SELECT COUNT(*) FROM t").expect("sql"),
            "1",
            "a commit survives a crash"
        );

        db.restart().expect("restart");
        assert_eq!(db.sql("test", "SELECT id FROM t").expect("sql"), "1");
        assert!(db.start_again().is_err(), "already running");

        let root = db.root_dir().to_owned();
        drop(db);
        assert!(!root.exists(), "drop removes the directory");
    }
}
