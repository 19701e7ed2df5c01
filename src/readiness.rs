//! Readiness: whether a node can serve requests at its default quorums, as a list of named
//! conditions (`GET /ready`).
//!
//! Liveness (`/health`) only says the process answers HTTP. Readiness says a request sent to
//! this node will find its quorum, so an orchestrator, a load balancer or a script can wait
//! for it before sending traffic, and a rolling restart can wait for it before stopping the
//! next node. Each condition has a name, whether it holds, and a detail a person can act on;
//! the first unmet one is the `reason`. New reasons to be unready (loading a data dir, say)
//! are new conditions here.
//!
//! | condition | holds when |
//! |---|---|
//! | `gossip` | the node heard gossip from a seed (always, with no seed but itself) |
//! | `quorum` | it sees at least max(R, W) serving members, itself included, and fewer than N ring members that cannot serve, so every key has a serving home replica |
//! | `caught_up` | after its start it saw serving every member its serving peers route to (asked over RPC: its own view lags theirs by a gossip round or two), then ran one anti-entropy exchange with every serving peer it shares data with, so a node restarted empty has its copies back |
//! | `announced` | every serving peer sees it serving (asked over RPC), so the next node of a rolling restart is stopped only once this one carries its share |
//! | `serving` | it is not stopping (SIGTERM) or leaving the ring |
//!
//! A node announces the member status `joining` until `gossip` and `quorum` (counting joining
//! members as well, so a whole ring can start at once) and `caught_up` hold; then it announces
//! `alive`, and peers start routing client requests to it ([`crate::membership`]). It waits
//! for them to do so before it says ready. The start-up moves forward only ([`Startup`]):
//! once ready, only `quorum` and `serving` can turn it unready again. Everything here is
//! pure: the node gathers the inputs, this module decides.

use serde::Serialize;

use crate::membership::View;

/// Where a node's start-up stands. It moves forward only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// Waiting for `gossip` and `quorum` before it catches up.
    Waiting,
    /// Waiting to see serving every member its peers route to (`seen` of `of`), before it
    /// catches up with them.
    Learning { seen: usize, of: usize },
    /// Exchanging with peers by anti-entropy: `done` of `of` finished.
    CatchingUp { done: usize, of: usize },
    /// Announced `alive`; `seen_by` of the `of` serving peers already route to it.
    Announcing { seen_by: usize, of: usize },
    /// Caught up, and every serving peer sees it serving.
    Done,
}

/// One named condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Every condition, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub conditions: Vec<Condition>,
}

impl Readiness {
    /// True when every condition holds.
    pub fn is_ready(&self) -> bool {
        self.conditions.iter().all(|c| c.ok)
    }

    /// The detail of the first condition that does not hold.
    pub fn reason(&self) -> Option<&str> {
        self.conditions
            .iter()
            .find(|c| !c.ok)
            .map(|c| c.detail.as_str())
    }

    /// True when the named condition holds.
    pub fn holds(&self, name: &str) -> bool {
        self.conditions.iter().any(|c| c.name == name && c.ok)
    }
}

/// The quorum settings readiness is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Quorums {
    /// N.
    pub replicas: usize,
    /// R.
    pub read: usize,
    /// W.
    pub write: usize,
}

/// Which members count as able to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Serving members only (`alive`): what `/ready` asks.
    Serving,
    /// Joining members too: what a joining node asks before it announces `alive`, so that a
    /// whole ring starting at once does not wait on itself.
    Up,
}

/// The `quorum` condition for node `me` in `view`. `me_serves` says whether this node counts
/// itself: its own status in the view lags its decision by up to a gossip round.
pub fn quorum(view: &View, me: &str, me_serves: bool, q: Quorums, counting: Counting) -> Condition {
    let counts = |id: &str| {
        if id == me {
            me_serves
        } else {
            match counting {
                Counting::Serving => view.is_alive(id),
                Counting::Up => view.is_up(id),
            }
        }
    };
    let need = q.read.max(q.write);
    let mut seen = view.members.keys().filter(|id| counts(id)).count();
    if !view.members.contains_key(me) && me_serves {
        seen += 1;
    }
    let ring = view.ring.nodes();
    let missing = ring.iter().filter(|id| !counts(id)).count();
    // With fewer than N members missing, every preference list of N nodes holds one that
    // serves; a ring smaller than N needs just one.
    let max_missing = q.replicas.min(ring.len()).saturating_sub(1);
    let kind = match counting {
        Counting::Serving => "serving",
        Counting::Up => "live",
    };
    if seen < need {
        Condition {
            name: "quorum",
            ok: false,
            detail: format!(
                "sees {seen} of the {need} {kind} members a quorum needs (R={}, W={})",
                q.read, q.write
            ),
        }
    } else if missing > max_missing {
        Condition {
            name: "quorum",
            ok: false,
            detail: format!(
                "{missing} of {} ring members cannot serve; with N={} some keys have no {kind} replica",
                ring.len(),
                q.replicas
            ),
        }
    } else {
        Condition {
            name: "quorum",
            ok: true,
            detail: format!("sees {seen} {kind} members; a quorum needs {need}"),
        }
    }
}

