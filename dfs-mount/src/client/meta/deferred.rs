//! Creates this mount answered before sending them (`fs::early_create`).
//!
//! Writing a small file took a round trip for its create and another for
//! its commit. In a directory this client holds the lease of, the core
//! answers the kernel's create of a regular file at once, with an inode
//! number from a batch this client reserved (`ReserveInodes`), and leaves
//! the create here. It goes to dfs-meta:
//! - with the file's first commit, made in the same transaction
//!   ([`MetaRpc::commit_chunks`]): a small file written and closed is one
//!   request;
//! - alone, before any other metadata request of this client goes out
//!   ([`MetaRpc::call`]): whatever that request reads or changes, it finds
//!   the file made, as it would have been;
//! - alone, when the file is flushed with nothing to commit (an empty
//!   file's close) and, at the latest, shortly before the lease it was
//!   answered under runs out (a task waits for that).
//!
//! dfs-meta checks what the core assumed: the name is free (the lease
//! keeps other clients' names out) and the directory is as the core saw
//! it (other clients' changes of it wait the lease out). A create past its
//! deadline is not carried by a commit (which may take long) but sent
//! alone first. A create whose outcome is unknown (dfs-meta unreachable)
//! stays held and is sent again (the same `create_id`: a retry of one that
//! happened answers what it made). One that fails all the same is dropped,
//! and the file's commits fail with EIO from then on (its close reports
//! it, as an NFS client's write-behind errors surface), never taken for a
//! file another client removed.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dfs_core::error::DfsError;
use dfs_proto::{CommitChunksRequest, CreateRequest, Empty, InodeRecord};
use parking_lot::Mutex;

use super::MetaRpc;

/// Told of each create once sent: the parent as it came back, or `None`
/// when the create failed; and when the request carrying it was sent.
pub type MadeHook = Box<dyn Fn(&CreateRequest, Option<&InodeRecord>, Instant) + Send + Sync>;

/// Requests that go out with creates still held: those that cannot observe
/// them (another file's commit, dedup lookups, the volume's settings,
/// chunk-server lists, dictionaries, cold reads, the space left) and the
/// ones that send them.
const NEEDS_NO_CREATE: [&str; 9] = [
    "commit_chunks",
    "create_deferred",
    "reserve_inodes",
    "lookup_chunks",
    "get_volume_config",
    "get_dictionary",
    "list_servers",
    "read_cold_chunk",
    "stat_fs",
];

/// Failed creates remembered at most (their files' commits fail); past
/// it the oldest are forgotten all at once (a file whose create failed
/// and that is still written after 4,096 more is not worth the memory).
const FAILED_MAX: usize = 4096;

/// How long after a failed reservation creates are sent as they come.
const RESERVE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
pub(super) struct DeferredCreates {
    /// Reserved inode numbers not given out yet: `(next, end)`.
    pool: Mutex<(u64, u64)>,
    /// One reservation at a time.
    reserving: tokio::sync::Mutex<()>,
    /// dfs-meta refuses this client reservations (a restricted
    /// certificate, an older server): never asked again.
    refused: AtomicBool,
    /// A reservation failed otherwise (dfs-meta unreachable, or too old to
    /// know the request): none is asked for before then.
    retry_after: Mutex<Option<Instant>>,
    /// Creates held, by inode number.
    held: Mutex<HashMap<u64, Arc<Held>>>,
    /// Files whose held create failed: their data has nowhere to go.
    failed: Mutex<HashSet<u64>>,
    /// `held.len()`, read on every request without the lock.
    count: AtomicUsize,
    made: OnceLock<MadeHook>,
}

struct Held {
    request: CreateRequest,
    /// When it goes alone at the latest; past it, no commit carries it.
    deadline: Instant,
    /// Taken by whoever sends the create; true once it is sent for good
    /// (made, or failed and dropped).
    sent: tokio::sync::Mutex<bool>,
}

impl DeferredCreates {
    fn take_reserved(&self) -> Option<u64> {
        let mut pool = self.pool.lock();
        (pool.0 < pool.1).then(|| {
            pool.0 += 1;
            pool.0 - 1
        })
    }

