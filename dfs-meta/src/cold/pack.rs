//! The layout of a pack object: frames one after the other, each the raw
//! bytes of a run of chunks compressed together (`codec::compress_frame`).
//! A chunk's record says where its frame starts, how long it is stored
//! and raw, and where the chunk starts in the raw frame; nothing else in
//! the object is needed to read it.

use dfs_core::codec;
use dfs_proto::{Codec, PackedLocation};

use super::ColdError;

/// Raw bytes of chunks compressed together in one frame. Bigger frames
/// compress better (more context) and cost more to recall: reading one
/// cold chunk fetches and decompresses its whole frame. Measured on the
/// source trees of `bench/efficiency.sh`: see README.
pub const FRAME_RAW_BYTES: usize = 4 << 20;

/// A pack is written once it holds this many stored bytes (or a pass
/// ends): one PUT of this size per pack, never one per chunk.
pub const PACK_BYTES: u64 = 64 << 20;

/// The sizes a migration aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSizes {
    pub frame_raw_bytes: usize,
    pub pack_bytes: u64,
}

impl Default for PackSizes {
    fn default() -> Self {
        Self {
            frame_raw_bytes: FRAME_RAW_BYTES,
            pack_bytes: PACK_BYTES,
        }
    }
}

impl PackSizes {
    /// Packs of about `pack_bytes` (a test hook, `dfs-meta
    /// --cold-pack-bytes`: many small packs make a migration long enough
    /// to kill a process in the middle of it), frames no bigger.
    pub fn small(pack_bytes: u64) -> Self {
        let pack_bytes = pack_bytes.max(1);
        Self {
            frame_raw_bytes: usize::try_from(pack_bytes)
                .unwrap_or(usize::MAX)
                .min(FRAME_RAW_BYTES),
            pack_bytes,
        }
    }
}

/// The object of pack `pack`, under the cold store's prefix.
pub fn object_name(pack: u64) -> String {
    format!("packs/{pack:016x}")
}

/// Chunks gathered for one frame, raw.
#[derive(Default)]
pub struct Frame {
    raw: Vec<u8>,
    /// Fingerprint, offset in `raw`.
    members: Vec<(Vec<u8>, u32)>,
}

impl Frame {
    pub fn add(&mut self, fingerprint: Vec<u8>, raw: &[u8]) {
        self.members.push((fingerprint, self.raw.len() as u32));
        self.raw.extend_from_slice(raw);
    }

    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether adding `len` more raw bytes would pass `limit` raw bytes
    /// ([`FRAME_RAW_BYTES`] but in tests).
    pub fn is_full_for(&self, len: usize, limit: usize) -> bool {
        !self.is_empty() && self.raw.len() + len > limit
    }
}

/// A chunk placed in a pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub fingerprint: Vec<u8>,
    pub location: PackedLocation,
}

/// A pack being assembled.
#[derive(Default)]
pub struct PackBuilder {
    body: Vec<u8>,
    placed: Vec<Placed>,
}

impl PackBuilder {
    /// Compresses `frame` and appends it. CPU-bound (xz): call it off the
    /// async runtime.
    pub fn add_frame(&mut self, frame: Frame) {
        if frame.is_empty() {
            return;
        }
        let (frame_codec, stored) = codec::compress_frame(&frame.raw);
        let frame_offset = self.body.len() as u64;
        for (fingerprint, offset) in frame.members {
            let mut location = PackedLocation {
                frame_offset,
                frame_len: stored.len() as u32,
                frame_raw_len: frame.raw.len() as u32,
                offset,
                ..PackedLocation::default()
            };
            location.set_frame_codec(frame_codec);
            self.placed.push(Placed {
                fingerprint,
                location,
            });
        }
        self.body.extend_from_slice(&stored);
    }

