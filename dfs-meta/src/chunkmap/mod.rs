//! File chunk maps (`C ino offset`) and the dedup index (`H fingerprint`).
//!
//! A chunk-map commit replaces the entries that start inside given byte
//! ranges, sets the file size, and moves reference counts, all in the
//! caller's transaction. A chunk the client believes known but that is
//! missing or marked dead (garbage collection got there first) fails the
//! commit with `MissingChunks`, and the client uploads it and commits again:
//! this closes the race between dedup and GC described in doc/design.md.

use dfs_proto::{
    ChunkMapReply, ChunkRecord, ChunkRefRecord, ChunkState, CommitChunksRequest, DeadChunk,
    FileKind, GcMarkReply, InodeRecord, MappedChunk, Standing, StatsReply,
};
use prost::Message;
use std::collections::HashSet;

use dfs_core::erasure;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::inline;

use crate::error::{MetaError, Result};
use crate::inodes::{get_inode, put_inode};
use crate::keys;
use crate::store::{decode_counter, get_record, get_records, put_record, KvTxn};

/// Largest chunk a client may commit (FastCDC's maximum).
pub const MAX_CHUNK_LEN: u32 = 128 * 1024;
const FINGERPRINT_LEN: usize = 32;

/// Drops one reference, by an atomic add: no read, so concurrent writers
/// and removers of the same chunk never conflict over the count. (Garbage
/// collection reads the count before it marks an entry dead, and so does
/// conflict with a concurrent increment, as it must.)
fn decref(txn: &mut dyn KvTxn, fingerprint: &[u8]) -> Result<()> {
    txn.atomic_add(&keys::refs(fingerprint), -1)?;
    Ok(())
}

/// Chunk-map entries one transaction removes at most. Each also rewrites
/// its dedup record (~150 bytes), so a batch stays far below
/// FoundationDB's 10 MB and 5 s limits, and short on the embedded store.
pub const PURGE_BATCH: usize = 1000;

/// Removes up to `limit` chunk-map entries of `ino` (from the start),
/// dropping their references. Returns true when none are left.
pub fn purge_some(txn: &mut dyn KvTxn, ino: u64, limit: usize) -> Result<bool> {
    Ok(!remove_range(txn, ino, 0, u64::MAX, limit)?.1)
}

/// Removes the entries that start in `[start, end)`, at most `limit` of
/// them (0: all); returns the end of the last one removed and whether any
/// were left over.
fn remove_range(
    txn: &mut dyn KvTxn,
    ino: u64,
    start: u64,
    end: u64,
    limit: usize,
) -> Result<(Option<u64>, bool)> {
    let begin = keys::chunk(ino, start);
    let stop = if end == u64::MAX {
        keys::prefix_end(&keys::chunk_prefix(ino))
    } else {
        keys::chunk(ino, end)
    };
    let rows = txn.range(&begin, &stop, if limit == 0 { 0 } else { limit + 1 }, false)?;
    let left_over = limit != 0 && rows.len() > limit;
    let mut last_end = None;
    for (key, value) in rows.iter().take(if left_over { limit } else { rows.len() }) {
        let rec = ChunkRefRecord::decode(value.as_slice())?;
        decref(txn, &rec.fingerprint)?;
        txn.clear(key);
        let offset =
            keys::chunk_offset(key).ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
        last_end = Some(offset + u64::from(rec.len));
    }
    Ok((last_end, left_over))
}

/// One bounded step of releasing what a file no longer uses: the entries
/// at or past its size (all of them once the inode is gone). Clears the
/// file's trash marker when nothing is left; returns true then.
pub fn purge_tail_step(txn: &mut dyn KvTxn, ino: u64, limit: usize) -> Result<bool> {
    let from = get_record::<InodeRecord>(txn, &keys::inode(ino))?.map_or(0, |i| i.size);
    let (_, left_over) = remove_range(txn, ino, from, u64::MAX, limit)?;
    if !left_over {
        txn.clear(&keys::trash(ino));
    }
    Ok(!left_over)
}