    fn get(&self, ino: u64) -> Option<Arc<Held>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.held.lock().get(&ino).cloned()
    }

    fn remove(&self, ino: u64) {
        let mut held = self.held.lock();
        held.remove(&ino);
        self.count.store(held.len(), Ordering::Release);
    }

    pub(super) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    pub(super) fn needed_before(op: &str) -> bool {
        !NEEDS_NO_CREATE.contains(&op)
    }
}

impl MetaRpc {
    /// Sets what is told of each held create once sent (the core keeps its
    /// views of directories' names by it). Once per client.
    pub fn on_deferred_made(&self, hook: MadeHook) {
        if self.deferred.made.set(hook).is_err() {
            tracing::debug!("a hook for deferred creates was set already");
        }
    }

    /// An inode number of this client's own for a create it answers
    /// before sending; `None` when dfs-meta gives none (then the create is
    /// sent as usual).
    pub async fn reserved_ino(&self) -> Option<u64> {
        let deferred = &self.deferred;
        if deferred.refused.load(Ordering::Relaxed)
            || deferred
                .retry_after
                .lock()
                .is_some_and(|t| Instant::now() < t)
        {
            return None;
        }
        if let Some(ino) = deferred.take_reserved() {
            return Some(ino);
        }
        let _one = deferred.reserving.lock().await;
        if let Some(ino) = deferred.take_reserved() {
            return Some(ino);
        }
        match self.reserve_inodes(Empty {}).await {
            Ok(batch) if batch.count > 0 => {
                *deferred.pool.lock() = (batch.first + 1, batch.first + batch.count);
                Some(batch.first)
            }
            Ok(_) => None,
            Err(e) => {
                if matches!(
                    e.errno,
                    libc::EPERM | libc::EACCES | libc::ENOSYS | libc::EOPNOTSUPP
                ) {
                    tracing::info!(error = %e, "dfs-meta reserves no inode numbers for this client: creates are sent as they come");
                    deferred.refused.store(true, Ordering::Relaxed);
                } else {
                    *deferred.retry_after.lock() = Some(Instant::now() + RESERVE_RETRY);
                }
                None
            }
        }
    }

