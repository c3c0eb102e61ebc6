//! What a server is (primary or standby, read-only by default or not, how
//! far behind), for pools with `target_session_attrs` and
//! `max_replica_lag`.

use std::time::Duration;

use super::{Role, ServerConn, ServerError};
use crate::config::ReplicaLag;

/// Replay lag in seconds: 0 when the standby has replayed all it received
/// (an idle primary sends nothing, and its last commit's age is no lag);
/// the age of the last replayed commit when it is behind; and NULL, taken
/// as too far behind, when it is behind and has replayed no commit yet.
const LAG_QUERY: &str = "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
     THEN 0 ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END";

/// WAL received and not yet replayed, in bytes; NULL (too far behind)
/// when no WAL receiver is streaming.
const BACKLOG_QUERY: &str = "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver \
     WHERE status = 'streaming') THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), \
     pg_last_wal_replay_lsn())::bigint END";

impl ServerConn {
    /// The server's role and whether it is read-only by default: from what
    /// it reported at login (`in_hot_standby` and
    /// `default_transaction_read_only`, PostgreSQL 14+), else asked.
    pub async fn probe_role(&mut self) -> Result<(Role, bool), ServerError> {
        let standby = match self.params.get("in_hot_standby") {
            Some(value) => value == "on",
            None => {
                self.query_value("SELECT pg_is_in_recovery()")
                    .await?
                    .as_deref()
                    == Some("t")
            }
        };
        let read_only = match self.params.get("default_transaction_read_only") {
            Some(value) => value == "on",
            None => {
                self.query_value("SHOW default_transaction_read_only")
                    .await?
                    .as_deref()
                    == Some("on")
            }
        };
        let role = if standby {
            Role::Standby
        } else {
            Role::Primary
        };
        Ok((role, read_only))
    }

    /// How far behind its primary a standby is.
    pub async fn replay_lag(&mut self) -> Result<Duration, ServerError> {
        let seconds = self
            .query_value(LAG_QUERY)
            .await?
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::INFINITY);
        Ok(Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX))
    }

    /// Bytes of WAL the standby has received and not replayed yet; a
    /// standby whose WAL receiver is not streaming counts as too far
    /// behind (what it has received says nothing of its primary then).
    pub async fn replay_backlog(&mut self) -> Result<u64, ServerError> {
        Ok(self
            .query_value(BACKLOG_QUERY)
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX))
    }

    /// Whether the standby is further behind than `limit`.
    pub async fn lags_over(&mut self, limit: ReplicaLag) -> Result<bool, ServerError> {
        Ok(match limit {
            ReplicaLag::Time(limit) => self.replay_lag().await? > limit,
            ReplicaLag::Bytes(limit) => self.replay_backlog().await? > limit,
        })
    }

    /// Records the role the pool took it for.
    pub fn set_role(&mut self, role: Role) {
        self.role = Some(role);
    }

    /// Whether the server has said since (a ParameterStatus relayed or read
    /// by a check) that it is no longer what the pool took it for: a
    /// standby promoted under it.
    pub fn role_changed(&self) -> bool {
        let Some(role) = self.role else {
            return false;
        };
        match self.params.get("in_hot_standby") {
            Some("on") => role == Role::Primary,
            Some("off") => role == Role::Standby,
            _ => false,
        }
    }
}
