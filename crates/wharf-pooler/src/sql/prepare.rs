//! SQL-level prepared statements: a simple query that is one `PREPARE`,
//! `EXECUTE` or `DEALLOCATE`, recognised so that the pooler can carry the
//! statement from server to server as it does protocol-level ones.

use std::ops::Range;

use pg_query::protobuf::node::Node;
use pg_query::protobuf::Token;

use super::first_keyword;

/// What a simple query does with an SQL-level prepared statement.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SqlStatement<'a> {
    /// `PREPARE name [(types)] AS query`.
    Prepare {
        /// The name as PostgreSQL folds it.
        name: String,
        /// What follows the name, up to the last token: the parameter
        /// types and the query, the statement's identity.
        definition: &'a [u8],
    },
    /// `EXECUTE name [(params)]`.
    Execute {
        /// The name as PostgreSQL folds it.
        name: String,
        /// Where the name is in the query text, to be replaced.
        at: Range<usize>,
    },
    /// `DEALLOCATE [PREPARE] name` (not `ALL`, which goes to the server).
    Deallocate {
        /// The name as PostgreSQL folds it.
        name: String,
    },
}

/// The SQL-level prepared statement `sql` (a Query's text, without its
/// NUL) concerns, if it is a single `PREPARE`, `EXECUTE` or `DEALLOCATE`.
/// Anything else, or SQL PostgreSQL would not parse, is `None`: the server
/// gets it as it is and answers for it.
pub(crate) fn classify(sql: &[u8]) -> Option<SqlStatement<'_>> {
    // Every simple query comes through here: most start with a letter
    // that rules all three keywords out, so look no further.
    let first = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first.to_ascii_uppercase(), b'P' | b'E' | b'D' | b'-' | b'/') {
        return None;
    }
    let mut keyword = [0; 16];
    if !matches!(
        first_keyword(sql, &mut keyword),
        b"PREPARE" | b"EXECUTE" | b"DEALLOCATE"
    ) {
        return None;
    }
    let text = std::str::from_utf8(sql).ok()?;
    let parsed = pg_query::parse(text, pg_query::ParserOptions::DEFAULT).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let node = raw.stmt.as_ref()?.node.as_ref()?;
    let tokens: Vec<Range<usize>> = pg_query::scan_tokens(text)
        .ok()?
        .into_iter()
        .filter(|t| {
            !matches!(
                Token::try_from(t.token),
                Ok(Token::SqlComment | Token::CComment | Token::Ascii59)
            )
        })
        .map(|t| Some(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?))
        .collect::<Option<_>>()?;
    match node {
        Node::PrepareStmt(prepare) => {
            let name_at = tokens.get(1)?;
            let last = tokens.last()?;
            Some(SqlStatement::Prepare {
                name: prepare.name.clone(),
                definition: sql.get(name_at.end..last.end)?.trim_ascii(),
            })
        }
        Node::ExecuteStmt(execute) => Some(SqlStatement::Execute {
            name: execute.name.clone(),
            at: tokens.get(1)?.clone(),
        }),
        Node::DeallocateStmt(deallocate) if !deallocate.isall => Some(SqlStatement::Deallocate {
            name: deallocate.name.clone(),
        }),
        _ => None,
    }
}

/// Whether `needle` occurs in `hay`, ASCII case ignored.
fn contains_ignoring_case(hay: &[u8], needle: &[u8]) -> bool {
    find_ignoring_case(hay, needle).is_some()
}

