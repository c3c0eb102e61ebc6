//! Cancel keys: each client gets its own random BackendKeyData, and a
//! CancelRequest carrying it is passed on to whichever server that client is
//! linked to at that moment, with that server's own key. A key never reaches
//! a server another client is using: the server a cancel is on its way to
//! is held back from other clients until the cancel has landed (PgBouncer's
//! `sv_being_canceled`).
//!
//! With peering on (`peer_id`, `[peers]`), each key also names the process
//! that made it ([`key`]), and a request whose key names another process
//! of the group is forwarded to it ([`peers`]).

mod key;
mod peers;

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use postgres_protocol::message::frontend;
use tokio::sync::Notify;

use crate::config::Config;
use crate::net::{ServerAddr, ServerStream};
use crate::proto::CancelKey;
use crate::stats::PoolStats;
use crate::tls::ServerTls;
pub use peers::{PeerPoolRow, PeerRow};

/// Where one server connection's cancel requests go, and those on their
/// way to it: one `Arc` per connection, which is all a client's cancel
/// slot needs of its server.
#[derive(Debug)]
pub struct ServerCancels {
    addr: ServerAddr,
    /// Cancel requests go the way the server's connection did: over TLS
    /// when `server_tls_sslmode` asks for it, so the key is never sent in
    /// plain text where the login was not.
    tls: ServerTls,
    count: AtomicUsize,
    landed: Notify,
    /// A cancel request was given up (`cancel_wait_timeout`) after it may
    /// have been sent: the server may still act on it at any time.
    abandoned: AtomicBool,
}

impl ServerCancels {
    /// No cancel on its way yet to the server at `addr`, reached with
    /// `tls`.
    pub fn new(addr: ServerAddr, tls: ServerTls) -> Self {
        Self {
            addr,
            tls,
            count: AtomicUsize::new(0),
            landed: Notify::new(),
            abandoned: AtomicBool::new(false),
        }
    }

    /// Whether a cancel request is on its way.
    pub fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// Whether a cancel request may still land at any time, so that the
    /// server must not serve another client.
    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Returns once no cancel request is on its way.
    pub async fn all_landed(&self) {
        loop {
            let mut landed = pin!(self.landed.notified());
            // Registered before the check, so a landing in between is seen.
            landed.as_mut().enable();
            if !self.any() {
                return;
            }
            landed.await;
        }
    }
}

/// One cancel request counted against its server until dropped; dropped
/// after it was sent but before [`OnItsWay::done`], it marks the server's
/// cancels abandoned.
struct OnItsWay {
    in_flight: Arc<ServerCancels>,
    sent: bool,
    done: bool,
}

impl OnItsWay {
    /// The request was taken by the server, or never sent.
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for OnItsWay {
    fn drop(&mut self) {
        if self.sent && !self.done {
            self.in_flight.abandoned.store(true, Ordering::SeqCst);
        }
        if self.in_flight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.in_flight.landed.notify_waiters();
        }
    }
}

/// A gauge (of a pool's or a peer's cancel requests) raised for as long
/// as it lives.
struct Raised<'a>(&'a AtomicU64);

impl<'a> Raised<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server a client is linked to, as its cancel requests need it.
#[derive(Debug)]
struct Target {
    server: Arc<ServerCancels>,
    key: CancelKey,
}

/// What a client's key currently points at.
#[derive(Debug)]
pub struct CancelSlot {
    target: Mutex<Option<Target>>,
    /// The client's pool, whose SHOW POOLS counts its cancel requests.
    stats: Arc<PoolStats>,
}

impl CancelSlot {
    /// The client is now linked to `server`, whose BackendKeyData is `key`.
    pub fn link(&self, server: Arc<ServerCancels>, key: CancelKey) {
        *self.target.lock() = Some(Target { server, key });
    }

    /// The client has no server.
    pub fn unlink(&self) {
        *self.target.lock() = None;
    }
}

/// Every connected client's cancel key, and the peers cancel requests
/// for other processes go to.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    // The pooler draws the keys: a client can look up any key, but not
    // choose the ones stored, so a fast hash needs no defence against
    // collisions.
    clients: Mutex<foldhash::HashMap<CancelKey, Arc<CancelSlot>>>,
    /// This process's `peer_id`, read once at startup: the keys handed
    /// out carry it; 0 is peering off.
    peer_id: u16,
    peers: peers::PeerPools,
}

/// Removes a client's key when its session ends.
pub struct Registered<'a> {
    registry: &'a CancelRegistry,
    /// The key handed to the client.
    pub key: CancelKey,
    /// Where its cancels go.
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.key);
    }
}

impl CancelRegistry {
    /// No client yet; the keys handed out will name `peer_id` (0: peering
    /// off, fully random keys).
    pub fn new(peer_id: u16) -> Self {
        Self {
            peer_id,
            ..Self::default()
        }
    }

