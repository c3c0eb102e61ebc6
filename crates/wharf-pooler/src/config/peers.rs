//! The `[peers]` section and `peer_id` (PgBouncer 1.19+): the other pooler
//! processes of a group behind one load balancer (or one `so_reuseport`
//! port), to which a cancel request meant for one of them is forwarded.
//!
//! ```ini
//! [peers]
//! 1 = host=/tmp/wharf1
//! 2 = host=10.0.0.7 port=6432 pool_size=10
//! ```
//!
//! Each key is a peer's `peer_id` (1 to 16383), each value a connection
//! string with `host` (a name, an address, or a Unix socket directory
//! starting with `/`), `port` (default 6432) and `pool_size` (the most
//! cancel requests in flight to that peer at once; default
//! `default_pool_size`). An entry for this process's own `peer_id` is
//! allowed, so every process of a group can share one `[peers]` section,
//! and ignored.

use super::database::KeyError;
use super::value::{parse_c_integer, Codec, Port, Raw, Text, Uint, ValueError};
use super::{replace_or_push, Builder, ConfigError, EntryKind, Pos};

/// The largest `peer_id`, as PgBouncer documents it.
pub const MAX_PEER_ID: u16 = 16383;

/// PgBouncer's port for a peer entry without one.
const DEFAULT_PEER_PORT: u16 = 6432;

/// One `[peers]` entry: where the pooler process with this `peer_id`
/// listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's `peer_id`, 1 to [`MAX_PEER_ID`].
    pub id: u16,
    /// Host name, IP address, or Unix socket directory (starts with `/`).
    /// Unset means the Unix socket in this process's `unix_socket_dir`.
    pub host: Option<String>,
    /// The peer's port (also names its Unix socket). Unset means 6432.
    pub port: Option<u16>,
    /// Most cancel requests in flight to the peer at once. Unset means
    /// `default_pool_size`.
    pub pool_size: Option<usize>,
}

impl Peer {
    /// `port`, or PgBouncer's 6432.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PEER_PORT)
    }
}

/// The keys a `[peers]` entry accepts.
pub(crate) const PEER_KEYS: &[&str] = &["host", "port", "pool_size"];

/// `peer_id`: 0 (peering off) to [`MAX_PEER_ID`].
pub(crate) struct PeerId;

impl Codec for PeerId {
    type Value = u16;

    fn parse(raw: &Raw<'_>) -> Result<u16, ValueError> {
        let expected =
            || ValueError::invalid(format!("expected a peer id from 0 to {MAX_PEER_ID}"));
        let value = Uint::<u16>::parse(raw).map_err(|_| expected())?;
        if value > MAX_PEER_ID {
            return Err(expected());
        }
        Ok(value)
    }

    fn render(value: &u16) -> Option<String> {
        Some(value.to_string())
    }
}

/// A `[peers]` key as a peer id: 1 to [`MAX_PEER_ID`].
fn parse_peer_name(name: &str) -> Result<u16, String> {
    parse_c_integer(name)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (1..=MAX_PEER_ID).contains(n))
        .ok_or_else(|| {
            format!("\"{name}\" is not a peer id: expected an integer from 1 to {MAX_PEER_ID}")
        })
}

/// Sets one key of a `[peers]` entry.
fn apply_peer_key(peer: &mut Peer, key: &str, raw: &Raw<'_>) -> Result<(), KeyError> {
    match key {
        "host" => {
            let host = Text::parse(raw)?;
            if host.trim().is_empty() {
                return Err(ValueError::invalid(
                    "expected a host name, address or socket directory",
                )
                .into());
            }
            if host.starts_with('@') {
                return Err(ValueError::Unsupported(
                    "abstract Unix sockets (host=@name) are not supported by wharf yet; use a socket directory or a TCP address".to_owned(),
                )
                .into());
            }
            peer.host = Some(host);
        }
        "port" => peer.port = Some(Port::parse(raw)?),
        "pool_size" => peer.pool_size = Some(Uint::<usize>::parse(raw)?),
        _ => return Err(KeyError::Unknown),
    }
    Ok(())
}

