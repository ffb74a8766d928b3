//! When files were last used, coarsely, for tiering (issue 21).
//!
//! Each regular file carries the day its data was last written or its
//! chunk map read through dfs-meta (`InodeRecord.access_day`), and an
//! index entry `A day ino` beside it, so that the tiering worker reads the
//! files that aged, oldest first, without scanning the namespace. As
//! relatime does, a file is written at most once a day for this:
//! - a commit (a write) sets the day in its own transaction, where the
//!   inode is written anyway;
//! - a read stays a read: [`AccessLog`] notes the inode and a worker
//!   writes the days in batches. A crash loses at most one batch period
//!   of reads (the file then looks as old as its previous access).
//!
//! Reads a client answers from its own caches do not reach dfs-meta and
//! are not seen: what counts is opening a file and fetching its map.
//!
//! Days come from [`TierClock`]: the system clock, plus an offset a test
//! can move (`--tier-clock-offset-file`) to age a volume in seconds.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_proto::{FileKind, InodeRecord};
use prost::Message;

use crate::error::{MetaError, Result};
use crate::inodes::put_inode;
use crate::keys;
use crate::store::{get_record, tag_page, transact, KvTxn, MetaStore};
use dfs_core::workers::Worker;

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// The day (since the Unix epoch, UTC) of a time in nanoseconds; day 0
/// is taken for "never", so every real time is at least day 1.
pub fn day_of(ns: i64) -> u32 {
    u32::try_from(ns.div_euclid(NS_PER_DAY)).unwrap_or(0).max(1)
}

/// How many days from `day` to `today` (0 when `day` is later).
pub fn days_between(day: u32, today: u32) -> u32 {
    today.saturating_sub(day)
}

/// The clock tiering decisions read: the system clock plus an offset in
/// seconds read from a file, if one is configured (tests age a volume by
/// writing to it; re-read at most once a second).
#[derive(Debug)]
pub struct TierClock {
    offset_file: Option<PathBuf>,
    cached: parking_lot::Mutex<Option<(Instant, i64)>>,
}

impl TierClock {
    pub fn system() -> Self {
        Self {
            offset_file: None,
            cached: parking_lot::Mutex::new(None),
        }
    }

    /// The system clock moved by the whole seconds written in `path` (a
    /// missing or unreadable file counts as 0, and is logged).
    pub fn with_offset_file(path: PathBuf) -> Self {
        Self {
            offset_file: Some(path),
            cached: parking_lot::Mutex::new(None),
        }
    }

    fn offset_ns(&self) -> i64 {
        let Some(path) = &self.offset_file else {
            return 0;
        };
        let mut cached = self.cached.lock();
        if let Some((read_at, offset)) = *cached {
            if read_at.elapsed() < Duration::from_secs(1) {
                return offset;
            }
        }
        let offset = match std::fs::read_to_string(path) {
            Ok(text) => match text.trim().parse::<i64>() {
                Ok(seconds) => seconds.saturating_mul(1_000_000_000),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "tier clock offset is not a number of seconds; using 0");
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the tier clock offset; using 0");
                0
            }
        };
        *cached = Some((Instant::now(), offset));
        offset
    }

    pub fn now_ns(&self) -> i64 {
        dfs_core::time::now_ns().saturating_add(self.offset_ns())
    }

    pub fn today(&self) -> u32 {
        day_of(self.now_ns())
    }
}

/// Records that `inode` (a regular file) was accessed on `day`: sets its
/// day and moves its index entry. The caller writes the inode. False when
/// it already had that day (nothing to write).
pub fn touch(txn: &mut dyn KvTxn, inode: &mut InodeRecord, day: u32) -> bool {
    if inode.access_day == day || inode.kind() != FileKind::Regular {
        return false;
    }
    if inode.access_day != 0 {
        txn.clear(&keys::access(inode.access_day, inode.ino));
    }
    txn.set(&keys::access(day, inode.ino), &[]);
    inode.access_day = day;
    true
}

/// Removes the index entry of an inode that goes away.
pub fn forget(txn: &mut dyn KvTxn, inode: &InodeRecord) {
    if inode.access_day != 0 {
        txn.clear(&keys::access(inode.access_day, inode.ino));
    }
}

fn indexed_marker() -> Vec<u8> {
    keys::counter("access_indexed")
}

/// Marks a new, empty volume as having every file's access day indexed.
pub fn mark_indexed(txn: &mut dyn KvTxn) {
    txn.set(&indexed_marker(), &1i64.to_le_bytes());
}

