//! Feeds arbitrary bytes to the two parsers that see untrusted client bytes
//! first: the startup-packet reader and the relay's message scanner.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ops::ControlFlow;

use wharf_pooler::proto::{read_startup, Scanner, Startup, StartupParams};

/// What the relay allows by default (`max_packet_size`), and a small limit.
const LIMITS: [usize; 2] = [2_147_483_647, 8192];

fuzz_target!(|data: &[u8]| {
    // With timers: a bad header is quoted within a grace period.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");

    // The startup phase: packets one after another, as `login` reads them
    // (SSL and GSS requests are followed by another packet).
    runtime.block_on(async {
        let mut reader = data;
        for _ in 0..4 {
            let before = reader.len();
            match read_startup(&mut reader).await {
                Ok(Startup::SslRequest | Startup::GssEncRequest) => {}
                Ok(Startup::Startup { params, .. }) => {
                    for (name, value) in &params {
                        assert!(!name.is_empty() && !name.contains('\0'));
                        assert!(!value.contains('\0'));
                    }
                    // Read in place, the pairs give back the text they came in.
                    assert_eq!(StartupParams::from_pairs(&params), params);
                    break;
                }
                Ok(Startup::Cancel(_)) | Err(_) => break,
            }
            assert!(
                reader.len() < before,
                "a packet was read without consuming bytes"
            );
        }
    });

    // The relay: the same bytes as a message stream, scanned whole and in
    // pieces, with what is ready forwarded (dropped) after each piece as
    // the relay does. Both ways must see the same messages and refuse the
    // same header, and, when nothing is refused, forward the same bytes
    // (after a refusal the relay drops the rest, so how much went before
    // depends on how the bytes came in).
    for max_len in LIMITS {
        let whole = scan_in_pieces(data, data.len().max(1), max_len);
        let split = data.first().map_or(1, |&b| usize::from(b % 7) + 1);
        let pieces = scan_in_pieces(data, split, max_len);
        assert_eq!(whole.seen, pieces.seen);
        assert_eq!(whole.refused, pieces.refused);
        if !whole.refused {
            assert_eq!(whole.forwarded, pieces.forwarded);
            assert_eq!(whole.forwarded, data.len() - whole.unscanned);
        }
    }
});

#[derive(Debug)]
struct Scanned {
    /// (tag, whole body for wanted messages).
    seen: Vec<(u8, Option<Vec<u8>>)>,
    /// Bytes passed on.
    forwarded: usize,
    /// Whether the scanner refused a header.
    refused: bool,
    /// Bytes left in the buffer at the end (an incomplete header, or an
    /// incomplete wanted message).
    unscanned: usize,
}

/// Scans `data` fed `chunk` bytes at a time; messages with tags `Z`, `S`
/// and `X` are "wanted" (seen whole), as in the relay, and a `B` is held
/// only for its first 16 bytes, as a long Bind is.
fn scan_in_pieces(data: &[u8], chunk: usize, max_len: usize) -> Scanned {
    let mut scanner = Scanner::default();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let mut forwarded = 0;
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        let result = scanner.scan_at(
            &buf,
            max_len,
            |tag, total| match tag {
                b'Z' | b'S' | b'X' => total,
                b'B' => 16,
                _ => 0,
            },
            |tag, _, body| {
                seen.push((tag, body.map(<[u8]>::to_vec)));
                ControlFlow::Continue(())
            },
        );
        let Ok(ready) = result else {
            return Scanned {
                seen,
                forwarded,
                refused: true,
                unscanned: buf.len(),
            };
        };
        assert!(ready <= buf.len(), "more ready than buffered");
        assert_eq!(ready, scanner.ready());
        buf.drain(..ready);
        scanner.consumed(ready);
        forwarded += ready;
    }
    Scanned {
        seen,
        forwarded,
        refused: false,
        unscanned: buf.len(),
    }
}