/// Checks a commit request before it touches anything, so a malformed
/// request can never leave a file with overlapping or dangling chunks.
fn validate(req: &CommitChunksRequest) -> Result<()> {
    let bad = |m: String| Err(MetaError::Invalid(m));
    for r in &req.replaced {
        if r.start >= r.end {
            return bad(format!("empty replaced range {}..{}", r.start, r.end));
        }
    }
    let mut prev_end = 0u64;
    let mut inline_bytes = 0usize;
    for (i, c) in req.chunks.iter().enumerate() {
        if c.fingerprint.len() != FINGERPRINT_LEN {
            return bad(format!(
                "chunk {i}: fingerprint of {} bytes",
                c.fingerprint.len()
            ));
        }
        if c.len == 0 || c.len > MAX_CHUNK_LEN {
            return bad(format!("chunk {i}: length {}", c.len));
        }
        let end = c
            .offset
            .checked_add(u64::from(c.len))
            .ok_or_else(|| MetaError::Invalid("chunk offset overflows".into()))?;
        if i > 0 && c.offset < prev_end {
            return bad(format!(
                "chunk {i} at {} overlaps the previous one",
                c.offset
            ));
        }
        if !req
            .replaced
            .iter()
            .any(|r| r.start <= c.offset && end <= r.end)
        {
            return bad(format!(
                "chunk {i} at {} lies outside every replaced range",
                c.offset
            ));
        }
        if end > req.new_size {
            return bad(format!(
                "chunk {i} ends at {end}, past the new size {}",
                req.new_size
            ));
        }
        if c.uploaded
            .as_ref()
            .is_some_and(|up| up.is_packed() || up.packed.is_some())
        {
            // Only dfs-meta's tiering writes pack locations.
            return bad(format!("chunk {i}: a client cannot upload a packed chunk"));
        }
        if c.uploaded.as_ref().is_some_and(|up| up.dictionary != 0) {
            // Only dfs-meta's tiering compresses with dictionaries.
            return bad(format!(
                "chunk {i}: a client cannot upload a chunk compressed with a dictionary"
            ));
        }
        if let Some(up) = c.uploaded.as_ref().filter(|up| up.is_inline()) {
            inline::check_shape(up, inline::MAX_INLINE_BYTES)
                .map_err(|e| MetaError::Invalid(format!("chunk {i}: {e}")))?;
            if up.raw_len != c.len {
                return bad(format!("chunk {i}: inline record of another length"));
            }
            inline_bytes += up.inline_data.len();
            if inline_bytes > inline::MAX_INLINE_PER_COMMIT {
                return bad(format!(
                    "more than {} inline bytes in one commit",
                    inline::MAX_INLINE_PER_COMMIT
                ));
            }
        } else if let Some(up) = &c.uploaded {
            // The record becomes the chunk's index entry for good: a layout
            // no reader accepts (0 when invalid, at most 256 shards) or
            // bytes riding along outside an inline layout would be kept.
            let shards = erasure::shard_count(&up.layout.unwrap_or_default());
            if shards == 0 || up.shard_servers.len() != shards || up.raw_len != c.len {
                return bad(format!(
                    "chunk {i}: uploaded record does not match its layout"
                ));
            }
            if !up.inline_data.is_empty() {
                return bad(format!("chunk {i}: inline bytes in a record with shards"));
            }
        }
        prev_end = end;
    }
    Ok(())
}

/// Decodes every inline chunk of a commit and checks it is the chunk its
/// fingerprint names, so no client can make the index hand out bytes that
/// are not the chunk (dedup poisoning) through an inline entry. Run before
/// the transaction: it is CPU work (decompression and SHA-256, a few
/// microseconds per KiB) that should not hold the store.
pub fn verify_inline(req: &CommitChunksRequest) -> Result<()> {
    for (i, c) in req.chunks.iter().enumerate() {
        let Some(up) = c.uploaded.as_ref().filter(|up| up.is_inline()) else {
            continue;
        };
        // Decoding allocates the raw length: bound it before, as the
        // commit's own validation does later.
        if up.raw_len != c.len || c.len > MAX_CHUNK_LEN {
            return Err(MetaError::Invalid(format!(
                "chunk {i}: inline record of {} raw bytes for a chunk of {}",
                up.raw_len, c.len
            )));
        }
        let fp = Fingerprint::from_slice(&c.fingerprint)
            .map_err(|e| MetaError::Invalid(format!("chunk {i}: {e}")))?;
        inline::decode(&fp, up, None).map_err(|e| MetaError::Invalid(format!("chunk {i}: {e}")))?;
    }
    Ok(())
}