    /// Holds `request` (a create the core answered, its `ino` from
    /// [`MetaRpc::reserved_ino`]) until it goes out as the module says,
    /// at the latest at `deadline`. `answered`: the inode and its parent
    /// as the core told the kernel, answered from here until then.
    pub fn defer_create(
        &self,
        request: CreateRequest,
        deadline: Instant,
        answered: &InodeRecord,
        parent: InodeRecord,
    ) {
        let ino = request.ino;
        // A change begun and ended (the kernel has its answer): answers
        // read before it are not current any more.
        let before = self.changes();
        self.changes.fetch_add(2, Ordering::AcqRel);
        let opens = self.opens.load(Ordering::Acquire);
        self.keep_recent_file(answered, before, true, opens);
        self.changed_dirs
            .lock()
            .insert(parent.ino, (parent, Instant::now()));
        {
            let mut held = self.deferred.held.lock();
            held.insert(
                ino,
                Arc::new(Held {
                    request,
                    deadline,
                    sent: tokio::sync::Mutex::new(false),
                }),
            );
            self.deferred.count.store(held.len(), Ordering::Release);
        }
        let rpc = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            if let Err(e) = rpc.make_deferred(ino).await {
                tracing::warn!(ino, error = %e, "a create answered early failed when sent before its directory's lease ran out");
            }
        });
    }

    /// Sends `ino`'s create alone, if it is still held; EIO for a file
    /// whose create failed.
    pub async fn make_deferred(&self, ino: u64) -> Result<(), DfsError> {
        self.check_not_failed(ino)?;
        let Some(held) = self.deferred.get(ino) else {
            return Ok(());
        };
        let mut sent = held.sent.lock().await;
        if *sent {
            return self.check_not_failed(ino);
        }
        let at = Instant::now();
        let request = held.request.clone();
        let before = self.changes();
        let opens = self.opens.load(Ordering::Acquire);
        let result = self
            .call("create_deferred", true, |mut c| {
                let request = request.clone();
                async move { c.create(request).await }
            })
            .await;
        // EIO: unknown outcome (dfs-meta unreachable), sent again later.
        let (result, definite) = match result {
            // An older dfs-meta ignores the number asked for.
            Ok(attr) if attr.ino != ino => (
                Err(DfsError::io(format!(
                    "dfs-meta made inode {} for a create of reserved inode {ino}: it does not take reserved numbers",
                    attr.ino
                ))),
                true,
            ),
            Ok(attr) => (Ok(attr), true),
            Err(e) => {
                let definite = e.errno != libc::EIO;
                (Err(e), definite)
            }
        };
        match &result {
            Ok(attr) => {
                *sent = true;
                self.deferred.remove(ino);
                self.keep_recent_file(attr, before, true, opens);
                self.tell_made(&held.request, true, at);
            }
            Err(e) if !definite => {
                tracing::warn!(ino, error = %e, "a create answered early could not be sent; held");
            }
            Err(e) => {
                tracing::warn!(ino, error = %e, "a create answered early failed when sent: the file's close reports it");
                *sent = true;
                self.deferred.remove(ino);
                {
                    let mut failed = self.deferred.failed.lock();
                    if failed.len() >= FAILED_MAX {
                        failed.clear();
                    }
                    failed.insert(ino);
                }
                self.tell_made(&held.request, false, at);
            }
        }
        result.map(|_| ())
    }

    /// EIO for a file whose create, answered early, failed when sent.
    fn check_not_failed(&self, ino: u64) -> Result<(), DfsError> {
        if self.deferred.failed.lock().contains(&ino) {
            return Err(DfsError::io(format!(
                "inode {ino}: its create failed when sent to dfs-meta (see the log); its data cannot be stored"
            )));
        }
        Ok(())
    }

    /// Sends every create still held, in the order they were answered
    /// (reserved numbers rise), before a request that could observe them.
    pub fn settle_deferred(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut inos: Vec<u64> = self.deferred.held.lock().keys().copied().collect();
            inos.sort_unstable();
            for ino in inos {
                // Failures are logged and the create dropped; the request
                // that waited goes on.
                let _ = self.make_deferred(ino).await;
            }
        })
    }

    fn tell_made(&self, request: &CreateRequest, made: bool, sent: Instant) {
        if let Some(hook) = self.deferred.made.get() {
            let parent = made
                .then(|| self.last_changed_dir(request.parent))
                .flatten();
            hook(request, parent.as_ref(), sent);
        }
    }

    /// CommitChunks, carrying the file's create while it is held here: the
    /// file is made in the commit's transaction.
    pub async fn commit_chunks(
        &self,
        mut request: CommitChunksRequest,
    ) -> Result<InodeRecord, DfsError> {
        self.check_not_failed(request.ino)?;
        let mut held = self.deferred.get(request.ino);
        if held.as_ref().is_some_and(|h| Instant::now() >= h.deadline) {
            // Too near the lease's end for a commit (which may take long):
            // the create goes alone first.
            self.make_deferred(request.ino).await?;
            held = None;
        }
        let mut sent = match &held {
            Some(held) => Some(held.sent.lock().await),
            None => None,
        };
        let carried = match (&held, &sent) {
            (Some(held), Some(sent)) if !**sent => {
                request.create = Some(held.request.clone());
                true
            }
            _ => false,
        };
        let at = Instant::now();
        let before = self.changes();
        let opens = self.opens.load(Ordering::Acquire);
        let attr = self
            .call("commit_chunks", true, |mut c| {
                let request = request.clone();
                async move { c.commit_chunks(request).await }
            })
            .await;
        if let (true, Ok(_), Some(held), Some(sent)) = (carried, &attr, &held, sent.as_mut()) {
            **sent = true;
            self.deferred.remove(request.ino);
            self.tell_made(&held.request, true, at);
        }
        // A failed commit leaves its create held: the next commit carries
        // it again, or it goes alone. Its file was not made, so it was not
        // removed by another client either (what ENOENT would tell the
        // flush): an older dfs-meta ignored the create.
        let attr = attr.map_err(|e| match e.errno {
            libc::ENOENT if carried => DfsError::io(format!(
                "the commit carrying the file's create found no file (does dfs-meta take creates with commits?): {}",
                e.message
            )),
            _ => e,
        })?;
        self.keep_recent_file(&attr, before, true, opens);
        Ok(attr)
    }
}
