//! RPC authentication with the cluster secret ([`crate::secret`]).
//!
//! **Handshake.** Without a secret the hello exchange is as before. With one, both ends prove
//! they know the secret before any request is read, by HMAC-SHA256 over fresh 32-byte
//! nonces under the key `K = derive("rpc")`:
//!
//! ```text
//!  client → server  Hello { nonce: Nc }
//!  server → client  Hello { nonce: Ns, proof: HMAC(K, "server" ‖ Nc ‖ Ns) }   client checks
//!  client → server  Proof { proof: HMAC(K, "client" ‖ Nc ‖ Ns) }             server checks
//! ```
//!
//! Each side's nonce is fresh, so a recorded handshake cannot be replayed to either side, and
//! the two proofs differ by their label, so one cannot be reflected as the other. A side
//! that sees a missing or wrong proof closes the connection, counts the refusal
//! (`ringkv_rpc_handshakes_refused`) and logs it at most once per [`REFUSAL_LOG_INTERVAL`].
//!
//! **Frames.** After the handshake every frame's payload carries a tag,
//! `HMAC(K_dir, seq ‖ payload)`, where `K_dir = HMAC(K, "c2s" or "s2c" ‖ Nc ‖ Ns)` is the
//! key of one direction of this connection and `seq` counts the frames sent that way. An
//! on-path attacker can therefore neither alter a frame, nor replay, drop, reorder or
//! reflect one, without the next check failing and the connection closing. The frames are
//! not encrypted: the ring's data is as readable on the wire as before; a ring whose
//! network is not trusted for confidentiality needs a VPN or an encrypted overlay.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use hmac::{KeyInit, Mac};

use crate::secret::{ClusterSecret, HmacSha256, mac, verify};

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;

/// Bytes of a frame's tag: a whole HMAC-SHA256.
pub const TAG_LEN: usize = 32;

/// At most one refusal is logged per this interval; the others are counted in the log line.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The client's third handshake message, with a secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proof {
    pub proof: Bytes,
}

/// Refused handshakes, for either reason: a peer that could not prove the cluster secret, or
/// one whose protocol versions do not meet ours. Each is counted
/// (`ringkv_rpc_handshakes_refused`) and logged, at most once per [`REFUSAL_LOG_INTERVAL`]:
/// a peer that keeps reconnecting must not flood the log.
pub struct Refusals {
    pub count: Arc<AtomicU64>,
    throttle: Mutex<Option<(Instant, u64)>>,
}

impl Refusals {
    /// Refusals counted in `count`.
    pub fn new(count: Arc<AtomicU64>) -> Refusals {
        Refusals {
            count,
            throttle: Mutex::new(None),
        }
    }

    /// Counts one refusal and, unless one was logged within the interval, calls `log` with
    /// the number of refusals not logged since the last line.
    pub fn refuse(&self, log: impl FnOnce(u64)) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut t = crate::lock(&self.throttle);
        let now = Instant::now();
        match &mut *t {
            Some((last, quiet)) if now.duration_since(*last) < REFUSAL_LOG_INTERVAL => {
                *quiet += 1;
            }
            _ => {
                let quiet = t.map_or(0, |(_, q)| q);
                *t = Some((now, 0));
                log(quiet);
            }
        }
    }

    /// Refuses a peer whose protocol versions do not meet ours, and returns the error to close
    /// the connection with.
    pub fn version(&self, peer: &str, mismatch: super::VersionMismatch) -> Error {
        self.refuse(|quiet| {
            tracing::warn!(
                %peer,
                peer_protocol = %mismatch.theirs,
                our_protocol = %mismatch.ours,
                refused_since_last_log = quiet,
                "rpc peer speaks no protocol version this build speaks: connection refused \
                 (upgrade or roll back one of the two builds)"
            )
        });
        Error::Unreachable(format!("{peer}: {mismatch}"))
    }
}

/// What a node needs to authenticate its connections.
pub struct RpcAuth {
    key: [u8; 32],
    /// Connections refused because the peer could not prove the secret (both directions),
    /// counted with the node's other refused handshakes.
    pub refusals: Arc<Refusals>,
}

impl RpcAuth {
    /// The authentication of a ring with this secret.
    pub fn new(secret: &ClusterSecret, refusals: Arc<Refusals>) -> RpcAuth {
        RpcAuth {
            key: secret.derive("rpc"),
            refusals,
        }
    }

    /// A fresh nonce.
    pub fn nonce() -> Bytes {
        Bytes::from(rand::random::<[u8; NONCE_LEN]>().to_vec())
    }

    /// The server's proof for nonces `nc` (the client's) and `ns` (ours).
    pub fn server_proof(&self, nc: &[u8], ns: &[u8]) -> Bytes {
        Bytes::from(mac(&self.key, &[b"server", nc, ns]).to_vec())
    }

