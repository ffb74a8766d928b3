//! The shard store: one RocksDB database under `<data>/shards`.
//!
//! # On-disk format, version 2
//!
//! ```text
//! key   = fingerprint (32 bytes, the chunk's SHA-256) ‖ shard index (1 byte)
//! value = format version (1 byte, = 2) ‖ crc32c(written ‖ payload) (4 bytes, LE)
//!         ‖ written (8 bytes, LE i64: ns since the epoch, this server's clock) ‖ payload
//! ```
//!
//! Payloads of 4 KiB or more (`volumes::MIN_VOLUME_PAYLOAD`) in a put of
//! 64 KiB or more live in volume files (`volumes.rs`), written once; their
//! value is a pointer, version 3:
//!
//! ```text
//! value = 3 (1 byte) ‖ crc32c(written ‖ payload) (4) ‖ written (8, LE i64)
//!         ‖ volume (4, LE u32) ‖ offset (8, LE u64) ‖ payload length (4, LE u32)
//! ```
//!
//! Version 1 (still read, never written) had no `written` field and its
//! crc32c covered the payload only. The write time lets garbage collection
//! delete only the shards written before a chunk was declared dead, never
//! those a client uploaded again afterwards.
//!
//! Keys are 33 bytes; the shards of one chunk are adjacent in key order.
//! The checksum covers the payload only; the version byte is checked
//! separately, and a value with an unknown version is treated as corrupt.
//! Inline values of 4 KiB or more (a small put's, or written before volume
//! files) live in RocksDB blob files, so compactions move small index
//! entries rather than whole shards. Shards are already
//! compressed by the client, so RocksDB compression is off.
//!
//! # Uploaders
//!
//! A second column family, `owners`, maps a shard key to the owner id of
//! the client certificate whose put stored it (absent for shards the
//! cluster stored). A client may not replace a readable shard with other
//! bytes ([`Uploader::Client`]); dfs-meta deletes one client's uploads of
//! a chunk by this record when their entry proves bad (issue 19).
//!
//! # Durability
//!
//! Every write ([`ShardStore::put_batch`], [`ShardStore::delete`]) is one
//! RocksDB write batch with `sync = true`: once it returns, the write is in
//! the fsynced write-ahead log and survives a crash or power loss. A put
//! appends and syncs its volume payloads first, then writes the pointers:
//! a pointer never names bytes that are not on disk.
//!
//! # Integrity
//!
//! The payload is only reachable through [`ShardStore::get`], which checks the
//! version and checksum. The `raw_*` methods bypass both and exist for
//! fault-injection tests only.
//!
//! # Listing and checking
//!
//! [`ShardStore::list_after`] pages through every key in key order for the
//! orphan sweep, fsck and the scrubber; [`ShardStore::check`] answers for
//! single keys. Both read values: the Rust binding cannot ask RocksDB for a
//! key alone when its value lives in a blob file.
//!
//! # Usage counters
//!
//! `shard_count` and `shard_bytes` (payload bytes, headers excluded) are kept
//! exactly in memory: counted by a full scan at open, then updated by every
//! write under one writer lock.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use dfs_core::fingerprint::Fingerprint;
use dfs_core::shard_key::{shard_key, split_key, KEY_LEN};
use rocksdb::{
    BlockBasedOptions, DBCompressionType, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::error::StoreError;
use crate::volumes::{
    Volumes, DEFAULT_VOLUME_BYTES, MIN_VOLUME_PAYLOAD, VOLUMES_DIR, VOLUME_HEADER_LEN,
};

/// A put of fewer payload bytes keeps them inline (see `put_batch`).
const MIN_VOLUME_BATCH: u64 = 64 * 1024;
/// Who is putting shards, which decides what the put may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploader<'a> {
    /// dfs-meta's repairs and conversions, a server's scrubber (or any
    /// caller of a cluster without TLS): may replace anything, and what
    /// it stores is nobody's upload.
    Cluster,
    /// A client with this certificate owner id (`ChunkRecord.owner`; may
    /// be empty): may store new shards and the same bytes again, never
    /// replace a readable shard with other bytes (issue 19), except the
    /// leftovers of a dead chunk: shards of a fingerprint in `dead_before`
    /// written before its time (what its put token allows). New shards are
    /// recorded as its uploads, so dfs-meta can delete exactly them should
    /// they prove not to be their chunk.
    Client {
        owner: &'a [u8],
        dead_before: &'a HashMap<Fingerprint, i64>,
    },
}

/// What a client's put finds under a key it may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Previous {
    /// Nothing readable: the put stores a new shard.
    Free,
    /// The same bytes: stored again, keeping their uploader.
    Kept,
}

/// The column family that names the client that uploaded a shard:
/// key = shard key, value = the uploader's owner id. Shards stored by the
/// cluster, or by a client without a certificate, have no entry.
const OWNERS_CF: &str = "owners";

/// Payloads one compaction step moves under the write lock.
const COMPACTION_GROUP: usize = 256;
/// The value format of a pointer to a payload in a volume file.
const POINTER_VERSION: u8 = 3;
/// Bytes of a pointer value.
const POINTER_LEN: usize = 29;

/// Where a payload lives in a volume, and the checksum that vouches for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pointer {
    crc: u32,
    written_ns: i64,
    volume: u32,
    offset: u64,
    len: u32,
}

impl Pointer {
    fn encode(&self) -> [u8; POINTER_LEN] {
        let mut v = [0u8; POINTER_LEN];
        v[0] = POINTER_VERSION;
        v[1..5].copy_from_slice(&self.crc.to_le_bytes());
        v[5..13].copy_from_slice(&self.written_ns.to_le_bytes());
        v[13..17].copy_from_slice(&self.volume.to_le_bytes());
        v[17..25].copy_from_slice(&self.offset.to_le_bytes());
        v[25..29].copy_from_slice(&self.len.to_le_bytes());
        v
    }

