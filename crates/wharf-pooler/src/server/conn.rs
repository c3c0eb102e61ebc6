//! A logged-in server connection as a pool keeps it, and the narrow API
//! the client side uses while it holds one: its cancel key, its parameters,
//! the bytes to relay, and whether it may go back to the pool.

mod query;

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::sync::OwnedSemaphorePermit;

use super::error::server_error;
use super::{ServerError, ServerParams, ServerTarget};
use crate::cancel::ServerCancels;
use crate::net::{ServerAddr, ServerReader, ServerStream, ServerWriter};
use crate::prepared::ServerStatements;
use crate::proto::{CancelKey, ProtocolError};
use crate::stats::{Moment, ServerGuard};

/// A connection's socket and registry entry are there until it is dropped.
pub(super) const OPEN: &str = "a server connection is open until dropped";

/// How long a closing server gets to answer Terminate by hanging up.
const GOODBYE: std::time::Duration = std::time::Duration::from_secs(2);

/// Server messages during login and the pooler's own queries are small;
/// cap them anyway.
const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// A logged-in server connection, as kept in a pool.
#[derive(Debug)]
pub struct ServerConn {
    /// `None` only while being dropped.
    pub(super) stream: Option<ServerStream>,
    /// Bytes read from the server and not yet passed on.
    pub(super) rbuf: BytesMut,
    /// The server's BackendKeyData, for cancelling its queries.
    pub(super) key: CancelKey,
    pub(super) params: ServerParams,
    /// Set when the connection can no longer be trusted (I/O or protocol
    /// error, or left mid-transaction); the pool closes it on return.
    pub(super) broken: bool,
    /// Handed to a client and not yet given back clean: if the client's
    /// task is dropped mid-transaction (KILL), the pool must close it.
    pub(super) dirty: bool,
    /// Held for as long as the connection lives: its places under
    /// `max_db_connections` and `max_user_connections`.
    pub(super) _permits: Vec<OwnedSemaphorePermit>,
    /// What the connection was opened with.
    pub(super) target: Arc<ServerTarget>,
    /// Which of the target's hosts it is connected to.
    pub(super) host: ServerAddr,
    /// What it was when the pool took it, for pools that care
    /// (`target_session_attrs`).
    pub(super) role: Option<super::Role>,
    /// The pool's generation it was opened in: once the pool's has moved
    /// on, it is closed when released (PgBouncer's `close_needed`).
    pub(super) born: u64,
    /// Its place in the registry `SHOW SERVERS` lists; `None` only while
    /// being dropped.
    pub(super) entry: Option<ServerGuard>,
    /// The statements prepared on it (`max_prepared_statements`).
    pub(super) statements: ServerStatements,
    /// A session that tracks no statements had it since its last
    /// `DEALLOCATE ALL`: statements under any name may be on it.
    pub(super) untracked_use: bool,
    /// Where its cancel requests go, and those on their way to it, which
    /// must land before another client gets it.
    pub(super) cancels: Arc<ServerCancels>,
}

/// A server connection's halves and buffers, borrowed for relaying.
pub struct Wire<'a> {
    /// Bytes from the server.
    pub reader: ServerReader<'a>,
    /// Bytes to the server.
    pub writer: ServerWriter<'a>,
    /// Bytes read from the server and not yet passed on.
    pub rbuf: &'a mut BytesMut,
    /// The server's parameters, which relayed ParameterStatus messages
    /// change.
    pub params: &'a mut ServerParams,
    /// The statements prepared on it.
    pub statements: &'a mut ServerStatements,
    /// Its registry entry, for its figures.
    pub entry: &'a ServerGuard,
}

impl ServerConn {
    /// Its registry entry.
    fn entry(&self) -> &ServerGuard {
        self.entry.as_ref().expect(OPEN)
    }

