//! A startup message's parameters, kept as the packet brought them: one
//! buffer of NUL-terminated names and values, checked once (well formed,
//! UTF-8) and read in place. A login keeps only the few values it needs
//! (the user, the database, the tracked parameters), so a `String` for
//! every name and value was six allocations and frees per login that most
//! of them threw away.

use super::ProtocolError;

/// The parameters of a startup message, in the order the client sent
/// them.
#[derive(Clone, PartialEq, Eq)]
pub struct StartupParams {
    /// Each name and each value followed by a NUL, without the empty name
    /// that ends the list.
    text: String,
}

impl StartupParams {
    /// Reads `bytes`, the startup message after its protocol version:
    /// name, NUL, value, NUL, … and a last NUL. Anything else (a name
    /// without a value, bytes after the last NUL, text that is not UTF-8)
    /// is refused.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, ProtocolError> {
        let malformed = || ProtocolError::Malformed("startup parameters");
        let mut rest = &bytes[..];
        loop {
            let name_end = nul_in(rest).ok_or_else(malformed)?;
            if name_end == 0 {
                if rest.len() != 1 {
                    return Err(malformed());
                }
                break;
            }
            let value_end = nul_in(&rest[name_end + 1..]).ok_or_else(malformed)?;
            rest = &rest[name_end + 1 + value_end + 1..];
        }
        let mut text = String::from_utf8(bytes).map_err(|_| malformed())?;
        // The last NUL, which ends the list.
        text.pop();
        Ok(Self { text })
    }

    /// The parameters from `pairs`, as a client would send them (tests, and
    /// callers that build a startup message themselves). A name must not
    /// be empty, and neither a name nor a value may hold a NUL.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut text = String::new();
        for (name, value) in pairs {
            debug_assert!(
                !name.is_empty() && !name.contains('\0') && !value.contains('\0'),
                "not a startup parameter: {name:?} = {value:?}"
            );
            text.push_str(name);
            text.push('\0');
            text.push_str(value);
            text.push('\0');
        }
        Self { text }
    }

    /// Each parameter's name and value, in order.
    pub fn iter(&self) -> Pairs<'_> {
        Pairs { rest: &self.text }
    }

    /// The value of the first parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl std::fmt::Debug for StartupParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a StartupParams {
    type Item = (&'a str, &'a str);
    type IntoIter = Pairs<'a>;

    fn into_iter(self) -> Pairs<'a> {
        self.iter()
    }
}

/// The names and values of [`StartupParams`], in order.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        // Checked by `parse`: names and values come in pairs, each ended
        // by a NUL.
        let (name, rest) = split_at_nul(self.rest)?;
        let (value, rest) = split_at_nul(rest)?;
        self.rest = rest;
        Some((name, value))
    }
}

/// The text before the first NUL and the text after it. A plain byte
/// loop: names and values are a few bytes long, where `memchr`'s setup
/// costs more than the search and `str::split_once('\0')`, which searches
/// by `char`, more still. A NUL is one byte, so both sides stay UTF-8.
fn split_at_nul(text: &str) -> Option<(&str, &str)> {
    let end = nul_in(text.as_bytes())?;
    Some((&text[..end], &text[end + 1..]))
}

/// Where the first NUL in `bytes` is.
fn nul_in(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
        let params = StartupParams::parse(bytes.to_vec())?;
        Ok(params
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect())
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_and_values_come_out_in_order_and_empty_values_are_kept() {
        assert_eq!(
            parse(b"user\0alice\0options\0\0database\0db\0\0").unwrap(),
            owned(&[("user", "alice"), ("options", ""), ("database", "db")])
        );
        assert_eq!(parse(b"\0").unwrap(), owned(&[]));
        let params = StartupParams::parse(b"user\0bob\0user\0eve\0\0".to_vec()).unwrap();
        assert_eq!(params.get("user"), Some("bob"), "the first one");
        assert_eq!(params.get("database"), None);
    }

    #[test]
    fn a_list_not_ended_as_the_protocol_says_is_refused() {
        for bad in [
            &b""[..],
            b"user",
            b"user\0",
            b"user\0alice",
            b"user\0alice\0",
            b"user\0alice\0\0x",
            b"\0\0",
            b"user\0\xff\xfe\0\0",
            // A character cut by a NUL is no UTF-8 on either side of it.
            b"user\0\xc3\0\xa9\0\0",
        ] {
            assert!(
                matches!(
                    StartupParams::parse(bad.to_vec()),
                    Err(ProtocolError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn text_beyond_ascii_is_read_whole() {
        assert_eq!(
            parse("application_name\0café ☕\0\0".as_bytes()).unwrap(),
            owned(&[("application_name", "café ☕")])
        );
    }

    #[test]
    fn pairs_made_by_hand_read_back_the_same() {
        let pairs = [("user", "u"), ("application_name", "")];
        let params = StartupParams::from_pairs(pairs);
        assert_eq!(params.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(
            format!("{params:?}"),
            r#"[("user", "u"), ("application_name", "")]"#
        );
    }
}
