//! Metadata RPCs with retries: transient failures (a metadata server
//! restarting, a conflict) are retried with backoff for a bounded time,
//! after which the caller gets EIO instead of a hang.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_core::error::DfsError;
use dfs_core::rpc::RpcTransport;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{
    ChunkMapReply, ChunkMapRequest, ColdChunkReply, ColdChunkRequest, CreateRequest,
    DictionaryRecord, DictionaryRequest, Empty, GetLockReply, InoRequest, InodeRecord,
    KeepUnlinkedRequest, LinkRequest, ListServersReply, LockSessionReply, LockSessionRequest,
    LookupChunksReply, LookupChunksRequest, LookupRequest, ReadDirReply, ReadDirRequest,
    RemoveRequest, RenameRequest, ReserveInodesReply, SetAttrRequest, SetLockReply, SetLockRequest,
    StatFsReply, VolumeConfig, XattrListReply, XattrReply, XattrRequest,
};
use parking_lot::Mutex;
use prost::Message;
use tonic::Response;

mod deferred;
pub use deferred::MadeHook;

/// Bound on remembered directory attributes (see `MetaRpc::changed_dir`).
const CHANGED_DIRS_MAX: usize = 4096;
/// Bound on remembered file attributes (see `MetaRpc::recent_file`).
const RECENT_FILES_MAX: usize = 4096;

#[derive(Clone)]
pub struct MetaRpc {
    clients: Vec<MetaClient<RpcTransport>>,
    /// How long transient failures are retried before giving up, in ms.
    retry_for_ms: Arc<AtomicU64>,
    /// The server that answered last: calls start there, so a dead server
    /// listed first costs one failed attempt, not one per call.
    preferred: Arc<AtomicUsize>,
    /// Directories this client's namespace changes modified, as the
    /// metadata server returned them with the change, and when.
    changed_dirs: Arc<Mutex<HashMap<u64, (InodeRecord, Instant)>>>,
    /// Counts this client's namespace and attribute changes: moved when one
    /// is sent and again when it ends, however it ends (see
    /// [`MetaRpc::changes`]).
    changes: Arc<AtomicU64>,
    /// Regular files as dfs-meta last answered for them (a lookup, a
    /// getattr, a create, a setattr, a link, a commit), when, and the
    /// change count the answer is current for (see [`MetaRpc::recent_file`]).
    recent_files: Arc<Mutex<HashMap<u64, RecentFile>>>,
    /// Moves with each [`MetaRpc::forget_recent_file`]: an answer to a call
    /// that an open overlapped is not kept.
    opens: Arc<AtomicU64>,
    /// Creates answered before they were sent ([`deferred`]).
    deferred: Arc<deferred::DeferredCreates>,
}

struct RecentFile {
    attr: InodeRecord,
    at: Instant,
    changes: u64,
}

