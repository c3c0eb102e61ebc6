//! Throwaway PostgreSQL clusters for tests.
//!
//! Each [`PgCluster`] is a private postmaster with its own temporary
//! directory (data, Unix socket, log) and its own TCP port on `127.0.0.1`.
//! `initdb` runs once per machine into a cached template that every cluster
//! copies, so starting a cluster costs a file copy plus server startup.
//!
//! The superuser is `postgres` with password `postgres`: TCP connections use
//! SCRAM authentication, connections over the cluster's Unix socket are
//! trusted. When the tests run as root, the server runs as the unprivileged
//! OS user `postgres` (created if missing), because PostgreSQL refuses to run
//! as root.
//!
//! ```no_run
//! use wharf_testkit::PgCluster;
//!
//! let mut pg = PgCluster::builder().max_connections(20).start()?;
//! assert_eq!(pg.psql("postgres", "select 1 + 1")?, "2");
//! let url = pg.url("postgres"); // hand this to the client under test
//! pg.kill()?; // simulate a crash
//! pg.start_again()?;
//! # let _ = url;
//! # Ok::<(), wharf_testkit::Error>(())
//! ```
//!
//! Binaries are found through `WHARF_PG_BIN`, then the newest
//! `/usr/lib/postgresql/*/bin`, then `pg_config --bindir`; see
//! [`pg_bin_dir`].
//!
//! Cluster directories and the template live in `$WHARF_TESTKIT_TMPDIR` if
//! set, else in `/dev/shm` if that is a tmpfs of at least 1 GiB (copying the
//! template there is about twenty times faster than onto a disk), else in
//! the system temp dir. Directories left behind by test processes that were
//! killed are removed, and their servers stopped, by the next process that
//! starts a cluster.

#![warn(missing_docs)]

mod bin;
mod cluster;
pub mod mariadb;
mod os;
mod process;
pub mod redis;
pub mod redis_cluster;
mod template;

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub use bin::pg_bin_dir;
pub use cluster::{PgCluster, PgClusterBuilder};

/// Everything that can go wrong while managing a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries not found (looked at $WHARF_PG_BIN, /usr/lib/postgresql/*/bin \
         and `pg_config --bindir`): install the Debian package `postgresql` \
         (apt-get install postgresql) or point WHARF_PG_BIN at a directory containing `postgres`"
    )]
    BinariesNotFound,

    /// `WHARF_PG_BIN` is set to a directory without a `postgres` binary.
    #[error("WHARF_PG_BIN={} contains no `postgres` binary", .0.display())]
    InvalidBinDir(PathBuf),

    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being attempted.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An external command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line that was run.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },

    /// Output of the OS or of a PostgreSQL tool was not understood.
    #[error("could not understand {what}: {detail}")]
    Unexpected {
        /// Where the output came from.
        what: String,
        /// What was wrong with it.
        detail: String,
    },

    /// The OS user for the server does not exist and could not be created.
    #[error("OS user `{user}` does not exist and could not be created: {detail}")]
    NoServerUser {
        /// The user name.
        user: String,
        /// Why creating it failed.
        detail: String,
    },

    /// The server did not start accepting connections.
    #[error("PostgreSQL failed to start: {reason}\n--- tail of {} ---\n{log_tail}", .log.display())]
    Start {
        /// What went wrong.
        reason: String,
        /// The server log.
        log: PathBuf,
        /// The last lines the server wrote during this attempt.
        log_tail: String,
    },

    /// The server did not exit in time after being signalled, so it was killed.
    #[error("PostgreSQL (pid {pid}) did not exit within {timeout:?} and was killed")]
    StopTimeout {
        /// The postmaster's process id.
        pid: u32,
        /// How long it was given.
        timeout: Duration,
    },

    /// Processes of the cluster were still alive after SIGKILL.
    #[error("processes {pids:?} of {} survived SIGKILL", .dir.display())]
    Stragglers {
        /// The data directory the processes run in.
        dir: PathBuf,
        /// Their process ids.
        pids: Vec<u32>,
    },

    /// [`PgCluster::start_again`] was called while the server is running.
    #[error("the PostgreSQL server is already running")]
    AlreadyRunning,
}

/// Adapter for `map_err` that attaches what was being attempted to an
/// [`io::Error`].
pub(crate) fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        context: context.into(),
        source,
    }
}
