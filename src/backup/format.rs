//! The backup file: [`Writer`] writes one, [`Reader`] reads and verifies one. Pure: any
//! `std::io::Write` or `Read`, no network, no clock. The layout is in the module doc of
//! [`crate::backup`].

use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::codec::{self, HEADER_LEN};
use crate::error::{Error, Result};
use crate::version::VersionSet;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"RINGKVBK";

/// The format this build writes, and the newest it reads. A reader refuses a newer one
/// before looking further, so a format change never reads as corruption.
pub const FORMAT_VERSION: u32 = 1;

/// Largest frame a reader accepts: far above any record a node can hold (a key's siblings,
/// each at most `--max-value-bytes`), far below what a corrupt length could make it allocate.
/// A frame is read as its bytes arrive, so a damaged length costs no more memory than the
/// file holds.
pub const MAX_FRAME_BYTES: usize = 1 << 30;

/// What the file says of itself, after the magic and the format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The `--cluster-id` of the ring backed up (empty if its nodes do not say).
    pub cluster_id: String,
    /// Its N.
    pub replicas: usize,
    /// When the backup started, in ms since the Unix epoch.
    pub created_ms: u64,
    /// The ringkv version that wrote the file.
    pub ringkv: String,
    /// The ring's nodes when the backup started.
    pub nodes: Vec<String>,
    /// Only keys under this prefix were copied (`--prefix`).
    #[serde(default)]
    pub prefix: Option<Bytes>,
}

/// Every frame after the header: the records, then one trailer.
#[derive(Debug, Deserialize)]
enum Frame {
    /// One key with every version the backup found (siblings, expired versions kept for
    /// their history).
    Key { key: Bytes, versions: VersionSet },
    /// The last frame: how many records came before it, and the CRC32 of their frames'
    /// bytes (length, CRC and payload each), in order.
    End { records: u64, checksum: u32 },
}

/// [`Frame`] as it is written, from borrows: serde names neither enum, so both encode the same
/// variant names and fields, and a record is written without copying its versions.
#[derive(Serialize)]
enum FrameOut<'a> {
    Key {
        key: &'a Bytes,
        versions: &'a VersionSet,
    },
    End {
        records: u64,
        checksum: u32,
    },
}

/// What a whole file holds, as its trailer vouches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub records: u64,
    /// Bytes of the whole file.
    pub bytes: u64,
}

/// Writes a backup file: [`Writer::new`], a [`Writer::record`] per key, [`Writer::finish`].
/// Without `finish` the file has no trailer, and every reader refuses it as truncated.
pub struct Writer<W: Write> {
    out: W,
    buf: BytesMut,
    checksum: crc32fast::Hasher,
    totals: Totals,
}

impl<W: Write> Writer<W> {
    /// Writes the magic, the format version and `header`.
    pub fn new(mut out: W, header: &Header) -> Result<Writer<W>> {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        // A map: later versions may add header fields that this one skips.
        codec::encode_named(header, &mut buf)?;
        out.write_all(&buf)?;
        let bytes = buf.len() as u64;
        buf.clear();
        Ok(Writer {
            out,
            buf,
            checksum: crc32fast::Hasher::new(),
            totals: Totals { records: 0, bytes },
        })
    }

    /// Appends one key.
    pub fn record(&mut self, key: &Bytes, versions: &VersionSet) -> Result<()> {
        self.buf.clear();
        codec::encode(&FrameOut::Key { key, versions }, &mut self.buf)?;
        self.checksum.update(&self.buf);
        self.out.write_all(&self.buf)?;
        self.totals.records += 1;
        self.totals.bytes += self.buf.len() as u64;
        Ok(())
    }

    /// What has been written so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Writes the trailer and flushes; returns the output and the file's totals.
    pub fn finish(mut self) -> Result<(W, Totals)> {
        self.buf.clear();
        let end = FrameOut::End {
            records: self.totals.records,
            checksum: self.checksum.clone().finalize(),
        };
        codec::encode(&end, &mut self.buf)?;
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        self.totals.bytes += self.buf.len() as u64;
        Ok((self.out, self.totals))
    }
}

/// Why a file was refused, and where: the offset of the first byte of the header or frame
/// that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub why: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.why)
    }
}

