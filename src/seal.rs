//! Sealed gossip: chitchat's UDP datagrams, authenticated with the cluster secret and
//! protected against replay.
//!
//! chitchat has no authentication: anyone who can reach a node's gossip port can announce
//! members, addresses and statuses. With a cluster secret ([`crate::secret`]), every gossip
//! datagram carries a MAC under the gossip key (`ClusterSecret::derive("gossip")`) and a
//! counter, and a receiver drops forged, truncated and replayed datagrams *before* chitchat
//! sees them. A node with another secret, or none, therefore never enters a member list.
//! Gossip is authenticated, not encrypted: what it carries (addresses, statuses, watched
//! prefixes) stays readable on the wire.
//!
//! ## Wire format
//!
//! ```text
//! datagram = payload ‖ sender (u64, big-endian) ‖ counter (u64, big-endian) ‖ tag (16 bytes)
//! tag      = first 16 bytes of HMAC-SHA256(gossip key, payload ‖ sender ‖ counter)
//! payload  = kind (1 byte) ‖ bytes
//!            kind 0: bytes = one chitchat envelope, in chitchat's own encoding
//!            kind 1: the first half of an envelope too large for one datagram
//!            kind 2: its second half, sealed with the first half's counter + 1
//! ```
//!
//! [`SEAL_OVERHEAD`] (32 bytes) plus the kind byte: 33 bytes per datagram.
//!
//! - **Tag, 16 bytes.** HMAC-SHA256 truncated to 128 bits, as IPsec's HMAC-SHA-256-128
//!   (RFC 4868) does and RFC 2104 allows (at least half the hash). A forger must guess a
//!   128-bit value online, one datagram per guess; the 16 bytes saved count, since chitchat
//!   fills datagrams up to the size limit.
//! - **Sender**, a random 64-bit id drawn when the node starts. Replay state is kept per
//!   sender, not per source address: the id is under the MAC, while a source address is
//!   not, so a captured datagram replayed from a spoofed address finds its sender's window
//!   and is refused, instead of being accepted once per address (and answered, through
//!   chitchat, to whichever address the attacker chose).
//! - **Counter**, strictly increasing per sender: `max(previous + 1, now)` with `now` the
//!   sender's wall clock in microseconds. It therefore starts at the start-up time, so a
//!   restarted node's counters are above its old ones, and it follows the clock rather than
//!   lagging further behind it the longer the node runs (a plain `start + n` would fall
//!   behind by its uptime and soon fail the receiver's clock check). If the clock steps
//!   back, the counter keeps increasing by one until the clock catches up.
//!
//! ## Checks on receipt ([`Opener::open`]), in order
//!
//! 1. At least [`SEAL_OVERHEAD`] bytes, else [`Refusal::Truncated`].
//! 2. The tag, compared in constant time, else [`Refusal::BadMac`]. Nothing before this step
//!    keeps state, so garbage from any number of addresses costs no memory.
//! 3. The counter within [`MAX_CLOCK_SKEW_US`] of the receiver's clock either way, else
//!    [`Refusal::ClockSkew`]. This bounds what a receiver that has no state for a sender (it
//!    restarted, or evicted the sender) can be made to accept again, and keeps a sender whose
//!    clock ran far ahead from pushing its window out of reach of its later, corrected
//!    counters.
//! 4. The sender's replay window, as IPsec and WireGuard keep one (RFC 6479): the highest
//!    counter accepted plus a bitmap of the [`REPLAY_WINDOW`] counters below it. A counter
//!    above the highest slides the window; one inside it is accepted once
//!    ([`Refusal::Replayed`] after that); one below it is [`Refusal::TooOld`]. The window
//!    counts counter values, so it spans 64 datagrams of a burst but only 64 µs between
//!    datagrams sent apart: reordering wider than that is dropped like a lost datagram,
//!    which gossip absorbs (chitchat gossips again next round).
//!
//! The per-sender table holds at most [`MAX_SENDERS`] senders, evicting the least recently
//! seen; only authenticated datagrams add to it.
//!
//! ## Size
//!
//! chitchat sizes the deltas it sends so that an envelope fills up to 65,507 bytes, the
//! largest IPv4 UDP payload (its `MAX_UDP_DATAGRAM_PAYLOAD_SIZE`, crate-private; chitchat 0.13
//! has no MTU setting in `ChitchatConfig`, so it cannot be shrunk by the seal's overhead).
//! An envelope that no longer fits once sealed travels as two halves (kinds 1 and 2), each
//! sealed on its own and joined by the receiver ([`Halves`]), which keeps at most one
//! unpaired half per sender and [`MAX_PENDING_HALVES`] in all.
//!
//! The socket that seals chitchat's datagrams, and borrows chitchat's codec through
//! loopback to do so, is [`crate::membership::sealed_udp`]: this module is pure.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;

