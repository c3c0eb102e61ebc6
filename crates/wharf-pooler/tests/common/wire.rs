//! Raw wire-protocol clients for tests that need to see exactly what the
//! pooler sends, or that misbehave on purpose, and psql runs with their own
//! password and environment.

use std::io;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw client waits for any one answer before the test fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Protocol 3.0.
pub const PROTOCOL_3: i32 = 196_608;

/// A startup packet (protocol 3.0) with these parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A typed message with a correct length.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// The fields of an ErrorResponse (or NoticeResponse) that tests check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `S`: ERROR, FATAL, ...
    pub severity: String,
    /// `C`: the SQLSTATE.
    pub code: String,
    /// `M`: the message.
    pub message: String,
}

/// Parses an ErrorResponse body.
pub fn parse_error(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = after
            .iter()
            .position(|&b| b == 0)
            .expect("error field is NUL-terminated");
        let value = String::from_utf8_lossy(&after[..end]).into_owned();
        match field {
            b'S' => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        rest = &after[end + 1..];
    }
    fields
}

/// Reads one typed message; `None` when the pooler closed the connection
/// (cleanly or with a reset) before a whole message arrived.
pub async fn read_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        assert!(
            (4..=64 << 20).contains(&len),
            "the pooler sent a message with length {len}"
        );
        let mut body = vec![0; len as usize - 4];
        stream.read_exact(&mut body).await?;
        Ok::<_, io::Error>((header[0], body))
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, read).await {
        Ok(Ok(msg)) => Some(msg),
        Ok(Err(_)) => None,
        Err(_) => panic!("no answer from the pooler within {ANSWER_TIMEOUT:?}"),
    }
}

/// Waits until the pooler closes the connection, returning the bytes it sent
/// before that (a reset counts as a close).
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, read)
        .await
        .expect("the pooler closes the connection");
    all
}

/// Reads messages until an ErrorResponse, then expects the connection to be
/// closed. Returns the error.
pub async fn expect_fatal(stream: &mut TcpStream) -> ErrorFields {
    loop {
        match read_message(stream).await {
            Some((b'E', body)) => {
                let error = parse_error(&body);
                let rest = read_to_close(stream).await;
                assert!(
                    rest.is_empty() || rest[0] == b'E',
                    "after {error:?} only another error may come, got {rest:?}"
                );
                return error;
            }
            Some((b'N' | b'S', _)) => {}
            Some((tag, body)) => panic!(
                "expected an ErrorResponse, got {:?} {body:?}",
                char::from(tag)
            ),
            None => panic!("the pooler closed the connection without an ErrorResponse"),
        }
    }
}

/// Opens a raw TCP connection to the pooler.
pub async fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("raw connection to the pooler");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Sends a startup packet and returns the first message: normally the
/// authentication request.
pub async fn first_answer(port: u16, params: &[(&str, &str)]) -> (u8, Vec<u8>) {
    let mut stream = connect(port).await;
    stream
        .write_all(&startup_packet(params))
        .await
        .expect("startup packet sent");
    read_message(&mut stream)
        .await
        .expect("an answer to the startup packet")
}

/// The authentication request code the pooler answers a startup with
/// (0 ok, 3 cleartext, 5 md5, 10 SASL).
pub async fn auth_request(port: u16, user: &str, database: &str) -> i32 {
    let (tag, body) = first_answer(port, &[("user", user), ("database", database)]).await;
    assert_eq!(
        tag,
        b'R',
        "expected an authentication request, got {:?} {body:?}",
        char::from(tag)
    );
    i32::from_be_bytes([body[0], body[1], body[2], body[3]])
}

/// Logs in without a password (the pooler must run with `auth_type =
/// trust`) and reads the welcome up to ReadyForQuery.
pub async fn login_trusted(port: u16, user: &str, database: &str) -> TcpStream {
    let mut stream = connect(port).await;
    stream
        .write_all(&startup_packet(&[("user", user), ("database", database)]))
        .await
        .expect("startup packet sent");
    let (tag, body) = read_message(&mut stream).await.expect("AuthenticationOk");
    assert_eq!((tag, body.as_slice()), (b'R', &[0, 0, 0, 0][..]));
    loop {
        match read_message(&mut stream).await {
            Some((b'Z', body)) => {
                assert_eq!(body, b"I");
                return stream;
            }
            Some((b'S' | b'K', _)) => {}
            other => panic!("unexpected message in the welcome: {other:?}"),
        }
    }
}

