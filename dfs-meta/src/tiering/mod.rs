//! The tiering worker (issue 21): the chunks of files that aged without
//! access move to the tier their policy asks for (`dfs_core::tier`), each
//! chunk recompressed as the codec model (`dfs_core::codec_model`) says for
//! that tier and its file's kind: warm mostly ZSTD (small chunks with the
//! volume's dictionary, `dictionary`), cold mostly LZMA.
//!
//! A pass reads the access index (`access`) for files last used before
//! today, oldest first; for each, its policy (`user.dfs.tier`, else the
//! volume's default) and age give a target tier; a file already there
//! (`InodeRecord.tier`) is skipped. The file's chunks below the target are
//! recompressed outside any transaction (the fingerprint checked on the
//! way: it stays the chunk's identity, the hash of its raw bytes), then
//! written in one transaction that changes a record only if it is still
//! as read, so a concurrent repair, GC or upload wins and the chunk is
//! simply looked at again next pass. A crash leaves each record old or
//! new, never neither.
//!
//! Here: chunks kept inline in the metadata store (small files). With a
//! cold store configured (`dfs-meta --cold-store`), cold files go no
//! further than warm here, and `cold::migrate` packs all their chunks,
//! inline or on chunk servers, into objects of the cold store. Without
//! one, chunks on chunk servers stay where they are (moving them in place
//! would need their new shards written beside the old ones before the
//! record switches), and their files are looked at again each pass. A
//! chunk shared by files of different ages follows the last file that
//! moved it: reading it stays correct, only slower to decode.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dfs_core::codec_model::{CodecModel, FileKind};
use dfs_core::dictionary::DictionaryCompressor;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::tier::{TierPolicy, XATTR};
use dfs_core::workers::Worker;
use dfs_proto::{ChunkRecord, ChunkRefRecord, InodeRecord, Tier as TierRecord};
use prost::Message;

use crate::access::{accessed_before, days_between, TierClock};
use crate::cold::migrate::Migration;
use crate::dictionary::Dictionaries;
use crate::error::{MetaError, Result};
use crate::inodes::put_inode;
use crate::keys;
use crate::maintenance::Maintenance;
use crate::store::{get_record, get_records, put_record, read_only, transact, KvTxn, MetaStore};
pub use sharded::ShardedMove;

mod sharded;

/// Between two passes, unless configured (`dfs-meta --tier-interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// Files read from the access index per transaction.
const FILES_PER_PAGE: usize = 256;

/// Chunk references of one file read per transaction.
const REFS_PER_PAGE: usize = 10_000;

/// Raw bytes of chunks on chunk servers queued for recompression by one
/// pass: each is read back and written again as new shards, so this
/// bounds a pass's work; the rest waits for the next pass.
const SHARDED_BYTES_PER_PASS: u64 = 256 << 20;

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    /// Files older than a day looked at.
    pub files: u64,
    /// Files whose chunks all reached their target tier in this pass.
    pub files_moved: u64,
    /// Chunks moved to a colder tier, and their stored bytes before and
    /// after.
    pub chunks_moved: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Chunks on chunk servers below their file's target (not moved yet).
    pub chunks_left: u64,
    /// The compression dictionary trained at the start of the pass.
    pub dictionary_trained: Option<u64>,
    /// Chunks on chunk servers to recompress (`sharded`), at most
    /// [`SHARDED_BYTES_PER_PASS`] raw bytes of them.
    pub sharded: Vec<ShardedMove>,
    pub sharded_raw_bytes: u64,
    /// Where each fingerprint is in `sharded`: a chunk shared by files
    /// is queued once, for the coldest of their targets.
    queued: std::collections::HashMap<Vec<u8>, usize>,
}

fn to_tier(tier: TierRecord) -> dfs_core::tier::Tier {
    match tier {
        TierRecord::Hot => dfs_core::tier::Tier::Hot,
        TierRecord::Warm => dfs_core::tier::Tier::Warm,
        TierRecord::Cold => dfs_core::tier::Tier::Cold,
    }
}

fn to_record(tier: dfs_core::tier::Tier) -> TierRecord {
    match tier {
        dfs_core::tier::Tier::Hot => TierRecord::Hot,
        dfs_core::tier::Tier::Warm => TierRecord::Warm,
        dfs_core::tier::Tier::Cold => TierRecord::Cold,
    }
}

