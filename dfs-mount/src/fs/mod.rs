//! File system operations on top of the cluster client, as async methods
//! that know nothing about FUSE. `crate::fuse` adapts them to the kernel.

pub mod file;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dfs_core::chunker;
use dfs_core::codec::CodecPolicy;
use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::time::now_ns;
use dfs_proto::{
    ByteRange, ChunkMapRequest, CommitChunksRequest, DirEntry, FileKind, InodeRecord, MappedChunk,
    NewChunk, ReadDirRequest,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::cache::ChunkCache;
use crate::client::Cluster;
use crate::pipeline::write::RawChunk;
use file::{ChunkMap, WriteBuffer};

/// Bytes of one re-chunking window: large enough that most cut points in
/// it are final, small enough to bound memory per flushing file.
const CHUNK_WINDOW: u64 = 8 * 1024 * 1024;
/// A file's write buffer is flushed once it holds this much.
pub const FLUSH_THRESHOLD: usize = 64 * 1024 * 1024;
/// Default bound on buffered bytes over all files: past it, each write
/// flushes its own file, so many files written at once cannot exhaust memory.
pub const DEFAULT_DIRTY_LIMIT: usize = 256 * 1024 * 1024;
/// Chunks fetched at once for one read.
const READ_PARALLELISM: usize = 16;
/// How many times a commit is retried after uploading chunks that the
/// index lost in the meantime (garbage collection racing a dedup hit).
const COMMIT_ATTEMPTS: usize = 3;

pub struct FileState {
    pub ino: u64,
    /// Size including buffered writes.
    pub size: u64,
    /// Size as last committed.
    pub committed_size: u64,
    pub map: ChunkMap,
    pub buffer: WriteBuffer,
    pub pending_mtime: Option<i64>,
    /// Set when the metadata server no longer knows the inode (unlinked
    /// while open): data stays readable through the open handles.
    pub orphaned: bool,
}

pub struct OpenFile {
    pub ino: u64,
    pub state: tokio::sync::Mutex<FileState>,
    pub opens: AtomicU64,
}

pub struct Dfs {
    pub cluster: Arc<Cluster>,
    pub cache: ChunkCache,
    pub codec: CodecPolicy,
    pub readahead_bytes: u64,
    /// Bound on `dirty_bytes`.
    pub dirty_limit: usize,
    /// Bytes in every file's write buffer together.
    dirty_bytes: AtomicUsize,
    open_files: Mutex<HashMap<u64, Arc<OpenFile>>>,
}

fn is_not_found(e: &DfsError) -> bool {
    e.errno == libc::ENOENT
}

impl Dfs {
    pub fn new(
        cluster: Arc<Cluster>,
        cache: ChunkCache,
        codec: CodecPolicy,
        readahead_bytes: u64,
    ) -> Self {
        Self {
            cluster,
            cache,
            codec,
            readahead_bytes,
            dirty_limit: DEFAULT_DIRTY_LIMIT,
            dirty_bytes: AtomicUsize::new(0),
            open_files: Mutex::new(HashMap::new()),
        }
    }

    pub fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.open_files.lock().get(&ino).cloned()
    }

    /// The whole chunk map, read in pages. Pages are separate transactions:
    /// if the file's data version changes between them (a commit landed),
    /// the read starts over, so the map is never a mix of two versions.
    async fn fetch_chunk_map(&self, ino: u64) -> Result<(ChunkMap, u64), DfsError> {
        const ATTEMPTS: usize = 20;
        'attempt: for _ in 0..ATTEMPTS {
            let mut map = ChunkMap::default();
            let mut from = 0u64;
            let mut version = None;
            loop {
                let reply = self
                    .cluster
                    .meta
                    .call("chunk_map", |mut c| async move {
                        c.get_chunk_map(ChunkMapRequest {
                            ino,
                            from_offset: from,
                            limit: 10_000,
                        })
                        .await
                    })
                    .await?;
                if *version.get_or_insert(reply.data_version) != reply.data_version {
                    tracing::debug!(
                        ino,
                        "file changed while its chunk map was read; reading again"
                    );
                    continue 'attempt;
                }
                let (size, more) = (reply.size, reply.more);
                for c in reply.chunks {
                    from = c.offset + u64::from(c.len);
                    map.chunks.insert(c.offset, c);
                }
                if !more {
                    return Ok((map, size));
                }
            }
        }
        Err(DfsError::retryable(
            libc::EAGAIN,
            format!("inode {ino} keeps changing while its chunk map is read"),
        ))
    }

    /// Opens `ino` for I/O: the first open loads the chunk map (close-to-open
    /// consistency), later ones share the state and its buffered writes.
    pub async fn open(&self, ino: u64) -> Result<Arc<OpenFile>, DfsError> {
        // Open counts change only under the map's lock, so a last release
        // and a new open never leave two states for one inode.
        if let Some(of) = self.share_open(ino) {
            return Ok(of);
        }
        let (map, size) = self.fetch_chunk_map(ino).await?;
        let fresh = Arc::new(OpenFile {
            ino,
            state: tokio::sync::Mutex::new(FileState {
                ino,
                size,
                committed_size: size,
                map,
                buffer: WriteBuffer::default(),
                pending_mtime: None,
                orphaned: false,
            }),
            opens: AtomicU64::new(1),
        });
        let mut files = self.open_files.lock();
        // Another thread may have opened it meanwhile: share theirs.
        if let Some(existing) = files.get(&ino) {
            existing.opens.fetch_add(1, Ordering::SeqCst);
            return Ok(existing.clone());
        }
        files.insert(ino, fresh.clone());
        Ok(fresh)
    }

    fn share_open(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let files = self.open_files.lock();
        let of = files.get(&ino)?;
        of.opens.fetch_add(1, Ordering::SeqCst);
        Some(of.clone())
    }

    /// Called on the last close of a handle: flushes and forgets the state
    /// when nobody has the file open any more.
    pub async fn release(&self, of: &Arc<OpenFile>) -> Result<(), DfsError> {
        let result = {
            let mut st = of.state.lock().await;
            self.flush(&mut st).await
        };
        let mut files = self.open_files.lock();
        if of.opens.fetch_sub(1, Ordering::SeqCst) == 1
            && files.get(&of.ino).is_some_and(|f| Arc::ptr_eq(f, of))
        {
            files.remove(&of.ino);
        }
        result
    }

    fn track_dirty(&self, before: usize, after: usize) {
        if after >= before {
            self.dirty_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.dirty_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Bytes buffered in all files, not yet committed.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    /// Reads `[start, end)` of the file as this client sees it: committed
    /// chunks, zeros in holes, buffered writes on top.
    pub async fn read_range(
        &self,
        st: &FileState,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, DfsError> {
        let mut out = vec![0u8; end.saturating_sub(start) as usize];
        if out.is_empty() {
            return Ok(out);
        }
        let chunks = st.map.overlapping(start, end);
        let datas: Vec<(MappedChunk, Bytes)> =
            stream::iter(chunks.into_iter().map(|c| async move {
                let data = self.chunk_data(&c).await?;
                Ok::<_, DfsError>((c, data))
            }))
            .buffered(READ_PARALLELISM)
            .try_collect()
            .await?;
        for (c, data) in datas {
            let c_end = c.offset + data.len() as u64;
            let from = c.offset.max(start);
            let to = c_end.min(end);
            if from < to {
                out[(from - start) as usize..(to - start) as usize]
                    .copy_from_slice(&data[(from - c.offset) as usize..(to - c.offset) as usize]);
            }
        }
        st.buffer.overlay(start, &mut out);
        Ok(out)
    }

    pub async fn chunk_data(&self, c: &MappedChunk) -> Result<Bytes, DfsError> {
        let fp = Fingerprint::from_slice(&c.fingerprint)
            .map_err(|e| DfsError::new(libc::EIO, format!("bad fingerprint in chunk map: {e}")))?;
        let rec = c
            .chunk
            .clone()
            .ok_or_else(|| DfsError::new(libc::EIO, format!("chunk {fp} has no index entry")))?;
        let data = self.cache.get_or_fetch(&self.cluster, fp, rec).await?;
        if data.len() != c.len as usize {
            return Err(DfsError::new(
                libc::EIO,
                format!("chunk {fp} is {} bytes, the map says {}", data.len(), c.len),
            ));
        }
        Ok(data)
    }

    /// Starts fetching the chunks after `offset` into the cache.
    pub fn readahead(&self, st: &FileState, offset: u64) {
        let end = (offset + self.readahead_bytes).min(st.committed_size);
        for c in st.map.overlapping(offset, end) {
            let (Ok(fp), Some(rec)) = (Fingerprint::from_slice(&c.fingerprint), c.chunk.clone())
            else {
                continue;
            };
            if self.cache.contains(&fp) {
                continue;
            }
            let cache = self.cache.clone();
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                if let Err(e) = cache.get_or_fetch(&cluster, fp, rec).await {
                    tracing::debug!(chunk = %fp, error = %e, "readahead failed");
                }
            });
        }
    }

    pub async fn write(
        &self,
        st: &mut FileState,
        offset: u64,
        data: &[u8],
    ) -> Result<(), DfsError> {
        let before = st.buffer.bytes();
        st.buffer.write(offset, data);
        self.track_dirty(before, st.buffer.bytes());
        st.size = st.size.max(offset + data.len() as u64);
        st.pending_mtime = Some(now_ns());
        if st.buffer.bytes() >= FLUSH_THRESHOLD
            || self.dirty_bytes.load(Ordering::Relaxed) >= self.dirty_limit
        {
            self.flush(st).await?;
        }
        Ok(())
    }

    /// Commits buffered writes: re-chunks the regions around them, stores
    /// the chunks and commits the chunk map, size and times in one
    /// transaction. On return the data is durable in the cluster.
    pub async fn flush(&self, st: &mut FileState) -> Result<(), DfsError> {
        if st.buffer.is_empty() && st.size == st.committed_size && st.pending_mtime.is_none() {
            return Ok(());
        }
        if st.orphaned {
            return Ok(());
        }
        let new_size = st.size;
        let ranges = st.buffer.ranges();
        let mut replaced: Vec<ByteRange> = Vec::new();
        let mut raw: Vec<RawChunk> = Vec::new();
        let mut i = 0;
        let mut previous_end = 0;
        while i < ranges.len() {
            let (dirty_start, mut dirty_end) = ranges[i];
            // Never re-cut what the previous region already covered.
            let start = st.map.region_start(dirty_start).max(previous_end);
            let mut pos = start;
            'region: loop {
                let window_end = new_size.min(pos + CHUNK_WINDOW + u64::from(chunker::MAX_CHUNK));
                let at_eof = window_end == new_size;
                let buf = Bytes::from(self.read_range(st, pos, window_end).await?);
                let lens = chunker::cut_lengths(&buf, at_eof);
                if lens.is_empty() {
                    break 'region;
                }
                let base = pos;
                for len in lens {
                    let at = (pos - base) as usize;
                    raw.push(RawChunk {
                        offset: pos,
                        data: buf.slice(at..at + len),
                    });
                    pos += len as u64;
                    // Dirty ranges the new chunks reached join this region.
                    while i + 1 < ranges.len() && ranges[i + 1].0 < pos {
                        i += 1;
                        dirty_end = dirty_end.max(ranges[i].1);
                    }
                    // Stop past the dirty bytes at an old boundary, or in a
                    // hole / past the old data: nothing old to re-align with,
                    // and re-cutting a hole would store all its zeros.
                    if pos >= new_size
                        || (pos >= dirty_end && (st.map.is_boundary(pos) || !st.map.covers(pos)))
                    {
                        break 'region;
                    }
                }
            }
            replaced.push(ByteRange {
                start,
                end: pos.max(start + 1),
            });
            previous_end = pos;
            i += 1;
            while i < ranges.len() && ranges[i].1 <= pos {
                i += 1;
            }
        }
        self.commit(st, replaced, raw, new_size, false).await
    }

    async fn commit(
        &self,
        st: &mut FileState,
        replaced: Vec<ByteRange>,
        raw: Vec<RawChunk>,
        new_size: u64,
        truncate: bool,
    ) -> Result<(), DfsError> {
        let span = tracing::debug_span!("flush", ino = st.ino, chunks = raw.len(), size = new_size);
        self.commit_inner(st, replaced, raw, new_size, truncate)
            .instrument(span)
            .await
    }

    async fn commit_inner(
        &self,
        st: &mut FileState,
        replaced: Vec<ByteRange>,
        raw: Vec<RawChunk>,
        new_size: u64,
        truncate: bool,
    ) -> Result<(), DfsError> {
        let mut stored = self.cluster.store_chunks(self.codec, raw).await?;
        let mtime_ns = st.pending_mtime.unwrap_or_else(now_ns);
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
            };
            let result = self
                .cluster
                .meta
                .call("commit", |mut c| {
                    let request = request.clone();
                    async move { c.commit_chunks(request).await }
                })
                .await;
            match result {
                Ok(inode) => break inode,
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
        for s in &stored {
            if let Ok(fp) = Fingerprint::from_slice(&s.mapped.fingerprint) {
                self.cache.insert(fp, s.data.clone()).await;
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
        self.track_dirty(st.buffer.bytes(), 0);
        st.buffer.clear();
        st.size = reply.size;
        st.committed_size = reply.size;
        st.pending_mtime = None;
        Ok(())
    }

    /// Truncates (or extends with a hole) to `size`.
    pub async fn truncate(&self, st: &mut FileState, size: u64) -> Result<(), DfsError> {
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
            if start < size {
                let data = Bytes::from(self.read_range(st, start, size).await?);
                let mut pos = start;
                for len in chunker::cut_lengths(&data, true) {
                    let at = (pos - start) as usize;
                    raw.push(RawChunk {
                        offset: pos,
                        data: data.slice(at..at + len),
                    });
                    pos += len as u64;
                }
            }
            replaced.push(ByteRange {
                start,
                end: u64::MAX,
            });
        }
        st.pending_mtime = Some(now_ns());
        st.size = size;
        let result = self.commit(st, replaced, raw, size, true).await;
        if result.is_err() {
            // Not truncated after all: keep the size that is committed.
            st.size = st.committed_size;
        }
        result
    }

    pub async fn read_dir_all(&self, ino: u64, plus: bool) -> Result<Vec<DirEntry>, DfsError> {
        let mut entries = Vec::new();
        let mut after = Vec::new();
        loop {
            let request = ReadDirRequest {
                ino,
                after_name: after.clone(),
                limit: 1000,
                plus,
            };
            let reply = self
                .cluster
                .meta
                .call("readdir", |mut c| {
                    let request = request.clone();
                    async move { c.read_dir(request).await }
                })
                .await?;
            if let Some(last) = reply.entries.last() {
                after = last.name.clone();
            }
            entries.extend(reply.entries);
            if !reply.more {
                return Ok(entries);
            }
        }
    }

    /// Attributes as this client sees them: buffered writes change size and
    /// mtime before they are committed.
    pub async fn overlay_attr(&self, mut attr: InodeRecord) -> InodeRecord {
        if attr.kind() != FileKind::Regular {
            return attr;
        }
        if let Some(of) = self.open_file(attr.ino) {
            let st = of.state.lock().await;
            attr.size = st.size;
            if let Some(m) = st.pending_mtime {
                attr.mtime_ns = m;
                attr.ctime_ns = attr.ctime_ns.max(m);
            }
        }
        attr
    }
}
