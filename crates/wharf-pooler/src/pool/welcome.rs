//! What a client is told at login: the parameters a server of its pool
//! reported, with the client's own on top, as ParameterStatus messages.
//! Clients of a pool mostly log in with the same parameters (one
//! application, one driver), so each distinct set's welcome is encoded
//! once and its tracked parameters interned once; a login then copies
//! bytes instead of cloning, comparing and encoding a dozen strings.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::proto::messages;
use crate::server::params::{is_tracked, set_param};
use crate::server::{ParamSets, Params};

/// The most distinct client parameter sets a pool keeps welcomes for; when
/// full it starts over (clients that each send a set of their own, such as
/// a unique `application_name`, gain nothing from a cache, and must not
/// keep the sets in use out of it).
const MAX_CACHED: usize = 32;

/// The welcome of clients with one set of startup parameters.
#[derive(Debug)]
pub struct Greeting {
    messages: Bytes,
    tracked: Arc<Params>,
}

impl Greeting {
    /// The ParameterStatus messages of the welcome, encoded.
    pub fn messages(&self) -> &[u8] {
        &self.messages
    }

    /// The client's tracked parameters as it should see them, as the
    /// pool's shared set.
    pub fn tracked(&self) -> &Arc<Params> {
        &self.tracked
    }
}

/// A pool's welcomes: the server's login parameters and the greetings
/// made from them so far.
#[derive(Debug, Default)]
pub(super) struct Welcomes {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    server: Option<Arc<Params>>,
    greetings: Vec<(Params, Arc<Greeting>)>,
}

impl Welcomes {
    /// Keeps the parameters a server reported at login for later
    /// welcomes (greetings made from older ones are dropped), and greets
    /// the client that waited for it, as [`Welcomes::greeting`] would.
    pub(super) fn set_server_and_greet(
        &self,
        server: &[(String, String)],
        client: &Params,
        keep: bool,
        sets: &ParamSets,
    ) -> Arc<Greeting> {
        let server = Arc::new(server.to_vec());
        {
            let mut inner = self.inner.lock();
            inner.server = Some(server.clone());
            inner.greetings.clear();
        }
        self.greet_from(server, client, keep, sets)
    }

    /// The greeting of a client that logged in with `client` (its tracked
    /// startup parameters), or `None` before any server has logged in.
    /// `keep` says whether it is worth keeping for the next client with the
    /// same parameters.
    pub(super) fn greeting(
        &self,
        client: &Params,
        keep: bool,
        sets: &ParamSets,
    ) -> Option<Arc<Greeting>> {
        let server = {
            let inner = self.inner.lock();
            if let Some((_, greeting)) = inner.greetings.iter().find(|(set, _)| set == client) {
                return Some(greeting.clone());
            }
            inner.server.clone()?
        };
        Some(self.greet_from(server, client, keep, sets))
    }

    /// Makes the greeting from `server`'s parameters, outside the lock
    /// (logins that all miss, a unique application_name each, do not queue
    /// behind one another), and keeps it when `keep`.
    fn greet_from(
        &self,
        server: Arc<Params>,
        client: &Params,
        keep: bool,
        sets: &ParamSets,
    ) -> Arc<Greeting> {
        let greeting = Arc::new(greet(&server, client, sets));
        if keep {
            let mut inner = self.inner.lock();
            // Only if the server's parameters are still the ones it was
            // made from.
            if inner
                .server
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &server))
            {
                // Full of sets that came once: start over, so that the
                // sets in use are kept again.
                if inner.greetings.len() >= MAX_CACHED {
                    inner.greetings.clear();
                }
                inner.greetings.push((client.clone(), greeting.clone()));
            }
        }
        greeting
    }
}

