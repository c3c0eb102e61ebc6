//! The SQL the pooler must understand, read with PostgreSQL's own parser
//! (`pg_query`): SQL-level prepared statements in transaction mode, and
//! which transactions may go to a standby under read/write routing. Every
//! check starts with a look at the first keyword, so that the parser runs
//! only for the few queries that can concern it.

pub(crate) mod prepare;
pub(crate) mod route;

/// The first keyword of `sql`, upper-cased into `into` (at most its
/// length), skipping white space and comments; empty when there is none.
pub(crate) fn first_keyword<'a>(sql: &[u8], into: &'a mut [u8; 16]) -> &'a [u8] {
    let mut at = 0;
    loop {
        while at < sql.len() && sql[at].is_ascii_whitespace() {
            at += 1;
        }
        if sql[at..].starts_with(b"--") {
            while at < sql.len() && sql[at] != b'\n' {
                at += 1;
            }
        } else if sql[at..].starts_with(b"/*") {
            // PostgreSQL's block comments nest.
            let mut depth = 0usize;
            while at < sql.len() {
                if sql[at..].starts_with(b"/*") {
                    depth += 1;
                    at += 2;
                } else if sql[at..].starts_with(b"*/") {
                    depth -= 1;
                    at += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    at += 1;
                }
            }
        } else {
            break;
        }
    }
    let mut n = 0;
    while at + n < sql.len() && n < into.len() && sql[at + n].is_ascii_alphabetic() {
        into[n] = sql[at + n].to_ascii_uppercase();
        n += 1;
    }
    &into[..n]
}

#[cfg(test)]
mod tests {
    use super::first_keyword;

    #[test]
    fn first_keyword_skips_space_and_nested_comments() {
        let mut buf = [0; 16];
        assert_eq!(first_keyword(b"  select 1", &mut buf), b"SELECT");
        assert_eq!(
            first_keyword(b"-- a\n /* x /* y */ z */ Execute p(1)", &mut buf),
            b"EXECUTE"
        );
        assert_eq!(first_keyword(b"/* open", &mut buf), b"");
        assert_eq!(first_keyword(b"", &mut buf), b"");
        assert_eq!(first_keyword(b"(SELECT 1)", &mut buf), b"");
    }
}
