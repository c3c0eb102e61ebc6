//! When a session needs a tracker. A client that never names a statement
//! (`pgbench -M extended`, drivers with their statement cache off) sends
//! groups of unnamed Parse, Bind, Describe and Execute up to a Sync; such a
//! group goes to the server as it is and its replies come back as they
//! are, with nothing to rename and nothing to match.

use super::{BIND_HEAD, OWN_PREFIX};
use crate::client::state::ProtocolState;
use crate::proto::cstr_bytes;
use crate::sql::prepare::{classify, may_name, own_names_reached};

/// Whether a client message needs a tracker, by its held `body` (`None`
/// when not held whole): an extended-protocol request naming a statement
/// (the name must be renamed and the replies matched), a Parse whose text
/// may reach the pooler's statements (`EXECUTE wharf_7`), and a simple
/// query that is an SQL-level `PREPARE`, `EXECUTE` or `DEALLOCATE`, names
/// one of the pooler's statements or is too long to hold (the tracker
/// looks at it as it streams). An Execute names a portal only,
/// which lives and dies on the one server.
fn needs_tracker(tag: u8, body: Option<&[u8]>) -> bool {
    match tag {
        b'P' | b'B' | b'D' | b'C' => body.is_none_or(|body| names_statement(tag, body)),
        b'Q' => match body {
            // Too long to hold: it is looked at as it streams, by a tracker.
            None => true,
            Some(body) => body.strip_suffix(&[0]).is_some_and(|sql| {
                classify(sql).is_some() || !own_names_reached(sql, OWN_PREFIX).is_empty()
            }),
        },
        _ => false,
    }
}

/// What an untracked session does with a client message.
pub(in crate::client) enum Untracked {
    /// It goes as it is.
    Pass,
    /// A tracker is made for it and what follows.
    Track,
    /// The session ends: inside a group the pooler could not follow, the
    /// message names a statement, a Parse may start a COPY, or a simple
    /// query needs a tracker.
    Refuse,
}

/// What the untracked session does with the client message `tag` (the
/// first of `bytes`, with its held `body`). The first request of an
/// extended-protocol group decides for all of it, which must then be whole
/// (a tracker made part-way through could not match the replies to the
/// requests before it), and `group_clean` records that it needs none,
/// until its Sync. A group the pooler did not see begin (after COPY data,
/// past Syncs the server ignored) is let through only as long as it names
/// no statement, starts no COPY and holds no simple query that needs a
/// tracker.
pub(in crate::client) fn untracked(
    protocol: &ProtocolState,
    group_clean: &mut bool,
    tag: u8,
    bytes: &[u8],
    body: Option<&[u8]>,
) -> Untracked {
    // A tracker made inside a group the pooler did not see begin could
    // not match the replies to the requests before it.
    let judged = |needed, inside_unseen_group| match (needed, inside_unseen_group) {
        (false, _) => Untracked::Pass,
        (true, false) => Untracked::Track,
        (true, true) => Untracked::Refuse,
    };
    if !matches!(tag, b'P' | b'B' | b'D' | b'C' | b'E') {
        // What the pooler knew of the group ends with its Sync, and with
        // a simple query or the end of COPY data.
        if matches!(tag, b'S' | b'Q' | b'c' | b'f') {
            *group_clean = false;
        }
        return judged(needs_tracker(tag, body), protocol.batch_open());
    }
    if *group_clean {
        return Untracked::Pass;
    }
    if !protocol.batch_open() {
        let needed = group_needs_tracker(bytes);
        *group_clean = !needed;
        return judged(needed, false);
    }
    let starts_copy = tag == b'P' && body.is_none_or(may_copy);
    judged(starts_copy || needs_tracker(tag, body), true)
}

/// Whether a client message is a Bind longer than the head of it that is
/// held (`total` bytes, tag included) whose names, the portal's and the
/// statement's, do not both end in that head: past it a Bind streams as it
/// is, and a statement name there could not be renamed. `body` is what is
/// held (routing may hold more than the head).
pub(in crate::client) fn bind_names_cut(tag: u8, total: usize, body: Option<&[u8]>) -> bool {
    tag == b'B'
        && total > BIND_HEAD
        && body
            .map(|body| &body[..body.len().min(BIND_HEAD - 5)])
            .and_then(cstr_bytes)
            .and_then(|(_portal, rest)| cstr_bytes(rest))
            .is_none()
}

/// Whether the Parse, Bind, Describe or Close `body` names a statement or
/// may reach the pooler's.
fn names_statement(tag: u8, body: &[u8]) -> bool {
    let named = |names: &[u8]| cstr_bytes(names).is_none_or(|(name, _)| !name.is_empty());
    match tag {
        b'P' => match cstr_bytes(body) {
            Some((name, text)) => !name.is_empty() || may_name(text, OWN_PREFIX),
            None => true,
        },
        b'B' => match cstr_bytes(body) {
            Some((_portal, rest)) => named(rest),
            None => true,
        },
        // Describe and Close: of a portal (`P`) or a statement (`S`).
        _ => match body.split_first() {
            Some((b'P', _)) => false,
            Some((_, name)) => named(name),
            None => true,
        },
    }
}

