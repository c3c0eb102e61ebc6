//! The admin console's operations on pools: PAUSE, RESUME, SUSPEND,
//! DISABLE/ENABLE, RECONNECT, KILL, KILL_CLIENT and WAIT_CLOSE.

use std::sync::Arc;
use std::time::Duration;

use super::Router;
use crate::pool::ServerPool;
use crate::stats::{KillReason, ServerEntry, ServerState};

/// How often PAUSE and WAIT_CLOSE look again at the servers they wait for.
const ADMIN_POLL: Duration = Duration::from_millis(20);

impl Router {
    fn pools_of(&self, db: Option<&str>) -> Vec<Arc<ServerPool>> {
        self.pools()
            .into_iter()
            .filter(|p| db.is_none_or(|db| p.database() == db))
            .collect()
    }

    /// What PAUSE and KILL start with: new transactions of `db` (of
    /// every database with `None`) wait for RESUME, and its servers are
    /// retired. A pooler-wide PAUSE pauses the pooler; a pooler-wide KILL,
    /// as PgBouncer's, pauses each database that has a pool instead, to be
    /// resumed by name.
    fn hold(&self, db: Option<&str>, command: &str) {
        match db {
            Some(db) => self.db_control(db).set_paused(true),
            None if command == "KILL" => {
                for pool in self.pools() {
                    pool.control().set_paused(true);
                }
            }
            None => self.global.set_paused(true),
        }
        tracing::info!(database = db.unwrap_or("*"), "{command}");
        for pool in self.pools_of(db) {
            pool.retire_servers();
        }
    }

    /// Whether a server of `db` (of any with `None`) is still saying
    /// goodbye to PostgreSQL.
    fn closing(&self, db: Option<&str>) -> bool {
        self.stats().pools().iter().any(|p| {
            db.is_none_or(|db| p.database == db)
                && p.closing.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
    }

    fn servers_of(&self, db: Option<&str>) -> Vec<Arc<ServerEntry>> {
        self.stats
            .servers()
            .into_iter()
            .filter(|s| db.is_none_or(|db| s.pool.database == db))
            .collect()
    }

    /// PgBouncer's PAUSE: new transactions of `db` (every database with
    /// `None`) wait, and this returns once every server of it has been
    /// released (at transaction end in transaction mode, at disconnect
    /// in session mode) and closed. RESUME lets the waiting transactions
    /// go on, on new servers.
    pub async fn pause(&self, db: Option<&str>) {
        self.hold(db, "PAUSE");
        while !self.servers_of(db).is_empty() || self.closing(db) {
            for pool in self.pools_of(db) {
                pool.close_idle(usize::MAX);
            }
            tokio::time::sleep(ADMIN_POLL).await;
        }
    }

    /// RESUME: undoes PAUSE and KILL of one database, or (with `None`)
    /// the whole pooler's PAUSE, KILL or SUSPEND. As in PgBouncer, a
    /// database paused by name stays paused until resumed by name.
    pub fn resume(&self, db: Option<&str>) {
        match db {
            Some(db) => self.db_control(db).set_paused(false),
            None => {
                self.global.set_paused(false);
                self.global.set_suspended(false);
            }
        }
        tracing::info!(database = db.unwrap_or("*"), "RESUME");
        self.global.wake_waiters();
    }

    /// Wakes every client waiting for a server, in a pool's queue or held
    /// by PAUSE, KILL or SUSPEND, without serving it: each looks again at
    /// how long it has waited (`query_wait_notify`). The pools are visited
    /// under the router's lock and none is held past its visit: an unused
    /// autodb pool is dropped only when nothing else holds it
    /// (`drop_idle_autodb`).
    pub fn wake_waiting_clients(&self) {
        let mut paused = false;
        for pool in self.pools.read().values() {
            pool.wake_waiting_clients();
            paused |= pool.control().is_paused();
        }
        // Those held before any queue: one wake-up reaches all of them.
        if paused {
            self.global.wake_waiters();
        }
    }

    /// Whether some database is paused by name.
    pub fn any_database_paused(&self) -> bool {
        self.dbs
            .lock()
            .values()
            .any(|control| control.paused_itself())
    }

    /// SUSPEND: no new transaction anywhere starts until RESUME; servers
    /// are left as they are.
    pub fn suspend(&self) {
        tracing::info!("SUSPEND");
        self.global.set_suspended(true);
    }

    /// Whether the whole pooler is paused, and whether it is suspended.
    pub fn global_state(&self) -> (bool, bool) {
        self.global.state()
    }

    /// DISABLE (`true`) or ENABLE (`false`) new client logins to `db`.
    pub fn set_disabled(&self, db: &str, disabled: bool) {
        tracing::info!(database = db, disabled, "DISABLE/ENABLE");
        self.db_control(db).set_disabled(disabled);
    }

    /// RECONNECT: every server of `db` (of all with `None`) is closed when
    /// next released; idle ones now.
    pub fn reconnect(&self, db: Option<&str>) {
        tracing::info!(database = db.unwrap_or("*"), "RECONNECT");
        for pool in self.pools_of(db) {
            pool.retire_servers();
        }
    }

    /// KILL: drops every client and server of `db` (of every database
    /// with `None`) at once, admin console sessions excepted; new
    /// transactions wait for RESUME. Returns how many clients were killed.
    pub fn kill(&self, db: Option<&str>) -> usize {
        self.hold(db, "KILL");
        let mut killed = 0;
        for client in self.stats.clients() {
            if !client.info.admin && db.is_none_or(|db| &*client.info.database == db) {
                client.kill(KillReason::DatabaseKilled);
                killed += 1;
            }
        }
        killed
    }

    /// KILL_CLIENT: disconnects the client with this id (its server, if
    /// it has one mid-transaction, is closed). `false` if there is none.
    pub fn kill_client(&self, id: u64) -> bool {
        match self.stats.client(id) {
            Some(client) => {
                tracing::info!(client = id, "KILL_CLIENT");
                client.kill(KillReason::AdminForced);
                true
            }
            None => false,
        }
    }

    /// WAIT_CLOSE: returns once no server of `db` (of any with `None`) is
    /// still marked for closing by RECONNECT or RELOAD.
    pub async fn wait_close(&self, db: Option<&str>) {
        loop {
            let pending: Vec<_> = self
                .servers_of(db)
                .into_iter()
                .filter(|s| s.close_needed())
                .collect();
            if pending.is_empty() {
                return;
            }
            // Servers still logging in when their pool was retargeted come
            // back idle with the old target; nothing would release them.
            if pending.iter().any(|s| s.state() == ServerState::Idle) {
                for pool in self.pools_of(db) {
                    pool.close_idle(usize::MAX);
                }
            }
            tokio::time::sleep(ADMIN_POLL).await;
        }
    }
}
