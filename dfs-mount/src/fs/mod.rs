//! The file-system core: operations on top of the cluster client, as
//! async methods that know nothing about FUSE (`crate::fuse` adapts them
//! to the kernel). This file holds the shared state (open files, dirty
//! bytes) and how a file's state is locked; the operations live by what
//! they do:
//! - `handles`: the mount's numbered file and directory handles and the
//!   operations that go through one (one method per kernel request);
//! - `open`: open files, loading and reloading chunk maps, last close,
//!   leases of files unlinked while open, unlink and rename;
//! - `flush`: writes into the buffer, write-behind, flush and commit;
//! - `read`: reads through the chunk cache, readahead;
//! - `ranges`: truncate, punch hole, SEEK_DATA/HOLE, copy_file_range;
//! - `namespace`: names, attributes, xattrs, directory listings;
//! - `pending_attrs`: attributes set on a file with buffered data, sent
//!   with the data's commit;
//! - `statahead`: a directory looked up name after name, read a page at a
//!   time with attributes;
//! - `file`: write-buffer and chunk-map arithmetic (no I/O).

mod closed_maps;
mod early_create;
pub mod file;
mod flush;
pub mod handles;
pub mod known_names;
pub mod namespace;
mod open;
pub mod pending_attrs;
mod ranges;
mod read;
pub mod statahead;

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
    ByteRange, ChunkMapRequest, ChunkRecord, CommitChunksRequest, InodeRecord, MappedChunk,
    NewChunk,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::cache::ChunkCache;
use crate::client::Cluster;
use crate::pipeline::write::{Fingerprinter, RawChunk, StoredChunk};
use file::{ChunkMap, WriteBuffer};
use pending_attrs::PendingAttrs;

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
    /// Attributes set while data was buffered, for the next commit.
    pub pending_attrs: Option<PendingAttrs>,
    /// The inode as dfs-meta last answered for it here (the create, a
    /// commit): what a deferred setattr's reply is built on. None when
    /// not known; such a setattr is then not deferred.
    pub known_attr: Option<InodeRecord>,
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
    /// The attributes it commits, shown by this client meanwhile.
    attrs: Option<PendingAttrs>,
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
            pending_attrs: None,
            known_attr: None,
            orphaned: false,
            loaded: false,
            data_version: VERSION_UNKNOWN,
            unlinked_kept: false,
            behind: None,
            behind_failed: false,
        }
    }

    /// Nothing buffered, no size, time or attribute change waiting for a
    /// commit.
    pub fn is_clean(&self) -> bool {
        !self.data_dirty() && self.pending_attrs.is_none()
    }

    /// Bytes buffered, or a size or modification time not committed.
    fn data_dirty(&self) -> bool {
        !self.buffer.is_empty() || self.size != self.committed_size || self.pending_mtime.is_some()
    }

    /// The data changed here: its modification time is now, and replaces
    /// a time set explicitly before.
    fn touch(&mut self) {
        self.pending_mtime = Some(now_ns());
        if let Some(attrs) = &mut self.pending_attrs {
            attrs.data_changed();
        }
    }

    /// Keeps `attr` as the inode's latest known state, unless the one
    /// kept is from a later commit (only dfs-meta moves data versions;
    /// ctimes follow a client's clock when it is ahead).
    fn learn(&mut self, attr: Option<InodeRecord>) {
        if let Some(attr) = attr {
            if self
                .known_attr
                .as_ref()
                .is_none_or(|known| attr.data_version >= known.data_version)
            {
                self.known_attr = Some(attr);
            }
        }
    }

    /// `attr` (as dfs-meta has it) with what this state has not committed.
    fn overlay(&self, attr: &mut InodeRecord) {
        // An answer read before this client's last commit landed (a stat
        // racing the close): the attributes that commit left are the ones
        // this client already showed.
        if let Some(known) = self
            .known_attr
            .as_ref()
            .filter(|k| k.data_version > attr.data_version)
        {
            attr.mode = known.mode;
            attr.uid = known.uid;
            attr.gid = known.gid;
            attr.atime_ns = known.atime_ns;
            attr.mtime_ns = known.mtime_ns;
            attr.ctime_ns = known.ctime_ns;
        }
        attr.size = self.size;
        if let Some(m) = self.pending_mtime {
            attr.mtime_ns = m;
            attr.ctime_ns = attr.ctime_ns.max(m);
        }
        // Those a write-behind flush is committing, then those set since.
        if let Some(attrs) = self.behind.as_ref().and_then(|b| b.attrs.as_ref()) {
            attrs.apply(attr);
        }
        if let Some(attrs) = &self.pending_attrs {
            attrs.apply(attr);
        }
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
    /// Chunk maps of closed files, for the next open to reuse if the file
    /// did not change.
    closed_maps: closed_maps::ClosedMaps,
    /// Directories whose every name this client knows (lookups of absent
    /// names without a round trip); off until [`KnownNames::set_mode`].
    pub names: Arc<known_names::KnownNames>,
    /// This client's id in the requests that add names (directory leases,
    /// [`known_names`]): random, never 0.
    pub client_id: u64,
    /// Pages of directories looked up name after name; off until
    /// [`statahead::Statahead::set_ttl`].
    pub statahead: statahead::Statahead,
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
        let names = Arc::new(known_names::KnownNames::default());
        let view = names.clone();
        // A create answered early and sent later changes its directory
        // then (`early_create`).
        cluster
            .meta
            .on_deferred_made(Box::new(move |request, parent, sent| match parent {
                Some(after) => view.changed(
                    Some(after),
                    request.parent,
                    known_names::NameChange::Added(&request.name),
                    sent,
                ),
                None => view.forget(request.parent),
            }));
        Self {
            cluster,
            cache,
            codec,
            readahead_bytes,
            dirty_limit: DEFAULT_DIRTY_LIMIT,
            dirty_bytes: AtomicUsize::new(0),
            open_files: Mutex::new(HashMap::new()),
            closed_maps: closed_maps::ClosedMaps::default(),
            names,
            client_id: rand::random::<u64>() | 1,
            statahead: statahead::Statahead::default(),
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
}
