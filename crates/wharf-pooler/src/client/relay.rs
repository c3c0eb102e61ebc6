//! The hot path: bytes between a client and its server, as they come,
//! with only message headers read. One task moves both directions, and
//! the protocol state machine says when the server may go back.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::session::Session;
use super::timeouts::{Clock, Timeout};
use crate::config::PoolMode;
use crate::lifecycle::ShutdownMode;
use crate::net::WriteNow;
use crate::proto::{ProtocolError, Scanner};
use crate::server::ServerConn;
use crate::stats::{EventTime, Moment};
use probe::{probe, Probe};

mod probe;

/// Server events in a row after which the client's side is polled first
/// once.
const SERVER_STREAK: u32 = 16;

/// How much a read asks for at once.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// How a linked period ended.
pub(super) enum Unlinked {
    /// At a transaction (or statement) boundary: the server may go back,
    /// idle since about then (the time the last event read).
    Released(Moment),
    /// The client is gone or said Terminate; `clean` if its server is idle
    /// and may go back to the pool.
    ClientGone {
        /// Whether the server is outside any transaction.
        clean: bool,
    },
    /// The server failed; the client is still to be told (by
    /// [`Session::unlinked`], so that the relay's state does not carry
    /// the telling).
    ServerGone,
    /// A statement-mode client opened a transaction.
    TransactionInStatementMode,
    /// The client broke the protocol.
    ClientBroke(ProtocolError),
    /// A timeout ran out mid-transaction: the server cannot go back.
    TimedOut(Timeout),
    /// A shutdown says the client must go; `clean` if its server is idle
    /// outside any transaction and may go back to the pool.
    ShuttingDown {
        /// Whether the server is outside any transaction.
        clean: bool,
    },
}

/// The server's side of a linked period, and what the relay keeps about
/// it from one event to the next.
struct Linked<'s> {
    mode: PoolMode,
    /// Borrowed apart ([`ServerConn::wire`]) by each step that needs its
    /// parts: kept whole, it is the smaller, and this lives in every
    /// linked client's task.
    server: &'s mut ServerConn,
    sscan: Scanner,
    /// The server's transaction status at its last ReadyForQuery.
    tx_status: u8,
    /// Server events in a row (see [`SERVER_STREAK`]).
    server_streak: u32,
    /// Which reads found nothing since the task was last woken: their
    /// wakers are registered, and polling them again before the task
    /// sleeps would only register them again.
    idle_reads: IdleReads,
    /// The time of the event being handled. The first (the query going
    /// to the server) shares the link's clock reading; each later one
    /// reads its own if it needs one.
    now: EventTime,
    /// The timeouts' clock, kept only when a timeout needs it; boxed, as
    /// most pools set none and this lives in every linked client's task.
    clock: Option<Box<Clock>>,
}

impl Linked<'_> {
    /// Whether the server is in a transaction (or a failed one).
    fn in_transaction(&self) -> bool {
        self.tx_status != b'I'
    }
}

/// See [`Linked::idle_reads`].
#[derive(Default, Clone, Copy)]
struct IdleReads {
    client: bool,
    server: bool,
}

/// One thing that happened while linked: a read or write on either side,
/// the session's timer, or a shutdown.
enum Event {
    Timer,
    Shutdown,
    WroteServer(std::io::Result<usize>),
    ReadClient(std::io::Result<usize>),
    WroteClient(std::io::Result<usize>),
    ReadServer(std::io::Result<usize>),
}

