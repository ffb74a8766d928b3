//! The arithmetic of one open file, without I/O: its chunk map as last
//! committed and the bytes written since (the write buffer), with what the
//! flush (`fs/flush.rs`) asks of them.
//!
//! Flush re-chunks only around what changed: each dirty region starts at
//! the beginning of the old chunk it falls in and ends at the first cut
//! point, past the region, that coincides with an old chunk boundary (or at
//! end of file). Content-defined cuts re-synchronise within a few chunks,
//! so a 1 KiB overwrite in a large file stores only a handful of chunks.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::{Bytes, BytesMut};
use dfs_proto::MappedChunk;

/// Byte ranges written but not yet committed, as non-overlapping extents
/// keyed by offset.
#[derive(Default, Debug)]
pub struct WriteBuffer {
    extents: BTreeMap<u64, Extent>,
    bytes: usize,
}

/// One run of buffered bytes. Open while writes grow it in place; sealed
/// once a flush cuts chunks from it, which are then slices of its bytes,
/// not copies. A write into a sealed extent opens it again, copying it
/// only while a flush still holds slices of it.
#[derive(Debug)]
enum Extent {
    Open(BytesMut),
    Sealed(Bytes),
}

impl Extent {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Extent::Open(bytes) => bytes,
            Extent::Sealed(bytes) => bytes,
        }
    }

    fn open(&mut self) -> &mut BytesMut {
        let bytes = match std::mem::replace(self, Extent::Open(BytesMut::new())) {
            Extent::Open(bytes) => bytes,
            Extent::Sealed(bytes) => bytes
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..])),
        };
        *self = Extent::Open(bytes);
        match self {
            Extent::Open(bytes) => bytes,
            Extent::Sealed(_) => unreachable!("the extent was opened just above"),
        }
    }

    /// Its bytes, shared from now on.
    fn seal(&mut self) -> Bytes {
        let bytes = match std::mem::replace(self, Extent::Sealed(Bytes::new())) {
            Extent::Open(bytes) => bytes.freeze(),
            Extent::Sealed(bytes) => bytes,
        };
        *self = Extent::Sealed(bytes.clone());
        bytes
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Extent::Open(bytes) => bytes.truncate(len),
            Extent::Sealed(bytes) => bytes.truncate(len),
        }
    }

    /// Keeps `[0, at)`, returns the rest.
    fn split_off(&mut self, at: usize) -> Extent {
        match self {
            Extent::Open(bytes) => Extent::Open(bytes.split_off(at)),
            Extent::Sealed(bytes) => Extent::Sealed(bytes.split_off(at)),
        }
    }
}

impl WriteBuffer {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records `data` at `offset`, replacing whatever was buffered there.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Fast path for sequential writes: grow the extent that ends here.
        let nothing_after = self.extents.range(offset..end).next().is_none();
        if let Some((&start, last)) = self.extents.range_mut(..=offset).next_back() {
            if start + last.len() as u64 == offset && nothing_after {
                last.open().extend_from_slice(data);
                self.bytes += data.len();
                return;
            }
        }
        // General case: merge every extent touching [offset, end].
        let first = match self.extents.range(..offset).next_back() {
            Some((&s, v)) if s + v.len() as u64 >= offset => s,
            _ => offset,
        };
        let touching: Vec<u64> = self
            .extents
            .range((Bound::Included(first), Bound::Included(end)))
            .map(|(&s, _)| s)
            .collect();
        let mut merged_start = offset;
        let mut merged_end = end;
        let mut pieces = Vec::with_capacity(touching.len());
        for s in touching {
            if let Some(v) = self.extents.remove(&s) {
                self.bytes -= v.len();
                merged_start = merged_start.min(s);
                merged_end = merged_end.max(s + v.len() as u64);
                pieces.push((s, v));
            }
        }
        let mut merged = BytesMut::zeroed((merged_end - merged_start) as usize);
        for (s, v) in pieces {
            let at = (s - merged_start) as usize;
            merged[at..at + v.len()].copy_from_slice(v.as_slice());
        }
        let at = (offset - merged_start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.extents.insert(merged_start, Extent::Open(merged));
    }

