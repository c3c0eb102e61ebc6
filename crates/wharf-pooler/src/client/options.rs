//! The `options` startup parameter (libpq's `options=` and `PGOPTIONS`):
//! command-line switches for the backend, of which the pooler takes the
//! two forms that set a run-time parameter, `-c name=value` and
//! `--name=value`, as PgBouncer 1.20+ does.
//!
//! Switches are separated by unescaped white space; a backslash takes the
//! next character as it is (`-c search_path=a,\ b`), as PostgreSQL splits
//! them. Any other switch, or a `-c` without `name=value`, is refused with
//! PgBouncer's words.

/// The longest `name=value` the pooler takes from `options` (PgBouncer
/// refuses longer ones as "parameter too long").
const MAX_SETTING: usize = 399;

/// Why an `options` startup parameter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum OptionsError {
    /// A switch other than `-c name=value` or `--name=value`.
    #[error(
        "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed"
    )]
    Form,
    /// One `name=value` longer than the pooler takes.
    #[error("unsupported options startup parameter: parameter too long")]
    TooLong,
}

/// Splits `options` into the `(name, value)` settings it makes, in order.
/// A name written with dashes (`--search-path=x`) gets underscores, as
/// PostgreSQL's own switch parser does.
pub(super) fn parse_options(options: &str) -> Result<Vec<(String, String)>, OptionsError> {
    let words = split_words(options);
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().ok_or(OptionsError::Form)?
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.to_owned()
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_owned()
        } else {
            return Err(OptionsError::Form);
        };
        if setting.len() > MAX_SETTING {
            return Err(OptionsError::TooLong);
        }
        let (name, value) = setting.split_once('=').ok_or(OptionsError::Form)?;
        if name.is_empty() {
            return Err(OptionsError::Form);
        }
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(settings)
}

/// Splits at unescaped ASCII white space; a backslash makes the next
/// character part of the word whatever it is.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(options: &str) -> Vec<(String, String)> {
        parse_options(options).expect("accepted")
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn both_forms_with_any_spacing() {
        assert_eq!(
            pairs("  -c timezone=UTC   --datestyle=ISO -capplication_name=x "),
            vec![
                pair("timezone", "UTC"),
                pair("datestyle", "ISO"),
                pair("application_name", "x")
            ]
        );
        assert_eq!(pairs(""), vec![]);
        assert_eq!(pairs("   "), vec![]);
    }

    #[test]
    fn backslashes_escape_anything() {
        assert_eq!(
            pairs(r"-c t\imezone=\E\u\r\o\pe/Lisbon  -c    dat\estyle\=\Ge\rman,\ YMD"),
            vec![
                pair("timezone", "Europe/Lisbon"),
                pair("datestyle", "German, YMD")
            ]
        );
        assert_eq!(
            pairs(r"--application_name=a\\b\ c"),
            vec![pair("application_name", r"a\b c")]
        );
    }

    #[test]
    fn dashes_in_names_become_underscores() {
        assert_eq!(
            pairs("--application-name=a-b"),
            vec![pair("application_name", "a-b")]
        );
    }

    #[test]
    fn other_switches_are_refused() {
        for bad in [
            "-d",
            "-c timezone",
            "-c",
            "-c =x",
            "timezone=UTC",
            "-c a=1 -B 100",
            "--",
        ] {
            assert_eq!(parse_options(bad), Err(OptionsError::Form), "{bad:?}");
        }
        let long = format!("-c application_name={}", "x".repeat(400));
        assert_eq!(parse_options(&long), Err(OptionsError::TooLong));
    }

    #[test]
    fn pgbouncer_wording() {
        assert_eq!(
            OptionsError::Form.to_string(),
            "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed"
        );
    }
}
