//! The replica-set probe: whether a server is a primary or a standby, and
//! how far behind its primary a standby is.

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;
use wharf::Role;

use crate::{Error, PgClient};

/// `pg_is_in_recovery()`, and the standby's replay lag in seconds.
///
/// The usual lag measure, `now() - pg_last_xact_replay_timestamp()`, is the
/// age of the last commit the standby replayed: right while the primary
/// keeps committing, but growing without end while it is idle, when the
/// standby is in fact up to date. So a standby that has replayed all it
/// received (`pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()`) while
/// its WAL receiver runs counts as 0 behind, and only one that is behind
/// is measured by its last commit's age. Without a receiver (it lost its
/// primary, or replays from an archive) having replayed everything says
/// nothing, so the age counts. NULL (behind, and no commit replayed yet)
/// becomes [`Duration::MAX`]: too far behind for any limit. (So a standby
/// that has replayed no commit since it started, probed while it replays
/// some background WAL, is left out of the reads until its next probe.)
///
/// `pg_stat_wal_receiver` shows its `status` only to roles with
/// `pg_read_all_stats`; for others the row (present while a receiver runs)
/// has a NULL status, which is taken to mean streaming.
///
/// This is the check the pooler's `max_replica_lag` makes
/// (`wharf-pooler/src/server/role.rs`), with the receiver condition added.
const ROLE_QUERY: &str = "SELECT pg_is_in_recovery(), CASE \
     WHEN NOT pg_is_in_recovery() THEN 0 \
     WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() AND EXISTS \
       (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming' OR status IS NULL) THEN 0 \
     ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END::float8";

/// Runs [`ROLE_QUERY`] in one round trip (simple protocol: nothing to
/// prepare, and it works behind a transaction-mode pooler).
pub(crate) async fn probe_role(conn: &PgClient) -> Result<Option<Role>, Error> {
    let messages = conn.simple_query(ROLE_QUERY).await?;
    let Some(row) = messages.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    }) else {
        return Ok(None);
    };
    Ok(match row.get(0) {
        Some("f") => Some(Role::Primary),
        Some("t") => Some(Role::Replica {
            lag: lag_from_seconds(row.get(1)),
        }),
        _ => None,
    })
}

/// The lag column: seconds as text, NULL when unknown.
fn lag_from_seconds(seconds: Option<&str>) -> Duration {
    seconds
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
        .unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_read_from_seconds_and_unknown_lag_is_too_much() {
        assert_eq!(lag_from_seconds(Some("0")), Duration::ZERO);
        assert_eq!(lag_from_seconds(Some("1.5")), Duration::from_millis(1500));
        // A standby's clock a little behind the primary's.
        assert_eq!(lag_from_seconds(Some("-0.002")), Duration::ZERO);
        assert_eq!(lag_from_seconds(None), Duration::MAX);
        assert_eq!(lag_from_seconds(Some("Infinity")), Duration::MAX);
    }
}
