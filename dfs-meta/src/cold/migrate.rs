//! Moving cold files' chunks into packs (the cold half of the `tiering`
//! worker, when a cold store is configured).
//!
//! A pass walks the access index like the warm half; a file whose policy
//! says cold has each chunk not yet packed read (inline: from its record;
//! on chunk servers: its shards, decoded and checked against the
//! fingerprint), in file order, into frames, and frames into a pack. A
//! full pack (or the pass's end) is written, then its chunks' records
//! switch to it, each only if it is as read (a repair, a GC or a new
//! upload meanwhile wins; the chunk waits for the next pass). A file all
//! of whose chunks are packed, unchanged since it was read, is cold.
//!
//! Every step leaves the volume readable: before the switch the chunk is
//! where it was; after it, in a pack whose object is already durable. The
//! shards it leaves are orphans for GC; a pack whose object was never
//! used (a crash between PUT and switch, or nothing switched) is deleted
//! by [`Migration::collect_packs`] in a later pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dfs_core::dictionary::Dictionary;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::time::now_ns;
use dfs_core::workers::Worker;
use dfs_proto::{
    ChunkRecord, ChunkState, InodeRecord, Layout, PackRecord, PackState, PackedLocation,
    Tier as TierRecord,
};
use prost::Message;

use super::pack::{object_name, stored_share, Frame, PackBuilder, PackSizes, Placed};
use super::{blocking, ColdStore};
use crate::access::{accessed_before, days_between, TierClock};
use crate::error::{MetaError, Result};
use crate::inodes::put_inode;
use crate::keys;
use crate::maintenance::Maintenance;
use crate::store::{
    decode_counter, get_record, get_records, put_record, read_only, transact, MetaStore,
};
use crate::tiering::{fingerprints_of, policy_of};

/// Files read from the access index per transaction.
const FILES_PER_PAGE: usize = 256;
/// Chunk records read, or switched to a pack, per transaction.
const RECORDS_PER_TXN: usize = 500;
/// A pack still `writing` this long after it was named was left by a
/// crash (a PUT of [`PACK_BYTES`] takes far less): it is deleted.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);
/// Pack records looked at per transaction when collecting.
const PACKS_PER_PAGE: usize = 1000;

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ColdReport {
    /// Files whose policy made them cold, not cold yet.
    pub files: u64,
    /// Files all of whose chunks are now packed.
    pub files_moved: u64,
    pub chunks_packed: u64,
    /// Raw bytes of the chunks packed, and the bytes of the packs written.
    pub raw_bytes: u64,
    pub pack_bytes: u64,
    pub packs_written: u64,
    /// Packs deleted: abandoned by a crash, or all their chunks gone.
    pub packs_deleted: u64,
    /// Chunks that could not be read (servers down): next pass.
    pub chunks_unreadable: u64,
}

/// A cold file waiting for its chunks to be switched.
struct FilePlan {
    ino: u64,
    data_version: u64,
    needs: Vec<Vec<u8>>,
}

/// The record as read, to switch only if it is still so.
pub(super) fn digest(rec: &ChunkRecord) -> [u8; 32] {
    Fingerprint::of(&rec.encode_to_vec()).0
}

/// `current`, moved into a pack at `location`.
fn packed_record(current: &ChunkRecord, location: PackedLocation) -> ChunkRecord {
    let mut rec = current.clone();
    rec.layout = Some(Layout {
        packed: true,
        ..Layout::default()
    });
    rec.shard_servers.clear();
    rec.shard_len = 0;
    rec.inline_data.clear();
    rec.dictionary = 0;
    rec.codec = location.frame_codec;
    rec.stored_len = stored_share(&location, rec.raw_len);
    rec.set_tier(TierRecord::Cold);
    // dfs-meta read it back and checked the fingerprint on the way.
    rec.verified = true;
    rec.verification_failed = false;
    rec.packed = Some(location);
    rec
}

fn cold_error(e: super::ColdError) -> MetaError {
    MetaError::ColdStore(e.to_string())
}

