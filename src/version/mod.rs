//! Dotted version vectors: how ringkv tracks causality between writes to one key.
//!
//! # What this module owns
//!
//! Everything that decides whether two writes are ordered or concurrent: writer identities
//! ([`Actor`]), individual write events ([`Dot`]), causal contexts ([`Context`], including the
//! opaque string clients carry between a read and the following write), single writes
//! ([`Version`]) and the per-key state a replica stores ([`VersionSet`]). It is pure and
//! synchronous: no I/O, no clocks, no knowledge of the ring or of quorums.
//!
//! # The model
//!
//! Every write is named by a *dot* `(actor, counter)`, and carries its *history*: the exact set
//! of dots it causally follows, including its own. A version `v` is superseded by `w` iff `w`'s
//! history contains `v`'s dot. A replica keeps exactly the versions nobody supersedes; when more
//! than one survives they are *siblings* and the client resolves them on the next write by
//! passing back the context it read.
//!
//! Contexts are exact dot *sets*, not version vectors. A plain version vector (`actor -> max`)
//! claims every counter up to `max`, so a client that read only dot 3 of an actor would
//! also "see" a concurrent dot 2 it never read and silently overwrite it: this is the sibling
//! explosion / lost update problem of classic Dynamo and early Riak. Storing, per actor,
//! "everything in `1..=max` except `missing`" keeps the set exact while staying as small as a
//! version vector in the common case (`missing` empty).
//!
//! # Why the coordinator must be a replica that stores the write locally
//!
//! [`VersionSet::write`] makes the new version's history claim *every* dot of the coordinating
//! actor up to the new counter, except the live siblings the client has not seen. That is only
//! sound because of this invariant:
//!
//! > Every dot of actor `a` for a key was created by the replica running as `a`, and was stored
//! > there first. A replica only drops a version when a version whose history contains its dot
//! > arrives, and histories are causally closed (see below).
//!
//! So an `a`-dot that is not live on `a`'s own replica has already been superseded by something,
//! and claiming it loses nothing. This bounds `missing` by the number of concurrent siblings
//! (the DVVSet insight) instead of letting it grow with every concurrent write ever seen. The
//! corollary for the rest of ringkv: the node that runs `write` for actor `a` must be the replica
//! holding `a`'s data for that key and must apply the result locally before replicating it.
//! Proxying a write to a node that does not store the key, or coordinating from a node whose
//! local copy was lost, breaks the argument.
//!
//! # Causal closure
//!
//! Histories must be causally closed: if `w`'s history contains `x`'s dot, it contains all of
//! `x`'s history. That is what makes "superseded" transitive, and transitivity is what makes
//! [`VersionSet::merge`] associative when replicas exchange *partial* state (a single new version,
//! a lagging peer's copy). Claiming a superseded `a`-dot `x` without its past breaks it: with
//! `y <- x <- u` and a stale write `w` that claims `x` but not `y`, merging `{x}` with `{w}`
//! drops `x` and forgets `y`, so a later `{y}` is resurrected, while merging in the other order
//! drops `y`. So the new history is the client's context, plus everything this replica knows
//! (the union of its live versions' histories) *minus the live siblings the client has not seen*:
//! every other dot there is superseded by a live version, so claiming it loses nothing, and the
//! result is closed because both inputs are.
//!
//! An actor is a node id *plus a generation* (the start time of that node's process). A node
//! that restarts with an empty disk gets a new generation, so it can never reissue a counter
//! that already names a different write elsewhere in the cluster (Riak's kv679 data loss bug:
//! a reused dot looks "already seen" and the new write is discarded).
//!
//! # Caveats
//!
//! * Client contexts are integrity-checked (CRC32, to catch truncation and accidental corruption),
//!   not authenticated. A client that forges a context can make its own writes supersede
//!   versions it never read, or, by claiming dots that do not exist yet, make later writes
//!   disappear on arrival. The damage is confined to keys that client writes, which it could
//!   overwrite or delete anyway; counters saturate rather than overflow, so forgery never panics.
//! * Actors accumulate: each restart with a fresh generation adds one more context entry for keys
//!   it writes, and nothing here prunes them. [`MAX_CONTEXT_BYTES`] bounds what a client can hand
//!   us; a key whose context outgrows it would need actor pruning (not implemented).
//! * [`Context::dots`] enumerates every dot and is `O(max)`; it is meant for tests and debugging,
//!   not for hot paths or untrusted counters.
//!
//! # Expiry
//!
//! A version may carry an absolute expiry ([`Meta::expires_at`], milliseconds since the Unix
//! epoch). Past it, the version reads as a tombstone ([`VersionSet::live`] takes the reader's
//! clock), and [`VersionSet::expire`] drops its value for good, keeping the dot and history so
//! that the expired write still supersedes whatever it overwrote (an older value on a replica
//! that missed the write must not reappear when the newer one expires). Whether a version's
//! value has been dropped yet is local housekeeping: [`VersionSet::fingerprint`] hashes an
//! expiring version the same either way, so replicas that sweep at different moments never
//! look different to anti-entropy.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest encoded (base64) context string [`Context::decode`] accepts: 64 KiB.
///
/// Contexts arrive in client requests, so their size must be bounded before any decoding work.
/// Legitimate contexts hold one small entry per actor that wrote the key, which is far below this.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;

