//! A simple query too long to hold ([`QUERY_READ`](super::QUERY_READ))
//! streams to the server as it comes, so the SQL-level guard never reads
//! it whole. It is looked at as it goes instead, by its bytes rather than
//! its tokens: one holding `PREPARE`, `EXECUTE` or `DEALLOCATE` and the
//! pooler's prefix or a Unicode-escaped name (`U&"`), ASCII case ignored,
//! each where a token could start (not inside a longer word), may reach
//! the pooler's statements. Its last byte, the NUL ending its text, is then
//! changed before it leaves, and the server refuses the whole message
//! without running any of it (`invalid string in message`, an ERROR that
//! leaves the session open); the client gets the pooler's error instead.
//! Holding the query whole would let one client make the pooler buffer
//! up to `max_packet_size`.

use bytes::BytesMut;

use super::OWN_PREFIX;
use crate::proto::messages;
use crate::sql::prepare::find_ignoring_case;

/// The ErrorResponse the pooler sends in place of the server's refusal
/// (SQLSTATE 54000, `program_limit_exceeded`).
pub(super) fn refusal() -> BytesMut {
    let mut out = BytesMut::new();
    messages::error(
        &mut out,
        "ERROR",
        "54000",
        "a simple query over 64 KiB holding PREPARE, EXECUTE or DEALLOCATE and wharf_ or U&\" \
         may reach the pooler's prepared statements, and was not run: send it by the \
         extended protocol (a Parse), or shorter",
    );
    out
}

const KEYWORDS: [&[u8]; 3] = [b"prepare", b"execute", b"deallocate"];

/// Bytes kept from one piece to the next, so that a word split between
/// two reads is still found with the bytes on either side of it: one more
/// than the longest word looked for.
const CARRY: usize = 11;

/// A long simple query on its way through.
#[derive(Debug)]
pub(super) struct LongQuery {
    /// Bytes of the message's head (tag and length) still to come.
    head: usize,
    /// Bytes of its text seen so far.
    seen: usize,
    /// The last bytes of its text seen, up to [`CARRY`].
    carry: [u8; CARRY],
    carried: usize,
    keyword: bool,
    name: bool,
}

impl LongQuery {
    /// A query whose first byte, its tag, is next.
    pub(super) fn new() -> Self {
        Self {
            head: 5,
            seen: 0,
            carry: [0; CARRY],
            carried: 0,
            keyword: false,
            name: false,
        }
    }

    /// The message's next `bytes`.
    pub(super) fn look(&mut self, bytes: &[u8]) {
        let skip = self.head.min(bytes.len());
        self.head -= skip;
        let text = &bytes[skip..];
        if self.may_reach() || text.is_empty() {
            return;
        }
        let mut joint = [0; 2 * CARRY];
        let ahead = text.len().min(CARRY);
        joint[..self.carried].copy_from_slice(&self.carry[..self.carried]);
        joint[self.carried..self.carried + ahead].copy_from_slice(&text[..ahead]);
        let joint_len = self.carried + ahead;
        self.note(&joint[..joint_len], self.seen == self.carried);
        self.note(text, self.seen == 0);
        self.seen += text.len();
        if text.len() >= CARRY {
            self.carry.copy_from_slice(&text[text.len() - CARRY..]);
            self.carried = CARRY;
        } else {
            let keep = joint_len.min(CARRY);
            let mut carry = [0; CARRY];
            carry[..keep].copy_from_slice(&joint[joint_len - keep..joint_len]);
            self.carry = carry;
            self.carried = keep;
        }
    }

    /// Notes the words in `bytes`, which begin the text when `first`.
    fn note(&mut self, bytes: &[u8], first: bool) {
        let found = |word, whole| token_in(bytes, word, whole, first);
        self.keyword = self.keyword || KEYWORDS.iter().any(|k| found(k, true));
        self.name = self.name || found(OWN_PREFIX, false) || found(b"u&\"", false);
    }

    /// Whether what came so far may reach the pooler's statements.
    pub(super) fn may_reach(&self) -> bool {
        self.keyword && self.name
    }
}

