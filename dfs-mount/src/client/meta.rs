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
    ChunkMapReply, ChunkMapRequest, ColdChunkReply, ColdChunkRequest, CommitChunksRequest,
    CreateRequest, DictionaryRecord, DictionaryRequest, Empty, GetLockReply, InoRequest,
    InodeRecord, KeepUnlinkedRequest, LinkRequest, ListServersReply, LockSessionReply,
    LockSessionRequest, LookupChunksReply, LookupChunksRequest, LookupRequest, ReadDirReply,
    ReadDirRequest, RemoveRequest, RenameRequest, SetAttrRequest, SetLockReply, SetLockRequest,
    StatFsReply, VolumeConfig, XattrListReply, XattrReply, XattrRequest,
};
use parking_lot::Mutex;
use prost::Message;
use tonic::Response;

/// Bound on remembered directory attributes (see `MetaRpc::changed_dir`).
const CHANGED_DIRS_MAX: usize = 4096;

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

    /// Directory `ino` as this client's last change to it left it.
    pub fn last_changed_dir(&self, ino: u64) -> Option<InodeRecord> {
        self.changed_dirs
            .lock()
            .get(&ino)
            .map(|(dir, _)| dir.clone())
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
     changes { $($change:ident($change_request:ty) -> $change_reply:ty;)* }) => {
        impl MetaRpc {
            $(metadata_rpcs!(@one $read, $read_request, $read_reply, false);)*
            $(metadata_rpcs!(@one $change, $change_request, $change_reply, true);)*
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
}

metadata_rpcs! {
    reads {
        lookup(LookupRequest) -> InodeRecord;
        get_attr(InoRequest) -> InodeRecord;
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
        // Byte-range locks change no inode.
        open_lock_session(LockSessionRequest) -> LockSessionReply;
        end_lock_session(LockSessionRequest) -> Empty;
        set_lock(SetLockRequest) -> SetLockReply;
        get_lock(SetLockRequest) -> GetLockReply;
    }
    changes {
        set_attr(SetAttrRequest) -> InodeRecord;
        create(CreateRequest) -> InodeRecord;
        unlink(RemoveRequest) -> Empty;
        rmdir(RemoveRequest) -> Empty;
        rename(RenameRequest) -> Empty;
        forget_unlinked(InoRequest) -> Empty;
        keep_unlinked(KeepUnlinkedRequest) -> Empty;
        link(LinkRequest) -> InodeRecord;
        set_xattr(XattrRequest) -> Empty;
        remove_xattr(XattrRequest) -> Empty;
        commit_chunks(CommitChunksRequest) -> InodeRecord;
    }
}
