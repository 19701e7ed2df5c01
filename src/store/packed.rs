//! The packed form of a key holding one version: the key, the version's dot, history,
//! metadata and value in one allocation of plain bytes, with each writer named by a number
//! in a per-shard table ([`Packer`]). The store keeps most keys in this form (see the
//! memory layout in [`super`]); this module owns the bytes and nothing else.
//!
//! A packed entry is, with every number a LEB128 varint:
//!
//! ```text
//! flags: u8 (HAS_VALUE | HAS_EXPIRY | HAS_CONTENT_TYPE)
//! key length, key
//! dot: actor number, counter
//! expiry (if HAS_EXPIRY)
//! content type length, content type (if HAS_CONTENT_TYPE)
//! value length, value (if HAS_VALUE)
//! history: entry count, then per entry actor number, max, missing count, missing counters
//! ```
//!
//! Everything a fingerprint, a summary or a key comparison needs comes before the history,
//! so those read a few bytes in place ([`View`]) and never walk it. For a key like
//! `key00000001`, a 100-byte value and one writer this is about 125 bytes: one 144-byte
//! malloc chunk.
//!
//! Packed entries are only ever written by [`Packer::pack`] and live only in memory, so
//! the form carries no version byte and reading malformed bytes is a bug, which panics.

use std::collections::HashMap;

use bytes::Bytes;

use super::PACKED_VALUE_MAX;
use crate::version::{Actor, Context, Dot, Meta, Version, VersionSet, fingerprint_of};

/// Flags of a packed entry.
const HAS_VALUE: u8 = 1;
const HAS_EXPIRY: u8 = 2;
const HAS_CONTENT_TYPE: u8 = 4;

/// Packs a key and its one version into bytes, and unpacks them; holds the table of the
/// writers packed entries name by number.
///
/// Writers are numbered in the order a shard first packs them and the numbers are never
/// reused, so the table grows by one entry per node generation that ever wrote to the
/// shard (a few dozen bytes each): the same accumulation as in every context (see the
/// [`crate::version`] caveats).
#[derive(Default)]
pub(super) struct Packer {
    actors: Vec<Actor>,
    numbers: HashMap<Actor, u32>,
    /// The number last looked up: nearly every lookup, on a node whose own writes dominate.
    last: u32,
    /// Where a packed entry's fields are assembled before its one allocation.
    scratch: Vec<u8>,
}

impl Packer {
    fn number(&mut self, actor: &Actor) -> u32 {
        if self.actors.get(self.last as usize) == Some(actor) {
            return self.last;
        }
        let n = match self.numbers.get(actor) {
            Some(&n) => n,
            None => {
                let n = u32::try_from(self.actors.len()).expect("fewer than 2^32 writers");
                self.actors.push(actor.clone());
                self.numbers.insert(actor.clone(), n);
                n
            }
        };
        self.last = n;
        n
    }

    pub(super) fn actor(&self, number: u32) -> &Actor {
        &self.actors[number as usize]
    }

    /// `set` with `key`, packed; `None` if `set` is not one version with a value of at most
    /// [`PACKED_VALUE_MAX`] bytes (or is one whose history lacks its own dot, or whose
    /// metadata is present but empty, which unpacking would not give back exactly).
    pub(super) fn pack(&mut self, key: &[u8], set: &VersionSet) -> Option<Box<[u8]>> {
        let [v] = set.versions() else {
            return None;
        };
        let value = v.value.as_deref();
        if value.is_some_and(|b| b.len() > PACKED_VALUE_MAX)
            || !v.history.contains(&v.dot)
            || v.meta.as_deref() == Some(&Meta::default())
        {
            return None;
        }
        let expires = v.expires_at();
        let content_type = v.content_type();
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let flags = if value.is_some() { HAS_VALUE } else { 0 }
            | if expires.is_some() { HAS_EXPIRY } else { 0 }
            | if content_type.is_some() {
                HAS_CONTENT_TYPE
            } else {
                0
            };
        out.push(flags);
        put_bytes(&mut out, key);
        put_varint(&mut out, self.number(&v.dot.actor).into());
        put_varint(&mut out, v.dot.counter);
        if let Some(t) = expires {
            put_varint(&mut out, t);
        }
        if let Some(ct) = content_type {
            put_bytes(&mut out, ct.as_bytes());
        }
        if let Some(value) = value {
            put_varint(&mut out, value.len() as u64);
        }
        let head = out.len();
        put_varint(&mut out, v.history.actors() as u64);
        for (actor, max, missing) in v.history.entries() {
            put_varint(&mut out, self.number(actor).into());
            put_varint(&mut out, max);
            put_varint(&mut out, missing.len() as u64);
            for &m in missing {
                put_varint(&mut out, m);
            }
        }
        // Assembled so that the value is copied once, into an allocation of exactly the
        // packed size.
        let value = value.unwrap_or_default();
        let mut packed = Vec::with_capacity(out.len() + value.len());
        packed.extend_from_slice(&out[..head]);
        packed.extend_from_slice(value);
        packed.extend_from_slice(&out[head..]);
        self.scratch = out;
        Some(packed.into_boxed_slice())
    }

