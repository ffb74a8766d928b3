//! `MetaStore`: a small transactional key-value interface shaped like
//! FoundationDB's, so the namespace code above it runs unchanged on the
//! embedded RocksDB backend and, later, on FoundationDB.
//!
//! Transactions are serializable. A backend may report
//! [`StoreError::Conflict`] at commit; [`transact`] is the one retry loop
//! that handles it. The body of a transaction may run more than once, so it
//! must not have side effects outside the transaction.

#[cfg(feature = "fdb")]
mod fdb;
mod mem;
mod overlay;
mod rocks;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub mod measure;

#[cfg(feature = "fdb")]
pub use fdb::FdbStore;
pub use mem::MemStore;
pub use rocks::RocksStore;

use std::time::Duration;

/// Errors of the key-value layer itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another transaction changed what this one read; retrying can help.
    #[error("transaction conflict")]
    Conflict,
    #[error("metadata store I/O error: {0}")]
    Io(String),
    #[error("cannot open metadata store: {0}")]
    Open(String),
    /// The commit may or may not have happened (FoundationDB's
    /// `commit_unknown_result`): retrying is only safe for idempotent work.
    #[error("transaction outcome unknown: {0}")]
    CommitUnknown(String),
    /// A key, a value or the whole transaction is past FoundationDB's
    /// limits. Every backend refuses it, so code that works on the
    /// embedded store cannot fail only on a cluster.
    #[error("transaction too large: {0}")]
    TooLarge(String),
}

/// FoundationDB's limits, enforced by every backend at commit.
pub const MAX_KEY_BYTES: usize = 10_000;
pub const MAX_VALUE_BYTES: usize = 100_000;
pub const MAX_TRANSACTION_BYTES: usize = 10_000_000;

/// Errors that say "run the transaction again": a conflict, whether found
/// at commit or by a read inside the transaction body.
pub trait ConflictError {
    fn is_conflict(&self) -> bool;
    /// The store itself failed (unreachable, timed out, outcome unknown),
    /// as opposed to the request.
    fn is_store_trouble(&self) -> bool {
        false
    }
}

impl ConflictError for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict)
    }
    fn is_store_trouble(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::CommitUnknown(_))
    }
}

/// When a transaction of this process last failed because of the store
/// itself (ns since the epoch; 0: never). Chunk servers' heartbeats could
/// not be recorded then: their age counts from here, not from their last
/// recorded heartbeat, so an outage of the metadata store does not mark
/// every chunk server down (see `registry::list`).
static LAST_STORE_TROUBLE_NS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn last_store_trouble_ns() -> i64 {
    LAST_STORE_TROUBLE_NS.load(std::sync::atomic::Ordering::Relaxed)
}

fn note_store_trouble() {
    let now = dfs_core::time::now_ns();
    LAST_STORE_TROUBLE_NS.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
}

/// Key-value pairs in key order, as range reads return them.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// One transaction's view: reads see the transaction's own writes.
pub trait KvTxn {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The values of `keys`, in their order. Backends whose reads are
    /// network round trips (FoundationDB) issue them all at once; a chunk
    /// commit reads one dedup record per chunk, up to ~2,000 of them.
    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Key-value pairs with `begin <= key < end`, in key order (descending
    /// when `reverse`), at most `limit` of them (0 means no limit).
    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<KeyValues, StoreError>;
    fn set(&mut self, key: &[u8], value: &[u8]);
    fn clear(&mut self, key: &[u8]);
    fn clear_range(&mut self, begin: &[u8], end: &[u8]);
    /// Adds `delta` to the little-endian i64 stored at `key` (absent = 0),
    /// as FoundationDB's ADD mutation does, without a read conflict.
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError>;
    /// Lets this transaction's commit return before it is on disk: it is
    /// made durable by the next synced commit (which syncs everything
    /// before it), by [`MetaStore::sync`], or by the store's background
    /// sync within [`DEFERRED_SYNC_EVERY`]. For namespace changes that
    /// acknowledge no file data (create, link, chmod, utimes, xattrs), as
    /// a local file system makes them durable at the next fsync or journal
    /// commit; they survive a crash of the process at once. Backends whose
    /// every commit is durable anyway (FoundationDB) ignore it.
    fn defer_sync(&mut self) {}
}

/// How long a commit with [`KvTxn::defer_sync`] may stay off the disk at
/// most, if nothing syncs it sooner (ext4 journals every 5 s).
pub const DEFERRED_SYNC_EVERY: Duration = Duration::from_millis(100);

/// A transaction that can be committed.
pub trait Transaction: KvTxn {
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// What a transaction body asks of [`MetaStore::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Commit what the body did.
    Commit,
    /// A read found a conflict: start again on a fresh transaction.
    Retry,
    /// The body failed: apply nothing.
    Abort,
}

pub trait MetaStore: Send + Sync + 'static {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError>;
    /// A short name for logs and status output ("rocksdb", "memory", ...).
    fn name(&self) -> &'static str;