/// Moves the change count when a changing call ends, also when its future
/// is dropped mid-flight (the change may still happen on the server).
struct ChangeGuard<'a>(Option<&'a AtomicU64>);

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        if let Some(changes) = self.0 {
            changes.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl MetaRpc {
    /// `transports` are alternative metadata servers of one volume, tried in
    /// order when one is unreachable.
    pub fn new(transports: Vec<RpcTransport>, retry_for: Duration) -> Self {
        let clients = transports
            .into_iter()
            .map(|t| {
                MetaClient::new(t)
                    .max_decoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
            })
            .collect();
        let retry_for_ms = Arc::new(AtomicU64::new(retry_for.as_millis() as u64));
        Self {
            clients,
            retry_for_ms,
            preferred: Arc::new(AtomicUsize::new(0)),
            changed_dirs: Arc::default(),
            changes: Arc::default(),
            recent_files: Arc::default(),
            opens: Arc::default(),
            deferred: Arc::default(),
        }
    }

    /// A count that moves with each namespace or attribute change this
    /// client sends, once when it is sent and once when it ends. An answer
    /// read while the count stayed the same reflects every change of this
    /// client that was acknowledged before it was asked for, and no change
    /// of this client has been acknowledged since.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Directory `ino` as this client's last change to it left it, if that
    /// was less than `ttl` ago, and how much of `ttl` is left. The kernel
    /// asks for a directory's attributes right after each create, unlink or
    /// rename in it (it knows they changed); this answers that without a
    /// round trip. Within `ttl` it is what the kernel itself may cache, and
    /// a later change by this client replaces it.
    pub fn changed_dir(&self, ino: u64, ttl: Duration) -> Option<(InodeRecord, Duration)> {
        let dirs = self.changed_dirs.lock();
        let (attr, at) = dirs.get(&ino)?;
        let left = ttl.checked_sub(at.elapsed())?;
        (!left.is_zero()).then(|| (attr.clone(), left))
    }

    /// Regular file `ino` as dfs-meta answered for it less than `ttl` ago,
    /// if this client has changed nothing since it asked (the change count
    /// is where the answer left it), and how much of `ttl` is left. The
    /// kernel drops a file's attributes after each write and setattr and
    /// asks again (before a chown, to know the mode it clears set-id bits
    /// from; on `fstat`): unless this client changed something meanwhile,
    /// dfs-meta would answer the same, bar other clients' changes, which
    /// the kernel itself may hide for `ttl`.
    ///
    /// Also returns the change count the answer is current for: a caller
    /// that waits before using it (for the file's state, to lay buffered
    /// writes over it) checks with [`MetaRpc::still_current`] after.
    pub fn recent_file(&self, ino: u64, ttl: Duration) -> Option<(InodeRecord, Duration, u64)> {
        let files = self.recent_files.lock();
        let recent = files.get(&ino)?;
        if !self.still_current(recent.changes) {
            return None;
        }
        let left = ttl.checked_sub(recent.at.elapsed())?;
        (!left.is_zero()).then(|| (recent.attr.clone(), left, recent.changes))
    }

    /// Whether an answer [`MetaRpc::recent_file`] gave at change count
    /// `changes` is still current: no change of this client began since.
    pub fn still_current(&self, changes: u64) -> bool {
        self.changes() == changes
    }

    /// Forgets what [`MetaRpc::recent_file`] keeps of `ino`: an open must
    /// see what other clients committed before it (close-to-open).
    pub fn forget_recent_file(&self, ino: u64) {
        let mut files = self.recent_files.lock();
        self.opens.fetch_add(1, Ordering::AcqRel);
        files.remove(&ino);
    }

    /// Keeps `attr`, answered by a call that began at change count
    /// `before` and open count `opens`: current while the change count is
    /// where the call left it (two moves on from `before` for a change,
    /// none for a read), so an answer that another change of this client
    /// overlapped never is; not kept at all if an open overlapped it.
    fn keep_recent_file(&self, attr: &InodeRecord, before: u64, changed: bool, opens: u64) {
        if attr.kind() != dfs_proto::FileKind::Regular {
            return;
        }
        let changes = before + if changed { 2 } else { 0 };
        let mut files = self.recent_files.lock();
        if self.opens.load(Ordering::Acquire) != opens {
            return;
        }
        // Two reads at one count may arrive in the other order: the later
        // state of the file stays.
        if files.get(&attr.ino).is_some_and(|kept| {
            kept.changes == changes
                && (kept.attr.data_version, kept.attr.ctime_ns) > (attr.data_version, attr.ctime_ns)
        }) {
            return;
        }
        if files.len() >= RECENT_FILES_MAX {
            files.clear();
        }
        files.insert(
            attr.ino,
            RecentFile {
                attr: attr.clone(),
                at: Instant::now(),
                changes,
            },
        );
    }

    /// Directory `ino` as this client's last change to it left it.
    pub fn last_changed_dir(&self, ino: u64) -> Option<InodeRecord> {
        self.changed_dirs
            .lock()
            .get(&ino)
            .map(|(dir, _)| dir.clone())
    }

    /// A directory this client just made, as its create answered: what
    /// the first file made in it is answered from (`fs::early_create`),
    /// and the kernel's next GETATTR of it.
    pub fn note_made_dir(&self, dir: &InodeRecord) {
        let mut dirs = self.changed_dirs.lock();
        if dirs.len() >= CHANGED_DIRS_MAX {
            dirs.clear();
        }
        dirs.entry(dir.ino)
            .or_insert_with(|| (dir.clone(), Instant::now()));
    }

    fn note_changed_dirs(&self, metadata: &tonic::metadata::MetadataMap) {
        let mut values = metadata
            .get_all_bin(dfs_proto::CHANGED_DIRS_METADATA)
            .iter()
            .peekable();
        if values.peek().is_none() {
            return;
        }
        let now = Instant::now();
        let mut dirs = self.changed_dirs.lock();
        if dirs.len() >= CHANGED_DIRS_MAX {
            dirs.clear();
        }
        for value in values {
            let decoded = value
                .to_bytes()
                .ok()
                .and_then(|bytes| InodeRecord::decode(bytes).ok());
            match decoded {
                // Every change to a directory moves its ctime, and one of
                // its entries its entry count: a reply that overtook a
                // later change's never replaces what it left.
                Some(dir) => match dirs.get(&dir.ino) {
                    Some((known, _))
                        if (known.entry_changes, known.ctime_ns)
                            > (dir.entry_changes, dir.ctime_ns) => {}
                    _ => {
                        dirs.insert(dir.ino, (dir, now));
                    }
                },
                None => tracing::debug!("undecodable changed-directory metadata ignored"),
            }
        }
    }

    /// Changes how long transient failures are retried (a mount connects
    /// with a short limit, then rides out restarts with a longer one).
    pub fn set_retry_for(&self, retry_for: Duration) {
        self.retry_for_ms
            .store(retry_for.as_millis() as u64, Ordering::Relaxed);
    }

    /// Calls `f` with a client, retrying retryable errors with backoff.
    /// Only the typed methods below call it: one per RPC.
    async fn call<T, F, Fut>(&self, op: &'static str, changes: bool, f: F) -> Result<T, DfsError>
    where
        F: Fn(MetaClient<RpcTransport>) -> Fut,
        Fut: Future<Output = Result<Response<T>, tonic::Status>>,
    {
        // Creates answered before they were sent go first: this request
        // must find them made (`deferred`).
        if self.deferred.any() && deferred::DeferredCreates::needed_before(op) {
            self.settle_deferred().await;
        }
        let _change = ChangeGuard(changes.then(|| {
            self.changes.fetch_add(1, Ordering::AcqRel);
            &*self.changes
        }));
        let started = Instant::now();
        let retry_for = Duration::from_millis(self.retry_for_ms.load(Ordering::Relaxed));
        let mut delay = Duration::from_millis(20);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut attempt = 0usize;
        loop {
            let index = (first + attempt) % self.clients.len();
            match f(self.clients[index].clone()).await {
                Ok(reply) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    self.note_changed_dirs(reply.metadata());
                    return Ok(reply.into_inner());
                }
                Err(status) => {
                    let err = DfsError::from(status);
                    if !err.retryable || started.elapsed() >= retry_for {
                        if err.retryable {
                            tracing::error!(op, error = %err, "metadata service unreachable, giving up");
                            return Err(DfsError::new(
                                libc::EIO,
                                format!("{op}: metadata service unreachable: {}", err.message),
                            ));
                        }
                        return Err(err);
                    }
                    tracing::debug!(op, attempt, server = index, error = %err, "retrying metadata request");
                    attempt += 1;
                    // Try the other servers at once; back off once all failed.
                    if attempt.is_multiple_of(self.clients.len()) {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

/// One typed method per metadata RPC the client makes, each sent through
/// [`MetaRpc::call`] (retries, fail-over, changed directories) with the
/// request as is on every attempt and named after the RPC in logs. Those
/// under `changes` alter the namespace or an inode and move
/// [`MetaRpc::changes`].
macro_rules! metadata_rpcs {
    (reads { $($read:ident($read_request:ty) -> $read_reply:ty;)* }
     inode_reads { $($inode_read:ident($inode_read_request:ty);)* }
     changes { $($change:ident($change_request:ty) -> $change_reply:ty;)* }
     inode_changes { $($inode_change:ident($inode_change_request:ty);)* }) => {
        impl MetaRpc {
            $(metadata_rpcs!(@one $read, $read_request, $read_reply, false);)*
            $(metadata_rpcs!(@inode $inode_read, $inode_read_request, false);)*
            $(metadata_rpcs!(@one $change, $change_request, $change_reply, true);)*
            $(metadata_rpcs!(@inode $inode_change, $inode_change_request, true);)*
        }
    };
    (@one $method:ident, $request:ty, $reply:ty, $changes:expr) => {
        pub async fn $method(&self, request: $request) -> Result<$reply, DfsError> {
            self.call(stringify!($method), $changes, |mut c| {
                let request = request.clone();
                async move { c.$method(request).await }
            })
            .await
        }
    };
    // Those answering with an inode: a regular file's answer is kept
    // (`MetaRpc::recent_file`).
    (@inode $method:ident, $request:ty, $changes:expr) => {
        pub async fn $method(&self, request: $request) -> Result<InodeRecord, DfsError> {
            let before = self.changes();
            let opens = self.opens.load(Ordering::Acquire);
            let attr = self
                .call(stringify!($method), $changes, |mut c| {
                    let request = request.clone();
                    async move { c.$method(request).await }
                })
                .await?;
            self.keep_recent_file(&attr, before, $changes, opens);
            Ok(attr)
        }
    };
}

metadata_rpcs! {
    reads {
        get_xattr(XattrRequest) -> XattrReply;
        list_xattr(InoRequest) -> XattrListReply;
        read_dir(ReadDirRequest) -> ReadDirReply;
        stat_fs(Empty) -> StatFsReply;
        sync(Empty) -> Empty;
        get_volume_config(Empty) -> VolumeConfig;
        lookup_chunks(LookupChunksRequest) -> LookupChunksReply;
        get_chunk_map(ChunkMapRequest) -> ChunkMapReply;
        read_cold_chunk(ColdChunkRequest) -> ColdChunkReply;
        get_dictionary(DictionaryRequest) -> DictionaryRecord;
        list_servers(Empty) -> ListServersReply;
        reserve_inodes(Empty) -> ReserveInodesReply;
        // Byte-range locks change no inode.
        open_lock_session(LockSessionRequest) -> LockSessionReply;
        end_lock_session(LockSessionRequest) -> Empty;
        set_lock(SetLockRequest) -> SetLockReply;
        get_lock(SetLockRequest) -> GetLockReply;
    }
    inode_reads {
        lookup(LookupRequest);
        get_attr(InoRequest);
    }
    changes {
        unlink(RemoveRequest) -> Empty;
        rmdir(RemoveRequest) -> Empty;
        rename(RenameRequest) -> Empty;
        forget_unlinked(InoRequest) -> Empty;
        keep_unlinked(KeepUnlinkedRequest) -> Empty;
        set_xattr(XattrRequest) -> Empty;
        remove_xattr(XattrRequest) -> Empty;
    }
    inode_changes {
        set_attr(SetAttrRequest);
        create(CreateRequest);
        link(LinkRequest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_proto::FileKind;

    fn file(ino: u64, kind: FileKind) -> InodeRecord {
        InodeRecord {
            ino,
            kind: kind as i32,
            size: 10,
            ..Default::default()
        }
    }

    fn rpc() -> MetaRpc {
        MetaRpc::new(Vec::new(), Duration::from_secs(1))
    }

    const TTL: Duration = Duration::from_secs(1);

    #[test]
    fn a_kept_answer_holds_until_this_client_changes_anything() {
        let rpc = rpc();
        let before = rpc.changes();
        rpc.keep_recent_file(&file(5, FileKind::Regular), before, false, 0);
        assert_eq!(rpc.recent_file(5, TTL).map(|(a, _, _)| a.size), Some(10));
        assert!(rpc.recent_file(6, TTL).is_none(), "never answered");
        rpc.changes.fetch_add(1, Ordering::AcqRel);
        assert!(rpc.recent_file(5, TTL).is_none(), "a change is under way");
    }

    #[test]
    fn a_change_s_answer_is_current_only_if_nothing_overlapped_it() {
        let rpc = rpc();
        // The change's own two moves: current.
        let before = rpc.changes();
        rpc.changes.fetch_add(2, Ordering::AcqRel);
        rpc.keep_recent_file(&file(5, FileKind::Regular), before, true, 0);
        assert!(rpc.recent_file(5, TTL).is_some());
        // Another change began and ended during it: never current.
        let before = rpc.changes();
        rpc.changes.fetch_add(4, Ordering::AcqRel);
        rpc.keep_recent_file(&file(5, FileKind::Regular), before, true, 0);
        assert!(rpc.recent_file(5, TTL).is_none());
    }

    #[test]
    fn an_open_forgets_the_file_and_answers_it_overlapped() {
        let rpc = rpc();
        let opens = rpc.opens.load(Ordering::Acquire);
        rpc.keep_recent_file(&file(5, FileKind::Regular), rpc.changes(), false, opens);
        rpc.forget_recent_file(5);
        assert!(rpc.recent_file(5, TTL).is_none());
        // A getattr sent before that open and answered after it.
        rpc.keep_recent_file(&file(5, FileKind::Regular), rpc.changes(), false, opens);
        assert!(rpc.recent_file(5, TTL).is_none());
    }

    #[test]
    fn only_regular_files_and_only_within_the_ttl() {
        let rpc = rpc();
        rpc.keep_recent_file(&file(7, FileKind::Directory), rpc.changes(), false, 0);
        assert!(rpc.recent_file(7, TTL).is_none());
        rpc.keep_recent_file(&file(5, FileKind::Regular), rpc.changes(), false, 0);
        assert!(rpc.recent_file(5, Duration::ZERO).is_none());
        std::thread::sleep(Duration::from_millis(20));
        assert!(rpc.recent_file(5, Duration::from_millis(10)).is_none());
        let (_, left, _) = rpc.recent_file(5, TTL).expect("within the ttl");
        assert!(left < TTL);
    }

    #[test]
    fn an_answer_overtaken_by_a_later_one_does_not_replace_it() {
        let rpc = rpc();
        let later = InodeRecord {
            ctime_ns: 20,
            mode: 0o600,
            ..file(5, FileKind::Regular)
        };
        let earlier = InodeRecord {
            ctime_ns: 10,
            mode: 0o644,
            ..file(5, FileKind::Regular)
        };
        rpc.keep_recent_file(&later, rpc.changes(), false, 0);
        rpc.keep_recent_file(&earlier, rpc.changes(), false, 0);
        let (kept, _, changes) = rpc.recent_file(5, TTL).expect("kept");
        assert_eq!(kept.mode, 0o600);
        assert!(rpc.still_current(changes));
        rpc.changes.fetch_add(1, Ordering::AcqRel);
        assert!(!rpc.still_current(changes), "a change began since");
    }
}
