//! Where a client connects from, kept as the socket gave it: a login
//! formats it only when a log line or `SHOW CLIENTS` asks, which most
//! logins never do.

use std::net::SocketAddr;
use std::sync::Arc;

/// A client's end of its connection (or, for the pooler's own end, the
/// address it was accepted on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP address and port.
    Tcp(SocketAddr),
    /// The Unix socket, described as `unix:<path>` (shared by all its
    /// clients).
    Unix(Arc<str>),
}

impl Peer {
    /// The Unix socket at `path`, when it has one.
    pub fn unix(path: Option<&std::path::Path>) -> Self {
        match path {
            Some(path) => Peer::Unix(format!("unix:{}", path.display()).into()),
            None => Peer::Unix("unix".into()),
        }
    }

    /// As `SHOW CLIENTS` lists it: the address and port, or `unix` and 0.
    pub fn host_port(&self) -> (String, u16) {
        match self {
            Peer::Tcp(addr) => (addr.ip().to_string(), addr.port()),
            Peer::Unix(_) => ("unix".to_owned(), 0),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix(description) => f.write_str(description),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_the_listener_described_it_and_listed_as_show_clients_does() {
        let v4 = Peer::Tcp("127.0.0.1:5000".parse().unwrap());
        assert_eq!(v4.to_string(), "127.0.0.1:5000");
        assert_eq!(v4.host_port(), ("127.0.0.1".to_owned(), 5000));
        let v6 = Peer::Tcp("[::1]:6000".parse().unwrap());
        assert_eq!(v6.to_string(), "[::1]:6000");
        assert_eq!(v6.host_port(), ("::1".to_owned(), 6000));
        let unix = Peer::unix(Some(std::path::Path::new("/tmp/.s.PGSQL.6432")));
        assert_eq!(unix.to_string(), "unix:/tmp/.s.PGSQL.6432");
        assert_eq!(unix.host_port(), ("unix".to_owned(), 0));
        assert_eq!(Peer::unix(None).to_string(), "unix");
    }
}