    /// Stored bytes so far.
    pub fn len(&self) -> u64 {
        self.body.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    /// The object's bytes and where each chunk went, as pack `pack`.
    pub fn finish(self, pack: u64) -> (Vec<u8>, Vec<Placed>) {
        let mut placed = self.placed;
        for p in &mut placed {
            p.location.pack = pack;
        }
        (self.body, placed)
    }
}

/// The raw frame from its stored bytes.
pub fn frame_raw(stored: &[u8], location: &PackedLocation) -> Result<Vec<u8>, ColdError> {
    if stored.len() != location.frame_len as usize {
        return Err(ColdError::Corrupt(format!(
            "frame of {} bytes where {} were expected",
            stored.len(),
            location.frame_len
        )));
    }
    let codec = Codec::try_from(location.frame_codec)
        .map_err(|_| ColdError::Corrupt(format!("unknown codec {}", location.frame_codec)))?;
    codec::decompress(codec, stored, location.frame_raw_len as usize)
        .map_err(|e| ColdError::Corrupt(format!("frame does not decode: {e}")))
}

/// A chunk of `raw_len` bytes cut from its raw frame.
pub fn chunk_in<'a>(
    frame: &'a [u8],
    location: &PackedLocation,
    raw_len: u32,
) -> Result<&'a [u8], ColdError> {
    let start = location.offset as usize;
    frame
        .get(start..start + raw_len as usize)
        .ok_or_else(|| ColdError::Corrupt(format!("chunk at {start} past its frame's end")))
}

/// The stored bytes a packed chunk accounts for in `dfs stats`: its share
/// of its frame's, by raw length (at least 1).
pub fn stored_share(location: &PackedLocation, raw_len: u32) -> u32 {
    let share = u64::from(location.frame_len) * u64::from(raw_len)
        / u64::from(location.frame_raw_len.max(1));
    u32::try_from(share).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(seed: usize, len: usize) -> Vec<u8> {
        (0..)
            .flat_map(|i| format!("line {i} of file {seed}: let x = {};\n", i % 17).into_bytes())
            .take(len)
            .collect()
    }

    #[test]
    fn chunks_come_back_from_their_frames() {
        let chunks: Vec<Vec<u8>> = (0..40).map(|i| text(i % 7, 150_000 + i * 1000)).collect();
        let mut pack = PackBuilder::default();
        let mut frame = Frame::default();
        for (i, c) in chunks.iter().enumerate() {
            if frame.is_full_for(c.len(), FRAME_RAW_BYTES) {
                pack.add_frame(std::mem::take(&mut frame));
            }
            frame.add(vec![i as u8], c);
        }
        pack.add_frame(frame);
        let raw_total: usize = chunks.iter().map(Vec::len).sum();
        assert!(
            pack.len() * 20 < raw_total as u64,
            "{} of {raw_total}",
            pack.len()
        );
        let (body, placed) = pack.finish(7);
        assert_eq!(placed.len(), chunks.len());
        let frames: std::collections::BTreeSet<u64> =
            placed.iter().map(|p| p.location.frame_offset).collect();
        assert!(frames.len() > 1, "several frames");
        for (p, c) in placed.iter().zip(&chunks) {
            let loc = &p.location;
            assert_eq!(loc.pack, 7);
            let stored = &body[loc.frame_offset as usize..][..loc.frame_len as usize];
            let raw = frame_raw(stored, loc).unwrap();
            assert_eq!(chunk_in(&raw, loc, c.len() as u32).unwrap(), &c[..]);
            assert!(stored_share(loc, c.len() as u32) < c.len() as u32);
        }
        // A damaged frame is an error, never other bytes.
        let loc = &placed[0].location;
        let mut stored = body[..loc.frame_len as usize].to_vec();
        stored[loc.frame_len as usize / 2] ^= 0x55;
        let bad = frame_raw(&stored, loc);
        assert!(
            bad.is_err()
                || chunk_in(&bad.unwrap(), loc, chunks[0].len() as u32).unwrap() != chunks[0]
        );
        assert!(frame_raw(&stored[1..], loc).is_err());
        assert!(chunk_in(&[0u8; 10], loc, 11).is_err());
    }
}
