//! Operations on byte ranges of a file: truncation, hole punching,
//! SEEK_DATA/SEEK_HOLE and copy_file_range by sharing chunks.

use super::*;

impl Dfs {
    /// Truncates (or extends with a hole) to `size`.
    pub async fn truncate(&self, st: &mut FileState, size: u64) -> Result<(), DfsError> {
        self.settle(st).await;
        // Buffered bytes past the new end are gone; the rest is committed
        // first so the truncation below works on committed chunks only.
        let before = st.buffer.bytes();
        st.buffer.truncate(size);
        self.track_dirty(before, st.buffer.bytes());
        if st.size > size {
            st.size = size.max(st.committed_size);
        }
        self.flush(st).await?;
        let mut replaced = Vec::new();
        let mut raw = Vec::new();
        if size < st.committed_size {
            let start = st.map.region_start(size);
            raw = self.recut(st, start, size).await?;
            replaced.push(ByteRange {
                start,
                end: u64::MAX,
            });
        }
        st.touch();
        st.size = size;
        let result = self.commit(st, replaced, raw, size, true, u64::MAX).await;
        if result.is_err() {
            // Not truncated after all: keep the size that is committed.
            st.size = st.committed_size;
        }
        result
    }

    /// Makes `[offset, offset + len)` a hole (fallocate PUNCH_HOLE): the
    /// chunks inside go from the map, the chunks cut by either edge are
    /// re-cut to keep the bytes outside, and the size stays.
    pub async fn punch_hole(
        &self,
        st: &mut FileState,
        offset: u64,
        len: u64,
    ) -> Result<(), DfsError> {
        self.flush(st).await?;
        let end = offset.saturating_add(len).min(st.committed_size);
        // In pieces: one commit removes at most ~1,000 chunk entries (32 MiB
        // of minimum-size chunks), far under the transaction limits.
        let mut at = offset;
        while at < end {
            let piece_end = end.min(at.saturating_add(PUNCH_PIECE_BYTES));
            self.punch_piece(st, at, piece_end).await?;
            at = piece_end;
        }
        Ok(())
    }

    pub(super) async fn punch_piece(
        &self,
        st: &mut FileState,
        offset: u64,
        end: u64,
    ) -> Result<(), DfsError> {
        if offset >= end {
            return Ok(());
        }
        let (start, stop) = st.map.covering(offset, end);
        let mut raw = self.recut(st, start, offset).await?;
        raw.extend(self.recut(st, end, stop).await?);
        let replaced = vec![ByteRange { start, end: stop }];
        st.touch();
        let size = st.committed_size;
        self.commit(st, replaced, raw, size, false, u64::MAX).await
    }

