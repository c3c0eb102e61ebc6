//! Who the client is: the password exchange `auth_type` names or, with
//! `auth_type = hba`, what the first matching rule of the hba file says
//! (a password method, `cert`, `peer` or `reject`), with PgBouncer's words
//! for each refusal. A user not in `auth_file` is looked up with
//! `auth_query` when the database has an `auth_user`; an unknown user, or
//! a lookup that fails, gets the same exchange and the same error as a
//! wrong password.

use crate::admin;
use crate::auth::{
    authenticate_client, find_rule, os_user_name, ClientAuthError, ClientOrigin, HbaClient,
};
use crate::client::{refuse, Ended};
use crate::config::{AuthType, Config, HbaMethod, Secret};
use crate::net::{ClientStream, Peer};
use crate::proto::Replication;
use crate::router::Lookup;
use crate::state::PoolerState;

/// PgBouncer's words when no hba rule matches the client.
const NO_RULE: &str = "no authentication method is found";
/// PgBouncer's words when the matching hba rule is `reject`.
const REJECTED: &str = "login rejected";
/// PgBouncer's words when a `cert` login fails.
const CERT_FAILED: &str = "certificate authentication failed";
/// PgBouncer's words when a `peer` login fails.
const PEER_FAILED: &str = "unix socket login rejected";
/// PgBouncer's words for a user `trust` does not know.
const TRUST_FAILED: &str = "\"trust\" authentication failed";

/// A user as the pooler knows it.
#[derive(Debug, Clone, Default)]
struct Account {
    /// In `auth_file`, or found by `auth_query`.
    known: bool,
    /// Its secret, if it has one.
    secret: Option<Secret>,
    /// The secret came from `auth_query` (and is forgotten if the password
    /// does not match it).
    looked_up: bool,
}

/// The user's account: from `auth_file`, else from `auth_query` when the
/// database has an `auth_user` (never for the console, as in PgBouncer).
async fn account(state: &PoolerState, config: &Config, database: &str, user: &str) -> Account {
    if let Some(secret) = state.secrets().get(user) {
        return Account {
            known: true,
            secret: Some(secret.clone()),
            looked_up: false,
        };
    }
    let router = state.router();
    if admin::is_console(database) || !router.looks_up_users(config, database) {
        return Account::default();
    }
    match router.look_up(config, database, user).await {
        Lookup::Found(secret) => Account {
            known: true,
            secret,
            looked_up: true,
        },
        Lookup::Unknown | Lookup::Failed => Account::default(),
    }
}

/// How the client must prove who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// A password exchange (or none, for trust and any).
    Password(AuthType),
    /// The TLS client certificate's common name is the user name.
    Cert,
    /// The Unix socket peer's OS user name is the user name.
    Peer,
}

/// Checks the client's identity for `database` and `user`; a client that
/// fails is told why (FATAL) and `Ended`.
pub(in crate::client) async fn authenticate<S: ClientStream>(
    stream: &mut S,
    peer: &Peer,
    state: &PoolerState,
    config: &Config,
    database: &str,
    user: &str,
    replication: Replication,
) -> Result<(), Ended> {
    let proof = match config.pgbouncer.auth_type {
        AuthType::Hba => match hba_proof(stream, peer, config, (database, user), replication) {
            Ok(proof) => proof,
            Err(message) => {
                refuse(stream, state, peer, "08P01", message).await;
                return Err(Ended);
            }
        },
        AuthType::Cert => Proof::Cert,
        other => Proof::Password(other),
    };
    // auth_type = any takes no one's word: no lookup either.
    let account = match proof {
        Proof::Password(AuthType::Any) => Account::default(),
        _ => account(state, config, database, user).await,
    };
    let refusal = match proof {
        // PgBouncer: "The user name must still exist in auth_file" (or be
        // found by auth_query).
        Proof::Password(AuthType::Trust) if account.known => return Ok(()),
        Proof::Password(AuthType::Trust) => Some((
            format!("trust login of unknown user \"{user}\""),
            TRUST_FAILED,
        )),
        Proof::Password(method) => {
            return password(stream, peer, state, method, (database, user), &account).await
        }
        Proof::Cert => cert_refusal(stream, user, account.known).map(|why| (why, CERT_FAILED)),
        Proof::Peer => peer_refusal(stream, user, account.known).map(|why| (why, PEER_FAILED)),
    };
    match refusal {
        None => Ok(()),
        Some((why, message)) => {
            tracing::info!(%peer, %user, "closing client: {why}");
            refuse(stream, state, peer, "08P01", message).await;
            Err(Ended)
        }
    }
}

