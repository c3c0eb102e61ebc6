//! Client read buffers, held by a session only while its client has bytes
//! in flight. An idle client holds none: thousands of idle clients would
//! otherwise hold a chunk each. Each thread keeps the buffers given back
//! to it, so a busy client's next transaction takes one from there, not
//! from the allocator.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::relay::{make_room, poll_read, READ_CHUNK};

/// Spare buffers a thread keeps at most: 1 MiB of them at `READ_CHUNK`,
/// 2 MiB at the largest kept.
const SPARES_KEPT: usize = 64;

/// Where an idle client's first bytes land before a buffer is lent: a
/// query, or an extended-protocol batch, fits; more is read on with the
/// buffer.
const LANDING: usize = 4096;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `READ_CHUNK` bytes' room, from this thread's spares when it
/// has one.
pub(super) fn lend() -> BytesMut {
    SPARES
        .with(|spares| spares.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// Takes `buf` from its holder, empty, to this thread's spares; one grown
/// past twice `READ_CHUNK` by a large message is freed instead.
pub(super) fn give_back(buf: &mut BytesMut) {
    debug_assert!(buf.is_empty());
    let mut buf = std::mem::take(buf);
    // A consumed buffer's capacity is only the room past its start: move
    // the start back to the front of the allocation (no copy, as the
    // buffer is empty), so that the size checked is the allocation's.
    let _ = buf.try_reclaim(buf.capacity() + 1);
    buf.reserve(READ_CHUNK);
    if buf.capacity() > 2 * READ_CHUNK {
        return;
    }
    SPARES.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARES_KEPT {
            spares.push(buf);
        }
    });
}

/// [`poll_read_client`] as a future, for the tests.
#[cfg(test)]
async fn read_client<R: AsyncRead + Unpin>(
    reader: &mut R,
    cbuf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_client(reader, cbuf, cx)).await
}

/// Reads the client's next bytes into `cbuf`. An empty `cbuf` is given
/// back first and the read lands on the stack, so a client that sends
/// nothing holds no buffer while it waits; a buffer is lent when bytes
/// come. A `cbuf` holding part of a message is read on into.
pub(super) fn poll_read_client<R: AsyncRead + Unpin>(
    reader: &mut R,
    cbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !cbuf.is_empty() {
        make_room(cbuf);
        return poll_read(reader, cx, cbuf);
    }
    if cbuf.capacity() > 0 {
        give_back(cbuf);
    }
    let mut landing = [MaybeUninit::<u8>::uninit(); LANDING];
    let mut landed = ReadBuf::uninit(&mut landing);
    ready!(Pin::new(&mut *reader).poll_read(cx, &mut landed))?;
    let n = landed.filled().len();
    if n > 0 {
        *cbuf = lend();
        cbuf.extend_from_slice(landed.filled());
    }
    Poll::Ready(Ok(n))
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;
    use bytes::Buf;

    /// Polls once: `Some` with the output if it was ready.
    async fn poll_once<F: std::future::Future>(mut fut: Pin<&mut F>) -> Option<F::Output> {
        poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    #[tokio::test]
    async fn an_idle_read_holds_no_buffer_until_bytes_come() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut reader, _writer) = tokio::io::split(server);
        let mut cbuf = BytesMut::with_capacity(READ_CHUNK);
        {
            let read = std::pin::pin!(read_client(&mut reader, &mut cbuf));
            assert!(poll_once(read).await.is_none());
        }
        assert_eq!(cbuf.capacity(), 0, "an idle client kept its buffer");
        tokio::io::AsyncWriteExt::write_all(&mut client, b"Q\0\0\0\x05x")
            .await
            .unwrap();
        let n = read_client(&mut reader, &mut cbuf).await.unwrap();
        assert_eq!(&cbuf[..n], b"Q\0\0\0\x05x");
        assert!(cbuf.capacity() >= READ_CHUNK, "no room lent for the rest");
    }

    #[tokio::test]
    async fn a_partial_message_is_read_on_into_its_buffer() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut reader, _writer) = tokio::io::split(server);
        let mut cbuf = BytesMut::from(&b"Q\0\0"[..]);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"\0\x05x")
            .await
            .unwrap();
        read_client(&mut reader, &mut cbuf).await.unwrap();
        assert_eq!(&cbuf[..], b"Q\0\0\0\x05x");
    }

    #[test]
    fn a_buffer_given_back_is_lent_again_and_a_grown_one_is_freed() {
        let mut buf = lend();
        let at = buf.as_ptr();
        give_back(&mut buf);
        assert_eq!(buf.capacity(), 0);
        assert_eq!(lend().as_ptr(), at, "the spare was not reused");
        let spares = || SPARES.with(|spares| spares.borrow().len());
        let before = spares();
        let mut grown = BytesMut::with_capacity(8 * READ_CHUNK);
        give_back(&mut grown);
        assert_eq!(spares(), before, "a grown buffer was kept");
        // Grown for a large message, then consumed: little room is left
        // past its start, but the allocation is as large.
        let mut consumed = BytesMut::with_capacity(8 * READ_CHUNK);
        consumed.resize(8 * READ_CHUNK - READ_CHUNK, 0);
        consumed.advance(8 * READ_CHUNK - READ_CHUNK);
        assert!(consumed.capacity() <= 2 * READ_CHUNK);
        give_back(&mut consumed);
        assert_eq!(spares(), before, "a consumed grown buffer was kept");
    }
}