    pub(super) fn unpack(&self, packed: &[u8]) -> VersionSet {
        let v = View::parse(packed);
        let mut history = Reader(v.history);
        let entries = history.varint() as usize;
        let history = Context::from_canonical((0..entries).map(|_| {
            let actor = self.actor(history.varint() as u32).clone();
            let max = history.varint();
            let missing = history.varint() as usize;
            (actor, max, (0..missing).map(|_| history.varint()).collect())
        }));
        let meta = Meta {
            content_type: v
                .content_type
                .map(|ct| std::str::from_utf8(ct).expect("packed from a str").into()),
            expires_at: v.expires,
        };
        VersionSet::sole(Version {
            dot: Dot {
                actor: self.actor(v.actor).clone(),
                counter: v.counter,
            },
            history,
            value: v.value.map(Bytes::copy_from_slice),
            meta: meta.boxed(),
        })
    }
}

/// The fields of a packed entry (see [`Packer`]), read in place.
pub(super) struct View<'a> {
    pub(super) key: &'a [u8],
    pub(super) actor: u32,
    pub(super) counter: u64,
    pub(super) expires: Option<u64>,
    content_type: Option<&'a [u8]>,
    pub(super) value: Option<&'a [u8]>,
    /// The encoded history.
    history: &'a [u8],
}

impl<'a> View<'a> {
    pub(super) fn key(packed: &[u8]) -> &[u8] {
        let mut r = Reader(&packed[1..]);
        r.bytes()
    }

