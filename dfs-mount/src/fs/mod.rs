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
use crate::pipeline::write::{Fingerprinter, RawChunk, StoredChunk};
use file::{ChunkMap, WriteBuffer};

/// Bytes of one re-chunking window: large enough that most cut points in
/// it are final, small enough to bound memory per flushing file.
const CHUNK_WINDOW: u64 = 8 * 1024 * 1024;
/// A file's write buffer is flushed before it would hold more than this.
pub const FLUSH_THRESHOLD: usize = 64 * 1024 * 1024;
/// Bytes of re-cut chunks one flush stores and commits at a time: scattered
/// small writes re-cut far more than they wrote (whole chunks around each),
/// so a flush goes in groups of this size, each its own commit, to bound
/// memory, upload messages and transaction size.
const FLUSH_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// A file's buffered writes are handed to a write-behind flush once they
/// reach half a flush group (32 MiB by default): the writer goes on filling
/// the buffer while the flush cuts, hashes and stores what it was given.
fn write_behind_bytes(group_bytes: usize) -> usize {
    group_bytes / 2
}
/// Bytes one hole-punching commit covers at most.
const PUNCH_PIECE_BYTES: u64 = 32 * 1024 * 1024;
/// `FileState::data_version` when this client cannot tell which version
/// its chunk map is (another client committed concurrently).
const VERSION_UNKNOWN: u64 = u64::MAX;
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
    /// by another client while open here): data stays readable through
    /// the open handles, and later writes stay in memory.
    pub orphaned: bool,
    /// Set once the chunk map has been read; until then the state is a
    /// placeholder that the first opener fills in, under the state lock.
    pub loaded: bool,
    /// The inode's data version that `map` reflects.
    pub data_version: u64,
    /// Unlinked by this client while open: the metadata server keeps the
    /// inode (no name, no links) until the last close here forgets it.
    pub unlinked_kept: bool,
    /// A flush running behind the writer, holding the buffered bytes and
    /// the chunk map it was started with; see [`Dfs::lock`].
    behind: Option<WriteBehind>,
    /// The last write-behind flush failed: later flushes run in the
    /// foreground, where the error reaches the writer, until one succeeds.
    behind_failed: bool,
}

/// A flush of a file's buffered bytes running in the background while
/// writes go on into a new buffer.
struct WriteBehind {
    /// The state the flush works on: the buffer and chunk map moved out of
    /// the file's state. Kept here too, so that whatever happens to the
    /// task (even a panic) nothing in it is lost.
    state: Arc<tokio::sync::Mutex<FileState>>,
    task: tokio::task::JoinHandle<Result<(), DfsError>>,
    /// The modification time the flush commits.
    mtime: Option<i64>,
}

impl FileState {
    fn placeholder(ino: u64) -> Self {
        Self {
            ino,
            size: 0,
            committed_size: 0,
            map: ChunkMap::default(),
            buffer: WriteBuffer::default(),
            pending_mtime: None,
            orphaned: false,
            loaded: false,
            data_version: VERSION_UNKNOWN,
            unlinked_kept: false,
            behind: None,
            behind_failed: false,
        }
    }

    /// Nothing buffered, no size or time change waiting for a commit.
    pub fn is_clean(&self) -> bool {
        self.buffer.is_empty() && self.size == self.committed_size && self.pending_mtime.is_none()
    }
}

/// Chunks re-cut for one commit of a flush.
#[derive(Default)]
struct CutGroup {
    replaced: Vec<ByteRange>,
    raw: Vec<RawChunk>,
    bytes: usize,
    /// Everything dirty before this offset is in the group.
    end: u64,
    /// False when the group stopped at its byte budget with dirty bytes left.
    finished: bool,
}

pub struct OpenFile {
    pub ino: u64,
    /// Locked through [`Dfs::lock`] (or [`Dfs::lock_for_write`]), which
    /// first finishes a write-behind flush.
    state: tokio::sync::Mutex<FileState>,
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

