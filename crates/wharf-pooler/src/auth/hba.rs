//! `auth_type = hba`: which rule of the hba file applies to a client (the
//! first whose connection type, address, database and user all match, as
//! in PostgreSQL), and the OS user name a `peer` login is checked against.

use std::net::IpAddr;

use crate::config::{HbaAddress, HbaConnection, HbaDatabase, HbaRule, HbaRules, HbaUser};
use crate::net::Peer;

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOrigin {
    /// The Unix socket.
    Unix,
    /// TCP, from this address.
    Tcp(IpAddr),
}

impl ClientOrigin {
    /// Where `peer` is.
    pub fn from_peer(peer: &Peer) -> ClientOrigin {
        match peer {
            Peer::Unix(_) => ClientOrigin::Unix,
            Peer::Tcp(addr) => ClientOrigin::Tcp(addr.ip()),
        }
    }
}

/// A client as the hba rules see it.
#[derive(Debug, Clone, Copy)]
pub struct HbaClient<'a> {
    /// Where it connected from.
    pub origin: ClientOrigin,
    /// Whether the connection is encrypted with TLS.
    pub tls: bool,
    /// The database it asked for.
    pub database: &'a str,
    /// The user it logs in as.
    pub user: &'a str,
    /// A physical replication connection (`replication=true`), which
    /// only `replication` rules match, as in PostgreSQL; a logical one
    /// matches by its database like any client.
    pub physical_replication: bool,
}

/// The first rule that matches `client`, or `None` (the client is
/// refused: PgBouncer's "no authentication method is found").
pub fn find_rule<'r>(rules: &'r HbaRules, client: &HbaClient<'_>) -> Option<&'r HbaRule> {
    rules.rules().iter().find(|rule| matches(rule, client))
}

fn matches(rule: &HbaRule, client: &HbaClient<'_>) -> bool {
    let connection = match (rule.connection, client.origin) {
        (HbaConnection::Local, ClientOrigin::Unix) => true,
        (HbaConnection::Host, ClientOrigin::Tcp(_)) => true,
        (HbaConnection::HostSsl, ClientOrigin::Tcp(_)) => client.tls,
        (HbaConnection::HostNoSsl, ClientOrigin::Tcp(_)) => !client.tls,
        _ => false,
    };
    connection
        && address_matches(&rule.address, client.origin)
        && rule.databases.iter().any(|d| match d {
            HbaDatabase::Replication => client.physical_replication,
            _ if client.physical_replication => false,
            HbaDatabase::All => true,
            HbaDatabase::SameUser => client.database == client.user,
            HbaDatabase::Name(name) => name == client.database,
        })
        && rule.users.iter().any(|u| match u {
            HbaUser::All => true,
            HbaUser::Name(name) => name == client.user,
        })
}

fn address_matches(address: &HbaAddress, origin: ClientOrigin) -> bool {
    let HbaAddress::Net { addr, mask } = address else {
        return true;
    };
    let ClientOrigin::Tcp(client) = origin else {
        return false;
    };
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; an
    // IPv4 rule matches it, as in PostgreSQL.
    match (client.to_canonical(), addr, mask) {
        (IpAddr::V4(c), IpAddr::V4(a), IpAddr::V4(m)) => {
            let m = u32::from(*m);
            u32::from(c) & m == u32::from(*a) & m
        }
        (IpAddr::V6(c), IpAddr::V6(a), IpAddr::V6(m)) => {
            let m = u128::from(*m);
            u128::from(c) & m == u128::from(*a) & m
        }
        _ => false,
    }
}

