//! The UDP socket of sealed gossip: chitchat's datagrams sealed with [`crate::seal`] on the
//! way out and opened on the way in, before chitchat sees them.
//!
//! ## chitchat's codec, through loopback
//!
//! chitchat 0.13 keeps its envelope encoding private to the crate: only its own UDP socket
//! calls it, and the digest inside an envelope has no public encoding at all. So each
//! [`SealedUdp`] borrows the codec through that socket: a chitchat `UdpSocket` and a plain
//! socket, both on 127.0.0.1, pass each envelope between them (`Codec`). Encoding is one
//! loopback datagram; decoding is two, the envelope and a fixed sentinel after it, so that an
//! envelope chitchat cannot decode is noticed (the sentinel comes back alone) instead of
//! waited for. Only datagrams from the paired socket are taken, so other local processes
//! cannot inject anything, and a relay that stops answering (loopback lost a datagram) is
//! reopened. This costs a few loopback datagrams per gossip message, a few per node per gossip
//! round; if chitchat ever exposes its codec, `Codec` is the one place to change.
//!
//! ## Refusals
//!
//! Every dropped datagram, for whatever [`Refusal`], is counted in its node's
//! [`GossipCounters::refused`] (the `ringkv_gossip_datagrams_refused` metric). Each reason
//! is logged at most once per [`LOG_EVERY`], with the number suppressed since.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::GossipCounters;
use crate::seal::{
    Halves, KIND_HEAD, KIND_TAIL, KIND_WHOLE, MAX_DATAGRAM, Opener, Refusal, SEAL_OVERHEAD, Sealer,
    wall_clock_us,
};

/// Each refusal reason is logged at most once per this, with the count suppressed since.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// How long the loopback codec may take to answer before it is reopened. Loopback delivers
/// at once; this only matters if it dropped a datagram.
const RELAY_TIMEOUT: Duration = Duration::from_secs(1);

/// Receive buffer: any UDP datagram fits (a longer one would be cut and fail its MAC anyway).
const RECV_BUFFER: usize = 65_536;

/// Decoded envelopes waiting for chitchat.
const RECEIVED_QUEUE: usize = 64;

/// The senders whose datagrams failed authentication lately (another secret, or none): how a
/// node with the wrong `--cluster-secret-file` learns that its seeds answer, and says so in
/// `/ready` instead of blaming `--seeds`.
#[derive(Debug, Default)]
pub struct RefusedSources(
    std::sync::Mutex<std::collections::HashMap<SocketAddr, std::time::Instant>>,
);

impl RefusedSources {
    /// Most senders remembered: garbage from many addresses must not grow the map.
    const MAX: usize = 256;

    fn record(&self, from: SocketAddr) {
        let mut map = crate::lock(&self.0);
        if map.len() >= Self::MAX && !map.contains_key(&from) {
            let oldest = map.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a);
            if let Some(a) = oldest {
                map.remove(&a);
            }
        }
        map.insert(from, std::time::Instant::now());
    }

    /// The senders refused within `window`.
    pub fn recent(&self, window: std::time::Duration) -> Vec<SocketAddr> {
        let map = crate::lock(&self.0);
        let mut out: Vec<SocketAddr> = map
            .iter()
            .filter(|(_, t)| t.elapsed() <= window)
            .map(|(a, _)| *a)
            .collect();
        out.sort();
        out
    }
}

struct Drops {
    counters: Arc<GossipCounters>,
    sources: Arc<RefusedSources>,
    last_logged: [Option<std::time::Instant>; Refusal::COUNT],
    suppressed: [u64; Refusal::COUNT],
}

impl Drops {
    fn new(counters: Arc<GossipCounters>, sources: Arc<RefusedSources>) -> Drops {
        Drops {
            counters,
            sources,
            last_logged: [None; Refusal::COUNT],
            suppressed: [0; Refusal::COUNT],
        }
    }

