//! Read/write routing: whether a transaction's first statement may run on
//! a standby, and the `SET wharf.route` a client pins itself with.
//!
//! A statement is a read only when it is sure to be one: anything the
//! classifier does not recognise goes to the primary, where it works
//! whatever it is. A first-keyword check keeps the parser off every query
//! that cannot be a read (INSERT, UPDATE, SET, CALL...).

use pg_query::protobuf::{a_const, KeywordKind, Token, TransactionStmtKind};
use pg_query::{NodeEnum, ParserOptions};

use super::first_keyword;

/// The setting a client pins itself with.
pub(crate) const ROUTE_SETTING: &str = "wharf.route";

/// Functions that write, lock, take a transaction id, change the session
/// or only make sense on the primary: a SELECT calling one goes there.
const PRIMARY_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "set_config",
    "pg_notify",
    "loread",
    "lowrite",
    "pg_export_snapshot",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "dblink_exec",
];

/// Families of such functions, by the start of their names.
const PRIMARY_FUNCTION_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "pg_logical_",
    "pg_replication_",
    "pg_create_",
    "pg_drop_",
    "pg_stat_reset",
];

/// Keywords that make a statement a write wherever they appear in it: a
/// data-modifying CTE, SELECT INTO, a locking clause (FOR UPDATE, FOR NO
/// KEY UPDATE, FOR SHARE, FOR KEY SHARE). An unquoted column of one of
/// these names sends its query to the primary too, which is only slower.
const WRITE_TOKENS: &[Token] = &[
    Token::Insert,
    Token::Update,
    Token::DeleteP,
    Token::Merge,
    Token::Into,
    Token::Share,
];

/// Whether `sql` (one simple Query's text, or one Parse's) may run on a
/// standby: PostgreSQL's scanner reads it, and every statement in it is a
/// plain read (SELECT, VALUES, TABLE, WITH ... SELECT, SHOW, EXPLAIN of
/// one) that locks no rows, selects into no table and calls no function
/// of [`PRIMARY_FUNCTIONS`]; a BEGIN or START TRANSACTION among them is
/// READ ONLY and not SERIALIZABLE (which a standby refuses).
///
/// Parsing costs some 6 times what scanning does, and the full parse tree
/// some 40 times, so the statements are told apart by their tokens (split
/// at each `;`, which outside strings and comments only ends a statement
/// in the statements that can be reads) and the parse tree is built only
/// for the statements whose kind needs it (BEGIN, START, EXPLAIN, COMMIT,
/// ROLLBACK); for the others the tokens say all (a WITH without a
/// data-modifying keyword can only be a SELECT). A read the grammar
/// refuses fails on the standby as it would on the primary.
pub(crate) fn is_read(sql: &[u8]) -> bool {
    let mut keyword = [0; 16];
    let candidate = matches!(
        first_keyword(sql, &mut keyword),
        b"SELECT" | b"WITH" | b"VALUES" | b"TABLE" | b"SHOW" | b"EXPLAIN" | b"BEGIN" | b"START"
    );
    if !candidate {
        return false;
    }
    let Ok(text) = std::str::from_utf8(sql) else {
        return false;
    };
    let Some(statements) = read_tokens(text) else {
        return false;
    };
    !statements.is_empty()
        && statements
            .into_iter()
            .all(|(start, end)| statement_text_is_read(&text[start..end]))
}

/// Whether one statement, whose tokens passed, is a read.
fn statement_text_is_read(stmt: &str) -> bool {
    let mut keyword = [0; 16];
    match first_keyword(stmt.as_bytes(), &mut keyword) {
        b"SELECT" | b"WITH" | b"VALUES" | b"TABLE" | b"SHOW" => true,
        b"BEGIN" | b"START" | b"EXPLAIN" | b"COMMIT" | b"END" | b"ROLLBACK" | b"ABORT" => {
            pg_query::parse(stmt, ParserOptions::DEFAULT).is_ok_and(|parsed| {
                parsed.protobuf.stmts.iter().all(|raw| {
                    raw.stmt
                        .as_ref()
                        .and_then(|stmt| stmt.node.as_ref())
                        .is_some_and(statement_is_read)
                })
            })
        }
        _ => false,
    }
}

