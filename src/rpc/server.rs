//! The RPC listener: accepts peer connections and answers their requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::net::{BoxStream, Listener};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use super::auth::{Proof, Refusals, Role, RpcAuth};
use super::{Hello, Message, Service, read_one, write_frames};
use crate::codec::{self, FrameCodec};
use crate::error::{Error, Result};

/// A peer must say hello within this time, so idle garbage connections do not pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections served at once. A ring of N nodes needs N-1 inbound connections; the rest
/// is headroom for restarts, whose old connections linger until they error out.
const MAX_CONNECTIONS: usize = 1024;

/// Responses queued per connection before request handling waits for the socket.
const RESPONSE_QUEUE: usize = 1024;

/// Everything a connection handler needs, shared by all connections.
pub struct ServerContext<S> {
    pub service: Arc<S>,
    pub hello: Hello,
    pub max_payload: usize,
    /// Counts connections closed for a bad frame from the peer (the node's
    /// `rpc_frames_rejected`).
    pub frames_rejected: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// With a cluster secret: peers must prove it ([`super::auth`]).
    pub auth: Option<Arc<RpcAuth>>,
    /// Handshakes refused (a wrong secret, or no protocol version in common).
    pub refusals: Arc<Refusals>,
    /// Most requests that may wait ([`Service::may_wait`]) one connection has in flight
    /// (`--max-rpc-in-flight`, [`crate::config::DEFAULT_MAX_RPC_IN_FLIGHT`]). Past it a
    /// request is answered at once with `Rejected` ("busy"): see that constant for why this
    /// sheds instead of waiting.
    pub max_in_flight: usize,
    /// Counts the requests refused at that cap (the node's `rpc_in_flight_refused`).
    pub in_flight_refused: Arc<AtomicU64>,
}

/// Accepts connections on `listener` until `ctx.shutdown` fires.
pub async fn serve<S: Service>(listener: Box<dyn Listener>, ctx: Arc<ServerContext<S>>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return,
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%err, "rpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                biased;
                _ = ctx2.shutdown.cancelled() => {}
                res = connection(stream, &ctx2) => {
                    if let Err(err) = res {
                        if matches!(err, Error::Protocol(_)) {
                            ctx2.frames_rejected.fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, %err, "closing rpc connection: bad frame from peer");
                        } else {
                            debug!(%peer, %err, "rpc connection closed");
                        }
                    }
                }
            }
        });
    }
}

