//! Compatibility between builds: which RPC protocol versions this build speaks, what it tells
//! its peers about itself, and which new behaviours wait until every member supports them.
//!
//! **The contract.** Every build interoperates with the previous release
//! ([`PREVIOUS_RELEASE`], also recorded in `Cargo.toml` under `[package.metadata.releases]`):
//! a ring may hold both at once, in any mix, while it is upgraded one node at a time or rolled
//! back. That covers the RPC protocol, the gossip keys and the data dir.
//!
//! **Wire.** Each side's hello ([`crate::rpc::Hello`]) carries the range of protocol
//! versions it speaks ([`Protocols`]); a connection uses the highest version both ends speak
//! ([`Protocols::negotiate`]), and a peer whose range does not meet ours is refused. The
//! previous release's hello has no range: it speaks exactly protocol 5 ([`Protocols::LEGACY`]),
//! and reads our hello because we send it as a MessagePack *map*, whose unknown keys it skips
//! (every other message is an array, whose length is checked, so a message the previous
//! release reads must keep its exact fields).
//!
//! **Gossip.** Each node gossips its build version, its protocol range and its features under
//! [`KEY_BUILD`], [`KEY_PROTOCOL`] and [`KEY_FEATURES`]. The previous release reads only the
//! keys it knows and skips these; a member that gossips none of them is taken to be the
//! previous release ([`Build::LEGACY`]).
//!
//! **Feature gates.** A change that an older build would misread (a new placement rule, a new
//! record on disk, a new request) has a name in [`FEATURES`] and waits until it is *active*:
//! supported by every member of the ring, dead members within their grace included, since
//! they are expected back ([`active`]). A member whose features are unknown (the previous
//! release, or a dead member only the roster remembers) supports none. The active set is
//! recomputed with every view, so a node of an older build that joins closes the gate again;
//! until a gate opens, each build writes only formats the previous release reads, which is
//! what makes rolling one node back safe.
//!
//! This build (0.2.0) changes no disk format since 0.1.0. On the wire: the hello's range, new
//! gossip keys (these three, the zone and the memory use), which the previous release skips,
//! and protocol 6, whose answers may carry [`crate::Error::MemoryFull`]; a connection at
//! protocol 5 gets [`crate::Error::Rejected`] in its place ([`crate::rpc::answer_for`]). Its
//! one gated behaviour is zone placement ([`FEATURE_ZONES`]).

use std::collections::BTreeSet;
use std::sync::Arc;

/// This build's version (the crate's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The release every build interoperates with: its version and commit. Kept equal to
/// `Cargo.toml`'s `[package.metadata.releases]` (a unit test checks), whose newest entry
/// `.ci/run` builds for `tests/upgrade.rs`.
pub const PREVIOUS_RELEASE: (&str, &str) = ("0.1.0", "fc31b74");

/// The oldest RPC protocol version this build speaks: the previous release's.
pub const PROTOCOL_MIN: u32 = 5;

/// The newest RPC protocol version this build speaks. A change to any message that the
/// previous version's decoder would not read the same way gets a new version here, and the
/// encoder keeps the old form for connections that negotiated the old version.
pub const PROTOCOL_MAX: u32 = 6;

/// Gossip key: the build version ([`VERSION`]).
pub const KEY_BUILD: &str = "build";
/// Gossip key: the protocol range ([`Protocols::encode`]).
pub const KEY_PROTOCOL: &str = "protocol";
/// Gossip key: the supported features, comma-separated.
pub const KEY_FEATURES: &str = "features";

/// Zone-aware placement ([`crate::ring`]): a key's homes spread over zones. Older builds
/// place by ring position alone, so until every member places by zones, all do as the older
/// ones do, and the ring never disagrees on homes.
pub const FEATURE_ZONES: &str = "zones";

/// Behaviours behind a feature gate that this build supports. A new gated behaviour adds its
/// name here and checks [`crate::membership::View::feature_active`] (or [`active`]) before it
/// acts.
pub const FEATURES: &[&str] = &[FEATURE_ZONES];

/// A range of RPC protocol versions, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Protocols {
    pub min: u32,
    pub max: u32,
}

impl Protocols {
    /// What this build speaks.
    pub const OURS: Protocols = Protocols {
        min: PROTOCOL_MIN,
        max: PROTOCOL_MAX,
    };

