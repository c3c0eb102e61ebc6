//! A client's first packets: the answer to an encryption request, then
//! the startup message, sorted into who the client is, which database it
//! wants and which tracked parameters it sets; or a cancel request.

use tokio::io::AsyncWriteExt;

use super::{refuse, Ended};
use crate::config::Settings;
use crate::net::ClientStream;
use crate::proto::{read_startup, CancelKey, ProtocolError, Startup};
use crate::server::params::is_tracked;
use crate::state::PoolerState;
use crate::tls::ClientTls;

/// Startup parameters a client may send besides the tracked ones.
const ACCEPTED: &[&str] = &["user", "database"];

/// What a client's first packets asked for.
pub(super) enum Opening {
    /// A session for `user` on `database` (the user's name when the
    /// client named none), with the tracked parameters it set.
    Session {
        user: String,
        database: String,
        params: Vec<(String, String)>,
    },
    /// A cancel request, to be passed on.
    Cancel(CancelKey),
}

/// What a client's first packet turned out to be, once the encryption
/// requests the pooler declines are answered.
pub(super) enum First {
    /// An SSLRequest the pooler answered 'S': the TLS handshake is next.
    Encrypt,
    /// A startup message or a cancel request, in plain text.
    Packet(Startup),
}

/// Reads the client's first packets: an SSLRequest is answered 'S' when
/// client TLS is set up (never on a Unix socket), and any other
/// encryption request 'N' (go on in plain text).
pub(super) async fn negotiate<S: ClientStream>(
    stream: &mut S,
    peer: &str,
    state: &PoolerState,
    tls: &ClientTls,
) -> Result<First, Ended> {
    loop {
        let answer = match read_startup(stream).await {
            Ok(Startup::SslRequest) if tls.offered() && !stream.is_local() => b"S",
            Ok(Startup::SslRequest | Startup::GssEncRequest) => b"N",
            Ok(packet) => return Ok(First::Packet(packet)),
            Err(err) => return Err(bad_startup(stream, peer, state, err).await),
        };
        if stream.write_all(answer).await.is_err() {
            return Err(Ended);
        }
        if answer == b"S" {
            return Ok(First::Encrypt);
        }
    }
}

/// Reads the startup packets, starting with `first` when it was read
/// already. A client that breaks the protocol, sends a parameter the
/// pooler does not accept or names no user is told why (FATAL) and
/// `Ended`.
pub(super) async fn open<S: ClientStream>(
    stream: &mut S,
    first: Option<Startup>,
    peer: &str,
    state: &PoolerState,
    settings: &Settings,
) -> Result<Opening, Ended> {
    let mut next = first;
    let params = loop {
        let packet = match next.take() {
            Some(packet) => Ok(packet),
            None => read_startup(stream).await,
        };
        match packet {
            // Inside TLS already: a second request is a protocol violation.
            Ok(Startup::SslRequest | Startup::GssEncRequest) if stream.tls().is_some() => {
                let message = "encryption requested on an encrypted connection";
                refuse(stream, state, peer, "08P01", message).await;
                return Err(Ended);
            }
            Ok(Startup::SslRequest) | Ok(Startup::GssEncRequest) => {
                if stream.write_all(b"N").await.is_err() {
                    return Err(Ended);
                }
            }
            Ok(Startup::Cancel(key)) => return Ok(Opening::Cancel(key)),
            Ok(Startup::Startup { params, .. }) => break params,
            Err(err) => return Err(bad_startup(stream, peer, state, err).await),
        }
    };
    let Sorted {
        user,
        database,
        tracked,
    } = match sort_params(params, settings) {
        Ok(sorted) => sorted,
        Err(name) => {
            let message = format!("unsupported startup parameter: {name}");
            tracing::info!(%peer, "closing client: {message}");
            refuse(stream, state, peer, "08P01", &message).await;
            return Err(Ended);
        }
    };
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        let message = "no user name specified in startup packet";
        refuse(stream, state, peer, "28000", message).await;
        return Err(Ended);
    };
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(Opening::Session {
        user,
        database,
        params: tracked,
    })
}

/// Ends a client whose startup packet is broken, telling it why.
async fn bad_startup<S: ClientStream>(
    stream: &mut S,
    peer: &str,
    state: &PoolerState,
    err: ProtocolError,
) -> Ended {
    if !matches!(err, ProtocolError::Closed) {
        tracing::info!(%peer, error = %err, "closing client: bad startup packet");
        let message = format!("invalid startup packet: {err}");
        refuse(stream, state, peer, "08P01", &message).await;
    }
    Ended
}

/// A startup message's parameters, sorted.
struct Sorted {
    user: Option<String>,
    database: Option<String>,
    tracked: Vec<(String, String)>,
}

/// Sorts a startup message's parameters; the name of the first one the
/// pooler does not accept is the error.
fn sort_params(params: Vec<(String, String)>, settings: &Settings) -> Result<Sorted, String> {
    let mut user = None;
    let mut database = None;
    let mut tracked = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            _ if is_tracked(&name) => tracked.push((name, value)),
            _ if ACCEPTED.contains(&name.as_str())
                || settings
                    .ignore_startup_parameters
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&name)) => {}
            _ => return Err(name),
        }
    }
    Ok(Sorted {
        user,
        database,
        tracked,
    })
}