/// The token-level checks, which see every corner of the statement (the
/// parse tree would need a walk of every node kind): no [`WRITE_TOKENS`],
/// and no call of a function that belongs on the primary. `Some` with the
/// byte range of each statement (from its first token to its last) when
/// they pass.
fn read_tokens(text: &str) -> Option<Vec<(usize, usize)>> {
    let tokens = pg_query::scan_tokens(text).ok()?;
    let mut statements = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut previous: Option<(usize, usize, bool)> = None;
    for token in &tokens {
        let kind = Token::try_from(token.token).unwrap_or(Token::Nul);
        if matches!(kind, Token::SqlComment | Token::CComment) {
            continue;
        }
        if WRITE_TOKENS.contains(&kind) {
            return None;
        }
        let start = usize::try_from(token.start).ok()?;
        let end = usize::try_from(token.end).ok()?.min(text.len());
        if kind == Token::Ascii59 {
            statements.extend(current.take());
            previous = None;
            continue;
        }
        if kind == Token::Ascii40 {
            if let Some((start, end, true)) = previous {
                if primary_function(&text[start..end]) {
                    return None;
                }
            }
        }
        let named = kind == Token::Ident || token.keyword_kind != KeywordKind::NoKeyword as i32;
        previous = Some((start, end, named));
        current = Some((current.map_or(start, |(first, _)| first), end));
    }
    statements.extend(current);
    Some(statements)
}

/// Whether a function called by this (possibly quoted) name belongs on the
/// primary; its schema, if any, does not matter.
fn primary_function(name: &str) -> bool {
    let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.to_owned(),
        None => name.to_ascii_lowercase(),
    };
    PRIMARY_FUNCTIONS.contains(&name.as_str())
        || PRIMARY_FUNCTION_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// Whether one parsed statement is a read, its tokens having passed.