    /// What a peer that says nothing of a range speaks: the previous release, protocol 5.
    pub const LEGACY: Protocols = Protocols { min: 5, max: 5 };

    /// The version a connection between `self` and `theirs` uses: the highest both speak, or
    /// `None` if the ranges do not meet.
    pub fn negotiate(self, theirs: Protocols) -> Option<u32> {
        let low = self.min.max(theirs.min);
        let high = self.max.min(theirs.max);
        (low <= high).then_some(high)
    }

    /// `5`, or `5-6` for a range: as gossiped, and as `/cluster/members` shows it.
    pub fn encode(self) -> String {
        if self.min == self.max {
            self.max.to_string()
        } else {
            format!("{}-{}", self.min, self.max)
        }
    }

    /// Parses [`Protocols::encode`]; `None` for anything else (an empty or reversed range).
    pub fn decode(s: &str) -> Option<Protocols> {
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let v = s.trim().parse().ok()?;
                (v, v)
            }
        };
        (min <= max).then_some(Protocols { min, max })
    }
}

impl std::fmt::Display for Protocols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// What one member said of its build in gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// Its version; `None` for a build that does not gossip it (the previous release).
    pub version: Option<Arc<str>>,
    pub protocols: Protocols,
    pub features: BTreeSet<Arc<str>>,
}

impl Build {
    /// A member that gossips nothing of its build: the previous release.
    pub const LEGACY: Build = Build {
        version: None,
        protocols: Protocols::LEGACY,
        features: BTreeSet::new(),
    };

    /// This build.
    pub fn ours() -> Build {
        Build {
            version: Some(Arc::from(VERSION)),
            protocols: Protocols::OURS,
            features: FEATURES.iter().map(|f| Arc::from(*f)).collect(),
        }
    }