use crate::secret;

/// Bytes of the (truncated) HMAC-SHA256 tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the sender id.
const SENDER_LEN: usize = 8;
/// Bytes of the counter.
const COUNTER_LEN: usize = 8;
/// What sealing adds to a payload: sender, counter and tag.
pub const SEAL_OVERHEAD: usize = SENDER_LEN + COUNTER_LEN + TAG_LEN;

/// Counters below a sender's highest that are still accepted once: one bit each of a `u64`.
pub const REPLAY_WINDOW: u64 = 64;

/// How far (µs) a counter may be from the receiver's clock, ahead or behind: 60 s. Peers whose
/// clocks differ by more cannot gossip (every datagram is refused as [`Refusal::ClockSkew`],
/// logged); NTP keeps hosts within milliseconds, and a minute tolerates an unsynchronised VM
/// for a while. The cost: a receiver without state for a sender (just restarted, or it
/// evicted the sender) can be replayed that sender's datagrams of the last minute, in
/// increasing order, until the sender's next real datagram. Replayed gossip is stale gossip,
/// which chitchat's versions ignore.
pub const MAX_CLOCK_SKEW_US: u64 = 60 * 1_000_000;

/// Most senders whose replay windows a receiver keeps (about 40 bytes each). Above it, the
/// least recently seen is forgotten; a forgotten sender is still held to
/// [`MAX_CLOCK_SKEW_US`]. Every node restart is a new sender, so the table also collects
/// the dead ids of restarted peers until they are evicted.
pub const MAX_SENDERS: usize = 1024;

/// The largest datagram sent: the largest IPv4 UDP payload (65,535 − 20 − 8), which is also
/// the largest envelope chitchat produces.
pub const MAX_DATAGRAM: usize = 65_507;

/// Unpaired halves kept, at most one per sender (each up to 32 KiB): 512 KiB at worst, and
/// only from holders of the key.
pub const MAX_PENDING_HALVES: usize = 16;

/// Payload kinds (the first byte of a sealed payload, see the wire format above).
pub const KIND_WHOLE: u8 = 0;
pub const KIND_HEAD: u8 = 1;
pub const KIND_TAIL: u8 = 2;

/// Microseconds since the Unix epoch by the system clock (0 before 1970). Unskewed, like the
/// gossip generation (see [`crate::clock`]): a restarted node's counters must exceed its old
/// ones.
pub fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Shorter than [`SEAL_OVERHEAD`].
    Truncated,
    /// The tag does not match: another key, no key, or altered bytes.
    BadMac,
    /// A counter already accepted from this sender.
    Replayed,
    /// A counter below the sender's replay window.
    TooOld,
    /// A counter more than [`MAX_CLOCK_SKEW_US`] from the receiver's clock.
    ClockSkew,
    /// Authentic, but not a frame this version knows (kind byte, or joined halves too long).
    BadFrame,
    /// An authentic half whose other half never came.
    Unpaired,
    /// Authentic, but chitchat cannot decode the envelope.
    Undecodable,
}

impl Refusal {
    /// Number of reasons: a logger can keep one log slot per reason, indexed by `reason as usize`.
    pub const COUNT: usize = Refusal::Undecodable as usize + 1;

