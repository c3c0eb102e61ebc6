//! A query the pooler runs for itself with parameters and reads the rows
//! of: `auth_query`.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;

use super::super::error::server_error;
use super::{ServerConn, ServerError};
use crate::proto::ProtocolError;

/// Rows of text columns, `None` for NULL.
pub type Rows = Vec<Vec<Option<String>>>;

impl ServerConn {
    /// Runs `sql` with `params` as text parameters (`$1`, ...) through the
    /// extended protocol (unnamed statement and portal) and returns every
    /// row as text. An error from the server fails it but leaves the
    /// connection usable once ReadyForQuery arrives; a connection left in
    /// a transaction is marked broken.
    pub async fn query_rows(&mut self, sql: &str, params: &[&str]) -> Result<Rows, ServerError> {
        let mut out = BytesMut::new();
        let encoded = frontend::parse("", sql, std::iter::empty(), &mut out)
            .and_then(|()| {
                frontend::bind(
                    "",
                    "",
                    Some(0),
                    params.iter(),
                    |value, buf| {
                        buf.put_slice(value.as_bytes());
                        Ok(IsNull::No)
                    },
                    Some(0),
                    &mut out,
                )
                .map_err(|_| std::io::Error::other("cannot encode a parameter"))
            })
            .and_then(|()| frontend::execute("", 0, &mut out));
        if let Err(source) = encoded {
            return Err(ServerError::Io {
                addr: self.addr(),
                source,
            });
        }
        frontend::sync(&mut out);
        self.write_control(&out).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            let (tag, body) = self.read_control().await?;
            match tag {
                b'D' => match data_row(&body) {
                    Some(row) => rows.push(row),
                    None => return Err(self.protocol_error(ProtocolError::Malformed("DataRow"))),
                },
                b'S' => self.params.note(&body),
                b'E' => failure = Some(server_error(&self.addr(), &body)),
                b'Z' => {
                    if body.first() != Some(&b'I') {
                        self.broken = true;
                    }
                    return failure.map_or(Ok(rows), Err);
                }
                b'G' | b'H' | b'W' => {
                    return Err(
                        self.protocol_error(ProtocolError::Malformed("COPY in a pooler query"))
                    );
                }
                _ => {}
            }
        }
    }
}

/// A DataRow's columns as text.
fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut row = Vec::with_capacity(count.into());
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        let value = rest.get(..len)?;
        row.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &rest[len..];
    }
    rest.is_empty().then_some(row)
}

#[cfg(test)]
mod tests {
    use super::data_row;

    #[test]
    fn data_rows_read_text_and_nulls() {
        let mut body = vec![0, 2, 0, 0, 0, 5];
        body.extend_from_slice(b"alice");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(data_row(&body), Some(vec![Some("alice".to_owned()), None]));
        assert_eq!(data_row(&[0, 1, 0, 0, 0, 9, b'x']), None, "short value");
        assert_eq!(data_row(&[0, 0, 1]), None, "trailing bytes");
        assert_eq!(data_row(&[0]), None);
    }
}