/// The volume's `inline_max_bytes`, read only for a commit that carries
/// inline chunks (a store without a volume record, in unit tests: the
/// default).
fn inline_max_bytes(txn: &mut dyn KvTxn, req: &CommitChunksRequest) -> Result<usize> {
    let carries_inline = req
        .chunks
        .iter()
        .any(|c| c.uploaded.as_ref().is_some_and(|up| up.is_inline()));
    if !carries_inline {
        return Ok(inline::DEFAULT_INLINE_MAX as usize);
    }
    Ok(get_record::<dfs_proto::VolumeConfig>(txn, &keys::volume())?
        .map_or(inline::DEFAULT_INLINE_MAX, |v| v.inline_max_bytes) as usize)
}

/// Raw bytes of inline chunks a commit carries: past a little, verifying
/// them is worth a blocking thread.
pub fn inline_raw_bytes(req: &CommitChunksRequest) -> usize {
    req.chunks
        .iter()
        .filter_map(|c| c.uploaded.as_ref().filter(|up| up.is_inline()))
        .map(|up| up.raw_len as usize)
        .sum()
}

/// Commits `req` for the writer whose certificate is `owner` (empty: no
/// certificate). An index entry another identity uploaded and dfs-meta has
/// not checked is never referenced: the caller (`service`) checks it
/// first, and a commit that still finds one is asked to retry.
pub fn commit(
    txn: &mut dyn KvTxn,
    req: &CommitChunksRequest,
    now_ns: i64,
    owner: &[u8],
) -> Result<InodeRecord> {
    commit_checked(txn, req, now_ns, owner, &HashSet::new(), 0)
}

