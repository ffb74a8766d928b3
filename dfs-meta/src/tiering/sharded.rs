//! Chunks on chunk servers moving to a colder tier (warm; cold when no
//! cold store is configured, which would pack them instead): read back
//! from their shards (verified against the fingerprint), recompressed as
//! the codec model says for the tier and the file's kind, written as new
//! shards beside the old ones on the same servers
//! (`Maintenance::store_beside`: no shard is overwritten), and switched in
//! only if the record is still as read. The old shards become orphans that
//! GC deletes after its grace period; until then a reader holding the old
//! record reads them, and one that finds them gone asks for the chunk's
//! record again (`dfs-mount/src/fs/read.rs`). A crash between the puts and
//! the switch leaves the old record and orphan new shards: nothing lost.

use std::sync::Arc;

use dfs_core::codec_model::{CodecModel, FileKind};
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{ChunkRecord, Tier as TierRecord};

use super::to_tier;
use crate::cold::blocking;
use crate::error::MetaError;
use crate::keys;
use crate::maintenance::Maintenance;
use crate::store::{get_record, put_record, transact, MetaStore};

/// A chunk on chunk servers whose file's policy wants it colder.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedMove {
    pub fingerprint: Vec<u8>,
    /// Its record as the pass read it.
    pub record: ChunkRecord,
    pub target: TierRecord,
    /// One of its file's names, for the codec model.
    pub name: Option<String>,
}

/// What recompressing the queued chunks did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardedReport {
    /// Chunks written again, and their stored bytes before and after.
    pub rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Chunks the tier's codec would not shrink enough: only their tier
    /// is recorded.
    pub kept: u64,
    /// Chunks whose record changed meanwhile (left to the next pass).
    pub changed: u64,
    /// Chunks that could not be read or written (logged; next pass).
    pub failed: u64,
}

/// A chunk is written again only when the new bytes are at most this
/// share (percent) of its stored bytes: nine shard writes to save less
/// cost more than they free.
const WORTH_PERCENT: u64 = 90;

enum Outcome {
    Rewritten { before: u32, after: u32 },
    Kept,
    Changed,
}

/// Recompresses `moves`, one after another (a background worker: it
/// should not crowd out clients).
pub async fn recompress(
    store: &Arc<dyn MetaStore>,
    maintenance: &Arc<Maintenance>,
    moves: Vec<ShardedMove>,
) -> ShardedReport {
    let mut report = ShardedReport::default();
    for m in moves {
        match one(store, maintenance, &m).await {
            Ok(Outcome::Rewritten { before, after }) => {
                report.rewritten += 1;
                report.bytes_before += u64::from(before);
                report.bytes_after += u64::from(after);
            }
            Ok(Outcome::Kept) => report.kept += 1,
            Ok(Outcome::Changed) => report.changed += 1,
            Err(e) => {
                tracing::warn!(chunk = %hex::encode(&m.fingerprint), error = %e, "tiering: a chunk on chunk servers could not be recompressed; next pass");
                report.failed += 1;
            }
        }
    }
    report
}

async fn one(
    store: &Arc<dyn MetaStore>,
    maintenance: &Arc<Maintenance>,
    m: &ShardedMove,
) -> Result<Outcome, String> {
    let fp = Fingerprint::from_slice(&m.fingerprint).map_err(|e| e.to_string())?;
    let raw = maintenance.read_chunk(&fp, &m.record).await?;
    let (tier, name) = (to_tier(m.target), m.name.clone());
    let (codec, stored) = tokio::task::spawn_blocking(move || {
        let kind = FileKind::of(name.as_deref(), &raw);
        CodecModel::builtin().compress(tier, kind, &raw)
    })
    .await
    .map_err(|e| format!("recompressing panicked: {e}"))?;
    let before = m.record.stored_len;
    let worth = (stored.len() as u64) * 100 <= u64::from(before) * WORTH_PERCENT;
    let mut new = if worth {
        maintenance
            .store_beside(&fp, &m.record, codec, stored)
            .await?
    } else {
        m.record.clone()
    };
    new.set_tier(m.target);
    let after = new.stored_len;
    let (old, key) = (m.record.clone(), keys::hash(&m.fingerprint));
    let switched = blocking(store, move |s| {
        transact(s, |t| {
            // Only over the record as read: a repair, GC or upload since
            // wins, and the shards just written are orphans for GC.
            if get_record::<ChunkRecord>(t, &key)?.as_ref() != Some(&old) {
                return Ok::<_, MetaError>(false);
            }
            put_record(t, &key, &new);
            Ok(true)
        })
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(match (switched, worth) {
        (false, _) => Outcome::Changed,
        (true, true) => Outcome::Rewritten { before, after },
        (true, false) => Outcome::Kept,
    })
}
