//! [`MysqlManager`]: how the pool opens and checks MySQL connections.

use std::fmt;

use mysql_async::consts::StatusFlags;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use crate::Error;

/// Opens single [`mysql_async::Conn`]s for a [`wharf::Pool`].
///
/// - `connect` opens one connection with [`Conn::new`], never through
///   mysql_async's own pool.
/// - `check` sends `COM_PING`.
/// - `has_broken` (on every return, no I/O) reports a connection that
///   mysql_async saw fail, or one whose last statement left a transaction
///   open: reusing that would hand someone else's uncommitted work to the
///   next caller, so the pool closes it and the server rolls it back.
///   Sessions running with `autocommit = 0` are always in a transaction,
///   so their connections are closed on return unless the last statement
///   was a `COMMIT` or `ROLLBACK`.
///
/// mysql_async's `prefer_socket` option (on by default on Unix) makes each
/// connect to a server on this machine log in over TCP, then log in again
/// over the Unix socket the server reports and close the TCP connection in
/// the background. The pool still holds at most `max_size` connections, but
/// the server briefly counts one more per connect. Add
/// `?prefer_socket=false` to the URL (or call
/// [`OptsBuilder::prefer_socket`](mysql_async::OptsBuilder::prefer_socket))
/// when that matters, e.g. close to the server's `max_connections`.
///
/// ```no_run
/// use wharf_mysql::mysql_async::OptsBuilder;
/// use wharf_mysql::MysqlManager;
///
/// let from_url = MysqlManager::from_url("mysql://app:secret@127.0.0.1:3306/app")?;
/// let from_opts = MysqlManager::new(
///     OptsBuilder::default()
///         .ip_or_hostname("127.0.0.1")
///         .user(Some("app"))
///         .pass(Some("secret"))
///         .db_name(Some("app")),
/// );
/// # let _ = (from_url, from_opts);
/// # Ok::<(), wharf_mysql::Error>(())
/// ```
#[derive(Clone)]
pub struct MysqlManager {
    opts: Opts,
}

impl MysqlManager {
    /// A manager connecting with `opts` (an [`Opts`] or an
    /// [`OptsBuilder`](mysql_async::OptsBuilder)).
    ///
    /// Pool options inside `opts` are ignored; the [`wharf::Pool`] settings
    /// apply instead.
    pub fn new(opts: impl Into<Opts>) -> Self {
        Self { opts: opts.into() }
    }

    /// A manager connecting to a `mysql://user:password@host:port/db` URL,
    /// with mysql_async's URL parameters (`prefer_socket`, `compression`,
    /// `stmt_cache_size`, ...).
    ///
    /// # Errors
    ///
    /// [`Error::Mysql`] wrapping [`mysql_async::UrlError`] if the URL is
    /// malformed or has an unknown parameter.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let opts = Opts::from_url(url).map_err(mysql_async::Error::from)?;
        Ok(Self::new(opts))
    }

    /// The options every connection is opened with.
    pub fn opts(&self) -> &Opts {
        &self.opts
    }
}

/// Leaves the password out: managers end up in logs via `Debug` on pools
/// and configs.
impl fmt::Debug for MysqlManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlManager")
            .field("host", &self.opts.ip_or_hostname())
            .field("port", &self.opts.tcp_port())
            .field("socket", &self.opts.socket())
            .field("user", &self.opts.user())
            .field("db_name", &self.opts.db_name())
            .finish_non_exhaustive()
    }
}

impl wharf::Manager for MysqlManager {
    type Connection = Conn;
    type Error = mysql_async::Error;

    async fn connect(&self) -> Result<Conn, mysql_async::Error> {
        // `Opts` is reference-counted inside, so the clone is cheap.
        let conn = Conn::new(self.opts.clone()).await?;
        tracing::debug!(
            connection_id = conn.id(),
            server_version = ?conn.server_version(),
            "opened MySQL connection"
        );
        Ok(conn)
    }

    async fn check(&self, conn: &mut Conn) -> Result<(), mysql_async::Error> {
        conn.ping().await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        // mysql_async sets the flag on I/O errors and also while a command
        // is in flight, so a connection whose query was cancelled midway
        // (its reply unread) counts as broken too.
        conn.is_disconnected() || in_transaction(conn)
    }
}

/// Whether the server's last OK packet said a transaction is open.
///
/// Best effort: after an error the driver keeps no status, so a transaction
/// opened before a failing statement goes unseen here. The
/// [`transaction`](crate::transaction) helper does not depend on this.
fn in_transaction(conn: &Conn) -> bool {
    conn.last_ok_packet().is_some_and(|ok| {
        ok.status_flags()
            .contains(StatusFlags::SERVER_STATUS_IN_TRANS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_rejects_bad_ones() {
        let manager =
            MysqlManager::from_url("mysql://app:s3cret@db.example:3307/shop").expect("valid URL");
        assert_eq!(manager.opts().ip_or_hostname(), "db.example");
        assert_eq!(manager.opts().tcp_port(), 3307);
        assert_eq!(manager.opts().user(), Some("app"));
        assert_eq!(manager.opts().db_name(), Some("shop"));

        let error = MysqlManager::from_url("postgres://app@db/shop").expect_err("wrong scheme");
        assert!(matches!(
            error,
            Error::Mysql(mysql_async::Error::Url(
                mysql_async::UrlError::UnsupportedScheme { .. }
            ))
        ));
        assert!(MysqlManager::from_url("mysql://db/shop?no_such_option=1").is_err());
    }

    #[test]
    fn debug_leaves_out_the_password() {
        let manager = MysqlManager::from_url("mysql://app:s3cret@db:3306/shop").expect("valid URL");
        let debug = format!("{manager:?}");
        assert!(debug.contains("app") && debug.contains("shop"), "{debug}");
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