/// [`commit`], where `checked` names the chunks whose uploads in `req`
/// the caller read back and found to be their chunk. An upload that is to
/// replace an entry found not to be its chunk (`Standing::Failed`) must be
/// among them: dfs-meta deleted that entry's shards by their uploader, and
/// some of them may be keys this upload found holding the same bytes and
/// so left as they were (see `ShardStore::put_batch_with`). `access_day`:
/// the day the write counts as the file's last access (0: not tracked).
pub fn commit_checked(
    txn: &mut dyn KvTxn,
    req: &CommitChunksRequest,
    now_ns: i64,
    owner: &[u8],
    checked: &HashSet<Vec<u8>>,
    access_day: u32,
) -> Result<InodeRecord> {
    validate(req)?;
    let inline_max = inline_max_bytes(txn, req)?;
    let mut inode = get_inode(txn, req.ino)?;
    match inode.kind() {
        FileKind::Regular => {}
        FileKind::Directory => return Err(MetaError::IsDir),
        _ => return Err(MetaError::Invalid("not a regular file".into())),
    }
    // Resolve the new chunks first: decrements below may bring a chunk to
    // zero that this same commit references again, which is fine.
    // One read of every dedup record, all in flight at once.
    let hash_keys: Vec<Vec<u8>> = req
        .chunks
        .iter()
        .map(|c| keys::hash(&c.fingerprint))
        .collect();
    let existing = get_records::<ChunkRecord>(txn, &hash_keys)?;
    let standing: Vec<Standing> = existing
        .iter()
        .map(|r| {
            r.as_ref()
                .map_or(Standing::Absent, |r| r.standing_for(owner))
        })
        .collect();
    let mut missing = Vec::new();
    let mut unchecked = Vec::new();
    let mut replacing_failed = Vec::new();
    for (c, &standing) in req.chunks.iter().zip(&standing) {
        match (standing, &c.uploaded) {
            (Standing::Failed, Some(up))
                if !up.is_inline() && !checked.contains(&c.fingerprint) =>
            {
                replacing_failed.push(c.fingerprint.clone())
            }
            (Standing::Usable, _) | (Standing::Absent | Standing::Failed, Some(_)) => {}
            (Standing::Unchecked, Some(_)) => unchecked.push(c.fingerprint.clone()),
            (_, None) => missing.push(c.fingerprint.clone()),
        }
    }
    if !unchecked.is_empty() {
        unchecked.sort();
        unchecked.dedup();
        return Err(MetaError::Unchecked(unchecked));
    }
    if !replacing_failed.is_empty() {
        replacing_failed.sort();
        replacing_failed.dedup();
        return Err(MetaError::ReplacesFailed(replacing_failed));
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(MetaError::MissingChunks(missing));
    }
    // Entries past the size are dead (a truncation is still releasing
    // them): before the file grows over them they must be gone, or they
    // would reappear inside what must read as a hole. Only those the file
    // grows over: the rest stay past the size for the purge worker.
    let new_size = if req.truncate {
        req.new_size
    } else {
        req.new_size.max(inode.size)
    };
    if new_size > inode.size && txn.get(&keys::trash(req.ino))?.is_some() {
        let (_, left_over) = remove_range(txn, req.ino, inode.size, new_size, PURGE_BATCH)?;
        if left_over {
            return Err(MetaError::Busy(
                "a truncation of this file is still being cleaned up".into(),
            ));
        }
    }
    let mut tail_left = false;
    for r in &req.replaced {
        // A chunk starting before the range must end at or before it, or the
        // replacement would overlap it.
        if r.start > 0 {
            let prefix_start = keys::chunk(req.ino, 0);
            let before = txn.range(&prefix_start, &keys::chunk(req.ino, r.start), 1, true)?;
            if let Some((k, v)) = before.first() {
                let off =
                    keys::chunk_offset(k).ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
                let rec = ChunkRefRecord::decode(v.as_slice())?;
                if off + u64::from(rec.len) > r.start {
                    return Err(MetaError::Invalid(format!(
                        "replaced range starts at {} inside a chunk",
                        r.start
                    )));
                }
            }
        }
        // An open-ended range (a truncation) releases a bounded number of
        // entries now and leaves the rest, past the new size and so
        // invisible, to the purge worker.
        let limit = if r.end == u64::MAX { PURGE_BATCH } else { 0 };
        let (last_end, left_over) = remove_range(txn, req.ino, r.start, r.end, limit)?;
        if left_over {
            tail_left = true;
            txn.set(&keys::trash(req.ino), &[]);
        }
        if let Some(last_end) = last_end {
            if r.end != u64::MAX && last_end > r.end {
                return Err(MetaError::Invalid(format!(
                    "replaced range ends at {} inside a chunk",
                    r.end
                )));
            }
        }
    }
    // Chunks this commit recorded: live for their later occurrences.
    let mut created = std::collections::HashSet::new();
    for (i, c) in req.chunks.iter().enumerate() {
        let usable = standing[i] == Standing::Usable || created.contains(c.fingerprint.as_slice());
        match (usable, &c.uploaded) {
            (true, _) => {}
            // None yet, a dead one, or one found not to be the chunk: this
            // upload becomes the entry (keeping the reference count).
            (false, Some(up)) => {
                let rec = ChunkRecord {
                    refcount: 0,
                    state: ChunkState::Live as i32,
                    zero_since_ns: 0,
                    dead_since_ns: 0,
                    owner: owner.to_vec(),
                    // Inline bytes were checked against the fingerprint.
                    verified: up.is_inline() || checked.contains(&c.fingerprint),
                    verification_failed: false,
                    ..up.clone()
                };
                if let Some(old) = existing[i].as_ref() {
                    crate::cold::release_packed(txn, old)?;
                }
                if rec.is_inline() && rec.inline_data.len() > inline_max {
                    // Staged by a small flush: the staging worker moves it
                    // to the chunk servers (`maintenance::staged`).
                    txn.set(
                        &keys::staged(&c.fingerprint),
                        &dfs_core::time::now_ns().to_le_bytes(),
                    );
                }
                put_record(txn, &hash_keys[i], &rec);
                created.insert(c.fingerprint.as_slice());
            }
            (_, None) => return Err(MetaError::MissingChunks(vec![c.fingerprint.clone()])),
        }
        txn.atomic_add(&keys::refs(&c.fingerprint), 1)?;
        put_record(
            txn,
            &keys::chunk(req.ino, c.offset),
            &ChunkRefRecord {
                len: c.len,
                fingerprint: c.fingerprint.clone(),
            },
        );
    }
    // Chunks between the new and the old size must go with the tail (or be
    // left, past the size, to the purge worker).
    if new_size < inode.size && !tail_left {
        let doomed = txn.range(
            &keys::chunk(req.ino, new_size),
            &keys::chunk(req.ino, inode.size),
            1,
            false,
        )?;
        if !doomed.is_empty() {
            return Err(MetaError::Invalid(format!(
                "chunks remain past the new size {}; replace them in the same commit",
                new_size
            )));
        }
    }
    if new_size < inode.size {
        // No chunk may straddle the new end: its tail would reappear if the
        // file grew again.
        let before = txn.range(
            &keys::chunk(req.ino, 0),
            &keys::chunk(req.ino, new_size),
            1,
            true,
        )?;
        if let Some((k, v)) = before.first() {
            let off =
                keys::chunk_offset(k).ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
            if off + u64::from(ChunkRefRecord::decode(v.as_slice())?.len) > new_size {
                return Err(MetaError::Invalid(format!(
                    "a chunk straddles the new size {new_size}"
                )));
            }
        }
    }
    inode.size = new_size;
    inode.data_version += 1;
    let mtime = if req.mtime_ns != 0 {
        req.mtime_ns
    } else {
        now_ns
    };
    inode.mtime_ns = mtime;
    inode.ctime_ns = now_ns.max(mtime);
    // A write is an access (`access`, at most one index move a day), and
    // its new chunks are hot: the tiering worker looks at the file again.
    if access_day != 0 {
        crate::access::touch(txn, &mut inode, access_day);
    }
    inode.set_tier(dfs_proto::Tier::Hot);
    put_inode(txn, &inode);
    Ok(inode)
}