impl Builder {
    /// Adds a `[peers]` entry from its pairs. `shown(key)` names a key in
    /// messages; an unknown key is an error where PgBouncer refuses it
    /// (ini), else a warning.
    pub(crate) fn add_peer<'r>(
        &mut self,
        pos: &Pos,
        name: &str,
        pairs: impl IntoIterator<Item = (Pos, String, Raw<'r>)>,
        shown: impl Fn(&str) -> String,
        unknown_is_error: bool,
    ) -> Result<(), ConfigError> {
        let id = parse_peer_name(name).map_err(|message| pos.invalid(&shown(""), message))?;
        let mut peer = Peer {
            id,
            host: None,
            port: None,
            pool_size: None,
        };
        let entry = EntryKind {
            context: format!(" for peer {id}"),
            unknown: "unknown peer parameter",
            keys: PEER_KEYS,
        };
        let apply = |peer: &mut Peer, key: &str, raw: &Raw<'_>| {
            apply_peer_key(peer, key, raw).map(|()| None)
        };
        self.apply_entry_keys(&mut peer, pairs, apply, &entry, &shown, unknown_is_error)?;
        if peer.pool_size == Some(0) {
            self.warn(
                pos,
                Some(&shown("pool_size")),
                format!("pool_size = 0: no cancel request can be forwarded to peer {id}"),
            );
        }
        if replace_or_push(&mut self.config.peers, peer, |p| p.id == id) {
            self.warn(
                pos,
                Some(&shown("")),
                "peer defined again; the later definition is used",
            );
        }
        Ok(())
    }

    /// Whole-configuration checks of peering: a `peer_id` without peers
    /// and peers without a `peer_id` are allowed but do nothing useful.
    pub(crate) fn check_peers(&mut self, pos: &Pos) {
        let own = self.config.pgbouncer.peer_id;
        let others = self.config.peers.iter().filter(|p| p.id != own).count();
        if own == 0 && others > 0 {
            self.warn(
                pos,
                Some("peer_id"),
                "0, so peering is off and the [peers] section is not used",
            );
        } else if own != 0 && others == 0 {
            self.warn(
                pos,
                Some("peer_id"),
                format!("{own}, but [peers] names no other peer: cancel requests meant for another process are dropped"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse_ini_str;
    use super::*;

    #[test]
    fn peer_ids() {
        assert_eq!(parse_peer_name("1"), Ok(1));
        assert_eq!(parse_peer_name("16383"), Ok(MAX_PEER_ID));
        for bad in ["0", "16384", "-1", "x", "", "1.5"] {
            assert!(parse_peer_name(bad).is_err(), "{bad}");
        }
        assert_eq!(PeerId::parse(&Raw::Str("0")), Ok(0));
        assert_eq!(PeerId::parse(&Raw::Int(16383)), Ok(16383));
        assert!(PeerId::parse(&Raw::Str("16384")).is_err());
        assert!(PeerId::parse(&Raw::Str("-3")).is_err());
    }

    #[test]
    fn peers_section() {
        let loaded = parse_ini_str(
            "[pgbouncer]\nauth_type = any\npeer_id = 2\n[peers]\n1 = host=/tmp/wharf1\n\
             2 = host=/tmp/wharf2\n3 = host=10.0.0.7 port=7000 pool_size=4\n",
            Path::new("p.ini"),
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert_eq!(c.pgbouncer.peer_id, 2);
        assert_eq!(c.peers.len(), 3);
        let third = c.peer(3).unwrap();
        assert_eq!(third.host.as_deref(), Some("10.0.0.7"));
        assert_eq!(third.port_or_default(), 7000);
        assert_eq!(c.peer_pool_size(third), 4);
        let first = c.peer(1).unwrap();
        assert_eq!(first.port_or_default(), 6432);
        assert_eq!(c.peer_pool_size(first), 20);
        assert!(c.peer(9).is_none());
    }

    #[test]
    fn bad_peers_are_refused() {
        let err = |text: &str| {
            parse_ini_str(text, Path::new("p.ini"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("[pgbouncer]\n[peers]\n0 = host=x\n"),
            "p.ini:3: 0: \"0\" is not a peer id: expected an integer from 1 to 16383"
        );
        assert_eq!(
            err("[pgbouncer]\n[peers]\n1 = hots=x\n"),
            "p.ini:3: hots: unknown peer parameter for peer 1 (did you mean \"host\"?)"
        );
        assert_eq!(
            err("[pgbouncer]\n[peers]\n1 = port=0\n"),
            "p.ini:3: port: invalid value \"0\" for peer 1: expected a port number (1-65535)"
        );
        assert!(err("[pgbouncer]\n[peers]\n1 = host=@wharf\n").contains("abstract Unix sockets"));
        assert_eq!(
            err("[pgbouncer]\npeer_id = 20000\n"),
            "p.ini:2: peer_id: invalid value \"20000\": expected a peer id from 0 to 16383"
        );
    }

    #[test]
    fn useless_peering_is_a_warning() {
        let warnings = |text: &str| -> Vec<String> {
            parse_ini_str(text, Path::new("p.ini"))
                .unwrap()
                .warnings
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            warnings("[pgbouncer]\nauth_type = any\n[peers]\n1 = host=/tmp/a\n"),
            vec!["p.ini: peer_id: 0, so peering is off and the [peers] section is not used"]
        );
        assert_eq!(
            warnings("[pgbouncer]\nauth_type = any\npeer_id = 1\n[peers]\n1 = host=/tmp/a\n"),
            vec!["p.ini: peer_id: 1, but [peers] names no other peer: cancel requests meant for another process are dropped"]
        );
        assert_eq!(
            warnings("[pgbouncer]\nauth_type = any\npeer_id = 1\n[peers]\n2 = host=/tmp/b pool_size=0\n2 = host=/tmp/b\n"),
            vec![
                "p.ini:5: pool_size: pool_size = 0: no cancel request can be forwarded to peer 2",
                "p.ini:6: 2: peer defined again; the later definition is used",
            ]
        );
    }
}