    pub(super) fn parse(packed: &'a [u8]) -> View<'a> {
        let flags = packed[0];
        let mut r = Reader(&packed[1..]);
        let key = r.bytes();
        let actor = r.varint() as u32;
        let counter = r.varint();
        let expires = (flags & HAS_EXPIRY != 0).then(|| r.varint());
        let content_type = (flags & HAS_CONTENT_TYPE != 0).then(|| r.bytes());
        let value = (flags & HAS_VALUE != 0).then(|| r.bytes());
        View {
            key,
            actor,
            counter,
            expires,
            content_type,
            value,
            history: r.0,
        }
    }

    pub(super) fn fingerprint(&self, packer: &Packer) -> u64 {
        let written = self.value.is_some() || self.expires.is_some();
        fingerprint_of(
            self.key,
            [(packer.actor(self.actor), self.counter, written)],
        )
    }

    pub(super) fn is_dot(&self, packer: &Packer, dot: &Dot) -> bool {
        self.counter == dot.counter && *packer.actor(self.actor) == dot.actor
    }

    /// [`Context::contains`] on the packed history.
    pub(super) fn history_contains(&self, packer: &Packer, dot: &Dot) -> bool {
        let mut r = Reader(self.history);
        for _ in 0..r.varint() {
            let actor = packer.actor(r.varint() as u32);
            let max = r.varint();
            let missing = r.varint();
            if *actor == dot.actor {
                return dot.counter >= 1
                    && dot.counter <= max
                    && (0..missing).all(|_| r.varint() != dot.counter);
            }
            for _ in 0..missing {
                r.varint();
            }
        }
        false
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads what `put_varint` and `put_bytes` wrote. Packed entries are only ever written by
/// [`Packer::pack`], so running off the end is a bug, and panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> u64 {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.0[0];
            self.0 = &self.0[1..];
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return n;
            }
            shift += 7;
        }
    }

    fn bytes(&mut self) -> &'a [u8] {
        let len = self.varint() as usize;
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        bytes
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::INLINE_KEY;

    fn actor(node: &str) -> Actor {
        Actor {
            node: Arc::from(node),
            generation: 1,
        }
    }

    fn history(entries: &[(&Actor, u64, Vec<u64>)]) -> Context {
        let mut ctx = Context::new();
        for (a, max, missing) in entries {
            ctx.set_entry(a, *max, missing.clone());
        }
        ctx
    }

    fn sole(dot: (&Actor, u64), history: Context, value: Option<&[u8]>, meta: Meta) -> VersionSet {
        VersionSet::sole(Version {
            dot: Dot {
                actor: dot.0.clone(),
                counter: dot.1,
            },
            history,
            value: value.map(Bytes::copy_from_slice),
            meta: meta.boxed(),
        })
    }

    /// Keys and single versions that pack: every combination of key lengths (around the
    /// one-byte varint and [`INLINE_KEY`]), histories, dots, metadata and values (up to
    /// [`PACKED_VALUE_MAX`]), written by three writers.
    pub(in crate::store) fn packable() -> Vec<(Vec<u8>, VersionSet)> {
        let (a, b, c) = (actor("n1"), actor("n2"), Actor::new("node-3", u64::MAX));
        let big = vec![7u8; PACKED_VALUE_MAX];
        let histories = [
            history(&[(&a, 1, vec![])]),
            history(&[(&a, 300_000, vec![])]),
            history(&[(&a, u64::MAX, vec![1, 200, u64::MAX - 1])]),
            history(&[(&a, 9, vec![2, 3]), (&b, 4, vec![]), (&c, 1 << 40, vec![7])]),
        ];
        let metas = [
            Meta::default(),
            Meta {
                content_type: Some("text/plain; charset=utf-8".into()),
                expires_at: None,
            },
            Meta {
                content_type: Some("".into()),
                expires_at: Some(1_700_000_000_000),
            },
            Meta {
                content_type: None,
                expires_at: Some(0),
            },
        ];
        let values: [Option<&[u8]>; 4] = [None, Some(b""), Some(b"value"), Some(&big)];
        let keys: [Vec<u8>; 5] = [
            b"".to_vec(),
            b"k".to_vec(),
            vec![b'x'; INLINE_KEY],
            vec![b'y'; INLINE_KEY + 1],
            vec![b'k'; 300],
        ];
        let mut samples = Vec::new();
        for key in &keys {
            for h in &histories {
                for (who, counter) in h.entries().map(|(a, max, _)| (a, max)) {
                    for meta in &metas {
                        for value in values {
                            let set = sole((who, counter), h.clone(), value, meta.clone());
                            samples.push((key.clone(), set));
                        }
                    }
                }
            }
        }
        samples
    }

    /// What is not packed: siblings, a larger value, present but empty metadata, and a
    /// version whose history lacks its own dot.
    pub(in crate::store) fn unpackable() -> Vec<VersionSet> {
        let (a, b) = (actor("n1"), actor("n2"));
        let h = history(&[(&a, 2, vec![])]);
        let too_big = vec![0u8; PACKED_VALUE_MAX + 1];
        let odd = sole((&a, 5), h.clone(), None, Meta::default());
        let mut siblings = sole((&a, 2), h.clone(), Some(b"x"), Meta::default());
        siblings.merge(&sole(
            (&b, 1),
            history(&[(&b, 1, vec![])]),
            None,
            Meta::default(),
        ));
        let plain = sole((&a, 2), h.clone(), Some(b"x"), Meta::default());
        let empty_meta = VersionSet::sole(Version {
            meta: Some(Box::default()),
            ..plain.versions()[0].clone()
        });
        vec![
            sole((&a, 2), h, Some(&too_big), Meta::default()),
            odd,
            siblings,
            empty_meta,
        ]
    }

    /// Every single version packs and unpacks to itself, and what a [`View`] reads in place
    /// (key, value, expiry, fingerprint, dots in the history) agrees with the set.
    #[test]
    fn packed_entries_round_trip_and_read_in_place() {
        let probes = [
            actor("n1"),
            actor("n2"),
            Actor::new("node-3", u64::MAX),
            actor("n4"),
        ];
        let mut packer = Packer::default();
        for (key, set) in packable() {
            let packed = packer.pack(&key, &set).expect("packable");
            assert_eq!(packer.unpack(&packed), set);
            assert_eq!(View::key(&packed), &key[..]);
            let version = &set.versions()[0];
            let view = View::parse(&packed);
            assert_eq!(view.key, &key[..]);
            assert_eq!(view.value, version.value.as_deref());
            assert_eq!(view.expires, version.expires_at());
            assert_eq!(view.fingerprint(&packer), set.fingerprint(&key));
            for probe in &probes {
                for k in [0, 1, 2, 3, 4, 9, 10, 1 << 40, u64::MAX - 1, u64::MAX] {
                    let d = Dot {
                        actor: probe.clone(),
                        counter: k,
                    };
                    assert_eq!(
                        view.history_contains(&packer, &d),
                        version.history.contains(&d)
                    );
                    assert_eq!(view.is_dot(&packer, &d), version.dot == d);
                }
            }
        }
        assert_eq!(packer.actors.len(), 3, "one number per writer");
        for set in unpackable() {
            assert!(packer.pack(b"k", &set).is_none());
        }
    }

    #[test]
    fn varints_round_trip() {
        let numbers = [
            0,
            1,
            0x7f,
            0x80,
            0x3fff,
            0x4000,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        let mut out = Vec::new();
        for n in numbers {
            let at = out.len();
            put_varint(&mut out, n);
            let bits = 64 - n.leading_zeros() as usize;
            assert_eq!(
                out.len() - at,
                bits.div_ceil(7).max(1),
                "7 bits a byte: {n}"
            );
            put_bytes(&mut out, &n.to_le_bytes()[..(n % 9) as usize]);
        }
        let mut r = Reader(&out);
        for n in numbers {
            assert_eq!(r.varint(), n);
            assert_eq!(r.bytes(), &n.to_le_bytes()[..(n % 9) as usize]);
        }
        assert!(r.0.is_empty());
    }
}
