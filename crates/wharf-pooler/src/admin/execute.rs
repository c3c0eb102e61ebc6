//! Running console commands, with PgBouncer's refusals: a named database
//! must exist, the console's own database cannot be paused, killed or
//! disabled, and a paused or suspended pooler refuses to be held again.

use std::sync::Arc;

use bytes::BytesMut;

use super::command::{Command, CommandError};
use super::session::Console;
use super::{is_console, show, Role};
use crate::config::Config;
use crate::proto::messages;
use crate::state::PoolerState;
use crate::tls::TlsContexts;

/// Runs `text` and writes its results (or its error) to `out`.
pub(super) async fn run(
    text: &str,
    state: &Arc<PoolerState>,
    console: &Console,
    out: &mut BytesMut,
) {
    let text = text.trim().trim_end_matches(';').trim();
    if text.is_empty() {
        messages::empty_query(out);
        return;
    }
    let result = match Command::parse(text) {
        Ok(command) => execute(text, command, state, console, out).await,
        Err(err) => Err(err),
    };
    if let Err(err) = result {
        tracing::info!(user = %console.user, command = text, error = %err, "admin console command failed");
        out.clear();
        messages::error(out, "ERROR", "08P01", &err.to_string());
    }
}

async fn execute(
    text: &str,
    command: Command,
    state: &Arc<PoolerState>,
    console: &Console,
    out: &mut BytesMut,
) -> Result<(), CommandError> {
    if command.needs_admin() && console.role != Role::Admin {
        return Err(CommandError::AdminNeeded);
    }
    let router = state.router();
    let config = state.config();
    let user_db = |db: &Option<String>, verb: &str| named_db(&config, db.as_deref(), verb);
    let (paused, suspended) = router.global_state();
    let not_held = || -> Result<(), CommandError> {
        if paused || suspended {
            return Err(CommandError::Failed("already suspended/paused".into()));
        }
        Ok(())
    };
    let tag = match command {
        Command::Show(what) => {
            if let Some(why) = show::not_supported(&what) {
                return Err(CommandError::Failed(format!(
                    "SHOW {what} is not supported by wharf: {why}"
                )));
            }
            return show::show(&what, state, out)
                .ok_or_else(|| CommandError::Syntax(text.to_owned()));
        }
        Command::Set { key, value } => return set(&key, &value, state, out),
        Command::Pause(db) => {
            not_held()?;
            user_db(&db, "pause")?;
            router.pause(db.as_deref()).await;
            "PAUSE"
        }
        Command::Resume(db) => {
            resumable(state, &config, &db, paused || suspended)?;
            router.resume(db.as_deref());
            "RESUME"
        }
        Command::Suspend => {
            not_held()?;
            // SUSPEND must be able to finish every transaction in flight,
            // which a paused database would block.
            if router.any_database_paused() {
                return Err(CommandError::Failed(
                    "cannot suspend with paused databases".into(),
                ));
            }
            router.suspend();
            "SUSPEND"
        }
        Command::Disable(db) => {
            set_disabled(state, &config, db, true)?;
            "DISABLE"
        }
        Command::Enable(db) => {
            set_disabled(state, &config, db, false)?;
            "ENABLE"
        }
        Command::Reconnect(db) => {
            user_db(&db, "reconnect")?;
            router.reconnect(db.as_deref());
            "RECONNECT"
        }
        Command::Kill(db) => {
            not_held()?;
            user_db(&db, "kill")?;
            router.kill(db.as_deref());
            "KILL"
        }
        Command::KillClient(id) => {
            let id: u64 = id
                .as_deref()
                .and_then(|id| id.parse().ok())
                .ok_or(CommandError::BadClientId)?;
            if !router.kill_client(id) {
                return Err(CommandError::NoClient);
            }
            "KILL_CLIENT"
        }
        Command::WaitClose(db) => {
            user_db(&db, "wait in")?;
            router.wait_close(db.as_deref()).await;
            "WAIT_CLOSE"
        }
        Command::Reload => {
            state
                .reload()
                .await
                .map_err(|err| CommandError::Failed(err.to_string()))?;
            "RELOAD"
        }
        Command::Shutdown(mode) => {
            state.shutdown(mode);
            "SHUTDOWN"
        }
    };
    messages::command_complete(out, tag);
    Ok(())
}

/// PgBouncer's rules for a database a command names: it must exist, and
/// the console's own cannot be paused, killed or disabled.
fn named_db(config: &Config, db: Option<&str>, verb: &str) -> Result<(), CommandError> {
    match db {
        Some(db) if is_console(db) => Err(CommandError::Failed(format!(
            "cannot {verb} admin db: {db}"
        ))),
        Some(db) if config.database(db).is_none() => Err(CommandError::NoDatabase(db.to_owned())),
        _ => Ok(()),
    }
}

/// PgBouncer's refusals of RESUME: a pooler-wide one needs a paused or
/// suspended pooler that is not shutting down, and a named database must
/// have been paused by name (the console's own never is).
fn resumable(
    state: &PoolerState,
    config: &Config,
    db: &Option<String>,
    held: bool,
) -> Result<(), CommandError> {
    match db.as_deref() {
        None if state.lifecycle().is_shutting_down() => {
            Err(CommandError::Failed("pooler is shutting down".into()))
        }
        None if !held => Err(CommandError::Failed(
            "pooler is not paused/suspended".into(),
        )),
        None => Ok(()),
        Some(name) => {
            if !is_console(name) {
                named_db(config, Some(name), "resume")?;
            }
            if is_console(name) || !state.router().db_control(name).paused_itself() {
                return Err(CommandError::Failed(format!(
                    "database {name} is not paused"
                )));
            }
            Ok(())
        }
    }
}

/// DISABLE (`true`) or ENABLE of `db`, which must be named.
fn set_disabled(
    state: &PoolerState,
    config: &Config,
    db: Option<String>,
    disabled: bool,
) -> Result<(), CommandError> {
    let Some(name) = &db else {
        return Err(CommandError::Failed("a database is required".into()));
    };
    named_db(
        config,
        Some(name),
        if disabled { "disable" } else { "enable" },
    )?;
    state.router().set_disabled(name, disabled);
    Ok(())
}

/// `SET key = value`: a new configuration with the key changed, put in
/// force at once as RELOAD would.
fn set(
    key: &str,
    value: &str,
    state: &PoolerState,
    out: &mut BytesMut,
) -> Result<(), CommandError> {
    let mut config = Config::clone(&state.config());
    config
        .pgbouncer
        .set(key, value)
        .map_err(|err| CommandError::Failed(err.to_string()))?;
    if matches!(key, "auth_type" | "auth_hba_file") {
        // The hba rules follow at once; a broken file refuses the SET. (A
        // small file read on the console's task, as PgBouncer does.)
        config
            .load_hba()
            .map_err(|err| CommandError::Failed(err.to_string()))?;
    }
    let router = state.router();
    // New TLS files or modes apply to new connections; a broken one keeps
    // the old setting.
    let tls = if key.contains("tls") {
        let tls = TlsContexts::from_settings(&config.pgbouncer)
            .map_err(|err| CommandError::Failed(err.to_string()))?;
        for warning in tls.warnings() {
            tracing::warn!("{warning}");
        }
        Arc::new(tls)
    } else {
        router.tls()
    };
    tracing::info!(%key, %value, "SET from the admin console");
    router.replace(Arc::new(config), router.secrets(), tls);
    router.apply();
    messages::command_complete(out, &format!("SET {key}={value}"));
    Ok(())
}
