//! Bytes ↔ frames for the node-to-node RPC protocol.
//!
//! A frame is
//!
//! ```text
//! +----------------+----------------+---------------------------+
//! | len: u32 (BE)  | crc32: u32 (BE)| payload: len bytes        |
//! +----------------+----------------+---------------------------+
//! ```
//!
//! where the payload is a MessagePack-encoded [`crate::rpc::Message`] and the CRC32 covers
//! the payload only. TCP already checksums segments, but its 16-bit sum misses real-world
//! corruption (bad NICs, memory); a bit flip inside a value would otherwise be stored and
//! replicated silently. The length is checked against a maximum *before* any payload is
//! buffered, so a peer cannot make a node allocate gigabytes by sending a large header.
//!
//! As in mini-redis, "need more bytes" is `Ok(None)`, not an error: the decoder checks that a
//! whole frame is present before it consumes anything.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

use crate::error::{Error, Result};

/// Bytes of frame header: length then CRC32.
pub const HEADER_LEN: usize = 8;

/// Room in a frame for everything but the value: key, versions, clocks, envelope.
/// Keys are at most 1 KiB and contexts at most 64 KiB, so 128 KiB is generous.
pub const FRAME_OVERHEAD: usize = 128 * 1024;

/// Encodes `msg` as one frame appended to `dst`. Structs are MessagePack arrays: compact,
/// and read back only by a decoder that expects exactly their fields.
pub fn encode<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<()> {
    encode_with(dst, |w| rmp_serde::encode::write(w, msg))
}

/// As [`encode`], with structs as MessagePack maps keyed by field name: a decoder skips the
/// fields it does not know, so a struct sent this way may gain fields that older builds
/// ignore ([`crate::rpc::Hello`]).
pub fn encode_named<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<()> {
    encode_with(dst, |w| rmp_serde::encode::write_named(w, msg))
}

fn encode_with(
    dst: &mut BytesMut,
    write: impl FnOnce(
        &mut bytes::buf::Writer<&mut BytesMut>,
    ) -> std::result::Result<(), rmp_serde::encode::Error>,
) -> Result<()> {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    write(&mut (&mut *dst).writer())
        .map_err(|e| Error::Protocol(format!("cannot encode message: {e}")))?;
    let payload_len = dst.len() - start - HEADER_LEN;
    let len = u32::try_from(payload_len)
        .map_err(|_| Error::Protocol(format!("message of {payload_len} bytes is too large")))?;
    let crc = crc32fast::hash(&dst[start + HEADER_LEN..]);
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    dst[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Decodes a frame's payload into a message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    rmp_serde::from_slice(payload).map_err(|e| Error::Protocol(format!("undecodable frame: {e}")))
}

/// Splits a byte stream into verified frame payloads.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_payload: usize,
}

impl FrameCodec {
    /// A codec that rejects payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> FrameCodec {
        FrameCodec { max_payload }
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_payload {
            return Err(Error::Protocol(format!(
                "frame of {len} bytes exceeds the maximum of {}",
                self.max_payload
            )));
        }
        if src.len() < HEADER_LEN + len {
            // Reserve once for the whole frame rather than growing step by step.
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        let crc = u32::from_be_bytes([src[4], src[5], src[6], src[7]]);
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        if crc32fast::hash(&payload) != crc {
            return Err(Error::Protocol("frame checksum mismatch".into()));
        }
        Ok(Some(payload))
    }
}

// tokio-util needs `From<io::Error>` for the codec error, which `Error` has.

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Msg {
        id: u64,
        body: Vec<u8>,
    }

    fn frame(msg: &Msg) -> BytesMut {
        let mut buf = BytesMut::new();
        encode(msg, &mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trip() {
        let msg = Msg {
            id: 7,
            body: b"hello".to_vec(),
        };
        let mut buf = frame(&msg);
        let payload = FrameCodec::new(1024).decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode_payload::<Msg>(&payload).unwrap(), msg);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let msg = Msg {
            id: 1,
            body: vec![9; 300],
        };
        let whole = frame(&msg);
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "byte {i}");
            buf.put_u8(*byte);
        }
        let payload = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode_payload::<Msg>(&payload).unwrap(), msg);
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        for id in 0..5 {
            encode(&Msg { id, body: vec![] }, &mut buf).unwrap();
        }
        let mut codec = FrameCodec::new(1024);
        for id in 0..5 {
            let payload = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(decode_payload::<Msg>(&payload).unwrap().id, id);
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn every_payload_bit_flip_is_caught() {
        let whole = frame(&Msg {
            id: 42,
            body: b"value".to_vec(),
        });
        for i in HEADER_LEN..whole.len() {
            for bit in 0..8 {
                let mut buf = whole.clone();
                buf[i] ^= 1 << bit;
                let res = FrameCodec::new(1024).decode(&mut buf);
                assert!(
                    matches!(res, Err(Error::Protocol(_))),
                    "flip at {i}:{bit} not caught"
                );
            }
        }
    }

    #[test]
    fn corrupt_crc_field_is_caught() {
        let mut buf = frame(&Msg {
            id: 1,
            body: vec![],
        });
        buf[5] ^= 0xff;
        assert!(FrameCodec::new(1024).decode(&mut buf).is_err());
    }

    #[test]
    fn oversized_frame_is_rejected_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32(1_000_000);
        buf.put_u32(0);
        let res = FrameCodec::new(1024).decode(&mut buf);
        assert!(matches!(res, Err(Error::Protocol(_))));
    }

    #[test]
    fn valid_frame_with_garbage_payload_is_an_error_not_a_panic() {
        let junk = b"\xc1\xc1\xc1 not msgpack";
        let mut buf = BytesMut::new();
        buf.put_u32(junk.len() as u32);
        buf.put_u32(crc32fast::hash(junk));
        buf.put_slice(junk);
        let payload = FrameCodec::new(1024).decode(&mut buf).unwrap().unwrap();
        assert!(decode_payload::<Msg>(&payload).is_err());
    }
}