    /// The pointer in `value`, if it is one (of the right length).
    fn decode(value: &[u8]) -> Option<Pointer> {
        if value.len() != POINTER_LEN || value[0] != POINTER_VERSION {
            return None;
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([value[i], value[i + 1], value[i + 2], value[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(Pointer {
            crc: u32_at(1),
            written_ns: u64_at(5) as i64,
            volume: u32_at(13),
            offset: u64_at(17),
            len: u32_at(25),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values replaced whole: a panic cannot leave them torn.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one write does to the usage counters.
#[derive(Default)]
struct UsageChange {
    added_count: u64,
    added_bytes: u64,
    removed_bytes: u64,
    /// Pointers the write replaces: their payloads become dead space.
    replaced: Vec<Pointer>,
}

impl UsageChange {
    /// Payload bytes the write adds on balance (what space checks ask for).
    fn growth(&self) -> u64 {
        self.added_bytes.saturating_sub(self.removed_bytes)
    }
}

/// The checksum of a payload written at `written_ns`, as values and
/// pointers store it.
fn payload_crc(payload: &[u8], written_ns: i64) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&written_ns.to_le_bytes()), payload)
}

/// The value format written.
pub const VALUE_VERSION: u8 = 2;
/// Bytes before the payload in a stored value: version + crc32c + written.
pub const VALUE_HEADER_LEN: usize = 13;
/// The first format: version + crc32c, no write time.
const V1_HEADER_LEN: usize = 5;
/// Values at least this large go to blob files.
const MIN_BLOB_SIZE: u64 = 4096;
/// Name of the RocksDB directory inside the data directory.
pub const SHARDS_DIR: &str = "shards";

/// How many shards the store holds and their payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub shard_count: u64,
    pub shard_bytes: u64,
}

/// Size of the file system holding the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Total size of the file system.
    pub total_bytes: u64,
    /// Bytes this process cannot write: `total - available`, so blocks
    /// reserved for root count as used.
    pub used_bytes: u64,
}

/// One stored shard, as [`ShardStore::list_after`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedShard {
    pub fingerprint: Fingerprint,
    pub index: u8,
    /// Payload bytes, header excluded (for a corrupt value: its length less
    /// the header its version byte implies, as the usage counters count it).
    pub len: u64,
    /// When the shard was written (ns since the epoch, this server's clock).
    /// 0 for version-1 values and for values that fail their check: a header
    /// the checksum does not vouch for cannot be trusted, and 0 makes a
    /// corrupt orphan look old rather than keeping it forever.
    pub written_ns: i64,
    /// Why the value fails its version or checksum check ([`decode_value`]);
    /// `None` when it is sound.
    pub corrupt: Option<String>,
}

impl ListedShard {
    /// The store key, as [`ShardStore::list_after`] takes it to resume.
    pub fn key(&self) -> [u8; KEY_LEN] {
        shard_key(&self.fingerprint, self.index)
    }
}

/// What [`ShardStore::check`] found under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardCheck {
    Missing,
    /// Present; its checksum was not checked.
    Present,
    /// Present and its version and checksum check out.
    Good,
    /// Present and fails its check, for this reason.
    Corrupt(String),
}

/// Shards keyed by (fingerprint, index), each with its own checksum.
pub struct ShardStore {
    db: DB,
    data_dir: PathBuf,
    /// Serialises writers so that the existence checks and counter updates
    /// of one write are not interleaved with another's.
    write_lock: Mutex<()>,
    volumes: Volumes,
    /// Bytes of each volume no pointer refers to (deleted or replaced
    /// shards, appends a crash cut short): what compaction can reclaim.
    dead: Mutex<HashMap<u32, u64>>,
    /// Volumes compaction emptied, removed at its next run (a reader that
    /// found an old pointer just before may still be reading them).
    drained: Mutex<Vec<u32>>,
    shard_count: AtomicU64,
    shard_bytes: AtomicU64,
    sync_write: WriteOptions,
    limits: SpaceLimits,
}

/// How much this server may store. A put that would pass either limit is
/// refused with [`StoreError::NoSpace`] before anything is written: RocksDB
/// on a file system that really fills up stops taking writes until it is
/// restarted, so the server stops short of that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceLimits {
    /// Most shard payload bytes to hold (`--capacity`); `None`: the file
    /// system's size.
    pub max_shard_bytes: Option<u64>,
    /// Bytes of the file system always left free (`--reserve`).
    pub reserve_bytes: u64,
}

/// Opens the store and applies `--capacity` and `--reserve` (default:
/// [`default_reserve`] of the file system it lives on).
pub fn open_with_limits(
    data_dir: &Path,
    capacity: Option<u64>,
    reserve: Option<u64>,
) -> Result<ShardStore, StoreError> {
    let mut store = ShardStore::open(data_dir)?;
    let reserve = match reserve {
        Some(r) => r,
        None => default_reserve(store.capacity_of_fs()?.total_bytes),
    };
    store.set_limits(SpaceLimits {
        max_shard_bytes: capacity,
        reserve_bytes: reserve,
    });
    Ok(store)
}

/// The reserve when none is given: 5% of the file system, at most 1 GiB.
pub fn default_reserve(fs_total_bytes: u64) -> u64 {
    (fs_total_bytes / 20).min(1 << 30)
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStore")
            .field("data_dir", &self.data_dir)
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

/// Encodes a payload as a stored value written now.
pub fn encode_value(payload: &[u8]) -> Vec<u8> {
    encode_value_at(payload, dfs_core::time::now_ns())
}

/// Encodes a payload as a stored value written at `written_ns`.
pub fn encode_value_at(payload: &[u8], written_ns: i64) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEADER_LEN + payload.len());
    let written = written_ns.to_le_bytes();
    let mut crc = crc32c::crc32c(&written);
    crc = crc32c::crc32c_append(crc, payload);
    value.push(VALUE_VERSION);
    value.extend_from_slice(&crc.to_le_bytes());
    value.extend_from_slice(&written);
    value.extend_from_slice(payload);
    value
}

/// Checks a stored value and returns its payload, or why it is corrupt.
pub fn decode_value(value: &[u8]) -> Result<&[u8], String> {
    decode_value_with_time(value).map(|(payload, _)| payload)
}

/// Like [`decode_value`], with the write time (0 for version-1 values).
pub fn decode_value_with_time(value: &[u8]) -> Result<(&[u8], i64), String> {
    let header = match value.first() {
        Some(1) => V1_HEADER_LEN,
        Some(2) => VALUE_HEADER_LEN,
        Some(v) => return Err(format!("unknown value format version {v}")),
        None => return Err("empty value".into()),
    };
    if value.len() < header {
        return Err(format!(
            "value of {} bytes is shorter than its header",
            value.len()
        ));
    }
    let stored = u32::from_le_bytes([value[1], value[2], value[3], value[4]]);
    let actual = crc32c::crc32c(&value[V1_HEADER_LEN..]);
    if stored != actual {
        return Err(format!(
            "crc32c mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    let written = match header {
        VALUE_HEADER_LEN => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[V1_HEADER_LEN..VALUE_HEADER_LEN]);
            i64::from_le_bytes(b)
        }
        _ => 0,
    };
    Ok((&value[header..], written))
}

/// Describes a stored value for a listing; never fails, so that a corrupt
/// value is listed like any other (the orphan sweep and fsck must see every key).
fn listed(store: &ShardStore, key: &[u8; KEY_LEN], value: &[u8]) -> ListedShard {
    let (fingerprint, index) = split_key(key);
    let (len, written_ns, corrupt) = match store.load(value) {
        Ok((payload, written)) => (payload.len() as u64, written, None),
        Err(reason) => (payload_len(value), 0, Some(reason)),
    };
    ListedShard {
        fingerprint,
        index,
        len,
        written_ns,
        corrupt,
    }
}

/// Payload bytes a stored value accounts for in the usage counters.
fn payload_len(value: &[u8]) -> u64 {
    if let Some(pointer) = Pointer::decode(value) {
        return u64::from(pointer.len);
    }
    let header = if value.first() == Some(&1) {
        V1_HEADER_LEN
    } else {
        VALUE_HEADER_LEN
    };
    value.len().saturating_sub(header) as u64
}