/// The `gossip` condition.
pub fn gossip(view: &View) -> Condition {
    Condition {
        name: "gossip",
        ok: view.heard_seed,
        detail: if view.heard_seed {
            "joined the ring through gossip".into()
        } else if !view.refused_seeds.is_empty() {
            crate::membership::refused_seeds_reason(&view.refused_seeds)
        } else {
            "has not heard gossip from any seed yet: check --seeds, that a seed is up, and that \
             every node has the same --cluster-secret-file"
                .into()
        },
    }
}

/// The `caught_up` condition.
pub fn caught_up(state: Startup) -> Condition {
    let (ok, detail) = match state {
        Startup::Waiting => (
            false,
            "waits for gossip and a quorum before catching up with its peers".to_string(),
        ),
        Startup::Learning { seen, of } => (
            false,
            format!(
                "sees serving {seen} of the {of} members its peers route to; waits for all \
                 before it catches up with them"
            ),
        ),
        Startup::CatchingUp { done, of } => (
            false,
            format!("catching up with peers by anti-entropy: {done} of {of} done"),
        ),
        Startup::Announcing { .. } | Startup::Done => (true, "caught up with its peers".into()),
    };
    Condition {
        name: "caught_up",
        ok,
        detail,
    }
}

/// The `announced` condition.
pub fn announced(state: Startup) -> Condition {
    let (ok, detail) = match state {
        Startup::Waiting | Startup::Learning { .. } | Startup::CatchingUp { .. } => {
            (false, "has not announced itself alive yet".to_string())
        }
        Startup::Announcing { seen_by, of } => (
            false,
            format!("announced alive; {seen_by} of {of} serving peers route to it so far"),
        ),
        Startup::Done => (true, "every serving peer routes to it".into()),
    };
    Condition {
        name: "announced",
        ok,
        detail,
    }
}

/// What a node is doing about its own lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Stopping,
    Leaving,
}

/// The `serving` condition.
pub fn serving(life: Phase) -> Condition {
    let (ok, detail) = match life {
        Phase::Running => (true, "serving"),
        Phase::Stopping => (false, "stopping: the node is shutting down"),
        Phase::Leaving => (false, "leaving the ring: the node hands its data over"),
    };
    Condition {
        name: "serving",
        ok,
        detail: detail.into(),
    }
}