/// One pass's state.
pub struct Migration {
    store: Arc<dyn MetaStore>,
    maintenance: Arc<Maintenance>,
    cold: Arc<ColdStore>,
    sizes: PackSizes,
    frame: Frame,
    pack: PackBuilder,
    /// Chunks in `frame` or `pack`, with their records as read.
    pending: HashMap<Vec<u8>, [u8; 32]>,
    /// Chunks switched to a pack in this pass.
    switched: HashSet<Vec<u8>>,
    files: Vec<FilePlan>,
    /// The volume's compression dictionaries, for inline chunks naming one.
    dictionaries: HashMap<u64, Arc<Dictionary>>,
    pub report: ColdReport,
}

impl Migration {
    pub fn new(
        store: Arc<dyn MetaStore>,
        maintenance: Arc<Maintenance>,
        cold: Arc<ColdStore>,
    ) -> Self {
        Self {
            store,
            maintenance,
            cold,
            sizes: PackSizes::default(),
            frame: Frame::default(),
            pack: PackBuilder::default(),
            pending: HashMap::new(),
            switched: HashSet::new(),
            files: Vec::new(),
            dictionaries: HashMap::new(),
            report: ColdReport::default(),
        }
    }

    /// Frames and packs of `sizes` instead of the defaults.
    pub fn with_sizes(mut self, sizes: PackSizes) -> Self {
        self.sizes = sizes;
        self
    }

    /// One pass over the files not accessed before `clock`'s today.
    pub async fn pass(mut self, clock: &TierClock, worker: &Worker) -> Result<ColdReport> {
        self.collect_packs().await?;
        self.dictionaries =
            blocking(&self.store, |s| read_only(s, crate::dictionary::load_all)).await?;
        let today = clock.today();
        let mut after = None;
        loop {
            let page = blocking(&self.store, move |s| {
                read_only(s, |t| accessed_before(t, today, after, FILES_PER_PAGE))
            })
            .await?;
            let Some(&last) = page.last() else {
                break;
            };
            for &(day, ino) in &page {
                self.file(ino, days_between(day, today)).await?;
                worker.advance(1);
            }
            after = Some(last);
        }
        self.seal().await?;
        Ok(self.report)
    }

    /// Plans file `ino`, idle for `age_days`: its chunks not packed yet go
    /// into the pack being built.
    async fn file(&mut self, ino: u64, age_days: u32) -> Result<()> {
        let idle = Duration::from_secs(u64::from(age_days) * 86_400);
        let plan = blocking(&self.store, move |s| {
            read_only(s, |t| {
                let Some(inode) = get_record::<InodeRecord>(t, &keys::inode(ino))? else {
                    return Ok::<_, MetaError>(None);
                };
                let target = policy_of(t, ino)?.tier_after(idle);
                Ok(Some((inode.tier(), inode.data_version, target)))
            })
        })
        .await?;
        let Some((current, data_version, target)) = plan else {
            return Ok(());
        };
        if target != dfs_core::tier::Tier::Cold || current == TierRecord::Cold {
            return Ok(());
        }
        self.report.files += 1;
        let fingerprints = blocking(&self.store, move |s| fingerprints_of(s, ino)).await?;
        let mut needs = Vec::new();
        for batch in fingerprints.chunks(RECORDS_PER_TXN) {
            let hash_keys: Vec<Vec<u8>> = batch.iter().map(|fp| keys::hash(fp)).collect();
            let records = blocking(&self.store, move |s| {
                read_only(s, |t| get_records::<ChunkRecord>(t, &hash_keys))
            })
            .await?;
            for (fp, rec) in batch.iter().zip(records) {
                let Some(rec) = rec.filter(|r| r.state() == ChunkState::Live) else {
                    continue;
                };
                if rec.is_packed() {
                    continue;
                }
                needs.push(fp.clone());
                if self.pending.contains_key(fp) || self.switched.contains(fp) {
                    continue;
                }
                match self.raw_of(fp, &rec).await {
                    Ok(raw) => self.add(fp.clone(), digest(&rec), raw).await?,
                    Err(why) => {
                        tracing::warn!(ino, chunk = %hex::encode(fp), error = %why, "tiering: a chunk cannot be read to pack it; next pass");
                        self.report.chunks_unreadable += 1;
                    }
                }
            }
        }
        self.files.push(FilePlan {
            ino,
            data_version,
            needs,
        });
        Ok(())
    }

