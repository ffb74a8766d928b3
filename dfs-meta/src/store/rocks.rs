//! Embedded backend on RocksDB, for one machine.
//!
//! A store-wide lock makes every transaction serializable: only one runs at
//! a time, reads go to the live database (which nobody else can change
//! meanwhile) overlaid with the transaction's own writes, and the commit is
//! one synced `WriteBatch`, so an acknowledged change survives a crash.
//! A commit whose body deferred its sync ([`KvTxn::defer_sync`]) is written
//! to the log unsynced: the next synced commit, [`MetaStore::sync`] or the
//! background sync makes it durable, as the log is synced in order.

use std::path::Path;

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

use super::overlay::{Base, Overlay, OverlayTxn, Pending};
use super::{KeyValues, KvTxn, MetaStore, ReadView, StoreError, Transaction};

/// Memtable size of the metadata store (RocksDB's default is 64 MiB).
const METADATA_MEMTABLE_BYTES: usize = 2 * 1024 * 1024;
/// Old write-ahead logs kept to be written over (see [`RocksStore::open`]).
const RECYCLED_LOGS: usize = 4;

/// Values at least this large (staged chunks; inline chunks proper store
/// in at most 8 KiB) live in blob files.
const METADATA_MIN_BLOB_BYTES: u64 = 16 * 1024;

/// Block cache of the metadata store (RocksDB's default is 8 MiB).
const METADATA_BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;

pub struct RocksStore {
    db: DB,
    lock: Mutex<()>,
    /// A commit was written to the log without a sync since the last sync.
    unsynced: AtomicBool,
    /// Held by [`MetaStore::sync`] from clearing `unsynced` to the end of
    /// the log's sync: a second caller must not find the flag cleared and
    /// answer before the log is on disk.
    syncing: Mutex<()>,
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // Small memtables: every commit rewrites the inode and the chunk-map
        // entries it touches, and a memtable keeps every old version until
        // it is flushed. Scans (chunk maps, the chunk before a replaced
        // range) step over those versions, so a file rewritten thousands of
        // times (fsx, a database) made each commit slower than the last.
        // Flushing drops overwritten versions.
        opts.set_write_buffer_size(METADATA_MEMTABLE_BYTES);
        // Every commit that is not deferred ends in an fdatasync of the
        // log. Appending to a fresh log makes that sync also commit the
        // file system's journal (the file grew); a recycled log, written
        // over in place, needs only its data blocks flushed. Writing
        // 128 KiB files in a loop, dfs-meta's syncs took 0.231 ms (median)
        // instead of 0.295 on the development machine's ext4.
        // Small memtables rotate the log every few megabytes, so nearly
        // every commit lands in a recycled one. Recovery stays point in
        // time (RocksDB 10 tells a recycled log's old records from a
        // hole, facebook/rocksdb#12403).
        opts.set_recycle_log_file_num(RECYCLED_LOGS);
        // Chunks staged inline (up to 96 KiB each, moved out within a
        // minute) go to blob files: with them in the tables, a 2 MiB
        // memtable filled every ~16 small files and each flush was
        // compacted with its neighbours, so a small file's commit waited
        // up to 16 ms behind compactions now and then.
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(METADATA_MIN_BLOB_BYTES);
        opts.set_enable_blob_gc(true);
        // Most point reads of a commit ask for keys that are not there (a
        // new chunk's index entry and count, a file's trash mark): a bloom
        // filter answers them without reading each level's blocks.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(METADATA_BLOCK_CACHE_BYTES));
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        Ok(Self {
            db,
            lock: Mutex::new(()),
            unsynced: AtomicBool::new(false),
            syncing: Mutex::new(()),
        })
    }
}

fn io(e: rocksdb::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The live database, while this transaction holds the store's lock.
pub struct RocksBase<'a> {
    db: &'a DB,
    unsynced: &'a AtomicBool,
    _guard: MutexGuard<'a, ()>,
}

impl Base for RocksBase<'_> {
    fn base_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(io)
    }

    fn base_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<KeyValues, StoreError> {
        range_read(self.db, None, begin, end, limit, reverse, skip)
    }
}

