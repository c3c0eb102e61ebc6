//! What `wharf serve` does for a service manager: takes over the listening
//! sockets systemd passes (`LISTEN_FDS`), and switches to the `user =` of
//! the configuration once the sockets are open, as PgBouncer does. The
//! readiness messages (`sd_notify`) are `wharf_pooler::sd_notify`.

use std::ffi::{CStr, CString};
use std::os::fd::{FromRawFd, OwnedFd};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The sockets systemd passed to this process: `LISTEN_FDS` descriptors
/// from 3 on, when `LISTEN_PID` is this process (a child started with the
/// same environment must not take them). The variables are removed, as
/// `sd_listen_fds(1)` does. Must run before any other thread starts.
pub(crate) fn listen_fds() -> Vec<OwnedFd> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    if !for_us {
        return Vec::new();
    }
    (LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count.max(0)))
        .filter_map(|fd| {
            // Only descriptors that are open: a wrong count must not make
            // wharf own (and later close) a number it was not given.
            // SAFETY: fcntl(F_GETFD) only reads the flags of `fd`.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return None;
            }
            // SAFETY: systemd passed these descriptors to this process
            // (LISTEN_PID says so) for it to own; nothing else in wharf
            // knows their numbers, so each is owned once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // Not inherited by anything wharf might start.
            // SAFETY: sets a flag on a descriptor this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            Some(owned)
        })
        .collect()
}

/// A user's ids, from the password database.
pub(crate) struct Account {
    name: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// Looks `name` up in the password database.
pub(crate) fn account(name: &str) -> Result<Account, String> {
    let c_name = CString::new(name).map_err(|_| format!("user = {name:?}: not a user name"))?;
    // SAFETY: passwd is plain data (integers and pointers), for which all
    // zeros is a valid value; getpwnam_r fills it.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory that lives through the call,
    // `buffer.len()` is its size, and getpwnam_r is the thread-safe form.
    let status = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 {
        return Err(format!(
            "user = {name}: cannot read the password database: {}",
            std::io::Error::from_raw_os_error(status)
        ));
    }
    if found.is_null() {
        return Err(format!("user = {name}: no such user"));
    }
    Ok(Account {
        name: c_name,
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

/// Switches the whole process (every thread: glibc's setuid and setgid
/// apply to all of them) to `user`: its groups, then its group, then the
/// user, checked afterwards. Already running as `user`, nothing changes;
/// anyone else than root cannot switch, and that is an error rather than
/// running on as the wrong user.
pub(crate) fn switch_user(user: &str) -> Result<(), String> {
    let account = account(user)?;
    // SAFETY: getuid and geteuid cannot fail and touch no memory.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if uid == account.uid && euid == account.uid {
        return Ok(());
    }
    if euid != 0 {
        return Err(format!(
            "user = {user}: wharf runs as uid {euid} and only root can switch to another user"
        ));
    }
    let failed = |what: &str| {
        Err(format!(
            "user = {user}: {what} failed: {}",
            std::io::Error::last_os_error()
        ))
    };
    // SAFETY: `account.name` is a NUL-terminated string that outlives the
    // calls; the ids come from the password database.
    unsafe {
        if libc::initgroups(account.name.as_ptr(), account.gid) != 0 {
            return failed("initgroups");
        }
        if libc::setgid(account.gid) != 0 {
            return failed("setgid");
        }
        if libc::setuid(account.uid) != 0 {
            return failed("setuid");
        }
    }
    // Root must be gone for good: setuid(0) has to fail now.
    // SAFETY: as above; a successful setuid(0) is reported, not kept.
    let (uid, euid, regained) = unsafe { (libc::getuid(), libc::geteuid(), libc::setuid(0) == 0) };
    if uid != account.uid || euid != account.uid || regained {
        return Err(format!("user = {user}: the switch did not hold"));
    }
    Ok(())
}

/// `user = name` as the password database has it, for messages.
pub(crate) fn describe(account: &Account) -> String {
    let name = CStr::to_string_lossy(&account.name);
    format!("{name} (uid {}, gid {})", account.uid, account.gid)
}
