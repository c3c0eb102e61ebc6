//! The TCP options PgBouncer sets on every TCP socket it accepts or opens
//! (`tune_socket`): keepalive with its idle time, interval and count,
//! `TCP_USER_TIMEOUT`, buffer sizes and no Nagle. Unix sockets get none.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::Settings;

/// `tcp_keepalive`, `tcp_keepidle`, `tcp_keepintvl`, `tcp_keepcnt`,
/// `tcp_user_timeout` and `tcp_socket_buffer`, as PgBouncer reads them: a
/// zero leaves the operating system's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// `SO_KEEPALIVE`; when off, the three below are not set either.
    pub keepalive: bool,
    /// `TCP_KEEPIDLE`, seconds; 0 keeps the system's.
    pub keepidle: u32,
    /// `TCP_KEEPINTVL`, seconds; 0 keeps the system's.
    pub keepintvl: u32,
    /// `TCP_KEEPCNT`; 0 keeps the system's.
    pub keepcnt: u32,
    /// `TCP_USER_TIMEOUT`, milliseconds; 0 keeps the system's.
    pub user_timeout_ms: u32,
    /// `SO_SNDBUF` and `SO_RCVBUF`, bytes; 0 keeps the system's.
    pub socket_buffer: u32,
}

impl Default for TcpOptions {
    /// PgBouncer's defaults: keepalive on, everything else the system's.
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}

impl TcpOptions {
    /// The options `settings` ask for.
    pub fn from_settings(settings: &Settings) -> Self {
        TcpOptions {
            keepalive: settings.tcp_keepalive,
            keepidle: settings.tcp_keepidle,
            keepintvl: settings.tcp_keepintvl,
            keepcnt: settings.tcp_keepcnt,
            user_timeout_ms: settings.tcp_user_timeout,
            socket_buffer: settings.tcp_socket_buffer,
        }
    }

    /// Sets the options on a connected TCP socket, and `TCP_NODELAY`: the
    /// relay writes whole messages and must not wait on acknowledgements.
    ///
    /// # Errors
    ///
    /// The system refused an option (a value out of its range, say).
    pub fn apply(&self, stream: &tokio::net::TcpStream) -> io::Result<()> {
        let socket = SockRef::from(stream);
        socket.set_tcp_nodelay(true)?;
        socket.set_keepalive(self.keepalive)?;
        if self.keepalive {
            let mut keepalive = TcpKeepalive::new();
            let mut any = false;
            if self.keepidle > 0 {
                keepalive = keepalive.with_time(Duration::from_secs(self.keepidle.into()));
                any = true;
            }
            if self.keepintvl > 0 {
                keepalive = keepalive.with_interval(Duration::from_secs(self.keepintvl.into()));
                any = true;
            }
            if self.keepcnt > 0 {
                keepalive = keepalive.with_retries(self.keepcnt);
                any = true;
            }
            if any {
                socket.set_tcp_keepalive(&keepalive)?;
            }
        }
        if self.socket_buffer > 0 {
            let size = usize::try_from(self.socket_buffer).unwrap_or(usize::MAX);
            socket.set_send_buffer_size(size)?;
            socket.set_recv_buffer_size(size)?;
        }
        if self.user_timeout_ms > 0 {
            let timeout = Duration::from_millis(self.user_timeout_ms.into());
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the accepted side and the connecting side.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, connected.unwrap())
    }

    #[tokio::test]
    async fn options_are_read_back_from_both_ends() {
        let options = TcpOptions {
            keepalive: true,
            keepidle: 61,
            keepintvl: 7,
            keepcnt: 4,
            user_timeout_ms: 12_345,
            socket_buffer: 0,
        };
        let (accepted, connected) = pair().await;
        for stream in [&accepted, &connected] {
            options.apply(stream).unwrap();
            let socket = SockRef::from(stream);
            assert!(socket.keepalive().unwrap());
            assert_eq!(
                socket.tcp_keepalive_time().unwrap(),
                Duration::from_secs(61)
            );
            assert_eq!(
                socket.tcp_keepalive_interval().unwrap(),
                Duration::from_secs(7)
            );
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
            assert_eq!(
                socket.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(12_345))
            );
            assert!(socket.tcp_nodelay().unwrap());
        }
    }

    #[tokio::test]
    async fn server_connections_get_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let options = TcpOptions {
            keepidle: 33,
            user_timeout_ms: 4_000,
            ..TcpOptions::default()
        };
        let addr = crate::net::ServerAddr::new(Some("127.0.0.1"), port);
        let (stream, _accepted) = tokio::join!(addr.connect(&options), listener.accept());
        let crate::net::ServerStream::Tcp(stream) = stream.unwrap() else {
            panic!("a TCP stream");
        };
        let socket = SockRef::from(&stream);
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(33)
        );
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(4))
        );
    }

    #[tokio::test]
    async fn zeros_keep_the_system_values_and_keepalive_can_be_off() {
        let (stream, _other) = pair().await;
        let socket = SockRef::from(&stream);
        let system_idle = socket.tcp_keepalive_time().unwrap();
        let system_buffer = socket.recv_buffer_size().unwrap();
        TcpOptions::default().apply(&stream).unwrap();
        assert!(socket.keepalive().unwrap(), "PgBouncer's default is on");
        assert_eq!(socket.tcp_keepalive_time().unwrap(), system_idle);
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);
        assert_eq!(socket.recv_buffer_size().unwrap(), system_buffer);
        let off = TcpOptions {
            keepalive: false,
            keepidle: 61,
            ..TcpOptions::default()
        };
        off.apply(&stream).unwrap();
        assert!(!socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            system_idle,
            "no keepalive, no idle time"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_buffer_size_is_set_on_both_directions() {
        let (stream, _other) = pair().await;
        let options = TcpOptions {
            socket_buffer: 4096,
            ..TcpOptions::default()
        };
        options.apply(&stream).unwrap();
        let socket = SockRef::from(&stream);
        // Linux doubles the value asked for, for its bookkeeping; its
        // defaults are far larger.
        assert_eq!(socket.recv_buffer_size().unwrap(), 8192);
        assert_eq!(socket.send_buffer_size().unwrap(), 8192);
    }
}
