//! Finds message boundaries in a relayed byte stream: the relay's one view
//! of the bytes it forwards.

use std::ops::ControlFlow;

use super::ProtocolError;

/// Finds message boundaries in a relayed byte stream.
///
/// Only the 5-byte headers are read. Messages the caller wants to look at
/// (chosen by `wants`) are only passed on once they are complete in the
/// buffer; every other message may be forwarded in pieces as it arrives, so
/// a 1 GB row streams through a small buffer.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of the current message body not yet seen.
    skip: usize,
    /// Bytes already scanned at the front of the buffer (forwardable).
    ready: usize,
}

impl Scanner {
    /// Scans `buf` past what was scanned before. For every message header
    /// found it calls `on_message(tag, body)`, where `body` is the whole body
    /// for wanted messages and `None` for the rest (seen at their header).
    /// Returns how many bytes from the front of `buf` are safe to forward:
    /// whole messages, or the parts of unwanted ones seen so far. Call
    /// [`consumed`](Self::consumed) after forwarding some.
    pub fn scan(
        &mut self,
        buf: &[u8],
        max_len: usize,
        wants: impl Fn(u8) -> bool,
        mut on_message: impl FnMut(u8, Option<&[u8]>),
    ) -> Result<usize, ProtocolError> {
        self.scan_until(buf, max_len, wants, |tag, body| {
            on_message(tag, body);
            ControlFlow::Continue(())
        })
    }

    /// Like [`scan`](Self::scan), but `on_message` may stop the scan:
    /// `Break` leaves that message and everything after it unscanned (not
    /// forwardable), e.g. at a Terminate the pooler keeps for itself.
    pub fn scan_until(
        &mut self,
        buf: &[u8],
        max_len: usize,
        wants: impl Fn(u8) -> bool,
        mut on_message: impl FnMut(u8, Option<&[u8]>) -> ControlFlow<()>,
    ) -> Result<usize, ProtocolError> {
        self.scan_at(
            buf,
            max_len,
            |tag, total| if wants(tag) { total } else { 0 },
            |tag, _, body| on_message(tag, body),
        )
    }

    /// Like [`scan_until`](Self::scan_until), also telling `on_message`
    /// where in `buf` each message starts, for a caller that edits the
    /// scanned part (then [`resized`](Self::resized)). `wants` gets the
    /// tag and the message's whole length (tag included) and says how much
    /// of it must be in the buffer before it is passed on: all of it (its
    /// length or more), none (0), or a head of that many bytes, given to
    /// `on_message` as a part of the body, the rest streaming after it.
    pub fn scan_at(
        &mut self,
        buf: &[u8],
        max_len: usize,
        wants: impl Fn(u8, usize) -> usize,
        mut on_message: impl FnMut(u8, usize, Option<&[u8]>) -> ControlFlow<()>,
    ) -> Result<usize, ProtocolError> {
        let mut pos = self.ready;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - pos);
                pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            if buf.len() - pos < 5 {
                break;
            }
            let tag = buf[pos];
            let len = i32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
            if len < 4 || len as usize - 4 > max_len {
                return Err(ProtocolError::BadLength {
                    what: "message",
                    len: len.into(),
                });
            }
            let total = 1 + len as usize;
            let held = wants(tag, total).min(total);
            if held > 0 {
                let held = held.max(5);
                if buf.len() - pos < held {
                    break;
                }
                if on_message(tag, pos, Some(&buf[pos + 5..pos + held])).is_break() {
                    break;
                }
                pos += held;
                self.skip = total - held;
            } else {
                if on_message(tag, pos, None).is_break() {
                    break;
                }
                pos += 5;
                self.skip = total - 5;
            }
        }
        self.ready = pos;
        Ok(pos)
    }

    /// The scanned part of the buffer grew or shrank by `delta` bytes:
    /// whole scanned messages were edited in place.
    pub fn resized(&mut self, delta: isize) {
        self.ready = self.ready.saturating_add_signed(delta);
    }

    /// Bytes scanned and not yet consumed.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Tells the scanner that `n` bytes were removed from the front of the
    /// buffer.
    pub fn consumed(&mut self, n: usize) {
        self.ready -= n;
    }

    /// Whether the scanner is between messages (nothing half-forwarded).
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn scanner_streams_big_messages_and_inspects_wanted_ones_whole() {
        let mut stream = msg(b'D', &[7u8; 1000]);
        stream.extend(msg(b'Z', b"I"));
        let mut scanner = Scanner::default();
        let mut seen = Vec::new();
        // Feed it in 100-byte pieces, forwarding what it allows each time.
        let mut buf = Vec::new();
        let mut forwarded = 0;
        for chunk in stream.chunks(100) {
            buf.extend_from_slice(chunk);
            let n = scanner
                .scan(
                    &buf,
                    1 << 20,
                    |t| t == b'Z',
                    |tag, body| seen.push((tag, body.map(<[u8]>::to_vec))),
                )
                .unwrap();
            forwarded += n;
            buf.drain(..n);
            scanner.consumed(n);
        }
        assert_eq!(forwarded, stream.len());
        assert_eq!(seen, vec![(b'D', None), (b'Z', Some(b"I".to_vec()))]);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn scanner_stops_where_told_and_leaves_the_rest_unscanned() {
        let mut stream = msg(b'Q', b"select 1\0");
        let query_len = stream.len();
        stream.extend(msg(b'X', b""));
        stream.extend(b"trailing garbage");
        let mut scanner = Scanner::default();
        let ready = scanner
            .scan_until(
                &stream,
                1 << 20,
                |t| t == b'X',
                |tag, _| {
                    if tag == b'X' {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )
            .unwrap();
        assert_eq!(ready, query_len);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn scanner_holds_only_the_head_asked_for_and_streams_the_rest() {
        let mut stream = msg(b'B', &[1u8; 300]);
        stream.extend(msg(b'S', b""));
        let mut scanner = Scanner::default();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        let mut forwarded = Vec::new();
        for chunk in stream.chunks(7) {
            buf.extend_from_slice(chunk);
            let n = scanner
                .scan_at(
                    &buf,
                    1 << 20,
                    |tag, total| if tag == b'B' { 50 } else { total },
                    |tag, at, body| {
                        seen.push((tag, at, body.map(<[u8]>::len)));
                        ControlFlow::Continue(())
                    },
                )
                .unwrap();
            if forwarded.is_empty() && buf.len() < 50 {
                // Nothing goes before the whole head is in.
                assert_eq!(n, 0);
            }
            forwarded.extend(buf.drain(..n));
            scanner.consumed(n);
        }
        assert_eq!(forwarded, stream);
        assert_eq!(seen, vec![(b'B', 0, Some(45)), (b'S', 0, Some(0))]);
    }

    #[test]
    fn scanner_refuses_impossible_lengths() {
        let mut scanner = Scanner::default();
        let bad = [b'Q', 0, 0, 0, 2];
        assert!(scanner.scan(&bad, 1 << 20, |_| true, |_, _| {}).is_err());
        let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(Scanner::default()
            .scan(&huge, 1 << 20, |_| true, |_, _| {})
            .is_err());
    }
}