impl From<Damage> for Error {
    fn from(d: Damage) -> Error {
        Error::invalid(format!("bad backup file {d}"))
    }
}

/// Reads a backup file, verifying as it goes: each frame's CRC, then at the trailer the
/// record count and the checksum over every record, then that nothing follows.
pub struct Reader<R: Read> {
    input: R,
    offset: u64,
    checksum: crc32fast::Hasher,
    records: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the magic, the format version and the header.
    pub fn open(mut input: R) -> std::result::Result<(Reader<R>, Header), Damage> {
        let mut start = [0u8; 12];
        let got = read_full(&mut input, &mut start).map_err(|e| io_damage(0, &e))?;
        if got < MAGIC.len() || &start[..MAGIC.len()] != MAGIC {
            return Err(Damage {
                offset: 0,
                why: "not a ringkv backup (no RINGKVBK magic)".into(),
            });
        }
        if got < start.len() {
            return Err(truncated(got as u64));
        }
        let version = u32::from_be_bytes([start[8], start[9], start[10], start[11]]);
        if version > FORMAT_VERSION {
            return Err(Damage {
                offset: 8,
                why: format!(
                    "backup format {version} is newer than this build reads ({FORMAT_VERSION}): \
                     restore it with a newer ringkv"
                ),
            });
        }
        if version == 0 {
            return Err(Damage {
                offset: 8,
                why: "backup format 0 does not exist".into(),
            });
        }
        let mut reader = Reader {
            input,
            offset: start.len() as u64,
            checksum: crc32fast::Hasher::new(),
            records: 0,
            done: false,
        };
        let at = reader.offset;
        let (payload, _) = reader.frame()?.ok_or_else(|| truncated(reader.offset))?;
        let header = codec::decode_payload::<Header>(&payload).map_err(|e| Damage {
            offset: at,
            why: format!("undecodable header: {e}"),
        })?;
        Ok((reader, header))
    }

    /// The next record, or `None` after a trailer that vouches for every record before it.
    pub fn next_record(&mut self) -> std::result::Result<Option<(Bytes, VersionSet)>, Damage> {
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        let Some((payload, whole)) = self.frame()? else {
            return Err(truncated(at));
        };
        let frame = codec::decode_payload::<Frame>(&payload).map_err(|e| Damage {
            offset: at,
            why: format!("undecodable record: {e}"),
        })?;
        match frame {
            Frame::Key { key, versions } => {
                self.checksum.update(&whole);
                self.records += 1;
                Ok(Some((key, versions)))
            }
            Frame::End { records, checksum } => {
                if records != self.records {
                    return Err(Damage {
                        offset: at,
                        why: format!(
                            "the trailer counts {records} records, the file holds {}",
                            self.records
                        ),
                    });
                }
                if checksum != self.checksum.clone().finalize() {
                    return Err(Damage {
                        offset: at,
                        why: "the records' checksum does not match the trailer's".into(),
                    });
                }
                let mut extra = [0u8; 1];
                if read_full(&mut self.input, &mut extra).map_err(|e| io_damage(at, &e))? != 0 {
                    return Err(Damage {
                        offset: self.offset,
                        why: "bytes after the trailer".into(),
                    });
                }
                self.done = true;
                Ok(None)
            }
        }
    }