    /// A chunk's raw bytes, checked against its fingerprint.
    async fn raw_of(&self, fp: &[u8], rec: &ChunkRecord) -> std::result::Result<Vec<u8>, String> {
        let id = Fingerprint::from_slice(fp).map_err(|e| e.to_string())?;
        if rec.is_inline() {
            let dictionary = self.dictionaries.get(&rec.dictionary);
            return dfs_core::inline::decode(&id, rec, dictionary.map(|d| d.as_ref()))
                .map_err(|e| e.to_string());
        }
        self.maintenance.read_chunk(&id, rec).await
    }

    async fn add(&mut self, fp: Vec<u8>, read_as: [u8; 32], raw: Vec<u8>) -> Result<()> {
        if self
            .frame
            .is_full_for(raw.len(), self.sizes.frame_raw_bytes)
        {
            self.close_frame().await?;
            if self.pack.len() >= self.sizes.pack_bytes {
                self.seal().await?;
            }
        }
        self.report.raw_bytes += raw.len() as u64;
        self.frame.add(fp.clone(), &raw);
        self.pending.insert(fp, read_as);
        Ok(())
    }

    /// Compresses the frame being filled into the pack (off the runtime).
    async fn close_frame(&mut self) -> Result<()> {
        let frame = std::mem::take(&mut self.frame);
        let mut pack = std::mem::take(&mut self.pack);
        self.pack = tokio::task::spawn_blocking(move || {
            pack.add_frame(frame);
            pack
        })
        .await
        .map_err(|e| MetaError::Invalid(format!("frame compression panicked: {e}")))?;
        Ok(())
    }

    /// Writes the pack built so far and switches its chunks to it.
    async fn seal(&mut self) -> Result<()> {
        self.close_frame().await?;
        if !self.pack.is_empty() {
            self.write_pack().await?;
        }
        self.pending.clear();
        self.mark_cold_files().await
    }

    async fn write_pack(&mut self) -> Result<()> {
        let now = now_ns();
        let id = blocking(&self.store, move |s| {
            transact(s, |t| {
                let counter = keys::counter("packs");
                let id = decode_counter(t.get(&counter)?.as_deref()).max(0) as u64 + 1;
                t.set(&counter, &(id as i64).to_le_bytes());
                put_record(
                    t,
                    &keys::pack(id),
                    &PackRecord {
                        object: object_name(id),
                        state: PackState::Writing as i32,
                        created_ns: now,
                        ..PackRecord::default()
                    },
                );
                Ok::<_, MetaError>(id)
            })
        })
        .await?;
        let object = object_name(id);
        let (body, placed) = std::mem::take(&mut self.pack).finish(id);
        let bytes = body.len() as u64;
        // Only once this returns is the pack durable; a failure leaves the
        // record writing, for a later pass to delete.
        self.cold
            .put(&object, Bytes::from(body))
            .await
            .map_err(cold_error)?;
        let mut switched = 0u64;
        for batch in placed.chunks(RECORDS_PER_TXN) {
            let batch: Vec<(Placed, [u8; 32])> = batch
                .iter()
                .filter_map(|p| Some((p.clone(), *self.pending.get(&p.fingerprint)?)))
                .collect();
            let done = blocking(&self.store, move |s| {
                transact(s, |t| switch_batch(t, id, bytes, &batch))
            })
            .await?;
            switched += done.len() as u64;
            self.switched.extend(done);
        }
        if switched == 0 {
            // Every chunk changed meanwhile: nothing points into it.
            self.delete_pack(
                id,
                &PackRecord {
                    object,
                    state: PackState::Writing as i32,
                    ..PackRecord::default()
                },
            )
            .await?;
        } else {
            tracing::info!(pack = id, object = %object, bytes, chunks = switched, "tiering: pack written");
            self.report.packs_written += 1;
            self.report.pack_bytes += bytes;
            self.report.chunks_packed += switched;
        }
        Ok(())
    }

    /// Files all of whose chunks are packed, and unchanged since planned,
    /// are cold; the others wait for the next pass.
    async fn mark_cold_files(&mut self) -> Result<()> {
        let files = std::mem::take(&mut self.files);
        let done: Vec<(u64, u64)> = files
            .iter()
            .filter(|f| f.needs.iter().all(|fp| self.switched.contains(fp)))
            .map(|f| (f.ino, f.data_version))
            .collect();
        let moved = blocking(&self.store, move |s| {
            transact(s, |t| {
                let mut moved = 0u64;
                for &(ino, version) in &done {
                    if let Some(mut inode) = get_record::<InodeRecord>(t, &keys::inode(ino))? {
                        if inode.data_version == version && inode.tier() != TierRecord::Cold {
                            inode.set_tier(TierRecord::Cold);
                            put_inode(t, &inode);
                            moved += 1;
                        }
                    }
                }
                Ok::<_, MetaError>(moved)
            })
        })
        .await?;
        self.report.files_moved += moved;
        Ok(())
    }