    fn refuse(&mut self, reason: Refusal, from: SocketAddr) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if matches!(reason, Refusal::BadMac | Refusal::Truncated) {
            self.sources.record(from);
        }
        let i = reason as usize;
        let now = std::time::Instant::now();
        if self.last_logged[i].is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed[i] += 1;
            return;
        }
        warn!(
            reason = reason.as_str(),
            %from,
            suppressed = self.suppressed[i],
            "gossip datagram refused"
        );
        self.last_logged[i] = Some(now);
        self.suppressed[i] = 0;
    }
}

/// The envelope that marks the end of a decode: an envelope no ringkv node sends (it gossips
/// with protocol V0; chitchat answers a V0 message in V0).
fn sentinel() -> ChitchatEnvelope {
    ChitchatEnvelope {
        version: ProtocolVersion::V1,
        message: ChitchatMessage::BadCluster,
    }
}

/// chitchat's envelope codec, reached through a chitchat UDP socket on loopback (see the
/// module doc).
struct Codec {
    chitchat: chitchat::transport::UdpSocket,
    chitchat_addr: SocketAddr,
    raw: tokio::net::UdpSocket,
    raw_addr: SocketAddr,
    buf: Vec<u8>,
    /// The encoding of [`sentinel`].
    sentinel: Vec<u8>,
}

impl Codec {
    async fn open() -> anyhow::Result<Codec> {
        let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let chitchat = chitchat::transport::UdpSocket::open(lo).await?;
        let chitchat_addr = chitchat.local_addr()?;
        let raw = tokio::net::UdpSocket::bind(lo)
            .await
            .context("binding the gossip codec's loopback socket")?;
        let raw_addr = raw.local_addr()?;
        let mut codec = Codec {
            chitchat,
            chitchat_addr,
            raw,
            raw_addr,
            buf: vec![0; RECV_BUFFER],
            sentinel: Vec::new(),
        };
        let n = codec.encode(sentinel()).await?;
        codec.sentinel = codec.buf[..n].to_vec();
        Ok(codec)
    }

    /// Encodes `envelope` into `self.buf[..n]`, returning `n`.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<usize> {
        // Drop whatever an earlier, interrupted call or another local process left queued; a
        // bounded number, so that a flood cannot hold the sender here.
        for _ in 0..16 {
            if self.raw.try_recv_from(&mut self.buf).is_err() {
                break;
            }
        }
        let sent = self.chitchat.send(self.raw_addr, envelope).await?;
        let deadline = Instant::now() + RELAY_TIMEOUT;
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.raw.recv_from(&mut self.buf))
                .await
                .context("gossip codec: the encoded envelope did not come back over loopback")??;
            if from == self.chitchat_addr && n == sent.num_bytes_sent {
                return Ok(n);
            }
        }
    }

    /// Decodes `bytes`: `None` if chitchat cannot.
    async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        // Whatever starts like the sentinel decodes as the sentinel; build it here rather than
        // mistake it for the end marker.
        if bytes.starts_with(&self.sentinel) {
            return Ok(Some(sentinel()));
        }
        self.raw.send_to(bytes, self.chitchat_addr).await?;
        self.raw.send_to(&self.sentinel, self.chitchat_addr).await?;
        let deadline = Instant::now() + RELAY_TIMEOUT;
        let mut decoded = None;
        loop {
            let out = tokio::time::timeout_at(deadline, self.chitchat.recv())
                .await
                .context("gossip codec: no decoded envelope came back over loopback")??;
            if out.from_addr != self.raw_addr {
                continue; // another local process
            }
            if out.envelope == sentinel() {
                return Ok(decoded);
            }
            decoded = Some(out.envelope);
        }
    }
}

/// A chitchat [`Socket`] over UDP whose datagrams are sealed (see the module doc).
///
/// Receiving runs in a task of its own, so that chitchat cancelling `recv` (it does, every
/// gossip round) never interrupts a datagram halfway through the codec. The task ends when
/// the socket is dropped.
pub struct SealedUdp {
    socket: Arc<tokio::net::UdpSocket>,
    local_addr: SocketAddr,
    sealer: Sealer,
    encoder: Codec,
    received: mpsc::Receiver<anyhow::Result<RecvOutcome>>,
    receiver: tokio::task::JoinHandle<()>,
}

