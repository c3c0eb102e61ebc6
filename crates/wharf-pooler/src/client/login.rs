//! Logging a client in: who may connect to what, the password check, the
//! pool the client will use, and the welcome it is sent (the parameters a
//! server of its pool reported, with the client's own on top).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use wharf::Pooled;

mod auth;

use super::startup::{open, Opening};
use super::{refuse, Ended};
use crate::admin::{self, Role};
use crate::config::AuthType;
use crate::net::{ClientStream, Peer};
use crate::pool::{Greeting, ServerManager, ServerPool};
use crate::proto::{messages, CancelKey, Replication, Startup};
use crate::router::RouteError;
use crate::server::params::set_param;
use crate::server::{Params, ServerError};
use crate::state::PoolerState;

/// What a login turned out to be.
pub(super) enum LoggedIn {
    /// A client of a server pool.
    Pool(Login),
    /// An admin console session.
    Console {
        user: String,
        role: Role,
        params: Params,
    },
    /// A cancel request, to be passed on.
    Cancel(CancelKey),
    /// A replication client of a server pool: its server is made for it
    /// once it is in ([`super::replication`]).
    Replication(ReplicationLogin),
}

/// A replication client logged in to a server pool.
pub(super) struct ReplicationLogin {
    pub(super) user: String,
    pub(super) pool: Arc<ServerPool>,
    /// Its startup parameters for the server (tracked ones and
    /// `options`).
    pub(super) params: Params,
    pub(super) mode: Replication,
}

/// A client logged in to a server pool.
pub(super) struct Login {
    /// Shared with the pool when it is the pool's user too.
    pub(super) user: Arc<str>,
    pub(super) pool: Arc<ServerPool>,
    /// Its welcome, and its tracked parameters as it should see them.
    pub(super) greeting: Arc<Greeting>,
}

/// Startup, authentication and routing; or a cancel request.
pub(super) async fn login<S: ClientStream>(
    stream: &mut S,
    first: Option<Startup>,
    peer: &Peer,
    state: &PoolerState,
) -> Result<LoggedIn, Ended> {
    // One snapshot for the whole login: a RELOAD in between must not mix
    // two configurations' rules.
    let config = state.config();
    let opening = open(stream, first, peer, state, &config.pgbouncer).await?;
    let (user, database, client_params, replication) = match opening {
        Opening::Cancel(key) => return Ok(LoggedIn::Cancel(key)),
        Opening::Session {
            user,
            database,
            params,
            replication,
        } => (user, database, params, replication),
    };
    // auth_type = any logs every client in as the database's forced user;
    // without one there is nobody to log in as (PgBouncer refuses too).
    if config.pgbouncer.auth_type == AuthType::Any
        && config
            .database(&database)
            .is_some_and(|db| db.user.is_none())
    {
        tracing::warn!(%peer, %database, "closing client: auth_type = any needs a forced user");
        let message = format!(
            "bouncer config error: auth_type = any needs database \"{database}\" to force a user="
        );
        refuse(stream, state, peer, "08P01", &message).await;
        return Err(Ended);
    }
    let door = door(stream, peer, state, &database, &user).await?;
    if door != Door::Pool && replication != Replication::None {
        let message = "replication connections are not supported on the admin console";
        refuse(stream, state, peer, "08P01", message).await;
        return Err(Ended);
    }
    if door == Door::Pool && state.lifecycle().is_shutting_down() {
        // Only the Unix socket is still open: for the admin console.
        tracing::info!(%peer, %database, "closing client: pooler is shutting down");
        refuse(stream, state, peer, "08P01", "pooler is shutting down").await;
        return Err(Ended);
    }
    if door == Door::Pool {
        if let Some(message) = over_client_limit(state, &config, &database, &user) {
            tracing::warn!(%peer, %database, %user, "closing client: {message}");
            refuse(stream, state, peer, "53300", message).await;
            return Err(Ended);
        }
    }
    if !matches!(door, Door::OwnUser(_)) {
        auth::authenticate(stream, peer, state, &config, &database, &user, replication).await?;
    }
    if let Door::Console(role) | Door::OwnUser(role) = door {
        return Ok(LoggedIn::Console {
            user,
            role,
            params: client_params,
        });
    }
    let pool = route(stream, peer, state, &database, &user).await?;
    if replication != Replication::None {
        return Ok(LoggedIn::Replication(ReplicationLogin {
            user,
            pool,
            params: client_params,
            mode: replication,
        }));
    }
    let mut client_params = client_params;
    let add_host = config.pgbouncer.application_name_add_host;
    if add_host {
        let app = super::application_name(&client_params);
        set_param(
            &mut client_params,
            "application_name",
            format!("{app} - {peer}"),
        );
    }
    let greeting = match pool.greeting(&client_params, !add_host) {
        Some(greeting) => greeting,
        // A paused database opens no server, not even for a welcome.
        None => match first_server(&pool).await {
            Ok(server) => pool.first_greeting(server.params().values(), &client_params, !add_host),
            Err((code, message)) => {
                tracing::warn!(%peer, pool = %pool.database(), error = %message, "closing client: no server connection");
                refuse(stream, state, peer, &code, &message).await;
                return Err(Ended);
            }
        },
    };
    let user = match pool.shared_names() {
        (_, pool_user) if *pool_user == *user => pool_user,
        _ => user.into(),
    };
    Ok(LoggedIn::Pool(Login {
        user,
        pool,
        greeting,
    }))
}