/// Whether `word` is in `bytes` (ASCII case ignored) where a token could
/// start with it: not right after a letter, `_`, `$` or a byte of a
/// multibyte character, which would make it part of a longer identifier;
/// for a keyword (`whole`), not right before one of those or a digit
/// either. A word whose neighbour is outside `bytes` is left to the next
/// piece's joint, which holds both, unless nothing is before it (`first`:
/// `bytes` begin the text). A word right before the text's end is never
/// left: the NUL ending the text comes after it.
fn token_in(bytes: &[u8], word: &[u8], whole: bool, first: bool) -> bool {
    let joins = |b: u8| b.is_ascii_alphabetic() || matches!(b, b'_' | b'$') || b >= 0x80;
    let mut from = 0;
    while let Some(found) = bytes
        .get(from..)
        .and_then(|rest| find_ignoring_case(rest, word))
    {
        let at = from + found;
        let end = at + word.len();
        let starts = match at.checked_sub(1) {
            Some(before) => !joins(bytes[before]),
            None => first,
        };
        let ends = !whole
            || bytes
                .get(end)
                .is_some_and(|&b| !(joins(b) || b.is_ascii_digit()));
        if starts && ends {
            return true;
        }
        from = at + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as a Query message, looked at in pieces of the sizes
    /// `pieces` gives in turn.
    fn looked_at(text: &str, pieces: &mut dyn FnMut() -> usize) -> bool {
        let mut message = vec![b'Q'];
        message.extend_from_slice(&(4 + text.len() as u32 + 1).to_be_bytes());
        message.extend_from_slice(text.as_bytes());
        message.push(0);
        let mut long = LongQuery::new();
        let mut at = 0;
        while at < message.len() {
            let n = pieces().clamp(1, message.len() - at);
            long.look(&message[at..at + n]);
            at += n;
        }
        long.may_reach()
    }

    #[test]
    fn words_split_across_pieces_are_found_in_any_case() {
        let reaching = [
            "SELECT 1; EXECUTE wharf_3",
            "deallocate \"WHARF_3\"",
            "ExEcUtE U&\"\\0077harf_1\"",
            "/* wharf_ */ SELECT 'execute'",
            "SELECT 1;PREPARE wharf_9 AS SELECT 1",
            "EXECUTE\twharf_1",
            "wharf_1 EXECUTE",
            "EXECUTE U&\"x\"",
        ];
        let not = [
            "SELECT 1",
            "SELECT 'wharf_1'",
            "SELECT 'you&me', 'u&x', 'execute'",
            "EXECUTE mine",
            "SELECT 'execut' || 'e', 'wharf'",
            "SELECT 'executed', 'executor', 'prepared' FROM nowharf_1",
            "SELECT 'unprepare', '$deallocate', 'a_execute', 'menu&\"x\"'",
            "SELECT '$deallocate', 'menu&\"abcdefgh\"'",
            "SELECT 'executed' FROM nowharf_x",
        ];
        for size in 1..=12 {
            for text in reaching {
                assert!(looked_at(text, &mut || size), "{size}: {text}");
            }
            for text in not {
                assert!(!looked_at(text, &mut || size), "{size}: {text}");
            }
        }
        for _ in 0..2_000 {
            let pad: String = (0..fastrand::usize(1..40))
                .map(|_| [' ', ';', '\n', '('][fastrand::usize(0..4)])
                .collect();
            let keyword = ["PREPARE", "Execute", "deallocate"][fastrand::usize(0..3)];
            let text = format!("{pad}{keyword}{pad} wHaRf_9{pad}");
            assert!(looked_at(&text, &mut || fastrand::usize(1..15)), "{text}");
            let split = format!("{pad}EXECUT{pad} haRf_9{pad}EXECUTED wharf");
            assert!(
                !looked_at(&split, &mut || fastrand::usize(1..15)),
                "{split}"
            );
        }
    }

    #[test]
    fn pieces_judge_as_the_whole_text_would() {
        let fragments = [
            "execute",
            "PREPARE",
            "deallocate",
            "wharf_",
            "U&\"",
            "u&",
            "x",
            "_",
            "$",
            "1",
            " ",
            ";",
            "'",
            "\"",
            "é",
        ];
        for _ in 0..5_000 {
            let text: String = (0..fastrand::usize(0..12))
                .map(|_| fragments[fastrand::usize(0..fragments.len())])
                .collect();
            let mut whole = LongQuery::new();
            whole.note(format!("{text}\0").as_bytes(), true);
            let pieces = looked_at(&text, &mut || fastrand::usize(1..14));
            assert_eq!(pieces, whole.may_reach(), "{text:?}");
        }
    }

    #[test]
    fn the_message_head_is_not_text() {
        // A length whose bytes read "u&", and a keyword in the text.
        let mut long = LongQuery::new();
        long.look(&[b'Q', 0, 1, b'u', b'&']);
        long.look(b"\" EXECUTE x");
        assert!(!long.may_reach());
        let mut long = LongQuery::new();
        long.look(&[b'Q', 0, 1, b'u', b'&']);
        long.look(b"EXECUTE x");
        assert!(!long.may_reach());
        let mut long = LongQuery::new();
        long.look(&[b'Q', 0]);
        long.look(&[1, b'u', b'&', b' ', b'u', b'&', b'"']);
        long.look(b" EXECUTE x");
        assert!(long.may_reach());
    }
}
