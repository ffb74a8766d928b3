//! Moving staged chunks to the chunk servers.
//!
//! A small flush commits its new chunks inline (`dfs_core::inline::
//! MAX_INLINE_BYTES`): closing a small file then waits for one synced
//! metadata write instead of nine chunk-server fsyncs. A chunk over the
//! volume's `inline_max_bytes` is only staged there: the commit that
//! creates its entry also queues it (`G fingerprint`, with the time), and
//! this worker, once it has stayed `stage_delay`, codes its stored bytes as
//! they are (same codec, same dictionary) into the volume's Reed-Solomon
//! layout, places the shards on the ring as a client would, and puts them
//! with one `PutShards` per server for a whole batch of chunks. Then, in
//! one transaction, each record still as read is switched to its shards
//! and its queue entry dropped. A chunk deleted before its turn (a
//! temporary file) never reaches the servers.
//!
//! Until the switch the inline record stays the chunk's, so every reader
//! has the bytes; a crash between the puts and the switch leaves orphan
//! shards for GC and the queue entry, and the next pass puts the same
//! shards again (the same bytes under the same keys). A record changed
//! meanwhile (the tiering worker recompressed it) keeps its queue entry
//! and is read again at the next pass.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use dfs_core::erasure;
use dfs_core::time::now_ns;
use dfs_proto::{ChunkRecord, Layout, PutShardsRequest, Shard};

use super::Maintenance;
use crate::error::MetaError;
use crate::keys;
use crate::registry;
use crate::store::{decode_counter, get_record, put_record};

/// How long staged chunks wait when this dfs-meta does not stage: those a
/// client staged before a restart with staging off, or sent anyway.
pub const DRAIN_DELAY: Duration = Duration::from_secs(30);

/// Chunks moved per pass (at most 96 KiB each: a few MiB per server).
const BATCH: usize = 256;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StagedReport {
    /// Chunks now on the chunk servers, and their stored bytes.
    pub moved: u64,
    pub moved_bytes: u64,
    /// Queue entries dropped: the chunk is gone or not staged any more.
    pub dropped: u64,
    /// Chunks left for the next pass: changed meanwhile, or a server
    /// failed their put.
    pub left: u64,
}

/// A staged chunk to move: its record as read, and where its shards go.
struct Planned {
    fp: Vec<u8>,
    read: ChunkRecord,
    new: ChunkRecord,
    shards: Vec<Bytes>,
}

