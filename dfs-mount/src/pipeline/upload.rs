//! The last stage of the write pipeline: compressed, coded chunks placed
//! on the ring and uploaded, one request per server per batch. A flush's
//! chunks go in batches of about [`UPLOAD_BATCH_BYTES`], two at a time, so
//! one batch is compressed and coded on the blocking pool while the one
//! before it is encrypted and sent and the servers write it: with one
//! stage after the other, the servers sat idle while the mount coded a
//! whole flush (32 MiB for a streaming writer), and the mount's cores
//! waited on the servers' writes after.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use dfs_core::codec::CodecPolicy;
use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{ChunkRecord, Shard};
use futures::{StreamExt, TryStreamExt};

use super::write::{Encoded, PutGrants, Unstored, UPLOAD_ROUNDS};
use crate::client::chunks::ServerBatch;
use crate::client::Cluster;

/// Raw bytes of one batch of a flush's unknown chunks.
pub(super) const UPLOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches of one flush being coded or uploaded at once.
const BATCHES_IN_FLIGHT: usize = 2;

/// What a flush's uploads produced: the records of the chunks this client
/// stored (uploaded, or inline), and the bytes stored (compressed) and
/// coded (shards) for the pipeline's figures.
#[derive(Default)]
pub(super) struct Uploaded {
    pub records: Vec<(Fingerprint, ChunkRecord)>,
    pub stored_bytes: u64,
    pub coded_bytes: u64,
}