    /// The totals of a file read to its end.
    pub fn totals(&self) -> Totals {
        Totals {
            records: self.records,
            bytes: self.offset,
        }
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// One verified frame: its payload and its whole bytes; `None` at a clean end of file.
    fn frame(&mut self) -> std::result::Result<Option<(Bytes, Bytes)>, Damage> {
        let at = self.offset;
        let mut head = [0u8; HEADER_LEN];
        let got = read_full(&mut self.input, &mut head).map_err(|e| io_damage(at, &e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(truncated(at));
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_FRAME_BYTES {
            return Err(Damage {
                offset: at,
                why: format!("a frame of {len} bytes, over the {MAX_FRAME_BYTES} a file may hold"),
            });
        }
        let mut whole = Vec::with_capacity(HEADER_LEN + len.min(1 << 20));
        whole.extend_from_slice(&head);
        (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut whole)
            .map_err(|e| io_damage(at, &e))?;
        if whole.len() < HEADER_LEN + len {
            return Err(truncated(at));
        }
        if crc32fast::hash(&whole[HEADER_LEN..]) != crc {
            return Err(Damage {
                offset: at,
                why: "frame checksum mismatch (the file is damaged)".into(),
            });
        }
        self.offset += whole.len() as u64;
        let whole = Bytes::from(whole);
        Ok(Some((whole.slice(HEADER_LEN..), whole)))
    }
}

fn truncated(offset: u64) -> Damage {
    Damage {
        offset,
        why: "the file ends early (truncated: no complete trailer)".into(),
    }
}

fn io_damage(offset: u64, err: &std::io::Error) -> Damage {
    Damage {
        offset,
        why: format!("cannot read: {err}"),
    }
}

/// Reads until `buf` is full or the input ends; the number of bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Actor, Meta};

    fn header() -> Header {
        Header {
            cluster_id: "c1".into(),
            replicas: 3,
            created_ms: 1_700_000_000_000,
            ringkv: "0.2.0".into(),
            nodes: vec!["n1".into(), "n2".into()],
            prefix: None,
        }
    }

    fn set(value: &str, ct: Option<&str>) -> VersionSet {
        let mut vs = VersionSet::new();
        let a = Actor::new("n1", 7);
        vs.write_above(
            &a,
            None,
            Some(Bytes::copy_from_slice(value.as_bytes())),
            Meta {
                content_type: ct.map(Box::from),
                expires_at: Some(42),
            }
            .boxed(),
            0,
        );
        vs
    }

    fn file(n: usize) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        for i in 0..n {
            let key = Bytes::from(format!("k{i}\0\u{ff}"));
            w.record(&key, &set(&format!("v{i}"), Some("text/plain")))
                .unwrap();
        }
        let (bytes, totals) = w.finish().unwrap();
        assert_eq!(totals.records, n as u64);
        assert_eq!(totals.bytes, bytes.len() as u64);
        bytes
    }

    fn read_all(bytes: &[u8]) -> std::result::Result<(Header, Vec<(Bytes, VersionSet)>), Damage> {
        let (mut r, h) = Reader::open(bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        assert_eq!(r.totals().bytes, bytes.len() as u64);
        Ok((h, out))
    }

    #[test]
    fn a_file_reads_back_whole() {
        let bytes = file(5);
        let (h, recs) = read_all(&bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[3].0, Bytes::from("k3\0\u{ff}"));
        assert_eq!(recs[3].1, set("v3", Some("text/plain")));
        let (_, none) = read_all(&file(0)).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = file(3);
        for len in 0..bytes.len() {
            let err = read_all(&bytes[..len]).unwrap_err();
            assert!(err.offset <= len as u64, "cut at {len}: {err}");
            if len >= 12 {
                assert!(err.why.contains("truncated"), "cut at {len}: {err}");
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_refused_at_or_before_it() {
        let bytes = file(3);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let err = read_all(&bad).unwrap_err();
            assert!(err.offset <= i as u64, "flip at {i}: {err}");
        }
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let mut bytes = file(1);
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
        let err = read_all(&bytes).unwrap_err();
        assert_eq!(err.offset, 8);
        assert!(err.why.contains("newer"), "{err}");
    }

    #[test]
    fn bytes_after_the_trailer_are_refused() {
        let mut bytes = file(1);
        bytes.push(0);
        let err = read_all(&bytes).unwrap_err();
        assert!(err.why.contains("after the trailer"), "{err}");
    }

    #[test]
    fn a_dropped_record_is_caught_by_the_trailer() {
        // Two files of 2 and 3 records: splice the 3-record file's trailer onto 2 records.
        let two = file(2);
        let three = file(3);
        let (mut r, _) = Reader::open(&three[..]).unwrap();
        r.next_record().unwrap();
        r.next_record().unwrap();
        let third_at = r.offset() as usize;
        r.next_record().unwrap();
        let trailer_at = r.offset() as usize;
        let mut spliced = three[..third_at].to_vec();
        spliced.extend_from_slice(&three[trailer_at..]);
        let err = read_all(&spliced).unwrap_err();
        assert!(err.why.contains("counts 3 records"), "{err}");
        assert_ne!(two, spliced);
    }
}