/// Garbage collection, step 1, over at most `limit` index entries after
/// `after`: an entry whose count is at or below zero is stamped with the
/// time that was first seen, and declared dead once it has stayed there for
/// `grace_ns`; a count above zero clears the stamp. Dead entries (new and
/// from earlier passes) are returned for their shards to be deleted. A
/// commit that references a dead entry must upload the chunk again (see
/// `commit`), and the count is read here in the same transaction as the
/// state change, so a concurrent reference is never lost.
pub fn gc_mark(
    txn: &mut dyn KvTxn,
    after: &[u8],
    limit: usize,
    grace_ns: i64,
    now_ns: i64,
) -> Result<GcMarkReply> {
    let (begin, end) = keys::tag_range(keys::HASH);
    let start = if after.is_empty() {
        begin
    } else {
        let mut k = keys::hash(after);
        k.push(0);
        k
    };
    let limit = limit.clamp(1, PURGE_BATCH);
    let rows = txn.range(&start, &end, limit + 1, false)?;
    let more = rows.len() > limit;
    let mut reply = GcMarkReply::default();
    for (key, value) in rows.into_iter().take(limit) {
        reply.scanned += 1;
        let fingerprint = key[1..].to_vec();
        let mut rec = ChunkRecord::decode(value.as_slice())?;
        if rec.state() == ChunkState::Dead {
            reply.dead.push(DeadChunk {
                fingerprint: fingerprint.clone(),
                record: Some(rec),
            });
            reply.next_fingerprint = fingerprint;
            continue;
        }
        let refs = decode_counter(txn.get(&keys::refs(&fingerprint))?.as_deref());
        if refs > 0 {
            if rec.zero_since_ns != 0 {
                rec.zero_since_ns = 0;
                put_record(txn, &key, &rec);
            }
        } else {
            if rec.zero_since_ns == 0 {
                rec.zero_since_ns = now_ns;
            }
            if now_ns.saturating_sub(rec.zero_since_ns) >= grace_ns {
                rec.state = ChunkState::Dead as i32;
                rec.dead_since_ns = now_ns;
                reply.dead.push(DeadChunk {
                    fingerprint: fingerprint.clone(),
                    record: Some(rec.clone()),
                });
            } else {
                reply.waiting += 1;
            }
            put_record(txn, &key, &rec);
        }
        reply.next_fingerprint = fingerprint;
    }
    if !more {
        reply.next_fingerprint.clear();
    }
    Ok(reply)
}

