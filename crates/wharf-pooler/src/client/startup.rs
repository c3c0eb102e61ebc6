//! A client's first packets: the answer to an encryption request, then
//! the startup message, sorted into who the client is, which database it
//! wants and which tracked parameters it sets; or a cancel request.

use tokio::io::AsyncWriteExt;

use super::options::{parse_options, OptionsError};
use super::{refuse, Ended};
use crate::config::Settings;
use crate::net::{ClientStream, Peer};
use crate::proto::{read_startup, CancelKey, ProtocolError, Replication, Startup, StartupParams};
use crate::server::params::{is_tracked, set_param};
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
        /// A replication connection's kind; its `params` then hold
        /// `options` as the client sent it, for its server.
        replication: Replication,
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
    peer: &Peer,
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
    peer: &Peer,
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
        replication,
    } = match sort_params(&params, settings) {
        Ok(sorted) => sorted,
        Err(refusal) => {
            let message = refusal.to_string();
            tracing::info!(%peer, "closing client: {message}");
            refuse(stream, state, peer, refusal.sqlstate(), &message).await;
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
        replication,
    })
}

/// Ends a client whose startup packet is broken, telling it why.
async fn bad_startup<S: ClientStream>(
    stream: &mut S,
    peer: &Peer,
    state: &PoolerState,
    err: ProtocolError,
) -> Ended {
    if !matches!(err, ProtocolError::Closed) {
        tracing::info!(%peer, error = %err, "closing client: bad startup packet");
        // PgBouncer's own words for a header it cannot read.
        let message = match err {
            ProtocolError::BadHeader(_) => err.to_string(),
            _ => format!("invalid startup packet: {err}"),
        };
        refuse(stream, state, peer, "08P01", &message).await;
    }
    Ended
}

/// A startup message's parameters, sorted.
struct Sorted {
    user: Option<String>,
    database: Option<String>,
    tracked: Vec<(String, String)>,
    replication: Replication,
}

/// Why a startup message's parameters are refused (PgBouncer's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    /// A parameter the pooler neither tracks nor is told to ignore.
    #[error("unsupported startup parameter: {0}")]
    Parameter(String),
    /// A setting inside `options` the pooler neither tracks nor is told
    /// to ignore.
    #[error("unsupported startup parameter in options: {0}")]
    InOptions(String),
    /// An `options` switch the pooler does not take.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A `replication` value PostgreSQL would not take either (its words).
    #[error("invalid value for parameter \"replication\": \"{0}\"")]
    Replication(String),
}

impl Refusal {
    /// The SQLSTATE PostgreSQL gives the same refusal.
    fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::Replication(_) => "22023",
            _ => "08P01",
        }
    }
}