    /// Locks a file's state for anything but a plain write. A write-behind
    /// flush in progress is waited for and its outcome applied first, so
    /// the chunk map and the buffer are whole again.
    pub async fn lock<'a>(&self, of: &'a OpenFile) -> tokio::sync::MutexGuard<'a, FileState> {
        let mut st = of.state.lock().await;
        self.settle(&mut st).await;
        st
    }

    /// Locks a file's state for a write, which only adds to the buffer (and
    /// to the size) and so goes on while a write-behind flush runs.
    pub async fn lock_for_write<'a>(
        &self,
        of: &'a OpenFile,
    ) -> tokio::sync::MutexGuard<'a, FileState> {
        of.state.lock().await
    }

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
        let frozen = FileState {
            ino: st.ino,
            size: st.size,
            committed_size: st.committed_size,
            map: std::mem::take(&mut st.map),
            buffer: std::mem::take(&mut st.buffer),
            pending_mtime: mtime,
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
        st.behind = Some(WriteBehind { state, task, mtime });
    }

    /// Waits for a write-behind flush and folds its outcome into `st`: the
    /// chunk map it committed to, and whatever it could not commit back
    /// under the bytes written since.
    async fn settle(&self, st: &mut FileState) {
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

    pub fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.open_files.lock().get(&ino).cloned()
    }

    /// The whole chunk map, read in pages. Pages are separate transactions:
    /// if the file's data version changes between them (a commit landed),
    /// the read starts over, so the map is never a mix of two versions.
    async fn fetch_chunk_map(&self, ino: u64) -> Result<(ChunkMap, u64, u64), DfsError> {
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
                    return Ok((map, size, reply.data_version));
                }
            }
        }
        Err(DfsError::retryable(
            libc::EAGAIN,
            format!("inode {ino} keeps changing while its chunk map is read"),
        ))
    }

    /// Opens `ino` for I/O. All handles of one inode on this client share
    /// one state (and its buffered writes). The entry is registered before
    /// the chunk map is read, and read under its lock, so an open racing a
    /// last close either shares the closing state (already flushed) or
    /// starts after it is gone; never from a map older than that close's
    /// commit. A shared state with nothing buffered is re-read when another
    /// client committed since (close-to-open consistency).
    pub async fn open(&self, ino: u64) -> Result<Arc<OpenFile>, DfsError> {
        self.open_known(ino, None).await
    }

    /// Opens a file this client has just created (`data_version` from the
    /// create's reply): its chunk map is empty by definition, so nothing is
    /// read from the metadata server.
    pub async fn open_created(
        &self,
        ino: u64,
        data_version: u64,
    ) -> Result<Arc<OpenFile>, DfsError> {
        self.open_known(ino, Some(data_version)).await
    }

    async fn open_known(&self, ino: u64, created: Option<u64>) -> Result<Arc<OpenFile>, DfsError> {
        let of = {
            let mut files = self.open_files.lock();
            let of = files
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenFile {
                        ino,
                        state: tokio::sync::Mutex::new(FileState::placeholder(ino)),
                        opens: AtomicU64::new(0),
                    })
                })
                .clone();
            // Open counts change only under the map's lock.
            of.opens.fetch_add(1, Ordering::SeqCst);
            of
        };
        let result = {
            let mut st = self.lock(&of).await;
            match created {
                Some(data_version) if !st.loaded => {
                    st.loaded = true;
                    st.data_version = data_version;
                    Ok(())
                }
                _ => self.refresh(&mut st).await.map(|_| ()),
            }
        };
        if let Err(e) = result {
            self.drop_open(&of).await;
            return Err(e);
        }
        Ok(of)
    }

    /// Loads the chunk map into a placeholder, or reloads a clean shared
    /// state whose inode changed since. Returns true when a map was
    /// (re)loaded.
    pub async fn refresh(&self, st: &mut FileState) -> Result<bool, DfsError> {
        self.settle(st).await;
        if st.loaded {
            if !st.is_clean() || st.orphaned {
                // Our own pending writes are what this client must see.
                return Ok(false);
            }
            let ino = st.ino;
            let attr = self
                .cluster
                .meta
                .call("getattr", |mut c| async move {
                    c.get_attr(dfs_proto::InoRequest { ino }).await
                })
                .await?;
            if attr.data_version == st.data_version {
                return Ok(false);
            }
            tracing::debug!(
                ino,
                "file changed on another client; reloading its chunk map"
            );
        }
        let (map, size, version) = self.fetch_chunk_map(st.ino).await?;
        st.map = map;
        st.size = size;
        st.committed_size = size;
        st.data_version = version;
        st.loaded = true;
        Ok(true)
    }

    /// Called on the last close of a handle: flushes, and forgets the
    /// state when nobody has the file open any more.
    pub async fn release(&self, of: &Arc<OpenFile>) -> Result<(), DfsError> {
        let result = {
            let mut st = self.lock(of).await;
            self.flush(&mut st).await
        };
        self.drop_open(of).await;
        result
    }

    /// Drops one open of `of`; the last one removes the state. Bytes still
    /// buffered then (a flush that failed, a file unlinked elsewhere) are
    /// gone with it and leave the dirty count, and an inode this client
    /// kept alive after unlinking it is released.
    async fn drop_open(&self, of: &Arc<OpenFile>) {
        let last = {
            let mut files = self.open_files.lock();
            let last = of.opens.fetch_sub(1, Ordering::SeqCst) == 1;
            if last && files.get(&of.ino).is_some_and(|f| Arc::ptr_eq(f, of)) {
                files.remove(&of.ino);
            }
            last
        };
        if !last {
            return;
        }
        let mut st = self.lock(of).await;
        if !st.buffer.is_empty() {
            tracing::warn!(
                ino = st.ino,
                bytes = st.buffer.bytes(),
                orphaned = st.orphaned,
                "last close drops bytes that were never committed"
            );
        }
        self.track_dirty(st.buffer.bytes(), 0);
        st.buffer.clear();
        if std::mem::take(&mut st.unlinked_kept) {
            let ino = st.ino;
            let result = self
                .cluster
                .meta
                .call("forget", |mut c| async move {
                    c.forget_unlinked(dfs_proto::InoRequest { ino }).await
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(ino, error = %e, "cannot release an unlinked file's inode");
            }
        }
    }

    /// Renews the leases of files this client unlinked while it has them
    /// open: the metadata server removes kept inodes whose lease ran out
    /// (their client died), so a live client renews them every minute.
    pub async fn renew_unlinked_leases(&self) {
        let files: Vec<Arc<OpenFile>> = self.open_files.lock().values().cloned().collect();
        let mut inos = Vec::new();
        for of in files {
            // A state busy (a long flush) may be a kept one: renewing an
            // inode that is not kept changes nothing, so include it.
            let kept = of.state.try_lock().map_or(true, |st| st.unlinked_kept);
            if kept {
                inos.push(of.ino);
            }
        }
        if inos.is_empty() {
            return;
        }
        let count = inos.len();
        let result = self
            .cluster
            .meta
            .call("keep_unlinked", |mut c| {
                let inos = inos.clone();
                async move {
                    c.keep_unlinked(dfs_proto::KeepUnlinkedRequest { inos })
                        .await
                }
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(files = count, error = %e, "cannot renew the leases of unlinked open files");
        }
    }

    /// The open state of the inode `name` in `parent` names, if this client
    /// has it open: removing its last link must then keep the inode until
    /// the last close, as a local file system does. The state is returned
    /// with one more open, so a close racing the unlink cannot forget it
    /// before it is marked; the caller drops that open after marking. Costs
    /// a lookup only while this client has files open.
    async fn open_state_named(&self, parent: u64, name: &[u8]) -> Option<Arc<OpenFile>> {
        if self.open_files.lock().is_empty() {
            return None;
        }
        let request = dfs_proto::LookupRequest {
            parent,
            name: name.to_vec(),
        };
        let attr = self
            .cluster
            .meta
            .call("lookup", |mut c| {
                let request = request.clone();
                async move { c.lookup(request).await }
            })
            .await
            .ok()?;
        let files = self.open_files.lock();
        let of = files.get(&attr.ino)?;
        of.opens.fetch_add(1, Ordering::SeqCst);
        Some(of.clone())
    }

    /// After an unlink or rename that sent `keep_ino`: marks the state so
    /// its last close releases the kept inode, then drops the extra open
    /// [`Self::open_state_named`] took (which may be that last close).
    async fn finish_keep(&self, kept: Option<Arc<OpenFile>>, removed: bool) {
        let Some(of) = kept else { return };
        if removed {
            of.state.lock().await.unlinked_kept = true;
        }
        self.drop_open(&of).await;
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), DfsError> {
        let kept = self.open_state_named(parent, name).await;
        let request = dfs_proto::RemoveRequest {
            parent,
            name: name.to_vec(),
            keep_ino: kept.as_ref().map_or(0, |of| of.ino),
        };
        let result = self
            .cluster
            .meta
            .call("unlink", |mut c| {
                let request = request.clone();
                async move { c.unlink(request).await }
            })
            .await;
        self.finish_keep(kept, result.is_ok()).await;
        result.map(|_| ())
    }

    pub async fn rename(&self, mut request: dfs_proto::RenameRequest) -> Result<(), DfsError> {
        let kept = self
            .open_state_named(request.new_parent, &request.new_name)
            .await;
        request.keep_ino = kept.as_ref().map_or(0, |of| of.ino);
        let result = self
            .cluster
            .meta
            .call("rename", |mut c| {
                let request = request.clone();
                async move { c.rename(request).await }
            })
            .await;
        let replaced = result.is_ok() && request.flags & dfs_proto::RENAME_EXCHANGE == 0;
        self.finish_keep(kept, replaced).await;
        result.map(|_| ())
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

    /// Bytes of re-cut chunks one commit of a flush holds: a small write
    /// buffer (`write_buffer=`) asks for little memory, so groups shrink too.
    fn group_bytes(&self) -> usize {
        FLUSH_GROUP_BYTES.min(self.dirty_limit.max(1))
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
        st.pending_mtime = Some(now_ns());
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
        }
        result
    }

    async fn flush_buffer(&self, st: &mut FileState) -> Result<(), DfsError> {
        if st.is_clean() || st.orphaned {
            return Ok(());
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
    async fn cut_group(
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
    async fn commit(
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

    async fn commit_inner(
        &self,
        st: &mut FileState,
        replaced: Vec<ByteRange>,
        mut stored: Vec<StoredChunk>,
        new_size: u64,
        truncate: bool,
        done_to: u64,
    ) -> Result<(), DfsError> {
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
            let started = std::time::Instant::now();
            let result = self
                .cluster
                .meta
                .call("commit", |mut c| {
                    let request = request.clone();
                    async move { c.commit_chunks(request).await }
                })
                .await;
            tracing::debug!(
                ino = st.ino,
                chunks = request.chunks.len(),
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
        for s in stored.iter().filter(|s| !s.data.is_empty()) {
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
        if st.buffer.is_empty() {
            st.size = reply.size;
            st.pending_mtime = None;
        } else {
            st.size = st.size.max(reply.size);
        }
        Ok(())
    }

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
        st.pending_mtime = Some(now_ns());
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

    async fn punch_piece(&self, st: &mut FileState, offset: u64, end: u64) -> Result<(), DfsError> {
        if offset >= end {
            return Ok(());
        }
        let (start, stop) = st.map.covering(offset, end);
        let mut raw = self.recut(st, start, offset).await?;
        raw.extend(self.recut(st, end, stop).await?);
        let replaced = vec![ByteRange { start, end: stop }];
        st.pending_mtime = Some(now_ns());
        let size = st.committed_size;
        self.commit(st, replaced, raw, size, false, u64::MAX).await
    }

    /// The committed bytes of `[start, end)` cut into chunks from `start`.
    async fn recut(&self, st: &FileState, start: u64, end: u64) -> Result<Vec<RawChunk>, DfsError> {
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

    async fn copy_locked(
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
    async fn copy_range(
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
            dst.pending_mtime = Some(now_ns());
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
            if !st.loaded {
                // A placeholder whose load failed knows nothing yet.
                return attr;
            }
            attr.size = st.size;
            if let Some(m) = st.pending_mtime {
                attr.mtime_ns = m;
                attr.ctime_ns = attr.ctime_ns.max(m);
            }
        }
        attr
    }
}