/// The server's parameters with the client's on top, encoded, and the
/// tracked ones among them interned.
fn greet(server: &Params, client: &Params, sets: &ParamSets) -> Greeting {
    let mut welcome = server.clone();
    for (name, value) in client {
        set_param(&mut welcome, name, value);
    }
    let mut messages = BytesMut::with_capacity(512);
    for (name, value) in &welcome {
        messages::parameter_status(&mut messages, name, value);
    }
    welcome.retain(|(name, _)| is_tracked(name));
    Greeting {
        messages: messages.freeze(),
        tracked: sets.intern(&welcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn statuses(mut bytes: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], b'S');
            let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            let body = &bytes[5..1 + len];
            let mut parts = body.split(|&b| b == 0);
            let name = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let value = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            out.push((name, value));
            bytes = &bytes[1 + len..];
        }
        out
    }

    fn server() -> Params {
        params(&[
            ("server_version", "15.18"),
            ("client_encoding", "UTF8"),
            ("application_name", ""),
            ("TimeZone", "UTC"),
        ])
    }

    #[test]
    fn nothing_to_say_before_a_server_has_logged_in() {
        let welcomes = Welcomes::default();
        assert!(welcomes
            .greeting(&Params::new(), true, &ParamSets::default())
            .is_none());
    }

    #[test]
    fn the_clients_parameters_go_over_the_servers_in_place_and_new_ones_at_the_end() {
        let (welcomes, sets) = (Welcomes::default(), ParamSets::default());
        welcomes.set_server_and_greet(&server(), &Params::new(), true, &sets);
        let client = params(&[("application_name", "pgbench"), ("DateStyle", "ISO, DMY")]);
        let greeting = welcomes.greeting(&client, true, &sets).unwrap();
        assert_eq!(
            statuses(greeting.messages()),
            params(&[
                ("server_version", "15.18"),
                ("client_encoding", "UTF8"),
                ("application_name", "pgbench"),
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO, DMY"),
            ])
        );
        assert_eq!(
            **greeting.tracked(),
            params(&[
                ("client_encoding", "UTF8"),
                ("application_name", "pgbench"),
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO, DMY"),
            ])
        );
        // The tracked set is the pool's shared one.
        assert!(Arc::ptr_eq(
            greeting.tracked(),
            &sets.intern(greeting.tracked())
        ));
    }

    #[test]
    fn clients_with_the_same_parameters_share_one_greeting_until_the_server_changes() {
        let (welcomes, sets) = (Welcomes::default(), ParamSets::default());
        welcomes.set_server_and_greet(&server(), &Params::new(), true, &sets);
        let client = params(&[("application_name", "app")]);
        let first = welcomes.greeting(&client, true, &sets).unwrap();
        let second = welcomes.greeting(&client, true, &sets).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let other = welcomes
            .greeting(&params(&[("application_name", "other")]), true, &sets)
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &other));

        let mut newer = server();
        newer[0].1 = "16.4".to_owned();
        welcomes.set_server_and_greet(&newer, &Params::new(), true, &sets);
        let after = welcomes.greeting(&client, true, &sets).unwrap();
        assert!(!Arc::ptr_eq(&first, &after));
        assert_eq!(statuses(after.messages())[0].1, "16.4");
    }

    #[test]
    fn a_greeting_not_worth_keeping_is_made_anew_each_time() {
        let (welcomes, sets) = (Welcomes::default(), ParamSets::default());
        welcomes.set_server_and_greet(&server(), &Params::new(), true, &sets);
        let client = params(&[("application_name", "app - 127.0.0.1:5000")]);
        let first = welcomes.greeting(&client, false, &sets).unwrap();
        let second = welcomes.greeting(&client, false, &sets).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(first.messages(), second.messages());
    }

    #[test]
    fn a_full_cache_starts_over_so_sets_in_use_are_kept_again() {
        let (welcomes, sets) = (Welcomes::default(), ParamSets::default());
        welcomes.set_server_and_greet(&server(), &Params::new(), true, &sets);
        for n in 1..MAX_CACHED {
            let client = params(&[("application_name", &format!("once{n}"))]);
            welcomes.greeting(&client, true, &sets).unwrap();
        }
        assert_eq!(welcomes.inner.lock().greetings.len(), MAX_CACHED);
        let common = params(&[("application_name", "common")]);
        let first = welcomes.greeting(&common, true, &sets).unwrap();
        let second = welcomes.greeting(&common, true, &sets).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(welcomes.inner.lock().greetings.len(), 1);
    }
}