    /// `[start, end)` without a copy, when one extent holds all of it: the
    /// bytes a reader of the file sees there, whatever was committed
    /// before. The extent is sealed (see [`Extent`]).
    pub fn shared(&mut self, start: u64, end: u64) -> Option<Bytes> {
        let (&s, extent) = self.extents.range_mut(..=start).next_back()?;
        if s + (extent.len() as u64) < end || end < start {
            return None;
        }
        Some(
            extent
                .seal()
                .slice((start - s) as usize..(end - s) as usize),
        )
    }

    /// Copies buffered bytes that fall in `[start, start + out.len())` over `out`.
    pub fn overlay(&self, start: u64, out: &mut [u8]) {
        let end = start + out.len() as u64;
        let first = match self.extents.range(..=start).next_back() {
            Some((&s, _)) => s,
            None => start,
        };
        for (&s, v) in self.extents.range(first..end) {
            let e = s + v.len() as u64;
            if e <= start {
                continue;
            }
            let from = s.max(start);
            let to = e.min(end);
            out[(from - start) as usize..(to - start) as usize]
                .copy_from_slice(&v.as_slice()[(from - s) as usize..(to - s) as usize]);
        }
    }

    /// The dirty ranges, in order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.extents
            .iter()
            .map(|(&s, v)| (s, s + v.len() as u64))
            .collect()
    }

    /// Drops everything at or past `size` (truncation).
    pub fn truncate(&mut self, size: u64) {
        let doomed: Vec<u64> = self.extents.range(size..).map(|(&s, _)| s).collect();
        for s in doomed {
            if let Some(v) = self.extents.remove(&s) {
                self.bytes -= v.len();
            }
        }
        if let Some((&s, v)) = self.extents.range_mut(..size).next_back() {
            let keep = (size - s) as usize;
            if v.len() > keep {
                self.bytes -= v.len() - keep;
                v.truncate(keep);
            }
        }
    }

    /// Drops everything before `offset` (committed by a partial flush),
    /// keeping the part of an extent that reaches past it.
    pub fn drain_before(&mut self, offset: u64) {
        if offset == u64::MAX {
            self.clear();
            return;
        }
        let doomed: Vec<u64> = self.extents.range(..offset).map(|(&s, _)| s).collect();
        for s in doomed {
            if let Some(mut v) = self.extents.remove(&s) {
                self.bytes -= v.len();
                let end = s + v.len() as u64;
                if end > offset {
                    let rest = v.split_off((offset - s) as usize);
                    self.bytes += rest.len();
                    self.extents.insert(offset, rest);
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.extents.clear();
        self.bytes = 0;
    }

    /// Puts `older` (bytes a failed flush still holds) back under this
    /// buffer: where both have bytes, this buffer's, written later, win.
    pub fn put_back_under(&mut self, older: WriteBuffer) {
        let newer = std::mem::replace(self, older);
        for (offset, data) in newer.extents {
            self.write(offset, data.as_slice());
        }
    }
}

/// The committed chunk map of a file, keyed by offset.
#[derive(Default, Debug, Clone)]
pub struct ChunkMap {
    pub chunks: BTreeMap<u64, MappedChunk>,
}

impl ChunkMap {
    /// Whether some chunk read from chunk servers has no read tokens: a
    /// map this client made from its own upload.
    pub fn has_unsigned_chunks(&self) -> bool {
        self.chunks
            .values()
            .any(|c| c.shard_tokens.is_empty() && c.chunk.as_ref().is_some_and(|r| !r.is_inline()))
    }

    /// Chunks overlapping `[start, end)`, in order (none for an empty or
    /// inverted range: readahead past the committed size asks for one).
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<MappedChunk> {
        self.overlapping_iter(start, end).cloned().collect()
    }

    /// [`Self::overlapping`] without copies: readahead looks at a window
    /// of hundreds of chunks on every read, and a chunk with its shard
    /// tokens is a dozen allocations to clone.
    pub fn overlapping_iter(&self, start: u64, end: u64) -> impl Iterator<Item = &MappedChunk> {
        let first = match self.chunks.range(..=start).next_back() {
            Some((&s, _)) => s,
            None => start,
        };
        let range = if start < end {
            self.chunks.range(first..end)
        } else {
            self.chunks.range(0..0)
        };
        range
            .filter(move |(&s, c)| s + u64::from(c.len) > start)
            .map(|(_, c)| c)
    }

    /// Where re-chunking must start for a change at `offset`: the start of
    /// the chunk containing it; the start of the last chunk when appending
    /// right after it (its end was forced by end of file, not content).
    pub fn region_start(&self, offset: u64) -> u64 {
        match self.chunks.range(..=offset).next_back() {
            Some((&s, c)) if s + u64::from(c.len) > offset => s,
            Some((&s, c))
                if s + u64::from(c.len) == offset
                    && self.chunks.range(offset..).next().is_none() =>
            {
                s
            }
            // In a hole or past the end: nothing old to re-cut before it.
            _ => offset,
        }
    }

    /// `[start, end)` widened to whole chunks: from the start of the chunk
    /// containing `start` to the end of the chunk containing `end - 1`
    /// (the bounds themselves where they fall in a hole). Replacing that
    /// range never cuts an old chunk in two.
    pub fn covering(&self, start: u64, end: u64) -> (u64, u64) {
        let from = self
            .overlapping(start, start + 1)
            .first()
            .map_or(start, |c| c.offset);
        let to = self
            .overlapping(end.saturating_sub(1), end)
            .first()
            .map_or(end, |c| c.offset + u64::from(c.len));
        (from, to.max(end))
    }

    /// True when an old chunk contains `offset` (not in a hole, not past
    /// the end).
    pub fn covers(&self, offset: u64) -> bool {
        matches!(self.chunks.range(..=offset).next_back(), Some((&s, c)) if s + u64::from(c.len) > offset)
    }

    /// True when an old chunk starts exactly at `offset`: re-chunking that
    /// reaches it can stop, everything after is unchanged.
    pub fn is_boundary(&self, offset: u64) -> bool {
        self.chunks.contains_key(&offset)
    }

    /// Replaces the chunks starting in `[start, end)` with `new`.
    pub fn replace(&mut self, start: u64, end: u64, new: impl IntoIterator<Item = MappedChunk>) {
        let doomed: Vec<u64> = self.chunks.range(start..end).map(|(&s, _)| s).collect();
        for s in doomed {
            self.chunks.remove(&s);
        }
        for c in new {
            self.chunks.insert(c.offset, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, len: u32) -> MappedChunk {
        MappedChunk {
            shard_tokens: Default::default(),
            offset,
            len,
            fingerprint: vec![0; 32],
            chunk: None,
        }
    }

    #[test]
    fn write_buffer_merges_and_overlays() {
        let mut b = WriteBuffer::default();
        b.write(10, b"hello");
        b.write(15, b"world"); // sequential append
        b.write(0, b"AB");
        b.write(12, b"LL"); // overwrite inside
        assert_eq!(b.ranges(), vec![(0, 2), (10, 20)]);
        assert_eq!(b.bytes(), 12);
        let mut out = vec![b'.'; 22];
        b.overlay(0, &mut out);
        assert_eq!(&out, b"AB........heLLoworld..");
        b.write(1, b"0123456789"); // bridges both extents
        assert_eq!(b.ranges(), vec![(0, 20)]);
        let mut out = vec![b'.'; 20];
        b.overlay(0, &mut out);
        assert_eq!(&out, b"A0123456789eLLoworld");
        b.truncate(5);
        assert_eq!(b.ranges(), vec![(0, 5)]);
        assert_eq!(b.bytes(), 5);
    }

    #[test]
    fn drain_before_splits_the_extent_it_cuts() {
        let mut b = WriteBuffer::default();
        b.write(0, b"abcd");
        b.write(10, b"0123456789");
        b.drain_before(14);
        assert_eq!(b.ranges(), vec![(14, 20)]);
        assert_eq!(b.bytes(), 6);
        let mut out = vec![b'.'; 8];
        b.overlay(13, &mut out);
        assert_eq!(&out, b".456789.");
        b.drain_before(u64::MAX);
        assert!(b.is_empty() && b.bytes() == 0);
    }

    #[test]
    fn put_back_under_keeps_the_newer_bytes() {
        let mut older = WriteBuffer::default();
        older.write(0, b"oooooooo");
        older.write(20, b"OO");
        let mut newer = WriteBuffer::default();
        newer.write(4, b"nnnnnn"); // overlaps and extends the first extent
        newer.write(30, b"N");
        newer.put_back_under(older);
        assert_eq!(newer.ranges(), vec![(0, 10), (20, 22), (30, 31)]);
        assert_eq!(newer.bytes(), 13);
        let mut out = vec![b'.'; 31];
        newer.overlay(0, &mut out);
        assert_eq!(&out, b"oooonnnnnn..........OO........N");
    }

    #[test]
    fn shared_windows_are_slices_and_later_writes_never_change_them() {
        let mut b = WriteBuffer::default();
        b.write(100, b"0123456789");
        assert_eq!(b.shared(99, 105), None, "starts before the extent");
        assert_eq!(b.shared(105, 111), None, "ends past it");
        let window = b.shared(102, 108).expect("one extent holds it");
        assert_eq!(&window[..], b"234567");
        // Writes into and after the sealed extent: the window keeps the
        // bytes it was cut with, the buffer has the new ones.
        b.write(104, b"ab");
        b.write(110, b"XY");
        assert_eq!(&window[..], b"234567");
        let mut out = vec![b'.'; 13];
        b.overlay(100, &mut out);
        assert_eq!(&out, b"0123ab6789XY.");
        assert_eq!(b.bytes(), 12);
        // Truncating and draining a sealed extent.
        let whole = b.shared(100, 112).expect("one extent holds it");
        b.truncate(111);
        b.drain_before(103);
        assert_eq!(b.ranges(), vec![(103, 111)]);
        assert_eq!(b.bytes(), 8);
        assert_eq!(&whole[..], b"0123ab6789XY");
        drop((window, whole));
        // No slice left: the write reopens the extent in place.
        b.write(111, b"Z");
        let mut out = vec![b'.'; 9];
        b.overlay(103, &mut out);
        assert_eq!(&out, b"3ab6789XZ");
    }

    #[test]
    fn overlay_of_a_window_inside_an_extent() {
        let mut b = WriteBuffer::default();
        b.write(100, &[7u8; 50]);
        let mut out = vec![0u8; 10];
        b.overlay(120, &mut out);
        assert_eq!(out, vec![7u8; 10]);
        let mut out = vec![0u8; 10];
        b.overlay(145, &mut out);
        assert_eq!(out, [7, 7, 7, 7, 7, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn chunk_map_regions() {
        let mut m = ChunkMap::default();
        m.replace(0, 0, [chunk(0, 100), chunk(100, 50), chunk(150, 70)]);
        assert_eq!(m.region_start(120), 100);
        assert_eq!(m.region_start(100), 100);
        assert_eq!(m.region_start(220), 150, "append re-chunks the last chunk");
        assert_eq!(m.region_start(300), 300, "a write past a hole starts fresh");
        assert!(m.is_boundary(150) && !m.is_boundary(160));
        assert_eq!(
            m.overlapping(90, 151)
                .iter()
                .map(|c| c.offset)
                .collect::<Vec<_>>(),
            vec![0, 100, 150]
        );
        assert!(
            m.overlapping(300, 200).is_empty(),
            "an inverted range is empty"
        );
        assert!(m.overlapping(120, 120).is_empty());
        assert_eq!(m.covering(120, 160), (100, 220), "widened to whole chunks");
        assert_eq!(m.covering(100, 150), (100, 150), "already on boundaries");
        assert_eq!(m.covering(250, 300), (250, 300), "in a hole / past the end");
        m.replace(100, 220, [chunk(100, 120)]);
        assert_eq!(m.chunks.keys().copied().collect::<Vec<_>>(), vec![0, 100]);
    }
}