    /// The reason as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Truncated => "truncated",
            Refusal::BadMac => "bad MAC",
            Refusal::Replayed => "replayed",
            Refusal::TooOld => "older than the replay window",
            Refusal::ClockSkew => "counter too far from this node's clock",
            Refusal::BadFrame => "unknown frame",
            Refusal::Unpaired => "unpaired half",
            Refusal::Undecodable => "undecodable envelope",
        }
    }
}

/// Seals payloads for one sender: appends sender, counter and tag.
pub struct Sealer {
    key: [u8; 32],
    sender: u64,
    /// The lowest counter the next datagram may use.
    next: u64,
}

impl Sealer {
    /// A sender with a random id, its counter starting at the wall clock.
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer::with_sender(key, rand::random(), wall_clock_us())
    }

    /// A sender with a given id and start (tests, and [`Sealer::new`]).
    pub fn with_sender(key: &[u8; 32], sender: u64, start_us: u64) -> Sealer {
        Sealer {
            key: *key,
            sender,
            next: start_us,
        }
    }

    /// This sender's id.
    pub fn sender(&self) -> u64 {
        self.sender
    }

    /// Seals `payload` with the wall clock.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        self.seal_at(payload, wall_clock_us())
    }

    /// Seals `payload` with the counter `max(previous + 1, now_us)`. Two calls with the same
    /// `now_us` get consecutive counters (the halves of a split envelope rely on it).
    pub fn seal_at(&mut self, payload: &[u8], now_us: u64) -> Vec<u8> {
        self.seal_parts(&[payload], now_us)
    }

    /// Seals the concatenation of `parts` (a kind byte and an envelope's bytes, say).
    pub fn seal_parts(&mut self, parts: &[&[u8]], now_us: u64) -> Vec<u8> {
        let counter = self.next.max(now_us);
        self.next = counter.saturating_add(1);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(len + SEAL_OVERHEAD);
        for p in parts {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        let tag = secret::mac(&self.key, &[&out]);
        out.extend_from_slice(&tag[..TAG_LEN]);
        out
    }
}

/// An accepted datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    pub payload: &'a [u8],
    pub sender: u64,
    pub counter: u64,
}

/// One sender's replay state.
#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u64,
    /// The receiver's clock when this sender was last accepted, for eviction.
    last_seen_us: u64,
}

impl Window {
    /// Accepts `counter` if it is new and not below the window; changes nothing otherwise.
    fn accept(&mut self, counter: u64) -> Result<(), Refusal> {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
            return Ok(());
        }
        let back = self.highest - counter;
        if back >= REPLAY_WINDOW {
            return Err(Refusal::TooOld);
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            return Err(Refusal::Replayed);
        }
        self.seen |= bit;
        Ok(())
    }
}

/// Checks datagrams: tag, clock skew, replay window per sender. Pure: the caller gives the
/// clock.
pub struct Opener {
    key: [u8; 32],
    senders: HashMap<u64, Window>,
}

impl Opener {
    pub fn new(key: &[u8; 32]) -> Opener {
        Opener {
            key: *key,
            senders: HashMap::new(),
        }
    }

    /// How many senders' windows are kept.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Opens `datagram` received when the receiver's clock read `now_us`. Only an accepted
    /// datagram changes the state.
    pub fn open<'a>(&mut self, datagram: &'a [u8], now_us: u64) -> Result<Opened<'a>, Refusal> {
        let (signed, tag) = datagram
            .split_last_chunk::<TAG_LEN>()
            .ok_or(Refusal::Truncated)?;
        let (rest, counter) = signed
            .split_last_chunk::<COUNTER_LEN>()
            .ok_or(Refusal::Truncated)?;
        let (payload, sender) = rest
            .split_last_chunk::<SENDER_LEN>()
            .ok_or(Refusal::Truncated)?;
        let expected = secret::mac(&self.key, &[signed]);
        if !bool::from(expected[..TAG_LEN].ct_eq(tag)) {
            return Err(Refusal::BadMac);
        }
        let sender = u64::from_be_bytes(*sender);
        let counter = u64::from_be_bytes(*counter);
        if counter.abs_diff(now_us) > MAX_CLOCK_SKEW_US {
            return Err(Refusal::ClockSkew);
        }
        match self.senders.get_mut(&sender) {
            Some(window) => {
                window.accept(counter)?;
                window.last_seen_us = now_us;
            }
            None => {
                if self.senders.len() >= MAX_SENDERS {
                    let oldest = self
                        .senders
                        .iter()
                        .min_by_key(|(_, w)| w.last_seen_us)
                        .map(|(id, _)| *id);
                    if let Some(id) = oldest {
                        self.senders.remove(&id);
                    }
                }
                self.senders.insert(
                    sender,
                    Window {
                        highest: counter,
                        seen: 1,
                        last_seen_us: now_us,
                    },
                );
            }
        }
        Ok(Opened {
            payload,
            sender,
            counter,
        })
    }
}