/// Key-value pairs in `[begin, end)` of the live database or of a snapshot.
fn range_read(
    db: &DB,
    snapshot: Option<&rocksdb::Snapshot<'_>>,
    begin: &[u8],
    end: &[u8],
    limit: usize,
    reverse: bool,
    skip: &dyn Fn(&[u8]) -> bool,
) -> Result<KeyValues, StoreError> {
    let mut out = Vec::new();
    // Bounds let RocksDB stop at the range's edge instead of stepping
    // over every deleted or overwritten entry past it (chunk maps are
    // rewritten constantly, and their old versions pile up).
    let mut read = rocksdb::ReadOptions::default();
    read.set_iterate_lower_bound(begin.to_vec());
    read.set_iterate_upper_bound(end.to_vec());
    if let Some(snapshot) = snapshot {
        read.set_snapshot(snapshot);
    }
    let mut iter = db.raw_iterator_opt(read);
    if reverse {
        iter.seek_for_prev(end);
        // seek_for_prev lands on `end` itself when it exists: step off it.
        if iter.valid() && iter.key() == Some(end) {
            iter.prev();
        }
    } else {
        iter.seek(begin);
    }
    while iter.valid() {
        let (Some(k), Some(v)) = (iter.key(), iter.value()) else {
            break;
        };
        if k < begin || k >= end {
            break;
        }
        if !skip(k) {
            out.push((k.to_vec(), v.to_vec()));
            if limit != 0 && out.len() == limit {
                break;
            }
        }
        if reverse {
            iter.prev();
        } else {
            iter.next();
        }
    }
    iter.status().map_err(io)?;
    Ok(out)
}

/// A read-only view on a RocksDB snapshot: consistent like a transaction,
/// but without the store's lock, so reads do not queue behind a commit.
pub struct SnapshotView<'a> {
    db: &'a DB,
    snapshot: rocksdb::Snapshot<'a>,
    wrote: bool,
}

impl KvTxn for SnapshotView<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.snapshot.get(key).map_err(io)
    }

    fn range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<KeyValues, StoreError> {
        range_read(
            self.db,
            Some(&self.snapshot),
            begin,
            end,
            limit,
            reverse,
            &|_| false,
        )
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

impl ReadView for SnapshotView<'_> {
    fn wrote(&self) -> bool {
        self.wrote
    }
}

pub type RocksTxn<'a> = OverlayTxn<RocksBase<'a>>;

impl Transaction for RocksTxn<'_> {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.overlay.cleared.is_empty() && self.overlay.writes.is_empty() {
            return Ok(());
        }
        self.overlay.check_limits()?;
        let mut batch = WriteBatch::default();
        // Range clears first: writes recorded after a clear survive it.
        for (b, e) in &self.overlay.cleared {
            batch.delete_range(b, e);
        }
        for (k, p) in &self.overlay.writes {
            match p {
                Pending::Set(v) => batch.put(k, v),
                Pending::Clear => batch.delete(k),
            }
        }
        let mut opts = WriteOptions::default();
        let sync = !self.overlay.deferred;
        opts.set_sync(sync);
        self.base.db.write_opt(batch, &opts).map_err(io)?;
        // Under the store's lock, so in log order: a synced write covers
        // every unsynced one before it; a deferred one is marked after it
        // is in the log, so a sync that clears the mark covers it.
        self.base.unsynced.store(!sync, Ordering::Release);
        Ok(())
    }
}

impl MetaStore for RocksStore {
    fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let guard = self.lock.lock();
        Ok(Box::new(OverlayTxn {
            base: RocksBase {
                db: &self.db,
                unsynced: &self.unsynced,
                _guard: guard,
            },
            overlay: Overlay::default(),
        }))
    }
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    fn snapshot(&self) -> Result<Option<Box<dyn ReadView + '_>>, StoreError> {
        Ok(Some(Box::new(SnapshotView {
            db: &self.db,
            snapshot: self.db.snapshot(),
            wrote: false,
        })))
    }

    fn snapshot_is_local(&self) -> bool {
        true
    }

    fn has_deferred(&self) -> bool {
        self.unsynced.load(Ordering::Acquire)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let _syncing = self.syncing.lock();
        if self.unsynced.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.db.flush_wal(true) {
                self.unsynced.store(true, Ordering::Release);
                return Err(io(e));
            }
        }
        Ok(())
    }
}
