//! Forwarding cancel requests to peers (PgBouncer's `[peers]`): a request
//! whose key names another process of the group goes, as the same 16-byte
//! CancelRequest with its TTL one lower, over a new connection to that
//! process, which cancels the query (or forwards it again while the TTL
//! lasts). At most `pool_size` requests are in flight to one peer at once;
//! the others wait, within `cancel_wait_timeout` like any cancel request.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::{forward_cancel, key, Raised};
use crate::config::{Config, Peer, Settings};
use crate::net::{ServerAddr, TcpOptions};
use crate::proto::CancelKey;

/// Where `peer` listens: its `host` (a Unix socket directory if it starts
/// with `/`), else this process's `unix_socket_dir`, at its `port`.
fn peer_addr(peer: &Peer, settings: &Settings) -> ServerAddr {
    let dir = settings
        .unix_socket_dir
        .as_ref()
        .map(|d| d.to_string_lossy().into_owned());
    let host = peer
        .host
        .clone()
        .or(dir)
        .unwrap_or_else(|| "/tmp".to_owned());
    ServerAddr::new(Some(&host), peer.port_or_default())
}

/// One peer's cancel connections, counted for SHOW PEER_POOLS.
#[derive(Debug)]
struct PeerPool {
    addr: ServerAddr,
    size: usize,
    slots: Semaphore,
    /// Requests not sent yet: waiting for a slot or a connection.
    waiting: AtomicU64,
    /// Connections being opened.
    login: AtomicU64,
    /// Requests sent, until the peer closes the connection.
    active: AtomicU64,
}

impl PeerPool {
    fn new(addr: ServerAddr, size: usize) -> Self {
        Self {
            addr,
            size,
            slots: Semaphore::new(size.min(Semaphore::MAX_PERMITS)),
            waiting: AtomicU64::new(0),
            login: AtomicU64::new(0),
            active: AtomicU64::new(0),
        }
    }

    /// Sends `key` to the peer once a slot is free, waiting for the peer
    /// to take it (close the connection).
    async fn send(
        &self,
        key: CancelKey,
        connect_timeout: Duration,
        tcp: &TcpOptions,
    ) -> io::Result<()> {
        let waiting = Raised::new(&self.waiting);
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| io::Error::other("peer pool closed"))?;
        let stream = {
            let _login = Raised::new(&self.login);
            tokio::time::timeout(connect_timeout, self.addr.connect(tcp))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect timed out (server_connect_timeout)",
                    )
                })??
        };
        drop(waiting);
        let _active = Raised::new(&self.active);
        forward_cancel(stream, key).await
    }
}

/// One row of SHOW PEERS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    /// The peer's id.
    pub peer_id: u16,
    /// Its `host` as configured; `None` when unset.
    pub host: Option<String>,
    /// Its port.
    pub port: u16,
    /// Most cancel requests in flight to it at once.
    pub pool_size: usize,
}

/// One row of SHOW PEER_POOLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPoolRow {
    /// The peer's id.
    pub peer_id: u16,
    /// Requests sent to the peer and not yet taken.
    pub cl_active_cancel_req: u64,
    /// Requests waiting for a connection to the peer.
    pub cl_waiting_cancel_req: u64,
    /// Connections to the peer carrying a request.
    pub sv_active_cancel: u64,
    /// Connections to the peer being opened.
    pub sv_login: u64,
}

/// The peer pools, made on a peer's first forwarded request and remade
/// when RELOAD changes its address or `pool_size`.
#[derive(Debug, Default)]
pub(super) struct PeerPools {
    pools: Mutex<HashMap<u16, Arc<PeerPool>>>,
}

impl PeerPools {
    fn pool(&self, id: u16, addr: ServerAddr, size: usize) -> Arc<PeerPool> {
        let mut pools = self.pools.lock();
        match pools.get(&id) {
            Some(pool) if pool.addr == addr && pool.size == size => pool.clone(),
            _ => {
                let pool = Arc::new(PeerPool::new(addr, size));
                pools.insert(id, pool.clone());
                pool
            }
        }
    }