impl ShardStore {
    /// Opens (creating if needed) the store under `<data_dir>/shards`, and
    /// counts what it holds.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(SHARDS_DIR);
        std::fs::create_dir_all(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: format!("cannot create directory: {e}"),
        })?;

        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(DBCompressionType::None);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(MIN_BLOB_SIZE);
        opts.set_blob_compression_type(DBCompressionType::None);
        // Without blob GC, space of deleted shards in blob files is never reclaimed.
        opts.set_enable_blob_gc(true);
        // Every put first checks whether its key exists (for exact usage
        // counters); bloom filters make that miss cheap for new shards.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.create_missing_column_families(true);
        let db =
            DB::open_cf(&opts, &path, ["default", OWNERS_CF]).map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: e.into_string(),
            })?;

        let mut sync_write = WriteOptions::default();
        sync_write.set_sync(true);
        let volumes_dir = data_dir.join(VOLUMES_DIR);
        let volumes =
            Volumes::open(&volumes_dir, DEFAULT_VOLUME_BYTES).map_err(|e| StoreError::Open {
                path: volumes_dir.clone(),
                reason: format!("cannot open volume files: {e}"),
            })?;

        let store = ShardStore {
            db,
            data_dir: data_dir.to_path_buf(),
            write_lock: Mutex::new(()),
            volumes,
            dead: Mutex::new(HashMap::new()),
            drained: Mutex::new(Vec::new()),
            shard_count: AtomicU64::new(0),
            shard_bytes: AtomicU64::new(0),
            sync_write,
            limits: SpaceLimits::default(),
        };
        let (usage, live) = store.scan_usage()?;
        let sizes = store
            .volumes
            .list()
            .map_err(|e| StoreError::io("listing volume files", e))?;
        *lock(&store.dead) = sizes
            .into_iter()
            .map(|(id, size)| {
                let used = live.get(&id).copied().unwrap_or(0);
                (id, size.saturating_sub(VOLUME_HEADER_LEN + used))
            })
            .collect();
        store
            .shard_count
            .store(usage.shard_count, Ordering::Relaxed);
        store
            .shard_bytes
            .store(usage.shard_bytes, Ordering::Relaxed);
        tracing::info!(
            path = %path.display(),
            shards = usage.shard_count,
            bytes = usage.shard_bytes,
            "shard store opened"
        );
        Ok(store)
    }

    /// Sets the space limits (see [`SpaceLimits`]).
    pub fn set_limits(&mut self, limits: SpaceLimits) {
        self.limits = limits;
    }

    /// Refuses a write that would add `adding` payload bytes past a limit.
    fn check_space(&self, adding: u64) -> Result<(), StoreError> {
        if adding == 0 {
            return Ok(());
        }
        if let Some(max) = self.limits.max_shard_bytes {
            let held = self.shard_bytes.load(Ordering::Relaxed);
            if held.saturating_add(adding) > max {
                return Err(StoreError::NoSpace(format!(
                    "capacity of {max} bytes reached ({held} held, {adding} more asked)"
                )));
            }
        }
        let fs = self.capacity_of_fs()?;
        let free = fs.total_bytes.saturating_sub(fs.used_bytes);
        if free < adding.saturating_add(self.limits.reserve_bytes) {
            return Err(StoreError::NoSpace(format!(
                "{} has {free} bytes free and keeps {} in reserve",
                self.data_dir.display(),
                self.limits.reserve_bytes
            )));
        }
        Ok(())
    }

    /// The data directory this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Counts every stored value, and the payload bytes pointers keep in
    /// each volume (a full scan; used at open).
    fn scan_usage(&self) -> Result<(Usage, HashMap<u32, u64>), StoreError> {
        let mut read = ReadOptions::default();
        read.fill_cache(false);
        let mut it = self.db.raw_iterator_opt(read);
        it.seek_to_first();
        let mut usage = Usage::default();
        let mut live: HashMap<u32, u64> = HashMap::new();
        while it.valid() {
            if let Some(value) = it.value() {
                usage.shard_count += 1;
                usage.shard_bytes += payload_len(value);
                if let Some(p) = Pointer::decode(value) {
                    *live.entry(p.volume).or_default() += u64::from(p.len);
                }
            }
            it.next();
        }
        it.status().map_err(StoreError::from_db)?;
        Ok((usage, live))
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while holding it leaves nothing torn.
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes values (already encoded) in one synced batch and updates the counters.
    fn write_values(&self, values: BTreeMap<[u8; KEY_LEN], Vec<u8>>) -> Result<(), StoreError> {
        let _guard = self.lock_writes();
        let mut batch = WriteBatch::default();
        let mut change = UsageChange::default();
        for (key, value) in &values {
            self.count_put(&mut change, key, payload_len(value))?;
            batch.put(key, value);
        }
        self.check_space(change.growth())?;
        self.db
            .write_opt(batch, &self.sync_write)
            .map_err(StoreError::from_db)?;
        self.apply_change(&change);
        Ok(())
    }

    /// Counts a put of `len` payload bytes under `key` into `change`: a
    /// new shard, or one replacing what is stored (whose volume payload,
    /// if any, becomes dead space).
    fn count_put(&self, change: &mut UsageChange, key: &[u8], len: u64) -> Result<(), StoreError> {
        let old = self.db.get_pinned(key).map_err(StoreError::from_db)?;
        Self::count_put_over(change, old.as_deref(), len);
        Ok(())
    }

    /// Counts a put of `len` payload bytes over `old`, the key's value.
    fn count_put_over(change: &mut UsageChange, old: Option<&[u8]>, len: u64) {
        match old {
            Some(old) => {
                change.removed_bytes += payload_len(old);
                change.replaced.extend(Pointer::decode(old));
            }
            None => change.added_count += 1,
        }
        change.added_bytes += len;
    }

    /// Applies a committed write's change to the counters and dead space.
    fn apply_change(&self, change: &UsageChange) {
        self.note_dead(&change.replaced);
        self.shard_count
            .fetch_add(change.added_count, Ordering::Relaxed);
        self.shard_bytes
            .fetch_add(change.added_bytes, Ordering::Relaxed);
        self.shard_bytes
            .fetch_sub(change.removed_bytes, Ordering::Relaxed);
    }

    /// Stores shards in one synced write: all of them or none.
    ///
    /// A key that already exists is overwritten; when a batch names one key
    /// twice, the last one wins.
    pub fn put_batch(&self, shards: &[(Fingerprint, u8, &[u8])]) -> Result<(), StoreError> {
        self.put_batch_with(shards, Uploader::Cluster)
    }

    /// [`Self::put_batch`] by `uploader`. A client's put is refused whole,
    /// with [`StoreError::Exists`], when it would replace a readable shard
    /// with other bytes. Identical bytes are stored again, which moves the
    /// shard's write time forward as garbage collection expects of an
    /// upload, and leave the shard its first uploader's. A shard that fails
    /// its checks may be replaced by anyone, and becomes the new uploader's.
    pub fn put_batch_with(
        &self,
        shards: &[(Fingerprint, u8, &[u8])],
        uploader: Uploader<'_>,
    ) -> Result<(), StoreError> {
        let written_ns = dfs_core::time::now_ns();
        // The last payload for a key wins, as in one write batch.
        let payloads: BTreeMap<[u8; KEY_LEN], &[u8]> = shards
            .iter()
            .map(|(fp, index, payload)| (shard_key(fp, *index), *payload))
            .collect();
        let _guard = self.lock_writes();
        let owners = self.owners_cf()?;
        let mut batch = WriteBatch::default();
        let mut change = UsageChange::default();
        for (key, payload) in &payloads {
            // One lookup a key serves the usage counters and the check of
            // what a client may replace (two were a tenth of a server's
            // CPU in a unique stream's write, in RocksDB's memtable).
            let old = self.db.get_pinned(key).map_err(StoreError::from_db)?;
            Self::count_put_over(&mut change, old.as_deref(), payload.len() as u64);
            match uploader {
                Uploader::Cluster => batch.delete_cf(owners, key),
                Uploader::Client { owner, dead_before } => {
                    let (fp, _) = split_key(key);
                    let replaceable = dead_before.get(&fp).copied().unwrap_or(0);
                    if self.refuse_other_bytes(old.as_deref(), key, payload, replaceable)?
                        == Previous::Kept
                    {
                        continue;
                    }
                    if owner.is_empty() {
                        batch.delete_cf(owners, key);
                    } else {
                        batch.put_cf(owners, key, owner);
                    }
                }
            }
        }
        self.check_space(change.growth())?;
        let added_bytes = change.added_bytes;
        // Large payloads to the active volume, synced, before any pointer
        // to them is written; unless the batch is small (a small file's
        // shards): then one synced write of the batch costs less than a
        // volume sync and then a log sync.
        let in_volume = |p: &[u8]| p.len() >= MIN_VOLUME_PAYLOAD && added_bytes >= MIN_VOLUME_BATCH;
        let large: Vec<&[u8]> = payloads
            .values()
            .copied()
            .filter(|p| in_volume(p))
            .collect();
        let mut placed = self
            .volumes
            .append(&large)
            .map_err(|e| volume_write_error(&e))?
            .into_iter();
        for (key, payload) in &payloads {
            if in_volume(payload) {
                let (volume, offset) = placed.next().ok_or_else(|| {
                    StoreError::io("volume append", std::io::Error::other("payload not placed"))
                })?;
                let pointer = Pointer {
                    crc: payload_crc(payload, written_ns),
                    written_ns,
                    volume,
                    offset,
                    len: payload.len() as u32,
                };
                batch.put(key, pointer.encode());
            } else {
                batch.put(key, encode_value_at(payload, written_ns));
            }
        }
        self.db
            .write_opt(batch, &self.sync_write)
            .map_err(StoreError::from_db)?;
        self.apply_change(&change);
        Ok(())
    }

    /// Fails with [`StoreError::Exists`] when `key` holds a readable
    /// payload other than `payload` written at or after
    /// `replace_before_ns`; otherwise says whether the same bytes are kept
    /// there or the key is free (absent, a dead chunk's leftover, or a
    /// shard lost to damage). Called under the write lock, so no other put slips in
    /// between this check and the write.
    fn refuse_other_bytes(
        &self,
        old: Option<&[u8]>,
        key: &[u8; KEY_LEN],
        payload: &[u8],
        replace_before_ns: i64,
    ) -> Result<Previous, StoreError> {
        let Some(old) = old else {
            return Ok(Previous::Free);
        };
        match self.load(old) {
            Ok((stored, _)) if stored == payload => return Ok(Previous::Kept),
            // A dead chunk's leftover, which garbage collection would delete.
            Ok((_, written_ns)) if written_ns < replace_before_ns => return Ok(Previous::Free),
            Ok(_) => {}
            Err(_) => return Ok(Previous::Free),
        }
        let (fp, index) = split_key(key);
        Err(StoreError::Exists {
            fingerprint: fp.to_string(),
            index,
        })
    }

    fn owners_cf(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(OWNERS_CF).ok_or_else(|| {
            StoreError::io(
                "shard store",
                std::io::Error::other("the owners column family is missing"),
            )
        })
    }

    /// The owner id of the client that uploaded this shard, if a client did.
    pub fn uploader(&self, fp: &Fingerprint, index: u8) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.owners_cf()?, shard_key(fp, index))
            .map_err(StoreError::from_db)
    }

    /// Counts the payloads of replaced or deleted pointers as dead space
    /// of their volumes.
    fn note_dead(&self, gone: &[Pointer]) {
        if gone.is_empty() {
            return;
        }
        let mut dead = lock(&self.dead);
        for p in gone {
            *dead.entry(p.volume).or_default() += u64::from(p.len);
        }
    }

    /// A stored value's payload and write time after its checks: inline
    /// values decoded, pointers followed into their volume.
    fn load(&self, value: &[u8]) -> Result<(Vec<u8>, i64), String> {
        let Some(pointer) = Pointer::decode(value) else {
            return decode_value_with_time(value)
                .map(|(payload, written)| (payload.to_vec(), written));
        };
        let payload = self
            .volumes
            .read(pointer.volume, pointer.offset, pointer.len as usize)
            .map_err(|e| {
                format!(
                    "volume {} unreadable at offset {} ({} bytes): {e}",
                    pointer.volume, pointer.offset, pointer.len
                )
            })?;
        let actual = payload_crc(&payload, pointer.written_ns);
        if actual != pointer.crc {
            return Err(format!(
                "crc32c mismatch: stored {:08x}, computed {actual:08x}",
                pointer.crc
            ));
        }
        Ok((payload, pointer.written_ns))
    }

    /// Reads a shard's payload after checking its version and checksum.
    pub fn get(&self, fp: &Fingerprint, index: u8) -> Result<Vec<u8>, StoreError> {
        let value = self
            .db
            .get_pinned(shard_key(fp, index))
            .map_err(StoreError::from_db)?
            .ok_or_else(|| StoreError::NotFound {
                fingerprint: fp.to_string(),
                index,
            })?;
        match self.load(&value) {
            Ok((payload, _)) => Ok(payload),
            Err(reason) => {
                tracing::error!(fingerprint = %fp, shard = index, %reason, "corrupt shard");
                Err(StoreError::Corrupt {
                    fingerprint: fp.to_string(),
                    index,
                    reason,
                })
            }
        }
    }

    /// Deletes a shard (synced). Returns whether it existed.
    pub fn delete(&self, fp: &Fingerprint, index: u8) -> Result<bool, StoreError> {
        let key = shard_key(fp, index);
        let _guard = self.lock_writes();
        let Some(old) = self.db.get_pinned(key).map_err(StoreError::from_db)? else {
            return Ok(false);
        };
        let (len, pointer) = (payload_len(&old), Pointer::decode(&old));
        drop(old);
        let mut batch = WriteBatch::default();
        batch.delete(key);
        batch.delete_cf(self.owners_cf()?, key);
        self.db
            .write_opt(batch, &self.sync_write)
            .map_err(StoreError::from_db)?;
        self.note_dead(&Vec::from_iter(pointer));
        self.shard_count.fetch_sub(1, Ordering::Relaxed);
        self.shard_bytes.fetch_sub(len, Ordering::Relaxed);
        Ok(true)
    }

    /// Deletes the given shards that were written before `before_ns`
    /// (version-1 shards count as written at 0), in one synced batch.
    /// Shards written since, by a client that uploaded the chunk again, are
    /// kept. With `uploaded_by`, only that client's uploads go. Returns how
    /// many shards and payload bytes went.
    pub fn delete_written_before(
        &self,
        shards: &[(Fingerprint, u8)],
        before_ns: i64,
        uploaded_by: Option<&[u8]>,
    ) -> Result<(u64, u64), StoreError> {
        let _guard = self.lock_writes();
        let owners = self.owners_cf()?;
        let mut batch = WriteBatch::default();
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut gone = Vec::new();
        for (fp, index) in shards {
            let key = shard_key(fp, *index);
            if let Some(wanted) = uploaded_by {
                let owner = self.db.get_cf(owners, key).map_err(StoreError::from_db)?;
                if owner.as_deref() != Some(wanted) {
                    continue;
                }
            }
            let Some(value) = self.db.get_pinned(key).map_err(StoreError::from_db)? else {
                continue;
            };
            // A corrupt value is deleted too: it holds nothing worth keeping
            // once the chunk is dead. (A pointer's time is taken as it is:
            // checking it would mean reading the payload.)
            let pointer = Pointer::decode(&value);
            let written = match pointer {
                Some(p) => p.written_ns,
                None => decode_value_with_time(&value).map_or(0, |(_, w)| w),
            };
            if written < before_ns {
                count += 1;
                bytes += payload_len(&value);
                gone.extend(pointer);
                batch.delete(key);
                batch.delete_cf(owners, key);
            }
        }
        if count > 0 {
            self.db
                .write_opt(batch, &self.sync_write)
                .map_err(StoreError::from_db)?;
            self.note_dead(&gone);
            self.shard_count.fetch_sub(count, Ordering::Relaxed);
            self.shard_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        Ok((count, bytes))
    }

    /// Lists up to `limit` shards (at least one) in key order, starting
    /// strictly after `after` (`None`: from the first key), with their
    /// payload length, write time and whether they pass their check.
    ///
    /// The flag is true when `limit` shards were listed: call again from the
    /// last one's [`ListedShard::key`]; that page may be empty. Telling
    /// "exactly `limit` left" apart would mean reading one more value, maybe
    /// a blob of megabytes, on every page.
    ///
    /// Each page is its own iterator, so writes between pages show up or not
    /// depending on where they land; a key present throughout is listed
    /// exactly once.
    pub fn list_after(
        &self,
        after: Option<&[u8; KEY_LEN]>,
        limit: usize,
    ) -> Result<(Vec<ListedShard>, bool), StoreError> {
        let limit = limit.max(1);
        let mut read = ReadOptions::default();
        // Listings walk the whole store; keep them from evicting the blocks
        // that serve reads.
        read.fill_cache(false);
        let mut it = self.db.raw_iterator_opt(read);
        match after {
            Some(after) => {
                it.seek(after);
                if it.valid() && it.key() == Some(&after[..]) {
                    it.next();
                }
            }
            None => it.seek_to_first(),
        }
        let mut page = Vec::with_capacity(limit.min(1024));
        while it.valid() && page.len() < limit {
            if let (Some(key), Some(value)) = (it.key(), it.value()) {
                match <&[u8; KEY_LEN]>::try_from(key) {
                    Ok(key) => page.push(listed(self, key, value)),
                    // Only this file writes keys, all of KEY_LEN; another
                    // length cannot be named in a reply, so it is skipped loudly.
                    Err(_) => {
                        tracing::error!(key_len = key.len(), "skipping a malformed store key")
                    }
                }
            }
            it.next();
        }
        it.status().map_err(StoreError::from_db)?;
        let full = page.len() == limit;
        Ok((page, full))
    }

    /// Whether a shard is stored, and with `verify` whether it passes its
    /// version and checksum check.
    ///
    /// Without `verify` the value is read all the same (the binding has no
    /// key-only lookup for blob values), but pinned rather than copied and
    /// not checksummed.
    pub fn check(
        &self,
        fp: &Fingerprint,
        index: u8,
        verify: bool,
    ) -> Result<ShardCheck, StoreError> {
        let Some(value) = self
            .db
            .get_pinned(shard_key(fp, index))
            .map_err(StoreError::from_db)?
        else {
            return Ok(ShardCheck::Missing);
        };
        if !verify {
            return Ok(ShardCheck::Present);
        }
        Ok(match self.load(&value) {
            Ok(_) => ShardCheck::Good,
            Err(reason) => {
                tracing::warn!(fingerprint = %fp, shard = index, %reason, "corrupt shard found by check");
                ShardCheck::Corrupt(reason)
            }
        })
    }

    /// Shards held and their payload bytes, exact.
    pub fn usage(&self) -> Usage {
        // Writers update both counters under the write lock; a reader may see
        // one write half applied for an instant, which heartbeats tolerate.
        Usage {
            shard_count: self.shard_count.load(Ordering::Relaxed),
            shard_bytes: self.shard_bytes.load(Ordering::Relaxed),
        }
    }

    /// What this server can hold and holds, as reported to the metadata
    /// server: with `--capacity`, that quota and the shard bytes; otherwise
    /// the file system less the reserve, and its use.
    pub fn capacity(&self) -> Result<Capacity, StoreError> {
        let fs = self.capacity_of_fs()?;
        let fs_view = Capacity {
            total_bytes: fs.total_bytes.saturating_sub(self.limits.reserve_bytes),
            used_bytes: fs.used_bytes,
        };
        Ok(match self.limits.max_shard_bytes {
            Some(max) => {
                let quota = Capacity {
                    total_bytes: max,
                    used_bytes: self.shard_bytes.load(Ordering::Relaxed),
                };
                // Whichever runs out first.
                if fs_view.total_bytes.saturating_sub(fs_view.used_bytes)
                    < quota.total_bytes.saturating_sub(quota.used_bytes)
                {
                    Capacity {
                        total_bytes: max,
                        used_bytes: max
                            - fs_view
                                .total_bytes
                                .saturating_sub(fs_view.used_bytes)
                                .min(max),
                    }
                } else {
                    quota
                }
            }
            None => fs_view,
        })
    }

    /// Size and use of the file system holding the data directory.
    fn capacity_of_fs(&self) -> Result<Capacity, StoreError> {
        fs_capacity(&self.data_dir)
            .map_err(|e| StoreError::io(format!("statvfs {}", self.data_dir.display()), e))
    }

    /// Reclaims the space of closed volumes that hold mostly deleted
    /// shards (dead bytes at least `min_dead_fraction` of the volume): their
    /// live payloads are appended to the active volume as they are (same
    /// checksum and write time) and repointed, a group at a time under the
    /// write lock, and the emptied volume is removed at the next run (a
    /// reader that found an old pointer just before may still be reading
    /// it). Returns the bytes of the volume files removed by this run.
    pub fn compact_volumes(&self, min_dead_fraction: f64) -> Result<u64, StoreError> {
        let list_err = |e| StoreError::io("listing volume files", e);
        let sizes: HashMap<u32, u64> = self.volumes.list().map_err(list_err)?.into_iter().collect();
        let mut freed = 0;
        let drained = std::mem::take(&mut *lock(&self.drained));
        for id in &drained {
            self.volumes
                .remove(*id)
                .map_err(|e| StoreError::io(format!("removing volume {id}"), e))?;
            lock(&self.dead).remove(id);
            freed += sizes.get(id).copied().unwrap_or(0);
            tracing::info!(volume = id, "compacted volume removed");
        }
        let active = self.volumes.active_id();
        let candidates: Vec<u32> = {
            let dead = lock(&self.dead);
            sizes
                .iter()
                .filter(|(id, size)| {
                    let body = size.saturating_sub(VOLUME_HEADER_LEN);
                    let dead = dead.get(id).copied().unwrap_or(0);
                    **id != active
                        && !drained.contains(id)
                        && dead as f64 >= min_dead_fraction * body as f64
                })
                .map(|(id, _)| *id)
                .collect()
        };
        if candidates.is_empty() {
            return Ok(freed);
        }
        let mut moving: Vec<([u8; KEY_LEN], Pointer)> = Vec::new();
        let mut read = ReadOptions::default();
        read.fill_cache(false);
        let mut it = self.db.raw_iterator_opt(read);
        it.seek_to_first();
        while it.valid() {
            if let (Some(key), Some(value)) = (it.key(), it.value()) {
                if let (Ok(key), Some(p)) = (<[u8; KEY_LEN]>::try_from(key), Pointer::decode(value))
                {
                    if candidates.contains(&p.volume) {
                        moving.push((key, p));
                    }
                }
            }
            it.next();
        }
        it.status().map_err(StoreError::from_db)?;
        drop(it);
        let mut stuck = Vec::new();
        for group in moving.chunks(COMPACTION_GROUP) {
            let _guard = self.lock_writes();
            let mut still = Vec::with_capacity(group.len());
            let mut payloads = Vec::with_capacity(group.len());
            for (key, p) in group {
                let current = self.db.get_pinned(key).map_err(StoreError::from_db)?;
                if current.as_deref().and_then(Pointer::decode) != Some(*p) {
                    continue; // deleted or replaced meanwhile
                }
                match self.volumes.read(p.volume, p.offset, p.len as usize) {
                    Ok(payload) => {
                        still.push((key, *p));
                        payloads.push(payload);
                    }
                    Err(e) => {
                        tracing::error!(volume = p.volume, offset = p.offset, error = %e, "unreadable payload; its volume is kept");
                        stuck.push(p.volume);
                    }
                }
            }
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let placed = self
                .volumes
                .append(&refs)
                .map_err(|e| volume_write_error(&e))?;
            let mut batch = WriteBatch::default();
            for ((key, p), (volume, offset)) in still.iter().zip(placed) {
                batch.put(
                    key,
                    Pointer {
                        volume,
                        offset,
                        ..*p
                    }
                    .encode(),
                );
            }
            self.db
                .write_opt(batch, &self.sync_write)
                .map_err(StoreError::from_db)?;
        }
        let mut drained = lock(&self.drained);
        for id in candidates {
            if !stuck.contains(&id) {
                tracing::info!(volume = id, "volume compacted; removed at the next run");
                drained.push(id);
            }
        }
        Ok(freed)
    }

    /// For fault-injection tests: bypass checksumming. Stores `value` as the
    /// raw stored value (header included) of the shard.
    pub fn raw_put_value(
        &self,
        fp: &Fingerprint,
        index: u8,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let mut values = BTreeMap::new();
        values.insert(shard_key(fp, index), value.to_vec());
        self.write_values(values)
    }

    /// For fault-injection tests: bypass checksumming. Returns the raw stored
    /// value (header included) of the shard, if any.
    pub fn raw_get_value(
        &self,
        fp: &Fingerprint,
        index: u8,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(value) = self
            .db
            .get_pinned(shard_key(fp, index))
            .map_err(StoreError::from_db)?
        else {
            return Ok(None);
        };
        // A payload in a volume is shown as the inline value it stands for
        // (its checksum unchecked), so tests corrupt it the same way.
        let Some(p) = Pointer::decode(&value) else {
            return Ok(Some(value.to_vec()));
        };
        let payload = self
            .volumes
            .read(p.volume, p.offset, p.len as usize)
            .map_err(|e| StoreError::io(format!("reading volume {}", p.volume), e))?;
        let mut image = encode_value_at(&payload, p.written_ns);
        image[1..5].copy_from_slice(&p.crc.to_le_bytes());
        Ok(Some(image))
    }
}

