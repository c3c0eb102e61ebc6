//! A logged-in client's session: waiting for the client while it has no
//! server, taking one when a message needs it, and the session-wide
//! settings the relay reads (timeouts, shutdown, kill).

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::AsyncRead;

use super::buffers::{self, poll_read_client};
use super::login::Login;
use super::prepare::{self, Tracker, Untracked};
use super::relay::Unlinked;
use super::route::{self, Routing};
use super::state::ProtocolState;
use super::timeouts::{Limit, Timeout, Timeouts};
use super::{fatal, send_fatal, SHUTTING_DOWN};
use crate::cancel::CancelSlot;
use crate::config::PoolMode;
use crate::lifecycle::ShutdownMode;
use crate::net::WriteNow;
use crate::pool::ServerPool;
use crate::proto::{ProtocolError, Scanner};
use crate::server::Params;
use crate::state::PoolerState;
use crate::stats::ClientEntry;

/// Resolves once a shutdown says the session's client must go.
pub(super) type ShutdownWait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A logged-in client of a server pool, from its welcome to its end. The
/// client's socket halves are `R` and `W`.
pub(super) struct Session<'a, R, W> {
    pub(super) reader: R,
    pub(super) writer: W,
    pub(super) pool: &'a ServerPool,
    pub(super) cancel: &'a CancelSlot,
    /// The client's tracked parameters, as it should see them, shared with
    /// the pool's other clients that have the same (a change makes a new
    /// set).
    pub(super) params_set: Arc<Params>,
    /// `params_set` changed since the registry last saw its
    /// application_name.
    pub(super) params_changed: bool,
    /// The pool mode of the server link now or last in place: a RELOAD
    /// that changes the pool's mode must not change how that link ends.
    pub(super) linked_mode: PoolMode,
    /// Bytes from the client; the scanned front part goes to the server.
    pub(super) cbuf: BytesMut,
    pub(super) cscan: Scanner,
    pub(super) protocol: ProtocolState,
    /// The client's prepared statements, in transaction and statement
    /// mode with `max_prepared_statements` on: made at the first message
    /// that needs it (see [`prepare::untracked`]), so a client of the
    /// simple protocol alone never carries one unless it prepares
    /// statements or sends a query over 64 KiB, nor pays for one per
    /// message.
    pub(super) tracker: Option<Box<Tracker>>,
    /// `max_prepared_statements` for `tracker`, 0 when not tracked.
    pub(super) tracker_cap: usize,
    /// Read/write routing: the pin, and the client's named statements'
    /// classes.
    pub(super) routing: Routing,
    pub(super) max_packet: usize,
    pub(super) state: &'a PoolerState,
    /// This session in the client registry (`SHOW CLIENTS`).
    pub(super) entry: &'a ClientEntry,
    /// The user the client logged in as (for per-user timeouts).
    pub(super) user: &'a str,
    pub(super) timeouts: Timeouts,
    /// The configuration generation `timeouts` were read from: re-read
    /// only when a RELOAD has put another in force.
    timeouts_from: Option<u64>,
    /// The session's one timer, moved to whichever deadline is nearest
    /// when that changes (not a timer per message); made when first
    /// armed, so a session without timeouts has none.
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) armed: Option<tokio::time::Instant>,
    /// The extended-protocol group under way was looked at whole when it
    /// began, and needs no tracker (see [`prepare::untracked`]).
    group_clean: bool,
    /// Wakes the session when a shutdown says clients must go; `None`
    /// once that has happened at the strongest mode.
    pub(super) shutdown: Option<ShutdownWait<'a>>,
}