/// Inodes read per transaction while indexing a volume's existing files.
const INDEX_PAGE: usize = 2_000;

/// Gives every file of a volume made before access tracking a day (that
/// of its last modification) and its index entry: once, at start-up, in
/// bounded transactions, as `confine::build_backrefs` does. Without it
/// those files would never age. Returns how many it indexed.
pub fn index_existing(store: &dyn MetaStore) -> Result<u64> {
    if transact(store, |t| {
        Ok::<_, MetaError>(t.get(&indexed_marker())?.is_some())
    })? {
        return Ok(0);
    }
    tracing::info!("indexing the access days of existing files (once, for tiering)");
    let mut from = Vec::new();
    let mut indexed = 0;
    loop {
        let (next, count) = transact(store, |t| {
            let (rows, next) = tag_page(t, keys::INODE, &from, INDEX_PAGE)?;
            let mut count = 0u64;
            for (_, value) in &rows {
                let mut inode = InodeRecord::decode(value.as_slice())?;
                let modified = day_of(inode.mtime_ns);
                if inode.access_day == 0 && touch(t, &mut inode, modified) {
                    put_inode(t, &inode);
                    count += 1;
                }
            }
            Ok::<_, MetaError>((next, count))
        })?;
        indexed += count;
        match next {
            Some(key) => from = key,
            None => break,
        }
    }
    transact(store, |t| {
        mark_indexed(t);
        Ok::<_, MetaError>(())
    })?;
    tracing::info!(indexed, "access days indexed");
    Ok(indexed)
}

/// Up to `limit` files last accessed before `before_day`, oldest first,
/// after `after` (the last one a previous call returned).
pub fn accessed_before(
    txn: &mut dyn KvTxn,
    before_day: u32,
    after: Option<(u32, u64)>,
    limit: usize,
) -> Result<Vec<(u32, u64)>> {
    let begin = match after {
        Some((day, ino)) => {
            let mut k = keys::access(day, ino);
            k.push(0);
            k
        }
        None => vec![keys::ACCESS],
    };
    let end = keys::access(before_day, 0)[..5].to_vec();
    if begin >= end {
        return Ok(Vec::new());
    }
    Ok(txn
        .range(&begin, &end, limit, false)?
        .iter()
        .filter_map(|(k, _)| keys::access_parts(k))
        .collect())
}

/// The upper bounds (days) of the age buckets `dfs tier status` shows;
/// the last bucket is everything older.
pub const AGE_BUCKETS: [u32; 5] = [0, 7, 30, 90, 365];

/// How many files were last accessed how long before `today`, by
/// [`AGE_BUCKETS`] (one more bucket at the end: older). Reads the whole
/// index: for `dfs tier status`, not for a request path.
pub fn ages(txn: &mut dyn KvTxn, today: u32) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; AGE_BUCKETS.len() + 1];
    let mut after = None;
    loop {
        let page = accessed_before(txn, u32::MAX, after, 10_000)?;
        let Some(&last) = page.last() else {
            break;
        };
        for (day, _) in &page {
            let age = days_between(*day, today);
            let bucket = AGE_BUCKETS
                .iter()
                .position(|&max| age <= max)
                .unwrap_or(AGE_BUCKETS.len());
            counts[bucket] += 1;
        }
        after = Some(last);
    }
    Ok(counts)
}

/// What `dfs tier status` shows: files by age, on `today`.
pub fn status(txn: &mut dyn KvTxn, today: u32) -> Result<dfs_proto::TierStatusReply> {
    let counts = ages(txn, today)?;
    let bounds = AGE_BUCKETS.iter().copied().chain([0]);
    Ok(dfs_proto::TierStatusReply {
        today,
        ages: bounds
            .zip(counts)
            .map(|(max_days, files)| dfs_proto::AgeBucket { max_days, files })
            .collect(),
    })
}

/// Most reads noted and not yet written; past it, reads are dropped until
/// the next batch (their files look older than they are: a tiering move
/// that a later read undoes, never lost data).
const MAX_PENDING: usize = 200_000;

/// Inodes read since the last batch, and those already written today (so
/// a file read all day costs one write, not one per batch).
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: parking_lot::Mutex<HashSet<u64>>,
    written: parking_lot::Mutex<(u32, HashSet<u64>)>,
}