/// Everything `/ready` reports. `announced` says whether this node announced `alive`.
pub fn evaluate(
    view: &View,
    me: &str,
    q: Quorums,
    startup: Startup,
    life: Phase,
    announced_alive: bool,
) -> Readiness {
    let me_serves = announced_alive && life == Phase::Running;
    Readiness {
        conditions: vec![
            gossip(view),
            quorum(view, me, me_serves, q, Counting::Serving),
            caught_up(startup),
            announced(startup),
            serving(life),
        ],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::membership::{Member, Status};

    const STATUS_ALIVE: &str = "alive";
    const STATUS_JOINING: &str = "joining";
    const STATUS_STOPPING: &str = "stopping";
    use crate::ring::{NodeId, Ring};

    const Q: Quorums = Quorums {
        replicas: 3,
        read: 2,
        write: 2,
    };

    /// A view of `members`, each `(id, up, status)`, all in the ring.
    fn view(members: &[(&str, bool, &str)], heard_seed: bool) -> View {
        let mut map = BTreeMap::new();
        for (i, (id, up, status)) in members.iter().enumerate() {
            let addr = SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16));
            map.insert(
                NodeId::from(*id),
                Member {
                    id: NodeId::from(*id),
                    generation: 1,
                    gossip: addr,
                    http: Some(addr),
                    rpc: Some(addr),
                    alive: *up,
                    status: Status::parse(status),
                    dead_since: None,
                    watch: None,
                    build: Default::default(),
                    zone: crate::membership::zone_of(None),
                    memory: None,
                },
            );
        }
        let ring = Ring::new(map.keys().cloned(), 8);
        View {
            members: map,
            ring: Arc::new(ring),
            heard_seed,
            ..View::default()
        }
    }

    fn five(statuses: [(bool, &str); 5]) -> View {
        let ids = ["n1", "n2", "n3", "n4", "n5"];
        let m: Vec<_> = ids
            .iter()
            .zip(statuses)
            .map(|(id, (up, s))| (*id, up, s))
            .collect();
        view(&m, true)
    }

    #[test]
    fn a_node_alone_is_not_ready_and_says_how_many_it_sees() {
        let v = view(&[("n1", true, STATUS_ALIVE)], true);
        let mut q = Q;
        let r = evaluate(&v, "n1", q, Startup::Done, Phase::Running, true);
        assert!(!r.is_ready());
        assert_eq!(
            r.reason(),
            Some("sees 1 of the 2 serving members a quorum needs (R=2, W=2)")
        );
        // With R = W = 1 a single node serves.
        q.read = 1;
        q.write = 1;
        let r = evaluate(&v, "n1", q, Startup::Done, Phase::Running, true);
        assert!(r.is_ready(), "{r:?}");
    }

    #[test]
    fn every_condition_must_hold() {
        let all_alive = five([(true, STATUS_ALIVE); 5]);
        let ready = evaluate(&all_alive, "n1", Q, Startup::Done, Phase::Running, true);
        assert!(ready.is_ready(), "{ready:?}");
        assert_eq!(ready.reason(), None);

        let mut no_seed = all_alive.clone();
        no_seed.heard_seed = false;
        let r = evaluate(&no_seed, "n1", Q, Startup::Done, Phase::Running, true);
        assert!(!r.is_ready());
        assert!(r.reason().unwrap().contains("seed"));
        // Seeds that answer with gossip of another secret: the reason names them and the flag.
        no_seed.refused_seeds = vec![SocketAddr::from(([127, 0, 0, 1], 7001))];
        let r = evaluate(&no_seed, "n1", Q, Startup::Done, Phase::Running, true);
        assert_eq!(
            r.reason().unwrap(),
            "seed 127.0.0.1:7001 answers, but its datagrams fail authentication: check \
             --cluster-secret-file (every node needs the same secret)"
        );

        let r = evaluate(
            &all_alive,
            "n1",
            Q,
            Startup::CatchingUp { done: 2, of: 4 },
            Phase::Running,
            true,
        );
        assert_eq!(
            r.reason(),
            Some("catching up with peers by anti-entropy: 2 of 4 done")
        );

        let r = evaluate(&all_alive, "n1", Q, Startup::Done, Phase::Stopping, true);
        assert_eq!(r.reason(), Some("stopping: the node is shutting down"));
        assert!(!r.holds("serving"));
    }

    #[test]
    fn ready_needs_a_serving_home_for_every_key() {
        // Two of five down: every preference list of three still holds a serving node.
        let two_down = five([
            (true, STATUS_ALIVE),
            (true, STATUS_ALIVE),
            (true, STATUS_ALIVE),
            (false, STATUS_ALIVE),
            (true, STATUS_STOPPING),
        ]);
        assert!(evaluate(&two_down, "n1", Q, Startup::Done, Phase::Running, true).is_ready());
        // Three of five cannot serve: some key may have all three homes among them.
        let three_down = five([
            (true, STATUS_ALIVE),
            (true, STATUS_ALIVE),
            (false, STATUS_ALIVE),
            (true, STATUS_JOINING),
            (true, STATUS_STOPPING),
        ]);
        let r = evaluate(&three_down, "n1", Q, Startup::Done, Phase::Running, true);
        assert!(!r.is_ready());
        assert_eq!(
            r.reason(),
            Some("3 of 5 ring members cannot serve; with N=3 some keys have no serving replica")
        );
    }

    #[test]
    fn a_whole_ring_starting_together_may_announce_before_anyone_serves() {
        let starting = five([(true, STATUS_JOINING); 5]);
        // Nobody serves yet, so /ready says no...
        let r = evaluate(&starting, "n1", Q, Startup::Done, Phase::Running, false);
        assert!(!r.is_ready());
        // ...but each may go on to catch up and announce: joining members count as live.
        assert!(quorum(&starting, "n1", true, Q, Counting::Up).ok);
        let r = evaluate(
            &starting,
            "n1",
            Q,
            Startup::Announcing { seen_by: 1, of: 4 },
            Phase::Running,
            true,
        );
        assert_eq!(
            r.reason(),
            Some("sees 1 of the 2 serving members a quorum needs (R=2, W=2)")
        );
        assert!(r.holds("caught_up") && !r.holds("announced"));
    }

    #[test]
    fn a_node_counts_itself_by_its_own_decision_not_its_gossiped_status() {
        // n1's own entry still says joining (gossip lags), but it has announced alive.
        let v = five([
            (true, STATUS_JOINING),
            (true, STATUS_ALIVE),
            (true, STATUS_ALIVE),
            (true, STATUS_ALIVE),
            (true, STATUS_ALIVE),
        ]);
        assert!(evaluate(&v, "n1", Q, Startup::Done, Phase::Running, true).is_ready());
        // Before it announced, it does not count itself.
        let r = evaluate(&v, "n1", Q, Startup::Done, Phase::Running, false);
        assert!(r.holds("quorum"), "four others serve: {r:?}");
    }

    #[test]
    fn a_ring_smaller_than_n_needs_one_serving_member_per_key() {
        let v = view(
            &[("n1", true, STATUS_ALIVE), ("n2", true, STATUS_ALIVE)],
            true,
        );
        assert!(evaluate(&v, "n1", Q, Startup::Done, Phase::Running, true).is_ready());
        let v = view(
            &[("n1", true, STATUS_ALIVE), ("n2", false, STATUS_ALIVE)],
            true,
        );
        let q = Quorums {
            replicas: 3,
            read: 1,
            write: 1,
        };
        assert!(evaluate(&v, "n1", q, Startup::Done, Phase::Running, true).is_ready());
    }
}
