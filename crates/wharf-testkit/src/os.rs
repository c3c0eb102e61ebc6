//! The OS facilities the testkit needs, through std, `/proc` and a few
//! standard commands rather than libc.

use std::env;
use std::fs;
use std::os::unix::fs::{lchown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{io_context, Error};

/// The OS account that runs the server when we are root.
const SERVER_USER: &str = "postgres";

/// Prefix of every directory this crate creates under the temp dir.
pub(crate) const DIR_PREFIX: &str = "wharf-testkit-";

/// An OS account that owns cluster files and runs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The effective uid of this process.
pub(crate) fn euid() -> Result<u32, Error> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(io_context("reading /proc/self/status"))?;
    // The line is `Uid:\t<real>\t<effective>\t<saved>\t<fs>`.
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| Error::Unexpected {
            what: "/proc/self/status".into(),
            detail: "no parsable `Uid:` line".into(),
        })
}

/// The account to run initdb and postgres as: `None` means this process's
/// own, which is right for everyone but root, whom PostgreSQL refuses to run
/// as.
pub(crate) fn server_owner() -> Result<Option<Owner>, Error> {
    if euid()? != 0 {
        return Ok(None);
    }
    if let Some(owner) = lookup_user(SERVER_USER)? {
        return Ok(Some(owner));
    }
    // Parallel test processes race to create the user, and useradd also
    // fails while another holds the passwd lock, so only the lookup after
    // each attempt decides.
    let mut detail = String::new();
    for _ in 0..10 {
        match run(Command::new("useradd").args(["--system", "--no-create-home", SERVER_USER])) {
            Ok(_) => tracing::info!("created OS user `{SERVER_USER}` to run PostgreSQL"),
            Err(error) => detail = error.to_string(),
        }
        if let Some(owner) = lookup_user(SERVER_USER)? {
            return Ok(Some(owner));
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(Error::NoServerUser {
        user: SERVER_USER.into(),
        detail,
    })
}

fn lookup_user(name: &str) -> Result<Option<Owner>, Error> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_context("reading /etc/passwd"))?;
    Ok(passwd.lines().find_map(|line| {
        // name:password:uid:gid:gecos:home:shell
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(Owner { uid, gid })
    }))
}

/// Makes `command` run as `owner`, if any.
pub(crate) fn run_as(command: &mut Command, owner: Option<Owner>) -> &mut Command {
    if let Some(owner) = owner {
        // std also drops root's supplementary groups when a uid is set.
        command.uid(owner.uid).gid(owner.gid);
    }
    command
}

/// Gives `path` and everything below it to `owner`, without following
/// symlinks.
pub(crate) fn chown_tree(path: &Path, owner: Owner) -> Result<(), Error> {
    let context = || format!("changing the owner of {}", path.display());
    lchown(path, Some(owner.uid), Some(owner.gid)).map_err(io_context(context()))?;
    if fs::symlink_metadata(path)
        .map_err(io_context(context()))?
        .is_dir()
    {
        for entry in fs::read_dir(path).map_err(io_context(context()))? {
            chown_tree(&entry.map_err(io_context(context()))?.path(), owner)?;
        }
    }
    Ok(())
}

/// Where clusters and the template live: `$WHARF_TESTKIT_TMPDIR` if set,
/// else `/dev/shm` if it is a tmpfs of at least 1 GiB, else the temp dir.
///
/// A cluster directory holds about a thousand files; copying them takes
/// around a second on some disk filesystems and a few milliseconds on tmpfs.
/// The size floor keeps us off the 64 MiB /dev/shm that containers get by
/// default.
pub(crate) fn base_dir() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if let Some(dir) = env::var_os("WHARF_TESTKIT_TMPDIR").filter(|dir| !dir.is_empty()) {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if roomy_tmpfs(&mountinfo, shm) && shm.is_dir() {
            shm.to_owned()
        } else {
            env::temp_dir()
        }
    })
}

/// Whether the topmost mount at `mount_point` in a `/proc/<pid>/mountinfo`
/// listing is a tmpfs of at least 1 GiB.
fn roomy_tmpfs(mountinfo: &str, mount_point: &Path) -> bool {
    const MIN_KIB: u64 = 1 << 20;
    // `<id> <parent> <dev> <root> <mount point> <options...> - <fstype> <source> <super options>`;
    // later lines are mounted on top of earlier ones.
    let Some(mount) = mountinfo
        .lines()
        .rev()
        .find(|line| line.split(' ').nth(4).map(Path::new) == Some(mount_point))
    else {
        return false;
    };
    let Some((_, filesystem)) = mount.split_once(" - ") else {
        return false;
    };
    let mut fields = filesystem.split(' ');
    if fields.next() != Some("tmpfs") {
        return false;
    }
    let size_kib = fields
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .find_map(|option| option.strip_prefix("size="))
        .map(|size| size.strip_suffix('k').unwrap_or(size).parse::<u64>());
    match size_kib {
        Some(Ok(size)) => size >= MIN_KIB,
        Some(Err(_)) => false,
        // tmpfs omits the option when it has no size limit.
        None => true,
    }
}

/// Creates a fresh, private `<base>/wharf-testkit-<pid>-<counter>-<nanos>`
/// and returns its canonical path (comparable with `/proc/<pid>/cwd`).
///
/// The pid in the name lets [`reap_orphans`] recognise directories whose
/// creator has died.
pub(crate) fn create_unique_dir() -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = base_dir();
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{DIR_PREFIX}{}-{counter}-{nanos}", process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                let context = || format!("preparing {}", dir.display());
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(io_context(context()))?;
                return fs::canonicalize(&dir).map_err(io_context(context()));
            }
            // A directory left behind by an earlier process that had our pid.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(io_context(format!("creating {}", dir.display()))(error));
            }
        }
    }
}

