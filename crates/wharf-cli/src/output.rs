//! Printing that survives a reader that went away: `wharf check x.ini |
//! head` closes standard output after ten lines, and `println!` would
//! panic on the broken pipe. What cannot be written is dropped and the
//! command carries on (a demo still stops its PostgreSQL); the exit code
//! stays the command's own.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

fn write_to(
    gone: &AtomicBool,
    mut stream: impl Write,
    args: std::fmt::Arguments<'_>,
    newline: bool,
) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    let written = stream
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                stream.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stream.flush());
    // Any error, not only a broken pipe: there is no one left to tell.
    if written.is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// Writes to standard output; see the module's documentation.
pub(crate) fn stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    write_to(&STDOUT_GONE, std::io::stdout().lock(), args, newline);
}

/// Writes to standard error; see the module's documentation.
pub(crate) fn stderr(args: std::fmt::Arguments<'_>, newline: bool) {
    write_to(&STDERR_GONE, std::io::stderr().lock(), args, newline);
}

/// `println!` that does not panic when standard output is closed.
macro_rules! outln {
    () => { $crate::output::stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*), true) };
}

/// `print!` that does not panic when standard output is closed.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*), false) };
}

/// `eprintln!` that does not panic when standard error is closed.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), true) };
}

/// `eprint!` that does not panic when standard error is closed.
macro_rules! err {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), false) };
}