fn statement_is_read(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::SelectStmt(select) => select.into_clause.is_none(),
        NodeEnum::VariableShowStmt(_) => true,
        NodeEnum::ExplainStmt(explain) => explain
            .query
            .as_ref()
            .and_then(|query| query.node.as_ref())
            .is_some_and(statement_is_read),
        NodeEnum::TransactionStmt(tx) => match TransactionStmtKind::try_from(tx.kind) {
            Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
                read_only_begin(&tx.options)
            }
            // Ending a read-only transaction changes nothing.
            Ok(TransactionStmtKind::TransStmtCommit | TransactionStmtKind::TransStmtRollback) => {
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether a BEGIN's options make it READ ONLY and not SERIALIZABLE.
fn read_only_begin(options: &[pg_query::Node]) -> bool {
    let mut read_only = false;
    for option in options {
        let Some(NodeEnum::DefElem(def)) = &option.node else {
            return false;
        };
        let value = def.arg.as_ref().and_then(|arg| match &arg.node {
            Some(NodeEnum::AConst(c)) => c.val.as_ref(),
            _ => None,
        });
        match (def.defname.as_str(), value) {
            ("transaction_read_only", Some(a_const::Val::Ival(i))) => read_only = i.ival != 0,
            ("transaction_isolation", Some(a_const::Val::Sval(s))) if s.sval == "serializable" => {
                return false;
            }
            _ => {}
        }
    }
    read_only
}

/// What a client asked of `SET wharf.route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteSet {
    /// `primary`: every transaction goes to the primary.
    Primary,
    /// `auto` (also `DEFAULT`, `RESET`): reads may go to a standby.
    Auto,
    /// Anything else: the error to answer with.
    Invalid(String),
}

/// `Some` when `sql` is nothing but a `SET` or `RESET` of
/// [`ROUTE_SETTING`], which the pooler answers itself. Read from
/// PostgreSQL's tokens rather than its grammar, which takes no reserved
/// word such as `primary` as a value.
pub(crate) fn route_set(sql: &[u8]) -> Option<RouteSet> {
    let mut keyword = [0; 16];
    let reset = match first_keyword(sql, &mut keyword) {
        b"SET" => false,
        b"RESET" => true,
        _ => return None,
    };
    let needle = ROUTE_SETTING.as_bytes();
    if !sql
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
    {
        return None;
    }
    let text = std::str::from_utf8(sql).ok()?;
    let tokens = pg_query::scan_tokens(text).ok()?;
    let mut words = tokens
        .iter()
        .filter_map(|t| {
            let kind = Token::try_from(t.token).ok()?;
            let text = text.get(t.start.max(0) as usize..t.end.max(0) as usize)?;
            (!matches!(kind, Token::SqlComment | Token::CComment)).then_some((kind, text))
        })
        .peekable();
    words.next()?;
    let local = match words.peek() {
        Some((Token::Session, _)) => {
            words.next();
            false
        }
        Some((Token::Local, _)) => {
            words.next();
            true
        }
        _ => false,
    };
    let name: Vec<_> = words.by_ref().take(3).collect();
    let [(_, schema), (Token::Ascii46, _), (_, setting)] = name.as_slice() else {
        return None;
    };
    let named = |word: &str, wanted: &str| {
        word.strip_prefix('"')
            .and_then(|w| w.strip_suffix('"'))
            .map_or(word.eq_ignore_ascii_case(wanted), |quoted| quoted == wanted)
    };
    if !named(schema, "wharf") || !named(setting, "route") {
        return None;
    }
    let rest: Vec<_> = words.filter(|(kind, _)| *kind != Token::Ascii59).collect();
    let value = if reset {
        if !rest.is_empty() {
            return None;
        }
        "default".to_owned()
    } else {
        match rest.as_slice() {
            [(Token::Ascii61 | Token::To, _), (_, value)] => value
                .trim_matches(|c| c == '\'' || c == '"')
                .to_ascii_lowercase(),
            _ => return None,
        }
    };
    if local {
        return Some(RouteSet::Invalid(format!(
            "{ROUTE_SETTING} cannot be set with SET LOCAL"
        )));
    }
    Some(match value.as_str() {
        "primary" => RouteSet::Primary,
        "auto" | "default" => RouteSet::Auto,
        _ => RouteSet::Invalid(format!(
            "invalid value for parameter \"{ROUTE_SETTING}\": \"{value}\" (expected primary or auto)"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reads_may_go_to_a_standby() {
        for sql in [
            "SELECT 1",
            "  select * from t where a = $1",
            "-- a comment\nSELECT pg_is_in_recovery()",
            "/* nested /* comment */ */ SELECT now()",
            "SELECT a FROM t JOIN u USING (id) ORDER BY a LIMIT 10",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW work_mem",
            "SELECT 1; SELECT 2;",
            "SELECT ';' ; /* ; */ SELECT $$;$$ -- ;",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t",
            "BEGIN READ ONLY; SELECT 1; ROLLBACK",
            "SELECT random(), gen_random_uuid()",
            "SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1",
            "SELECT 1 UNION SELECT 2",
            "BEGIN READ ONLY",
            "START TRANSACTION READ ONLY",
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "BEGIN READ ONLY; SELECT 1; COMMIT",
            "SELECT 'INSERT INTO t VALUES (1)'",
            "SELECT 1 -- FOR UPDATE",
            "SELECT \"nextval_like\"(1)",
        ] {
            assert!(is_read(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn everything_else_goes_to_the_primary() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "SET work_mem = '1MB'",
            "CALL p()",
            "CREATE TABLE t (a int)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
            "SELECT nextval('s')",
            "SELECT NEXTVAL('s')",
            "SELECT pg_catalog.nextval('s')",
            "SELECT \"nextval\"('s')",
            "SELECT setval('s', 1)",
            "SELECT currval('s')",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock_all()",
            "SELECT txid_current()",
            "SELECT pg_current_xact_id()",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT lo_create(0)",
            "SELECT lo_import('/tmp/x')",
            "SELECT pg_notify('c', 'x')",
            "SELECT a FROM t WHERE b IN (SELECT nextval('s'))",
            "SELECT * INTO t2 FROM t",
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
            "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
            "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
            "EXPLAIN ANALYZE UPDATE t SET a = 1",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "SELECT 1; SET a.b = 1",
            "BEGIN",
            "BEGIN; SELECT 1",
            "START TRANSACTION",
            "BEGIN READ WRITE",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "BEGIN READ ONLY; COMMIT PREPARED 'x'",
            "BEGIN READ ONLY; ROLLBACK PREPARED 'x'",
            "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
            "EXPLAIN EXECUTE p(1)",
            "SELECT 1; EXECUTE p(1)",
            "SELECT 1; VACUUM",
            "SELECT 1; ;CREATE TABLE t (a int)",
            "SELEC 1",
            "SELECT 'unterminated",
            "",
            "-- only a comment",
            "(SELECT 1)",
            "SELECT 1\0",
        ] {
            assert!(!is_read(sql.as_bytes()), "{sql}");
        }
        assert!(!is_read(b"SELECT \xff"));
    }

    #[test]
    fn set_wharf_route_is_recognised() {
        assert_eq!(
            route_set(b"SET wharf.route = primary"),
            Some(RouteSet::Primary)
        );
        assert_eq!(
            route_set(b"set WHARF.ROUTE to 'Primary';"),
            Some(RouteSet::Primary)
        );
        assert_eq!(
            route_set(b"SET SESSION wharf.route = auto"),
            Some(RouteSet::Auto)
        );
        assert_eq!(route_set(b"RESET wharf.route"), Some(RouteSet::Auto));
        assert_eq!(
            route_set(b"SET wharf.route TO DEFAULT"),
            Some(RouteSet::Auto)
        );
        assert!(matches!(
            route_set(b"SET wharf.route = replica"),
            Some(RouteSet::Invalid(_))
        ));
        assert!(matches!(
            route_set(b"SET LOCAL wharf.route = primary"),
            Some(RouteSet::Invalid(_))
        ));
        assert_eq!(route_set(b"SET wharf.router = primary"), None);
        assert_eq!(route_set(b"SET work_mem = '1MB'"), None);
        assert_eq!(route_set(b"SET wharf.route = primary; SELECT 1"), None);
        assert_eq!(route_set(b"SELECT 'wharf.route'"), None);
    }

    /// Run with `cargo test --profile bench -p wharf-pooler --lib classify_cost
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn classify_cost() {
        fn measure(name: &str, sql: &[u8], classify: fn(&[u8]) -> bool) {
            let rounds = 20_000u32;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(classify(std::hint::black_box(sql)));
            }
            let per = started.elapsed() / rounds;
            println!("{name}: {} ns per classification", per.as_nanos());
        }
        let typical: &[u8] = b"SELECT u.id, u.name, o.total FROM users u JOIN orders o \
            ON o.user_id = u.id WHERE u.id = $1 AND o.created_at > now() - interval '1 day' \
            ORDER BY o.total DESC LIMIT 20";
        measure(
            "write (first keyword only)",
            b"INSERT INTO t (a, b) VALUES ($1, $2)",
            is_read,
        );
        measure("short read", b"SELECT 1", is_read);
        measure("typical read (190 bytes)", typical, is_read);
        measure(
            "SELECT ... FOR UPDATE",
            b"SELECT * FROM t WHERE id = $1 FOR UPDATE",
            is_read,
        );
        measure("BEGIN READ ONLY (parse tree)", b"BEGIN READ ONLY", is_read);
        measure("SET wharf.route", b"SET wharf.route = primary", |sql| {
            route_set(sql).is_some()
        });
        measure("SET other (keyword only)", b"SET work_mem = '1MB'", |sql| {
            route_set(sql).is_some()
        });
        let full_parse = |sql: &[u8]| {
            pg_query::parse(std::str::from_utf8(sql).unwrap(), ParserOptions::DEFAULT).is_ok()
        };
        measure(
            "for comparison: full parse tree of the typical read",
            typical,
            full_parse,
        );
    }
}
