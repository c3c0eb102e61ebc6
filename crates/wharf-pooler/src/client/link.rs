//! Taking a server for a client and giving it back: the wait for one
//! (bounded by `query_wait_timeout`, held by PAUSE), bringing its
//! parameters in line with the client's, and on release the reset query,
//! the hold for cancel requests on their way, or closing it when it cannot
//! be trusted.

use std::ops::ControlFlow;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wharf::Pooled;

use super::relay::Unlinked;
use super::session::{shutdown_fired, Session};
use super::spare_box::SpareBox;
use super::{application_name, fatal, Ended, SHUTTING_DOWN};
use crate::config::PoolMode;
use crate::net::WriteNow;
use crate::pool::ServerManager;
use crate::server::params::same_value;
use crate::stats::Moment;

/// What a client queued for longer than `query_wait_notify` is told
/// (PgBouncer 1.25's words).
const QUEUED: &str = "No server connection available in postgres backend, client being queued";

/// Tells a queued client it is queued: a NOTICE, which libpq and drivers
/// pass to the application while the query goes on waiting. A client gone
/// meanwhile is noticed by the next read.
async fn queued_notice<W: AsyncWrite + Unpin>(writer: &mut W) {
    let mut out = bytes::BytesMut::new();
    crate::proto::messages::notice(&mut out, QUEUED);
    let _ = writer.write_all(&out).await;
    let _ = writer.flush().await;
}

/// When a queued client is told it is queued (`query_wait_notify`). No
/// timer goes off for it: the janitor wakes the clients in the engines'
/// queues and those held by a PAUSE now and then
/// (`janitor::sweep_waiting_clients`), and each wake-up of a wait that has not
/// ended looks at the clock here. A client handed a server that it must
/// check first (`server_check_delay`) is in no queue while the check runs:
/// a check slower than the notice time ends without the notice.
struct NoticeDue {
    /// The wait's notice time; `None` once told, or with the notice off.
    at: Option<Moment>,
    /// Whether the wait has been polled once: the first poll, as the
    /// client queues, is too early for any notice and reads no clock.
    polled: bool,
}

impl NoticeDue {
    fn new(at: Option<Moment>) -> Self {
        Self { at, polled: false }
    }

    /// Ready once the notice is due. Registers no waker: the janitor's
    /// sweep wakes the task.
    fn due(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            let polled = std::mem::replace(&mut self.polled, true);
            match self.at {
                Some(at) if polled && Moment::now() >= at => {
                    self.at = None;
                    std::task::Poll::Ready(())
                }
                _ => std::task::Poll::Pending,
            }
        })
    }
}

/// How long a released server waits for a cancel on its way to it when
/// `cancel_wait_timeout` is off.
const CANCEL_HOLD_MAX: Duration = Duration::from_secs(10);

