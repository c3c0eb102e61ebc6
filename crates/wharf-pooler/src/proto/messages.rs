//! The messages the pooler writes to clients itself: its own welcome,
//! errors and notices, and the admin console's result sets.

use bytes::{BufMut, BytesMut};

use super::CancelKey;

fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(3));
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl(buf: &mut BytesMut) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        put_cstr(b, "SCRAM-SHA-256");
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, key: CancelKey) {
    message(buf, b'K', |b| {
        b.put_i32(key.pid);
        b.put_i32(key.secret);
    });
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, b'Z', |b| b.put_u8(status));
}

/// ErrorResponse (severity ERROR or FATAL) with a SQLSTATE and message.
pub fn error(buf: &mut BytesMut, severity: &str, code: &str, text: &str) {
    message(buf, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity);
        b.put_u8(b'V');
        put_cstr(b, severity);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, text);
        b.put_u8(0);
    });
}

/// NoticeResponse with a message.
pub fn notice(buf: &mut BytesMut, text: &str) {
    message(buf, b'N', |b| {
        b.put_u8(b'S');
        put_cstr(b, "NOTICE");
        b.put_u8(b'V');
        put_cstr(b, "NOTICE");
        b.put_u8(b'C');
        put_cstr(b, "00000");
        b.put_u8(b'M');
        put_cstr(b, text);
        b.put_u8(0);
    });
}

/// RowDescription for text columns (used by the admin console).
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, Oid)]) {
    message(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            put_cstr(b, name);
            b.put_i32(0);
            b.put_i16(0);
            b.put_u32(*oid as u32);
            b.put_i16(oid.size());
            b.put_i32(-1);
            b.put_i16(0);
        }
    });
}

/// DataRow of text values; `None` is SQL NULL.
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    message(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for value in values {
            match value {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// CommandComplete with its tag (`SHOW`, `SELECT 3`, …).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, b'C', |b| put_cstr(b, tag));
}

/// EmptyQueryResponse.
pub fn empty_query(buf: &mut BytesMut) {
    message(buf, b'I', |_| {});
}

/// The column types the pooler reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Oid {
    /// `text`
    Text = 25,
    /// `int8`
    Int8 = 20,
    /// `int4`
    Int4 = 23,
    /// `numeric`
    Numeric = 1700,
    /// `bool`
    Bool = 16,
}

impl Oid {
    fn size(self) -> i16 {
        match self {
            Oid::Int8 => 8,
            Oid::Int4 => 4,
            Oid::Bool => 1,
            Oid::Text | Oid::Numeric => -1,
        }
    }
}
