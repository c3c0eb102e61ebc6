//! systemd's readiness protocol (`sd_notify`): a datagram such as
//! `READY=1` to the Unix socket `NOTIFY_SOCKET` names, so that a
//! `Type=notify` unit knows when wharf listens, reloads and stops.
//! Without `NOTIFY_SOCKET` (not run by systemd) nothing is sent.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=value` assignments) to the
/// service manager; `Ok(false)` when there is none to tell.
///
/// # Errors
///
/// `NOTIFY_SOCKET` is set but the datagram could not be sent.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        // An abstract socket: systemd writes its leading NUL as '@'.
        Some(name) => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?;
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(io::Error::other("abstract NOTIFY_SOCKET outside Linux"));
            }
        }
        None => {
            socket.send_to(state.as_bytes(), &target)?;
        }
    }
    Ok(true)
}

/// [`sd_notify`], with a failure logged rather than returned: a service
/// manager that cannot be told is no reason to stop serving.
pub fn notify_or_log(state: &str) {
    if let Err(err) = sd_notify(state) {
        tracing::warn!(error = %err, state, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