/// Garbage collection, step 3: removes the entries that are still dead
/// once their shards are gone. One revived by a commit meanwhile (it
/// uploaded the chunk again) is left alone. Returns how many went.
pub fn gc_finish(txn: &mut dyn KvTxn, fingerprints: &[Vec<u8>]) -> Result<u64> {
    let mut removed = 0;
    for fp in fingerprints.iter().take(PURGE_BATCH) {
        let key = keys::hash(fp);
        let Some(rec) = get_record::<ChunkRecord>(txn, &key)? else {
            continue;
        };
        if rec.state() != ChunkState::Dead {
            continue;
        }
        txn.clear(&key);
        crate::cold::release_packed(txn, &rec)?;
        let refs = keys::refs(fp);
        if decode_counter(txn.get(&refs)?.as_deref()) <= 0 {
            txn.clear(&refs);
        }
        removed += 1;
    }
    Ok(removed)
}

/// For each fingerprint, its live dedup entry if there is one.
pub fn lookup_chunks(
    txn: &mut dyn KvTxn,
    fingerprints: &[Vec<u8>],
) -> Result<Vec<Option<ChunkRecord>>> {
    let hash_keys: Vec<Vec<u8>> = fingerprints.iter().map(|fp| keys::hash(fp)).collect();
    Ok(get_records::<ChunkRecord>(txn, &hash_keys)?
        .into_iter()
        .map(|rec| rec.filter(|r| r.state() == ChunkState::Live))
        .collect())
}

/// [`lookup_chunks`], and for each fingerprint whose entry is dead, when
/// it was declared dead (0 for the others): its leftover shards, written
/// before then, are garbage a new upload may replace.
pub fn lookup_chunks_and_deaths(
    txn: &mut dyn KvTxn,
    fingerprints: &[Vec<u8>],
) -> Result<(Vec<Option<ChunkRecord>>, Vec<i64>)> {
    let hash_keys: Vec<Vec<u8>> = fingerprints.iter().map(|fp| keys::hash(fp)).collect();
    let mut live = Vec::with_capacity(fingerprints.len());
    let mut dead_since = Vec::with_capacity(fingerprints.len());
    for rec in get_records::<ChunkRecord>(txn, &hash_keys)? {
        match rec {
            Some(r) if r.state() == ChunkState::Dead => {
                dead_since.push(r.dead_since_ns);
                live.push(None);
            }
            other => {
                dead_since.push(0);
                live.push(other);
            }
        }
    }
    Ok((live, dead_since))
}

/// Inline bytes after which a chunk-map page ends.
const CHUNK_MAP_INLINE_PAGE: usize = 4 * 1024 * 1024;

/// The reply to a chunk-map request whose client keeps the map of the
/// file's current data version (`unless_data_version`): that, with no
/// chunks. `None`: the map is to be read.
pub fn unchanged(
    txn: &mut dyn KvTxn,
    ino: u64,
    req: &dfs_proto::ChunkMapRequest,
) -> Result<Option<ChunkMapReply>> {
    if req.unless_data_version == 0 || req.from_offset != 0 {
        return Ok(None);
    }
    let inode = get_inode(txn, ino)?;
    Ok(
        (inode.data_version == req.unless_data_version).then(|| ChunkMapReply {
            size: inode.size,
            data_version: inode.data_version,
            unchanged: true,
            ..ChunkMapReply::default()
        }),
    )
}

