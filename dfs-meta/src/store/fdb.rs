//! FoundationDB backend (`--store fdb:CLUSTER_FILE`), behind the `fdb`
//! cargo feature. Several `dfs-meta` processes can serve one volume over
//! it at once: they hold no state of their own.
//!
//! `MetaStore` is synchronous (the service runs every transaction on a
//! blocking thread), so each FoundationDB future is waited for in place.
//! Errors: a read or commit that FoundationDB says can be retried without
//! having committed becomes [`StoreError::Conflict`], which `transact`
//! retries; a commit whose outcome is unknown (`commit_unknown_result`)
//! becomes [`StoreError::CommitUnknown`] and is not retried blindly here.
//!
//! Not done yet (issue 5): keeping every transaction under FoundationDB's
//! 5 s and 10 MB limits for huge chunk maps and directory removals.

use std::sync::OnceLock;

use foundationdb::options::{MutationType, StreamingMode};
use foundationdb::{Database, FdbError, RangeOption};
use futures::executor::block_on;

use super::{KeyValues, KvTxn, MetaStore, StoreError, Transaction};

/// The client network thread, started once per process and kept for its
/// whole life (committed transactions need nothing from it at exit).
fn ensure_network() -> Result<(), StoreError> {
    static NETWORK: OnceLock<Result<(), String>> = OnceLock::new();
    NETWORK
        .get_or_init(|| {
            let api = foundationdb::api::FdbApiBuilder::default()
                .build()
                .map_err(|e| format!("cannot load the FoundationDB client library: {e}"))?;
            // SAFETY: `boot` must run at most once per process, which the
            // OnceLock guarantees, and the network must outlive every
            // database handle: it is never stopped.
            #[allow(unsafe_code)]
            let network = unsafe { api.boot() }
                .map_err(|e| format!("cannot start the FoundationDB network: {e}"))?;
            std::mem::forget(network);
            Ok(())
        })
        .clone()
        .map_err(StoreError::Open)
}

pub struct FdbStore {
    db: Database,
}

impl FdbStore {
    pub fn open(cluster_file: &str) -> Result<Self, StoreError> {
        ensure_network()?;
        let db = Database::from_path(cluster_file).map_err(|e| {
            StoreError::Open(format!("FoundationDB cluster file {cluster_file}: {e}"))
        })?;
        Ok(Self { db })
    }
}

/// Read errors: anything FoundationDB calls retryable is a conflict
/// (nothing was committed); the rest is an I/O error.
fn read_error(e: FdbError) -> StoreError {
    if e.is_retryable() {
        StoreError::Conflict
    } else {
        StoreError::Io(format!("FoundationDB: {e}"))
    }
}

pub struct FdbTxn {
    trx: foundationdb::Transaction,
}

impl KvTxn for FdbTxn {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = block_on(self.trx.get(key, false)).map_err(read_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<KeyValues, StoreError> {
        let mut out = Vec::new();
        if begin >= end {
            return Ok(out);
        }
        let mut option = RangeOption::from((begin.to_vec(), end.to_vec()));
        option.reverse = reverse;
        option.mode = StreamingMode::WantAll;
        if limit != 0 {
            option.limit = Some(limit);
        }
        let mut iteration = 1;
        loop {
            let values =
                block_on(self.trx.get_range(&option, iteration, false)).map_err(read_error)?;
            for kv in &values {
                out.push((kv.key().to_vec(), kv.value().to_vec()));
            }
            if limit != 0 && out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
            match option.next_range(&values) {
                Some(next) => {
                    option = next;
                    if limit != 0 {
                        option.limit = Some(limit - out.len());
                    }
                    iteration += 1;
                }
                None => return Ok(out),
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.trx.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.trx.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin < end {
            self.trx.clear_range(begin, end);
        }
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        self.trx
            .atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
        Ok(())
    }
}

impl Transaction for FdbTxn {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        match block_on(self.trx.commit()) {
            Ok(_) => Ok(()),
            // transaction_too_large, key_too_large, value_too_large
            Err(e) if matches!(e.code(), 2101..=2103) => {
                Err(StoreError::TooLarge(format!("FoundationDB commit: {e}")))
            }
            Err(e) if e.is_retryable_not_committed() => Err(StoreError::Conflict),
            Err(e) if e.is_retryable() => Err(StoreError::CommitUnknown(e.to_string())),
            Err(e) => Err(StoreError::Io(format!("FoundationDB commit: {e}"))),
        }
    }
}

impl MetaStore for FdbStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let trx = self
            .db
            .create_trx()
            .map_err(|e| StoreError::Io(format!("FoundationDB: {e}")))?;
        Ok(Box::new(FdbTxn { trx }))
    }

    fn name(&self) -> &'static str {
        "foundationdb"
    }
}
