//! The man pages `wharf(1)` and `wharf.ini(5)`, made from the command
//! line's clap definitions and the settings table
//! (`wharf_pooler::config::Settings`). They are committed under
//! `packaging/man/` for the package; the test here fails when they are
//! stale, and `WHARF_BLESS=1 cargo test -p wharf-cli man` rewrites them.

use std::fmt::Write;

use clap::CommandFactory;
use wharf_pooler::config::{Settings, Support};

/// Text made safe for roff: backslashes, and a leading `.` or `'` that
/// would read as a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.chars().next() {
        Some('.' | '\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

/// Markdown from doc comments, as plain words: backquotes and link
/// targets go.
fn plain(markdown: &str) -> String {
    let mut out = String::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("](") {
        let Some(end) = rest[start..].find(')') else {
            break;
        };
        out.push_str(&rest[..start]);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out.replace(['`', '['], "").replace(']', "")
}

fn header(page: &mut String, name: &str, section: u8, title: &str) {
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(
        page,
        ".TH {name} {section} \"\" \"wharf {version}\" \"{title}\""
    );
}

/// `wharf(1)`.
pub(crate) fn wharf_1() -> String {
    let cli = crate::Cli::command();
    let mut page = String::new();
    header(&mut page, "WHARF", 1, "User Commands");
    let about = cli.get_about().map(ToString::to_string).unwrap_or_default();
    let _ = writeln!(page, ".SH NAME\nwharf \\- {}", roff(&about));
    page.push_str(".SH SYNOPSIS\n");
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let _ = writeln!(page, ".B wharf {}\n.RI [ options ]", sub.get_name());
        for arg in sub.get_positionals() {
            let _ = writeln!(page, ".I {}", arg.get_id().as_str().to_uppercase());
        }
        page.push_str(".br\n");
    }
    page.push_str(
        ".SH DESCRIPTION\nwharf serves PostgreSQL clients through pools of server connections, \
         configured with PgBouncer's pgbouncer.ini (see \\fBwharf.ini\\fR(5)). It stays in the \
         foreground and logs to standard error; under systemd it tells the manager when it is \
         ready, reloads and stops (Type=notify), and takes over the sockets of a socket unit.\n",
    );
    page.push_str(".SH COMMANDS\n");
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
        let _ = writeln!(page, ".SS wharf {}\n{}", sub.get_name(), roff(&about));
        for arg in sub.get_arguments().filter(|a| a.get_id() != "help") {
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(long), Some(short)) => format!("\\-{short}, \\-\\-{}", roff(long)),
                (Some(long), None) => format!("\\-\\-{}", roff(long)),
                _ => arg.get_id().as_str().to_uppercase(),
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let _ = writeln!(page, ".TP\n.B {name}\n{}", roff(&help));
        }
        if let Some(after) = sub.get_after_help() {
            let _ = writeln!(page, ".PP\n.nf\n{}\n.fi", roff(&after.to_string()));
        }
    }
    page.push_str(
        ".SH SIGNALS\nAs PgBouncer: SIGHUP reloads the configuration; SIGTERM shuts down once \
         the clients are gone, SIGINT once the servers are released (either a second time: at \
         once); SIGQUIT shuts down at once; SIGUSR1 pauses and SIGUSR2 resumes.\n\
         .SH SEE ALSO\n\\fBwharf.ini\\fR(5), \\fBpgbouncer\\fR(1)\n",
    );
    page
}

/// `wharf.ini(5)`: every `[pgbouncer]` key, from the settings table.
pub(crate) fn wharf_ini_5() -> String {
    let mut page = String::new();
    header(&mut page, "WHARF.INI", 5, "File Formats");
    page.push_str(
        ".SH NAME\nwharf.ini \\- configuration file of wharf, in PgBouncer's format\n\
         .SH DESCRIPTION\nThe file is PgBouncer's pgbouncer.ini: sections [databases], [users], \
         [peers] and [pgbouncer], key = value lines, comments starting with ; or #, and \
         %include FILE. A name ending in .toml holds the same keys in TOML. Times are seconds \
         (fractions allowed) or values with units such as 500ms or 5min. \
         \\fBwharf check\\fR FILE validates a file and every file it names.\n\
         .SH [pgbouncer] SETTINGS\n",
    );
    for key in Settings::keys() {
        let doc = Settings::documentation(key).unwrap_or_default();
        let text = plain(&doc.lines().map(str::trim).collect::<Vec<_>>().join(" "));
        let status = match Settings::support(key) {
            Some(Support::StoredOnly(why)) => format!(" Accepted but not acted on: {why}."),
            Some(Support::Refused(why)) => {
                format!(" A value other than the default is refused: {why}.")
            }
            Some(Support::WharfOnly) => " wharf's own key; PgBouncer does not have it.".to_owned(),
            _ => String::new(),
        };
        let _ = writeln!(
            page,
            ".TP\n.B {}\n{}{}",
            roff(key),
            roff(&text),
            roff(&status)
        );
    }
    page.push_str(".SH SEE ALSO\n\\fBwharf\\fR(1), \\fBpgbouncer.ini\\fR(5)\n");
    page
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_committed_man_pages_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/man");
        for (file, page) in [
            ("wharf.1", super::wharf_1()),
            ("wharf.ini.5", super::wharf_ini_5()),
        ] {
            let path = dir.join(file);
            if std::env::var_os("WHARF_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &page).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == page,
                "{} is stale: run WHARF_BLESS=1 cargo test -p wharf-cli man",
                path.display()
            );
        }
    }

    #[test]
    fn pages_hold_every_command_and_setting() {
        let wharf = super::wharf_1();
        for command in ["serve", "check", "bench", "demo"] {
            assert!(wharf.contains(&format!(".SS wharf {command}")), "{command}");
        }
        assert!(wharf.contains("\\-\\-strict"), "{wharf}");
        let ini = super::wharf_ini_5();
        for key in wharf_pooler::config::Settings::keys() {
            assert!(ini.contains(&format!(".B {}\n", super::roff(key))), "{key}");
        }
        assert!(ini.contains("Accepted but not acted on"), "{ini}");
    }
}
