//! Buffered writes on their way to the cluster: `write` into the buffer,
//! write-behind flushes in the background, and the flush itself (re-cut
//! the dirty ranges, store the chunks, commit the chunk map).

use super::*;

impl Dfs {
    /// Hands the buffered bytes to a flush in the background once there are
    /// enough of them, so cutting, hashing and storing them overlaps the
    /// writes that follow (the kernel sends one write at a time per file).
    /// One runs per file: when the previous one is still busy, this waits
    /// for it, which bounds the memory a fast writer holds. A failure is
    /// not lost: the bytes go back into the buffer and the next foreground
    /// flush (a later write, fsync or close) retries them and reports.
    pub async fn write_behind(self: &Arc<Self>, st: &mut FileState) {
        if st.buffer.bytes() < write_behind_bytes(self.group_bytes())
            || st.behind_failed
            || st.orphaned
            || !st.loaded
        {
            return;
        }
        self.settle(st).await;
        if st.behind_failed || st.orphaned {
            return;
        }
        let mtime = st.pending_mtime;
        let attrs = st.pending_attrs.take();
        let frozen = FileState {
            ino: st.ino,
            size: st.size,
            committed_size: st.committed_size,
            map: std::mem::take(&mut st.map),
            buffer: std::mem::take(&mut st.buffer),
            pending_mtime: mtime,
            // Set after every byte it takes: its commit carries them, so
            // no other client sees these bytes without them.
            pending_attrs: attrs.clone(),
            known_attr: None,
            orphaned: false,
            loaded: true,
            data_version: st.data_version,
            unlinked_kept: false,
            behind: None,
            behind_failed: false,
        };
        let state = Arc::new(tokio::sync::Mutex::new(frozen));
        let dfs = Arc::clone(self);
        let running = Arc::clone(&state);
        let span = tracing::debug_span!("write_behind", ino = st.ino);
        let task = tokio::spawn(
            async move {
                let mut frozen = running.lock().await;
                dfs.flush(&mut frozen).await
            }
            .instrument(span),
        );
        st.behind = Some(WriteBehind {
            state,
            task,
            mtime,
            attrs,
        });
    }

    /// Waits for a write-behind flush and folds its outcome into `st`: the
    /// chunk map it committed to, and whatever it could not commit back
    /// under the bytes written since.
    pub(super) async fn settle(&self, st: &mut FileState) {
        let Some(behind) = st.behind.take() else {
            return;
        };
        let outcome = match behind.task.await {
            Ok(result) => result,
            Err(e) => Err(DfsError::new(
                libc::EIO,
                format!("write-behind flush failed: {e}"),
            )),
        };
        let mut frozen = behind.state.lock().await;
        st.map = std::mem::take(&mut frozen.map);
        st.committed_size = frozen.committed_size;
        st.data_version = frozen.data_version;
        st.orphaned |= frozen.orphaned;
        st.learn(frozen.known_attr.take());
        if let Some(older) = frozen.pending_attrs.take() {
            // Not committed: back under what was set since; an explicit
            // mtime only if nothing was written since either.
            let written_since = !st.buffer.is_empty() || st.pending_mtime != behind.mtime;
            let newer = st.pending_attrs.take().unwrap_or_default();
            st.pending_attrs = Some(newer.over(older, written_since));
        }
        if !frozen.buffer.is_empty() {
            // Not committed (the flush failed, or the file is gone): the
            // bytes stay buffered, under the ones written since.
            let before = frozen.buffer.bytes() + st.buffer.bytes();
            st.buffer.put_back_under(std::mem::take(&mut frozen.buffer));
            self.track_dirty(before, st.buffer.bytes());
            if st.pending_mtime.is_none() {
                st.pending_mtime = behind.mtime;
            }
        } else if st.buffer.is_empty() && st.pending_mtime == behind.mtime {
            // Nothing written since: the flush committed this time too.
            st.pending_mtime = None;
        }
        if let Err(e) = outcome {
            tracing::warn!(ino = st.ino, error = %e, "write-behind flush failed; the bytes stay buffered");
            st.behind_failed = true;
        }
    }

    /// Buffers a write. When the buffer (or all buffers together) would
    /// pass its bound, what is buffered is committed first; if that fails
    /// the write fails without being buffered, so an error always means
    /// "not written".
    pub async fn write(
        &self,
        st: &mut FileState,
        offset: u64,
        data: &[u8],
    ) -> Result<(), DfsError> {
        if st.buffer.bytes() + data.len() > FLUSH_THRESHOLD
            || self.dirty_bytes.load(Ordering::Relaxed) + data.len() > self.dirty_limit
        {
            self.flush(st).await?;
        }
        let before = st.buffer.bytes();
        st.buffer.write(offset, data);
        self.track_dirty(before, st.buffer.bytes());
        st.size = st.size.max(offset + data.len() as u64);
        st.touch();
        Ok(())
    }