/// The policy `ino` follows: its own attribute (every file created in a
/// directory with one inherits it), else the nearest directory above it
/// with one (a policy set on a directory after its files were made; by
/// the first of a file's names), else the volume's default: what `dfs tier
/// get` says. An unreadable attribute (dfs-meta refuses to set one)
/// counts as none.
pub(crate) fn policy_of(txn: &mut dyn KvTxn, ino: u64) -> Result<TierPolicy> {
    let mut at = ino;
    for _ in 0..MAX_POLICY_DEPTH {
        if let Some(policy) = txn
            .get(&keys::xattr(at, XATTR.as_bytes()))?
            .and_then(|v| TierPolicy::parse(&String::from_utf8_lossy(&v)).ok())
        {
            return Ok(policy);
        }
        if at == crate::namespace::ROOT_INO {
            break;
        }
        let prefix = keys::backref_prefix(at);
        let up = txn.range(&prefix, &keys::prefix_end(&prefix), 1, false)?;
        match up.first().and_then(|(key, _)| keys::backref_parts(key)) {
            Some((_, parent, _)) if parent != at => at = parent,
            _ => break,
        }
    }
    Ok(TierPolicy::volume_default())
}

/// Directories looked up for a policy before the default applies (a
/// cycle in corrupt metadata must not loop).
const MAX_POLICY_DEPTH: usize = 4096;

/// The distinct fingerprints of `ino`'s chunk map.
pub(crate) fn fingerprints_of(store: &dyn MetaStore, ino: u64) -> Result<Vec<Vec<u8>>> {
    let prefix = keys::chunk(ino, 0)[..9].to_vec();
    let end = keys::prefix_end(&prefix);
    let mut from = prefix;
    let mut all = BTreeSet::new();
    loop {
        let rows = read_only(store, |t| t.range(&from, &end, REFS_PER_PAGE, false))
            .map_err(MetaError::from)?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        from = last.clone();
        from.push(0);
        for (_, value) in &rows {
            all.insert(ChunkRefRecord::decode(value.as_slice())?.fingerprint);
        }
        if rows.len() < REFS_PER_PAGE {
            break;
        }
    }
    Ok(all.into_iter().collect())
}

/// How a pass recompresses: the dictionaries records name, to decode
/// them, and the newest one, to try on chunks going warm.
struct Recompressor<'a> {
    dictionaries: Dictionaries<'a>,
    warm: Option<DictionaryCompressor>,
}

impl<'a> Recompressor<'a> {
    fn new(store: &'a dyn MetaStore) -> Result<Self> {
        let mut dictionaries = Dictionaries::new(store);
        let warm = match read_only(store, crate::dictionary::latest)? {
            Some(newest) => dictionaries.get(newest.id)?.compressor(WARM_ZSTD_LEVEL),
            None => None,
        };
        Ok(Self { dictionaries, warm })
    }
}

/// zstd level of warm chunks compressed with the volume's dictionary: the
/// warm tier's own level.
const WARM_ZSTD_LEVEL: i32 = 3;

/// A chunk's record moved to `target`: recompressed as the codec model
/// says for that tier and the file's kind (from `name` and the chunk's
/// first bytes), warm ones also with the volume's dictionary when that is
/// smaller, when that shrinks it. `None` when it cannot move here (on
/// chunk servers) or its bytes do not match its fingerprint (left to fsck).
fn moved(
    fingerprint: &[u8],
    rec: &ChunkRecord,
    target: TierRecord,
    name: Option<&str>,
    recompressor: &mut Recompressor<'_>,
) -> Option<ChunkRecord> {
    if !rec.is_inline() {
        return None;
    }
    let fp = Fingerprint::from_slice(fingerprint).ok()?;
    let raw = match recompressor.dictionaries.decode_inline(&fp, rec) {
        Ok(raw) => raw,
        Err(e) => {
            tracing::warn!(chunk = %hex::encode(fingerprint), error = %e, "tiering: an inline chunk does not decode; left as it is");
            return None;
        }
    };
    let tier = to_tier(target);
    let kind = FileKind::of(name, &raw);
    let (mut codec, mut stored) = CodecModel::builtin().compress(tier, kind, &raw);
    let mut dictionary = 0;
    if let Some(warm) = recompressor
        .warm
        .as_mut()
        .filter(|_| target == TierRecord::Warm)
    {
        if let Some(smaller) = warm.compress(&raw, stored.len()) {
            (codec, stored, dictionary) = (dfs_proto::Codec::Zstd, smaller, warm.id());
        }
    }
    let mut new = rec.clone();
    new.set_tier(target);
    if stored.len() < rec.inline_data.len() {
        new.set_codec(codec);
        new.stored_len = stored.len() as u32;
        new.inline_data = stored;
        new.dictionary = dictionary;
    }
    Some(new)
}