    /// A fresh random key, carrying this process's peer id if peering is
    /// on.
    fn fresh_key(&self) -> CancelKey {
        let random = CancelKey::random();
        if self.peer_id == 0 {
            random
        } else {
            key::stamp(random, self.peer_id)
        }
    }

    /// Gives a new client of the pool counted by `stats` a fresh key,
    /// unique among connected clients.
    pub fn register(&self, stats: Arc<PoolStats>) -> Registered<'_> {
        let slot = Arc::new(CancelSlot {
            target: Mutex::new(None),
            stats,
        });
        let mut clients = self.clients.lock();
        let key = loop {
            let key = self.fresh_key();
            if !clients.contains_key(&key) {
                break key;
            }
        };
        clients.insert(key, slot.clone());
        Registered {
            registry: self,
            key,
            slot,
        }
    }

    /// Handles a CancelRequest under `config`: [`cancel`](Self::cancel)s
    /// the query of this process's client, or forwards the request to the
    /// peer its key names. Given up after `cancel_wait_timeout` (`None`
    /// waits for ever): a server or peer that does not take the request
    /// must not hold the client's connection.
    pub async fn cancel_within(&self, key: CancelKey, config: &Config) {
        let handled = self.dispatch(key, config);
        let Some(wait) = config.pgbouncer.cancel_wait_timeout else {
            return handled.await;
        };
        if tokio::time::timeout(wait, handled).await.is_err() {
            tracing::info!("closing cancel request: cancel_wait_timeout");
        }
    }

    /// Local or forwarded, as the key's peer id says (PgBouncer's rule:
    /// with peering on, a key naming another peer is never looked up here).
    async fn dispatch(&self, key: CancelKey, config: &Config) {
        if self.peer_id == 0 {
            self.cancel(key).await;
        } else if key::peer_of(key) == self.peer_id {
            // Keys are stored with a full TTL; a forwarded request's is lower.
            self.cancel(key::with_full_ttl(key)).await;
        } else {
            self.peers.forward(key, config).await;
        }
    }

    /// SHOW PEERS under `config`.
    pub fn peer_rows(&self, config: &Config) -> Vec<PeerRow> {
        peers::peer_rows(self.peer_id, config)
    }

    /// SHOW PEER_POOLS under `config`.
    pub fn peer_pool_rows(&self, config: &Config) -> Vec<PeerPoolRow> {
        self.peers.rows(self.peer_id, config)
    }

    /// Handles a CancelRequest: forwards it to the server the key's client
    /// is linked to, if any. Unknown keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, key: CancelKey) {
        let Some(slot) = self.clients.lock().get(&key).cloned() else {
            tracing::debug!("cancel request with an unknown key ignored");
            return;
        };
        let (server_key, mut on_its_way) = {
            let target = slot.target.lock();
            let Some(target) = &*target else {
                tracing::debug!("cancel request for a client with no server ignored");
                return;
            };
            // Counted under the lock the client's unlink takes, so a
            // release that follows the unlink sees this cancel.
            target.server.count.fetch_add(1, Ordering::SeqCst);
            (
                target.key,
                OnItsWay {
                    in_flight: target.server.clone(),
                    sent: false,
                    done: false,
                },
            )
        };
        let server = on_its_way.in_flight.clone();
        let addr = &server.addr;
        let waiting = Raised::new(&slot.stats.cancels_waiting);
        let forwarded = match addr.connect(server.tls.tcp()).await {
            Ok(stream) => {
                drop(waiting);
                let _active = Raised::new(&slot.stats.cancels_active);
                on_its_way.sent = true;
                match server.tls.negotiate(stream, addr).await {
                    Ok(stream) => forward_cancel(stream, server_key).await,
                    Err(err) => Err(std::io::Error::other(err)),
                }
            }
            Err(err) => Err(err),
        };
        // Dropped after sending began and before this point
        // (cancel_wait_timeout), the request counts as abandoned; failed, it
        // may have reached the server all the same, so it counts as taken.
        on_its_way.done();
        if let Err(err) = forwarded {
            tracing::warn!(server = %addr, error = %err, "could not forward cancel request");
        }
    }
}

/// Sends a CancelRequest for `key` over `stream`, a new connection to the
/// server (or peer) as the protocol requires, and waits for it to close the
/// connection.
async fn forward_cancel(mut stream: ServerStream, key: CancelKey) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(key.pid, key.secret, &mut out);
    stream.write_all(&out).await?;
    // The server closes the connection when done; waiting for that means
    // the cancel has been delivered when this returns.
    let mut sink = BytesMut::new();
    let _ = stream.read_buf(&mut sink).await;
    Ok(())
}
