//! FoundationDB backend (`--store fdb:CLUSTER_FILE`), behind the `fdb`
//! cargo feature. Several `dfs-meta` processes can serve one volume over
//! it at once: they hold no state of their own.
//!
//! `MetaStore` is synchronous (the service runs every transaction on a
//! blocking thread), so each FoundationDB future is waited for in place
//! (with `pollster`, which, unlike `futures::executor`, may be nested: the
//! body's reads wait inside the wait for the retry loop).
//!
//! Retries go through the crate's retry loop (`Database::run`: FDB's
//! `on_error`, with its backoff and its own judgement of what is
//! retryable). A read error inside the body is kept and handed to that
//! loop when the body asks for a retry. A commit whose outcome is unknown
//! (`commit_unknown_result`) is not run again blindly: the next attempt
//! sees `maybe_committed` and ends with [`StoreError::CommitUnknown`].
//! The shared code keeps transactions small (purges and GC work in pieces
//! of 1,000 entries, chunk-map commits in groups of at most 64 MiB of
//! file data), and every backend refuses at commit what is past
//! FoundationDB's size limits.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use foundationdb::options::{MutationType, StreamingMode, TransactionOption};
use foundationdb::{Database, FdbBindingError, FdbError, RangeOption, RetryableTransaction};
use pollster::block_on;

use super::{BodyOutcome, KeyValues, KvTxn, MetaStore, StoreError, Transaction, MAX_ATTEMPTS};

/// FoundationDB's `not_committed`: a conflict, retryable.
const NOT_COMMITTED: i32 = 1020;

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

/// Longest a transaction may run, from its first read to its commit. Past
/// it FoundationDB fails the transaction (`transaction_timed_out`), so no
/// request, and no shutdown waiting for one, hangs on a database that is
/// gone; FoundationDB itself refuses transactions older than 5 s.
const TRANSACTION_TIMEOUT_MS: i32 = 6_000;

pub struct FdbStore {
    db: Database,
    /// Put before every key: the volume's own part of the key space, so
    /// several volumes (or test runs) can share one database.
    prefix: Vec<u8>,
}

impl FdbStore {
    /// Opens the database of `cluster_file`; the volume's keys live under
    /// `prefix` (empty: the whole key space).
    pub fn open(cluster_file: &str, prefix: &[u8]) -> Result<Self, StoreError> {
        ensure_network()?;
        let db = Database::from_path(cluster_file).map_err(|e| {
            StoreError::Open(format!("FoundationDB cluster file {cluster_file}: {e}"))
        })?;
        if prefix.first() == Some(&0xff) {
            return Err(StoreError::Open(
                "a key prefix may not start with 0xff (FoundationDB's system keys)".into(),
            ));
        }
        Ok(Self {
            db,
            prefix: prefix.to_vec(),
        })
    }

    /// Removes every key under the prefix (tests clean up with it).
    pub fn wipe(&self) -> Result<(), StoreError> {
        super::transact(self, |t| {
            t.clear_range(b"", &[0xff]);
            Ok::<_, StoreError>(())
        })
    }

    fn txn(&self, trx: Handle) -> FdbTxn<'_> {
        FdbTxn {
            trx,
            retry_error: None,
            prefix: &self.prefix,
        }
    }
}

/// The transaction a body works on: the plain one of [`MetaStore::begin`],
/// or the retry loop's.
enum Handle {
    Plain(foundationdb::Transaction),
    Retryable(RetryableTransaction),
}

impl std::ops::Deref for Handle {
    type Target = foundationdb::Transaction;
    fn deref(&self) -> &foundationdb::Transaction {
        match self {
            Handle::Plain(t) => t,
            Handle::Retryable(t) => t,
        }
    }
}

pub struct FdbTxn<'a> {
    trx: Handle,
    /// The last retryable read error, for the retry loop's `on_error`.
    retry_error: Option<FdbError>,
    prefix: &'a [u8],
}

impl FdbTxn<'_> {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix, key].concat()
    }

    /// Read errors: anything FoundationDB calls retryable is a conflict
    /// (nothing was committed) and is kept for the retry loop; the rest is
    /// an I/O error.
    fn read_error(&mut self, e: FdbError) -> StoreError {
        if e.is_retryable() {
            self.retry_error = Some(e);
            StoreError::Conflict
        } else {
            StoreError::Io(format!("FoundationDB: {e}"))
        }
    }
}