async fn connection<S: Service>(stream: BoxStream, ctx: &Arc<ServerContext<S>>) -> Result<()> {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = FramedRead::new(rd, FrameCodec::new(ctx.max_payload));

    let theirs: Hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_one(&mut reader))
        .await
        .map_err(|_| Error::Protocol("no hello within the handshake timeout".into()))??;
    let protocol = theirs.accept(&ctx.hello, &ctx.refusals)?;
    let mut ours = ctx.hello.clone();
    let nonces = match &ctx.auth {
        Some(auth) => {
            let Some(nc) = theirs.nonce.clone() else {
                return Err(auth.refuse(Role::Client));
            };
            let ns = RpcAuth::nonce();
            ours.nonce = Some(ns.clone());
            ours.proof = Some(auth.server_proof(&nc, &ns));
            Some((auth, nc, ns))
        }
        None => None,
    };
    let mut buf = bytes::BytesMut::new();
    ours.encode(&mut buf)?;
    tokio::io::AsyncWriteExt::write_all(&mut wr, &buf).await?;
    // With a secret, no request is read before the client proved it.
    let (send_mac, mut recv_mac) = match nonces {
        Some((auth, nc, ns)) => {
            let proof = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_one::<_, Proof>(&mut reader))
                .await
                .ok()
                .and_then(|res| res.ok());
            auth.check(Role::Client, &nc, &ns, proof.as_ref().map(|p| &p.proof[..]))?;
            let (send, recv) = auth.frame_keys(Role::Server, &nc, &ns);
            (Some(send), Some(recv))
        }
        None => (None, None),
    };
    debug!(peer = %theirs.node, protocol, "rpc peer connected");

    let (resp_tx, mut resp_rx) = mpsc::channel(RESPONSE_QUEUE);
    let in_flight = Arc::new(Semaphore::new(ctx.max_in_flight.max(1)));
    let writer = write_frames(wr, &mut resp_rx, send_mac);
    let reader_loop = async {
        while let Some(frame) = reader.next().await {
            let payload = super::auth::open(&mut recv_mac, frame?)?;
            let msg: Message = codec::decode_payload(&payload)?;
            let Message::Request { id, body, trace } = msg else {
                return Err(Error::Protocol("peer sent a response to a server".into()));
            };
            // Forwarded writes wait on other replicas: run them beside the reader so they do
            // not hold up the requests behind them, at most `max_in_flight` at once. Store
            // reads and merges finish at once.
            let inline = !ctx.service.may_wait(&body);
            let permit = if inline {
                None
            } else {
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        ctx.in_flight_refused.fetch_add(1, Ordering::Relaxed);
                        debug!(peer = %theirs.node, "rpc requests in flight at the cap: busy");
                        let busy = Err(Error::Rejected(format!(
                            "busy: {} requests from this peer in flight",
                            ctx.max_in_flight
                        )));
                        let _ = resp_tx.send(Message::Response { id, body: busy }).await;
                        continue;
                    }
                }
            };
            let service = ctx.service.clone();
            let resp_tx = resp_tx.clone();
            let work = async move {
                let body = match trace {
                    // A client request's work: log it under the request's id and coordinator,
                    // and pass both on to any RPC it makes.
                    Some(t) => {
                        let span = debug_span!(
                            "rpc",
                            request = %t.request,
                            coordinator = %t.coordinator,
                            op = body.kind(),
                        );
                        let call = async {
                            let res = service.call(body).await;
                            debug!(ok = res.is_ok(), "rpc served");
                            res
                        };
                        super::TRACE.scope(t, call).instrument(span).await
                    }
                    None => service.call(body).await,
                };
                let body = super::answer_for(protocol, body);
                // The connection may be gone; the peer then times out, nothing to do here.
                let _ = resp_tx.send(Message::Response { id, body }).await;
            };
            match permit {
                None => work.await,
                Some(permit) => {
                    ctx.tracker.spawn(async move {
                        let _permit = permit;
                        work.await
                    });
                }
            }
        }
        Ok::<(), Error>(())
    };
    tokio::select! {
        biased;
        res = reader_loop => res,
        res = writer => res,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::net::mem::MemNet;
    use crate::rpc::testing::{pool, start_server, wait_until};
    use crate::rpc::{Request, Response};

    /// A service whose every request may wait, and waits for the gate to open.
    struct Gate {
        running: AtomicUsize,
        most: AtomicUsize,
        open: Semaphore,
    }

    impl Service for Gate {
        async fn call(self: Arc<Self>, _req: Request) -> Result<Response> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let _pass = self.open.acquire().await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Response::Done)
        }

        fn may_wait(&self, _req: &Request) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn requests_that_wait_are_capped_per_connection() {
        let net = Arc::new(MemNet::default());
        let gate = Arc::new(Gate {
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            open: Semaphore::new(0),
        });
        let (addr, server) = start_server(&net, gate.clone(), 2).await;
        let running = || gate.running.load(Ordering::SeqCst);
        let refused = || server.in_flight_refused.load(Ordering::SeqCst);
        let peer = Arc::new(pool(net.clone(), Duration::from_secs(60)));
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let peer = peer.clone();
                tokio::spawn(async move { peer.call(addr, Request::Status).await })
            })
            .collect();
        wait_until("two requests run and three are refused", || {
            running() == 2 && refused() == 3
        })
        .await;
        // The cap is per connection: another peer's requests still run.
        let other = pool(net.clone(), Duration::from_secs(60));
        let third = tokio::spawn(async move { other.call(addr, Request::Status).await });
        wait_until("the other peer's request runs", || running() == 3).await;
        gate.open.add_permits(100);
        let mut done = 0;
        for call in calls {
            match call.await.expect("the call's task") {
                Ok(Response::Done) => done += 1,
                Err(Error::Rejected(why)) => assert!(why.contains("busy"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(done, 2, "two ran, three were refused as busy");
        let res = third.await.expect("the call's task");
        assert!(matches!(res, Ok(Response::Done)), "{res:?}");
        assert_eq!(
            gate.most.load(Ordering::SeqCst),
            3,
            "two from the first peer, one from the other"
        );
        assert_eq!(refused(), 3);
    }
}