/// First byte of every encoded context. Bumped if the framing or payload layout ever changes,
/// so old clients' contexts are rejected explicitly rather than misread.
const CONTEXT_FORMAT_VERSION: u8 = 1;

/// Length of the little-endian CRC32 trailer of an encoded context.
const CRC_LEN: usize = 4;

/// Why a context (from a client or a peer) was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextError(pub &'static str);

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid causal context: {}", self.0)
    }
}

impl std::error::Error for ContextError {}

/// A writer identity: node id plus the generation (start time) of that node's process.
/// A node restarted empty has a new generation and therefore never reuses a counter (Riak kv679).
///
/// Serialized compactly as the 2-tuple `(node, generation)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Actor {
    pub node: Arc<str>,
    pub generation: u64,
}

impl Actor {
    pub fn new(node: impl Into<Arc<str>>, generation: u64) -> Self {
        Actor {
            node: node.into(),
            generation,
        }
    }
}

// Hand-written rather than derived: the tuple form is compact in every format, and going through
// `&str`/`String` avoids needing serde's `rc` feature for `Arc<str>`.
impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&*self.node, self.generation).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (node, generation) = <(std::borrow::Cow<'de, str>, u64)>::deserialize(d)?;
        Ok(Actor {
            node: intern(&node),
            generation,
        })
    }
}

/// Most node ids one thread's interning cache keeps; past this it starts over. A cluster has
/// a handful of node ids, so this is only a guard against a peer sending junk ids.
const INTERN_CAP: usize = 1024;

/// Shares one `Arc<str>` per node id among every version this thread decodes. Every stored
/// version names its writer twice (its dot and its history), so without this each replicated
/// key would carry two private copies of the id: 64 bytes of heap per key.
fn intern(node: &str) -> Arc<str> {
    use std::cell::RefCell;
    use std::collections::HashSet;
    thread_local! {
        static IDS: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::new());
    }
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(id) = ids.get(node) {
            return id.clone();
        }
        if ids.len() >= INTERN_CAP {
            ids.clear();
        }
        let id: Arc<str> = Arc::from(node);
        ids.insert(id.clone());
        id
    })
}

/// One write event: the `counter`-th write coordinated by `actor` (counters start at 1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

/// A causal context: an exact *set of dots*, stored per actor as "all counters 1..=max except `missing`".
///
/// Invariants (checked by [`Context::decode`] and on deserialization): entries sorted by actor,
/// no duplicate actors, no entry with `max == 0`, `missing` strictly ascending with every element
/// in `1..max` (`max` itself is always included). Because the representation is canonical, two
/// contexts are `==` exactly when they hold the same dots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    entries: Vec<ContextEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ContextEntry {
    actor: Actor,
    max: u64,
    missing: Vec<u64>,
}

impl ContextEntry {
    fn contains(&self, counter: u64) -> bool {
        counter >= 1 && counter <= self.max && self.missing.binary_search(&counter).is_err()
    }

