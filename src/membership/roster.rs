//! The roster of down nodes: how the ring keeps a dead node's place for
//! `--dead-node-grace-secs` while chitchat forgets dead generations within seconds.
//!
//! Every start of a node is a new chitchat generation, and chitchat lists every generation it
//! holds in every digest. Kept for the whole grace period (24 h), the generations a
//! crash-looping node leaves behind would grow each digest by ~43 B per restart, past the
//! largest UDP datagram after ~1,500 restarts. So chitchat's own grace is short
//! ([`super::FORGET_DEAD_GENERATION`]), and the memory that a node id is down, which the ring
//! needs, lives here instead: one entry per node *id*, never per generation.
//!
//! Each node gossips, under the key [`super::KEY_DOWN`], the members it sees dead: its own
//! observations and what it read in its peers' rosters. A node that learns of a down member
//! from a roster adds it to its view as dead, with the generation and addresses the roster
//! carries, until a newer generation of that id shows up in gossip or the grace since it died
//! runs out. Nodes that join later learn of it the same way, from any live peer.
//!
//! Pure code: the view task feeds it chitchat's state and the clock.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use std::sync::Arc;

use super::{Member, Status, View};
use crate::compat::Build;
use crate::ring::{NodeId, Zone};

/// One down member, as rosters carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Down {
    pub id: NodeId,
    /// The generation seen dead: a newer one of the same id supersedes the entry.
    #[serde(rename = "gen")]
    pub generation: u64,
    pub gossip: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<SocketAddr>,
    /// What it last said of itself (`alive`, `stopping`, ...).
    pub status: Status,
    /// When it was first seen dead, in wall-clock milliseconds since the Unix epoch: the
    /// grace runs from here, on every node alike (up to their clocks' skew).
    pub since: u64,
    /// Its zone: a dead member keeps its place in a zoned ring. Absent from rosters of
    /// builds before 0.2.0, which skip it (unknown fields of an entry are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<Zone>,
    /// Its build keys as it gossiped them ([`crate::compat`]): a node that knows it only from
    /// rosters still knows which feature gates it holds shut. Absent for a build before 0.2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BTreeMap<String, String>>,
}

impl Down {
    /// Its build, or the previous release's if the roster does not say.
    fn build(&self) -> Arc<Build> {
        Arc::new(match &self.build {
            Some(keys) => Build::from_keys(|k| keys.get(k).map(String::as_str)),
            None => Build::LEGACY,
        })
    }
}

/// A roster as gossiped: JSON, so a node id may hold any character.
pub fn encode(roster: &BTreeMap<NodeId, Down>) -> String {
    let entries: Vec<&Down> = roster.values().collect();
    serde_json::to_string(&entries).unwrap_or_else(|_| "[]".into())
}

/// A peer's roster; `None` if it is not one (gossip is authenticated when the ring has a
/// secret, so this is a peer of another version, or a bug: the caller skips it).
pub fn decode(raw: &str) -> Option<Vec<Down>> {
    serde_json::from_str(raw).ok()
}

/// What [`Merge::apply`] judges rosters by: this node, what it saw and gossiped last, and
/// the time.
pub struct Merge<'a> {
    /// This node's id: entries about itself are ignored.
    pub own: &'a str,
    /// The previous view: a member dead in it keeps its `dead_since`.
    pub prev: Option<&'a View>,
    /// What this node gossiped last: an entry that still holds keeps its `since`, so the
    /// gossiped roster only changes when the set of down members does.
    pub prev_roster: &'a BTreeMap<NodeId, Down>,
    /// Wall-clock milliseconds since the Unix epoch, and the same moment by tokio's clock.
    pub now_ms: u64,
    pub now: Instant,
    /// `--dead-node-grace-secs`: how long after its death a member is remembered.
    pub grace: Duration,
    /// The generations this node has seen alive. Only their deaths are its to report: a
    /// member it has only just heard of is not dead, merely not confirmed alive yet, and
    /// listing every such member while a large ring forms would gossip rosters of the whole
    /// ring.
    pub seen_alive: &'a HashSet<(NodeId, u64)>,
}