impl AccessLog {
    /// Notes a read of `ino` on `today`.
    pub fn read(&self, ino: u64, today: u32) {
        {
            let written = self.written.lock();
            if written.0 == today && written.1.contains(&ino) {
                return;
            }
        }
        let mut pending = self.pending.lock();
        if pending.len() < MAX_PENDING {
            pending.insert(ino);
        }
    }

    /// The inodes read since the last call.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.pending.lock())
            .into_iter()
            .collect()
    }

    /// Remembers that these inodes carry `day` now.
    pub fn written(&self, day: u32, inos: &[u64]) {
        let mut written = self.written.lock();
        if written.0 != day || written.1.len() > MAX_PENDING {
            *written = (day, HashSet::new());
        }
        written.1.extend(inos);
    }
}

/// Sets the day of each of `inos` that still exists to `day`, in one
/// transaction (keep batches small: each inode is a read and perhaps two
/// writes). Returns how many changed.
/// Returns how many changed, and which of those are cold (read again
/// after they went cold: `cold::reheat` may bring them back).
pub fn write_days(txn: &mut dyn KvTxn, inos: &[u64], day: u32) -> Result<(usize, Vec<u64>)> {
    let mut changed = 0;
    let mut cold = Vec::new();
    for &ino in inos {
        let Some(mut inode) = get_record::<InodeRecord>(txn, &keys::inode(ino))? else {
            continue;
        };
        if touch(txn, &mut inode, day) {
            put_inode(txn, &inode);
            changed += 1;
            if inode.tier() == dfs_proto::Tier::Cold {
                cold.push(ino);
            }
        }
    }
    Ok((changed, cold))
}

/// Between two batches of read access days.
pub const READS_PERIOD: Duration = Duration::from_secs(10);

/// Inodes per transaction of a batch.
const READS_PER_TRANSACTION: usize = 256;

/// The `access` worker: every [`READS_PERIOD`], writes the days of the
/// files read since the last batch, and hands the cold ones among them
/// to `cold_reads` (the `reheat` worker), when given.
pub async fn record_reads(
    store: Arc<dyn MetaStore>,
    log: Arc<AccessLog>,
    clock: Arc<TierClock>,
    worker: Arc<Worker>,
    cold_reads: Option<tokio::sync::mpsc::Sender<u64>>,
) {
    worker.set_interval(READS_PERIOD);
    loop {
        tokio::time::sleep(READS_PERIOD).await;
        let read = log.take();
        worker.start(read.len() as u64);
        let mut changed = 0;
        let mut failed = None;
        for batch in read.chunks(READS_PER_TRANSACTION) {
            let day = clock.today();
            let (s, inos) = (store.clone(), batch.to_vec());
            match tokio::task::spawn_blocking(move || {
                transact(s.as_ref(), |t| write_days(t, &inos, day))
            })
            .await
            {
                Ok(Ok((n, cold))) => {
                    changed += n;
                    log.written(day, batch);
                    if let Some(to) = &cold_reads {
                        // A full queue drops them: a later day's read
                        // asks again.
                        for ino in cold {
                            let _ = to.try_send(ino);
                        }
                    }
                }
                // The days not written now are lost (the files look as
                // old as their last recorded access): only tiering reads
                // them, and a later read fixes them.
                Ok(Err(e)) => failed = Some(e.to_string()),
                Err(e) => failed = Some(format!("access days task panicked: {e}")),
            }
            worker.advance(batch.len() as u64);
        }
        let outcome = match failed {
            None => Ok(format!(
                "{changed} of {} files read got a new day",
                read.len()
            )),
            Some(e) => {
                tracing::warn!(error = %e, "writing files' access days failed");
                Err(e)
            }
        };
        worker.finish(outcome, Some(READS_PERIOD));
    }
}