/// Whether the extended-protocol group that starts `bytes` (the client's
/// bytes from its first message on) needs a tracker. It needs none only
/// when all of it up to its Sync is there and no message in it needs one:
/// were one to be made part-way through, the replies to the requests
/// before it would already be on their way, unmatched. A Parse that may
/// hold a `COPY` needs one too: in COPY FROM STDIN the server ignores the
/// group's Sync and reads on past the copy data as the same group, which
/// the pooler must follow.
fn group_needs_tracker(mut bytes: &[u8]) -> bool {
    loop {
        let Some(&[tag, a, b, c, d]) = bytes.get(..5) else {
            return true;
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let Some(body) = len.checked_sub(4).and_then(|body| bytes[5..].get(..body)) else {
            return true;
        };
        match tag {
            b'S' => return false,
            b'E' | b'H' => {}
            b'P' if may_copy(body) => return true,
            b'P' | b'B' | b'D' | b'C' if !names_statement(tag, body) => {}
            // A simple query, COPY data or a FunctionCall inside the group
            // are left to the tracker too.
            _ => return true,
        }
        bytes = &bytes[1 + len..];
    }
}

/// Whether `text` may hold `COPY`, ASCII case ignored: found by its
/// rarest letter, `y`, which most queries lack (searching for `c` cost
/// 600 instructions a Parse of pgbench's query, which has five).
fn may_copy(text: &[u8]) -> bool {
    memchr::memchr2_iter(b'y', b'Y', text)
        .any(|at| at >= 3 && text[at - 3..at].eq_ignore_ascii_case(b"cop"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(4 + body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn group(messages: &[(u8, &[u8])]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|(tag, body)| message(*tag, body))
            .collect()
    }

    const UNNAMED_PARSE: &[u8] = b"\0SELECT 1\0\0\0";
    const UNNAMED_BIND: &[u8] = b"\0\0\0\0\0\0\0\0";

    #[test]
    fn a_whole_group_of_unnamed_requests_needs_no_tracker() {
        let pgbench = group(&[
            (b'P', UNNAMED_PARSE),
            (b'B', UNNAMED_BIND),
            (b'D', b"P\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        assert!(!group_needs_tracker(&pgbench));
        // A named portal and a Flush name no statement either.
        let portal = group(&[
            (b'B', b"cur\0\0\0\0\0\0\0\0"),
            (b'H', b""),
            (b'E', b"cur\0\0\0\0\0"),
            (b'C', b"Pcur\0"),
            (b'D', b"S\0"),
            (b'S', b""),
        ]);
        assert!(!group_needs_tracker(&portal));
    }

    #[test]
    fn a_group_not_all_there_needs_one() {
        let whole = group(&[(b'P', UNNAMED_PARSE), (b'E', b"\0\0\0\0\0"), (b'S', b"")]);
        for end in 0..whole.len() {
            assert!(group_needs_tracker(&whole[..end]), "cut at {end}");
        }
        assert!(!group_needs_tracker(&whole));
    }

    #[test]
    fn a_named_statement_or_another_message_anywhere_in_the_group_needs_one() {
        let named: &[(u8, &[u8])] = &[
            (b'P', b"s1\0SELECT 1\0\0\0"),
            (b'B', b"\0s1\0\0\0\0\0\0\0"),
            (b'D', b"Ss1\0"),
            (b'C', b"Ss1\0"),
            (b'P', b"\0EXECUTE WHARF_1\0\0\0"),
            (b'P', b"\0EXECUTE u&\"\\0077harf_1\"\0\0\0"),
        ];
        let odd: &[(u8, &[u8])] = &[
            (b'Q', b"SELECT 1\0"),
            (b'd', b"1\n"),
            (b'F', b"\0\0\0\0"),
            (b'P', b"no terminator"),
            (b'B', b"\0"),
            (b'D', b""),
            (b'P', b"\0/* load */ Copy t FROM STDIN\0\0\0"),
            (b'P', b"\0cOPY t FROM STDIN\0\0\0"),
        ];
        for &(tag, body) in named.iter().chain(odd) {
            let bytes = group(&[(b'P', UNNAMED_PARSE), (tag, body), (b'S', b"")]);
            assert!(group_needs_tracker(&bytes), "{}: {body:?}", tag as char);
        }
        for &(tag, body) in named {
            assert!(needs_tracker(tag, Some(body)), "{}: {body:?}", tag as char);
        }
        let mut short = message(b'P', UNNAMED_PARSE);
        short[4] = 3;
        assert!(group_needs_tracker(&short), "a length below 4");
    }

    #[test]
    fn any_bytes_are_judged_without_panicking_and_a_cut_group_needs_one() {
        let mut rng = fastrand::Rng::with_seed(15);
        let tags = b"PBDCEHSQdX";
        for _ in 0..20_000 {
            // Messages with random tags and bodies, some with a wrong
            // length, or bytes with no shape at all.
            let mut bytes = Vec::new();
            let mut lengths_right = true;
            let (mut syncs, mut last) = (0, 0);
            for _ in 0..rng.usize(1..6) {
                let tag = *rng.choice(tags.iter()).unwrap();
                let body: Vec<u8> = (0..rng.usize(0..12))
                    .map(|_| *rng.choice(b"\0Sws_P1U&".iter()).unwrap())
                    .collect();
                let mut message = message(tag, &body);
                if rng.u8(..) < 16 {
                    message[1..5].copy_from_slice(&rng.u32(..).to_be_bytes());
                    lengths_right = false;
                }
                syncs += usize::from(tag == b'S');
                last = tag;
                bytes.extend(message);
            }
            if rng.u8(..) < 32 {
                bytes = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
                lengths_right = false;
            }
            let needed = group_needs_tracker(&bytes);
            if !needed && lengths_right && syncs == 1 && last == b'S' {
                // Without its last byte, the group is not all there.
                assert!(group_needs_tracker(&bytes[..bytes.len() - 1]), "{bytes:?}");
            }
        }
    }

    #[test]
    fn a_statement_named_in_a_group_the_pooler_did_not_see_begin_is_refused() {
        // An Execute noted with no group judged before it (as when one
        // was begun during a COPY): the batch is open, and unjudged.
        let mut protocol = ProtocolState::default();
        protocol.note(b'E');
        let mut clean = false;
        let bind = b"\0wharf_1\0\0\0\0\0\0\0";
        let refused = untracked(&protocol, &mut clean, b'B', b"", Some(bind));
        assert!(matches!(refused, Untracked::Refuse));
        let copy = b"\0COPY t FROM STDIN\0\0\0";
        let refused = untracked(&protocol, &mut clean, b'P', b"", Some(copy));
        assert!(matches!(refused, Untracked::Refuse));
        let passed = untracked(&protocol, &mut clean, b'B', b"", Some(UNNAMED_BIND));
        assert!(matches!(passed, Untracked::Pass));
        // A simple query there that needs a tracker, too long to hold or
        // an SQL-level statement, is refused; any other goes.
        let refused = untracked(&protocol, &mut clean, b'Q', b"", None);
        assert!(matches!(refused, Untracked::Refuse));
        let prepare = b"PREPARE p AS SELECT 1\0";
        let refused = untracked(&protocol, &mut clean, b'Q', b"", Some(prepare));
        assert!(matches!(refused, Untracked::Refuse));
        let passed = untracked(&protocol, &mut clean, b'Q', b"", Some(b"SELECT 1\0"));
        assert!(matches!(passed, Untracked::Pass));
        let fresh = ProtocolState::default();
        let tracked = untracked(&fresh, &mut clean, b'Q', b"", None);
        assert!(matches!(tracked, Untracked::Track));
        // Judged clean at its start, a group goes on unlooked-at until
        // its Sync.
        let mut clean = true;
        let passed = untracked(&protocol, &mut clean, b'B', b"", Some(bind));
        assert!(matches!(passed, Untracked::Pass));
        untracked(&protocol, &mut clean, b'S', b"", Some(b""));
        assert!(!clean, "a Sync ends it");
    }

    #[test]
    fn a_bind_is_cut_only_past_its_head_with_a_name_running_past_it() {
        let head = BIND_HEAD - 5;
        let with_names = |portal: usize, statement: usize| {
            let mut body = vec![b'p'; portal];
            body.push(0);
            body.extend(std::iter::repeat_n(b's', statement));
            body.push(0);
            body
        };
        let held = |body: &[u8]| body[..body.len().min(head)].to_vec();
        let ends_on_edge = with_names(0, head - 2);
        assert!(!bind_names_cut(
            b'B',
            BIND_HEAD + 6,
            Some(&held(&ends_on_edge))
        ));
        let one_past = with_names(0, head - 1);
        assert!(bind_names_cut(b'B', BIND_HEAD + 6, Some(&held(&one_past))));
        let long_portal = with_names(70 * 1024, 7);
        assert!(bind_names_cut(b'B', 80 * 1024, Some(&held(&long_portal))));
        // Held whole, a Bind is renamed or refused by the server.
        assert!(!bind_names_cut(b'B', BIND_HEAD, Some(b"no names")));
        assert!(!bind_names_cut(b'P', 80 * 1024, Some(b"no names")));
    }

    #[test]
    fn simple_queries_need_one_only_for_prepared_statements() {
        let query = |sql: &str| needs_tracker(b'Q', Some(format!("{sql}\0").as_bytes()));
        assert!(!query("SELECT 1"));
        assert!(query("PREPARE p AS SELECT 1"));
        assert!(query("EXECUTE wharf_3"));
        assert!(query("SELECT 1; PREPARE wharf_3 AS SELECT 2"));
        assert!(needs_tracker(b'Q', None), "too long to hold");
        assert!(!needs_tracker(b'E', Some(b"\0\0\0\0\0")));
        assert!(needs_tracker(b'P', None), "not held whole");
    }
}
