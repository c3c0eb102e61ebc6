//! Where a server listens, in PgBouncer's terms: a host and port, or a Unix
//! socket directory.

use std::io;
use std::path::PathBuf;

use tokio::net::{TcpStream, UnixStream};

use super::{ServerStream, TcpOptions};

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// A TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket file (`<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl ServerAddr {
    /// PgBouncer's rule: a host starting with `/` is a Unix socket directory.
    pub fn new(host: Option<&str>, port: u16) -> Self {
        match host {
            Some(dir) if dir.starts_with('/') => {
                ServerAddr::Unix(PathBuf::from(dir).join(format!(".s.PGSQL.{port}")))
            }
            Some(host) => ServerAddr::Tcp {
                host: host.to_owned(),
                port,
            },
            None => ServerAddr::Unix(PathBuf::from("/tmp").join(format!(".s.PGSQL.{port}"))),
        }
    }

    /// As `SHOW` lists it: the host and port, or the socket path and 0.
    pub fn host_port(&self) -> (String, u16) {
        match self {
            ServerAddr::Tcp { host, port } => (host.clone(), *port),
            ServerAddr::Unix(path) => (path.display().to_string(), 0),
        }
    }

    /// Opens a connection, a TCP one with `tcp`'s options.
    pub async fn connect(&self, tcp: &TcpOptions) -> io::Result<ServerStream> {
        match self {
            ServerAddr::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.apply(&stream)?;
                Ok(ServerStream::Tcp(stream))
            }
            ServerAddr::Unix(path) => Ok(ServerStream::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}