    /// Exact union of two entries for the same actor.
    ///
    /// Counters above the smaller max are covered only by the larger entry, so they are missing
    /// iff missing there; counters at or below it are missing iff missing in both. Either way a
    /// missing counter of the union is a missing counter of the larger entry, which is why only
    /// its list needs scanning.
    fn union(a: &ContextEntry, b: &ContextEntry) -> ContextEntry {
        let (big, small) = if a.max >= b.max { (a, b) } else { (b, a) };
        let missing = big
            .missing
            .iter()
            .copied()
            .filter(|&i| i > small.max || small.missing.binary_search(&i).is_ok())
            .collect();
        ContextEntry {
            actor: big.actor.clone(),
            max: big.max,
            missing,
        }
    }

    /// Whether every dot of `self` is in `other` (same actor assumed).
    fn le(&self, other: &ContextEntry) -> bool {
        // `self` always holds its own max. Beyond that, anything `other` lacks at or below
        // `self.max` must be lacking in `self` too.
        self.max <= other.max
            && other
                .missing
                .iter()
                .take_while(|&&i| i <= self.max)
                .all(|i| self.missing.binary_search(i).is_ok())
    }
}

// Tuples rather than structs so the per-actor overhead on the wire is just the values.
impl Serialize for ContextEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.actor, self.max, &self.missing).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ContextEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (actor, max, missing) = <(Actor, u64, Vec<u64>)>::deserialize(d)?;
        Ok(ContextEntry {
            actor,
            max,
            missing,
        })
    }
}