    /// Commits buffered writes: re-chunks the regions around them, stores
    /// the chunks and commits the chunk map, size and times. A flush that
    /// re-cuts more than `FLUSH_GROUP_BYTES` commits in several groups, in
    /// file order; each group's commit is whole (never a torn chunk map),
    /// and the file only grows to what a group covers. On return the data
    /// is durable in the cluster.
    pub async fn flush(&self, st: &mut FileState) -> Result<(), DfsError> {
        self.settle(st).await;
        let result = self.flush_buffer(st).await;
        if result.is_ok() {
            st.behind_failed = false;
            // Nothing committed carried the file's create (an empty file):
            // it is made before the close returns.
            self.cluster.meta.make_deferred(st.ino).await?;
        }
        result
    }

    pub(super) async fn flush_buffer(&self, st: &mut FileState) -> Result<(), DfsError> {
        if st.orphaned {
            return Ok(());
        }
        if !st.data_dirty() {
            return self.commit_attrs(st).await;
        }
        let new_size = st.size;
        let mut previous_end = 0;
        loop {
            let group = self.cut_group(st, new_size, previous_end).await?;
            if group.finished {
                return self
                    .commit(st, group.replaced, group.raw, new_size, false, u64::MAX)
                    .await;
            }
            let group_size = new_size.min(st.committed_size.max(group.end));
            self.commit(st, group.replaced, group.raw, group_size, false, group.end)
                .await?;
            if st.orphaned {
                // Removed by another client: nothing more to store.
                return Ok(());
            }
            previous_end = group.end;
        }
    }