/// The access day of an inode as stored (0 for none or a missing inode).
pub fn stored_day(txn: &mut dyn KvTxn, ino: u64) -> Result<u32> {
    Ok(txn
        .get(&keys::inode(ino))?
        .map(|v| InodeRecord::decode(v.as_slice()))
        .transpose()?
        .map_or(0, |i| i.access_day))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{read_only, transact, MemStore};

    fn file(ino: u64) -> InodeRecord {
        InodeRecord {
            ino,
            kind: FileKind::Regular as i32,
            nlink: 1,
            ..InodeRecord::default()
        }
    }

    #[test]
    fn days_start_at_one_and_count_whole_days() {
        assert_eq!(day_of(0), 1);
        assert_eq!(day_of(-5), 1);
        assert_eq!(day_of(NS_PER_DAY * 20_000 + 5), 20_000);
        assert_eq!(day_of(NS_PER_DAY * 20_001 - 1), 20_000);
        assert_eq!(days_between(10, 17), 7);
        assert_eq!(days_between(17, 10), 0);
    }

    #[test]
    fn the_index_follows_the_last_access_and_yields_oldest_first() {
        let store = MemStore::default();
        transact(&store, |t| {
            for (ino, day) in [(1, 100), (2, 90), (3, 120)] {
                let mut inode = file(ino);
                assert!(touch(t, &mut inode, day));
                assert!(
                    !touch(t, &mut inode, day),
                    "a second touch the same day writes nothing"
                );
                put_inode(t, &inode);
            }
            Ok::<_, crate::error::MetaError>(())
        })
        .unwrap();
        let aged = read_only(&store, |t| accessed_before(t, 110, None, 10)).unwrap();
        assert_eq!(aged, vec![(90, 2), (100, 1)]);
        // A read on day 130 moves file 2 out of the old days.
        transact(&store, |t| write_days(t, &[2, 99], 130)).unwrap();
        let aged = read_only(&store, |t| accessed_before(t, 200, None, 10)).unwrap();
        assert_eq!(aged, vec![(100, 1), (120, 3), (130, 2)]);
        // Paging: after the first, the rest.
        let rest = read_only(&store, |t| accessed_before(t, 200, Some((100, 1)), 10)).unwrap();
        assert_eq!(rest, vec![(120, 3), (130, 2)]);
        // Ages on day 131: 31 days (file 1), 11 and 1.
        let ages = read_only(&store, |t| ages(t, 131)).unwrap();
        assert_eq!(ages, vec![0, 1, 1, 1, 0, 0]);
        assert_eq!(read_only(&store, |t| stored_day(t, 2)).unwrap(), 130);
        transact(&store, |t| {
            let inode = get_record::<InodeRecord>(t, &keys::inode(3))?.unwrap();
            forget(t, &inode);
            Ok::<_, crate::error::MetaError>(())
        })
        .unwrap();
        let aged = read_only(&store, |t| accessed_before(t, 200, None, 10)).unwrap();
        assert_eq!(aged, vec![(100, 1), (130, 2)]);
    }

    #[test]
    fn files_of_an_older_volume_are_indexed_once_by_their_mtime() {
        let store = MemStore::default();
        transact(&store, |t| {
            for ino in 1..=3 {
                let mut inode = file(ino);
                inode.mtime_ns = i64::from(40 + ino as u32) * NS_PER_DAY;
                put_inode(t, &inode);
            }
            let dir = InodeRecord {
                ino: 9,
                kind: FileKind::Directory as i32,
                ..InodeRecord::default()
            };
            put_inode(t, &dir);
            Ok::<_, MetaError>(())
        })
        .unwrap();
        assert_eq!(index_existing(&store).unwrap(), 3);
        let aged = read_only(&store, |t| accessed_before(t, 100, None, 10)).unwrap();
        assert_eq!(aged, vec![(41, 1), (42, 2), (43, 3)]);
        assert_eq!(index_existing(&store).unwrap(), 0, "once");
    }

    #[test]
    fn directories_are_not_tracked() {
        let store = MemStore::default();
        let mut dir = InodeRecord {
            ino: 5,
            kind: FileKind::Directory as i32,
            ..InodeRecord::default()
        };
        transact(&store, |t| {
            Ok::<_, crate::error::MetaError>(touch(t, &mut dir, 3))
        })
        .unwrap();
        assert_eq!(dir.access_day, 0);
    }

    #[test]
    fn a_file_read_all_day_is_written_once() {
        let log = AccessLog::default();
        log.read(7, 50);
        log.read(7, 50);
        assert_eq!(log.take(), vec![7]);
        log.written(50, &[7]);
        log.read(7, 50);
        assert!(log.take().is_empty());
        log.read(7, 51);
        assert_eq!(log.take(), vec![7], "a new day is a new write");
    }

    #[test]
    fn the_clock_moves_by_the_offset_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        let clock = TierClock::with_offset_file(path.clone());
        let today = clock.today();
        std::fs::write(&path, format!("{}", 10 * 86_400)).unwrap();
        *clock.cached.lock() = None;
        assert_eq!(clock.today(), today + 10);
        assert_eq!(TierClock::system().today(), today);
    }
}
