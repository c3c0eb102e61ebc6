//! `syslog = 1`: every log line also goes to the system log, one datagram
//! per event to `/dev/log` in the traditional format
//! (`<priority>ident[pid]: message`), with `syslog_facility` and
//! `syslog_ident`, as PgBouncer sends them.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing_subscriber::fmt::MakeWriter;

/// Where syslog daemons (rsyslog, syslog-ng, journald) listen.
pub(crate) const DEV_LOG: &str = "/dev/log";

/// PgBouncer's facility names (its `syslog_facility`) and their numbers.
const FACILITIES: &[(&str, u8)] = &[
    ("auth", 4),
    ("authpriv", 10),
    ("daemon", 3),
    ("user", 1),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// A connected syslog socket, and what every line is stamped with.
pub(crate) struct Syslog {
    socket: UnixDatagram,
    facility: u8,
    ident: String,
}

/// `syslog_facility`'s number, or what it may be.
pub(crate) fn facility(name: &str) -> Result<u8, String> {
    FACILITIES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name.trim()))
        .map(|(_, number)| *number)
        .ok_or_else(|| {
            let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
            format!("unknown facility \"{name}\": one of {}", names.join(", "))
        })
}

impl Syslog {
    /// Connects to the syslog socket at `path` (`/dev/log`).
    pub(crate) fn connect(path: &Path, facility_name: &str, ident: &str) -> Result<Self, String> {
        let facility = facility(facility_name)?;
        let socket = UnixDatagram::unbound()
            .and_then(|socket| socket.connect(path).map(|()| socket))
            .map_err(|e| format!("cannot reach the system log at {}: {e}", path.display()))?;
        Ok(Self {
            socket,
            facility,
            ident: ident.to_owned(),
        })
    }
}

/// One event's text, sent when the formatter is done with it.
pub(crate) struct Line<'a> {
    syslog: &'a Syslog,
    severity: u8,
    text: Vec<u8>,
}

impl io::Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let priority = self.syslog.facility * 8 + self.severity;
        let message = format!(
            "<{priority}>{}[{}]: {text}",
            self.syslog.ident,
            std::process::id()
        );
        // A full or absent log daemon must not stop the pooler; the line
        // still went to standard error or logfile.
        let _ = self.syslog.socket.send(message.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        self.line(6)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        // syslog's severities: 3 error, 4 warning, 6 info, 7 debug.
        let severity = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        self.line(severity)
    }
}

impl Syslog {
    fn line(&self, severity: u8) -> Line<'_> {
        Line {
            syslog: self,
            severity,
            text: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_are_datagrams_with_facility_severity_ident_and_pid() {
        let dir = std::env::temp_dir().join(format!("wharf-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let daemon = UnixDatagram::bind(&path).unwrap();
        let syslog = Syslog::connect(&path, "local3", "wharf-test").unwrap();
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(false)
            .with_writer(syslog);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(peer = "x", "a warning");
            tracing::info!("some news");
        });
        let mut buffer = [0u8; 1024];
        let mut next = || {
            let n = daemon.recv(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        };
        let pid = std::process::id();
        let warning = next();
        // local3 is 19: 19 * 8 + 4 (warning) and + 6 (info).
        assert!(
            warning.starts_with(&format!("<156>wharf-test[{pid}]: ")),
            "{warning}"
        );
        assert!(warning.ends_with("a warning peer=\"x\""), "{warning}");
        let info = next();
        assert!(
            info.starts_with(&format!("<158>wharf-test[{pid}]: ")),
            "{info}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn facilities_are_pgbouncers() {
        assert_eq!(facility("daemon"), Ok(3));
        assert_eq!(facility("LOCAL7"), Ok(23));
        let err = facility("kern").unwrap_err();
        assert!(err.contains("one of auth, authpriv, daemon"), "{err}");
    }
}