/// One of file `ino`'s names (the codec model reads its extension).
fn name_of(txn: &mut dyn KvTxn, ino: u64) -> Result<Option<String>> {
    let begin = keys::backref_prefix(ino);
    let rows = txn.range(&begin, &keys::prefix_end(&begin), 1, false)?;
    Ok(rows
        .first()
        .and_then(|(key, _)| keys::backref_parts(key))
        .map(|(_, _, name)| String::from_utf8_lossy(name).into_owned()))
}

/// Moves the chunks of file `ino`, `age_days` since its last access.
/// With `packs` (a cold store is configured), cold files are left to
/// `cold::migrate` and only go as far as warm here.
fn move_file(
    store: &dyn MetaStore,
    ino: u64,
    age_days: u32,
    packs: bool,
    recompressor: &mut Recompressor<'_>,
    report: &mut PassReport,
) -> Result<()> {
    let idle = Duration::from_secs(u64::from(age_days) * 86_400);
    let planned = read_only(store, |t| {
        let Some(inode) = get_record::<InodeRecord>(t, &keys::inode(ino))? else {
            return Ok::<_, MetaError>(None);
        };
        let wanted = to_record(policy_of(t, ino)?.tier_after(idle));
        let target = if packs {
            wanted.min(TierRecord::Warm)
        } else {
            wanted
        };
        Ok(Some((inode.tier(), target, wanted, name_of(t, ino)?)))
    })?;
    let Some((current, target, wanted, name)) = planned else {
        return Ok(()); // removed meanwhile: its index entry went with it
    };
    if target <= current {
        return Ok(());
    }
    let fingerprints = fingerprints_of(store, ino)?;
    let mut changes: Vec<(Vec<u8>, ChunkRecord, ChunkRecord)> = Vec::new();
    let mut left = 0u64;
    for batch in fingerprints.chunks(FILES_PER_PAGE) {
        let hash_keys: Vec<Vec<u8>> = batch.iter().map(|fp| keys::hash(fp)).collect();
        let records = read_only(store, |t| get_records::<ChunkRecord>(t, &hash_keys))?;
        for (fp, rec) in batch.iter().zip(records) {
            let Some(rec) = rec else { continue };
            if rec.tier() >= target {
                continue;
            }
            if rec.is_sharded() {
                left += 1;
                // Bound for the cold store: packed as they are, not
                // recompressed on the way.
                let raw = u64::from(rec.raw_len);
                if let Some(&at) = report.queued.get(fp) {
                    let queued = &mut report.sharded[at];
                    if target > queued.target {
                        (queued.target, queued.name) = (target, name.clone());
                    }
                } else if wanted == target
                    && report.sharded_raw_bytes + raw <= SHARDED_BYTES_PER_PASS
                {
                    report.sharded_raw_bytes += raw;
                    report.queued.insert(fp.clone(), report.sharded.len());
                    report.sharded.push(ShardedMove {
                        fingerprint: fp.clone(),
                        record: rec,
                        target,
                        name: name.clone(),
                    });
                }
                continue;
            }
            match moved(fp, &rec, target, name.as_deref(), recompressor) {
                Some(new) => changes.push((fp.clone(), rec, new)),
                None => left += 1,
            }
        }
    }
    let done = left == 0;
    let written = transact(store, |t| {
        let mut written = Vec::new();
        for (fp, old, new) in &changes {
            // Only over the record as read: anything else changed it since.
            if get_record::<ChunkRecord>(t, &keys::hash(fp))?.as_ref() == Some(old) {
                put_record(t, &keys::hash(fp), new);
                written.push((old.stored_len, new.stored_len));
            }
        }
        if done && written.len() == changes.len() {
            if let Some(mut inode) = get_record::<InodeRecord>(t, &keys::inode(ino))? {
                // A write since the plan made it hot again: leave it so.
                if inode.tier() == current {
                    inode.set_tier(target);
                    put_inode(t, &inode);
                }
            }
        }
        Ok::<_, MetaError>(written)
    })?;
    if done && written.len() == changes.len() {
        report.files_moved += 1;
    }
    report.chunks_moved += written.len() as u64;
    report.bytes_before += written.iter().map(|(b, _)| u64::from(*b)).sum::<u64>();
    report.bytes_after += written.iter().map(|(_, a)| u64::from(*a)).sum::<u64>();
    report.chunks_left += left;
    Ok(())
}