    /// A consistent read-only view that takes no lock, for backends whose
    /// transactions serialize on one (the embedded RocksDB store), so that
    /// lookups do not wait for another request's synced commit. `None`:
    /// read through an ordinary transaction.
    fn snapshot(&self) -> Result<Option<Box<dyn ReadView + '_>>, StoreError> {
        Ok(None)
    }

    /// True when [`MetaStore::snapshot`] reads this machine's memory or
    /// disk without waiting for a lock or the network, so a point read may
    /// run on an async worker instead of a blocking thread.
    fn snapshot_is_local(&self) -> bool {
        false
    }

    /// Makes every commit so far durable, those with
    /// [`KvTxn::defer_sync`] included (fsync of a clean file, fsyncdir).
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether a commit waits for [`MetaStore::sync`] (cheap: the
    /// background sync asks it ten times a second).
    fn has_deferred(&self) -> bool {
        false
    }

    /// Runs `body` on a transaction and commits it, starting again on
    /// conflicts. `Ok(true)`: committed; `Ok(false)`: the body aborted.
    /// Backends with a retry loop of their own (FoundationDB's, with its
    /// backoff and error classification) override it; this one is for the
    /// embedded stores.
    fn run(&self, body: &mut dyn FnMut(&mut dyn KvTxn) -> BodyOutcome) -> Result<bool, StoreError> {
        let mut attempt = 0;
        loop {
            let mut txn = self.begin()?;
            let outcome = match body(txn.as_mut()) {
                BodyOutcome::Commit => txn.commit(),
                BodyOutcome::Retry => Err(StoreError::Conflict),
                BodyOutcome::Abort => return Ok(false),
            };
            match outcome {
                Ok(()) => return Ok(true),
                Err(StoreError::Conflict) if attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(u64::from(attempt.min(20))));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How many times a conflicting transaction is retried before giving up.
pub const MAX_ATTEMPTS: u32 = 50;

/// Transactions run through [`transact`] by this process, and the runs of
/// their bodies (one more than the transaction's retries), for `dfs stats`.
static TRANSACTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static BODY_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Transactions run by this process so far, and how many times their
/// bodies ran again (conflicts, or reads the store asked to retry).
pub fn transaction_counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let transactions = TRANSACTIONS.load(Relaxed);
    (
        transactions,
        BODY_RUNS.load(Relaxed).saturating_sub(transactions),
    )
}

/// Runs `body` in a transaction and commits it, retrying on conflicts
/// (at commit, or reported by a read in `body`) through the backend's retry
/// loop ([`MetaStore::run`]). Any other error from `body` aborts the
/// transaction: nothing it wrote is applied.
pub fn transact<T, E>(
    store: &dyn MetaStore,
    mut body: impl FnMut(&mut dyn KvTxn) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError> + ConflictError,
{
    let mut result: Option<Result<T, E>> = None;
    TRANSACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let committed = store
        .run(&mut |txn| {
            BODY_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match body(txn) {
                Ok(value) => {
                    result = Some(Ok(value));
                    BodyOutcome::Commit
                }
                Err(e) if e.is_conflict() => {
                    result = Some(Err(e));
                    BodyOutcome::Retry
                }
                Err(e) => {
                    result = Some(Err(e));
                    BodyOutcome::Abort
                }
            }
        })
        .map_err(|e| {
            if e.is_store_trouble() {
                note_store_trouble();
            }
            E::from(e)
        })?;
    if let Some(Err(e)) = &result {
        if e.is_store_trouble() {
            note_store_trouble();
        }
    }
    match result {
        // Committed: the last run of the body succeeded. Aborted: it failed.
        Some(Ok(value)) if committed => Ok(value),
        Some(Err(e)) if !committed => Err(e),
        // Neither can happen with a backend that keeps the contract.
        _ => Err(E::from(StoreError::Io(
            "transaction ended without an outcome from its body".into(),
        ))),
    }
}

/// A read-only view: a [`KvTxn`] whose writes are refused at the end.
pub trait ReadView: KvTxn {
    /// True when the body tried to write (a bug: the write is dropped).
    fn wrote(&self) -> bool;
}

/// Runs a body that only reads: on a lock-free snapshot where the backend
/// has one, otherwise as a transaction. A body that writes is a bug: its
/// writes are dropped and the call fails.
pub fn read_only<T, E>(
    store: &dyn MetaStore,
    mut body: impl FnMut(&mut dyn KvTxn) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError> + ConflictError,
{
    match store.snapshot().map_err(E::from)? {
        Some(mut view) => {
            let result = body(view.as_mut());
            if view.wrote() {
                return Err(E::from(StoreError::Io(
                    "a read-only request tried to write (a bug); nothing was written".into(),
                )));
            }
            result
        }
        // No lock-free view: an ordinary transaction whose writes are
        // refused, as a view's are.
        None => {
            let mut wrote = false;
            let result = transact(store, |txn| {
                let mut guarded = NoWrites {
                    inner: txn,
                    wrote: false,
                };
                let result = body(&mut guarded);
                wrote |= guarded.wrote;
                result
            });
            if wrote {
                return Err(E::from(StoreError::Io(
                    "a read-only request tried to write (a bug); nothing was written".into(),
                )));
            }
            result
        }
    }
}

/// A transaction seen through [`read_only`]: reads pass, writes are
/// dropped and remembered.
struct NoWrites<'a> {
    inner: &'a mut dyn KvTxn,
    wrote: bool,
}

impl KvTxn for NoWrites<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner.get_many(keys)
    }
    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<KeyValues, StoreError> {
        self.inner.range(begin, end, limit, reverse)
    }
    fn set(&mut self, _key: &[u8], _value: &[u8]) {
        self.wrote = true;
    }
    fn clear(&mut self, _key: &[u8]) {
        self.wrote = true;
    }
    fn clear_range(&mut self, _begin: &[u8], _end: &[u8]) {
        self.wrote = true;
    }
    fn atomic_add(&mut self, _key: &[u8], _delta: i64) -> Result<(), StoreError> {
        self.wrote = true;
        Ok(())
    }
}

/// One page of the keys with tag byte `tag`: up to `limit` rows from `from`
/// (a key; empty: the first), and the key the next page starts at (`None`:
/// no rows left). For sweeps that go through a whole key family in
/// bounded transactions.
pub fn tag_page(
    txn: &mut dyn KvTxn,
    tag: u8,
    from: &[u8],
    limit: usize,
) -> Result<(KeyValues, Option<Vec<u8>>), StoreError> {
    let (begin, end) = crate::keys::tag_range(tag);
    let start = if from.is_empty() {
        begin
    } else {
        from.to_vec()
    };
    let mut rows = txn.range(&start, &end, limit + 1, false)?;
    let next = if rows.len() > limit {
        rows.pop().map(|(k, _)| k)
    } else {
        None
    };
    Ok((rows, next))
}

/// Reads the protobuf record stored under `key`, if any.
pub fn get_record<M: prost::Message + Default>(
    txn: &mut dyn KvTxn,
    key: &[u8],
) -> crate::error::Result<Option<M>> {
    match txn.get(key)? {
        Some(bytes) => Ok(Some(M::decode(bytes.as_slice())?)),
        None => Ok(None),
    }
}

/// The protobuf records stored under `keys`, read at once (see
/// [`KvTxn::get_many`]), in their order.
pub fn get_records<M: prost::Message + Default>(
    txn: &mut dyn KvTxn,
    keys: &[Vec<u8>],
) -> crate::error::Result<Vec<Option<M>>> {
    txn.get_many(keys)?
        .into_iter()
        .map(|value| match value {
            Some(bytes) => Ok(Some(M::decode(bytes.as_slice())?)),
            None => Ok(None),
        })
        .collect()
}

/// Stores `record` under `key`.
pub fn put_record<M: prost::Message>(txn: &mut dyn KvTxn, key: &[u8], record: &M) {
    txn.set(key, &record.encode_to_vec());
}

/// Decodes the little-endian i64 used by [`KvTxn::atomic_add`].
pub fn decode_counter(value: Option<&[u8]>) -> i64 {
    let mut bytes = [0u8; 8];
    if let Some(v) = value {
        let n = v.len().min(8);
        bytes[..n].copy_from_slice(&v[..n]);
    }
    i64::from_le_bytes(bytes)
}

/// Opens a store from a `--store` specification: `rocksdb:PATH`, `memory:`,
/// or (built with the `fdb` feature) `fdb:CLUSTER_FILE[#PREFIX]`.
pub fn open_store(spec: &str) -> Result<std::sync::Arc<dyn MetaStore>, StoreError> {
    match spec.split_once(':') {
        Some(("rocksdb", path)) if !path.is_empty() => Ok(std::sync::Arc::new(RocksStore::open(
            std::path::Path::new(path),
        )?)),
        Some(("memory", _)) => Ok(std::sync::Arc::new(MemStore::default())),
        #[cfg(feature = "fdb")]
        Some(("fdb", rest)) if !rest.is_empty() => {
            // fdb:CLUSTER_FILE, or fdb:CLUSTER_FILE#PREFIX for a volume
            // that shares its database.
            let (cluster_file, prefix) = rest.split_once('#').unwrap_or((rest, ""));
            Ok(std::sync::Arc::new(FdbStore::open(
                cluster_file,
                prefix.as_bytes(),
            )?))
        }
        #[cfg(not(feature = "fdb"))]
        Some(("fdb", _)) => Err(StoreError::Open(
            "this dfs-meta was built without FoundationDB support (cargo feature `fdb`)".into(),
        )),
        _ => Err(StoreError::Open(format!(
            "unknown store `{spec}`: expected rocksdb:PATH, fdb:CLUSTER_FILE[#PREFIX] or memory:"
        ))),
    }
}