/// Waits for `shutdown`, or forever without one, so that a `select!` arm
/// can name it either way.
pub(super) async fn shutdown_fired(shutdown: &mut Option<ShutdownWait<'_>>) {
    match shutdown {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}

/// What an unlinked session's wait for its client ended with.
enum Waited {
    Read(std::io::Result<usize>),
    Timer,
    Shutdown,
}

impl<'a, R: AsyncRead + Unpin + Send, W: WriteNow + Send> Session<'a, R, W> {
    /// A session for `login`'s client, whose socket halves are `halves`.
    pub(super) fn new(
        (reader, writer): (R, W),
        login: &'a Login,
        cancel: &'a CancelSlot,
        entry: &'a ClientEntry,
        state: &'a PoolerState,
    ) -> Self {
        let pool = &*login.pool;
        let config = state.config();
        let cap = config.pgbouncer.max_prepared_statements;
        Self {
            reader,
            writer,
            pool,
            cancel,
            params_set: login.greeting.tracked().clone(),
            params_changed: false,
            linked_mode: pool.mode(),
            cbuf: BytesMut::new(),
            cscan: Scanner::default(),
            protocol: ProtocolState::default(),
            tracker: None,
            tracker_cap: if pool.mode() == PoolMode::Session {
                0
            } else {
                cap
            },
            routing: Routing::default(),
            max_packet: config.pgbouncer.max_packet_size,
            state,
            entry,
            user: &login.user,
            timeouts: Timeouts::default(),
            timeouts_from: None,
            timer: None,
            armed: None,
            group_clean: false,
            shutdown: Some(Box::pin(
                state
                    .lifecycle()
                    .wait_clients_must_go(ShutdownMode::WaitForServers, entry),
            )),
        }
    }

    /// Serves the session until it ends; returns why, for the log.
    pub(super) async fn run(&mut self) -> &'static str {
        loop {
            self.refresh_timeouts();
            if self.state.lifecycle().clients_must_go().is_some() {
                // Between transactions: no server work is cut.
                self.pooler_error("08P01", SHUTTING_DOWN).await;
                return SHUTTING_DOWN;
            }
            if self.cscan.ready() > 0 {
                if let ControlFlow::Break(reason) = self.transaction().await {
                    return reason;
                }
                continue;
            }
            if self.protocol.terminated() {
                return "client disconnected";
            }
            if let ControlFlow::Break(reason) = self.wait_for_client().await {
                return reason;
            }
        }
    }

    /// A server taken for the client's bytes, the relay, and the server
    /// given back; `Break` with the reason for the log when the session
    /// ends.
    async fn transaction(&mut self) -> ControlFlow<&'static str> {
        let read = self.routes_to_reads();
        // The server and the outcome end with this block, before the
        // last wait: they take no room in the task past it.
        let unlinked = {
            let Ok((mut server, linked_at)) = self.link(read).await else {
                return ControlFlow::Break("no server available");
            };
            let outcome = self.relay(&mut server, linked_at).await;
            self.cancel.unlink();
            match outcome {
                // Nothing waits: no future is built.
                Unlinked::Released(at) if !self.resets_on_release() => {
                    self.release_now(server, at);
                    return ControlFlow::Continue(());
                }
                // Boxed: a reset is rare and the other outcomes come once
                // a session at most, and their futures (the reset, the
                // errors told to the client) would otherwise take room in
                // every client's task.
                outcome => Box::pin(self.unlinked(server, outcome)),
            }
        };
        unlinked.await
    }

    /// Waits, without a server, for the client's next bytes, bounded by
    /// `client_idle_timeout` and cut short by a shutdown.
    async fn wait_for_client(&mut self) -> ControlFlow<&'static str> {
        // client_idle_timeout counts while the client has no server.
        let idle_deadline = self
            .timeouts
            .client_idle
            .get()
            .map(|t| tokio::time::Instant::now() + t);
        self.rearm(idle_deadline);
        let watching = self.shutdown.is_some();
        let event = {
            let Session {
                reader,
                cbuf,
                timer,
                shutdown,
                ..
            } = &mut *self;
            // Polled by hand, as the relay's wait is: this wait is where
            // an idle client's task spends its life, and a `select!` of
            // futures would keep their room in it.
            std::future::poll_fn(|cx| {
                if let Poll::Ready(read) = poll_read_client(reader, cbuf, cx) {
                    return Poll::Ready(Waited::Read(read));
                }
                if let Some(timer) = timer.as_mut().filter(|_| idle_deadline.is_some()) {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Waited::Timer);
                    }
                }
                match shutdown.as_mut().filter(|_| watching) {
                    Some(wait) => wait.as_mut().poll(cx).map(|()| Waited::Shutdown),
                    None => Poll::Pending,
                }
            })
            .await
        };
        match event {
            Waited::Read(Ok(0) | Err(_)) => return ControlFlow::Break("client disconnected"),
            Waited::Read(Ok(_)) => {
                self.answer_route_sets().await;
                // Unlinked: the last server was given back idle.
                if let Err(err) = self.scan_client(false) {
                    return ControlFlow::Break(self.client_broke(err).await);
                }
            }
            Waited::Timer => {
                self.armed = None;
                let message = Timeout::ClientIdle.message();
                self.pooler_error("08P01", message).await;
                return ControlFlow::Break(message);
            }
            Waited::Shutdown => self.shutdown_seen(),
        }
        ControlFlow::Continue(())
    }

    /// Re-reads the timeouts when a RELOAD has put a new configuration in
    /// force (one atomic load per transaction otherwise).
    fn refresh_timeouts(&mut self) {
        let generation = self.state.router().config_generation();
        if self.timeouts_from == Some(generation) {
            return;
        }
        let config = self.state.config();
        let pool = config.pool_settings(self.pool.database(), self.user);
        self.timeouts = Timeouts {
            query: Limit::new(pool.query_timeout),
            query_wait: Limit::new(pool.query_wait_timeout),
            query_wait_notify: Limit::new(config.pgbouncer.query_wait_notify),
            idle_transaction: Limit::new(pool.idle_transaction_timeout),
            transaction: Limit::new(pool.transaction_timeout),
            client_idle: Limit::new(pool.client_idle_timeout),
            log_pooler_errors: config.pgbouncer.log_pooler_errors,
        };
        self.timeouts_from = Some(generation);
    }

    /// The session is over: its read buffer goes to this thread's spares
    /// rather than back to the allocator, for the next client on this
    /// thread that has bytes to read (with a connection per transaction,
    /// `-C`, every login allocated and freed one).
    pub(super) fn end(mut self) {
        if self.cbuf.capacity() > 0 {
            self.cbuf.clear();
            buffers::give_back(&mut self.cbuf);
        }
    }

    /// Moves the session's timer to `deadline`, if that is a change.
    /// Inlined, as it runs three times a transaction and is nearly always
    /// no change (no timeout set, or none near): the call cost more than
    /// the comparison.
    #[inline]
    pub(super) fn rearm(&mut self, deadline: Option<tokio::time::Instant>) {
        if deadline != self.armed {
            self.move_timer(deadline);
        }
    }

    /// [`rearm`](Self::rearm)'s change, kept out of line so that the
    /// comparison inlines alone.
    #[inline(never)]
    fn move_timer(&mut self, deadline: Option<tokio::time::Instant>) {
        if let Some(at) = deadline {
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.armed = deadline;
    }

    /// The shutdown watch fired: from now on only an immediate shutdown
    /// can tell the session anything new.
    pub(super) fn shutdown_seen(&mut self) {
        let lifecycle = self.state.lifecycle();
        self.shutdown = match lifecycle.clients_must_go() {
            Some(ShutdownMode::Immediate) => None,
            _ => Some(Box::pin(
                lifecycle.wait_clients_must_go(ShutdownMode::Immediate, self.entry),
            )),
        };
    }

    /// Ends the session with an error from the pooler itself (PgBouncer's
    /// pooler errors), logged when `log_pooler_errors` is on.
    ///
    /// Boxed, as [`fatal`] is: once per session, and never in an idle
    /// client's task.
    pub(super) fn pooler_error<'s>(
        &'s mut self,
        code: &'s str,
        message: &'s str,
    ) -> Pin<Box<impl Future<Output = ()> + use<'s, 'a, R, W>>> {
        Box::pin(self.report_error(code, message))
    }

    /// [`pooler_error`](Self::pooler_error), unboxed.
    async fn report_error(&mut self, code: &str, message: &str) {
        if self.timeouts.log_pooler_errors {
            tracing::warn!(
                database = %self.pool.database(),
                user = %self.user,
                code,
                "pooler error: {message}"
            );
        }
        tracing::info!(database = %self.pool.database(), user = %self.user, "closing client: {message}");
        send_fatal(&mut self.writer, code, message).await;
    }

    /// Scans what the client sent since the last scan, noting each message
    /// in the protocol state and the pool's counters, and making the
    /// tracker at the first message that needs one (`in_transaction`: the
    /// linked server's last ReadyForQuery said it was in a transaction).
    pub(super) fn scan_client(&mut self, in_transaction: bool) -> Result<(), ProtocolError> {
        let protocol = &mut self.protocol;
        let stats = self.pool.stats();
        let tracker = &mut self.tracker;
        let cap = self.tracker_cap;
        // Messages are held as a tracker holds them before there is one,
        // so that the one that needs it is whole when it is looked at.
        let trackable = cap > 0;
        // Routing reads whole statements: the one that starts a
        // transaction, and named ones for the Binds of later transactions.
        let mut routing = self.pool.routes_reads().then_some(&mut self.routing);
        let routed = routing.is_some();
        let cbuf = &self.cbuf;
        let wants = |tag, len| {
            let held = if trackable {
                prepare::held(tag, len)
            } else if tag == b'X' {
                len
            } else {
                0
            };
            if routed {
                held.max(route::held(tag, len))
            } else {
                held
            }
        };
        let group_clean = &mut self.group_clean;
        let mut refused = None;
        let ready = self
            .cscan
            .scan_at(cbuf, self.max_packet, wants, |tag, at, body| {
                let len =
                    i32::from_be_bytes([cbuf[at + 1], cbuf[at + 2], cbuf[at + 3], cbuf[at + 4]]);
                let total = 1 + usize::try_from(len).unwrap_or(0);
                if trackable && prepare::bind_names_cut(tag, total, body) {
                    refused = Some("Bind whose names run past its first 64 KiB");
                    return ControlFlow::Break(());
                }
                if tracker.is_none() && trackable {
                    match prepare::untracked(protocol, group_clean, tag, &cbuf[at..], body) {
                        Untracked::Pass => {}
                        Untracked::Track => {
                            let owed = (protocol.pending(), protocol.syncs_after_query());
                            let resumed = Tracker::resumed(cap, owed, at, !in_transaction);
                            *tracker = Some(Box::new(resumed));
                        }
                        Untracked::Refuse => {
                            refused = Some(
                                "request naming a statement, a COPY or a long or SQL-level prepared-statement query in an extended-protocol group the pooler did not see begin",
                            );
                            return ControlFlow::Break(());
                        }
                    }
                }
                protocol.note(tag);
                stats.client_message(tag, tracker.is_some());
                // Terminate is for the pooler, not the server, and nothing
                // a client sends after it counts.
                if tag == b'X' {
                    return ControlFlow::Break(());
                }
                if let (Some(routing), Some(body)) = (routing.as_mut(), body) {
                    // Only a whole message says what it is; a longer one
                    // held in part leaves its transaction to the primary.
                    if 5 + body.len() == total {
                        routing.observe(tag, body);
                    }
                }
                if let Some(tracker) = tracker.as_mut() {
                    tracker.scanned(tag, total);
                }
                ControlFlow::Continue(())
            })?;
        if let Some(why) = refused {
            return Err(ProtocolError::Malformed(why));
        }
        if protocol.terminated() {
            self.cbuf.truncate(ready);
        }
        Ok(())
    }

    /// Ends a session whose client broke the protocol; returns the reason
    /// for the log. Boxed, as [`pooler_error`](Self::pooler_error) is.
    pub(super) fn client_broke(
        &mut self,
        err: ProtocolError,
    ) -> Pin<Box<impl Future<Output = &'static str> + use<'_, 'a, R, W>>> {
        Box::pin(async move {
            self.report_error("08P01", &format!("invalid message: {err}"))
                .await;
            "protocol error"
        })
    }

    /// Tells the client its server failed.
    pub(super) fn server_failed(&mut self) -> Pin<Box<impl Future<Output = ()> + use<'_, R, W>>> {
        fatal(
            &mut self.writer,
            "08006",
            "server closed the connection unexpectedly",
        )
    }
}