    /// The gossip keys and values that describe this build.
    pub fn own_keys() -> [(&'static str, String); 3] {
        Build::ours().keys()
    }

    /// The gossip keys and values that describe this build ([`Build::from_keys`] reads
    /// them back).
    pub fn keys(&self) -> [(&'static str, String); 3] {
        let features: Vec<&str> = self.features.iter().map(|f| &**f).collect();
        [
            (
                KEY_BUILD,
                self.version.as_deref().unwrap_or_default().to_string(),
            ),
            (KEY_PROTOCOL, self.protocols.encode()),
            (KEY_FEATURES, features.join(",")),
        ]
    }

    /// A member's build from its gossiped keys (`get` looks one up). Missing or unreadable
    /// keys fall back to [`Build::LEGACY`]'s values, which gate nothing open.
    pub fn from_keys<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Build {
        let protocols = get(KEY_PROTOCOL)
            .and_then(Protocols::decode)
            .unwrap_or(Protocols::LEGACY);
        let features = get(KEY_FEATURES)
            .map(|f| {
                f.split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(Arc::from)
                    .collect()
            })
            .unwrap_or_default();
        Build {
            version: get(KEY_BUILD).filter(|v| !v.is_empty()).map(Arc::from),
            protocols,
            features,
        }
    }

    /// The version for display: `<0.2.0` for a build that does not gossip one.
    pub fn version_label(&self) -> &str {
        self.version.as_deref().unwrap_or("<0.2.0")
    }
}

impl Default for Build {
    fn default() -> Self {
        Build::LEGACY
    }
}

/// The features every one of `members` supports: the ring's active set. Empty for no members
/// (a node always counts itself, so a real view is never empty).
pub fn active<'a>(members: impl IntoIterator<Item = &'a Build>) -> BTreeSet<Arc<str>> {
    let mut members = members.into_iter();
    let Some(first) = members.next() else {
        return BTreeSet::new();
    };
    let mut set = first.features.clone();
    for m in members {
        set.retain(|f| m.features.contains(f));
        if set.is_empty() {
            break;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u32, max: u32) -> Protocols {
        Protocols { min, max }
    }

    #[test]
    fn a_connection_uses_the_highest_version_both_speak() {
        // Exhaustive over small ranges: the answer is in both ranges, and no higher version is.
        for (a, b, c, d) in (1..6u32).flat_map(|a| {
            (a..6).flat_map(move |b| (1..6).flat_map(move |c| (c..6).map(move |d| (a, b, c, d))))
        }) {
            let (ours, theirs) = (range(a, b), range(c, d));
            let got = ours.negotiate(theirs);
            assert_eq!(got, theirs.negotiate(ours), "symmetric");
            let both: Vec<u32> = (a..=b).filter(|v| (c..=d).contains(v)).collect();
            assert_eq!(got, both.last().copied(), "{ours} with {theirs}");
        }
        // The previous release and this build meet at 5; a build speaking only 6 is refused.
        assert_eq!(Protocols::OURS.negotiate(Protocols::LEGACY), Some(5));
        assert_eq!(range(6, 7).negotiate(Protocols::LEGACY), None);
        assert_eq!(range(5, 6).negotiate(Protocols::LEGACY), Some(5));
    }

    #[test]
    fn ranges_round_trip_through_their_text_and_garbage_is_refused() {
        for r in [range(5, 5), range(5, 6), range(1, 100)] {
            assert_eq!(Protocols::decode(&r.encode()), Some(r));
        }
        assert_eq!(range(5, 5).encode(), "5");
        assert_eq!(range(5, 7).encode(), "5-7");
        for bad in ["", "-", "6-5", "x", "5-", "-5", "5-6-7", "99999999999"] {
            assert_eq!(Protocols::decode(bad), None, "{bad:?}");
        }
    }

    fn build(features: &[&str]) -> Build {
        Build {
            version: Some(Arc::from("9.9.9")),
            protocols: Protocols::OURS,
            features: features.iter().map(|f| Arc::from(*f)).collect(),
        }
    }

    fn names(set: &BTreeSet<Arc<str>>) -> Vec<&str> {
        set.iter().map(|f| &**f).collect()
    }

    #[test]
    fn a_feature_is_active_only_when_every_member_supports_it() {
        let (new, newer, old) = (build(&["a", "b"]), build(&["a", "b", "c"]), Build::LEGACY);
        assert_eq!(names(&active([&new, &newer])), ["a", "b"]);
        // One member of the previous release (alive, or dead within its grace: the caller
        // passes every member it keeps) closes every gate.
        assert!(active([&new, &newer, &old]).is_empty());
        // Removing it opens them again.
        assert_eq!(names(&active([&newer, &newer])), ["a", "b", "c"]);
        assert!(active([]).is_empty());
        // Every subset of members: active = the intersection of their sets.
        let all = [build(&["a"]), build(&["a", "b"]), build(&["b"]), build(&[])];
        for mask in 1u32..16 {
            let chosen: Vec<&Build> = (0..4)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| &all[i])
                .collect();
            let got = active(chosen.iter().copied());
            for f in ["a", "b"] {
                let everyone = chosen.iter().all(|b| b.features.contains(f));
                assert_eq!(got.contains(f), everyone, "mask {mask:b}, feature {f}");
            }
        }
    }

    #[test]
    fn a_build_reads_back_from_its_keys_and_missing_keys_mean_the_previous_release() {
        let keys = Build::own_keys();
        let get = |k: &str| keys.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(Build::from_keys(get), Build::ours());
        assert_eq!(Build::from_keys(|_| None), Build::LEGACY);
        assert_eq!(Build::LEGACY.version_label(), "<0.2.0");
        let odd = Build::from_keys(|k| match k {
            KEY_PROTOCOL => Some("garbage"),
            KEY_FEATURES => Some(" x, ,y ,"),
            KEY_BUILD => Some(""),
            _ => None,
        });
        assert_eq!(odd.protocols, Protocols::LEGACY);
        assert_eq!(names(&odd.features), ["x", "y"]);
        assert_eq!(odd.version, None);
    }

    /// `Cargo.toml` records the releases; the previous release here must be its newest entry,
    /// which `.ci/run` builds for the upgrade test.
    #[test]
    fn the_previous_release_matches_the_cargo_metadata() {
        let manifest = include_str!("../Cargo.toml");
        let table = manifest
            .split("[package.metadata.releases]")
            .nth(1)
            .expect("a [package.metadata.releases] table");
        let entries: Vec<(&str, &str)> = table
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.trim().trim_matches('"'), v.trim().trim_matches('"')))
            })
            .collect();
        let (version, commit) = PREVIOUS_RELEASE;
        assert_eq!(entries.last(), Some(&(version, commit)));
        assert_ne!(
            VERSION, version,
            "this build is newer than the previous release"
        );
    }
}