    /// Deletes packs nothing points into: left writing by a crash, or
    /// sealed with no live chunk left.
    pub async fn collect_packs(&mut self) -> Result<()> {
        let (begin, end) = keys::tag_range(keys::PACK);
        let mut from = begin;
        let abandoned_before = now_ns().saturating_sub(ABANDONED_AFTER.as_nanos() as i64);
        loop {
            let to = end.clone();
            let scan_from = from.clone();
            let rows = blocking(&self.store, move |s| {
                read_only(s, |t| {
                    let rows = t.range(&scan_from, &to, PACKS_PER_PAGE, false)?;
                    let mut packs = Vec::new();
                    for (key, value) in &rows {
                        if key.len() != 9 {
                            continue; // a live count
                        }
                        let Some(id) = keys::pack_id(key) else {
                            continue;
                        };
                        let rec = PackRecord::decode(value.as_slice())?;
                        let live = decode_counter(t.get(&keys::pack_live(id))?.as_deref());
                        packs.push((id, rec, live));
                    }
                    Ok::<_, MetaError>((rows.last().map(|(k, _)| k.clone()), rows.len(), packs))
                })
            })
            .await?;
            let (last, count, packs) = rows;
            for (id, rec, live) in packs {
                let unused = match rec.state() {
                    PackState::Writing => rec.created_ns < abandoned_before,
                    PackState::Sealed => live <= 0,
                };
                if unused {
                    self.delete_pack(id, &rec).await?;
                }
            }
            match last {
                Some(mut key) if count == PACKS_PER_PAGE => {
                    key.push(0);
                    from = key;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Deletes pack `id`'s object, then its record, if it is still as
    /// unused as when looked at.
    async fn delete_pack(&mut self, id: u64, rec: &PackRecord) -> Result<()> {
        if let Err(e) = self.cold.delete(&rec.object).await {
            tracing::warn!(pack = id, error = %e, "tiering: cannot delete an unused pack; next pass");
            return Ok(());
        }
        let state = rec.state;
        blocking(&self.store, move |s| {
            transact(s, |t| {
                let Some(now) = get_record::<PackRecord>(t, &keys::pack(id))? else {
                    return Ok::<_, MetaError>(());
                };
                let live = decode_counter(t.get(&keys::pack_live(id))?.as_deref());
                if now.state == state && live <= 0 {
                    t.clear(&keys::pack(id));
                    t.clear(&keys::pack_live(id));
                }
                Ok(())
            })
        })
        .await?;
        tracing::info!(pack = id, object = %rec.object, "tiering: unused pack deleted");
        self.report.packs_deleted += 1;
        Ok(())
    }
}

/// Switches the chunks of `batch` still as read to pack `id` (`bytes`
/// long), sealing it. Returns the fingerprints switched.
pub(super) fn switch_batch(
    t: &mut dyn crate::store::KvTxn,
    id: u64,
    bytes: u64,
    batch: &[(Placed, [u8; 32])],
) -> Result<Vec<Vec<u8>>> {
    let mut done = Vec::new();
    for (placed, read_as) in batch {
        let key = keys::hash(&placed.fingerprint);
        let Some(current) = get_record::<ChunkRecord>(t, &key)? else {
            continue;
        };
        if digest(&current) != *read_as || current.state() != ChunkState::Live {
            continue;
        }
        put_record(t, &key, &packed_record(&current, placed.location));
        done.push(placed.fingerprint.clone());
    }
    if !done.is_empty() {
        t.atomic_add(&keys::pack_live(id), done.len() as i64)?;
        let mut pack = get_record::<PackRecord>(t, &keys::pack(id))?.unwrap_or_default();
        pack.object = object_name(id);
        pack.set_state(PackState::Sealed);
        pack.bytes = bytes;
        pack.chunks += done.len() as u32;
        put_record(t, &keys::pack(id), &pack);
    }
    Ok(done)
}