    /// Borrows the connection for relaying.
    // Inlined: the relay borrows it apart at each step it needs it, which
    // is cheaper than keeping the borrows in every linked client's task.
    #[inline]
    pub fn wire(&mut self) -> Wire<'_> {
        let (reader, writer) = self.stream.as_mut().expect(OPEN).split();
        Wire {
            reader,
            writer,
            rbuf: &mut self.rbuf,
            params: &mut self.params,
            statements: &mut self.statements,
            entry: self.entry.as_ref().expect(OPEN),
        }
    }

    /// The server's BackendKeyData.
    pub fn key(&self) -> CancelKey {
        self.key
    }

    /// Where its cancel requests go.
    pub fn cancels(&self) -> &Arc<ServerCancels> {
        &self.cancels
    }

    /// Its parameters.
    pub fn params(&self) -> &ServerParams {
        &self.params
    }

    /// Its parameters, to record a sync.
    pub fn params_mut(&mut self) -> &mut ServerParams {
        &mut self.params
    }

    /// Whether it must run `DEALLOCATE ALL` before a session that
    /// tracks statements (`tracking`) or not may use it. An untracked
    /// session must not reach the pooler's statements (`wharf_N`) kept
    /// there for others; a tracked one must not meet statements an
    /// untracked session prepared, under the pooler's names too, which
    /// would make the pooler's own Parse fail. Both kinds share a pool
    /// only after a RELOAD changes `max_prepared_statements` or
    /// `pool_mode`.
    pub fn statements_in_the_way(&self, tracking: bool) -> bool {
        if tracking {
            self.untracked_use
        } else {
            !self.statements.is_empty()
        }
    }

    /// A session that tracks no statements has it: until the next
    /// `DEALLOCATE ALL`, statements under any name may be on it.
    pub fn lend_untracked(&mut self) {
        self.untracked_use = true;
    }

    /// Takes its places under the connection limits, held for as long as
    /// it lives.
    pub fn hold_places(&mut self, permits: Vec<OwnedSemaphorePermit>) {
        self._permits = permits;
    }

    /// The connection can no longer be trusted: the pool closes it when it
    /// comes back.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether [`mark_broken`](Self::mark_broken) was called or an error
    /// left it unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Handed to client `client` (a registry id) at `at`: until
    /// [`give_back`](Self::give_back), the pool must not reuse it. Returns
    /// its own registry id.
    pub fn hand_to(&mut self, client: u64, at: Moment) -> u64 {
        self.dirty = true;
        self.entry().entry.set_active(client, at);
        self.entry().entry.id
    }

    /// Released clean by its client at `at`: the pool may reuse it.
    pub fn give_back(&mut self, at: Moment) {
        self.entry().set_idle(at);
        self.dirty = false;
    }

    /// Released, and held back until the cancels on their way to it land.
    pub fn hold_for_cancels(&self) {
        self.entry().set_being_canceled();
    }

    /// Whether the pool must close it rather than reuse it, the pool's
    /// generation being `generation`.
    pub fn unusable(&self, generation: u64) -> bool {
        self.broken || self.dirty || self.born != generation
    }

    /// Runs the pool's liveness check (`server_check_query`), if any.
    pub async fn check(&mut self) -> Result<(), ServerError> {
        let target = self.target.clone();
        let Some(query) = &target.check_query else {
            return Ok(());
        };
        self.entry().set_tested();
        let checked = self.simple_query(query).await;
        self.entry().set_idle(Moment::now());
        checked
    }

    /// The server's address, for errors.
    pub(super) fn addr(&self) -> String {
        self.host.to_string()
    }

    /// The host it is connected to (one of its target's).
    pub fn host(&self) -> &ServerAddr {
        &self.host
    }

    fn io_error(&mut self, source: io::Error) -> ServerError {
        self.broken = true;
        ServerError::Io {
            addr: self.addr(),
            source,
        }
    }

    fn protocol_error(&mut self, source: ProtocolError) -> ServerError {
        self.broken = true;
        ServerError::Protocol {
            addr: self.addr(),
            source,
        }
    }

    /// Reads one whole message into owned memory (login and the pooler's
    /// own queries only; relayed traffic never comes through here).
    pub(super) async fn read_control(&mut self) -> Result<(u8, Vec<u8>), ServerError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
                if len < 4 || len as usize > MAX_CONTROL_MESSAGE {
                    return Err(self.protocol_error(ProtocolError::BadLength {
                        what: "server message",
                        len: len.into(),
                    }));
                }
                let total = 1 + len as usize;
                if self.rbuf.len() >= total {
                    let tag = self.rbuf[0];
                    let body = self.rbuf[5..total].to_vec();
                    self.rbuf.advance(total);
                    return Ok((tag, body));
                }
            }
            match self
                .stream
                .as_mut()
                .expect(OPEN)
                .read_buf(&mut self.rbuf)
                .await
            {
                Ok(0) => return Err(self.io_error(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(source) => return Err(self.io_error(source)),
            }
        }
    }

    /// Writes bytes of the pooler's own (login, its own queries).
    pub(super) async fn write_control(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        match self.stream.as_mut().expect(OPEN).write_all(bytes).await {
            Ok(()) => Ok(()),
            Err(source) => Err(self.io_error(source)),
        }
    }

    /// Runs a query the pooler itself needs (check, reset, SET), swallowing
    /// its results. An error from the server fails it but leaves the
    /// connection usable once ReadyForQuery arrives.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), ServerError> {
        self.query_value(sql).await.map(drop)
    }

    /// Runs a query of the pooler's own and returns the first column of
    /// its first row, as text (`None` for no row or NULL).
    pub(super) async fn query_value(&mut self, sql: &str) -> Result<Option<String>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|source| ServerError::Io {
            addr: self.addr(),
            source,
        })?;
        self.write_control(&out).await?;
        let mut failure = None;
        let mut value = None;
        loop {
            let (tag, body) = self.read_control().await?;
            match tag {
                b'S' => self.params.note(&body),
                b'D' if value.is_none() => value = Some(first_column(&body)),
                // The pooler's reset query dropped the prepared statements.
                b'C' if matches!(&body[..], b"DISCARD ALL\0" | b"DEALLOCATE ALL\0") => {
                    self.statements.clear();
                    self.untracked_use = false;
                    self.entry().entry.set_prepared(0);
                }
                b'E' => failure = Some(server_error(&self.addr(), &body)),
                b'Z' => {
                    if body.first() != Some(&b'I') {
                        // The pooler's own statements never open a
                        // transaction; one left open is not safe to pool.
                        self.broken = true;
                    }
                    return failure.map_or(Ok(value.flatten()), Err);
                }
                // COPY from a check query: refuse to guess, drop it.
                b'G' | b'H' | b'W' => {
                    return Err(
                        self.protocol_error(ProtocolError::Malformed("COPY in a pooler query"))
                    );
                }
                _ => {}
            }
        }
    }
}

/// The first column of a DataRow body, as text.
fn first_column(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let value = body.get(6..6 + len)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

impl Drop for ServerConn {
    /// Says Terminate and waits (a little) for the server to hang up before
    /// its place under the connection limits goes to another; PAUSE waits
    /// for these goodbyes (the pool's `closing` count), so that a paused
    /// database has no backend left in PostgreSQL either.
    fn drop(&mut self) {
        let (Some(mut stream), Some(entry)) = (self.stream.take(), self.entry.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = entry.entry.pool.clone();
        pool.closing
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Out of SHOW SERVERS at once: it serves no one any more.
        drop(entry);
        let permits = std::mem::take(&mut self._permits);
        runtime.spawn(async move {
            let goodbye = async {
                stream.write_all(&[b'X', 0, 0, 0, 4]).await?;
                let mut sink = BytesMut::with_capacity(64);
                while stream.read_buf(&mut sink).await? > 0 {
                    sink.clear();
                }
                Ok::<_, io::Error>(())
            };
            let _ = tokio::time::timeout(GOODBYE, goodbye).await;
            drop(permits);
            pool.closing
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
}