impl Serialize for Context {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

// Deserialization validates: contexts arrive from clients and peers, and every method here
// relies on the invariants (binary searches, sorted merges). Rejecting at the boundary means no
// caller can forget to.
impl<'de> Deserialize<'de> for Context {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ctx = Context {
            entries: Vec::deserialize(d)?,
        };
        ctx.validate().map_err(D::Error::custom)?;
        Ok(ctx)
    }
}

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, actor: &Actor) -> Option<&ContextEntry> {
        self.entries
            .binary_search_by(|e| e.actor.cmp(actor))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn contains(&self, dot: &Dot) -> bool {
        self.contains_counter(&dot.actor, dot.counter)
    }

    /// [`Context::contains`] of the dot `(actor, counter)`, for callers that hold its parts.
    pub(crate) fn contains_counter(&self, actor: &Actor, counter: u64) -> bool {
        self.entry(actor).is_some_and(|e| e.contains(counter))
    }

    /// A context from `(actor, max, missing)` entries already in canonical form (see
    /// [`Context`]), such as the store's packed copy of a context that was valid. Unchecked
    /// in release builds: this is for rebuilding, not for input.
    pub(crate) fn from_canonical(entries: impl Iterator<Item = (Actor, u64, Vec<u64>)>) -> Context {
        let ctx = Context {
            entries: entries
                .map(|(actor, max, missing)| ContextEntry {
                    actor,
                    max,
                    missing,
                })
                .collect(),
        };
        debug_assert_eq!(ctx.validate(), Ok(()));
        ctx
    }

    /// Number of actors with a dot here.
    pub(crate) fn actors(&self) -> usize {
        self.entries.len()
    }

    /// Highest counter of `actor` in this context (0 if none).
    pub fn max_counter(&self, actor: &Actor) -> u64 {
        self.entry(actor).map_or(0, |e| e.max)
    }

    /// Exact set union.
    pub fn union(&self, other: &Context) -> Context {
        let mut out = self.clone();
        out.union_with(other);
        out
    }

    /// Exact set union, in place.
    pub fn union_with(&mut self, other: &Context) {
        if other.entries.is_empty() {
            return;
        }
        let mine = std::mem::take(&mut self.entries);
        let mut merged = Vec::with_capacity(mine.len().max(other.entries.len()));
        let mut a = mine.into_iter().peekable();
        let mut b = other.entries.iter().peekable();
        loop {
            let ord = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => x.actor.cmp(&y.actor),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match ord {
                Ordering::Less => merged.extend(a.next()),
                Ordering::Greater => merged.extend(b.next().cloned()),
                Ordering::Equal => {
                    if let (Some(x), Some(y)) = (a.next(), b.next()) {
                        merged.push(ContextEntry::union(&x, y));
                    }
                }
            }
        }
        self.entries = merged;
    }

    /// Subset: every dot of `self` is in `other`.
    pub fn le(&self, other: &Context) -> bool {
        self.entries
            .iter()
            .all(|e| other.entry(&e.actor).is_some_and(|o| e.le(o)))
    }

    /// Per actor: `(actor, max, missing)`, meaning counters `1..=max` except `missing`.
    pub fn entries(&self) -> impl Iterator<Item = (&Actor, u64, &[u64])> {
        self.entries
            .iter()
            .map(|e| (&e.actor, e.max, e.missing.as_slice()))
    }

    /// Every dot, in `(actor, counter)` order. `O(max)` per actor: for tests and debugging.
    pub fn dots(&self) -> impl Iterator<Item = Dot> {
        self.entries.iter().flat_map(|e| {
            (1..=e.max)
                .filter(move |c| e.missing.binary_search(c).is_err())
                .map(move |counter| Dot {
                    actor: e.actor.clone(),
                    counter,
                })
        })
    }

    /// Replaces `actor`'s entry with "1..=max except `missing`" (removes it if `max == 0`).
    /// `missing` is normalized (sorted, deduplicated, clipped to `1..max`) so the invariants hold
    /// whatever the caller passes.
    pub(crate) fn set_entry(&mut self, actor: &Actor, max: u64, mut missing: Vec<u64>) {
        missing.sort_unstable();
        missing.dedup();
        missing.retain(|&m| m >= 1 && m < max);
        match self.entries.binary_search_by(|e| e.actor.cmp(actor)) {
            Ok(i) if max == 0 => {
                self.entries.remove(i);
            }
            Ok(i) => {
                self.entries[i].max = max;
                self.entries[i].missing = missing;
            }
            Err(_) if max == 0 => {}
            Err(i) => self.entries.insert(
                i,
                ContextEntry {
                    actor: actor.clone(),
                    max,
                    missing,
                },
            ),
        }
    }

    /// Removes one dot, keeping the representation canonical.
    fn remove(&mut self, dot: &Dot) {
        let Ok(i) = self.entries.binary_search_by(|e| e.actor.cmp(&dot.actor)) else {
            return;
        };
        let e = &mut self.entries[i];
        if !e.contains(dot.counter) {
            return;
        }
        if dot.counter < e.max {
            if let Err(pos) = e.missing.binary_search(&dot.counter) {
                e.missing.insert(pos, dot.counter);
            }
            return;
        }
        // Removing the max: the new max is the highest counter still present, and missing
        // counters above it are no longer worth listing. Missing counters are >= 1, so `max`
        // only decrements after a pop and cannot underflow.
        let mut max = e.max - 1;
        while e.missing.last() == Some(&max) {
            e.missing.pop();
            max -= 1;
        }
        if max == 0 {
            self.entries.remove(i);
        } else {
            e.max = max;
        }
    }

    /// Checks the representation invariants (see [`Context`]).
    pub(crate) fn validate(&self) -> Result<(), ContextError> {
        if self.entries.windows(2).any(|w| w[0].actor >= w[1].actor) {
            return Err(ContextError("actors not strictly ascending"));
        }
        for e in &self.entries {
            if e.max == 0 {
                return Err(ContextError("entry with max 0"));
            }
            let mut prev = 0;
            for &m in &e.missing {
                // `prev` starts at 0, so this also rejects a missing counter of 0.
                if m <= prev {
                    return Err(ContextError(
                        "missing counters not strictly ascending from 1",
                    ));
                }
                if m >= e.max {
                    return Err(ContextError("missing counter not below max"));
                }
                prev = m;
            }
        }
        Ok(())
    }

    /// Opaque, URL-safe string for clients:
    /// base64url(no pad) of `[format version] ++ msgpack(self) ++ crc32_le(everything before)`.
    pub fn encode(&self) -> String {
        let mut buf = vec![CONTEXT_FORMAT_VERSION];
        rmp_serde::encode::write(&mut buf, self)
            .expect("msgpack-encoding strings, integers and sequences into a Vec cannot fail");
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Inverse of [`Context::encode`]. Rejects (never panics on) anything that is not exactly an
    /// encoding of a valid context.
    pub fn decode(s: &str) -> Result<Context, ContextError> {
        if s.is_empty() {
            return Err(ContextError("empty"));
        }
        // Checked before decoding so hostile input costs nothing beyond this comparison.
        if s.len() > MAX_CONTEXT_BYTES {
            return Err(ContextError("too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| ContextError("not base64url"))?;
        let (framed, crc) = raw
            .split_last_chunk::<CRC_LEN>()
            .ok_or(ContextError("too short"))?;
        let (&version, payload) = framed.split_first().ok_or(ContextError("too short"))?;
        if version != CONTEXT_FORMAT_VERSION {
            return Err(ContextError("unsupported format version"));
        }
        if crc32fast::hash(framed) != u32::from_le_bytes(*crc) {
            return Err(ContextError("checksum mismatch"));
        }
        // Deserialize the raw entries (not `Context`, whose validation would bury the precise
        // reason inside an rmp error), then insist the payload was consumed exactly.
        let mut de = rmp_serde::Deserializer::new(payload);
        let entries = Vec::<ContextEntry>::deserialize(&mut de)
            .map_err(|_| ContextError("malformed payload"))?;
        if !de.get_ref().is_empty() {
            return Err(ContextError("trailing bytes"));
        }
        let ctx = Context { entries };
        ctx.validate()?;
        Ok(ctx)
    }
}

/// What a write carries besides its value. Boxed in [`Version`] and absent for plain writes,
/// so a version without metadata pays one null pointer for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The `Content-Type` the client gave, returned on reads.
    pub content_type: Option<Box<str>>,
    /// When the value stops being readable, in milliseconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl Meta {
    /// `None` when there is nothing to store.
    pub fn boxed(self) -> Option<Box<Meta>> {
        (self != Meta::default()).then(|| Box::new(self))
    }
}

/// A precondition on a write, checked by the coordinator on the versions it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// Always write.
    #[default]
    None,
    /// Only if no live value exists (HTTP `?if_absent=true`).
    IfAbsent,
    /// Only if the stored versions are exactly those this context covers (HTTP `If-Match`).
    IfMatch(Context),
}

impl Condition {
    /// Whether the condition holds on `set` for a reader at `now_ms`.
    pub fn holds(&self, set: &VersionSet, now_ms: u64) -> bool {
        match self {
            Condition::None => true,
            Condition::IfAbsent => set.live(now_ms).next().is_none(),
            Condition::IfMatch(ctx) => set.context() == *ctx,
        }
    }
}

/// One write: its own dot, its full causal history (which contains `dot`), the value
/// (None = tombstone, or an expired value already dropped) and its metadata.
///
/// Deserialization rejects a version whose history does not contain its own dot: such a version
/// could never be superseded through [`VersionSet::context`] and would linger as a sibling forever.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawVersion")]
pub struct Version {
    pub dot: Dot,
    pub history: Context,
    pub value: Option<Bytes>,
    pub meta: Option<Box<Meta>>,
}

/// Unvalidated wire form of [`Version`] (same shape as its derived `Serialize`).
#[derive(Deserialize)]
struct RawVersion {
    dot: Dot,
    history: Context,
    value: Option<Bytes>,
    #[serde(default)]
    meta: Option<Box<Meta>>,
}

impl TryFrom<RawVersion> for Version {
    type Error = ContextError;

    fn try_from(raw: RawVersion) -> Result<Self, ContextError> {
        if !raw.history.contains(&raw.dot) {
            return Err(ContextError("version history does not contain its own dot"));
        }
        Ok(Version {
            dot: raw.dot,
            history: raw.history,
            value: raw.value,
            meta: raw.meta,
        })
    }
}

impl Version {
    fn superseded_by(&self, other: &Version) -> bool {
        self.dot != other.dot && other.history.contains(&self.dot)
    }

    /// When this version expires (ms since the Unix epoch), if it does.
    pub fn expires_at(&self) -> Option<u64> {
        self.meta.as_ref().and_then(|m| m.expires_at)
    }

    /// The content type its writer gave, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.content_type.as_deref())
    }

    /// True if it holds a value that has not expired at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires_at().is_none_or(|t| t > now_ms)
    }
}

