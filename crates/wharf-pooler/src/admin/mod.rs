//! The admin console: PgBouncer's virtual database `pgbouncer` (alias
//! `wharf`), with its `SHOW` commands and process control (PAUSE, RESUME,
//! DISABLE, ENABLE, RECONNECT, KILL, KILL_CLIENT, SUSPEND, WAIT_CLOSE,
//! SET, RELOAD, SHUTDOWN).
//!
//! Users in `admin_users` may run everything, users in `stats_users` only
//! `SHOW`. Over the Unix socket, a client running as the same OS user as
//! the pooler may log in as `pgbouncer` (or as that OS user's name)
//! without a password, and is an admin. Only the simple query protocol is
//! served, one command per query, case-insensitive, with an optional
//! trailing `;`.

mod columns;
mod command;
mod execute;
mod session;
mod show;

use crate::state::PoolerState;

pub use session::{serve, Console};

/// Whether `database` is the console's virtual database.
pub fn is_console(database: &str) -> bool {
    database == "pgbouncer" || database == "wharf"
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every command (`admin_users`, or the pooler's own OS user over the
    /// Unix socket).
    Admin,
    /// `SHOW` only (`stats_users`).
    Stats,
}

/// The OS user the pooler runs as: its uid and, when `/etc/passwd` names
/// it, its name.
pub fn own_user() -> Option<(u32, Option<String>)> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let name = crate::auth::os_user_name(uid);
    Some((uid, name))
}

/// PgBouncer's rule for logging in to the console without a password:
/// over the Unix socket, from a process of the pooler's own OS user, as
/// `pgbouncer` or as that user's name.
pub fn peer_is_own_user(peer_uid: Option<u32>, user: &str) -> bool {
    let (Some(peer_uid), Some((uid, name))) = (peer_uid, own_user()) else {
        return false;
    };
    peer_uid == uid && (user == "pgbouncer" || name.as_deref() == Some(user))
}

/// The role `user` has on the console under the current settings, if any.
pub fn role_of(state: &PoolerState, user: &str) -> Option<Role> {
    let config = state.config();
    let settings = &config.pgbouncer;
    if settings.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if settings.stats_users.iter().any(|u| u == user)
        || settings.auth_type == crate::config::AuthType::Any
    {
        Some(Role::Stats)
    } else {
        None
    }
}
