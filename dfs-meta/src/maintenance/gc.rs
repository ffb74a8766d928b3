//! Garbage collection (`dfs gc`, and every `gc_interval` in the background).
//!
//! 1. `chunkmap::gc_mark` walks the dedup index in bounded transactions: an
//!    entry whose reference count is zero is stamped, and declared dead once
//!    it stayed at zero for the grace period. A commit that needs a dead
//!    chunk must upload it again, so nothing references a dead entry's old
//!    shards.
//! 2. Each server deletes the dead chunks' shards *written before* the
//!    moment they were declared dead (less the allowed clock skew): a shard
//!    a client uploaded again afterwards survives.
//! 3. `chunkmap::gc_finish` removes the entries that are still dead, once
//!    every one of their servers answered; entries on unreachable servers
//!    wait for the next run.
//! 4. Orphans: every up server lists its shards; a shard that no live entry
//!    points at (no entry, or the entry's shard is elsewhere: left by a
//!    client that died between upload and commit, a failed upload, or a
//!    rebuild that moved it) and that was written more than the orphan
//!    grace period (plus skew) ago is deleted, with that cut-off, so a
//!    shard stored again meanwhile survives. The orphan grace period must
//!    exceed any client's upload-to-commit time; `0` is only safe on a
//!    volume nobody writes to.
//!
//! The grace period must be at least the clock skew: a shard is then always
//! written before its entry was first seen at zero, which is at least the
//! grace period before it is declared dead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use dfs_core::time::now_ns;
use dfs_proto::{ChunkRecord, DeleteShardsRequest, GcReport, ListShardsRequest, ShardKey};

use super::servers::LIST_PAGE;
use super::Maintenance;
use crate::chunkmap;
use crate::error::{MetaError, Result};
use crate::keys;
use crate::store::get_record;

/// Index entries one mark transaction looks at.
const MARK_PAGE: usize = 1000;