/// PgBouncer's words for a client that would go over
/// `max_db_client_connections` of its database or
/// `max_user_client_connections` of its user (PgBouncer 1.24), checked
/// before the password as PgBouncer does. Logged-in clients count (the
/// console's do not); logins still under way do not, so clients logging in
/// at the same moment may pass a limit together.
fn over_client_limit(
    state: &PoolerState,
    config: &crate::config::Config,
    database: &str,
    user: &str,
) -> Option<&'static str> {
    let settings = &config.pgbouncer;
    let db_max = config
        .database(database)
        .and_then(|db| db.max_db_client_connections)
        .filter(|&n| n > 0)
        .unwrap_or(settings.max_db_client_connections);
    let user_max = config
        .user(user)
        .and_then(|u| u.max_user_client_connections)
        .filter(|&n| n > 0)
        .unwrap_or(settings.max_user_client_connections);
    if db_max == 0 && user_max == 0 {
        return None;
    }
    let clients = state.router().stats().clients();
    let count = |of: &dyn Fn(&crate::stats::ClientInfo) -> bool| {
        clients
            .iter()
            .filter(|c| !c.info.admin && of(&c.info))
            .count()
    };
    if db_max > 0 && count(&|c| *c.database == *database) >= db_max {
        return Some("client connections exceeded (max_db_client_connections)");
    }
    if user_max > 0 && count(&|c| *c.user == *user) >= user_max {
        return Some("client connections exceeded (max_user_client_connections)");
    }
    None
}

/// Which way a client comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    /// To a database of servers.
    Pool,
    /// To the console, as a user of `admin_users` or `stats_users`.
    Console(Role),
    /// To the console, as the pooler's own OS user over the Unix socket,
    /// who needs no password.
    OwnUser(Role),
}

/// Which door the client takes; a user the console does not know is
/// refused.
async fn door<S: ClientStream>(
    stream: &mut S,
    peer: &Peer,
    state: &PoolerState,
    database: &str,
    user: &str,
) -> Result<Door, Ended> {
    if !admin::is_console(database) {
        return Ok(Door::Pool);
    }
    let peer_uid = stream.peer_credentials().map(|(uid, _)| uid);
    if admin::peer_is_own_user(peer_uid, user) {
        return Ok(Door::OwnUser(Role::Admin));
    }
    match admin::role_of(state, user) {
        Some(role) => Ok(Door::Console(role)),
        None => {
            tracing::info!(%peer, %user, "closing client: not allowed on the admin console");
            refuse(stream, state, peer, "08P01", "not allowed").await;
            Err(Ended)
        }
    }
}

/// The pool for the client's database and user, refusing a disabled or
/// unknown database.
async fn route<S: ClientStream>(
    stream: &mut S,
    peer: &Peer,
    state: &PoolerState,
    database: &str,
    user: &str,
) -> Result<Arc<ServerPool>, Ended> {
    match state.router().route(database, user) {
        Ok(pool) if pool.control().is_disabled() => {
            tracing::info!(%peer, %database, "closing client: database disabled");
            // PgBouncer 1.24's words, checked once the client has proved
            // who it is (before 1.24: "database does not allow
            // connections: …", before the password).
            let message = format!("database \"{database}\" is disabled");
            refuse(stream, state, peer, "08P01", &message).await;
            Err(Ended)
        }
        Ok(pool) => Ok(pool),
        Err(err @ RouteError::UnknownDatabase(_)) => {
            tracing::info!(%peer, %database, "closing client: unknown database");
            refuse(stream, state, peer, "3D000", &err.to_string()).await;
            Err(Ended)
        }
        Err(err) => {
            tracing::warn!(%peer, error = %err, "closing client: pool unusable");
            refuse(stream, state, peer, "08P01", &err.to_string()).await;
            Err(Ended)
        }
    }
}

/// The first server of a pool that has never had one, for the welcome.
/// Server pools fail fast, so a failed server login reaches the client at
/// once, with the server's own SQLSTATE and message when it sent one (a
/// wrong password does not get better by waiting).
async fn first_server(pool: &ServerPool) -> Result<Pooled<ServerManager>, (String, String)> {
    pool.get(None).await.map_err(|err| server_unavailable(&err))
}

/// The SQLSTATE and message to give a client for a pool error.
pub(super) fn server_unavailable(err: &wharf::Error) -> (String, String) {
    let cause = match err {
        wharf::Error::Unavailable { last_error } | wharf::Error::Timeout { last_error, .. } => {
            last_error.as_ref()
        }
        _ => None,
    };
    refusal(cause.and_then(|c| c.downcast_ref::<ServerError>()), err)
}

/// The SQLSTATE and message to give a client whose server could not be
/// had: the server's own error when it sent one (a wrong password does
/// not get better by waiting; a role without REPLICATION), else
/// `failure` after PgBouncer's "pooler could not connect to server".
pub(super) fn refusal(
    server: Option<&ServerError>,
    failure: &dyn std::fmt::Display,
) -> (String, String) {
    match server {
        Some(ServerError::Server { code, message, .. }) => (code.clone(), message.clone()),
        _ => (
            "08006".to_owned(),
            format!("pooler could not connect to server: {failure}"),
        ),
    }
}

/// AuthenticationOk, the welcome parameters, the client's cancel key, a
/// NOTICE with `login_notify_message` when it is set, and ReadyForQuery,
/// in one write.
pub(super) async fn send_welcome<S: ClientStream>(
    stream: &mut S,
    login: &Login,
    key: CancelKey,
    notify_message: &str,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    messages::auth_ok(&mut out);
    out.extend_from_slice(login.greeting.messages());
    messages::backend_key_data(&mut out, key);
    if !notify_message.is_empty() {
        messages::notice(&mut out, notify_message);
    }
    messages::ready_for_query(&mut out, b'I');
    stream.write_all(&out).await
}