    /// The committed bytes of `[start, end)` cut into chunks from `start`.
    pub(super) async fn recut(
        &self,
        st: &FileState,
        start: u64,
        end: u64,
    ) -> Result<Vec<RawChunk>, DfsError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let data = Bytes::from(self.read_range(st, start, end).await?);
        let mut pos = start;
        let mut out = Vec::new();
        for len in chunker::cut_lengths(&data, true) {
            let at = (pos - start) as usize;
            out.push(RawChunk::new(pos, data.slice(at..at + len)));
            pos += len as u64;
        }
        Ok(out)
    }

    /// lseek's SEEK_DATA / SEEK_HOLE over committed chunks and buffered
    /// writes; `None` is ENXIO (no data at or after `offset`, or past EOF).
    /// Holes are reported in whole 4 KiB blocks, as block file systems do
    /// (tools and tests that probe the allocation unit expect one): a
    /// smaller gap between data reads as zeros but counts as data.
    pub fn seek_data_or_hole(&self, st: &FileState, offset: u64, data: bool) -> Option<u64> {
        const HOLE_UNIT: u64 = 4096;
        if offset >= st.size {
            return None;
        }
        // Data extents in order, widened to whole blocks: chunks and
        // buffered ranges, merged.
        let widen = |(s, e): (u64, u64)| {
            (
                s / HOLE_UNIT * HOLE_UNIT,
                e.div_ceil(HOLE_UNIT).saturating_mul(HOLE_UNIT).min(st.size),
            )
        };
        let mut extents: Vec<(u64, u64)> = st
            .map
            .overlapping(offset.saturating_sub(HOLE_UNIT), st.size)
            .iter()
            .map(|c| (c.offset, c.offset + u64::from(c.len)))
            .chain(st.buffer.ranges())
            .map(widen)
            .filter(|&(_, e)| e > offset)
            .collect();
        extents.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in extents {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        if data {
            merged
                .iter()
                .find(|&&(_, e)| e > offset)
                .map(|&(s, _)| s.max(offset))
        } else {
            let mut pos = offset;
            for &(s, e) in &merged {
                if s > pos {
                    break;
                }
                pos = pos.max(e);
            }
            Some(pos.min(st.size))
        }
    }

    /// copy_file_range between two open files (or within one): locks both
    /// states in inode order (two opposite copies never deadlock), shares
    /// chunks, and copies bytes instead if a shared chunk was collected
    /// between reading the map and the commit.
    pub async fn copy_file_range(
        &self,
        src: &Arc<OpenFile>,
        dst: &Arc<OpenFile>,
        in_offset: u64,
        out_offset: u64,
        len: u64,
    ) -> Result<u64, DfsError> {
        let shared = self
            .copy_locked(src, dst, in_offset, out_offset, len, true)
            .await;
        match shared {
            Err(e) if !e.missing_chunks.is_empty() => {
                tracing::info!("shared chunks were collected meanwhile; copying bytes");
                self.copy_locked(src, dst, in_offset, out_offset, len, false)
                    .await
            }
            other => other,
        }
    }

    pub(super) async fn copy_locked(
        &self,
        src: &Arc<OpenFile>,
        dst: &Arc<OpenFile>,
        in_offset: u64,
        out_offset: u64,
        len: u64,
        share: bool,
    ) -> Result<u64, DfsError> {
        if Arc::ptr_eq(src, dst) {
            let mut st = self.lock(src).await;
            return self
                .copy_range(&mut st, None, in_offset, out_offset, len, share)
                .await;
        }
        let (first, second) = if src.ino < dst.ino {
            (src, dst)
        } else {
            (dst, src)
        };
        let mut a = self.lock(first).await;
        let mut b = self.lock(second).await;
        let (s, d) = if src.ino < dst.ino {
            (&mut *a, &mut *b)
        } else {
            (&mut *b, &mut *a)
        };
        self.copy_range(s, Some(d), in_offset, out_offset, len, share)
            .await
    }

    /// copy_file_range inside the cluster: the source chunks that lie
    /// wholly in the range are referenced again at their new offsets (no
    /// data moves, no space is used), the bytes at either edge are copied
    /// through the write buffer. Returns the bytes copied. Without `share`
    /// every byte is copied (the fallback when shared chunks were
    /// collected between reading the map and the commit: the commit then
    /// fails with `missing_chunks` and nothing changed).
    pub(super) async fn copy_range(
        &self,
        src: &mut FileState,
        dst: Option<&mut FileState>,
        in_offset: u64,
        out_offset: u64,
        len: u64,
        share: bool,
    ) -> Result<u64, DfsError> {
        self.flush(src).await?;
        let in_end = in_offset.saturating_add(len).min(src.size);
        if in_offset >= in_end {
            return Ok(0);
        }
        let len = in_end - in_offset;
        let out_of = |at: u64| out_offset + (at - in_offset);
        let whole: Vec<MappedChunk> = src
            .map
            .overlapping(in_offset, in_end)
            .into_iter()
            .filter(|c| share && c.offset >= in_offset && c.offset + u64::from(c.len) <= in_end)
            .collect();
        // Edges are copied as bytes; so is everything when no chunk fits.
        let (mid_start, mid_end) = match (whole.first(), whole.last()) {
            (Some(f), Some(l)) => (f.offset, l.offset + u64::from(l.len)),
            _ => (in_end, in_end),
        };
        let src_ino = src.ino;
        let head = self.read_range(src, in_offset, mid_start).await?;
        // Bytes copied through memory stay bounded by COPY_BYTES_MAX (see
        // the caller); shared chunks are free.
        let tail = self.read_range(src, mid_end, in_end).await?;
        let dst: &mut FileState = match dst {
            Some(d) => d,
            None => src,
        };
        self.flush(dst).await?;
        if !whole.is_empty() {
            let (d_start, d_end) = (out_of(mid_start), out_of(mid_end));
            let (start, stop) = dst.map.covering(d_start, d_end);
            let before = self.recut(dst, start, d_start).await?;
            let after = self
                .recut(dst, d_end, stop.min(dst.committed_size).max(d_end))
                .await?;
            let shared: Vec<MappedChunk> = whole
                .iter()
                .map(|c| MappedChunk {
                    offset: out_of(c.offset),
                    ..c.clone()
                })
                .collect();
            let new_size = dst.committed_size.max(d_end);
            let mut chunks = self.cluster.store_chunks(self.codec, before).await?;
            chunks.extend(shared.into_iter().map(|mapped| StoredChunk {
                mapped,
                uploaded: false,
                data: Bytes::new(),
            }));
            chunks.extend(self.cluster.store_chunks(self.codec, after).await?);
            dst.touch();
            let replaced = vec![ByteRange { start, end: stop }];
            self.commit_inner(dst, replaced, chunks, new_size, false, u64::MAX)
                .await?;
            tracing::info!(
                src = src_ino,
                dst = dst.ino,
                shared_chunks = whole.len(),
                shared_bytes = mid_end - mid_start,
                copied_bytes = head.len() + tail.len(),
                "copy_file_range shared chunks"
            );
        }
        self.write(dst, out_offset, &head).await?;
        self.write(dst, out_of(mid_end), &tail).await?;
        Ok(len)
    }
}