/// The first halves (or second halves, if they came first) of split envelopes, waiting for
/// their other half. Pure; fed only authenticated halves.
#[derive(Default)]
pub struct Halves {
    pending: HashMap<u64, Half>,
}

struct Half {
    counter: u64,
    head: bool,
    bytes: Vec<u8>,
}

impl Halves {
    /// Takes one half (`head`: the first) of `sender`'s envelope sealed with `counter`.
    /// Returns the joined envelope when this completes a pair, and how many halves were
    /// dropped unpaired to make room.
    pub fn push(
        &mut self,
        sender: u64,
        counter: u64,
        head: bool,
        part: &[u8],
    ) -> (Option<Vec<u8>>, usize) {
        let mut dropped = 0;
        if let Some(other) = self.pending.remove(&sender) {
            let pairs = if head {
                !other.head && counter.checked_add(1) == Some(other.counter)
            } else {
                other.head && other.counter.checked_add(1) == Some(counter)
            };
            if pairs {
                let (first, second) = if head {
                    (part, &other.bytes[..])
                } else {
                    (&other.bytes[..], part)
                };
                let mut joined = Vec::with_capacity(first.len() + second.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(second);
                return (Some(joined), 0);
            }
            dropped += 1;
        }
        if self.pending.len() >= MAX_PENDING_HALVES {
            // Counters follow the senders' clocks, so the lowest is the oldest half.
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, h)| h.counter)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.pending.remove(&id);
                dropped += 1;
            }
        }
        self.pending.insert(
            sender,
            Half {
                counter,
                head,
                bytes: part.to_vec(),
            },
        );
        (None, dropped)
    }

    /// Halves waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];
    /// A receiver's clock, in µs: 2026-01-01.
    const NOW: u64 = 1_767_225_600_000_000;

    fn sealer(sender: u64) -> Sealer {
        Sealer::with_sender(&KEY, sender, NOW)
    }

    #[test]
    fn a_sealed_datagram_opens() {
        let mut s = sealer(1);
        let d = s.seal_at(b"hello", NOW);
        assert_eq!(d.len(), 5 + SEAL_OVERHEAD);
        let mut o = Opener::new(&KEY);
        let opened = o.open(&d, NOW).unwrap();
        assert_eq!(opened.payload, b"hello");
        assert_eq!(opened.sender, 1);
        assert_eq!(opened.counter, NOW);
        // An empty payload seals too.
        let d = s.seal_at(b"", NOW);
        assert_eq!(o.open(&d, NOW).unwrap().payload, b"");
    }

    #[test]
    fn counters_increase_strictly_even_when_the_clock_steps_back() {
        let mut s = sealer(1);
        let mut o = Opener::new(&KEY);
        let mut last = 0;
        for now in [NOW, NOW, NOW + 10, NOW - 1_000, NOW + 5] {
            let c = o.open(&s.seal_at(b"x", now), NOW).unwrap().counter;
            assert!(c > last, "{c} after {last}");
            last = c;
        }
        // The counter follows the clock forward.
        assert_eq!(
            o.open(&s.seal_at(b"x", NOW + 5_000), NOW).unwrap().counter,
            NOW + 5_000
        );
    }

    #[test]
    fn a_datagram_sealed_with_another_key_is_refused() {
        let d = Sealer::with_sender(&OTHER, 1, NOW).seal_at(b"hello", NOW);
        let mut o = Opener::new(&KEY);
        assert_eq!(o.open(&d, NOW), Err(Refusal::BadMac));
        assert_eq!(o.senders(), 0);
    }

    #[test]
    fn a_tampered_datagram_is_refused_whichever_byte_flips() {
        let d = sealer(1).seal_at(b"hello", NOW);
        let mut o = Opener::new(&KEY);
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            assert_eq!(o.open(&t, NOW), Err(Refusal::BadMac), "byte {i}");
        }
        // Nothing was remembered from the forgeries: the real one still opens.
        assert_eq!(o.senders(), 0);
        assert!(o.open(&d, NOW).is_ok());
    }

    #[test]
    fn truncated_datagrams_are_refused() {
        // A payload longer than the tag, so that every cut into the tag leaves the overhead.
        let payload = [b'p'; 2 * TAG_LEN];
        let d = sealer(1).seal_at(&payload, NOW);
        let mut o = Opener::new(&KEY);
        for len in 0..SEAL_OVERHEAD {
            assert_eq!(o.open(&d[..len], NOW), Err(Refusal::Truncated), "len {len}");
        }
        // Cutting into the tag (or anything) leaves a datagram that fails its MAC.
        for cut in 1..=TAG_LEN {
            assert_eq!(
                o.open(&d[..d.len() - cut], NOW),
                Err(Refusal::BadMac),
                "cut {cut}"
            );
        }
        // Cut at the front: what is left parses, as a shorter payload, and fails its MAC.
        assert_eq!(o.open(&d[payload.len()..], NOW), Err(Refusal::BadMac));
        assert_eq!(o.open(&d[1..], NOW), Err(Refusal::BadMac));
        assert_eq!(o.senders(), 0);
    }

    #[test]
    fn a_replayed_datagram_is_refused() {
        let d = sealer(1).seal_at(b"hello", NOW);
        let mut o = Opener::new(&KEY);
        assert!(o.open(&d, NOW).is_ok());
        assert_eq!(o.open(&d, NOW), Err(Refusal::Replayed));
        assert_eq!(o.open(&d, NOW + 1_000), Err(Refusal::Replayed));
    }

    #[test]
    fn reordering_within_the_window_is_accepted_once_each() {
        let mut s = sealer(1);
        let ds: Vec<Vec<u8>> = (0..REPLAY_WINDOW).map(|_| s.seal_at(b"x", NOW)).collect();
        let mut o = Opener::new(&KEY);
        // The newest first, then the rest from the oldest: all within 64 of the newest.
        let last = ds.len() - 1;
        assert!(o.open(&ds[last], NOW).is_ok());
        for d in &ds[..last] {
            assert!(o.open(d, NOW).is_ok());
        }
        for d in &ds {
            assert_eq!(o.open(d, NOW), Err(Refusal::Replayed));
        }
    }

    #[test]
    fn a_counter_below_the_window_is_refused() {
        let mut s = sealer(1);
        let old = s.seal_at(b"old", NOW);
        let ds: Vec<Vec<u8>> = (0..REPLAY_WINDOW).map(|_| s.seal_at(b"x", NOW)).collect();
        let mut o = Opener::new(&KEY);
        for d in &ds {
            assert!(o.open(d, NOW).is_ok());
        }
        // `old` is 64 below the highest: just out of the window.
        assert_eq!(o.open(&old, NOW), Err(Refusal::TooOld));
        // Far older: a datagram of a second earlier.
        let older = sealer(1).seal_at(b"older", NOW - 1_000_000);
        assert_eq!(o.open(&older, NOW), Err(Refusal::TooOld));
    }

    #[test]
    fn counters_far_from_the_receivers_clock_are_refused() {
        let mut o = Opener::new(&KEY);
        let ahead = sealer(1).seal_at(b"x", NOW + MAX_CLOCK_SKEW_US + 1);
        assert_eq!(o.open(&ahead, NOW), Err(Refusal::ClockSkew));
        let behind = Sealer::with_sender(&KEY, 2, 0).seal_at(b"x", NOW - MAX_CLOCK_SKEW_US - 1);
        assert_eq!(o.open(&behind, NOW), Err(Refusal::ClockSkew));
        assert_eq!(o.senders(), 0);
        let edge = sealer(3).seal_at(b"x", NOW + MAX_CLOCK_SKEW_US);
        assert!(o.open(&edge, NOW).is_ok());
        // Extreme counters do not overflow anything.
        let max = Sealer::with_sender(&KEY, 4, u64::MAX).seal_at(b"x", u64::MAX);
        assert_eq!(o.open(&max, NOW), Err(Refusal::ClockSkew));
        assert_eq!(o.open(&max, u64::MAX).map(|d| d.counter), Ok(u64::MAX));
    }

    #[test]
    fn a_restarted_sender_is_accepted_and_its_old_datagrams_are_not() {
        let mut o = Opener::new(&KEY);
        let mut before = sealer(1);
        let old: Vec<Vec<u8>> = (0..3).map(|_| before.seal_at(b"x", NOW)).collect();
        for d in &old {
            assert!(o.open(d, NOW).is_ok());
        }
        // The same id restarted a second later (a new process would draw a new id; this is
        // the harder case): its counter starts at its clock, above the old ones.
        let mut after = Sealer::with_sender(&KEY, 1, NOW + 1_000_000);
        assert!(
            o.open(&after.seal_at(b"y", NOW + 1_000_000), NOW + 1_000_000)
                .is_ok()
        );
        for d in &old {
            assert_eq!(o.open(d, NOW + 1_000_000), Err(Refusal::TooOld));
        }
        // A new id (what `Sealer::new` draws) starts a window of its own.
        let mut fresh = Sealer::new(&KEY);
        assert!(o.open(&fresh.seal(b"z"), wall_clock_us()).is_ok());
    }

    #[test]
    fn the_sender_table_stays_bounded() {
        let mut o = Opener::new(&KEY);
        // Garbage from many addresses leaves nothing behind.
        for i in 0..10_000u64 {
            let d = Sealer::with_sender(&OTHER, i, NOW).seal_at(b"x", NOW);
            assert_eq!(o.open(&d, NOW), Err(Refusal::BadMac));
        }
        assert_eq!(o.senders(), 0);
        // Authentic senders beyond the bound evict the least recently seen.
        for i in 0..(MAX_SENDERS as u64 * 3) {
            let d = sealer(i).seal_at(b"x", NOW);
            assert!(o.open(&d, NOW + i).is_ok());
        }
        assert_eq!(o.senders(), MAX_SENDERS);
        // The most recent sender was kept: its replay is refused.
        let last = MAX_SENDERS as u64 * 3 - 1;
        let d = sealer(last).seal_at(b"x", NOW);
        assert_eq!(o.open(&d, NOW + last), Err(Refusal::Replayed));
    }

    #[test]
    fn halves_join_in_either_order_and_unpaired_ones_are_bounded() {
        let mut h = Halves::default();
        assert_eq!(h.push(1, 10, true, b"ab"), (None, 0));
        assert_eq!(h.push(1, 11, false, b"cd"), (Some(b"abcd".to_vec()), 0));
        assert_eq!(h.push(1, 21, false, b"cd"), (None, 0));
        assert_eq!(h.push(1, 20, true, b"ab"), (Some(b"abcd".to_vec()), 0));
        assert!(h.is_empty());
        // Not consecutive, or two heads: the older half is dropped.
        assert_eq!(h.push(1, 30, true, b"ab"), (None, 0));
        assert_eq!(h.push(1, 32, false, b"cd"), (None, 1));
        assert_eq!(h.push(1, 40, true, b"ab"), (None, 1));
        // Many senders: at most MAX_PENDING_HALVES kept.
        let mut dropped = 0;
        for s in 0..100u64 {
            dropped += h.push(100 + s, 50 + s, true, b"x").1;
        }
        assert_eq!(h.len(), MAX_PENDING_HALVES);
        assert_eq!(dropped, 100 + 1 - MAX_PENDING_HALVES);
    }
}