#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    pub grace: Duration,
    pub clock_skew: Duration,
    /// Also delete orphan shards written longer ago than this (plus the
    /// skew). It must exceed any client's time from uploading a chunk to
    /// committing it: a shard uploaded and not yet committed is an orphan
    /// until its commit lands.
    pub orphan_grace: Option<Duration>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Maintenance {
    pub async fn gc(&self, options: GcOptions) -> Result<GcReport> {
        if options.grace < options.clock_skew {
            return Err(MetaError::Invalid(format!(
                "the grace period ({}s) must be at least the clock skew ({}s), or shards written \
                 just before a chunk died could outlive it",
                options.grace.as_secs(),
                options.clock_skew.as_secs()
            )));
        }
        let _one_at_a_time = self.gc_lock.lock().await;
        // Its size is the last run's, until this one ends.
        let (last, _) = self.gc_worker.progress();
        self.gc_worker.start(last);
        let outcome = self.gc_locked(options).await;
        self.gc_worker.finish(
            match &outcome {
                Ok(r) => Ok(format!(
                    "{} chunks scanned, {} freed ({} bytes), {} orphan shards deleted",
                    r.scanned, r.chunks_freed, r.bytes_freed, r.orphan_shards_deleted
                )),
                Err(e) => Err(e.to_string()),
            },
            None,
        );
        outcome
    }

    async fn gc_locked(&self, options: GcOptions) -> Result<GcReport> {
        let view = self.view().await?;
        let mut report = GcReport::default();
        let grace_ns = nanos(options.grace);
        let skew_ns = nanos(options.clock_skew);
        let mut unreachable: HashSet<u32> = HashSet::new();
        // Servers that failed a delete in this run: their dead chunks wait
        // for the next run (kept across pages, so a dead server costs one
        // failed connection, not one per page).
        let mut failed: HashSet<u32> = HashSet::new();
        let mut cursor = Vec::new();
        loop {
            let after = cursor.clone();
            let now = now_ns();
            let mark = self
                .txn("gc_mark", move |t| {
                    chunkmap::gc_mark(t, &after, MARK_PAGE, grace_ns, now)
                })
                .await?;
            report.scanned += mark.scanned;
            report.waiting += mark.waiting;
            self.gc_worker.advance(mark.scanned);

            // Shards to delete, grouped by server and cut-off time (one
            // pass declares its entries dead at one instant).
            let mut batches: BTreeMap<(u32, i64), Vec<ShardKey>> = BTreeMap::new();
            let mut servers_of: Vec<(Vec<u8>, HashSet<u32>)> = Vec::new();
            for dead in &mark.dead {
                let Some(rec) = &dead.record else { continue };
                let before = rec.dead_since_ns.saturating_sub(skew_ns);
                let mut used = HashSet::new();
                for (index, &server) in rec.shard_servers.iter().enumerate() {
                    if view.is_gone(server) {
                        // Its copies died with it; if it ever comes back,
                        // they are orphans for the sweep.
                        continue;
                    }
                    if !view.is_up(server) {
                        failed.insert(server);
                    }
                    used.insert(server);
                    batches.entry((server, before)).or_default().push(ShardKey {
                        token: Default::default(),
                        fingerprint: dead.fingerprint.clone(),
                        index: index as u32,
                    });
                }
                servers_of.push((dead.fingerprint.clone(), used));
            }
            for ((server, before), shards) in batches {
                if failed.contains(&server) {
                    continue;
                }
                let result = match view.address(server) {
                    None => Err(format!("chunk server {server} is not registered any more")),
                    Some(address) => match self.pool.client(server, address) {
                        Err(e) => Err(e.to_string()),
                        Ok(mut client) => client
                            .delete_shards(DeleteShardsRequest {
                                shards,
                                written_before_ns: before,
                                uploaded_by: Vec::new(),
                            })
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|e| e.message().to_string()),
                    },
                };
                match result {
                    Ok(r) => {
                        report.shards_deleted += r.deleted;
                        report.bytes_freed += r.bytes;
                    }
                    Err(e) => {
                        tracing::warn!(server_id = server, error = %e, "gc: cannot delete dead shards; the chunks wait for the next run");
                        failed.insert(server);
                        unreachable.insert(server);
                    }
                }
            }
            let done: Vec<Vec<u8>> = servers_of
                .into_iter()
                .filter_map(|(fp, used)| {
                    if used.iter().any(|s| failed.contains(s)) {
                        report.chunks_pending += 1;
                        None
                    } else {
                        Some(fp)
                    }
                })
                .collect();
            if !done.is_empty() {
                report.chunks_freed += self
                    .txn("gc_finish", move |t| chunkmap::gc_finish(t, &done))
                    .await?;
            }
            if mark.next_fingerprint.is_empty() {
                break;
            }
            cursor = mark.next_fingerprint;
        }
        if let Some(orphan_grace) = options.orphan_grace {
            let cut = now_ns()
                .saturating_sub(nanos(orphan_grace))
                .saturating_sub(skew_ns);
            for (id, status) in view.up_servers() {
                let Some(address) = status.record.as_ref().map(|r| r.address.clone()) else {
                    continue;
                };
                if let Err(e) = self.sweep_orphans(id, &address, cut, &mut report).await {
                    tracing::warn!(server_id = id, error = %e, "gc: orphan sweep of a server failed");
                    unreachable.insert(id);
                }
            }
        }
        report.servers_unreachable = unreachable.len() as u64;
        Ok(report)
    }

    /// Deletes the shards on one server that no live entry points at and
    /// that were written before `cut` (the server's clock).
    async fn sweep_orphans(
        &self,
        server: u32,
        address: &str,
        cut: i64,
        report: &mut GcReport,
    ) -> std::result::Result<(), String> {
        let mut client = self
            .pool
            .client(server, address)
            .map_err(|e| e.to_string())?;
        let mut after = Vec::new();
        loop {
            let page = client
                .list_shards(ListShardsRequest {
                    after: after.clone(),
                    limit: LIST_PAGE,
                })
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            let fingerprints: Vec<Vec<u8>> = {
                let mut seen = HashSet::new();
                page.shards
                    .iter()
                    .filter(|s| seen.insert(s.fingerprint.clone()))
                    .map(|s| s.fingerprint.clone())
                    .collect()
            };
            let records: HashMap<Vec<u8>, ChunkRecord> = self
                .txn("gc_orphans", move |t| {
                    let mut out = HashMap::new();
                    for fp in &fingerprints {
                        if let Some(rec) = get_record::<ChunkRecord>(t, &keys::hash(fp))? {
                            out.insert(fp.clone(), rec);
                        }
                    }
                    Ok(out)
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut orphans = Vec::new();
            for shard in &page.shards {
                // A dead entry's own shards are the mark step's business;
                // any other copy is an orphan like one of a live entry.
                let claimed = records.get(&shard.fingerprint).is_some_and(|rec| {
                    rec.shard_servers.get(shard.index as usize) == Some(&server)
                });
                if claimed {
                    continue;
                }
                if shard.written_ns < cut {
                    orphans.push(ShardKey {
                        token: Default::default(),
                        fingerprint: shard.fingerprint.clone(),
                        index: shard.index,
                    });
                } else {
                    report.orphan_shards_young += 1;
                }
            }
            if !orphans.is_empty() {
                let deleted = client
                    .delete_shards(DeleteShardsRequest {
                        shards: orphans,
                        written_before_ns: cut,
                        uploaded_by: Vec::new(),
                    })
                    .await
                    .map_err(|e| e.message().to_string())?
                    .into_inner();
                report.orphan_shards_deleted += deleted.deleted;
                report.orphan_bytes_freed += deleted.bytes;
            }
            if page.next.is_empty() {
                return Ok(());
            }
            after = page.next;
        }
    }
}