    /// The client's proof.
    pub fn client_proof(&self, nc: &[u8], ns: &[u8]) -> Bytes {
        Bytes::from(mac(&self.key, &[b"client", nc, ns]).to_vec())
    }

    /// Checks the proof the other side sent (`label` is the other side's role).
    pub fn check(&self, label: Role, nc: &[u8], ns: &[u8], proof: Option<&[u8]>) -> Result<()> {
        let ok = match proof {
            Some(p) => nc.len() == NONCE_LEN && verify(&self.key, &[label.name(), nc, ns], p),
            None => false,
        };
        if ok { Ok(()) } else { Err(self.refuse(label)) }
    }

    /// Counts a refusal, logs it within the rate bound, and returns the error to close with.
    pub fn refuse(&self, peer: Role) -> Error {
        self.refusals.refuse(|quiet| {
            tracing::warn!(
                peer_role = std::str::from_utf8(peer.name()).unwrap_or("?"),
                refused_since_last_log = quiet,
                "rpc peer could not prove the cluster secret: connection refused"
            )
        });
        Error::Unreachable("the peer could not prove the cluster secret".into())
    }

    /// The frame keys of a connection, for the side `me`: (sending, receiving).
    pub fn frame_keys(&self, me: Role, nc: &[u8], ns: &[u8]) -> (FrameMac, FrameMac) {
        let c2s = FrameMac::new(mac(&self.key, &[b"c2s", nc, ns]));
        let s2c = FrameMac::new(mac(&self.key, &[b"s2c", nc, ns]));
        match me {
            Role::Client => (c2s, s2c),
            Role::Server => (s2c, c2s),
        }
    }
}

/// Which end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn name(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }
}

/// The tags of one direction of one connection.
pub struct FrameMac {
    /// HMAC keyed once: each frame clones it instead of hashing the key's pads again, which
    /// halves the hashing of a small frame.
    keyed: HmacSha256,
    seq: u64,
}

impl FrameMac {
    fn new(key: [u8; 32]) -> FrameMac {
        FrameMac {
            keyed: <HmacSha256 as KeyInit>::new_from_slice(&key).expect("HMAC takes any key"),
            seq: 0,
        }
    }

    /// The same key from sequence number 0 again (tests replay and reorder with it).
    #[cfg(test)]
    fn fresh(&self) -> FrameMac {
        FrameMac {
            keyed: self.keyed.clone(),
            seq: 0,
        }
    }

    /// The HMAC of the next sequence number and `payload`, not yet finalized.
    fn next(&mut self, payload: &[u8]) -> HmacSha256 {
        let mut m = self.keyed.clone();
        m.update(&self.seq.to_be_bytes());
        m.update(payload);
        self.seq += 1;
        m
    }

    /// Tags the frame that starts at `start` in `dst` (as [`crate::codec::encode`] wrote it):
    /// appends the tag to its payload and fixes its length and CRC.
    pub fn seal(&mut self, dst: &mut BytesMut, start: usize) -> Result<()> {
        use crate::codec::HEADER_LEN;
        let tag: [u8; TAG_LEN] = self
            .next(&dst[start + HEADER_LEN..])
            .finalize()
            .into_bytes()
            .into();
        let crc = u32::from_be_bytes([
            dst[start + 4],
            dst[start + 5],
            dst[start + 6],
            dst[start + 7],
        ]);
        let mut h = crc32fast::Hasher::new_with_initial(crc);
        h.update(&tag);
        dst.extend_from_slice(&tag);
        let len = u32::try_from(dst.len() - start - HEADER_LEN)
            .map_err(|_| Error::Protocol("frame too large".into()))?;
        dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
        dst[start + 4..start + 8].copy_from_slice(&h.finalize().to_be_bytes());
        Ok(())
    }

    /// Checks and strips the tag of the next frame received this way.
    pub fn open(&mut self, mut payload: Bytes) -> Result<Bytes> {
        if payload.len() < TAG_LEN {
            return Err(Error::Protocol("frame too short for its tag".into()));
        }
        let tag = payload.split_off(payload.len() - TAG_LEN);
        if self.next(&payload).verify_slice(&tag).is_err() {
            return Err(Error::Protocol(
                "frame tag does not verify (altered, replayed or reordered)".into(),
            ));
        }
        Ok(payload)
    }
}

/// Opens `frame` if the connection is authenticated.
pub fn open(mac: &mut Option<FrameMac>, frame: Bytes) -> Result<Bytes> {
    match mac {
        Some(m) => m.open(frame),
        None => Ok(frame),
    }
}