/// Sorts a startup message's parameters: `user`, `database`, the tracked
/// ones (also from inside `options`, applied where `options` stands), and
/// the ones `ignore_startup_parameters` lets through; the first other one
/// is refused. With `options` itself in `ignore_startup_parameters`, the
/// settings inside it that are not tracked are ignored too (its switches
/// must still be `-c`/`--`, as in PgBouncer). A replication connection has
/// a server of its own, so its `options` go to that server as they are.
fn sort_params(params: &StartupParams, settings: &Settings) -> Result<Sorted, Refusal> {
    let ignored = |name: &str| {
        settings
            .ignore_startup_parameters
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    };
    // Listed in ignore_startup_parameters, `replication` is dropped and
    // the client gets a regular session, as before replication support.
    // Looked up only where it matters (`options`, the end, a refusal): a
    // second pass over the parameters for every login finds nothing.
    let replication = || match params.get("replication") {
        Some(_) if ignored("replication") => Ok(Replication::None),
        Some(value) => {
            Replication::from_param(value).ok_or_else(|| Refusal::Replication(value.to_owned()))
        }
        None => Ok(Replication::None),
    };
    let mut user = None;
    let mut database = None;
    let mut tracked = Vec::new();
    let mut sent_replication = false;
    for (name, value) in params {
        match name {
            "user" => user = Some(value.to_owned()),
            "database" => database = Some(value.to_owned()),
            "replication" => sent_replication = true,
            "options" if replication()? != Replication::None => {
                tracked.push((name.to_owned(), value.to_owned()));
            }
            "options" => {
                for (name, value) in parse_options(value)? {
                    if is_tracked(&name) {
                        set_param(&mut tracked, name, value);
                    } else if !ignored(&name) && !ignored("options") {
                        return Err(Refusal::InOptions(name));
                    }
                }
            }
            _ if is_tracked(name) => {
                set_param(&mut tracked, name, value);
            }
            _ if ACCEPTED.contains(&name) || ignored(name) => {}
            // A bad `replication` value is the refusal, wherever it stands.
            _ => {
                return Err(replication()
                    .err()
                    .unwrap_or(Refusal::Parameter(name.to_owned())))
            }
        }
    }
    let replication = if sent_replication {
        replication()?
    } else {
        Replication::None
    };
    Ok(Sorted {
        user,
        database,
        tracked,
        replication,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sent(list: &[(&str, &str)]) -> StartupParams {
        StartupParams::from_pairs(list.iter().copied())
    }

    #[test]
    fn options_set_tracked_parameters_and_refuse_others() {
        let settings = Settings::default();
        let sorted = sort_params(
            &sent(&[
                ("user", "u"),
                ("options", "-c TimeZone=UTC --application_name=a"),
                ("application_name", "b"),
            ]),
            &settings,
        )
        .expect("accepted");
        assert_eq!(
            sorted.tracked,
            params(&[("TimeZone", "UTC"), ("application_name", "b")])
        );
        let refused = sort_params(&sent(&[("options", "-c enable_seqscan=off")]), &settings);
        assert_eq!(
            refused.err().map(|e| e.to_string()).as_deref(),
            Some("unsupported startup parameter in options: enable_seqscan")
        );
        let refused = sort_params(&sent(&[("options", "-d")]), &settings);
        assert!(matches!(refused, Err(Refusal::Options(OptionsError::Form))));
    }

    #[test]
    fn replication_connections_keep_their_options_for_their_server() {
        let settings = Settings::default();
        let sorted = sort_params(
            &sent(&[
                ("options", "-c enable_seqscan=off"),
                ("replication", "database"),
            ]),
            &settings,
        )
        .expect("accepted");
        assert_eq!(sorted.replication, Replication::Logical);
        assert_eq!(
            sorted.tracked,
            params(&[("options", "-c enable_seqscan=off")])
        );
        let sorted = sort_params(&sent(&[("replication", "off")]), &settings).expect("accepted");
        assert_eq!(sorted.replication, Replication::None);
        let refused = sort_params(&sent(&[("replication", "maybe")]), &settings)
            .err()
            .expect("refused");
        assert_eq!(
            refused.to_string(),
            "invalid value for parameter \"replication\": \"maybe\""
        );
        assert_eq!(refused.sqlstate(), "22023");
        let ignoring = Settings {
            ignore_startup_parameters: vec!["replication".into()],
            ..Settings::default()
        };
        let sorted = sort_params(&sent(&[("replication", "true")]), &ignoring).expect("accepted");
        assert_eq!(sorted.replication, Replication::None, "ignored, as listed");
    }

    #[test]
    fn ignore_startup_parameters_reaches_inside_options() {
        let mut settings = Settings {
            ignore_startup_parameters: vec!["extra_float_digits".into()],
            ..Settings::default()
        };
        let sorted = sort_params(
            &sent(&[("options", "-c extra_float_digits=3 -c datestyle=ISO")]),
            &settings,
        )
        .expect("accepted");
        assert_eq!(sorted.tracked, params(&[("datestyle", "ISO")]));
        settings.ignore_startup_parameters = vec!["options".into()];
        assert!(sort_params(&sent(&[("options", "-c enable_seqscan=off")]), &settings).is_ok());
        // Still only -c and --, as PgBouncer.
        assert!(sort_params(&sent(&[("options", "-d 5")]), &settings).is_err());
    }

    #[test]
    fn a_bad_replication_value_is_the_refusal_wherever_it_stands() {
        let settings = Settings::default();
        for list in [
            &[("unknown", "x"), ("replication", "maybe")][..],
            &[("replication", "maybe"), ("unknown", "x")][..],
            &[
                ("options", "-c enable_seqscan=off"),
                ("replication", "maybe"),
            ][..],
            &[("user", "u"), ("replication", "maybe")][..],
        ] {
            let refused = sort_params(&sent(list), &settings).err();
            assert_eq!(
                refused,
                Some(Refusal::Replication("maybe".into())),
                "{list:?}"
            );
        }
        let refused = sort_params(&sent(&[("unknown", "x"), ("replication", "on")]), &settings);
        assert_eq!(refused.err(), Some(Refusal::Parameter("unknown".into())));
    }
}