/// What the first matching hba rule asks of the client, or PgBouncer's
/// words for turning it away.
fn hba_proof<S: ClientStream>(
    stream: &S,
    peer: &Peer,
    config: &Config,
    (database, user): (&str, &str),
    replication: Replication,
) -> Result<Proof, &'static str> {
    let Some(rules) = config.hba.as_deref() else {
        tracing::warn!(%peer, "closing client: auth_type = hba but no hba rules are loaded");
        return Err(NO_RULE);
    };
    let client = HbaClient {
        origin: ClientOrigin::from_peer(peer),
        tls: stream.tls().is_some(),
        database,
        user,
        physical_replication: replication == Replication::Physical,
    };
    let Some(rule) = find_rule(rules, &client) else {
        tracing::info!(%peer, %database, %user, tls = client.tls, file = %rules.path().display(), "closing client: no hba rule matches");
        return Err(NO_RULE);
    };
    let place = format!("{}:{}", rules.path().display(), rule.line);
    tracing::debug!(%peer, %database, %user, rule = %place, method = %rule.method, "hba rule matches");
    Ok(match rule.method {
        HbaMethod::Reject => {
            tracing::info!(%peer, %database, %user, rule = %place, "closing client: hba rule rejects it");
            return Err(REJECTED);
        }
        HbaMethod::Trust => Proof::Password(AuthType::Trust),
        HbaMethod::Md5 => Proof::Password(AuthType::Md5),
        HbaMethod::ScramSha256 => Proof::Password(AuthType::ScramSha256),
        HbaMethod::Password => Proof::Password(AuthType::Plain),
        HbaMethod::Cert => Proof::Cert,
        HbaMethod::Peer => Proof::Peer,
    })
}

/// Why a `cert` login fails, if it does: the user must be known (in
/// `auth_file` or to `auth_query`), the connection TLS, and the verified
/// client certificate's common name the user name.
fn cert_refusal<S: ClientStream>(stream: &S, user: &str, known: bool) -> Option<String> {
    if !known {
        return Some(format!("cert login of unknown user \"{user}\""));
    }
    let Some(tls) = stream.tls() else {
        return Some("cert login needs a TLS connection".to_owned());
    };
    match tls.peer_common_name() {
        None => Some("cert login needs a client certificate".to_owned()),
        Some(cn) if cn != user => Some(format!(
            "client certificate is for \"{cn}\", not user \"{user}\""
        )),
        Some(_) => None,
    }
}

/// Why a `peer` login fails, if it does: the user must be known (in
/// `auth_file` or to `auth_query`) and the OS user at the other end of the
/// Unix socket named like it.
fn peer_refusal<S: ClientStream>(stream: &S, user: &str, known: bool) -> Option<String> {
    if !known {
        return Some(format!("peer login of unknown user \"{user}\""));
    }
    let Some((uid, _)) = stream.peer_credentials() else {
        return Some("peer login needs a Unix socket".to_owned());
    };
    match os_user_name(uid) {
        Some(name) if name == user => None,
        Some(name) => Some(format!("peer is OS user \"{name}\", not \"{user}\"")),
        None => Some(format!("peer's uid {uid} has no name in /etc/passwd")),
    }
}

/// A password exchange (or none, for trust and any) for `user` of
/// `database`.
async fn password<S: ClientStream>(
    stream: &mut S,
    peer: &Peer,
    state: &PoolerState,
    method: AuthType,
    (database, user): (&str, &str),
    account: &Account,
) -> Result<(), Ended> {
    match authenticate_client(stream, method, user, account.secret.as_ref()).await {
        Ok(Some(key)) => {
            // SCRAM pass-through: the key logs the pooler in to servers
            // that hold the same secret.
            state.router().learn_client_key(user, key);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(ClientAuthError::Failed(user)) => {
            if account.looked_up {
                state.router().forget_lookup(database, &user);
            }
            tracing::info!(%peer, %user, known = account.known, "closing client: password authentication failed");
            let message = format!("password authentication failed for user \"{user}\"");
            refuse(stream, state, peer, "28P01", &message).await;
            Err(Ended)
        }
        Err(ClientAuthError::Protocol(err)) => {
            tracing::info!(%peer, error = %err, "closing client during authentication");
            let message = format!("authentication failed: {err}");
            refuse(stream, state, peer, "08P01", &message).await;
            Err(Ended)
        }
    }
}