/// Encodes `msg` as a frame onto `dst`, tagged if the connection is authenticated.
pub fn encode<T: Serialize>(msg: &T, dst: &mut BytesMut, mac: &mut Option<FrameMac>) -> Result<()> {
    let start = dst.len();
    crate::codec::encode(msg, dst)?;
    if let Some(m) = mac {
        m.seal(dst, start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::codec::FrameCodec;

    fn auth(secret: &[u8]) -> RpcAuth {
        RpcAuth::new(
            &ClusterSecret::from_bytes(secret).unwrap(),
            Arc::new(Refusals::new(Arc::default())),
        )
    }

    #[test]
    fn the_handshake_passes_with_one_secret_and_fails_with_another() {
        let (a, b, wrong) = (
            auth(b"the ring's secret!!"),
            auth(b"the ring's secret!!"),
            auth(b"some other secret!!"),
        );
        let (nc, ns) = (RpcAuth::nonce(), RpcAuth::nonce());
        assert!(
            a.check(Role::Server, &nc, &ns, Some(&b.server_proof(&nc, &ns)))
                .is_ok()
        );
        assert!(
            b.check(Role::Client, &nc, &ns, Some(&a.client_proof(&nc, &ns)))
                .is_ok()
        );
        // A wrong secret, a reflected proof, a missing one, other nonces: all refused.
        assert!(
            a.check(Role::Server, &nc, &ns, Some(&wrong.server_proof(&nc, &ns)))
                .is_err()
        );
        assert!(
            a.check(Role::Server, &nc, &ns, Some(&a.client_proof(&nc, &ns)))
                .is_err()
        );
        assert!(a.check(Role::Server, &nc, &ns, None).is_err());
        let other = RpcAuth::nonce();
        assert!(
            a.check(Role::Server, &other, &ns, Some(&b.server_proof(&nc, &ns)))
                .is_err()
        );
        assert_eq!(a.refusals.count.load(Ordering::Relaxed), 4);
    }

    fn round_trip(frames: &[&str]) -> (BytesMut, (FrameMac, FrameMac), (FrameMac, FrameMac)) {
        let a = auth(b"the ring's secret!!");
        let (nc, ns) = (RpcAuth::nonce(), RpcAuth::nonce());
        let mut client = a.frame_keys(Role::Client, &nc, &ns);
        let server = a.frame_keys(Role::Server, &nc, &ns);
        let mut buf = BytesMut::new();
        let mut send = Some(client.0);
        for f in frames {
            encode(f, &mut buf, &mut send).unwrap();
        }
        client.0 = send.unwrap();
        (buf, client, server)
    }

    #[test]
    fn frames_open_in_order_and_nothing_else() {
        let (mut buf, _, (_, recv)) = round_trip(&["one", "two"]);
        let mut codec = FrameCodec::new(1 << 20);
        let f1 = codec.decode(&mut buf).unwrap().unwrap();
        let f2 = codec.decode(&mut buf).unwrap().unwrap();
        let text = |p: Bytes| crate::codec::decode_payload::<String>(&p).unwrap();
        // In order: both open.
        let mut m = recv.fresh();
        assert_eq!(text(m.open(f1.clone()).unwrap()), "one");
        assert_eq!(text(m.open(f2.clone()).unwrap()), "two");
        // Reordered: the second frame first is refused.
        assert!(recv.fresh().open(f2).is_err());
        // Replayed: the first frame again where the second is due is refused.
        let mut m = recv.fresh();
        m.open(f1.clone()).unwrap();
        assert!(m.open(f1).is_err());
    }

    #[test]
    fn an_altered_or_truncated_frame_is_refused() {
        let (mut buf, _, (_, recv)) = round_trip(&["payload"]);
        let frame = FrameCodec::new(1 << 20).decode(&mut buf).unwrap().unwrap();
        for i in 0..frame.len() {
            let mut bad = BytesMut::from(&frame[..]);
            bad[i] ^= 0x01;
            let mut m = Some(recv.fresh());
            assert!(open(&mut m, bad.freeze()).is_err(), "flip at {i}");
        }
        for cut in 0..frame.len() {
            let mut m = Some(recv.fresh());
            assert!(open(&mut m, frame.slice(..cut)).is_err(), "cut at {cut}");
        }
        // The other direction's key does not open it (no reflection).
        let (_, (_, c_recv), _) = round_trip(&[]);
        let mut m = Some(c_recv);
        assert!(open(&mut m, frame.clone()).is_err());
        let mut ok = Some(recv.fresh());
        assert!(open(&mut ok, frame).is_ok());
    }

    #[test]
    fn a_sealed_frame_keeps_a_valid_header() {
        let (buf, _, _) = round_trip(&["x"]);
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert_eq!(len, buf.len() - crate::codec::HEADER_LEN);
        let crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        assert_eq!(crc, crc32fast::hash(&buf[8..]));
        let mut b = BytesMut::new();
        b.put_slice(&buf);
        assert!(FrameCodec::new(1 << 20).decode(&mut b).unwrap().is_some());
    }
}
