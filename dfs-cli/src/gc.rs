//! `dfs gc`: garbage collection driven from the command line.
//!
//! 1. `GcMark` walks the dedup index in bounded passes: an entry whose
//!    reference count is zero is stamped, and declared dead once it stayed
//!    at zero for the grace period. A commit that needs a dead chunk must
//!    upload it again, so nothing references a dead entry's old shards.
//! 2. Each server deletes the dead chunks' shards *written before* the
//!    moment they were declared dead (less the allowed clock skew): a shard
//!    a client uploaded again afterwards survives.
//! 3. `GcFinish` removes the entries that are still dead, once every one of
//!    their servers answered; entries on unreachable servers wait for the
//!    next run.
//!
//! The grace period must be at least the clock skew: a shard is then always
//! written before its entry was first seen at zero, which is at least the
//! grace period before it is declared dead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context};
use dfs_proto::chunks_client::ChunksClient;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{DeleteShardsRequest, Empty, GcFinishRequest, GcMarkRequest, ShardKey};
use serde::Serialize;
use tonic::transport::Channel;

/// Index entries one mark pass looks at.
const MARK_PAGE: u32 = 1000;

#[derive(Serialize, Default, Debug)]
pub struct GcReport {
    /// Index entries looked at.
    pub scanned: u64,
    /// Entries at zero references, still inside the grace period.
    pub waiting: u64,
    /// Dead entries removed, their shards deleted.
    pub chunks_freed: u64,
    /// Shards and payload bytes deleted on the chunk servers.
    pub shards_deleted: u64,
    pub bytes_freed: u64,
    /// Dead entries kept for the next run: a server holding some of their
    /// shards did not answer.
    pub chunks_pending: u64,
}

async fn connect_server(address: &str) -> anyhow::Result<ChunksClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("bad chunk server address `{address}`"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .with_context(|| format!("cannot reach chunk server {address}"))?;
    Ok(ChunksClient::new(channel))
}

pub async fn run(
    meta: &mut MetaClient<Channel>,
    grace: Duration,
    clock_skew: Duration,
) -> anyhow::Result<GcReport> {
    if grace < clock_skew {
        bail!(
            "--grace ({}s) must be at least --clock-skew ({}s), or shards written just before \
             a chunk died could outlive it",
            grace.as_secs(),
            clock_skew.as_secs()
        );
    }
    let servers: HashMap<u32, String> = meta
        .list_servers(Empty {})
        .await
        .context("cannot list chunk servers")?
        .into_inner()
        .servers
        .into_iter()
        .filter_map(|s| s.record.map(|r| (r.id, r.address)))
        .collect();
    let mut clients: HashMap<u32, Option<ChunksClient<Channel>>> = HashMap::new();
    let mut report = GcReport::default();
    let skew_ns = i64::try_from(clock_skew.as_nanos()).unwrap_or(i64::MAX);
    let mut cursor = Vec::new();
    loop {
        let mark = meta
            .gc_mark(GcMarkRequest {
                after_fingerprint: cursor.clone(),
                grace_ns: i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX),
                limit: MARK_PAGE,
            })
            .await
            .context("marking garbage failed")?
            .into_inner();
        report.scanned += mark.scanned;
        report.waiting += mark.waiting;

        // Shards to delete, grouped by server and cut-off time (one pass
        // declares its entries dead at one instant).
        let mut batches: BTreeMap<(u32, i64), Vec<ShardKey>> = BTreeMap::new();
        let mut servers_of: Vec<(Vec<u8>, HashSet<u32>)> = Vec::new();
        for dead in &mark.dead {
            let Some(rec) = &dead.record else { continue };
            let before = rec.dead_since_ns.saturating_sub(skew_ns);
            let mut used = HashSet::new();
            for (index, &server) in rec.shard_servers.iter().enumerate() {
                used.insert(server);
                batches.entry((server, before)).or_default().push(ShardKey {
                    fingerprint: dead.fingerprint.clone(),
                    index: index as u32,
                });
            }
            servers_of.push((dead.fingerprint.clone(), used));
        }
        let mut failed: HashSet<u32> = HashSet::new();
        for ((server, before), shards) in batches {
            if failed.contains(&server) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(server) {
                let client = match servers.get(&server) {
                    Some(address) => match connect_server(address).await {
                        Ok(c) => Some(c),
                        Err(e) => {
                            eprintln!("dfs gc: {e:#}; its dead chunks wait for the next run");
                            None
                        }
                    },
                    None => {
                        eprintln!("dfs gc: chunk server {server} is not registered any more");
                        None
                    }
                };
                slot.insert(client);
            }
            let Some(Some(client)) = clients.get_mut(&server) else {
                failed.insert(server);
                continue;
            };
            match client
                .delete_shards(DeleteShardsRequest {
                    shards,
                    written_before_ns: before,
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    report.shards_deleted += r.deleted;
                    report.bytes_freed += r.bytes;
                }
                Err(e) => {
                    eprintln!("dfs gc: chunk server {server}: {}", e.message());
                    failed.insert(server);
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
            report.chunks_freed += meta
                .gc_finish(GcFinishRequest { fingerprints: done })
                .await
                .context("removing dead index entries failed")?
                .into_inner()
                .removed;
        }
        if mark.next_fingerprint.is_empty() {
            return Ok(report);
        }
        cursor = mark.next_fingerprint;
    }
}