impl Merge<'_> {
    /// Adds to `members` (built from chitchat's state) the down members that `rosters` name
    /// and that chitchat no longer holds, and returns the roster this node gossips: every
    /// member seen dead, except this node itself and nodes that left, whose grace has not
    /// run out.
    pub fn apply<'r>(
        &self,
        members: &mut BTreeMap<NodeId, Member>,
        rosters: impl Iterator<Item = &'r str>,
    ) -> BTreeMap<NodeId, Down> {
        let Merge {
            own,
            prev,
            prev_roster,
            now_ms,
            now,
            grace,
            seen_alive,
        } = *self;
        let mut from_rosters = HashSet::new();
        let expired = |since: u64| now_ms.saturating_sub(since) > grace.as_millis() as u64;
        for raw in rosters {
            for down in decode(raw).into_iter().flatten() {
                // Several rosters may name one down member, some from builds that do not
                // carry its zone and build: take them from whichever does.
                if from_rosters.contains(&down.id)
                    && let Some(m) = members.get_mut(&down.id)
                    && m.generation == down.generation
                {
                    if m.build.version.is_none() && down.build.is_some() {
                        m.build = down.build();
                    }
                    if let Some(zone) = down.zone.clone().filter(|_| down.build.is_some()) {
                        m.zone = zone;
                    }
                    continue;
                }
                let superseded = members
                    .get(&down.id)
                    .is_some_and(|m| m.generation >= down.generation);
                if &*down.id == own || superseded || expired(down.since) {
                    continue;
                }
                // Kept dead since the previous view if it was the same generation then.
                let dead_since = prev
                    .and_then(|p| p.members.get(&down.id))
                    .filter(|m| !m.alive && m.generation == down.generation)
                    .and_then(|m| m.dead_since)
                    .or_else(|| {
                        now.checked_sub(Duration::from_millis(now_ms.saturating_sub(down.since)))
                    })
                    .unwrap_or(now);
                // Its build and zone as last gossiped, if this node saw that generation, else
                // as the roster says; a build nobody knows gates nothing open
                // (`crate::compat`).
                let seen = prev
                    .and_then(|p| p.members.get(&down.id))
                    .filter(|m| m.generation == down.generation);
                let build = seen.map_or_else(|| down.build(), |m| m.build.clone());
                let zone =
                    seen.map_or_else(|| super::zone_of(down.zone.as_deref()), |m| m.zone.clone());
                from_rosters.insert(down.id.clone());
                members.insert(
                    down.id.clone(),
                    Member {
                        id: down.id.clone(),
                        generation: down.generation,
                        gossip: down.gossip,
                        http: down.http,
                        rpc: down.rpc,
                        alive: false,
                        status: down.status.clone(),
                        dead_since: Some(dead_since),
                        watch: None,
                        build,
                        zone,
                        memory: None,
                    },
                );
            }
        }
        let mut roster = BTreeMap::new();
        for m in members.values() {
            let seen_dead =
                from_rosters.contains(&m.id) || seen_alive.contains(&(m.id.clone(), m.generation));
            if m.alive || !seen_dead || &*m.id == own || m.status == Status::Leaving {
                continue;
            }
            let since = match prev_roster.get(&m.id) {
                Some(d) if d.generation == m.generation => d.since,
                _ => {
                    let dead_for = m
                        .dead_since
                        .map_or(Duration::ZERO, |t| now.duration_since(t));
                    now_ms.saturating_sub(dead_for.as_millis() as u64)
                }
            };
            if expired(since) {
                continue;
            }

            roster.insert(
                m.id.clone(),
                Down {
                    id: m.id.clone(),
                    generation: m.generation,
                    gossip: m.gossip,
                    http: m.http,
                    rpc: m.rpc,
                    status: m.status.clone(),
                    since,
                    zone: Some(m.zone.clone()),
                    build: m.build.version.is_some().then(|| {
                        m.build
                            .keys()
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect()
                    }),
                },
            );
        }
        roster
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Status;

    const GRACE: Duration = Duration::from_secs(3600);

    /// Every generation of the members the tests build alive or dead.
    fn all_seen() -> &'static HashSet<(NodeId, u64)> {
        static SEEN: std::sync::OnceLock<HashSet<(NodeId, u64)>> = std::sync::OnceLock::new();
        SEEN.get_or_init(|| {
            let ids = ["a", "b", "c", "l", "s"];
            ids.iter()
                .flat_map(|id| (1..=6).map(move |g| (NodeId::from(*id), g)))
                .collect()
        })
    }

    /// A merge at `own`, at `now_ms` (and `now`), after gossiping `prev_roster`.
    fn at<'a>(
        own: &'a str,
        prev_roster: &'a BTreeMap<NodeId, Down>,
        now_ms: u64,
        now: Instant,
    ) -> Merge<'a> {
        Merge {
            own,
            prev: None,
            prev_roster,
            now_ms,
            now,
            grace: GRACE,
            seen_alive: all_seen(),
        }
    }

    fn member(id: &str, generation: u64, alive: bool, now: Instant) -> Member {
        Member {
            id: id.into(),
            generation,
            gossip: ([10, 0, 0, 1], 7000 + generation as u16).into(),
            http: Some(([10, 0, 0, 1], 8000).into()),
            rpc: None,
            alive,
            status: Status::Alive,
            dead_since: (!alive).then_some(now),
            watch: None,
            build: Default::default(),
            zone: crate::membership::zone_of(None),
            memory: None,
        }
    }

    fn members(list: &[Member]) -> BTreeMap<NodeId, Member> {
        list.iter().map(|m| (m.id.clone(), m.clone())).collect()
    }

    #[test]
    fn a_dead_member_is_gossiped_and_restored_where_chitchat_forgot_it() {
        let now = Instant::now();
        let t = 1_000_000;
        // a sees c dead: a's roster names c, with when it died.
        let mut at_a = members(&[member("a", 1, true, now), member("c", 5, false, now)]);
        let roster = at("a", &BTreeMap::new(), t, now).apply(&mut at_a, std::iter::empty());
        assert_eq!(roster.keys().map(|k| &**k).collect::<Vec<_>>(), ["c"]);
        assert_eq!(roster["c"].since, t);
        let raw = encode(&roster);

        // b joined after chitchat forgot c: it learns c from a's roster, dead, same addresses.
        let mut at_b = members(&[member("a", 1, true, now), member("b", 2, true, now)]);
        let later = now + Duration::from_secs(30);
        let b_roster = at("b", &BTreeMap::new(), t + 30_000, later)
            .apply(&mut at_b, [raw.as_str()].into_iter());
        let c = &at_b["c"];
        assert!(!c.alive);
        assert_eq!(
            (c.generation, c.gossip, c.http),
            (5, at_a["c"].gossip, at_a["c"].http)
        );
        assert_eq!(
            c.dead_since,
            Some(now),
            "dead since c died, not since b heard of it"
        );
        // b gossips c on, with the same time of death, so the grace ends alike everywhere.
        assert_eq!(b_roster["c"].since, t);
        // And it is stable: the same inputs give the same roster.
        let again = at("b", &b_roster, t + 31_000, later + Duration::from_secs(1))
            .apply(&mut at_b.clone(), [raw.as_str()].into_iter());
        assert_eq!(again, b_roster);
    }

    /// A member known only from rosters keeps its zone and its build (so its place in a zoned
    /// ring, and the feature gates it holds shut or open); a roster of the previous release,
    /// which carries neither, does not erase them, and one that does fills them in.
    #[test]
    fn a_restored_member_keeps_its_zone_and_build() {
        let now = Instant::now();
        let mut c = member("c", 5, false, now);
        c.zone = Zone::from("rack-2");
        c.build = Arc::new(Build::ours());
        let mut at_a = members(&[member("a", 1, true, now), c]);
        let full =
            encode(&at("a", &BTreeMap::new(), 1_000, now).apply(&mut at_a, std::iter::empty()));
        // The same entry as the previous release gossips it: no zone, no build.
        let mut bare: Vec<serde_json::Value> = serde_json::from_str(&full).unwrap();
        for e in &mut bare {
            e.as_object_mut()
                .unwrap()
                .retain(|k, _| k != "zone" && k != "build");
        }
        let bare = serde_json::to_string(&bare).unwrap();
        assert!(
            decode(&bare).is_some(),
            "the previous release's entries still decode"
        );
        for rosters in [vec![full.as_str()], vec![bare.as_str(), full.as_str()]] {
            let mut at_b = members(&[member("a", 1, true, now), member("b", 2, true, now)]);
            at("b", &BTreeMap::new(), 2_000, now).apply(&mut at_b, rosters.into_iter());
            assert_eq!(&*at_b["c"].zone, "rack-2");
            assert_eq!(*at_b["c"].build, Build::ours());
        }
        // Known only from the previous release's roster: default zone, no features.
        let mut at_b = members(&[member("a", 1, true, now), member("b", 2, true, now)]);
        at("b", &BTreeMap::new(), 2_000, now).apply(&mut at_b, [bare.as_str()].into_iter());
        assert_eq!(&*at_b["c"].zone, crate::ring::DEFAULT_ZONE);
        assert_eq!(*at_b["c"].build, Build::LEGACY);
    }

    #[test]
    fn a_newer_generation_supersedes_the_entry() {
        let now = Instant::now();
        let old = Down {
            id: "c".into(),
            generation: 5,
            gossip: ([10, 0, 0, 3], 7000).into(),
            http: None,
            rpc: None,
            status: Status::Alive,
            since: 1_000,
            zone: None,
            build: None,
        };
        let raw = encode(&[(old.id.clone(), old.clone())].into_iter().collect());
        // c restarted: gossip has generation 6 alive. The roster's generation 5 is ignored,
        // and nobody gossips c as down any more.
        let mut view = members(&[member("a", 1, true, now), member("c", 6, true, now)]);
        let roster =
            at("a", &BTreeMap::new(), 2_000, now).apply(&mut view, [raw.as_str()].into_iter());
        assert!(view["c"].alive && view["c"].generation == 6);
        assert!(roster.is_empty());
        // An older generation still in chitchat's state loses to the roster's newer one.
        let mut view = members(&[member("a", 1, true, now), member("c", 4, false, now)]);
        at("a", &BTreeMap::new(), 2_000, now).apply(&mut view, [raw.as_str()].into_iter());
        assert_eq!(view["c"].generation, 5);
    }

    #[test]
    fn the_grace_ends_the_entry_and_self_and_leavers_are_never_listed() {
        let now = Instant::now();
        let mut leaver = member("l", 3, false, now);
        leaver.status = Status::Leaving;
        let mut stopping = member("s", 4, false, now);
        stopping.status = Status::Stopping;
        let mut view = members(&[member("a", 1, true, now), leaver, stopping]);
        let roster = at("a", &BTreeMap::new(), 10_000, now).apply(&mut view, std::iter::empty());
        // A node stopped for now keeps its place; one that left does not.
        assert_eq!(roster.keys().map(|k| &**k).collect::<Vec<_>>(), ["s"]);
        assert_eq!(roster["s"].status, Status::Stopping);

        // Entries about this node itself are ignored: it knows it is up.
        let mut me_dead = roster["s"].clone();
        me_dead.id = "a".into();
        let raw = encode(&[(me_dead.id.clone(), me_dead)].into_iter().collect());
        let mut view = members(&[member("a", 1, true, now)]);
        at("a", &BTreeMap::new(), 10_000, now).apply(&mut view, [raw.as_str()].into_iter());
        assert!(view["a"].alive);

        // Past the grace, an entry is neither restored nor gossiped: the ring drops the node.
        let raw = encode(&roster);
        let past = 10_000 + GRACE.as_millis() as u64 + 1;
        let mut view = members(&[member("a", 1, true, now)]);
        let out = at("a", &BTreeMap::new(), past, now).apply(&mut view, [raw.as_str()].into_iter());
        assert!(!view.contains_key("s") && out.is_empty());
        let mut view = members(&[member("a", 1, true, now), member("s", 4, false, now)]);
        let out = at("a", &roster, past, now).apply(&mut view, std::iter::empty());
        assert!(
            out.is_empty(),
            "a member dead past the grace is not gossiped on"
        );
    }

    #[test]
    fn a_member_never_seen_alive_is_not_reported_dead() {
        let now = Instant::now();
        // x has only just been heard of: not alive yet, but not seen dying either.
        let mut view = members(&[member("a", 1, true, now), member("x", 9, false, now)]);
        let roster = at("a", &BTreeMap::new(), 5_000, now).apply(&mut view, std::iter::empty());
        assert!(roster.is_empty(), "{roster:?}");
        // Once x was seen alive, its death is reported.
        let seen: HashSet<(NodeId, u64)> = [(NodeId::from("x"), 9)].into_iter().collect();
        let none = BTreeMap::new();
        let merge = Merge {
            seen_alive: &seen,
            ..at("a", &none, 5_000, now)
        };
        assert!(merge.apply(&mut view, std::iter::empty()).contains_key("x"));
    }

    #[test]
    fn garbage_is_skipped() {
        let now = Instant::now();
        let mut view = members(&[member("a", 1, true, now)]);
        for raw in ["", "{", "[1,2]", "null", "[{\"id\":\"x\"}]"] {
            let out = at("a", &BTreeMap::new(), 1, now).apply(&mut view, [raw].into_iter());
            assert!(out.is_empty() && view.len() == 1, "{raw:?}");
        }
        assert_eq!(decode("[]"), Some(vec![]));
    }
}
