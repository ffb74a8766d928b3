//! Re-heating (`dfs-meta --reheat`): a cold file read again comes back to
//! hot. The `access` worker, writing the day of a file read, hands over
//! the ones that are cold; the `reheat` worker reads each packed chunk of
//! such a file back from its pack, stores it as a hot chunk is stored
//! (LZ4; inline when it is that small, else shards on chunk servers
//! placed as a rebuild places them) and switches its record, only if it
//! is still as read. The pack keeps one live chunk less and goes when it
//! has none. The file is hot again once all its chunks are; it ages, and
//! goes cold, again like any other.

use std::sync::Arc;

use dfs_core::fingerprint::Fingerprint;
use dfs_core::workers::Worker;
use dfs_proto::{ChunkRecord, ChunkState, InodeRecord, Tier as TierRecord};

use super::blocking;
use super::migrate::digest;
use crate::error::{MetaError, Result};
use crate::inodes::put_inode;
use crate::keys;
use crate::maintenance::Maintenance;
use crate::store::{get_record, get_records, put_record, read_only, transact, MetaStore};
use crate::tiering::fingerprints_of;

/// Chunk records read per transaction.
const RECORDS_PER_TXN: usize = 500;

/// Cold files read again, waiting to be re-heated; more are dropped (a
/// later read asks again).
pub const QUEUE: usize = 10_000;

/// The `reheat` worker: re-heats the files sent on `files`.
pub async fn reheat_worker(
    store: Arc<dyn MetaStore>,
    maintenance: Arc<Maintenance>,
    mut files: tokio::sync::mpsc::Receiver<u64>,
    worker: Arc<Worker>,
) {
    while let Some(ino) = files.recv().await {
        worker.start(1);
        let outcome = reheat_file(&store, &maintenance, ino).await;
        if let Err(e) = &outcome {
            tracing::warn!(ino, error = %e, "re-heating a cold file failed; its next read tries again");
        }
        worker.finish(
            outcome
                .map(|n| format!("inode {ino}: {n} chunks back to hot"))
                .map_err(|e| e.to_string()),
            None,
        );
    }
}

/// Brings file `ino`'s packed chunks back to hot; returns how many moved.
pub async fn reheat_file(
    store: &Arc<dyn MetaStore>,
    maintenance: &Arc<Maintenance>,
    ino: u64,
) -> Result<u64> {
    let Some(recall) = maintenance.recall().cloned() else {
        return Ok(0);
    };
    let inode = blocking(store, move |s| {
        read_only(s, |t| get_record::<InodeRecord>(t, &keys::inode(ino)))
    })
    .await?;
    let Some(inode) = inode.filter(|i| i.tier() == TierRecord::Cold) else {
        return Ok(0);
    };
    let fingerprints = blocking(store, move |s| fingerprints_of(s, ino)).await?;
    let mut moved = 0;
    let mut all = true;
    for batch in fingerprints.chunks(RECORDS_PER_TXN) {
        let hash_keys: Vec<Vec<u8>> = batch.iter().map(|fp| keys::hash(fp)).collect();
        let records = blocking(store, move |s| {
            read_only(s, |t| get_records::<ChunkRecord>(t, &hash_keys))
        })
        .await?;
        for (fp, rec) in batch.iter().zip(records) {
            let Some(rec) = rec.filter(|r| r.state() == ChunkState::Live && r.is_packed()) else {
                continue;
            };
            let id = Fingerprint::from_slice(fp).map_err(|e| MetaError::Corrupt(e.to_string()))?;
            let raw = recall
                .chunk(&id, &rec)
                .await
                .map_err(|e| MetaError::ColdStore(e.to_string()))?;
            let hot = maintenance
                .store_hot(&id, &raw)
                .await
                .map_err(|e| MetaError::Invalid(format!("chunk {id}: {e}")))?;
            let (key, read_as) = (keys::hash(fp), digest(&rec));
            let switched = blocking(store, move |s| {
                transact(s, |t| {
                    let Some(current) = get_record::<ChunkRecord>(t, &key)? else {
                        return Ok::<_, MetaError>(false);
                    };
                    if digest(&current) != read_as {
                        return Ok(false);
                    }
                    super::release_packed(t, &current)?;
                    put_record(t, &key, &reheated(&current, hot.clone()));
                    Ok(true)
                })
            })
            .await?;
            // Not switched: its new shards are orphans for GC.
            if switched {
                moved += 1;
            } else {
                all = false;
            }
        }
    }
    if all {
        let version = inode.data_version;
        blocking(store, move |s| {
            transact(s, |t| {
                if let Some(mut now) = get_record::<InodeRecord>(t, &keys::inode(ino))? {
                    if now.data_version == version && now.tier() == TierRecord::Cold {
                        now.set_tier(TierRecord::Hot);
                        put_inode(t, &now);
                    }
                }
                Ok::<_, MetaError>(())
            })
        })
        .await?;
    }
    tracing::info!(ino, chunks = moved, "re-heated a cold file read again");
    Ok(moved)
}

/// `current` (its count and collection state), stored as `hot` now.
fn reheated(current: &ChunkRecord, hot: ChunkRecord) -> ChunkRecord {
    ChunkRecord {
        refcount: current.refcount,
        state: current.state,
        zero_since_ns: current.zero_since_ns,
        dead_since_ns: current.dead_since_ns,
        owner: current.owner.clone(),
        ..hot
    }
}