/// What a replica stores for a key: the versions no other version supersedes.
///
/// Invariant: sorted by dot, no duplicate dots, and no version's dot is contained in another
/// version's history. Deserialization re-establishes it (via [`VersionSet::from_versions`]), so
/// a peer cannot hand us a set that violates it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionSet {
    versions: Vec<Version>,
}

impl Serialize for VersionSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.versions.serialize(s)
    }
}

impl<'de> Deserialize<'de> for VersionSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(VersionSet::from_versions(Vec::deserialize(d)?))
    }
}

/// Keeps exactly the versions no other version in `vs` supersedes. `vs` must have unique dots.
/// Quadratic, but `vs` is a key's sibling set (a handful in practice).
fn keep_flags(vs: &[&Version]) -> Vec<bool> {
    vs.iter()
        .map(|v| !vs.iter().any(|w| v.superseded_by(w)))
        .collect()
}

impl VersionSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The set of this one version (any single version is a valid set).
    pub(crate) fn sole(version: Version) -> VersionSet {
        VersionSet {
            versions: vec![version],
        }
    }

    /// Normalizes arbitrary versions into a set: dedupe by dot (first wins: a dot names one
    /// write, so duplicates are copies), drop superseded versions, sort.
    pub fn from_versions(mut vs: Vec<Version>) -> VersionSet {
        vs.sort_by(|a, b| a.dot.cmp(&b.dot));
        vs.dedup_by(|later, earlier| later.dot == earlier.dot);
        let keep = keep_flags(&vs.iter().collect::<Vec<_>>());
        let versions = vs
            .into_iter()
            .zip(keep)
            .filter_map(|(v, k)| k.then_some(v))
            .collect();
        VersionSet { versions }
    }

    /// Union of all versions' histories: everything a reader of this set has seen.
    pub fn context(&self) -> Context {
        let mut ctx = Context::new();
        for v in &self.versions {
            ctx.union_with(&v.history);
        }
        ctx
    }

    /// Highest counter of `actor` in any version's history (0 if none).
    pub fn max_counter(&self, actor: &Actor) -> u64 {
        self.versions
            .iter()
            .map(|v| v.history.max_counter(actor))
            .max()
            .unwrap_or(0)
    }

    /// Merges `other` into `self`; returns whether `self` changed.
    ///
    /// Union by dot (keeping `self`'s copy: equal dots name the same write), then drop superseded
    /// versions. Commutative, associative and idempotent as long as dots are never reused (actor
    /// generations guarantee that) and histories are causally closed (`write` guarantees that).
    pub fn merge(&mut self, other: &VersionSet) -> bool {
        // Replicas mostly receive what they already hold (replication of a write they have,
        // anti-entropy, read repair): every dot of `other` already here means nothing changes.
        if other.versions.iter().all(|v| {
            self.versions
                .binary_search_by(|x| x.dot.cmp(&v.dot))
                .is_ok()
        }) {
            return false;
        }
        // One version on each side, one superseding the other: the common replication case,
        // decided without building the union.
        if let ([ours], [theirs]) = (&self.versions[..], &other.versions[..]) {
            match (ours.superseded_by(theirs), theirs.superseded_by(ours)) {
                (true, false) => {
                    self.versions[0] = theirs.clone();
                    return true;
                }
                (false, true) => return false,
                // Siblings, or (only with forged histories) each superseding the other.
                _ => {}
            }
        }
        let mine = std::mem::take(&mut self.versions);
        let original_len = mine.len();
        // (version, came from self)
        let mut union: Vec<(Version, bool)> =
            Vec::with_capacity(original_len + other.versions.len());
        let mut a = mine.into_iter().peekable();
        let mut b = other.versions.iter().peekable();
        loop {
            let ord = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => x.dot.cmp(&y.dot),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match ord {
                Ordering::Less => union.extend(a.next().map(|v| (v, true))),
                Ordering::Greater => union.extend(b.next().map(|v| (v.clone(), false))),
                Ordering::Equal => {
                    union.extend(a.next().map(|v| (v, true)));
                    b.next();
                }
            }
        }
        let keep = keep_flags(&union.iter().map(|(v, _)| v).collect::<Vec<_>>());
        let mut added = false;
        let mut kept_own = 0;
        self.versions = union
            .into_iter()
            .zip(keep)
            .filter(|&(_, k)| k)
            .map(|((v, own), _)| {
                if own {
                    kept_own += 1;
                } else {
                    added = true;
                }
                v
            })
            .collect();
        added || kept_own != original_len
    }

    /// Coordinator-side write by `actor` (which must be the replica storing this set; see the
    /// module docs). `ctx` is what the client has seen; `None` means "everything this replica
    /// has", so context-free writes coordinated by one replica never create siblings.
    ///
    /// The new version supersedes exactly the live versions whose dots are in `ctx`; every other
    /// live version stays as a sibling. Returns the new version's history, which is the context
    /// to hand back to the client.
    pub fn write(&mut self, actor: &Actor, ctx: Option<&Context>, value: Option<Bytes>) -> Context {
        self.write_above(actor, ctx, value, None, 0)
    }

    /// As [`VersionSet::write`], with the new counter above `floor` too. A replica passes
    /// the highest counter its actor ever minted (for any key): after it dropped a key (a
    /// purged tombstone, a handed-off segment) its local versions no longer show the
    /// counters it used, and reusing one would mint a dot that other replicas' histories
    /// already cover, so the write would be silently discarded there.
    pub fn write_above(
        &mut self,
        actor: &Actor,
        ctx: Option<&Context>,
        value: Option<Bytes>,
        meta: Option<Box<Meta>>,
        floor: u64,
    ) -> Context {
        // The common case: no version, or one the writer has seen, which the new version
        // then supersedes. The general path below gives the same result (a test checks it)
        // with several times the allocations: every step there is a context operation.
        if let Some((counter, history)) = self.write_over_seen(actor, ctx, floor) {
            // Exactly one slot: a set is often stored as it is, and a first push would
            // reserve four.
            self.versions.reserve_exact(1);
            self.versions.push(Version {
                dot: Dot {
                    actor: actor.clone(),
                    counter,
                },
                history: history.clone(),
                value,
                meta,
            });
            return history;
        }
        self.write_general(actor, ctx, value, meta, floor)
    }

    /// [`VersionSet::write_above`] when this set is empty, or holds one version that `ctx`
    /// (everything, for `None`) has seen: takes that version out and returns the new
    /// version's counter and history, or returns `None` and leaves the set alone.
    fn write_over_seen(
        &mut self,
        actor: &Actor,
        ctx: Option<&Context>,
        floor: u64,
    ) -> Option<(u64, Context)> {
        let own = self.max_counter(actor);
        let seen_max = match (&self.versions[..], ctx) {
            ([], ctx) => ctx.map_or(0, |c| c.max_counter(actor)),
            // Not with the counter saturated (forged contexts only): the new dot would
            // then be one the old version's history holds.
            ([_], _) if own == u64::MAX => return None,
            ([ours], None) if ours.history.contains(&ours.dot) => own,
            ([ours], Some(c)) if c.contains(&ours.dot) => c.max_counter(actor),
            _ => return None,
        };
        let n = own.max(seen_max).max(floor).saturating_add(1);
        // What the general path claims: the context, plus everything this replica knows
        // (the one version's history), with nothing unseen to leave out.
        let mut history = match self.versions.pop() {
            None => ctx.cloned().unwrap_or_default(),
            Some(ours) => {
                let mut history = ours.history;
                if let Some(c) = ctx {
                    history.union_with(c);
                }
                history
            }
        };
        history.set_entry(actor, n, Vec::new());
        Some((n, history))
    }

    /// [`VersionSet::write_above`], for any set.
    fn write_general(
        &mut self,
        actor: &Actor,
        ctx: Option<&Context>,
        value: Option<Bytes>,
        meta: Option<Box<Meta>>,
        floor: u64,
    ) -> Context {
        let local = self.context();
        let seen = ctx.unwrap_or(&local);
        // Saturating: only a forged context can get near u64::MAX (see module caveats).
        let n = self
            .max_counter(actor)
            .max(seen.max_counter(actor))
            .max(floor)
            .saturating_add(1);
        // Live siblings the writer has not seen. They (and only they) must stay out of the new
        // history. Versions are sorted by dot, so `actor`'s counters come out ascending.
        let unseen: Vec<&Dot> = self
            .versions
            .iter()
            .map(|v| &v.dot)
            .filter(|d| !seen.contains(d))
            .collect();
        // Everything else this replica knows of is superseded by some live version, so claiming
        // it loses nothing, and claiming it is what keeps the history causally closed (see
        // "Causal closure" in the module docs). For `None` this is just `local`.
        let mut history = seen.union(&local);
        for d in &unseen {
            history.remove(d);
        }
        // `actor`'s dots are all created and first stored here, so any below `n` that is not an
        // unseen live sibling is superseded (or is in `seen`): claim the whole range at once.
        // This also covers counters a `seen` from a reaped replica mentions but `local` lacks.
        let unseen_own = unseen
            .iter()
            .filter(|d| d.actor == *actor)
            .map(|d| d.counter)
            .collect();
        history.set_entry(actor, n, unseen_own);
        let version = Version {
            dot: Dot {
                actor: actor.clone(),
                counter: n,
            },
            history: history.clone(),
            value,
            meta,
        };
        self.merge(&VersionSet {
            versions: vec![version],
        });
        history
    }

    /// Values of the surviving non-tombstone versions, expired or not (see [`VersionSet::live`]).
    pub fn live_values(&self) -> impl Iterator<Item = &Bytes> {
        self.versions.iter().filter_map(|v| v.value.as_ref())
    }

    /// The versions a reader at `now_ms` sees: holding a value, and not expired.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &Version> {
        self.versions.iter().filter(move |v| v.is_live(now_ms))
    }

    /// Drops the values of versions expired at `now_ms`, keeping their dots, histories and
    /// expiry (so they stay expiring versions, see [`VersionSet::fingerprint`]). Returns
    /// whether anything was dropped.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        for v in &mut self.versions {
            if let Some(t) = v.expires_at()
                && t <= now_ms
                && v.value.is_some()
            {
                v.value = None;
                v.meta = Meta {
                    content_type: None,
                    expires_at: Some(t),
                }
                .boxed();
                changed = true;
            }
        }
        changed
    }

    /// The earliest expiry among versions that still hold a value: when [`VersionSet::expire`]
    /// has work to do.
    pub fn next_expiry(&self) -> Option<u64> {
        self.versions
            .iter()
            .filter(|v| v.value.is_some())
            .filter_map(Version::expires_at)
            .min()
    }

    /// Until when (ms since the Unix epoch, exclusive) some version holds a value: 0 if none
    /// does, `u64::MAX` if one never expires. A reader at `now` sees a live value iff
    /// `live_until > now`.
    pub fn live_until(&self) -> u64 {
        self.versions
            .iter()
            .filter(|v| v.value.is_some())
            .map(|v| v.expires_at().unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0)
    }

    /// True iff the set is non-empty and holds only tombstones.
    pub fn is_deleted(&self) -> bool {
        !self.versions.is_empty() && self.versions.iter().all(|v| v.value.is_none())
    }

    /// A 64-bit digest of `key` and this set, for anti-entropy: 0 for an empty set, never 0
    /// otherwise. A dot names exactly one write, so hashing the sorted dots (plus whether
    /// each is a delete) identifies the set without reading the values. An expiring write
    /// hashes as a write whether or not its value was dropped yet: expiry is decided by each
    /// replica's clock, not exchanged, so it must not look like a difference.
    pub fn fingerprint(&self, key: &[u8]) -> u64 {
        fingerprint_of(
            key,
            self.versions.iter().map(|v| {
                let written = v.value.is_some() || v.expires_at().is_some();
                (&v.dot.actor, v.dot.counter, written)
            }),
        )
    }
}

/// [`VersionSet::fingerprint`] of the set whose versions are `dots` in dot order, each with
/// whether it is a write (a value, or an expiring value already dropped) rather than a
/// delete. The store computes fingerprints from its packed form with this too.
pub(crate) fn fingerprint_of<'a>(
    key: &[u8],
    dots: impl IntoIterator<Item = (&'a Actor, u64, bool)>,
) -> u64 {
    // Chained one-shot hashes: on every store write this runs twice, and the streaming
    // hasher's setup cost dominated for inputs this small.
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    let mut dots = dots.into_iter().peekable();
    if dots.peek().is_none() {
        return 0;
    }
    let mut h = xxh3_64(key);
    for (actor, counter, written) in dots {
        let mut fixed = [0u8; 17];
        fixed[..8].copy_from_slice(&actor.generation.to_le_bytes());
        fixed[8..16].copy_from_slice(&counter.to_le_bytes());
        fixed[16] = written as u8;
        h = xxh3_64_with_seed(&fixed, h);
        h = xxh3_64_with_seed(actor.node.as_bytes(), h);
    }
    h.max(1)
}

#[cfg(test)]
mod tests;