/// Runs a query on a raw connection and returns the text of the first
/// column of each row, failing on an error.
pub async fn raw_query(stream: &mut TcpStream, sql: &str) -> Vec<String> {
    stream.write_all(&query(sql)).await.expect("query sent");
    let mut rows = Vec::new();
    loop {
        match read_message(stream).await {
            Some((b'D', body)) => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                rows.push(String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned());
            }
            Some((b'Z', _)) => return rows,
            Some((b'E', body)) => panic!("query {sql:?} failed: {:?}", parse_error(&body)),
            Some(_) => {}
            None => panic!("connection closed during {sql:?}"),
        }
    }
}

/// Runs psql with `conninfo`, `password` as PGPASSWORD and `env` on top of
/// an environment cleared of other PG* variables; `-X -A -t -c sql`.
pub fn psql(bin: &Path, conninfo: &str, password: &str, env: &[(&str, &str)], sql: &str) -> Output {
    let mut cmd = psql_command(bin, conninfo, password, &["-t"], sql);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().expect("psql runs")
}

/// psql with `conninfo`, `password` as PGPASSWORD and an environment
/// cleared of other PG* variables (the caller's are not meant for the
/// pooler under test), running `sql` unaligned with the `output` options.
pub fn psql_command(
    bin: &Path,
    conninfo: &str,
    password: &str,
    output: &[&str],
    sql: &str,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["-X", "-A"])
        .args(output)
        .args(["-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql])
        .stdin(std::process::Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// psql's standard output, trimmed, asserting it succeeded.
pub fn psql_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// psql's standard error, asserting it failed.
pub fn psql_err(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "psql should have failed, printed {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The SQLSTATE and message of a failed login.
pub fn refused(result: Result<tokio_postgres::Client, tokio_postgres::Error>) -> (String, String) {
    let err = match result {
        Ok(_) => panic!("login should have been refused"),
        Err(err) => err,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// `current_user` as the client's query through the pooler sees it.
pub async fn current_user(client: &tokio_postgres::Client) -> String {
    let messages = client
        .simple_query("SELECT current_user")
        .await
        .expect("query through the pooler");
    match &messages[1] {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).expect("a user").to_owned(),
        other => panic!("expected a row, got {other:?}"),
    }
}

/// The SQLSTATE and message of a wrong password (or an unknown user).
pub fn auth_failed(user: &str) -> (String, String) {
    (
        "28P01".to_owned(),
        format!("password authentication failed for user \"{user}\""),
    )
}

/// The SQLSTATE and message of a `trust` login of a user the pooler does
/// not know (PgBouncer's words).
pub fn trust_failed() -> (String, String) {
    (
        "08P01".to_owned(),
        "\"trust\" authentication failed".to_owned(),
    )
}

/// What the pooler answered: the tags in order, the first column of each
/// row, each error's SQLSTATE and message, and the command tags.
#[derive(Debug, Default)]
pub struct Replies {
    pub tags: String,
    pub rows: Vec<String>,
    pub errors: Vec<(String, String)>,
    /// The CommandComplete tags.
    pub completions: Vec<String>,
}

/// Sends `bytes` and reads replies up to the `readies`-th ReadyForQuery.
pub async fn exchange(stream: &mut TcpStream, bytes: &[u8], readies: usize) -> Replies {
    stream.write_all(bytes).await.expect("sent");
    read_replies(stream, readies, usize::MAX).await
}

/// Reads replies up to the `readies`-th ReadyForQuery, or with 0 readies,
/// `most` messages.
pub async fn read_replies(stream: &mut TcpStream, readies: usize, most: usize) -> Replies {
    let mut replies = Replies::default();
    let mut seen = 0;
    while seen < readies || (readies == 0 && replies.tags.len() < most) {
        let (tag, body) = read_message(stream)
            .await
            .unwrap_or_else(|| panic!("closed after {replies:?}"));
        replies.tags.push(tag as char);
        match tag {
            b'Z' => seen += 1,
            b'D' => {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                replies
                    .rows
                    .push(String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned());
            }
            b'C' => replies.completions.push(
                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned(),
            ),
            b'E' => {
                let e = parse_error(&body);
                replies.errors.push((e.code, e.message));
            }
            _ => {}
        }
    }
    replies
}