    /// Re-cuts the dirty regions from the buffer's start, until all are
    /// done or the group's byte budget is spent at an old chunk boundary.
    pub(super) async fn cut_group(
        &self,
        st: &mut FileState,
        new_size: u64,
        mut previous_end: u64,
    ) -> Result<CutGroup, DfsError> {
        let ranges = st.buffer.ranges();
        let mut group = CutGroup::default();
        // Each window's chunks are fingerprinted on another core while the
        // next window is cut.
        let mut fingerprints = Fingerprinter::default();
        let mut i = 0;
        while i < ranges.len() {
            let (dirty_start, mut dirty_end) = ranges[i];
            // Never re-cut what the previous region already covered.
            let start = st.map.region_start(dirty_start).max(previous_end);
            let mut pos = start;
            'region: loop {
                let window_end = new_size.min(pos + CHUNK_WINDOW + u64::from(chunker::MAX_CHUNK));
                let at_eof = window_end == new_size;
                // A window the buffer holds whole (a file written in
                // order) is cut straight from it.
                let buf = match st.buffer.shared(pos, window_end) {
                    Some(bytes) => bytes,
                    None => Bytes::from(self.read_range(st, pos, window_end).await?),
                };
                let lens = chunker::cut_lengths(&buf, at_eof);
                if lens.is_empty() {
                    break 'region;
                }
                let base = pos;
                for len in lens {
                    let at = (pos - base) as usize;
                    group.raw.push(RawChunk::new(pos, buf.slice(at..at + len)));
                    group.bytes += len;
                    pos += len as u64;
                    // Dirty ranges the new chunks reached join this region.
                    while i + 1 < ranges.len() && ranges[i + 1].0 < pos {
                        i += 1;
                        dirty_end = dirty_end.max(ranges[i].1);
                    }
                    // Stop past the dirty bytes (or at the group's budget)
                    // at an old boundary, or in a hole / past the old data:
                    // nothing old to re-align with, and re-cutting a hole
                    // would store all its zeros.
                    let spent = group.bytes >= self.group_bytes();
                    if pos >= new_size
                        || ((pos >= dirty_end || spent)
                            && (st.map.is_boundary(pos) || !st.map.covers(pos)))
                    {
                        break 'region;
                    }
                }
                fingerprints.start(&group.raw);
            }
            fingerprints.start(&group.raw);
            group.replaced.push(ByteRange {
                start,
                end: pos.max(start + 1),
            });
            previous_end = pos;
            group.end = pos;
            i += 1;
            while i < ranges.len() && ranges[i].1 <= pos {
                i += 1;
            }
            if group.bytes >= self.group_bytes() && (i < ranges.len() || pos < dirty_end) {
                fingerprints.finish(&mut group.raw).await?;
                return Ok(group);
            }
        }
        fingerprints.finish(&mut group.raw).await?;
        group.finished = true;
        Ok(group)
    }

    /// Stores `raw` and commits it in place of `replaced`; buffered bytes
    /// before `done_to` are then committed and leave the buffer.
    pub(super) async fn commit(
        &self,
        st: &mut FileState,
        replaced: Vec<ByteRange>,
        raw: Vec<RawChunk>,
        new_size: u64,
        truncate: bool,
        done_to: u64,
    ) -> Result<(), DfsError> {
        let span = tracing::debug_span!("flush", ino = st.ino, chunks = raw.len(), size = new_size);
        async {
            let stored = self.cluster.store_chunks(self.codec, raw).await?;
            self.commit_inner(st, replaced, stored, new_size, truncate, done_to)
                .await
        }
        .instrument(span)
        .await
    }

    pub(super) async fn commit_inner(
        &self,
        st: &mut FileState,
        replaced: Vec<ByteRange>,
        mut stored: Vec<StoredChunk>,
        new_size: u64,
        truncate: bool,
        done_to: u64,
    ) -> Result<(), DfsError> {
        let mtime_ns = st.pending_mtime.unwrap_or_else(now_ns);
        // The last commit of a flush carries the attributes set since the
        // data was written, applied after it in the same transaction.
        let attrs = st.pending_attrs.clone().filter(|_| done_to == u64::MAX);
        let mut attempt = 0;
        let reply = loop {
            let request = CommitChunksRequest {
                ino: st.ino,
                replaced: replaced.clone(),
                chunks: stored
                    .iter()
                    .map(|s| NewChunk {
                        offset: s.mapped.offset,
                        len: s.mapped.len,
                        fingerprint: s.mapped.fingerprint.clone(),
                        uploaded: if s.uploaded {
                            s.mapped.chunk.clone()
                        } else {
                            None
                        },
                    })
                    .collect(),
                new_size,
                mtime_ns,
                truncate,
                attrs: attrs.as_ref().map(|a| a.request(st.ino)),
                // Filled in by `MetaRpc::commit_chunks` for a file whose
                // create it holds (`client::deferred`).
                create: None,
            };
            let started = std::time::Instant::now();
            let chunks = request.chunks.len();
            let result = self.cluster.meta.commit_chunks(request).await;
            tracing::debug!(
                ino = st.ino,
                chunks,
                commit_us = started.elapsed().as_micros() as u64,
                ok = result.is_ok(),
                "chunk map commit"
            );
            match result {
                Ok(inode) => break inode,
                // Chunks referenced without their bytes (a shared copy)
                // cannot be uploaded again: the caller copies bytes instead.
                Err(e)
                    if !e.missing_chunks.is_empty()
                        && stored.iter().any(|s| {
                            s.data.is_empty() && e.missing_chunks.contains(&s.mapped.fingerprint)
                        }) =>
                {
                    return Err(e);
                }
                Err(e) if !e.missing_chunks.is_empty() && attempt + 1 < COMMIT_ATTEMPTS => {
                    attempt += 1;
                    tracing::info!(
                        missing = e.missing_chunks.len(),
                        "index lost chunks before the commit; uploading them"
                    );
                    self.cluster
                        .reupload(self.codec, &mut stored, &e.missing_chunks)
                        .await?;
                }
                Err(e) if is_not_found(&e) => {
                    // Unlinked while open: nobody else can see the data any
                    // more, but our handles can: keep the buffer.
                    st.orphaned = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        };
        // What a small file wrote is kept to be read back (the kernel drops
        // its pages at the next open); a big stream is not: with an LRU
        // cache it would push out everything else and then itself, from its
        // start, before a reader came back to it.
        let write_through = new_size <= self.cache.capacity() / 16;
        for s in stored
            .iter()
            .filter(|s| write_through && !s.data.is_empty())
        {
            if let Ok(fp) = Fingerprint::from_slice(&s.mapped.fingerprint) {
                // Same fingerprint, same bytes: a chunk written again (a
                // repeated block, a copied file) is not copied again.
                if self.cache.contains(&fp) {
                    continue;
                }
                // A copy: the chunk is a slice of a write-buffer extent (up
                // to 64 MiB) or window, which a cached slice would keep
                // whole while the cache counts only the chunk.
                self.cache.insert(fp, Bytes::copy_from_slice(&s.data)).await;
            }
        }
        for r in &replaced {
            let new: Vec<MappedChunk> = stored
                .iter()
                .filter(|s| s.mapped.offset >= r.start && s.mapped.offset < r.end)
                .map(|s| s.mapped.clone())
                .collect();
            st.map.replace(r.start, r.end, new);
        }
        let before = st.buffer.bytes();
        st.buffer.drain_before(done_to);
        self.track_dirty(before, st.buffer.bytes());
        // Our map is current only if no other client committed in between.
        st.data_version = if reply.data_version == st.data_version.wrapping_add(1) {
            reply.data_version
        } else {
            VERSION_UNKNOWN
        };
        st.committed_size = reply.size;
        st.learn(Some(reply.clone()));
        if st.buffer.is_empty() {
            st.size = reply.size;
            st.pending_mtime = None;
        } else {
            st.size = st.size.max(reply.size);
        }
        if let Some(sent) = attrs {
            if sent.applied(&reply) {
                st.pending_attrs = None;
            } else {
                // A metadata server that does not know `attrs` (the data
                // is committed; the attributes follow on their own).
                tracing::debug!(
                    ino = st.ino,
                    "attributes not applied by the commit; setting them"
                );
                self.commit_attrs(st).await?;
            }
        }
        Ok(())
    }

    /// Sends attributes held back for a file whose data is all committed
    /// (a write-behind flush took it, or the attributes came after a
    /// commit that failed to carry them).
    async fn commit_attrs(&self, st: &mut FileState) -> Result<(), DfsError> {
        let Some(pending) = &st.pending_attrs else {
            return Ok(());
        };
        match self.cluster.meta.set_attr(pending.request(st.ino)).await {
            Ok(attr) => {
                st.pending_attrs = None;
                st.learn(Some(attr));
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                st.orphaned = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
