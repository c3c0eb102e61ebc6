//! The tracker fed random client requests, well formed or not, and random
//! server replies: whatever comes, it must not panic, and what it sends
//! on must stay framed.

use bytes::BytesMut;

use super::{reply_wanted, Tracker, BIND_HEAD, QUERY_READ};
use crate::prepared::{Registry, ServerStatements};
use crate::stats::PoolStats;

const NAMES: [&str; 5] = ["", "a", "b", "wharf_1", "wharf_2"];
const TEXTS: [&str; 8] = [
    "SELECT 1",
    "PREPARE a AS SELECT 1",
    "EXECUTE a",
    "DEALLOCATE a",
    "DEALLOCATE ALL",
    "SELECT 1; EXECUTE wharf_1",
    "COPY t FROM STDIN",
    "EXECUTE U&\"\\0077harf_1\"",
];

fn pick<T: Copy>(from: &[T]) -> T {
    from[fastrand::usize(..from.len())]
}

fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&u32::try_from(4 + body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn random_bytes() -> Vec<u8> {
    (0..fastrand::usize(0..24))
        .map(|_| fastrand::u8(..))
        .collect()
}

/// A client message: most well formed, some with random bodies.
fn client_message() -> Vec<u8> {
    let tag = pick(b"PBDCESQHd");
    if fastrand::u8(..10) == 0 {
        return framed(tag, &random_bytes());
    }
    let name = pick(&NAMES);
    let body = match tag {
        b'P' => format!("{name}\0{}\0\0\0", pick(&TEXTS)).into_bytes(),
        b'B' => format!("\0{name}\0\0\0\0\0\0\0").into_bytes(),
        b'D' | b'C' => format!("{}{name}\0", pick(&["S", "P"])).into_bytes(),
        b'E' => b"\0\0\0\0\0".to_vec(),
        b'Q' => format!("{}\0", pick(&TEXTS)).into_bytes(),
        b'd' => random_bytes(),
        _ => Vec::new(),
    };
    framed(tag, &body)
}

/// A simple query or Bind longer than what is held of it.
fn long_message() -> Vec<u8> {
    let pad = "x".repeat(QUERY_READ.max(BIND_HEAD) + fastrand::usize(1..4096));
    match fastrand::u8(..3) {
        0 => framed(b'Q', format!("{} -- {pad}\0", pick(&TEXTS)).as_bytes()),
        1 => framed(
            b'Q',
            format!("SELECT '{pad}'; {}\0", pick(&TEXTS)).as_bytes(),
        ),
        _ => framed(
            b'B',
            format!("\0{}\0\0\0\0\0\0\0{pad}", pick(&NAMES)).as_bytes(),
        ),
    }
}

/// A server reply: the tags that end requests, with bodies the tracker
/// reads, some of them random.
fn server_reply() -> Vec<u8> {
    let tag = pick(b"123CEZTnsIGDS");
    let body = match tag {
        _ if fastrand::u8(..10) == 0 => random_bytes(),
        b'C' => pick(&[&b"SELECT 1\0"[..], b"DEALLOCATE ALL\0", b"PREPARE\0"]).to_vec(),
        b'E' => pick(&[
            &b"SERROR\0VERROR\0C26000\0Mno\0\0"[..],
            b"SERROR\0VERROR\0C0A000\0Mcached plan must not change result type\0RRevalidateCachedQuery\0\0",
            b"SERROR\0VERROR\0C08P01\0Minvalid string in message\0\0",
        ])
        .to_vec(),
        b'Z' => vec![pick(b"ITE")],
        b'G' => vec![0, 0, 0],
        _ => Vec::new(),
    };
    framed(tag, &body)
}

#[test]
fn random_requests_and_replies_never_panic_and_go_on_framed() {
    let registry = Registry::default();
    let stats = PoolStats::default();
    for _ in 0..3_000 {
        let mut tracker = Tracker::new(fastrand::usize(1..4));
        let mut server = ServerStatements::default();
        for _ in 0..fastrand::usize(1..6) {
            let mut from = Vec::new();
            for _ in 0..fastrand::usize(1..8) {
                let message = client_message();
                tracker.scanned(message[0], message.len());
                from.extend(message);
            }
            // Now and then a long query or Bind, which streams: it goes on
            // in pieces, as it is read.
            let mut cuts = vec![from.len()];
            if fastrand::u8(..4) == 0 {
                let long = long_message();
                tracker.scanned(long[0], long.len());
                let start = from.len();
                from.extend(&long);
                cuts = (0..fastrand::usize(1..6))
                    .map(|_| start + fastrand::usize(BIND_HEAD..long.len()))
                    .collect();
                cuts.sort_unstable();
                cuts.push(from.len());
            }
            let mut at = 0;
            for cut in cuts {
                tracker.outgoing(&from[at..cut], &mut server, &registry, &stats);
                at = cut;
            }
            let sent = std::mem::take(tracker.out());
            assert_framed(&sent);

            let mut buf = BytesMut::new();
            for _ in 0..fastrand::usize(0..10) {
                let reply = server_reply();
                let at = buf.len();
                let body = reply_wanted(reply[0]).then(|| &reply[5..]);
                tracker.reply(reply[0], at, body, &mut server);
                buf.extend_from_slice(&reply);
            }
            if tracker.due() {
                tracker.make_due(buf.len());
            }
            tracker.apply_edits(&mut buf);
            assert_framed(&buf);
        }
    }
}

/// `bytes` are whole messages, one after another.
fn assert_framed(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        assert!(bytes.len() >= 5, "a cut head: {bytes:?}");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert!(len >= 4 && bytes.len() > len, "a cut message: {bytes:?}");
        bytes = &bytes[1 + len..];
    }
}