impl KvTxn for FdbTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(key);
        let value = block_on(self.trx.get(&key, false)).map_err(|e| self.read_error(e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        // All reads in flight at once: one round trip's wait, not one per
        // key (the client batches them to the storage servers).
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.key(k)).collect();
        let reads = keys.iter().map(|k| self.trx.get(k, false));
        let values =
            block_on(futures::future::try_join_all(reads)).map_err(|e| self.read_error(e))?;
        Ok(values.into_iter().map(|v| v.map(|v| v.to_vec())).collect())
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
        let mut option = RangeOption::from((self.key(begin), self.key(end)));
        option.reverse = reverse;
        option.mode = StreamingMode::WantAll;
        if limit != 0 {
            option.limit = Some(limit);
        }
        let mut iteration = 1;
        loop {
            let values = block_on(self.trx.get_range(&option, iteration, false))
                .map_err(|e| self.read_error(e))?;
            let skip = self.prefix.len();
            for kv in &values {
                out.push((kv.key()[skip..].to_vec(), kv.value().to_vec()));
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
        self.trx.set(&self.key(key), value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.trx.clear(&self.key(key));
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin < end {
            self.trx.clear_range(&self.key(begin), &self.key(end));
        }
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        self.trx
            .atomic_op(&self.key(key), &delta.to_le_bytes(), MutationType::Add);
        Ok(())
    }
}

/// A commit's error, as the rest of dfs sees it.
fn commit_error(e: FdbError) -> StoreError {
    match e.code() {
        // transaction_too_large, key_too_large, value_too_large
        2101..=2103 => StoreError::TooLarge(format!("FoundationDB commit: {e}")),
        _ if e.is_retryable_not_committed() => StoreError::Conflict,
        _ if e.is_maybe_committed() => StoreError::CommitUnknown(e.to_string()),
        _ => StoreError::Io(format!("FoundationDB commit: {e}")),
    }
}

impl Transaction for FdbTxn<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let trx = match self.trx {
            Handle::Plain(t) => t,
            Handle::Retryable(_) => {
                return Err(StoreError::Io(
                    "a retry-loop transaction is committed by the loop".into(),
                ))
            }
        };
        block_on(trx.commit())
            .map(|_| ())
            .map_err(|e| commit_error(FdbError::from(e)))
    }
}

/// Why the body ended a run early, carried through the crate's loop.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("transaction body aborted")]
    Aborted,
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn stop(reason: impl Into<Stop>) -> FdbBindingError {
    FdbBindingError::new_custom_error(Box::new(reason.into()))
}

impl MetaStore for FdbStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let trx = self
            .db
            .create_trx()
            .map_err(|e| StoreError::Io(format!("FoundationDB: {e}")))?;
        trx.set_option(TransactionOption::Timeout(TRANSACTION_TIMEOUT_MS))
            .map_err(|e| StoreError::Io(format!("FoundationDB: {e}")))?;
        Ok(Box::new(self.txn(Handle::Plain(trx))))
    }

    fn run(&self, body: &mut dyn FnMut(&mut dyn KvTxn) -> BodyOutcome) -> Result<bool, StoreError> {
        // The crate's closure is `Fn` and is called again on every retry.
        let body = RefCell::new(body);
        let aborted = Cell::new(false);
        let outcome = block_on(self.db.run(|trx, maybe_committed| {
            let attempt = (|| {
                if bool::from(maybe_committed) {
                    // The last commit may have been applied: running the
                    // body again could apply it twice.
                    return Err(stop(StoreError::CommitUnknown(
                        "FoundationDB could not tell whether the commit happened".into(),
                    )));
                }
                trx.set_option(TransactionOption::RetryLimit(MAX_ATTEMPTS as i32))
                    .map_err(FdbBindingError::from)?;
                trx.set_option(TransactionOption::Timeout(TRANSACTION_TIMEOUT_MS))
                    .map_err(FdbBindingError::from)?;
                let mut txn = self.txn(Handle::Retryable(trx));
                match (body.borrow_mut())(&mut txn) {
                    BodyOutcome::Commit => Ok(()),
                    // The read's own error, so `on_error` judges it; a
                    // conflict the body found by itself is `not_committed`.
                    BodyOutcome::Retry => Err(FdbBindingError::from(
                        txn.retry_error
                            .unwrap_or_else(|| FdbError::from_code(NOT_COMMITTED)),
                    )),
                    BodyOutcome::Abort => {
                        aborted.set(true);
                        Err(stop(Stop::Aborted))
                    }
                }
                // `txn` (a reference to the transaction) is dropped here:
                // the loop refuses to commit while one is kept.
            })();
            async move { attempt }
        }));
        match outcome {
            Ok(()) => Ok(true),
            Err(_) if aborted.get() => Ok(false),
            Err(FdbBindingError::CustomError(e)) => match e.downcast::<Stop>() {
                Ok(reason) => match *reason {
                    Stop::Store(e) => Err(e),
                    Stop::Aborted => Ok(false),
                },
                Err(e) => Err(StoreError::Io(format!("FoundationDB: {e}"))),
            },
            Err(e) => Err(match e.get_fdb_error() {
                // Out of retries on conflicts.
                Some(fdb) if fdb.is_retryable_not_committed() => StoreError::Conflict,
                Some(fdb) => commit_error(fdb),
                None => StoreError::Io(format!("FoundationDB: {e}")),
            }),
        }
    }

    fn name(&self) -> &'static str {
        "foundationdb"
    }
}