/// One pass over the files not accessed today, on `clock`'s today (with
/// `packs`, cold files only as far as warm: see [`move_file`]).
pub fn pass(
    store: &dyn MetaStore,
    clock: &TierClock,
    packs: bool,
    worker: &Worker,
) -> Result<PassReport> {
    let today = clock.today();
    let mut report = PassReport {
        dictionary_trained: crate::dictionary::train_if_due(store, clock.now_ns())?.map(|d| d.id),
        ..PassReport::default()
    };
    let mut recompressor = Recompressor::new(store)?;
    let mut after = None;
    loop {
        let page = read_only(store, |t| accessed_before(t, today, after, FILES_PER_PAGE))?;
        let Some(&last) = page.last() else {
            break;
        };
        for &(day, ino) in &page {
            move_file(
                store,
                ino,
                days_between(day, today),
                packs,
                &mut recompressor,
                &mut report,
            )?;
            report.files += 1;
            worker.advance(1);
        }
        after = Some(last);
    }
    Ok(report)
}

/// The `tiering` worker: a pass every `interval`; with a cold store, then
/// a pass of `cold::migrate` packing the cold files.
pub async fn tiering_worker(
    store: Arc<dyn MetaStore>,
    clock: Arc<TierClock>,
    maintenance: Arc<Maintenance>,
    worker: Arc<Worker>,
    interval: Duration,
) {
    worker.set_interval(interval);
    loop {
        worker.set_next_run(interval);
        tokio::time::sleep(interval).await;
        let outcome = run_pass(&store, &clock, &maintenance, &worker).await;
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, "tiering pass failed; will retry");
        }
        worker.finish(outcome, Some(interval));
    }
}