pub fn chunk_map(txn: &mut dyn KvTxn, ino: u64, from: u64, limit: usize) -> Result<ChunkMapReply> {
    let inode = get_inode(txn, ino)?;
    let limit = limit.clamp(1, 20_000);
    let prefix = keys::chunk_prefix(ino);
    // Start at the chunk that covers `from` (the last one starting at or
    // before it), not only those starting after it.
    let mut begin = keys::chunk(ino, from);
    if from > 0 {
        let through = keys::chunk(ino, from.saturating_add(1));
        if let Some((k, _)) = txn.range(&prefix, &through, 1, true)?.first() {
            begin = k.clone();
        }
    }
    // Entries at or past the size are dead (a truncation still releasing
    // them): a live chunk always ends by the size.
    let rows = txn.range(&begin, &keys::chunk(ino, inode.size), limit + 1, false)?;
    let mut more = rows.len() > limit;
    let mut chunks = Vec::with_capacity(rows.len().min(limit));
    let mut inline_bytes = 0usize;
    for (key, value) in rows.into_iter().take(limit) {
        // Inline chunks carry their bytes: a page ends once it holds a few
        // MiB of them (the reader asks for the next one).
        if inline_bytes >= CHUNK_MAP_INLINE_PAGE {
            more = true;
            break;
        }
        let r = ChunkRefRecord::decode(value.as_slice())?;
        let offset =
            keys::chunk_offset(&key).ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
        let chunk =
            get_record::<ChunkRecord>(txn, &keys::hash(&r.fingerprint))?.ok_or_else(|| {
                MetaError::Corrupt(format!(
                    "chunk {} of inode {ino} has no index entry",
                    hex::encode(&r.fingerprint)
                ))
            })?;
        inline_bytes += chunk.inline_data.len();
        chunks.push(MappedChunk {
            shard_tokens: Default::default(),
            offset,
            len: r.len,
            fingerprint: r.fingerprint,
            chunk: Some(chunk),
        });
    }
    Ok(ChunkMapReply {
        chunks,
        more,
        size: inode.size,
        data_version: inode.data_version,
        unchanged: false,
    })
}

/// Space figures computed from the dedup index itself: logical bytes are
/// what files reference (every reference counts), unique bytes count each
/// distinct chunk once, stored bytes are after compression.
pub fn stats(txn: &mut dyn KvTxn) -> Result<StatsReply> {
    let (begin, end) = keys::tag_range(keys::HASH);
    let mut out = StatsReply::default();
    let inline_max = get_record::<dfs_proto::VolumeConfig>(txn, &keys::volume())?
        .map_or(inline::DEFAULT_INLINE_MAX, |v| v.inline_max_bytes);
    let mut cursor = begin;
    loop {
        let rows = txn.range(&cursor, &end, 10_000, false)?;
        let (Some((first, _)), Some((last, _))) = (rows.first(), rows.last()) else {
            break;
        };
        // The counts of this page's chunks, in one range read: `R` keys
        // sort like `H` keys.
        let mut refs_end = keys::refs(&last[1..]);
        refs_end.push(0);
        let counts: std::collections::HashMap<Vec<u8>, i64> = txn
            .range(&keys::refs(&first[1..]), &refs_end, 0, false)?
            .into_iter()
            .map(|(k, v)| (k[1..].to_vec(), decode_counter(Some(&v))))
            .collect();
        let mut next = last.clone();
        next.push(0);
        for (key, value) in &rows {
            let rec = ChunkRecord::decode(value.as_slice())?;
            let refs = counts.get(&key[1..]).copied().unwrap_or(0);
            if refs <= 0 {
                out.unreferenced_chunks += 1;
                out.unreferenced_bytes += u64::from(rec.raw_len);
                continue;
            }
            out.chunks += 1;
            out.logical_bytes += refs as u64 * u64::from(rec.raw_len);
            out.unique_bytes += u64::from(rec.raw_len);
            out.stored_bytes += u64::from(rec.stored_len);
            if rec.is_inline() {
                out.inline_chunks += 1;
                out.inline_bytes += u64::from(rec.stored_len);
                if rec.inline_data.len() > inline_max as usize {
                    out.staged_chunks += 1;
                    out.staged_bytes += u64::from(rec.stored_len);
                }
            }
            if rec.is_packed() {
                out.packed_chunks += 1;
                out.packed_bytes += u64::from(rec.stored_len);
            }
            if rec.dictionary != 0 {
                out.dictionary_chunks += 1;
                out.dictionary_bytes += u64::from(rec.stored_len);
            }
            match rec.tier() {
                dfs_proto::Tier::Hot => out.hot_bytes += u64::from(rec.stored_len),
                dfs_proto::Tier::Warm => out.warm_bytes += u64::from(rec.stored_len),
                dfs_proto::Tier::Cold => out.cold_bytes += u64::from(rec.stored_len),
            }
        }
        cursor = next;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
