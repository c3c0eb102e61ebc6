//! Cancel keys that carry a peer id, laid out as PgBouncer 1.21+ lays them
//! out, so that wharf and PgBouncer processes can be peered together.
//!
//! The 8 bytes of BackendKeyData (the 4-byte process id, then the 4-byte
//! secret, both big-endian on the wire) are random except for:
//!
//! - byte 0's top bit, always 0: the process id part is positive, as a
//!   real PID is (some clients, `pg_basebackup` among them, expect it);
//! - bytes 1 and 2, when peering is on: the `peer_id` of the process that
//!   made the key, low byte first;
//! - the two low bits of byte 7, when peering is on: how many more times
//!   the request may be forwarded between peers (its TTL), 3 in a fresh
//!   key. Each forward takes one; a request whose TTL is spent is dropped
//!   rather than forwarded, so a misconfigured group cannot pass a cancel
//!   request around for ever.

use crate::proto::CancelKey;

/// The TTL bits of byte 7.
const TTL_MASK: u8 = 0b11;

/// The key's 8 bytes as they go over the wire.
fn to_bytes(key: CancelKey) -> [u8; 8] {
    let mut bytes = [0; 8];
    bytes[..4].copy_from_slice(&key.pid.to_be_bytes());
    bytes[4..].copy_from_slice(&key.secret.to_be_bytes());
    bytes
}

/// The key of 8 wire bytes.
fn from_bytes(bytes: [u8; 8]) -> CancelKey {
    CancelKey {
        pid: i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        secret: i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    }
}

/// `key` made a key of the process with `peer_id`: its peer id set, its
/// TTL full, its process id part positive.
pub(super) fn stamp(key: CancelKey, peer_id: u16) -> CancelKey {
    let mut bytes = to_bytes(key);
    bytes[0] &= 0x7f;
    let [low, high] = peer_id.to_le_bytes();
    bytes[1] = low;
    bytes[2] = high;
    bytes[7] |= TTL_MASK;
    from_bytes(bytes)
}

/// The peer id a key names (meaningful only for a peered process's keys).
pub(super) fn peer_of(key: CancelKey) -> u16 {
    let bytes = to_bytes(key);
    u16::from_le_bytes([bytes[1], bytes[2]])
}

/// How many more times a request with this key may be forwarded.
pub(super) fn ttl(key: CancelKey) -> u8 {
    to_bytes(key)[7] & TTL_MASK
}

/// The key as its maker stored it: TTL full. A request that has been
/// forwarded has a lower one.
pub(super) fn with_full_ttl(key: CancelKey) -> CancelKey {
    let mut bytes = to_bytes(key);
    bytes[7] |= TTL_MASK;
    from_bytes(bytes)
}

/// The key to forward a request with: its TTL one lower; `None` when the
/// TTL is spent and the request must not travel further.
pub(super) fn hop(key: CancelKey) -> Option<CancelKey> {
    if ttl(key) == 0 {
        return None;
    }
    let mut bytes = to_bytes(key);
    bytes[7] -= 1;
    Some(from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: [u8; 8]) -> CancelKey {
        from_bytes(bytes)
    }

    #[test]
    fn bytes_round_trip_in_wire_order() {
        let k = CancelKey {
            pid: 0x0102_0304,
            secret: -2,
        };
        assert_eq!(to_bytes(k), [1, 2, 3, 4, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(from_bytes(to_bytes(k)), k);
    }

    #[test]
    fn stamp_sets_peer_id_ttl_and_a_positive_pid_and_keeps_the_rest() {
        let random = key([0xff, 0xaa, 0xbb, 0x11, 0x22, 0x33, 0x44, 0x54]);
        let stamped = stamp(random, 0x1234);
        assert_eq!(
            to_bytes(stamped),
            [0x7f, 0x34, 0x12, 0x11, 0x22, 0x33, 0x44, 0x57]
        );
        assert!(stamped.pid > 0);
        assert_eq!(peer_of(stamped), 0x1234);
        assert_eq!(ttl(stamped), 3);
        // The largest peer id fits, and a key from every id reads back.
        for id in [1, 2, 255, 256, 16383] {
            assert_eq!(peer_of(stamp(random, id)), id);
        }
    }

    #[test]
    fn peer_id_is_read_from_bytes_one_and_two_low_byte_first() {
        // A key as a PgBouncer with peer_id 300 (0x012c) would make it.
        let from_pgbouncer = key([0x05, 0x2c, 0x01, 0x99, 0x42, 0x42, 0x42, 0x43]);
        assert_eq!(peer_of(from_pgbouncer), 300);
        assert_eq!(ttl(from_pgbouncer), 3);
    }

    #[test]
    fn each_hop_takes_one_ttl_and_the_fourth_is_refused() {
        let fresh = stamp(key([1, 0, 0, 2, 3, 4, 5, 0x80]), 7);
        let once = hop(fresh).unwrap();
        let twice = hop(once).unwrap();
        let thrice = hop(twice).unwrap();
        assert_eq!(
            [ttl(fresh), ttl(once), ttl(twice), ttl(thrice)],
            [3, 2, 1, 0]
        );
        assert_eq!(hop(thrice), None);
        // Only the TTL bits change: same peer, same key once restored.
        assert_eq!(peer_of(thrice), 7);
        assert_eq!(with_full_ttl(thrice), fresh);
        assert_eq!(to_bytes(thrice)[7], 0x80);
    }
}
