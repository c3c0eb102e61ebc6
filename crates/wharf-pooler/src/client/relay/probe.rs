//! The probe after a failed COPY: when the pooler cannot tell whether
//! the server answered the Syncs sent during it, it asks.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why [`probe`] failed.
pub(super) enum Probe {
    /// The client could not be written to.
    Client,
    /// The server failed.
    Server(std::io::Error),
}

/// Sends the server an empty query and relays to the client everything
/// the server sends before answering it (ReadyForQuery for Syncs the
/// pooler could not tell the server had ignored, and any responses behind
/// them), swallowing the answer itself. Called only when everything
/// scanned has been relayed, so `rbuf` starts at a message. Returns the
/// server's transaction status.
pub(super) async fn probe<R, S, W>(
    sr: &mut R,
    sw: &mut S,
    rbuf: &mut BytesMut,
    client: &mut W,
    on_param: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<u8, Probe>
where
    R: AsyncRead + Unpin,
    S: AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    const EMPTY_QUERY: [u8; 6] = [b'Q', 0, 0, 0, 5, 0];
    sw.write_all(&EMPTY_QUERY).await.map_err(Probe::Server)?;
    let mut answered = false;
    // Bytes of the message being relayed that are still to go.
    let mut relaying = 0usize;
    loop {
        if relaying > 0 && !rbuf.is_empty() {
            let n = relaying.min(rbuf.len());
            client
                .write_all(&rbuf[..n])
                .await
                .map_err(|_| Probe::Client)?;
            rbuf.advance(n);
            relaying -= n;
            continue;
        }
        if relaying == 0 && rbuf.len() >= 5 {
            let tag = rbuf[0];
            let len = i32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]);
            let Ok(len) = usize::try_from(len) else {
                return Err(Probe::Server(std::io::ErrorKind::InvalidData.into()));
            };
            if len < 4 {
                return Err(Probe::Server(std::io::ErrorKind::InvalidData.into()));
            }
            let whole = rbuf.len() > len;
            match tag {
                b'I' if len == 4 => {
                    rbuf.advance(5);
                    answered = true;
                    continue;
                }
                // Read whole before deciding.
                b'Z' | b'S' if !whole => {}
                b'Z' if answered => {
                    let status = rbuf.get(5).copied().unwrap_or(b'I');
                    rbuf.advance(1 + len);
                    return Ok(status);
                }
                _ => {
                    if tag == b'S' {
                        on_param(&rbuf[5..1 + len]);
                    }
                    relaying = 1 + len;
                    continue;
                }
            }
        }
        match sr.read_buf(rbuf).await {
            Ok(0) => return Err(Probe::Server(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(err) => return Err(Probe::Server(err)),
        }
    }
}
