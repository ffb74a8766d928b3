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
//!
//! The puts overwrite whatever sits under their keys, so they must never
//! land on the shards of the record that is live then. Only rewriters put
//! there (clients place shards by the ring, a rebuild in place or on a
//! server outside the record), so each rewrite first claims the chunk in
//! the store (`M fingerprint`), in a transaction that also checks the
//! record is still the one its placement was computed from: a second
//! rewriter (another pass, another dfs-meta on the same FoundationDB)
//! finds the claim or a changed record and leaves the chunk. A claim left
//! by a crash expires after [`CLAIM_TTL`]; a put is assumed never to be
//! applied that long after it was sent (RPC deadlines are seconds).

use std::sync::Arc;

use dfs_core::codec_model::{CodecModel, FileKind};
use dfs_core::fingerprint::Fingerprint;
use dfs_core::time::now_ns;
use dfs_proto::{ChunkRecord, Tier as TierRecord};

use super::to_tier;
use crate::cold::blocking;
use crate::error::MetaError;
use crate::keys;
use crate::maintenance::{beside, Maintenance};
use crate::store::{decode_counter, get_record, put_record, transact, KvTxn, MetaStore};

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

/// How long a claim on rewriting a chunk holds; one older was left by a
/// rewriter that crashed.
const CLAIM_TTL_NS: i64 = 3_600_000_000_000;

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
    if beside(&m.record.shard_servers).is_none() {
        // All its shards on one server: no new key to write them under;
        // its tier is recorded so that it is not tried again.
        return switch(store, m, None, false).await;
    }
    let claimed = now_ns();
    let (old, key, claim_key) = (
        m.record.clone(),
        keys::hash(&m.fingerprint),
        keys::rewriting(&m.fingerprint),
    );
    let ours = blocking(store, move |s| {
        transact(s, |t| claim(t, &key, &claim_key, &old, claimed))
    })
    .await
    .map_err(|e| e.to_string())?;
    if !ours {
        return Ok(Outcome::Changed);
    }
    let outcome = rewrite(store, maintenance, m, &fp).await;
    if outcome.is_err() {
        // Let a later pass try again at once rather than in an hour.
        let claim = keys::rewriting(&m.fingerprint);
        let released = blocking(store, move |s| {
            transact(s, |t| {
                t.clear(&claim);
                Ok::<_, MetaError>(())
            })
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(chunk = %hex::encode(&m.fingerprint), error = %e, "tiering: a rewrite claim stays until it expires");
        }
    }
    outcome
}

/// Claims the rewrite of the chunk whose record is under `key`, by
/// `claim_key`, at `now`: only if its record is still `read` and no other
/// rewriter's claim younger than [`CLAIM_TTL_NS`] holds it.
fn claim(
    t: &mut dyn KvTxn,
    key: &[u8],
    claim_key: &[u8],
    read: &ChunkRecord,
    now: i64,
) -> crate::error::Result<bool> {
    if get_record::<ChunkRecord>(t, key)?.as_ref() != Some(read) {
        return Ok(false);
    }
    let since = decode_counter(t.get(claim_key)?.as_deref());
    if since != 0 && now.saturating_sub(since) < CLAIM_TTL_NS {
        return Ok(false);
    }
    t.set(claim_key, &now.to_le_bytes());
    Ok(true)
}

/// Under a claim: reads, recompresses and, when worth it, writes the
/// chunk's shards anew, then switches its record (and drops the claim).
async fn rewrite(
    store: &Arc<dyn MetaStore>,
    maintenance: &Arc<Maintenance>,
    m: &ShardedMove,
    fp: &Fingerprint,
) -> Result<Outcome, String> {
    let raw = maintenance.read_chunk(fp, &m.record).await?;
    let (tier, name) = (to_tier(m.target), m.name.clone());
    let (codec, stored) = tokio::task::spawn_blocking(move || {
        let kind = FileKind::of(name.as_deref(), &raw);
        CodecModel::builtin().compress(tier, kind, &raw)
    })
    .await
    .map_err(|e| format!("recompressing panicked: {e}"))?;
    let worth = (stored.len() as u64) * 100 <= u64::from(m.record.stored_len) * WORTH_PERCENT;
    let new = if worth {
        Some(
            maintenance
                .store_beside(fp, &m.record, codec, stored)
                .await?,
        )
    } else {
        None
    };
    switch(store, m, new, true).await
}

/// Replaces the chunk's record by `new` (`None`: the same shards, only
/// its tier set) if it is still as read, dropping the claim (`claimed`).
async fn switch(
    store: &Arc<dyn MetaStore>,
    m: &ShardedMove,
    new: Option<ChunkRecord>,
    claimed: bool,
) -> Result<Outcome, String> {
    let rewritten = new.is_some();
    let mut new = new.unwrap_or_else(|| m.record.clone());
    new.set_tier(m.target);
    let (before, after) = (m.record.stored_len, new.stored_len);
    let (old, key, claim) = (
        m.record.clone(),
        keys::hash(&m.fingerprint),
        keys::rewriting(&m.fingerprint),
    );
    let switched = blocking(store, move |s| {
        transact(s, |t| {
            if claimed {
                t.clear(&claim);
            }
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
    Ok(match (switched, rewritten) {
        (false, _) => Outcome::Changed,
        (true, true) => Outcome::Rewritten { before, after },
        (true, false) => Outcome::Kept,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn one_rewriter_at_a_time_and_only_over_the_record_it_planned_from() {
        let store = MemStore::default();
        let fp = [7u8; 32];
        let (key, claim_key) = (keys::hash(&fp), keys::rewriting(&fp));
        let read = ChunkRecord {
            raw_len: 100,
            stored_len: 60,
            shard_servers: vec![1, 2, 3],
            ..ChunkRecord::default()
        };
        let run = |rec: &ChunkRecord, now: i64| {
            transact(&store, |t| claim(t, &key, &claim_key, rec, now)).unwrap()
        };
        transact(&store, |t| {
            put_record(t, &key, &read);
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let now = 1_000_000_000_000;
        assert!(run(&read, now), "the first rewriter claims it");
        assert!(!run(&read, now + 1), "a second one finds the claim");
        // A claim left by a crash expires.
        assert!(
            run(&read, now + CLAIM_TTL_NS),
            "an expired claim is taken over"
        );
        // A record changed since the plan: no claim, whatever the marker.
        transact(&store, |t| {
            t.clear(&claim_key);
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let mut other = read.clone();
        other.shard_servers = vec![2, 3, 1];
        assert!(!run(&other, now + 2 * CLAIM_TTL_NS));
    }
}