impl<R: AsyncRead + Unpin + Send, W: WriteNow + Send> Session<'_, R, W> {
    /// Takes a server from the pool (from its reads pool for a `read`
    /// transaction) and brings it in line with the client; returns it with
    /// the time it was linked.
    pub(super) async fn link(
        &mut self,
        read: bool,
    ) -> Result<(Pooled<ServerManager>, Moment), Ended> {
        // The wait and the parameter sync are boxed: their futures are
        // large, and an idle client's task is as large as its largest
        // state. Most links need neither; where clients outnumber servers
        // most wait, and the wait's box is a thread's spare (`SpareBox`).
        // One clock reading for the registry's times and the query's
        // start.
        let mut linked_at = Moment::now();
        let mut server = match self.pool.try_get(read) {
            Some(server) => {
                // What `set_waiting` records on the way through a wait.
                self.entry.touch(linked_at);
                self.pool.stats().assigned(Duration::ZERO);
                server
            }
            None => {
                let (server, served_at) =
                    SpareBox::new(self.wait_for_server(read, linked_at)).await?;
                linked_at = served_at;
                server
            }
        };
        // Until given back clean (`release_now`, `release`), the pool must not reuse it
        // (a killed session drops it anywhere).
        let server_id = server.hand_to(self.entry.info.id, linked_at);
        self.entry.set_active(server_id);
        // Sessions that track statements and sessions that do not share a
        // pool after a RELOAD turns tracking off (`max_prepared_statements
        // = 0`, `pool_mode = session`) or on: neither kind may reach the
        // other's statements.
        let tracking = self.tracker_cap > 0;
        if server.statements_in_the_way(tracking) {
            Box::pin(self.pooler_query(&mut server, "DEALLOCATE ALL")).await?;
            linked_at = Moment::now();
        }
        if !tracking {
            server.lend_untracked();
        }
        if !server.params().is_synced_with(&self.params_set) {
            Box::pin(self.sync_params(&mut server)).await?;
            linked_at = Moment::now();
        }
        self.cancel.link(server.cancels().clone(), server.key());
        Ok((server, linked_at))
    }

    /// Waits for a server, from `since` on: bounded by
    /// `query_wait_timeout`, held by PAUSE, cut short by a shutdown, with
    /// `query_wait_notify`'s notice. Returns it with when the wait ended.
    async fn wait_for_server(
        &mut self,
        read: bool,
        since: Moment,
    ) -> Result<(Pooled<ServerManager>, Moment), Ended> {
        let wait = self.timeouts.query_wait.get().unwrap_or(super::NO_TIMEOUT);
        self.entry.set_waiting(since);
        // query_wait_notify: once per wait, as PgBouncer 1.25.
        let notify = self.timeouts.query_wait_notify.get();
        let mut notice = NoticeDue::new(notify.map(|after| since.later_by(after)));
        let got = {
            let pool = self.pool;
            let watching = self.shutdown.is_some();
            let mut shutdown = std::pin::pin!(shutdown_fired(&mut self.shutdown));
            let mut get = std::pin::pin!(pool.get_for(read, Some(wait)));
            loop {
                // Biased: the order costs nothing to keep, a random one a
                // thread-local RNG draw per poll. A wait served before its
                // task runs again is not told it was queued (one served
                // between the two polls is, and it was queued).
                tokio::select! {
                    biased;
                    got = &mut get => break Some(got),
                    _ = &mut shutdown, if watching => break None,
                    _ = notice.due() => queued_notice(&mut self.writer).await,
                }
            }
        };
        match got {
            Some(Ok(server)) => {
                let served_at = Moment::now();
                self.pool.stats().assigned(served_at.since(since));
                Ok((server, served_at))
            }
            // A waiting client has no server work to finish.
            None => {
                self.shutdown_seen();
                self.pooler_error("08P01", SHUTTING_DOWN).await;
                Err(Ended)
            }
            Some(Err(err)) => {
                let message = match &err {
                    wharf::Error::Timeout { .. } => "query_wait_timeout".to_owned(),
                    wharf::Error::Unavailable { .. } => format!(
                        "server login has been failing, try again later (server_login_retry): {err}"
                    ),
                    other => other.to_string(),
                };
                tracing::info!(pool = %self.pool.database(), user = %self.pool.user(), error = %err, "no server for the client");
                self.pooler_error("08P01", &message).await;
                Err(Ended)
            }
        }
    }

    /// Runs a query of the pooler's own on the client's `server` before
    /// the client's: if it fails, the server is closed and the client told.
    async fn pooler_query(
        &mut self,
        server: &mut Pooled<ServerManager>,
        sql: &str,
    ) -> Result<(), Ended> {
        if let Err(err) = server.simple_query(sql).await {
            tracing::warn!(error = %err, sql, "the pooler's query failed on a server");
            server.mark_broken();
            fatal(&mut self.writer, err.sqlstate(), &err.to_string()).await;
            return Err(Ended);
        }
        Ok(())
    }

    /// SETs on `server` the client's tracked parameters it lacks.
    async fn sync_params(&mut self, server: &mut Pooled<ServerManager>) -> Result<(), Ended> {
        let sets: Vec<String> = self
            .params_set
            .iter()
            .filter(|(name, value)| !same_value(name, server.params().get(name), value))
            .map(|(name, value)| format!("SET {name} TO '{}'", value.replace('\'', "''")))
            .collect();
        if !sets.is_empty() {
            self.pooler_query(server, &sets.join(";")).await?;
        }
        // Only if the SETs left the server matching: a configuration
        // reload on the server may have changed a parameter meanwhile.
        let matches = self
            .params_set
            .iter()
            .all(|(name, value)| same_value(name, server.params().get(name), value));
        if matches {
            server.params_mut().mark_synced(self.params_set.clone());
        }
        Ok(())
    }

    /// What follows a linked period: the server goes back, or is closed;
    /// `Break` with the reason for the log when the session ends too.
    pub(super) async fn unlinked(
        &mut self,
        mut server: Pooled<ServerManager>,
        outcome: Unlinked,
    ) -> ControlFlow<&'static str> {
        let session_end = self.linked_mode == PoolMode::Session;
        match outcome {
            Unlinked::Released(at) => {
                self.release(server, false, at).await;
                ControlFlow::Continue(())
            }
            Unlinked::ClientGone { clean } => {
                if clean {
                    self.release(server, session_end, Moment::now()).await;
                } else {
                    // Left mid-transaction or mid-response: the server's
                    // state is unknown, so it is closed.
                    server.mark_broken();
                }
                ControlFlow::Break("client disconnected")
            }
            Unlinked::ServerGone => {
                self.server_failed().await;
                server.mark_broken();
                ControlFlow::Break("server connection failed")
            }
            Unlinked::TransactionInStatementMode => {
                server.mark_broken();
                self.pooler_error(
                    "08P01",
                    "transaction blocks not allowed in statement pooling mode",
                )
                .await;
                ControlFlow::Break("transaction in statement mode")
            }
            Unlinked::ClientBroke(err) => {
                server.mark_broken();
                ControlFlow::Break(self.client_broke(err).await)
            }
            Unlinked::TimedOut(which) => {
                // Mid-transaction or mid-query: never back to the pool.
                server.mark_broken();
                self.pooler_error("08P01", which.message()).await;
                ControlFlow::Break(which.message())
            }
            Unlinked::ShuttingDown { clean } => {
                if clean {
                    self.release(server, session_end, Moment::now()).await;
                } else {
                    server.mark_broken();
                }
                self.pooler_error("08P01", SHUTTING_DOWN).await;
                ControlFlow::Break(SHUTTING_DOWN)
            }
        }
    }

    /// Whether a server given back at a boundary is reset first.
    pub(super) fn resets_on_release(&self) -> bool {
        self.pool.resets_always() && self.pool.reset_query().is_some()
    }

    /// Returns a server, released at `at`, to its pool, reset first when
    /// the mode asks.
    async fn release(
        &mut self,
        mut server: Pooled<ServerManager>,
        session_end: bool,
        mut at: Moment,
    ) {
        self.unlinking();
        if server.is_broken() {
            return;
        }
        // The server stays handed out until given back: a KILL that drops
        // this future during the reset must not pool it mid-query.
        if session_end || self.pool.resets_always() {
            if let Some(reset) = self.pool.reset_query() {
                // Boxed: rare, and its future would otherwise be part of
                // every idle client's task.
                if let Err(err) = Box::pin(server.simple_query(reset)).await {
                    tracing::warn!(error = %err, "server reset query failed; closing server");
                    server.mark_broken();
                }
                // Reset puts parameters back to the server's defaults.
                server.params_mut().forget_sync();
                at = Moment::now();
            }
        }
        self.give_back(server, at);
    }

    /// Returns a server released at a boundary, idle since `at`, to its
    /// pool, when no reset is due (see [`resets_on_release`](Self::resets_on_release)):
    /// nothing waits.
    pub(super) fn release_now(&mut self, server: Pooled<ServerManager>, at: Moment) {
        self.unlinking();
        self.give_back(server, at);
    }

    /// The client's entry shows it without a server, under the
    /// application name it set while it had one.
    fn unlinking(&mut self) {
        self.entry.set_idle();
        if self.params_changed {
            self.params_changed = false;
            self.entry
                .set_application_name(&application_name(&self.params_set));
        }
    }

    /// Gives a server, idle since `at`, back to its pool, unless it broke
    /// or a cancel request may still land on it.
    fn give_back(&self, mut server: Pooled<ServerManager>, at: Moment) {
        if server.is_broken() {
            return;
        }
        let cancels = server.cancels();
        if cancels.abandoned() {
            // A cancel given up after it may have been sent can still
            // land, on whatever query runs there next.
            tracing::info!("closing server: a cancel request to it was given up");
            server.mark_broken();
        } else if cancels.any() {
            let wait = self
                .state
                .config()
                .pgbouncer
                .cancel_wait_timeout
                .unwrap_or(CANCEL_HOLD_MAX);
            tokio::spawn(hold_until_cancels_land(server, wait));
        } else {
            server.give_back(at);
        }
    }
}

/// Keeps a released server from other clients until the cancel requests on
/// their way to it have landed: one landing after another client's query
/// started would cancel that query. A server whose cancel never lands is
/// closed.
async fn hold_until_cancels_land(mut server: Pooled<ServerManager>, wait: Duration) {
    server.hold_for_cancels();
    let cancels = server.cancels().clone();
    let landed = tokio::time::timeout(wait, cancels.all_landed()).await;
    if landed.is_err() || cancels.abandoned() {
        tracing::info!("closing server: a cancel request on its way to it never landed");
        server.mark_broken();
        return;
    }
    server.give_back(Moment::now());
}
