//! Start-up catch-up: a node restarted empty or behind exchanges with every peer it shares
//! segments with before it announces itself serving ([`crate::readiness`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::*;
use crate::readiness::Startup;
use crate::ring::NodeId;

/// How long the catch-up waits before it tries a peer again after a failed exchange (most
/// often the two rings differ for a gossip round while the new member spreads).
pub(super) const CATCH_UP_RETRY: Duration = Duration::from_millis(200);

/// How long the catch-up keeps trying one peer whose exchanges fail before it moves on with
/// a warning: the peer's copies are also on other replicas and anti-entropy keeps running,
/// while a node stuck in `joining` for ever would serve nobody.
pub(super) const CATCH_UP_PEER_PATIENCE: Duration = Duration::from_secs(30);

/// A node's start-up catch-up ([`crate::readiness`]): once it has heard a seed and sees a
/// quorum, and `settle` says its view of who serves agrees with its peers' (a node that just
/// started sees its peers serving a gossip round or two late, and a catch-up that skipped a
/// peer it did not see yet would miss the copies only that peer holds: a rolling restart
/// under load lost a write that way), it runs one full exchange with every serving peer it
/// shares segments with (more while an exchange hits [`MAX_KEYS_PER_ROUND`]). The node
/// announces `alive` after it, so a
/// node restarted empty has its copies back before peers route requests to it. Peers that
/// stop serving meanwhile are skipped: their copies are on the other replicas. Returns false
/// if the node shut down first. `progress` hears how far it got.
pub(crate) async fn catch_up(
    ae: &Arc<AntiEntropy>,
    shutdown: &CancellationToken,
    progress: impl Fn(Startup),
    settle: impl std::future::Future<Output = bool>,
) -> bool {
    let mut views = ae.system.subscribe_view();
    loop {
        let view = ae.system.view();
        let q = ae.system.quorums();
        let quorum = crate::readiness::quorum(
            &view,
            ae.system.id(),
            true,
            q,
            crate::readiness::Counting::Up,
        );
        if view.heard_seed && quorum.ok {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            res = views.changed() => if res.is_err() { return false },
        }
    }
    if !settle.await {
        return false;
    }
    // The worker rebuilds the trees on a ring change; make sure they follow this view's ring
    // before comparing them with anyone.
    refresh_segments(ae);
    let segs = ae.segments();
    let peers: Vec<NodeId> = peers_of(ae, &segs).into_iter().map(|(id, _)| id).collect();
    let total = peers.len();
    let started = std::time::Instant::now();
    let mut moved = 0usize;
    for (done, peer) in peers.iter().enumerate() {
        progress(Startup::CatchingUp { done, of: total });
        let first_try = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            if !ae.system.view().is_alive(peer) {
                debug!(%peer, "catch-up: peer stopped serving; its replicas cover it");
                break;
            }
            refresh_segments(ae);
            match exchange_once(ae, peer).await {
                Ok(n) => {
                    moved += n;
                    if n < MAX_KEYS_PER_ROUND {
                        break;
                    }
                }
                Err(err) if first_try.elapsed() > CATCH_UP_PEER_PATIENCE => {
                    warn!(%peer, %err, "catch-up: giving up on this peer; anti-entropy goes on");
                    break;
                }
                Err(err) => {
                    debug!(%peer, %err, "catch-up exchange failed; retrying");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(CATCH_UP_RETRY) => {}
                    }
                }
            }
        }
    }
    info!(
        peers = total,
        keys = moved,
        took_ms = started.elapsed().as_millis() as u64,
        "caught up with peers"
    );
    true
}