/// Runs `command` to completion and returns its stdout; a failure carries
/// its stderr.
pub(crate) fn run(command: &mut Command) -> Result<String, Error> {
    let output = command
        .output()
        .map_err(io_context(format!("running `{}`", describe(command))))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// `program arg arg ...`, for messages.
fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Sends `signal` (a name such as `INT`) to `pid` with kill(1), since std
/// itself can only send SIGKILL.
pub(crate) fn signal(pid: u32, signal: &str) -> Result<(), Error> {
    run(Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string()))
    .map(drop)
}

/// Waits up to `timeout` for `child` to exit; `false` if it did not.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<bool, Error> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if child
            .try_wait()
            .map_err(io_context("waiting for postgres"))?
            .is_some()
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Pids of the processes whose working directory is `dir` or lies below it.
///
/// PostgreSQL processes chdir into their data directory, so this finds a
/// cluster's postmaster and backends even after they have been orphaned.
/// Zombies have no working directory and are not reported.
pub(crate) fn pids_working_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// SIGKILLs every process working in `dir` (see [`pids_working_in`]) until
/// none is left or `timeout` passes.
pub(crate) fn kill_all_working_in(dir: &Path, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = pids_working_in(dir);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Stragglers {
                dir: dir.to_owned(),
                pids,
            });
        }
        tracing::debug!(?pids, dir = %dir.display(), "killing leftover processes");
        // Some may exit on their own meanwhile, which makes kill(1) fail;
        // the next scan tells whether it worked.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .output();
        thread::sleep(Duration::from_millis(10));
    }
}

/// Cleans up after a postmaster that did not shut down: removes the SysV
/// shared memory segment named in its `postmaster.pid`, then that file.
///
/// A new postmaster on the same data directory would do both itself, but a
/// cluster that is deleted after a crash would otherwise leak the segment
/// until reboot. Call only once no process of the cluster is left: the
/// segment is removed only if nothing is attached to it.
pub(crate) fn clear_crash_leftovers(data_dir: &Path) -> Result<(), Error> {
    let pid_file = data_dir.join("postmaster.pid");
    let contents = match fs::read_to_string(&pid_file) {
        Ok(contents) => contents,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(io_context(format!("reading {}", pid_file.display()))(error));
        }
    };
    // Line 7 is `<key> <shmid>`; it is absent if the postmaster died early.
    let segment: Option<(i64, u64)> = contents.lines().nth(6).and_then(|line| {
        let mut fields = line.split_whitespace();
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    });
    if let Some((key, shmid)) = segment {
        if unattached_segment_exists(key, shmid) {
            tracing::debug!(key, shmid, "removing leftover shared memory segment");
            run(Command::new("ipcrm").arg("-m").arg(shmid.to_string()))?;
        }
    }
    match fs::remove_file(&pid_file) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(io_context(format!("removing stale {}", pid_file.display()))(error))
        }
        _ => Ok(()),
    }
}

/// Whether the segment `shmid` still exists with `key` (and so was not
/// replaced by an unrelated one) and has no process attached.
fn unattached_segment_exists(key: i64, shmid: u64) -> bool {
    let Ok(table) = fs::read_to_string("/proc/sysvipc/shm") else {
        return false;
    };
    // Columns: key shmid perms size cpid lpid nattch ...
    table.lines().skip(1).any(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        fields.first().and_then(|k| k.parse::<i64>().ok()) == Some(key)
            && fields.get(1).and_then(|id| id.parse::<u64>().ok()) == Some(shmid)
            && fields.get(6) == Some(&"0")
    })
}

/// Once per process: removes the directories (and kills the servers) of
/// test processes that died without cleaning up, e.g. when a test runner's
/// timeout SIGKILLed them.
pub(crate) fn reap_orphans() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Without /proc every owner would look dead.
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = fs::read_dir(base_dir()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|name| name.strip_prefix(DIR_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let Ok(dir) = fs::canonicalize(entry.path()) else {
                continue;
            };
            tracing::debug!(dir = %dir.display(), "removing directory of dead process {pid}");
            if kill_all_working_in(&dir, Duration::from_secs(5)).is_ok() {
                // Another process may be reaping the same directory.
                let _ = clear_crash_leftovers(&dir.join("data"));
                let _ = fs::remove_dir_all(&dir);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_euid() {
        euid().expect("euid");
    }

    #[test]
    fn looks_up_root() {
        assert_eq!(
            lookup_user("root").expect("passwd"),
            Some(Owner { uid: 0, gid: 0 })
        );
        assert_eq!(lookup_user("no-such-user-here").expect("passwd"), None);
    }

    #[test]
    fn recognises_roomy_tmpfs() {
        let shm = Path::new("/dev/shm");
        let mountinfo = "\
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=65536k
31 25 0:28 / /tmp rw,relatime - tmpfs tmpfs rw,size=24684092k
";
        assert!(!roomy_tmpfs(mountinfo, shm), "the topmost mount counts");
        let first_only = mountinfo.lines().next().unwrap_or_default();
        assert!(roomy_tmpfs(first_only, shm));
        assert!(roomy_tmpfs("1 0 0:1 / /dev/shm rw - tmpfs tmpfs rw\n", shm));
        assert!(!roomy_tmpfs(
            "1 0 8:1 / /dev/shm rw - ext4 /dev/vda rw\n",
            shm
        ));
        assert!(!roomy_tmpfs("", shm));
    }

    #[test]
    fn unique_dirs_differ() {
        let a = create_unique_dir().expect("dir");
        let b = create_unique_dir().expect("dir");
        assert_ne!(a, b);
        fs::remove_dir(a).expect("remove");
        fs::remove_dir(b).expect("remove");
    }
}