impl<'a, R: AsyncRead + Unpin + Send, W: WriteNow + Send> Session<'a, R, W> {
    /// Relays between the client and `server`, linked at `linked_at`,
    /// until the server may be released or either side goes away.
    ///
    /// Not an `async fn`: one keeps a second copy of its arguments
    /// (rust-lang/rust#62958), and the link is built before the future, so
    /// the future holds it once. It is part of every client's task.
    pub(super) fn relay<'s>(
        &'s mut self,
        server: &'s mut ServerConn,
        linked_at: Moment,
    ) -> impl Future<Output = Unlinked> + Send + use<'a, 's, R, W> {
        let mode = self.pool.mode();
        self.linked_mode = mode;
        // Kept, and the clock read for it, only when a timeout needs it.
        let clock = self
            .timeouts
            .linked()
            .then(|| Box::new(Clock::linked(self.protocol.pending() > 0)));
        let mut link = Linked {
            mode,
            server,
            sscan: Scanner::default(),
            tx_status: b'I',
            server_streak: 0,
            idle_reads: IdleReads::default(),
            now: EventTime::at(linked_at),
            clock,
        };
        async move {
            loop {
                self.pass_to_tracker(&mut link);
                let settled = self.server_settled(&link);
                if settled && self.protocol.take_copy_doubtful() > 0 {
                    // Boxed: rare (a failed COPY), and its state would
                    // otherwise be part of every client's task.
                    match Box::pin(self.probe_server(&mut link)).await {
                        Ok(()) => {
                            // It may have slept, and read the server.
                            link.idle_reads = IdleReads::default();
                            continue;
                        }
                        Err(unlinked) => return unlinked,
                    }
                }
                if let Some(unlinked) = self.unlink_now(&mut link, settled) {
                    return unlinked;
                }
                let deadline = link.clock.as_ref().and_then(|clock| {
                    clock.deadline(
                        &self.timeouts,
                        self.protocol.pending() > 0,
                        link.in_transaction(),
                    )
                });
                self.rearm(deadline.map(|(at, _)| at));
                // Only which timeout: its instant is `self.armed`, and this
                // lives across the wait, in every client's task.
                let timing = deadline.map(|(_, which)| which);
                let pending_before = self.protocol.pending();
                // A block, not a `match` on the write: the write's result
                // would then live across the wait, in every client's task.
                let event = 'event: {
                    if let Some(event) = self.write_now(&mut link) {
                        break 'event event;
                    }
                    let timer_on = timing.is_some();
                    std::future::poll_fn(|cx| self.poll_next_event(&mut link, timer_on, cx)).await
                };
                link.server_streak = match event {
                    Event::ReadServer(_) | Event::WroteClient(_)
                        if link.server_streak < SERVER_STREAK =>
                    {
                        link.server_streak + 1
                    }
                    _ => 0,
                };
                let saw_ready = match self.on_event(&mut link, event, timing) {
                    ControlFlow::Continue(saw_ready) => saw_ready,
                    ControlFlow::Break(unlinked) => return unlinked,
                };
                // The clock moves only when a query starts or ends, so timing
                // costs one clock read per query, not per message.
                let pending = self.protocol.pending();
                let in_tx = link.in_transaction();
                if let Some(clock) = &mut link.clock {
                    if pending != pending_before || saw_ready {
                        let new_query = pending_before == 0 || saw_ready;
                        clock.moved(tokio::time::Instant::now(), pending, new_query, in_tx);
                    }
                }
                link.now.next();
            }
        }
    }

    /// Passes the client's scanned bytes to the tracker, which renames
    /// statements for this server, and lets the replies the pooler makes
    /// go out once nothing is owed before them.
    // The steps of the relay's loop are apart for reading; inlined, they
    // compile to the one loop they were, without a call per event.
    #[inline(always)]
    fn pass_to_tracker(&mut self, link: &mut Linked<'_>) {
        let Some(tracker) = &mut self.tracker else {
            return;
        };
        let ready = self.cscan.ready();
        if ready > 0 {
            let stats = self.pool.stats();
            let wire = link.server.wire();
            let statements = wire.statements;
            tracker.outgoing(
                &self.cbuf[..ready],
                statements,
                self.state.statements(),
                stats,
            );
            stats
                .received
                .fetch_add(ready as u64, std::sync::atomic::Ordering::Relaxed);
            self.cbuf.advance(ready);
            self.cscan.consumed(ready);
            self.entry.set_prepared(tracker.client_statements());
            wire.entry.entry.set_prepared(statements.len());
        }
        if tracker.due() && link.sscan.at_boundary() {
            tracker.make_due(link.sscan.ready());
            link.sscan
                .resized(tracker.apply_edits(link.server.wire().rbuf));
        }
    }

    /// Whether the server owes the client nothing, and everything it sent
    /// has been relayed.
    #[inline(always)]
    fn server_settled(&self, link: &Linked<'_>) -> bool {
        self.protocol.owes_nothing()
            && self.tracker.as_ref().is_none_or(|t| t.settled())
            && link.sscan.ready() == 0
            && link.sscan.at_boundary()
    }

    /// A COPY failed with Syncs the server may or may not have answered:
    /// asks it, relaying whatever else it still sends.
    async fn probe_server(&mut self, link: &mut Linked<'_>) -> Result<(), Unlinked> {
        let Session {
            writer,
            pool,
            params_set,
            params_changed,
            ..
        } = self;
        let mut wire = link.server.wire();
        let server_params = wire.params;
        let mut on_param = |body: &[u8]| {
            if let Some(changed) = server_params.note_relayed(body, params_set) {
                *params_set = pool.param_sets().intern(&changed);
                *params_changed = true;
                server_params.mark_synced(params_set.clone());
            }
        };
        let probed = probe(
            &mut wire.reader,
            &mut wire.writer,
            wire.rbuf,
            writer,
            &mut on_param,
        );
        match probed.await {
            Ok(status) => {
                link.tx_status = status;
                Ok(())
            }
            Err(Probe::Client) => Err(Unlinked::ClientGone { clean: false }),
            Err(Probe::Server(err)) => {
                tracing::warn!(error = %err, "server connection failed");
                Err(Unlinked::ServerGone)
            }
        }
    }

    /// How the linked period ends now, if it does: at a transaction (or
    /// statement) boundary, with the client gone, or for a shutdown.
    /// `settled` is [`server_settled`](Self::server_settled).
    #[inline(always)]
    fn unlink_now(&mut self, link: &mut Linked<'_>, settled: bool) -> Option<Unlinked> {
        if settled && link.mode == PoolMode::Statement && link.in_transaction() {
            return Some(Unlinked::TransactionInStatementMode);
        }
        let unsent = self.tracker.as_mut().is_some_and(|t| !t.out().is_empty());
        let quiet_client = self.cscan.ready() == 0 && self.cscan.at_boundary() && !unsent;
        // Gone in the middle of a message, of an extended-protocol batch
        // or of a COPY: the server waits for bytes that will never come.
        if self.protocol.terminated() && (self.protocol.mid_exchange() || !self.cscan.at_boundary())
        {
            return Some(Unlinked::ClientGone { clean: false });
        }
        if settled && quiet_client && self.protocol.terminated() {
            return Some(Unlinked::ClientGone {
                clean: !link.in_transaction(),
            });
        }
        let between = settled && quiet_client && self.cbuf.is_empty() && !link.in_transaction();
        match self.state.lifecycle().clients_must_go() {
            Some(ShutdownMode::Immediate) => {
                return Some(Unlinked::ShuttingDown { clean: between });
            }
            Some(ShutdownMode::WaitForServers) if between => {
                return Some(Unlinked::ShuttingDown { clean: true });
            }
            _ => {}
        }
        if between && link.mode != PoolMode::Session {
            self.protocol.released();
            return Some(Unlinked::Released(link.now.latest()));
        }
        None
    }

    /// A write that needs no waiting (the socket has room, as it nearly
    /// always has), made at once: the wait's future is not even built.
    #[inline(always)]
    fn write_now(&mut self, link: &mut Linked<'_>) -> Option<Event> {
        let to_server = match self.tracker.as_mut().map(|t| t.out()) {
            Some(out) if !out.is_empty() => &out[..],
            _ => &self.cbuf[..self.cscan.ready()],
        };
        let mut wire = link.server.wire();
        write_at_once(
            (&wire.rbuf[..link.sscan.ready()], &mut self.writer),
            (to_server, &mut wire.writer),
        )
    }

    /// Polls for the next event: a write or read on either side, the
    /// timer when `timer_on`, or a shutdown.
    ///
    /// A poll function, not an async one: the wait's future is then only
    /// the two borrows and the flag it polls with, and the transaction
    /// (and so every client's task) keeps no room for the borrows made
    /// here.
    fn poll_next_event(
        &mut self,
        link: &mut Linked<'_>,
        timer_on: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Event> {
        let client_first = link.server_streak >= SERVER_STREAK;
        let Linked {
            server,
            sscan,
            idle_reads,
            ..
        } = link;
        let wire = server.wire();
        let (mut sr, mut sw, rbuf) = (wire.reader, wire.writer, wire.rbuf);
        let Session {
            reader,
            writer,
            cbuf,
            cscan,
            protocol,
            tracker,
            timer,
            shutdown,
            ..
        } = self;
        // A TLS stream's read also pushes out what its writes left in
        // rustls: it is polled each time, found nothing or not.
        let client_reads_idle = idle_reads.client && !writer.flushed_by_reads();
        let server_reads_idle = idle_reads.server && !sw.flushed_by_reads();
        // Replies the pooler makes take no server bytes: a client
        // that does not read them must not grow the buffer for ever.
        let backlog = tracker.is_some() && rbuf.len() > 4 * READ_CHUNK;
        let client_open = !(protocol.terminated() || backlog);
        let mut client_side = |cx: &mut Context<'_>| {
            let rewritten = tracker.as_mut().map(|t| t.out());
            if let Some(out) = rewritten.filter(|out| !out.is_empty()) {
                Pin::new(&mut sw)
                    .poll_write(cx, out)
                    .map(Event::WroteServer)
            } else if cscan.ready() > 0 {
                let bytes = &cbuf[..cscan.ready()];
                Pin::new(&mut sw)
                    .poll_write(cx, bytes)
                    .map(Event::WroteServer)
            } else if client_open && !client_reads_idle {
                make_room(cbuf);
                let read = poll_read(reader, cx, cbuf);
                idle_reads.client = read.is_pending();
                read.map(Event::ReadClient)
            } else {
                Poll::Pending
            }
        };
        let mut server_side = |cx: &mut Context<'_>| {
            let ready = sscan.ready();
            if ready > 0 {
                let bytes = &rbuf[..ready];
                Pin::new(&mut *writer)
                    .poll_write(cx, bytes)
                    .map(Event::WroteClient)
            } else if server_reads_idle {
                Poll::Pending
            } else {
                make_room(rbuf);
                let read = poll_read(&mut sr, cx, rbuf);
                idle_reads.server = read.is_pending();
                read.map(Event::ReadServer)
            }
        };
        // Polled by hand, not by a `select!` of futures: no future is
        // built per event. The order is fair, though fixed (no random
        // draw): the timer goes first when armed (a server streaming
        // without pause must not hide it); the server's side goes first,
        // as a reply is what a linked client waits for, except after a
        // long run of server events, so a server streaming without pause
        // cannot hold the client's bytes back; the shutdown watch comes
        // last (the top of the loop checks for a shutdown after every
        // event). The watch future persists across events (polling it
        // only re-checks its registration): an immediate shutdown must
        // cut a session stuck waiting on a long query.
        if let Some(timer) = timer.as_mut().filter(|_| timer_on) {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
        }
        let polled = if client_first {
            match client_side(cx) {
                Poll::Pending => server_side(cx),
                ready => ready,
            }
        } else {
            match server_side(cx) {
                Poll::Pending => client_side(cx),
                ready => ready,
            }
        };
        if polled.is_ready() {
            return polled;
        }
        let watched = match shutdown.as_mut() {
            Some(wait) => wait.as_mut().poll(cx).map(|()| Event::Shutdown),
            None => Poll::Pending,
        };
        if watched.is_pending() {
            // The task sleeps now: the next call follows a wake-up.
            *idle_reads = IdleReads::default();
        }
        watched
    }

    /// Handles one event: `Break` when the linked period ends with it,
    /// else whether the server said ReadyForQuery.
    #[inline(always)]
    fn on_event(
        &mut self,
        link: &mut Linked<'_>,
        event: Event,
        timing: Option<Timeout>,
    ) -> ControlFlow<Unlinked, bool> {
        match event {
            Event::Timer => {
                let due = self.armed.take();
                if let (Some(due), Some(which)) = (due, timing) {
                    if due <= tokio::time::Instant::now() {
                        return ControlFlow::Break(Unlinked::TimedOut(which));
                    }
                }
            }
            Event::Shutdown => self.shutdown_seen(),
            Event::WroteServer(Ok(n)) => {
                match &mut self.tracker {
                    // Counted as received when taken from the client's
                    // bytes: the rewritten ones differ in length.
                    Some(tracker) => tracker.out().advance(n),
                    None => {
                        self.cbuf.advance(n);
                        self.cscan.consumed(n);
                        self.pool
                            .stats()
                            .received
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                self.protocol.sent_to_server(&mut link.now);
            }
            Event::WroteServer(Err(err)) | Event::ReadServer(Err(err)) => {
                tracing::warn!(error = %err, "server connection failed");
                return ControlFlow::Break(Unlinked::ServerGone);
            }
            Event::ReadServer(Ok(0)) => {
                tracing::warn!("server closed the connection unexpectedly");
                return ControlFlow::Break(Unlinked::ServerGone);
            }
            Event::ReadServer(Ok(_)) => return self.on_server_bytes(link),
            Event::ReadClient(Ok(0)) | Event::ReadClient(Err(_)) => {
                self.protocol.set_terminated();
            }
            Event::ReadClient(Ok(_)) => {
                if let Err(err) = self.scan_client(link.in_transaction()) {
                    return ControlFlow::Break(Unlinked::ClientBroke(err));
                }
            }
            Event::WroteClient(Ok(n)) => {
                link.server.wire().rbuf.advance(n);
                link.sscan.consumed(n);
                self.pool
                    .stats()
                    .sent
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Event::WroteClient(Err(_)) => {
                // The client is gone mid-response; the server is still
                // sending, so it cannot go back to the pool.
                link.server.wire().rbuf.clear();
                return ControlFlow::Break(Unlinked::ClientGone { clean: false });
            }
        }
        ControlFlow::Continue(false)
    }

    /// Scans what the server sent: the messages the relay reads (for the
    /// protocol state, parameters and prepared statements) and how much
    /// may go to the client. `Break` if the server broke the protocol,
    /// else whether it said ReadyForQuery.
    #[inline(always)]
    fn on_server_bytes(&mut self, link: &mut Linked<'_>) -> ControlFlow<Unlinked, bool> {
        let Linked {
            server,
            sscan,
            tx_status,
            now,
            ..
        } = link;
        let wire = server.wire();
        let (rbuf, server_params, statements, server_entry) =
            (wire.rbuf, wire.params, wire.statements, wire.entry);
        let mut saw_ready = false;
        let stats = self.pool.stats();
        let protocol = &mut self.protocol;
        let params_set = &mut self.params_set;
        let params_changed = &mut self.params_changed;
        let param_sets = self.pool.param_sets();
        let mut tracker = self.tracker.as_mut();
        let tracked = tracker.is_some();
        // Without a tracker (yet), a plain query can still drop
        // every statement the server has (`DISCARD ALL`).
        let watch_resets = !tracked && self.tracker_cap > 0 && !statements.is_empty();
        let wants = |tag, total| {
            let read = tag == b'Z'
                || tag == b'S'
                || (tracked && super::prepare::reply_wanted(tag))
                || (watch_resets && tag == b'C');
            if read {
                total
            } else {
                0
            }
        };
        let scanned = sscan.scan_at(rbuf, i32::MAX as usize, wants, |tag, at, body| {
            if let Some(tracker) = tracker.as_mut() {
                if tracker.reply(tag, at, body, statements) {
                    // Dropped, and no answer to the client.
                    return ControlFlow::Continue(());
                }
            }
            match (tag, body) {
                (b'Z', Some(body)) => {
                    saw_ready = true;
                    *tx_status = body.first().copied().unwrap_or(b'I');
                    protocol.server_ready(*tx_status, stats, now);
                }
                (b'S', Some(body)) => {
                    if let Some(changed) = server_params.note_relayed(body, params_set) {
                        // Both sides changed together: still in
                        // step.
                        *params_set = param_sets.intern(&changed);
                        *params_changed = true;
                        server_params.mark_synced(params_set.clone());
                    }
                }
                (tag, body) => {
                    if watch_resets && tag == b'C' && body.is_some_and(super::prepare::resets_tag) {
                        statements.clear();
                    }
                    protocol.server_message(tag);
                }
            }
            ControlFlow::Continue(())
        });
        if let Some(tracker) = &mut self.tracker {
            sscan.resized(tracker.apply_edits(rbuf));
            self.entry.set_prepared(tracker.client_statements());
            server_entry.entry.set_prepared(statements.len());
        } else if watch_resets {
            server_entry.entry.set_prepared(statements.len());
        }
        if let Err(err) = scanned {
            tracing::warn!(error = %err, "server sent a malformed message");
            return ControlFlow::Break(Unlinked::ServerGone);
        }
        ControlFlow::Continue(saw_ready)
    }
}

/// Polls one read into `buf`'s spare room (as `read_buf` does; the
/// future is only borrows, made again at each poll).
pub(super) fn poll_read<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    std::pin::pin!(reader.read_buf(buf)).poll(cx)
}

/// Makes a write that needs no waiting at once: to the client first, as
/// the wait would (the server's side first), then to the server.
fn write_at_once<C, S>(to_client: (&[u8], &mut C), to_server: (&[u8], &mut S)) -> Option<Event>
where
    C: WriteNow,
    S: WriteNow,
{
    let (bytes, client) = to_client;
    if !bytes.is_empty() {
        if let Some(wrote) = client.write_now(bytes) {
            return Some(Event::WroteClient(wrote));
        }
    }
    let (bytes, server) = to_server;
    if !bytes.is_empty() {
        if let Some(wrote) = server.write_now(bytes) {
            return Some(Event::WroteServer(wrote));
        }
    }
    None
}

/// Keeps a read buffer able to take a full chunk: `read_buf` only reads
/// into spare capacity, and a buffer drained by `advance` may have little.
pub(super) fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}