    /// Forwards a cancel request whose key names another process: to the
    /// peer it names, with one TTL less. Dropped, with a log line, when
    /// the TTL is spent (it has been forwarded three times already: the
    /// group's `[peers]` sections disagree) or the peer is not in
    /// `[peers]`.
    pub(super) async fn forward(&self, key: CancelKey, config: &Config) {
        let target = key::peer_of(key);
        let Some(next) = key::hop(key) else {
            tracing::info!(
                peer = target,
                "cancel request dropped: forwarded too many times (its TTL is spent)"
            );
            return;
        };
        let Some(peer) = config.peer(target) else {
            tracing::info!(
                peer = target,
                "cancel request dropped: its key names a peer not in [peers]"
            );
            return;
        };
        let pool = self.pool(
            target,
            peer_addr(peer, &config.pgbouncer),
            config.peer_pool_size(peer),
        );
        tracing::debug!(peer = target, addr = %pool.addr, "forwarding cancel request to peer");
        let connect_timeout = config.pgbouncer.server_connect_timeout;
        let tcp = TcpOptions::from_settings(&config.pgbouncer);
        if let Err(err) = pool.send(next, connect_timeout, &tcp).await {
            tracing::warn!(peer = target, addr = %pool.addr, error = %err, "could not forward cancel request to peer");
        }
    }

    /// SHOW PEER_POOLS: a row for each configured peer but this process,
    /// by peer id.
    pub(super) fn rows(&self, own: u16, config: &Config) -> Vec<PeerPoolRow> {
        let pools = self.pools.lock();
        let gauge = |g: &AtomicU64| g.load(Ordering::Relaxed);
        others(own, config)
            .map(|peer| {
                let pool = pools.get(&peer.id);
                let active = pool.map_or(0, |p| gauge(&p.active));
                PeerPoolRow {
                    peer_id: peer.id,
                    cl_active_cancel_req: active,
                    cl_waiting_cancel_req: pool.map_or(0, |p| gauge(&p.waiting)),
                    sv_active_cancel: active,
                    sv_login: pool.map_or(0, |p| gauge(&p.login)),
                }
            })
            .collect()
    }
}

/// The configured peers but this process (whose own entry is allowed and
/// ignored), by peer id.
fn others(own: u16, config: &Config) -> impl Iterator<Item = &Peer> {
    let mut peers: Vec<&Peer> = config.peers.iter().filter(|p| p.id != own).collect();
    peers.sort_by_key(|p| p.id);
    peers.into_iter()
}

/// SHOW PEERS: each configured peer but this process, by peer id.
pub(super) fn peer_rows(own: u16, config: &Config) -> Vec<PeerRow> {
    others(own, config)
        .map(|peer| PeerRow {
            peer_id: peer.id,
            host: peer.host.clone(),
            port: peer.port_or_default(),
            pool_size: config.peer_pool_size(peer),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse_ini_str(text, Path::new("p.ini"))
            .unwrap()
            .config
    }

    #[test]
    fn addresses_and_rows() {
        let c = config(
            "[pgbouncer]\npeer_id = 2\nunix_socket_dir = /run/w\ndefault_pool_size = 9\n\
             [peers]\n3 = host=10.0.0.7 port=7000 pool_size=4\n2 = host=/tmp/two\n1 =\n",
        );
        assert_eq!(
            peer_addr(c.peer(3).unwrap(), &c.pgbouncer).to_string(),
            "10.0.0.7:7000"
        );
        assert_eq!(
            peer_addr(c.peer(2).unwrap(), &c.pgbouncer).to_string(),
            "/tmp/two/.s.PGSQL.6432"
        );
        assert_eq!(
            peer_addr(c.peer(1).unwrap(), &c.pgbouncer).to_string(),
            "/run/w/.s.PGSQL.6432"
        );
        let rows = peer_rows(2, &c);
        assert_eq!(
            rows,
            vec![
                PeerRow {
                    peer_id: 1,
                    host: None,
                    port: 6432,
                    pool_size: 9
                },
                PeerRow {
                    peer_id: 3,
                    host: Some("10.0.0.7".into()),
                    port: 7000,
                    pool_size: 4
                },
            ]
        );
        let pools = PeerPools::default();
        let ids: Vec<u16> = pools.rows(2, &c).iter().map(|r| r.peer_id).collect();
        assert_eq!(ids, vec![1, 3]);
    }

    #[test]
    fn a_pool_is_kept_until_its_peer_changes() {
        let pools = PeerPools::default();
        let addr = |port| ServerAddr::new(Some("127.0.0.1"), port);
        let first = pools.pool(1, addr(1), 2);
        assert!(Arc::ptr_eq(&first, &pools.pool(1, addr(1), 2)));
        assert!(!Arc::ptr_eq(&first, &pools.pool(1, addr(2), 2)));
        let resized = pools.pool(1, addr(2), 3);
        assert_eq!(resized.slots.available_permits(), 3);
    }
}