/// Where `needle` first occurs in `hay`, ASCII case ignored. Runs on every
/// simple query, so it only compares where one byte of the needle matches,
/// found by memchr with SIMD: a byte without case if the needle has one
/// (the pooler's prefix ends in `_`), searched for alone: a one-byte search
/// is cheaper than one for both cases of a letter, and the prefix's first
/// letter, `w`, is in most queries' `WHERE`. A needle of letters only is
/// found by both cases of its first letter.
pub(crate) fn find_ignoring_case(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let matches_at = |start: usize| {
        hay.get(start..start + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    };
    match needle.iter().rposition(|b| !b.is_ascii_alphabetic()) {
        Some(k) => memchr::memchr_iter(needle[k], hay)
            .filter_map(|at| at.checked_sub(k))
            .find(|&start| matches_at(start)),
        None => match needle.first() {
            Some(&first) => {
                memchr::memchr2_iter(first.to_ascii_lowercase(), first.to_ascii_uppercase(), hay)
                    .find(|&start| matches_at(start))
            }
            None => Some(0),
        },
    }
}

/// Whether `bytes` may name a statement starting with `prefix`: they hold
/// the prefix (ASCII case ignored) or a Unicode escape (`U&`), which can
/// spell it without holding it. The quick test [`own_names_reached`]
/// starts with, for a caller that would first have to find the query in a
/// longer message.
///
/// Every simple query of a session without a tracker comes through here,
/// so both are looked for in one pass: the prefix by its last byte that
/// is not a letter (the `_` of `wharf_`), as [`find_ignoring_case`] does,
/// and `U&` by its `&`.
pub(crate) fn may_name(bytes: &[u8], prefix: &[u8]) -> bool {
    let Some(k) = prefix
        .iter()
        .rposition(|b| !b.is_ascii_alphabetic())
        .filter(|&k| prefix[k] != b'&')
    else {
        return contains_ignoring_case(bytes, prefix) || contains_ignoring_case(bytes, b"u&");
    };
    memchr::memchr2_iter(prefix[k], b'&', bytes).any(|at| {
        if bytes[at] == b'&' {
            at > 0 && bytes[at - 1].eq_ignore_ascii_case(&b'u')
        } else {
            at.checked_sub(k)
                .and_then(|start| bytes.get(start..start + prefix.len()))
                .is_some_and(|word| word.eq_ignore_ascii_case(prefix))
        }
    })
}

/// Where, in a query [`classify`] leaves to the server, a `PREPARE`,
/// `EXECUTE` or `DEALLOCATE [PREPARE]` names a statement whose name (as
/// PostgreSQL folds it) starts with `prefix`: the pooler's own names,
/// which a client must not reach inside a longer query either, nor take
/// first (the pooler's own `PREPARE` of that name would then fail). A Unicode-escaped name
/// (`U&"..."`) counts as reached whatever it spells, and in text the
/// scanner cannot read (not UTF-8, from a client in another encoding) so
/// does every word that holds the prefix. Empty for most queries, which
/// hold neither the prefix nor `U&`.
pub(crate) fn own_names_reached(sql: &[u8], prefix: &[u8]) -> Vec<Range<usize>> {
    if !may_name(sql, prefix) {
        return Vec::new();
    }
    let scanned = std::str::from_utf8(sql)
        .ok()
        .and_then(|text| pg_query::scan_tokens(text).ok());
    let Some(tokens) = scanned else {
        return words_holding(sql, prefix);
    };
    let tokens: Vec<_> = tokens
        .iter()
        .filter_map(|t| {
            let kind = Token::try_from(t.token).ok()?;
            let at = usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?;
            (!matches!(kind, Token::SqlComment | Token::CComment)).then_some((kind, at))
        })
        .collect();
    let mut reached = Vec::new();
    for (i, (kind, _)) in tokens.iter().enumerate() {
        let mut next = i + 1;
        match kind {
            Token::Execute => {}
            // `DEALLOCATE PREPARE name` is the `DEALLOCATE`'s.
            Token::Prepare if i > 0 && tokens[i - 1].0 == Token::Deallocate => continue,
            Token::Prepare => {}
            Token::Deallocate => {
                if matches!(tokens.get(next), Some((Token::Prepare, _))) {
                    next += 1;
                }
            }
            _ => continue,
        }
        let Some((name_kind, at)) = tokens.get(next) else {
            continue;
        };
        let Some(word) = sql.get(at.clone()) else {
            continue;
        };
        let folded = match word.strip_prefix(b"\"").and_then(|w| w.strip_suffix(b"\"")) {
            Some(quoted) => quoted.to_vec(),
            None => word.to_ascii_lowercase(),
        };
        if *name_kind == Token::Uident || folded.starts_with(prefix) {
            reached.push(at.clone());
        }
    }
    reached
}

/// Every word of `sql` holding `prefix` (ASCII case ignored), from the
/// prefix to the end of the identifier it starts.
fn words_holding(sql: &[u8], prefix: &[u8]) -> Vec<Range<usize>> {
    let in_word = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$') || *b >= 0x80;
    let mut words = Vec::new();
    let mut from = 0;
    while let Some(found) = sql
        .get(from..)
        .and_then(|rest| find_ignoring_case(rest, prefix))
    {
        let start = from + found;
        let end = start
            + prefix.len()
            + sql[start + prefix.len()..]
                .iter()
                .take_while(|b| in_word(b))
                .count();
        words.push(start..end);
        from = end.max(start + 1);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::{classify, own_names_reached, SqlStatement};

    #[test]
    fn own_names_are_found_in_longer_queries() {
        let sql = "SELECT 1; EXECUTE Wharf_7(1); deallocate prepare \"wharf_8\"; EXECUTE mine";
        let found: Vec<&str> = own_names_reached(sql.as_bytes(), b"wharf_")
            .into_iter()
            .map(|at| &sql[at])
            .collect();
        assert_eq!(found, ["Wharf_7", "\"wharf_8\""]);
        let sql = "SELECT 1; PREPARE wharf_9 AS SELECT 1; PREPARE TRANSACTION 'wharf_1'";
        let found: Vec<&str> = own_names_reached(sql.as_bytes(), b"wharf_")
            .into_iter()
            .map(|at| &sql[at])
            .collect();
        assert_eq!(found, ["wharf_9"]);
        assert!(own_names_reached(b"SELECT wharf_7 FROM t", b"wharf_").is_empty());
        assert!(own_names_reached(b"SELECT 1", b"wharf_").is_empty());
        let sql = "execute WHARF_1";
        let found = own_names_reached(sql.as_bytes(), b"wharf_");
        assert_eq!(
            found.iter().map(|at| &sql[at.clone()]).collect::<Vec<_>>(),
            ["WHARF_1"]
        );
        // A Unicode-escaped name may spell anything: it is reached.
        for sql in [
            r#"SELECT 1; EXECUTE U&"wharf_1""#,
            r#"DEALLOCATE u&"\0077harf_1""#,
        ] {
            let found = own_names_reached(sql.as_bytes(), b"wharf_");
            assert_eq!(found.len(), 1, "{sql}");
            assert!(sql[found[0].clone()].starts_with(['U', 'u']), "{sql}");
        }
        assert!(own_names_reached(r#"SELECT U&'\0077harf'"#.as_bytes(), b"wharf_").is_empty());
        // Text the scanner cannot read: every word holding the prefix.
        let latin1 = b"EXECUTE Wharf_7 -- caf\xe9; x_wharf_$1 wharf_";
        let found = own_names_reached(latin1, b"wharf_");
        let words: Vec<&[u8]> = found.iter().map(|at| &latin1[at.clone()]).collect();
        assert_eq!(words, [&b"Wharf_7"[..], b"wharf_$1", b"wharf_"]);
        assert!(super::contains_ignoring_case(b"x WHARF_1", b"wharf_"));
        assert!(super::contains_ignoring_case(b"wharf_", b"wharf_"));
        assert!(!super::contains_ignoring_case(b"SELECT wharf", b"wharf_"));
        assert!(!super::contains_ignoring_case(b"", b"wharf_"));
    }

    #[test]
    fn the_narrowed_search_finds_what_a_plain_search_finds() {
        let naive = |hay: &[u8], needle: &[u8]| {
            needle.is_empty()
                || hay
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle))
        };
        // Bytes that come close: both cases of the needles' letters, a
        // byte past ASCII (0xd7) that is another (0xf7) with bit 0x20
        // flipped, as ASCII case is, and other bytes past ASCII.
        let alphabet = b"wWhHaArRfF_vVbB1x\x97\xd7\xf7 ;";
        let mut rng = fastrand::Rng::with_seed(7);
        for needle in [
            &b"wharf_"[..],
            b"_x",
            b"W",
            b"_",
            b"wh",
            b"a_b_",
            b"_w_",
            b"\xd7h",
            b"1x",
            b"",
        ] {
            for _ in 0..20_000 {
                let len = rng.usize(0..40);
                let mut hay: Vec<u8> = (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect();
                // Half the time the needle is in it, in any case, after
                // anything (its own first letter, say).
                if rng.bool() {
                    let at = rng.usize(..=hay.len());
                    let cased = needle.iter().map(|&b| {
                        if rng.bool() {
                            b.to_ascii_uppercase()
                        } else {
                            b
                        }
                    });
                    hay.splice(at..at, cased.collect::<Vec<_>>());
                }
                assert_eq!(
                    super::contains_ignoring_case(&hay, needle),
                    naive(&hay, needle),
                    "{:?} in {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&hay)
                );
            }
        }
        // One pass for the prefix and `U&` finds what two searches find.
        let alphabet = b"wWhHaArRfF_uU&x ";
        for _ in 0..50_000 {
            let hay: Vec<u8> = (0..rng.usize(0..24))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            for prefix in [&b"wharf_"[..], b"_a", b"ab", b"a&"] {
                let two = naive(&hay, prefix) || naive(&hay, b"u&");
                assert_eq!(super::may_name(&hay, prefix), two, "{prefix:?} {hay:?}");
            }
        }
        // At every alignment, and cut one byte short at the end.
        for pad in 0..20 {
            let mut hay = vec![b'x'; pad];
            hay.extend_from_slice(b"EXECUTE wWwHaRf_1");
            assert!(super::contains_ignoring_case(&hay, b"wharf_"), "{pad}");
            hay.truncate(hay.len() - 2);
            assert!(!super::contains_ignoring_case(&hay, b"wharf_"), "{pad}");
        }
    }

    fn definition(sql: &str) -> Option<(String, String)> {
        match classify(sql.as_bytes())? {
            SqlStatement::Prepare { name, definition } => {
                Some((name, String::from_utf8(definition.to_vec()).unwrap()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prepare_keeps_the_types_and_query_after_the_name() {
        assert_eq!(
            definition("PREPARE q (int, text) AS SELECT $1, $2;"),
            Some(("q".into(), "(int, text) AS SELECT $1, $2".into()))
        );
        // Names fold as identifiers do; a quoted one keeps its case.
        assert_eq!(
            definition("/* c */ prepare Upper as select 1 -- trailing\n"),
            Some(("upper".into(), "as select 1".into()))
        );
        assert_eq!(
            definition(r#"PREPARE "Quoted" AS SELECT 'a;b'"#),
            Some(("Quoted".into(), "AS SELECT 'a;b'".into()))
        );
    }

    #[test]
    fn execute_says_where_the_name_is() {
        let sql = "  EXECUTE  Foo (1, 'x')";
        let Some(SqlStatement::Execute { name, at }) = classify(sql.as_bytes()) else {
            panic!()
        };
        assert_eq!((name.as_str(), &sql[at]), ("foo", "Foo"));
        let sql = r#"execute "Bar""#;
        let Some(SqlStatement::Execute { name, at }) = classify(sql.as_bytes()) else {
            panic!()
        };
        assert_eq!((name.as_str(), &sql[at]), ("Bar", r#""Bar""#));
    }

    #[test]
    fn deallocate_of_one_name_only() {
        assert_eq!(
            classify(b"DEALLOCATE PREPARE q"),
            Some(SqlStatement::Deallocate { name: "q".into() })
        );
        assert_eq!(
            classify(b"deallocate q;"),
            Some(SqlStatement::Deallocate { name: "q".into() })
        );
        assert_eq!(classify(b"DEALLOCATE ALL"), None);
    }

    #[test]
    fn random_text_after_the_keywords_never_panics() {
        let mut rng = fastrand::Rng::with_seed(12);
        let pieces: [&[u8]; 12] = [
            b"PREPARE ",
            b"EXECUTE ",
            b"DEALLOCATE ",
            b"q",
            b" AS SELECT $1",
            b"(",
            b")",
            b"'",
            b"\"",
            b"/*",
            b"*/",
            b"--\n",
        ];
        for _ in 0..3000 {
            let mut sql = Vec::new();
            for _ in 0..rng.usize(1..8) {
                if rng.bool() {
                    sql.extend_from_slice(pieces[rng.usize(..pieces.len())]);
                } else {
                    sql.push(rng.u8(..));
                }
            }
            if let Some(SqlStatement::Execute { at, .. }) = classify(&sql) {
                assert!(at.end <= sql.len());
            }
        }
    }

    #[test]
    fn everything_else_goes_to_the_server_as_it_is() {
        for sql in [
            "SELECT 1",
            "EXPLAIN EXECUTE q",
            "PREPARE q AS SELECT 1; EXECUTE q",
            "PREPARE q AS SELEC 1",
            "EXECUTE",
            "",
        ] {
            assert_eq!(classify(sql.as_bytes()), None, "{sql}");
        }
        assert_eq!(classify(b"EXECUTE q(\xff)"), None);
    }
}
