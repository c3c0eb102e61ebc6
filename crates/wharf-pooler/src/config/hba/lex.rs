//! The words of an hba file, as PostgreSQL's pg_hba.conf reads them: a
//! record per line (a line ending in `\` goes on on the next one), fields
//! separated by blanks, each field a comma list of words, double quotes
//! keeping blanks, commas and `#` in a word (and taking the special
//! meaning away from a keyword), `#` outside quotes starting a comment.

/// One word of a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    /// The word without its quotes.
    pub(super) text: String,
    /// Whether any of it was in double quotes: a quoted `all` is a name.
    pub(super) quoted: bool,
}

impl Word {
    /// Whether the word is the keyword `keyword` (unquoted).
    pub(super) fn is(&self, keyword: &str) -> bool {
        !self.quoted && self.text == keyword
    }
}

/// A record: the line it starts on and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) line: usize,
    pub(super) fields: Vec<Vec<Word>>,
}

/// Splits hba text into records, skipping blank and comment lines; a
/// malformed line is `Err((line, what is wrong))`.
pub(super) fn records(text: &str) -> Result<Vec<Record>, (usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let mut push = |line: usize, joined: &str| -> Result<(), (usize, String)> {
        let fields = fields(joined).map_err(|message| (line, message))?;
        if !fields.is_empty() {
            out.push(Record { line, fields });
        }
        Ok(())
    };
    for (index, raw) in text.lines().enumerate() {
        let (line, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        // As in PostgreSQL, a trailing backslash continues the record even
        // inside quotes or a comment.
        if let Some(head) = raw.strip_suffix('\\') {
            joined.push_str(head);
            pending = Some((line, joined));
            continue;
        }
        joined.push_str(raw);
        push(line, &joined)?;
    }
    if let Some((line, joined)) = pending {
        push(line, &joined)?;
    }
    Ok(out)
}

/// The fields of one (joined) line.
fn fields(line: &str) -> Result<Vec<Vec<Word>>, String> {
    let mut chars = line.chars().peekable();
    let mut fields = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if matches!(chars.peek(), None | Some('#')) {
            return Ok(fields);
        }
        let mut field = vec![word(&mut chars)?];
        while chars.next_if_eq(&',').is_some() {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if matches!(chars.peek(), None | Some('#')) {
                return Err("a list ends with a comma".to_owned());
            }
            field.push(word(&mut chars)?);
        }
        fields.push(field);
    }
}

/// One word, up to a blank, a comma or a `#` outside quotes.
fn word(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Word, String> {
    let mut text = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    while let Some(&c) = chars.peek() {
        if in_quotes {
            chars.next();
            match c {
                '"' => in_quotes = false,
                _ => text.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                chars.next();
                in_quotes = true;
                quoted = true;
            }
            c if c.is_whitespace() || c == ',' || c == '#' => break,
            _ => {
                chars.next();
                text.push(c);
            }
        }
    }
    if in_quotes {
        return Err("unterminated double quote".to_owned());
    }
    if text.is_empty() && !quoted {
        return Err("empty item in a comma list".to_owned());
    }
    Ok(Word { text, quoted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<Vec<(String, bool)>> {
        fields(line)
            .unwrap()
            .into_iter()
            .map(|f| f.into_iter().map(|w| (w.text, w.quoted)).collect())
            .collect()
    }

    fn plain(items: &[&[&str]]) -> Vec<Vec<(String, bool)>> {
        items
            .iter()
            .map(|f| f.iter().map(|w| ((*w).to_owned(), false)).collect())
            .collect()
    }

    #[test]
    fn fields_lists_quotes_and_comments() {
        assert_eq!(
            words("host  app,report\tall 10.0.0.0/8 md5 # comment"),
            plain(&[
                &["host"],
                &["app", "report"],
                &["all"],
                &["10.0.0.0/8"],
                &["md5"]
            ])
        );
        assert_eq!(
            words("local a, b all trust"),
            plain(&[&["local"], &["a", "b"], &["all"], &["trust"]])
        );
        assert_eq!(
            words(r#"local "all","my db",x#y all trust"#)[1],
            vec![
                ("all".to_owned(), true),
                ("my db".to_owned(), true),
                ("x".to_owned(), false)
            ]
        );
        assert_eq!(words(r#"a"b c"d"#), vec![vec![("ab cd".to_owned(), true)]]);
        assert_eq!(words(r#""a#b""#), vec![vec![("a#b".to_owned(), true)]]);
        assert!(words("   # only a comment").is_empty());
        assert_eq!(
            fields("local a, all trust"),
            Ok(fields("local a,all trust").unwrap())
        );
        assert_eq!(
            fields(r#"local "open all trust"#),
            Err("unterminated double quote".to_owned())
        );
        assert_eq!(
            fields("local a,,b all trust"),
            Err("empty item in a comma list".to_owned())
        );
        assert_eq!(
            fields("local a, # x"),
            Err("a list ends with a comma".to_owned())
        );
    }

    #[test]
    fn records_skip_blanks_and_join_continued_lines() {
        let text = "# header\n\nlocal all all peer\nhost all all \\\n  127.0.0.1/32 md5\r\n  \nhostssl all all ::1/128 cert\\";
        let found = records(text).unwrap();
        let lines: Vec<usize> = found.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4, 7]);
        assert_eq!(found[1].fields.len(), 5);
        assert_eq!(found[1].fields[3][0].text, "127.0.0.1/32");
        assert_eq!(found[2].fields[4][0].text, "cert");
        assert_eq!(
            records("local all all trust\nlocal \"x all trust\n"),
            Err((2, "unterminated double quote".to_owned()))
        );
    }
}