/// A failed append to a volume file, as the store reports it.
fn volume_write_error(e: &std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        StoreError::NoSpace(format!("writing a volume file: {e}"))
    } else {
        StoreError::io(
            "writing a volume file",
            std::io::Error::new(e.kind(), e.to_string()),
        )
    }
}

/// `statvfs(2)` on `path`.
#[allow(unsafe_code, clippy::unnecessary_cast)]
fn fs_capacity(path: &Path) -> std::io::Result<Capacity> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `statvfs` is plain old data, so all-zero bytes are a valid
    // value; `c_path` is a NUL-terminated string that outlives the call, and
    // `st` is a valid, writable `statvfs` the call fills in.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        let rc = libc::statvfs(c_path.as_ptr(), &mut st);
        (rc, st)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    let avail = (st.f_bavail as u64).saturating_mul(frsize);
    Ok(Capacity {
        total_bytes: total,
        used_bytes: total.saturating_sub(avail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    fn open(dir: &Path) -> ShardStore {
        ShardStore::open(dir).expect("open store")
    }

    #[test]
    fn value_format_is_pinned() {
        let v = encode_value_at(b"abc", 0x0102_0304_0506_0708);
        assert_eq!(v[0], 2);
        assert_eq!(&v[5..13], &0x0102_0304_0506_0708i64.to_le_bytes());
        assert_eq!(&v[1..5], &crc32c::crc32c(&v[5..]).to_le_bytes());
        assert_eq!(&v[13..], b"abc");
        assert_eq!(
            decode_value_with_time(&v),
            Ok((&b"abc"[..], 0x0102_0304_0506_0708))
        );
        // Version 1, as earlier servers wrote it, still reads.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&crc32c::crc32c(b"abc").to_le_bytes());
        v1.extend_from_slice(b"abc");
        assert_eq!(decode_value_with_time(&v1), Ok((&b"abc"[..], 0)));
        assert_eq!(payload_len(&v1), 3);
        assert_eq!(payload_len(&v), 3);
        let key = shard_key(&fp(7), 9);
        assert_eq!(&key[..32], &[7u8; 32]);
        assert_eq!(key[32], 9);
        assert_eq!(split_key(&key), (fp(7), 9));
    }

    #[test]
    fn round_trip_small_and_blob_sized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        store
            .put_batch(&[(fp(1), 0, b"hello"), (fp(1), 1, &big), (fp(2), 255, b"")])
            .expect("put");
        assert_eq!(store.get(&fp(1), 0).expect("get"), b"hello");
        assert_eq!(store.get(&fp(1), 1).expect("get"), big);
        assert_eq!(store.get(&fp(2), 255).expect("get"), b"");
        assert!(matches!(
            store.get(&fp(1), 2),
            Err(StoreError::NotFound { index: 2, .. })
        ));
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get(&fp(1), 1).expect("get after reopen"), big);
    }

    #[test]
    fn crc_detects_a_flipped_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            store
                .put_batch(&[(fp(3), 4, &[0x55u8; 10_000])])
                .expect("put");
        }
        // As an integration test would: stop, reopen, flip a byte.
        let store = open(dir.path());
        let mut raw = store
            .raw_get_value(&fp(3), 4)
            .expect("raw get")
            .expect("present");
        raw[VALUE_HEADER_LEN + 1234] ^= 0x01;
        store.raw_put_value(&fp(3), 4, &raw).expect("raw put");
        let err = store
            .get(&fp(3), 4)
            .expect_err("corruption must be detected");
        assert!(matches!(err, StoreError::Corrupt { index: 4, .. }), "{err}");
        assert!(err.to_string().contains("corrupt"));

        // A bad version byte is corrupt too, and so is a truncated header.
        let mut raw = encode_value(b"xyz");
        raw[0] = 9;
        store.raw_put_value(&fp(3), 5, &raw).expect("raw put");
        assert!(matches!(
            store.get(&fp(3), 5),
            Err(StoreError::Corrupt { .. })
        ));
        store.raw_put_value(&fp(3), 6, &[1, 2]).expect("raw put");
        assert!(matches!(
            store.get(&fp(3), 6),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn large_payloads_live_in_volumes_and_compaction_reclaims_deleted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let big = |n: u8| vec![n; MIN_VOLUME_BATCH as usize + usize::from(n)];
        let small = vec![7u8; 100];
        let (b1, b2, b3) = (big(1), big(2), big(3));
        store
            .put_batch(&[(fp(1), 0, &b1), (fp(2), 0, &b2), (fp(3), 0, &small)])
            .expect("put");
        store.put_batch(&[(fp(4), 0, &b3)]).expect("put");
        let value = store
            .db
            .get(shard_key(&fp(1), 0))
            .expect("db")
            .expect("present");
        assert_eq!(value.len(), POINTER_LEN, "a large payload is a pointer");
        let value = store
            .db
            .get(shard_key(&fp(3), 0))
            .expect("db")
            .expect("present");
        assert_eq!(value[0], VALUE_VERSION, "a small payload stays inline");
        // So do the shards of a small put (a small file's), whatever their size.
        let mid = vec![9u8; MIN_VOLUME_PAYLOAD * 2];
        store.put_batch(&[(fp(5), 0, &mid)]).expect("put");
        let value = store
            .db
            .get(shard_key(&fp(5), 0))
            .expect("db")
            .expect("present");
        assert_eq!(value[0], VALUE_VERSION, "a small put stays inline");
        assert!(store.delete(&fp(5), 0).expect("delete"));
        assert_eq!(store.get(&fp(2), 0).expect("get"), b2);
        assert_eq!(store.get(&fp(3), 0).expect("get"), small);
        assert_eq!(
            store.check(&fp(1), 0, true).expect("check"),
            ShardCheck::Good
        );
        let (listed, _) = store.list_after(None, 10).expect("list");
        assert!(listed
            .iter()
            .all(|l| l.corrupt.is_none() && l.written_ns > 0));
        assert_eq!(listed[0].len, b1.len() as u64);

        // Deleting and overwriting leave dead bytes in volume 1; once it is
        // closed, compaction moves what is live and removes the file.
        assert!(store.delete(&fp(1), 0).expect("delete"));
        store.put_batch(&[(fp(2), 0, &b3)]).expect("overwrite");
        assert_eq!(
            lock(&store.dead).get(&1).copied(),
            Some((b1.len() + b2.len()) as u64)
        );
        drop(store);
        // Reopened with volume 1 closed: its dead bytes are counted again.
        std::fs::File::create(dir.path().join(VOLUMES_DIR).join("00000002.vol"))
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"DFSVOL01", 0))
            .expect("start volume 2");
        let store = open(dir.path());
        assert_eq!(store.volumes.active_id(), 2);
        assert_eq!(
            lock(&store.dead).get(&1).copied(),
            Some((b1.len() + b2.len()) as u64)
        );
        let before = store.usage();
        assert_eq!(store.compact_volumes(0.4).expect("compact"), 0);
        assert_eq!(store.get(&fp(4), 0).expect("moved"), b3);
        assert_eq!(store.get(&fp(2), 0).expect("moved"), b3);
        let pointer = Pointer::decode(
            &store
                .db
                .get(shard_key(&fp(4), 0))
                .expect("db")
                .expect("present"),
        )
        .expect("pointer");
        assert_eq!(pointer.volume, 2);
        let freed = store.compact_volumes(0.4).expect("compact again");
        assert!(
            freed > (b1.len() + b2.len()) as u64,
            "volume 1 removed: {freed}"
        );
        assert!(!dir.path().join(VOLUMES_DIR).join("00000001.vol").exists());
        assert_eq!(store.usage(), before);
        assert_eq!(store.scan_usage().expect("scan").0, before);
        assert_eq!(store.get(&fp(2), 0).expect("get"), b3);
    }

    #[test]
    fn a_damaged_volume_payload_is_corrupt_and_unreferenced_bytes_are_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let payload = vec![5u8; 2 * MIN_VOLUME_BATCH as usize];
        store.put_batch(&[(fp(1), 2, &payload)]).expect("put");
        let p = Pointer::decode(
            &store
                .db
                .get(shard_key(&fp(1), 2))
                .expect("db")
                .expect("present"),
        )
        .expect("pointer");
        store
            .volumes
            .raw_overwrite(p.volume, p.offset + 100, &[0xff])
            .expect("damage");
        assert!(matches!(
            store.get(&fp(1), 2),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.check(&fp(1), 2, true).expect("check"),
            ShardCheck::Corrupt(_)
        ));
        let (listed, _) = store.list_after(None, 10).expect("list");
        assert!(listed[0].corrupt.is_some());
        // Bytes appended but never pointed to (a crash between the append
        // and the pointers) are dead space after a restart.
        store
            .volumes
            .append(&[&[1u8; 1000][..]])
            .expect("orphan append");
        drop(store);
        let store = open(dir.path());
        assert_eq!(lock(&store.dead).get(&1).copied(), Some(1000));
        assert_eq!(store.usage().shard_bytes, payload.len() as u64);
    }

    #[test]
    fn usage_is_exact_across_put_overwrite_delete_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        assert_eq!(store.usage(), Usage::default());

        store
            .put_batch(&[(fp(1), 0, &[0u8; 100]), (fp(1), 1, &[0u8; 5000])])
            .expect("put");
        assert_eq!(
            store.usage(),
            Usage {
                shard_count: 2,
                shard_bytes: 5100
            }
        );

        // Overwrite replaces the bytes; a key twice in one batch counts once.
        store
            .put_batch(&[
                (fp(1), 0, &[1u8; 10]),
                (fp(2), 0, &[0u8; 7]),
                (fp(2), 0, &[0u8; 8]),
            ])
            .expect("put");
        assert_eq!(
            store.usage(),
            Usage {
                shard_count: 3,
                shard_bytes: 5018
            }
        );
        assert_eq!(store.get(&fp(2), 0).expect("get"), vec![0u8; 8]);

        assert!(store.delete(&fp(1), 1).expect("delete"));
        assert!(!store.delete(&fp(1), 1).expect("delete again"));
        assert_eq!(
            store.usage(),
            Usage {
                shard_count: 2,
                shard_bytes: 18
            }
        );
        assert!(matches!(
            store.get(&fp(1), 1),
            Err(StoreError::NotFound { .. })
        ));

        drop(store);
        let store = open(dir.path());
        assert_eq!(
            store.usage(),
            Usage {
                shard_count: 2,
                shard_bytes: 18
            }
        );
    }

    #[test]
    fn gc_deletes_only_shards_written_before_the_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .put_batch(&[(fp(1), 0, &[1u8; 100][..])])
            .expect("put");
        let cut = dfs_core::time::now_ns() + 1;
        // Uploaded again after the chunk was declared dead: kept.
        std::thread::sleep(std::time::Duration::from_millis(2));
        store.put_batch(&[(fp(2), 0, &[2u8; 50][..])]).expect("put");
        let (count, bytes) = store
            .delete_written_before(&[(fp(1), 0), (fp(2), 0), (fp(3), 0)], cut, None)
            .expect("delete");
        assert_eq!((count, bytes), (1, 100));
        assert!(matches!(
            store.get(&fp(1), 0),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.get(&fp(2), 0).expect("kept"), vec![2u8; 50]);
        assert_eq!(
            store.usage(),
            Usage {
                shard_count: 1,
                shard_bytes: 50
            }
        );
    }

    #[test]
    fn a_clients_put_never_replaces_a_readable_shard_with_other_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let none = HashMap::new();
        let big = vec![7u8; 100_000];
        store
            .put_batch(&[(fp(1), 0, b"committed"), (fp(1), 1, &big)])
            .expect("put");
        let written = |index| {
            let value = store
                .raw_get_value(&fp(1), index)
                .expect("raw")
                .expect("stored");
            decode_value_with_time(&value).map(|(_, t)| t).ok()
        };
        let before = written(0);
        // The same bytes again: stored (the write time moves on).
        std::thread::sleep(std::time::Duration::from_millis(2));
        store
            .put_batch_with(
                &[(fp(1), 0, b"committed")],
                Uploader::Client {
                    owner: b"mallory",
                    dead_before: &none,
                },
            )
            .expect("identical bytes are welcome");
        assert!(written(0) > before, "the write time moved forward");
        assert_eq!(
            store.uploader(&fp(1), 0).expect("uploader"),
            None,
            "the same bytes again do not make the shard the client's"
        );
        // Other bytes, inline or in a volume file: refused whole, nothing changed.
        for (index, other) in [(0u8, &b"garbage!!"[..]), (1, &[8u8; 100_000][..])] {
            let err = store
                .put_batch_with(
                    &[(fp(2), 0, b"new"), (fp(1), index, other)],
                    Uploader::Client {
                        owner: b"mallory",
                        dead_before: &none,
                    },
                )
                .expect_err("other bytes are refused");
            assert!(matches!(err, StoreError::Exists { index: i, .. } if i == index));
            assert_eq!(err.errno(), libc::EEXIST);
        }
        assert_eq!(store.get(&fp(1), 0).expect("get"), b"committed");
        assert_eq!(store.get(&fp(1), 1).expect("get"), big);
        assert!(matches!(
            store.get(&fp(2), 0),
            Err(StoreError::NotFound { .. })
        ));
        // A corrupt shard is lost anyway: a client's upload heals it.
        let mut value = store
            .raw_get_value(&fp(1), 0)
            .expect("raw")
            .expect("stored");
        let last = value.len() - 1;
        value[last] ^= 0xff;
        store.raw_put_value(&fp(1), 0, &value).expect("corrupt it");
        store
            .put_batch_with(
                &[(fp(1), 0, b"healed")],
                Uploader::Client {
                    owner: b"alice",
                    dead_before: &none,
                },
            )
            .expect("a corrupt shard may be replaced");
        assert_eq!(store.get(&fp(1), 0).expect("get"), b"healed");
        assert_eq!(
            store.uploader(&fp(1), 0).expect("uploader"),
            Some(b"alice".to_vec())
        );
        // dfs-meta and servers may replace anything; what they store is
        // nobody's upload.
        store.put_batch(&[(fp(1), 0, b"rebuilt")]).expect("put");
        assert_eq!(store.get(&fp(1), 0).expect("get"), b"rebuilt");
        assert_eq!(store.uploader(&fp(1), 0).expect("uploader"), None);
        // Deleting one client's uploads leaves everyone else's.
        store
            .put_batch_with(
                &[(fp(3), 0, b"m0"), (fp(3), 1, b"m1")],
                Uploader::Client {
                    owner: b"mallory",
                    dead_before: &none,
                },
            )
            .expect("put");
        store
            .put_batch_with(
                &[(fp(3), 2, b"a2")],
                Uploader::Client {
                    owner: b"alice",
                    dead_before: &none,
                },
            )
            .expect("put");
        let all = [(fp(3), 0), (fp(3), 1), (fp(3), 2), (fp(1), 0)];
        let (count, bytes) = store
            .delete_written_before(&all, i64::MAX, Some(b"mallory"))
            .expect("delete");
        assert_eq!((count, bytes), (2, 4));
        assert_eq!(store.uploader(&fp(3), 0).expect("uploader"), None);
        assert_eq!(store.get(&fp(3), 2).expect("get"), b"a2");
        assert_eq!(store.get(&fp(1), 0).expect("get"), b"rebuilt");
        // A dead chunk's leftovers, written before the time its token
        // names, may be replaced; what was written since may not.
        let dead_since = dfs_core::time::now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        store.put_batch(&[(fp(4), 1, b"revived")]).expect("put");
        let dead: HashMap<Fingerprint, i64> = [(fp(1), dead_since), (fp(4), dead_since)].into();
        let over = Uploader::Client {
            owner: b"bob",
            dead_before: &dead,
        };
        store
            .put_batch_with(&[(fp(1), 0, b"recoded")], over)
            .expect("a dead chunk's leftover is replaced");
        assert_eq!(store.get(&fp(1), 0).expect("get"), b"recoded");
        assert!(matches!(
            store.put_batch_with(&[(fp(4), 1, b"garbage")], over),
            Err(StoreError::Exists { .. })
        ));
    }

    #[test]
    fn a_put_past_the_capacity_is_refused_whole_and_overwrites_count_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        store.set_limits(SpaceLimits {
            max_shard_bytes: Some(10_000),
            reserve_bytes: 0,
        });
        store
            .put_batch(&[(fp(1), 0, &[1u8; 6000][..])])
            .expect("fits");
        // Rewriting the same shard adds nothing.
        store
            .put_batch(&[(fp(1), 0, &[2u8; 6000][..])])
            .expect("an overwrite fits");
        let err = store
            .put_batch(&[(fp(2), 0, &[3u8; 3000][..]), (fp(3), 0, &[4u8; 3000][..])])
            .expect_err("6000 more bytes do not fit");
        assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
        assert_eq!(
            store.usage().shard_count,
            1,
            "nothing of the refused batch was written"
        );
        assert!(matches!(
            store.get(&fp(2), 0),
            Err(StoreError::NotFound { .. })
        ));
        let cap = store.capacity().expect("capacity");
        assert_eq!((cap.total_bytes, cap.used_bytes), (10_000, 6000));
        // A reserve larger than the disk refuses everything.
        store.set_limits(SpaceLimits {
            max_shard_bytes: None,
            reserve_bytes: u64::MAX / 2,
        });
        assert!(matches!(
            store.put_batch(&[(fp(4), 0, &[5u8; 10][..])]),
            Err(StoreError::NoSpace(_))
        ));
    }

    #[test]
    fn listing_pages_through_every_shard_once_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let big = vec![7u8; 10_000]; // a blob-file value
        let mut expected = Vec::new();
        for n in 0..40u8 {
            for index in [0u8, 3, 255] {
                let len = usize::from(n) * 3 + usize::from(index % 7);
                let payload = if n == 17 && index == 3 {
                    &big[..]
                } else {
                    &big[..len]
                };
                let written = 1_000 + i64::from(n) * 10 + i64::from(index);
                store
                    .raw_put_value(&fp(n), index, &encode_value_at(payload, written))
                    .expect("put");
                expected.push((shard_key(&fp(n), index), payload.len() as u64, written));
            }
        }
        // A version-1 value lists with written_ns 0.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&crc32c::crc32c(b"old").to_le_bytes());
        v1.extend_from_slice(b"old");
        store.raw_put_value(&fp(200), 1, &v1).expect("put v1");
        expected.push((shard_key(&fp(200), 1), 3, 0));
        expected.sort();

        for limit in [1usize, 7, 120, 121, 1000] {
            let mut seen = Vec::new();
            let mut after: Option<[u8; KEY_LEN]> = None;
            let mut pages = 0;
            loop {
                let (page, more) = store.list_after(after.as_ref(), limit).expect("list");
                assert!(page.len() <= limit);
                pages += 1;
                for s in &page {
                    assert_eq!(s.corrupt, None);
                    seen.push((s.key(), s.len, s.written_ns));
                }
                if !more {
                    break;
                }
                after = Some(page.last().expect("a full page is not empty").key());
            }
            assert_eq!(seen, expected, "limit {limit}");
            assert_eq!(pages, expected.len() / limit + 1, "limit {limit}");
        }

        // Resuming from a key that is no longer stored starts after it.
        let gone = shard_key(&fp(5), 3);
        assert!(store.delete(&fp(5), 3).expect("delete"));
        let (page, _) = store.list_after(Some(&gone), 1).expect("list");
        assert_eq!(page[0].key(), shard_key(&fp(5), 255));
        // Past the last key: an empty, complete page.
        let (page, more) = store.list_after(Some(&[0xff; KEY_LEN]), 10).expect("list");
        assert!(page.is_empty() && !more);
    }

    #[test]
    fn corrupt_values_are_listed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .put_batch(&[(fp(1), 0, &[1u8; 100][..]), (fp(1), 1, &[2u8; 9000][..])])
            .expect("put");
        let mut raw = store
            .raw_get_value(&fp(1), 1)
            .expect("raw get")
            .expect("present");
        raw[VALUE_HEADER_LEN + 4000] ^= 0x10;
        store.raw_put_value(&fp(1), 1, &raw).expect("raw put");
        // Too short for any header, and an unknown version.
        store.raw_put_value(&fp(2), 0, &[2, 0, 0]).expect("raw put");
        store.raw_put_value(&fp(2), 1, &[]).expect("raw put");
        let mut bad_version = encode_value(b"abc");
        bad_version[0] = 7;
        store
            .raw_put_value(&fp(2), 2, &bad_version)
            .expect("raw put");

        let (page, more) = store.list_after(None, 100).expect("list");
        assert!(!more);
        let summary: Vec<(u8, u8, u64, i64, bool)> = page
            .iter()
            .map(|s| {
                (
                    s.fingerprint.0[0],
                    s.index,
                    s.len,
                    s.written_ns,
                    s.corrupt.is_some(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, 0, 100, page[0].written_ns, false),
                (1, 1, 9000, 0, true),
                (2, 0, 0, 0, true),
                (2, 1, 0, 0, true),
                (2, 2, 3, 0, true),
            ]
        );
        assert!(page[0].written_ns > 0);

        assert_eq!(
            store.check(&fp(1), 0, true).expect("check"),
            ShardCheck::Good
        );
        assert_eq!(
            store.check(&fp(1), 0, false).expect("check"),
            ShardCheck::Present
        );
        for (n, index) in [(1, 1), (2, 0), (2, 1), (2, 2)] {
            assert!(
                matches!(
                    store.check(&fp(n), index, true).expect("check"),
                    ShardCheck::Corrupt(_)
                ),
                "{n}/{index}"
            );
            assert_eq!(
                store.check(&fp(n), index, false).expect("check"),
                ShardCheck::Present
            );
        }
        for verify in [false, true] {
            assert_eq!(
                store.check(&fp(3), 0, verify).expect("check"),
                ShardCheck::Missing
            );
        }
        // A rewrite (as the repair's PutShards does) makes it good again.
        store
            .put_batch(&[(fp(1), 1, &[2u8; 9000][..])])
            .expect("put");
        assert_eq!(
            store.check(&fp(1), 1, true).expect("check"),
            ShardCheck::Good
        );
    }

    #[test]
    fn capacity_reports_the_file_system() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let cap = store.capacity().expect("capacity");
        assert!(cap.total_bytes > 0);
        assert!(cap.used_bytes <= cap.total_bytes);
    }

    #[test]
    fn data_dir_under_a_regular_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"not a directory").expect("write");
        let err = ShardStore::open(&file).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot open shard store at "), "{msg}");
        assert!(
            msg.contains(&file.join("shards").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn second_open_of_the_same_dir_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open(dir.path());
        let err = ShardStore::open(dir.path()).expect_err("RocksDB lock must refuse");
        assert!(
            err.to_string().contains("cannot open shard store at"),
            "{err}"
        );
    }
}