/// The name `/etc/passwd` gives the OS user `uid`, for `peer` logins (and
/// the console's own-user check). Users known only to other NSS sources
/// (LDAP, say) have none here, so their `peer` logins fail.
pub fn os_user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const RULES: &str = "\
# first match wins
local   all        postgres                 peer
local   all        all                      md5
host    all        blocked   all            reject
hostssl secure     all       0.0.0.0/0      cert
host    secure     all       0.0.0.0/0      reject
host    sameuser   all       10.0.0.0/8     trust
host    app,report alice     127.0.0.1/32   scram-sha-256
host    app        all       127.0.0.0 255.0.0.0 md5
hostnossl all      all       192.168.0.0/16 password
host    all        all       ::1/128        scram-sha-256
host    all        all       fe80::/10      trust
";

    fn line_for(origin: &str, tls: bool, database: &str, user: &str) -> Option<usize> {
        let rules = HbaRules::parse(RULES, Path::new("hba.conf")).expect("rules parse");
        let origin = match origin.strip_prefix("unix:") {
            Some(path) => Peer::unix(Some(Path::new(path))),
            None => Peer::Tcp(origin.parse().expect("peer parses")),
        };
        let origin = ClientOrigin::from_peer(&origin);
        let client = HbaClient {
            origin,
            tls,
            database,
            user,
            physical_replication: false,
        };
        find_rule(&rules, &client).map(|rule| rule.line)
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let unix = "unix:/tmp/.s.PGSQL.6432";
        let cases: &[(&str, bool, &str, &str, Option<usize>)] = &[
            // local lines: Unix socket only, first match wins.
            (unix, false, "app", "postgres", Some(2)),
            (unix, false, "app", "alice", Some(3)),
            (unix, false, "anything", "blocked", Some(3)),
            // host lines: TCP only; reject before anything later.
            ("127.0.0.1:5000", false, "app", "blocked", Some(4)),
            ("127.0.0.1:5000", false, "app", "postgres", Some(9)),
            // hostssl needs TLS; without it the next line refuses.
            ("127.0.0.1:5000", true, "secure", "alice", Some(5)),
            ("127.0.0.1:5000", false, "secure", "alice", Some(6)),
            // sameuser: the database named like the user.
            ("10.1.2.3:5000", false, "carol", "carol", Some(7)),
            ("10.1.2.3:5000", false, "app", "carol", None),
            // comma lists and masks.
            ("127.0.0.1:5000", false, "report", "alice", Some(8)),
            ("127.0.0.1:5000", false, "app", "alice", Some(8)),
            ("127.0.0.2:5000", false, "app", "alice", Some(9)),
            ("127.255.0.1:5000", false, "app", "bob", Some(9)),
            ("128.0.0.1:5000", false, "app", "bob", None),
            // hostnossl: only without TLS.
            ("192.168.7.7:5000", false, "app", "bob", Some(10)),
            ("192.168.7.7:5000", true, "app", "bob", None),
            // IPv6, and IPv4 clients of a dual-stack socket.
            ("[::1]:5000", false, "app", "bob", Some(11)),
            ("[fe80::1]:5000", false, "app", "bob", Some(12)),
            ("[::ffff:127.0.0.1]:5000", false, "app", "bob", Some(9)),
            ("[::2]:5000", false, "app", "bob", None),
            // Names are case-sensitive.
            ("127.0.0.1:5000", false, "APP", "bob", None),
        ];
        for (origin, tls, database, user, expected) in cases {
            assert_eq!(
                line_for(origin, *tls, database, user),
                *expected,
                "{origin} tls={tls} {database}/{user}"
            );
        }
    }

    #[test]
    fn replication_and_all_and_empty_files() {
        let rules = HbaRules::parse("host replication all all trust\n", Path::new("x")).unwrap();
        let client = HbaClient {
            origin: ClientOrigin::Tcp("10.0.0.1".parse().unwrap()),
            tls: false,
            database: "replication",
            user: "u",
            physical_replication: false,
        };
        assert!(find_rule(&rules, &client).is_none());
        let physical = HbaClient {
            physical_replication: true,
            ..client
        };
        assert_eq!(find_rule(&rules, &physical).map(|r| r.line), Some(1));
        let not_all = HbaRules::parse("host all all all trust\n", Path::new("x")).unwrap();
        assert!(
            find_rule(&not_all, &physical).is_none(),
            "all does not match physical replication"
        );
        let empty = HbaRules::parse("# nothing\n", Path::new("x")).unwrap();
        assert!(find_rule(&empty, &client).is_none());
        let all = HbaRules::parse("host all all all md5\n", Path::new("x")).unwrap();
        assert_eq!(find_rule(&all, &client).map(|r| r.line), Some(1));
        let unix = HbaClient {
            origin: ClientOrigin::Unix,
            ..client
        };
        assert!(find_rule(&all, &unix).is_none(), "host lines are TCP only");
    }

    #[test]
    fn origins_from_peers() {
        assert_eq!(
            ClientOrigin::from_peer(&Peer::unix(Some(Path::new("/tmp/.s.PGSQL.6432")))),
            ClientOrigin::Unix
        );
        assert_eq!(
            ClientOrigin::from_peer(&Peer::Tcp("10.0.0.1:5432".parse().unwrap())),
            ClientOrigin::Tcp("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            ClientOrigin::from_peer(&Peer::Tcp("[::1]:5432".parse().unwrap())),
            ClientOrigin::Tcp("::1".parse().unwrap())
        );
    }

    #[test]
    fn root_has_a_name() {
        assert_eq!(os_user_name(0).as_deref(), Some("root"));
    }
}