impl Maintenance {
    /// Moves up to [`BATCH`] chunks staged at least `min_age` ago.
    pub async fn move_staged(&self, min_age: Duration) -> Result<StagedReport, String> {
        let cutoff = now_ns().saturating_sub(i64::try_from(min_age.as_nanos()).unwrap_or(i64::MAX));
        // The queue, the volume and the records, as of one transaction.
        let (volume, due) = self
            .txn("staged_queue", move |t| {
                let volume = registry::volume_config(t)?;
                let start = [keys::STAGED];
                let end = [keys::STAGED + 1];
                let mut due = Vec::new();
                let mut after = start.to_vec();
                'scan: loop {
                    let page = t.range(&after, &end, 1024, false)?;
                    let Some((last, _)) = page.last() else {
                        break;
                    };
                    after = last.clone();
                    after.push(0);
                    for (key, value) in &page {
                        let staged_at = decode_counter(Some(value));
                        if staged_at > cutoff {
                            continue;
                        }
                        let fp = key[1..].to_vec();
                        let record = get_record::<ChunkRecord>(t, &keys::hash(&fp))?;
                        let refs = decode_counter(t.get(&keys::refs(&fp))?.as_deref());
                        if record.is_some() && refs <= 0 {
                            // Unreferenced (its file removed): GC takes it,
                            // unless a commit names it again first; not
                            // moved, and not in the way of the others.
                            continue;
                        }
                        due.push((fp, record, staged_at));
                        if due.len() >= BATCH {
                            break 'scan;
                        }
                    }
                    if page.len() < 1024 {
                        break;
                    }
                }
                Ok((volume, due))
            })
            .await
            .map_err(|e| format!("reading the staging queue: {e}"))?;
        let mut report = StagedReport::default();
        if due.is_empty() {
            return Ok(report);
        }
        let mut stale = Vec::new();
        let mut movable = Vec::new();
        for (fp, record, staged_at) in due {
            match record {
                Some(rec)
                    if rec.is_inline()
                        && rec.inline_data.len() > volume.inline_max_bytes as usize =>
                {
                    movable.push((fp, rec));
                }
                _ => stale.push((fp, staged_at)),
            }
        }
        report.dropped = stale.len() as u64;
        let planned = if movable.is_empty() {
            Vec::new()
        } else {
            self.plan(&volume, movable).await?
        };
        let planned_count = planned.len() as u64;
        let (stored, failed) = self.put_planned(planned).await;
        report.left += failed;
        let stored: Vec<(Vec<u8>, ChunkRecord, ChunkRecord)> =
            stored.into_iter().map(|p| (p.fp, p.read, p.new)).collect();
        // Switch what is stored, if unchanged; drop the stale entries.
        let (switched, changed) = self
            .txn("staged_switch", move |t| {
                let (mut switched, mut changed) = (0u64, 0u64);
                for (fp, staged_at) in &stale {
                    // Unless a commit staged the chunk again since.
                    let key = keys::staged(fp);
                    if decode_counter(t.get(&key)?.as_deref()) == *staged_at {
                        t.clear(&key);
                    }
                }
                for (fp, read, new) in &stored {
                    let key = keys::hash(fp);
                    if get_record::<ChunkRecord>(t, &key)?.as_ref() != Some(read) {
                        // Its shards are orphans for GC; read again next pass.
                        changed += 1;
                        continue;
                    }
                    put_record(t, &key, new);
                    t.clear(&keys::staged(fp));
                    switched += u64::from(read.stored_len);
                }
                Ok::<_, MetaError>((switched, changed))
            })
            .await
            .map_err(|e| format!("switching staged chunks: {e}"))?;
        let moved = planned_count - failed - changed;
        report.moved = moved;
        report.moved_bytes = switched;
        report.left += changed;
        Ok(report)
    }

    /// Codes each chunk's stored bytes into the volume's layout and places
    /// its shards on the ring.
    async fn plan(
        &self,
        volume: &dfs_proto::VolumeConfig,
        chunks: Vec<(Vec<u8>, ChunkRecord)>,
    ) -> Result<Vec<Planned>, String> {
        let view = self.view().await.map_err(|e| format!("server list: {e}"))?;
        let layout = Layout {
            data_shards: volume.data_shards,
            parity_shards: volume.parity_shards,
            ..Layout::default()
        };
        let coded = tokio::task::spawn_blocking(move || {
            chunks
                .into_iter()
                .map(|(fp, read)| {
                    let shards = erasure::encode(&layout, &Bytes::from(read.inline_data.clone()))?;
                    Ok((fp, read, shards))
                })
                .collect::<Result<Vec<_>, erasure::ErasureError>>()
        })
        .await
        .map_err(|e| format!("coding staged chunks panicked: {e}"))?
        .map_err(|e| format!("coding staged chunks: {e}"))?;
        let mut planned = Vec::with_capacity(coded.len());
        for (fp, read, shards) in coded {
            let placed = view.ring.place(&fp, shards.len());
            if placed.len() < shards.len() {
                return Err(format!(
                    "{} servers up with room, {} shards to place",
                    placed.len(),
                    shards.len()
                ));
            }
            let new = ChunkRecord {
                layout: Some(layout),
                shard_servers: placed,
                shard_len: shards.first().map_or(0, Bytes::len) as u32,
                inline_data: Vec::new(),
                ..read.clone()
            };
            planned.push(Planned {
                fp,
                read,
                new,
                shards,
            });
        }
        Ok(planned)
    }

    /// Puts the planned shards, one request per server for all of them;
    /// returns the chunks all of whose shards were stored, and how many
    /// were not. The shards move into the requests: what comes back has
    /// none.
    async fn put_planned(&self, mut planned: Vec<Planned>) -> (Vec<Planned>, u64) {
        let mut per_server: HashMap<u32, Vec<Shard>> = HashMap::new();
        for p in &mut planned {
            let shards = std::mem::take(&mut p.shards);
            for (index, (server, data)) in p.new.shard_servers.iter().zip(shards).enumerate() {
                per_server.entry(*server).or_default().push(Shard {
                    token: Vec::new(),
                    fingerprint: p.fp.clone(),
                    index: index as u32,
                    data,
                });
            }
        }
        let view = match self.view().await {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(error = %e, "staging: no server list; next pass");
                return (Vec::new(), planned.len() as u64);
            }
        };
        let puts = per_server.into_iter().map(|(server, shards)| {
            let address = view.address(server).map(str::to_string);
            async move {
                let result = async {
                    let address = address.ok_or("no address".to_string())?;
                    let mut client = self
                        .pool
                        .client(server, &address)
                        .map_err(|e| e.to_string())?;
                    client
                        .put_shards(PutShardsRequest { shards })
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                .await;
                (server, result)
            }
        });
        let mut failed = Vec::new();
        for (server, result) in futures::future::join_all(puts).await {
            if let Err(e) = result {
                tracing::warn!(server_id = server, error = %e, "staging: a put failed; its chunks wait for the next pass");
                failed.push(server);
            }
        }
        let (ok, bad): (Vec<Planned>, Vec<Planned>) = planned
            .into_iter()
            .partition(|p| !p.new.shard_servers.iter().any(|s| failed.contains(s)));
        (ok, bad.len() as u64)
    }
}

/// The staging worker: a pass every `delay / 4` (at least a second) while
/// the queue has due chunks, as long as the process runs.
pub async fn staging_loop(maintenance: std::sync::Arc<Maintenance>, delay: Duration) {
    let worker = maintenance.workers().add("staging", "chunks");
    let every = (delay / 4).max(Duration::from_secs(1));
    worker.set_interval(every);
    loop {
        worker.set_next_run(every);
        tokio::time::sleep(every).await;
        // A full batch: there may be more due at once.
        loop {
            let outcome = maintenance.move_staged(delay).await;
            let full = matches!(&outcome, Ok(r) if r.moved + r.dropped + r.left >= BATCH as u64 && r.moved > 0);
            let summary = outcome.map(|r| {
                format!(
                    "{} chunks ({} bytes) moved to the chunk servers, {} dropped, {} left",
                    r.moved, r.moved_bytes, r.dropped, r.left
                )
            });
            if let Err(e) = &summary {
                tracing::warn!(error = %e, "staging pass failed; will retry");
            }
            worker.finish(summary, Some(every));
            if !full {
                break;
            }
        }
    }
}