impl SealedUdp {
    /// Binds `addr` (port 0 allowed) and seals with `key`; every refused datagram adds one
    /// to `counters.refused`, and the senders of those that fail authentication
    /// go to `sources`.
    pub async fn bind(
        addr: SocketAddr,
        key: &[u8; 32],
        counters: Arc<GossipCounters>,
        sources: Arc<RefusedSources>,
    ) -> anyhow::Result<SealedUdp> {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("failed to bind to {addr}/UDP for gossip"))?;
        let local_addr = socket.local_addr()?;
        let socket = Arc::new(socket);
        let encoder = Codec::open().await?;
        let decoder = Codec::open().await?;
        let (tx, received) = mpsc::channel(RECEIVED_QUEUE);
        let receiver = tokio::spawn(receive(
            socket.clone(),
            Opener::new(key),
            decoder,
            tx,
            Drops::new(counters, sources),
        ));
        Ok(SealedUdp {
            socket,
            local_addr,
            sealer: Sealer::new(key),
            encoder,
            received,
            receiver,
        })
    }
}

impl Drop for SealedUdp {
    fn drop(&mut self) {
        // The task holds the socket: stop it so that the port is released.
        self.receiver.abort();
    }
}

#[async_trait]
impl Socket for SealedUdp {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let n = match self.encoder.encode(envelope).await {
            Ok(n) => n,
            Err(err) => {
                // A late answer must not be taken for the next envelope's.
                self.encoder = Codec::open().await?;
                return Err(err);
            }
        };
        let bytes = &self.encoder.buf[..n];
        let now = wall_clock_us();
        let datagrams = if 1 + n + SEAL_OVERHEAD <= MAX_DATAGRAM {
            vec![self.sealer.seal_parts(&[&[KIND_WHOLE], bytes], now)]
        } else {
            // Same `now`: the tail gets the head's counter + 1.
            let (head, tail) = bytes.split_at(n / 2);
            vec![
                self.sealer.seal_parts(&[&[KIND_HEAD], head], now),
                self.sealer.seal_parts(&[&[KIND_TAIL], tail], now),
            ]
        };
        let mut num_bytes_sent = 0;
        for d in &datagrams {
            num_bytes_sent += self
                .socket
                .send_to(d, to)
                .await
                .context("failed to send a gossip datagram")?;
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        match self.received.recv().await {
            Some(outcome) => outcome,
            None => Err(anyhow::anyhow!("the gossip receiver stopped")),
        }
    }
}

/// Errors worth a warning, not the end of gossip (as chitchat's own socket judges them).
fn is_transient(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}