/// Cuts `chunks` into consecutive batches of at least `bytes` raw bytes
/// (the last one may hold less).
fn batches(chunks: Vec<Unstored>, bytes: usize) -> Vec<Vec<Unstored>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut filled = 0;
    for chunk in chunks {
        filled += chunk.len();
        current.push(chunk);
        if filled >= bytes {
            out.push(std::mem::take(&mut current));
            filled = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a flush's uploads learned about failing servers.
#[derive(Default)]
pub(super) struct Failures {
    /// Servers that failed a put: no later placement uses them.
    excluded: Vec<u32>,
    /// The error to report if the chunks cannot be stored elsewhere.
    last_error: Option<DfsError>,
}

impl Failures {
    fn note(&mut self, server_id: u32, error: DfsError) {
        // A full disk is the most useful thing to report.
        if error.errno == libc::ENOSPC || self.last_error.is_none() {
            self.last_error = Some(error);
        }
        if !self.excluded.contains(&server_id) {
            self.excluded.push(server_id);
        }
    }

    fn saw_full_disk(&self) -> bool {
        self.last_error
            .as_ref()
            .is_some_and(|e| e.errno == libc::ENOSPC)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cluster {
    /// Compresses, codes and uploads `chunks` (none known to the index), a
    /// batch at a time with the next batch's coding under the previous
    /// one's upload. Chunks that code small enough go inline instead while
    /// `inline_budget` lasts. Fails if any batch fails: nothing is
    /// committed then, and what was uploaded is left to garbage collection.
    pub(super) async fn encode_and_upload(
        &self,
        policy: CodecPolicy,
        chunks: Vec<Unstored>,
        inline_limit: usize,
        inline_budget: usize,
        grants: &PutGrants,
    ) -> Result<Uploaded, DfsError> {
        let budget = Arc::new(Mutex::new(inline_budget));
        let failures = Mutex::new(Failures::default());
        let (budget, failures) = (&budget, &failures);
        let done: Vec<Uploaded> = futures::stream::iter(batches(chunks, UPLOAD_BATCH_BYTES))
            .map(|batch| async move {
                let encoded = self
                    .encode_all(policy, batch, inline_limit, Arc::clone(budget))
                    .await?;
                let stored_bytes = encoded.iter().map(|e| u64::from(e.record.stored_len)).sum();
                let coded_bytes = encoded
                    .iter()
                    .flat_map(|e| &e.shards)
                    .map(|s| s.len() as u64)
                    .sum();
                let records = self.upload(encoded, grants, failures).await?;
                Ok::<_, DfsError>(Uploaded {
                    records,
                    stored_bytes,
                    coded_bytes,
                })
            })
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(done.into_iter().fold(Uploaded::default(), |mut all, one| {
            all.records.extend(one.records);
            all.stored_bytes += one.stored_bytes;
            all.coded_bytes += one.coded_bytes;
            all
        }))
    }

    /// Places and uploads encoded chunks. A server that fails is excluded;
    /// only the shards that were bound for it are placed again (on servers
    /// the chunk does not use yet, preferring the ring's order), so shards
    /// already stored stay where the index will say they are, and no copy
    /// is left behind on a server the record does not name.
    /// `failures` holds what the flush's batches learned (shared, so a
    /// batch neither tries a server another one saw fail nor reports EIO
    /// for a cluster another one found full).
    pub(super) async fn upload(
        &self,
        encoded: Vec<Encoded>,
        grants: &PutGrants,
        failures: &Mutex<Failures>,
    ) -> Result<Vec<(Fingerprint, ChunkRecord)>, DfsError> {
        // Inline chunks have nothing to upload: their bytes go in the commit.
        let (inlined, encoded): (Vec<Encoded>, Vec<Encoded>) =
            encoded.into_iter().partition(|e| e.record.is_inline());
        let mut done: Vec<(Fingerprint, ChunkRecord)> =
            inlined.into_iter().map(|e| (e.fp, e.record)).collect();
        // Each chunk with the shard indices still to store.
        let mut pending: Vec<(Encoded, Vec<usize>)> = encoded
            .into_iter()
            .map(|e| {
                let all = (0..e.shards.len()).collect();
                (e, all)
            })
            .collect();
        for _round in 0..UPLOAD_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let ring = self.ring().await;
            let excluded_now = lock(failures).excluded.clone();
            let mut batches: HashMap<u32, ServerBatch> = HashMap::new();
            for (enc, todo) in &mut pending {
                let n = enc.shards.len();
                let fresh = ring.place_excluding(enc.fp.as_bytes(), n, &excluded_now);
                if fresh.len() != n {
                    if self.full_servers() > 0 || lock(failures).saw_full_disk() {
                        return Err(DfsError::new(
                            libc::ENOSPC,
                            "every chunk server with room is full (see `dfs status`)".to_string(),
                        ));
                    }
                    return Err(DfsError::new(
                        libc::EIO,
                        "no chunk server is available to store data (see `dfs status`)".to_string(),
                    ));
                }
                if enc.record.shard_servers.len() != n {
                    enc.record.shard_servers = fresh;
                } else {
                    // Keep the stored shards; move only the failed ones, to
                    // servers (and failure domains) this chunk does not use
                    // yet when there are any.
                    let kept: Vec<u32> = (0..n)
                        .filter(|i| !todo.contains(i))
                        .map(|i| enc.record.shard_servers[i])
                        .collect();
                    let moved =
                        ring.place_beside(enc.fp.as_bytes(), todo.len(), &kept, &excluded_now);
                    for (k, &i) in todo.iter().enumerate() {
                        enc.record.shard_servers[i] =
                            moved.get(k).copied().unwrap_or(fresh[k % fresh.len()]);
                    }
                }
                for &index in todo.iter() {
                    let server = enc.record.shard_servers[index];
                    let token = grants
                        .get(&enc.fp)
                        .and_then(|by_server| by_server.get(&server))
                        .cloned()
                        .unwrap_or_default();
                    batches.entry(server).or_default().shards.push(Shard {
                        token,
                        fingerprint: enc.fp.to_vec(),
                        index: index as u32,
                        data: enc.shards[index].clone(),
                    });
                }
            }
            let failed = self.put_batches(batches).await;
            let mut unstored: HashMap<u32, HashSet<(Vec<u8>, u32)>> = HashMap::new();
            for f in failed {
                tracing::warn!(server_id = f.server_id, error = %f.error, "shard upload failed; placing elsewhere");
                lock(failures).note(f.server_id, f.error);
                unstored.insert(f.server_id, f.unstored);
            }
            let mut still = Vec::new();
            for (enc, todo) in pending {
                // Only shards the failed server did not store move: those it
                // took before failing stay, named by the record.
                let fp = enc.fp.to_vec();
                let left: Vec<usize> = todo
                    .into_iter()
                    .filter(|&i| {
                        unstored
                            .get(&enc.record.shard_servers[i])
                            .is_some_and(|u| u.contains(&(fp.clone(), i as u32)))
                    })
                    .collect();
                if left.is_empty() {
                    done.push((enc.fp, enc.record));
                } else {
                    still.push((enc, left));
                }
            }
            pending = still;
            if !pending.is_empty() {
                // The server list may have changed under us.
                let _ = self.refresh_topology().await;
            }
        }
        if !pending.is_empty() {
            let err = lock(failures)
                .last_error
                .clone()
                .unwrap_or_else(|| DfsError::io("upload failed"));
            return Err(DfsError::new(
                if err.errno == libc::ENOSPC {
                    libc::ENOSPC
                } else {
                    libc::EIO
                },
                format!("cannot store {} chunks: {}", pending.len(), err.message),
            ));
        }
        Ok(done)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(len: usize, seed: u8) -> Unstored {
        Unstored::new(Fingerprint::of(&[seed]), Bytes::from(vec![seed; len]))
    }

    #[test]
    fn batches_keep_order_and_hold_at_least_their_bytes() {
        let chunks: Vec<Unstored> = (0..10).map(|i| chunk(300 + usize::from(i), i)).collect();
        let cut = batches(chunks, 1000);
        let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let order: Vec<usize> = cut.iter().flatten().map(Unstored::len).collect();
        assert_eq!(order, (300..310).collect::<Vec<usize>>());
    }

    #[test]
    fn a_full_disk_seen_by_one_batch_is_what_every_batch_reports() {
        let mut failures = Failures::default();
        failures.note(3, DfsError::new(libc::EIO, "connection reset".to_string()));
        assert!(!failures.saw_full_disk());
        failures.note(5, DfsError::new(libc::ENOSPC, "disk full".to_string()));
        failures.note(3, DfsError::new(libc::EIO, "connection reset".to_string()));
        assert!(failures.saw_full_disk());
        assert_eq!(failures.excluded, vec![3, 5]);
    }

    #[test]
    fn no_chunks_no_batches_and_one_big_chunk_alone() {
        assert!(batches(Vec::new(), 1000).is_empty());
        let cut = batches(vec![chunk(5000, 1), chunk(10, 2)], 1000);
        assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1]);
    }
}
