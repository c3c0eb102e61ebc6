//! Addresses and byte streams, both ways: where servers listen, the
//! sockets to them, and the client sockets the relay splits in halves.
//! Encryption plugs in here, inside the stream types, so that nothing
//! above knows whether a connection is TLS.

mod addr;
mod notify;
mod peer;
mod sockopt;
mod stream;
mod tls;

pub use addr::ServerAddr;
pub use notify::{notify_or_log, sd_notify};
pub use peer::Peer;
pub use sockopt::TcpOptions;
pub use stream::{ClientStream, ServerReader, ServerStream, ServerWriter, WriteNow};
pub use tls::{Encrypted, TlsClientStream, TlsServerStream};