/// The receiving task: opens, joins and decodes datagrams, and hands chitchat the envelopes.
async fn receive(
    socket: Arc<tokio::net::UdpSocket>,
    mut opener: Opener,
    mut decoder: Codec,
    tx: mpsc::Sender<anyhow::Result<RecvOutcome>>,
    mut drops: Drops,
) {
    let mut halves = Halves::default();
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(err) if is_transient(&err) => {
                warn!(%err, "transient gossip recv error");
                continue;
            }
            Err(err) => {
                let err = anyhow::Error::new(err).context("fatal gossip recv error");
                let _ = tx.send(Err(err)).await;
                return;
            }
        };
        let opened = match opener.open(&buf[..n], wall_clock_us()) {
            Ok(o) => o,
            Err(reason) => {
                drops.refuse(reason, from);
                continue;
            }
        };
        let bytes: Cow<'_, [u8]> = match opened.payload.split_first() {
            Some((&KIND_WHOLE, rest)) => Cow::Borrowed(rest),
            Some((&kind @ (KIND_HEAD | KIND_TAIL), rest)) => {
                let (joined, dropped) =
                    halves.push(opened.sender, opened.counter, kind == KIND_HEAD, rest);
                for _ in 0..dropped {
                    drops.refuse(Refusal::Unpaired, from);
                }
                match joined {
                    Some(j) => Cow::Owned(j),
                    None => continue,
                }
            }
            _ => {
                drops.refuse(Refusal::BadFrame, from);
                continue;
            }
        };
        if bytes.len() > MAX_DATAGRAM {
            drops.refuse(Refusal::BadFrame, from);
            continue;
        }
        let envelope = match decoder.decode(&bytes).await {
            Ok(Some(envelope)) => envelope,
            Ok(None) => {
                drops.refuse(Refusal::Undecodable, from);
                continue;
            }
            Err(err) => {
                warn!(%err, "gossip codec failed; reopening it");
                drops.refuse(Refusal::Undecodable, from);
                match Codec::open().await {
                    Ok(fresh) => decoder = fresh,
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                }
                continue;
            }
        };
        let outcome = RecvOutcome {
            from_addr: from,
            envelope,
            num_bytes_received: n,
        };
        if tx.send(Ok(outcome)).await.is_err() {
            return; // the socket was dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];

    fn syn(cluster_id: String) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn {
                cluster_id,
                digest: Default::default(),
            },
        }
    }

    async fn bind(key: &[u8; 32]) -> (SealedUdp, SocketAddr, Arc<GossipCounters>) {
        let counters = Arc::new(GossipCounters::default());
        let s = SealedUdp::bind(
            ([127, 0, 0, 1], 0).into(),
            key,
            counters.clone(),
            Arc::default(),
        )
        .await
        .unwrap();
        let addr = s.local_addr().unwrap();
        (s, addr, counters)
    }

    #[tokio::test]
    async fn sealed_sockets_exchange_envelopes_and_drop_other_keys() {
        let (mut a, a_addr, _) = bind(&KEY).await;
        let (mut b, b_addr, b_refused) = bind(&KEY).await;
        let (mut stranger, _, _) = bind(&OTHER).await;
        let mut plain = chitchat::transport::UdpSocket::open(([127, 0, 0, 1], 0).into())
            .await
            .unwrap();

        // The stranger and an unsealed chitchat socket send first; `a` after them.
        stranger.send(b_addr, syn("forged".into())).await.unwrap();
        plain.send(b_addr, syn("plain".into())).await.unwrap();
        a.send(b_addr, syn("ring".into())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b.recv())
            .await
            .expect("the sealed envelope arrives")
            .unwrap();
        assert_eq!(got.from_addr, a_addr);
        assert_eq!(got.envelope, syn("ring".into()));
        assert_eq!(b_refused.refused.load(Ordering::Relaxed), 2);

        // Another forgery alone: nothing arrives, and it is counted.
        stranger.send(b_addr, syn("forged".into())).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), b.recv()).await;
        assert!(
            waited.is_err(),
            "a forged envelope was delivered: {waited:?}"
        );
        assert_eq!(b_refused.refused.load(Ordering::Relaxed), 3);

        // Replies work the other way too, including the sentinel's own shape.
        let bad_cluster = ChitchatEnvelope {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::BadCluster,
        };
        b.send(a_addr, bad_cluster).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), a.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.envelope, sentinel());
    }

    #[tokio::test]
    async fn an_envelope_too_large_for_one_sealed_datagram_travels_in_two() {
        let (mut a, _, _) = bind(&KEY).await;
        let (mut b, b_addr, b_refused) = bind(&KEY).await;
        // A V0 Syn with an empty digest is 8 bytes plus its cluster id: this one is 65,507,
        // the most chitchat sends, and 33 more do not fit in one datagram.
        let big = syn("x".repeat(MAX_DATAGRAM - 8));
        let sent = a.send(b_addr, big).await.unwrap();
        assert_eq!(sent.num_bytes_sent, MAX_DATAGRAM + 2 * (1 + SEAL_OVERHEAD));
        let got = tokio::time::timeout(Duration::from_secs(5), b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.envelope, syn("x".repeat(MAX_DATAGRAM - 8)));
        assert_eq!(b_refused.refused.load(Ordering::Relaxed), 0);
    }
}