/// One pass of both halves, as the worker reports it.
pub async fn run_pass(
    store: &Arc<dyn MetaStore>,
    clock: &Arc<TierClock>,
    maintenance: &Arc<Maintenance>,
    worker: &Arc<Worker>,
) -> std::result::Result<String, String> {
    worker.start(0);
    let recall = maintenance.recall().cloned();
    let packs = recall.is_some();
    let (s, c, w) = (store.clone(), clock.clone(), worker.clone());
    let mut r = match tokio::task::spawn_blocking(move || pass(s.as_ref(), &c, packs, &w)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(format!("tiering pass panicked: {e}")),
    };
    if r.chunks_moved > 0 {
        tracing::info!(
            files = r.files_moved,
            chunks = r.chunks_moved,
            before = r.bytes_before,
            after = r.bytes_after,
            "tiering moved chunks"
        );
    }
    let mut text = format!(
        "{} files looked at, {} moved; {} chunks recompressed ({} to {} stored bytes)",
        r.files, r.files_moved, r.chunks_moved, r.bytes_before, r.bytes_after
    );
    if let Some(id) = r.dictionary_trained {
        text.push_str(&format!("; trained compression dictionary {id}"));
    }
    let moves = std::mem::take(&mut r.sharded);
    if !moves.is_empty() {
        let s = sharded::recompress(store, maintenance, moves).await;
        text.push_str(&format!(
            "; {} chunks on chunk servers recompressed ({} to {} stored bytes), {} kept as they were, {} changed meanwhile, {} failed",
            s.rewritten, s.bytes_before, s.bytes_after, s.kept, s.changed, s.failed
        ));
    }
    match recall {
        None => {}
        Some(recall) => {
            let migration =
                Migration::new(store.clone(), maintenance.clone(), recall.cold().clone())
                    .with_sizes(maintenance.pack_sizes());
            let c = migration
                .pass(clock, worker)
                .await
                .map_err(|e| format!("{text}; packing cold files: {e}"))?;
            text.push_str(&format!(
                "; cold: {} files, {} moved, {} chunks packed ({} raw bytes in {} packs of {} bytes), {} unreadable, {} packs deleted",
                c.files, c.files_moved, c.chunks_packed, c.raw_bytes, c.packs_written, c.pack_bytes, c.chunks_unreadable, c.packs_deleted
            ));
        }
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use dfs_core::codec::{compress, CodecPolicy};
    use dfs_proto::{Codec, FileKind};

    fn source_text(seed: u32) -> Vec<u8> {
        (0..200)
            .map(|i| {
                format!("fn item_{seed}_{i}(x: u32) -> u32 {{ x.wrapping_mul({i}) + {seed} }}\n")
            })
            .collect::<String>()
            .into_bytes()
    }

    /// A file `ino` holding one inline chunk of `raw`, last accessed on
    /// `day`, with `policy` as its own (None: the default).
    fn file(store: &MemStore, ino: u64, raw: &[u8], day: u32, policy: Option<&str>) -> Vec<u8> {
        let fp = Fingerprint::of(raw);
        let (codec, stored) = compress(CodecPolicy::Lz4, raw);
        transact(store, |t| {
            let mut inode = InodeRecord {
                ino,
                kind: FileKind::Regular as i32,
                nlink: 1,
                size: raw.len() as u64,
                ..InodeRecord::default()
            };
            crate::access::touch(t, &mut inode, day);
            put_inode(t, &inode);
            put_record(
                t,
                &keys::chunk(ino, 0),
                &ChunkRefRecord {
                    len: raw.len() as u32,
                    fingerprint: fp.to_vec(),
                },
            );
            put_record(
                t,
                &keys::hash(&fp.0),
                &dfs_core::inline::record(raw.len() as u32, codec, stored.clone()),
            );
            if let Some(p) = policy {
                t.set(&keys::xattr(ino, XATTR.as_bytes()), p.as_bytes());
            }
            Ok::<_, MetaError>(())
        })
        .unwrap();
        fp.to_vec()
    }

    fn record(store: &MemStore, fp: &[u8]) -> ChunkRecord {
        read_only(store, |t| get_record::<ChunkRecord>(t, &keys::hash(fp)))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn aged_files_move_by_their_policy_and_read_back_the_same() {
        let store = MemStore::default();
        let dir = tempfile::tempdir().unwrap();
        let offset = dir.path().join("offset");
        let clock = TierClock::with_offset_file(offset.clone());
        let today = clock.today();
        let (a, b, c) = (source_text(1), source_text(2), source_text(3));
        // Default policy (warm 7 d, cold 90 d), 10 days old: warm.
        let fa = file(&store, 1, &a, today - 10, None);
        // Its own policy: cold after 2 days.
        let fb = file(&store, 2, &b, today - 10, Some("warm=1d,cold=2d"));
        // Pinned hot.
        let fc = file(&store, 3, &c, today - 400, Some("hot"));
        let worker = Worker::new("tiering", "files");
        let report = pass(&store, &clock, false, &worker).unwrap();
        assert_eq!(report.files, 3);
        assert_eq!((report.files_moved, report.chunks_moved), (2, 2));
        assert!(report.bytes_after < report.bytes_before, "{report:?}");
        let (ra, rb, rc) = (
            record(&store, &fa),
            record(&store, &fb),
            record(&store, &fc),
        );
        assert_eq!((ra.tier(), ra.codec()), (TierRecord::Warm, Codec::Zstd));
        // Cold: what the codec model picks for source text (xz or zstd).
        assert_eq!(rb.tier(), TierRecord::Cold);
        assert!(matches!(rb.codec(), Codec::Lzma | Codec::Zstd), "{rb:?}");
        assert_eq!((rc.tier(), rc.codec()), (TierRecord::Hot, Codec::Lz4));
        for (fp, rec, raw) in [(&fa, &ra, &a), (&fb, &rb, &b), (&fc, &rc, &c)] {
            let fp = Fingerprint::from_slice(fp).unwrap();
            assert_eq!(&dfs_core::inline::decode(&fp, rec, None).unwrap(), raw);
        }
        // Nothing left to do: a second pass moves nothing.
        let again = pass(&store, &clock, false, &worker).unwrap();
        assert_eq!(again.chunks_moved, 0);

        // 90 days on, the default-policy file goes cold too.
        std::fs::write(&offset, (90 * 86_400).to_string()).unwrap();
        let clock = TierClock::with_offset_file(offset);
        let later = pass(&store, &clock, false, &worker).unwrap();
        assert_eq!(later.chunks_moved, 1);
        // Cold; LZMA where it beats the ZSTD bytes it had, else those.
        let cold = record(&store, &fa);
        assert_eq!(cold.tier(), TierRecord::Cold);
        assert!(cold.stored_len <= ra.stored_len);
        assert!(matches!(cold.codec(), Codec::Lzma | Codec::Zstd));
    }

    #[test]
    fn warm_small_chunks_use_a_dictionary_trained_on_the_volume() {
        let store = MemStore::default();
        let clock = TierClock::system();
        // 600 small source files alike in shape, each unique: inline.
        let raws: Vec<Vec<u8>> = (0..600u32)
            .map(|i| {
                (0..(30 + i % 25))
                    .map(|j| format!("pub fn op_{i}_{j}(s: &mut State) -> Result<(), Error> {{ s.apply({j}) }}\n"))
                    .collect::<String>()
                    .into_bytes()
            })
            .collect();
        let fps: Vec<Vec<u8>> = raws
            .iter()
            .enumerate()
            .map(|(i, raw)| file(&store, 100 + i as u64, raw, clock.today() - 10, None))
            .collect();
        let worker = Worker::new("tiering", "files");
        let report = pass(&store, &clock, false, &worker).unwrap();
        assert_eq!(report.dictionary_trained, Some(1), "{report:?}");
        assert_eq!(report.chunks_moved, 600);
        let mut dictionaries = Dictionaries::new(&store);
        let (mut with_dictionary, mut zstd_alone, mut named) = (0, 0, 0);
        for (fp, raw) in fps.iter().zip(&raws) {
            let rec = record(&store, fp);
            assert_eq!((rec.tier(), rec.codec()), (TierRecord::Warm, Codec::Zstd));
            named += usize::from(rec.dictionary == 1);
            let id = Fingerprint::from_slice(fp).unwrap();
            assert_eq!(&dictionaries.decode_inline(&id, &rec).unwrap(), raw);
            // Without the dictionary the bytes do not decode.
            if rec.dictionary != 0 {
                assert!(dfs_core::inline::decode(&id, &rec, None).is_err());
            }
            with_dictionary += rec.stored_len as usize;
            zstd_alone += compress(CodecPolicy::Zstd, raw).1.len();
        }
        assert!(named > 500, "{named} of 600 chunks use the dictionary");
        assert!(
            with_dictionary * 10 < zstd_alone * 7,
            "{with_dictionary} stored bytes with the dictionary, {zstd_alone} without"
        );
        // Going cold later (no cold store): decoded with the dictionary,
        // recompressed with LZMA where that is smaller, still readable.
        let dir = tempfile::tempdir().unwrap();
        let offset = dir.path().join("offset");
        std::fs::write(&offset, (100 * 86_400).to_string()).unwrap();
        let later = TierClock::with_offset_file(offset);
        pass(&store, &later, false, &worker).unwrap();
        for (fp, raw) in fps.iter().zip(&raws) {
            let rec = record(&store, fp);
            assert_eq!(rec.tier(), TierRecord::Cold);
            let id = Fingerprint::from_slice(fp).unwrap();
            assert_eq!(&dictionaries.decode_inline(&id, &rec).unwrap(), raw);
        }
    }

    #[test]
    fn chunks_on_chunk_servers_are_queued_unless_bound_for_the_cold_store() {
        let store = MemStore::default();
        let clock = TierClock::system();
        let raw = source_text(7);
        let fp = file(&store, 1, &raw, clock.today() - 10, None);
        // A copy of it, with its own policy: cold after 2 days.
        file(&store, 2, &raw, clock.today() - 10, Some("warm=1d,cold=2d"));
        // Make their chunk one on chunk servers (RS 6+3).
        let sharded = ChunkRecord {
            raw_len: raw.len() as u32,
            stored_len: 9_000,
            codec: Codec::Lz4 as i32,
            layout: Some(dfs_proto::Layout {
                data_shards: 6,
                parity_shards: 3,
                ..Default::default()
            }),
            shard_servers: (1..=9).collect(),
            shard_len: 1_500,
            ..ChunkRecord::default()
        };
        transact(&store, |t| {
            put_record(t, &keys::hash(&fp), &sharded);
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let worker = Worker::new("tiering", "files");
        // Ten days idle: warm for one, cold for the other; the chunk is
        // queued once, for the colder.
        let report = pass(&store, &clock, false, &worker).unwrap();
        assert_eq!((report.chunks_left, report.files_moved), (2, 0));
        assert_eq!(report.sharded.len(), 1);
        assert_eq!(report.sharded[0].record, sharded);
        assert_eq!(report.sharded[0].target, TierRecord::Cold);
        assert_eq!(report.sharded_raw_bytes, raw.len() as u64);
        // Both bound for cold with a cold store: packed as it is, not
        // queued.
        transact(&store, |t| {
            t.set(&keys::xattr(1, XATTR.as_bytes()), b"cold");
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let report = pass(&store, &clock, true, &worker).unwrap();
        assert_eq!(report.chunks_left, 2);
        assert!(report.sharded.is_empty());
    }

    #[test]
    fn a_record_changed_meanwhile_is_left_to_the_next_pass() {
        let store = MemStore::default();
        let raw = source_text(9);
        let clock = TierClock::system();
        let fp = file(&store, 1, &raw, clock.today() - 100, None);
        let rec = record(&store, &fp);
        let mut recompressor = Recompressor::new(&store).unwrap();
        let new = moved(&fp, &rec, TierRecord::Cold, None, &mut recompressor).unwrap();
        // Someone else rewrites the record between plan and write.
        transact(&store, |t| {
            let mut other = rec.clone();
            other.verified = true;
            put_record(t, &keys::hash(&fp), &other);
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let written = transact(&store, |t| {
            Ok::<_, MetaError>(
                get_record::<ChunkRecord>(t, &keys::hash(&fp))?.as_ref() == Some(&rec),
            )
        })
        .unwrap();
        assert!(!written, "the plan no longer matches");
        assert_ne!(new.codec(), rec.codec());
        // The pass sees the record as it is now and moves it.
        let worker = Worker::new("tiering", "files");
        assert_eq!(
            pass(&store, &clock, false, &worker).unwrap().chunks_moved,
            1
        );
        assert!(record(&store, &fp).verified, "the other change is kept");
    }

    #[test]
    fn a_file_without_its_own_policy_follows_the_nearest_directory_above() {
        let store = MemStore::default();
        let clock = TierClock::system();
        let raw = source_text(5);
        // File 30 in directory 20 in directory 10 (in the root); only 10
        // has a policy, set after the file was made.
        let fp = file(&store, 30, &raw, clock.today() - 5, None);
        transact(&store, |t| {
            t.set(&keys::backref(30, 20, b"f"), b"");
            t.set(&keys::backref(20, 10, b"sub"), b"");
            t.set(&keys::backref(10, crate::namespace::ROOT_INO, b"top"), b"");
            t.set(&keys::xattr(10, XATTR.as_bytes()), b"warm=1d,cold=3d");
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let policy = read_only(&store, |t| policy_of(t, 30)).unwrap();
        assert_eq!(policy, TierPolicy::parse("warm=1d,cold=3d").unwrap());
        // Five days idle: cold by the directory's policy (the default
        // would keep it hot for seven).
        let worker = Worker::new("tiering", "files");
        pass(&store, &clock, false, &worker).unwrap();
        assert_eq!(record(&store, &fp).tier(), TierRecord::Cold);
        // Nothing anywhere: the default.
        let none = read_only(&store, |t| policy_of(t, 999)).unwrap();
        assert_eq!(none, TierPolicy::volume_default());
    }
}
