//! The machine-wide initdb template that clusters copy.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use crate::bin::server_major_version;
use crate::os::{base_dir, chown_tree, create_unique_dir, euid, run, run_as, Owner, DIR_PREFIX};
use crate::{io_context, Error};

/// The superuser initdb creates.
pub(crate) const SUPERUSER: &str = "postgres";
/// Its password.
pub(crate) const PASSWORD: &str = "postgres";

/// Bump whenever the initdb invocation changes, so that templates made by
/// older code are not reused.
const REVISION: u32 = 1;

/// Returns the path of a pristine data directory for the server in `bin`,
/// owned by `owner`, running initdb only if no process on this machine has
/// done so yet.
///
/// The template is built under a private name and renamed into place, so
/// concurrent test processes never see a half-built one; whoever loses the
/// rename race uses the winner's.
pub(crate) fn ensure_template(bin: &Path, owner: Option<Owner>) -> Result<PathBuf, Error> {
    // Threads of one process queue here rather than all running initdb.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);

    let major = server_major_version(bin)?;
    // Files copied from the template keep its owner, so each server user
    // needs its own.
    let uid = match owner {
        Some(owner) => owner.uid,
        None => euid()?,
    };
    let template = base_dir().join(format!("{DIR_PREFIX}template-{major}-uid{uid}-v{REVISION}"));
    if is_complete(&template) {
        return Ok(template);
    }
    if template.exists() {
        // Damaged, e.g. by a tmp cleaner; see `discard`.
        discard(&template)?;
    }

    tracing::info!(template = %template.display(), "running initdb for the cluster template");
    let staging = create_unique_dir()?;
    let built = build(bin, owner, &staging, &template);
    let _ = fs::remove_dir_all(&staging);
    built.map(|()| template)
}

fn build(bin: &Path, owner: Option<Owner>, staging: &Path, template: &Path) -> Result<(), Error> {
    let pwfile = staging.join("pwfile");
    fs::write(&pwfile, format!("{PASSWORD}\n"))
        .map_err(io_context(format!("writing {}", pwfile.display())))?;
    if let Some(owner) = owner {
        chown_tree(staging, owner)?;
    }
    let data = staging.join("data");
    run(run_as(
        Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["-U", SUPERUSER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C"])
            // The template only has to survive until the next reboot at
            // most, and skipping the final fsync saves most of initdb's time.
            .arg("--no-sync")
            .current_dir(staging),
        owner,
    ))?;
    check_hba(&data)?;
    match fs::rename(&data, template) {
        Ok(()) => Ok(()),
        Err(_) if is_complete(template) => {
            tracing::debug!("another process published the template first");
            Ok(())
        }
        Err(error) => Err(io_context(format!(
            "moving the new template to {}",
            template.display()
        ))(error)),
    }
}

fn is_complete(template: &Path) -> bool {
    [
        "PG_VERSION",
        "global/pg_control",
        "pg_hba.conf",
        "postgresql.conf",
    ]
    .iter()
    .all(|file| template.join(file).is_file())
}

/// Moves a broken template out of the way atomically, so that no other
/// process can take a half-deleted one for a complete one, then deletes it.
fn discard(template: &Path) -> Result<(), Error> {
    let trash = create_unique_dir()?;
    let moved = fs::rename(template, trash.join("template"));
    let _ = fs::remove_dir_all(&trash);
    match moved {
        // Someone else may have discarded it already.
        Err(error) if template.exists() => Err(io_context(format!(
            "moving the broken template {} aside",
            template.display()
        ))(error)),
        _ => Ok(()),
    }
}

/// The clusters promise password logins over TCP from 127.0.0.1 and trusted
/// logins over the socket; initdb's defaults provide that only as long as the
/// flags above are honoured, so check rather than assume.
fn check_hba(data: &Path) -> Result<(), Error> {
    let path = data.join("pg_hba.conf");
    let hba =
        fs::read_to_string(&path).map_err(io_context(format!("reading {}", path.display())))?;
    let rules: Vec<Vec<&str>> = hba
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| !fields.is_empty())
        .collect();
    let expected: [&[&str]; 2] = [
        &["local", "all", "all", "trust"],
        &["host", "all", "all", "127.0.0.1/32", "scram-sha-256"],
    ];
    match expected
        .iter()
        .find(|rule| !rules.iter().any(|r| r == *rule))
    {
        None => Ok(()),
        Some(missing) => Err(Error::Unexpected {
            what: path.display().to_string(),
            detail: format!("initdb did not write the rule `{}`", missing.join(" ")),
        }),
    }
}
