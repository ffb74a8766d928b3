//! Shards found damaged while serving reads, reported to dfs-meta at once
//! (the scrubber finds the rest, on its own schedule). A client that meets
//! a corrupt shard still gets its chunk from the others; the rebuild over
//! the bad copy is dfs-meta's, which holds the index (clients with
//! certificates may not write shards of a stored chunk).

use std::time::Duration;

use dfs_core::rpc::RpcTransport;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{ReportBadShardsRequest, ShardKey};
use tokio::sync::mpsc;

use crate::heartbeat::SharedServerId;

/// Damaged shards waiting to be reported; more are dropped (the scrubber
/// finds them again).
const QUEUE: usize = 1024;
/// Most shards one report carries.
const BATCH: usize = 256;

/// Where the chunk service drops the keys of shards it found corrupt.
#[derive(Clone, Debug, Default)]
pub struct DamageReports(Option<mpsc::Sender<ShardKey>>);

impl DamageReports {
    pub fn found(&self, fingerprint: &[u8], index: u8) {
        metrics::counter!(dfs_core::telemetry::catalog::SERVER_CORRUPT_SHARDS).increment(1);
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(ShardKey {
                fingerprint: fingerprint.to_vec(),
                index: u32::from(index),
                token: Vec::new(),
            });
        }
    }
}

/// A reporter sending to `meta` as `server_id` (once registered), and the
/// handle the chunk service reports through.
pub fn reporter(
    meta: RpcTransport,
    server_id: SharedServerId,
) -> (DamageReports, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel::<ShardKey>(QUEUE);
    let task = async move {
        let client = MetaClient::new(meta);
        while let Some(first) = rx.recv().await {
            let mut shards = vec![first];
            while shards.len() < BATCH {
                match rx.try_recv() {
                    Ok(key) => shards.push(key),
                    Err(_) => break,
                }
            }
            shards.sort_by(|a, b| (&a.fingerprint, a.index).cmp(&(&b.fingerprint, b.index)));
            shards.dedup();
            // Not registered yet, or dfs-meta away: a few tries, then the
            // scrubber's next pass.
            for attempt in 0..5u32 {
                let Some(id) = server_id.get() else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let request = ReportBadShardsRequest {
                    server_id: id,
                    shards: shards.clone(),
                };
                match client.clone().report_bad_shards(request).await {
                    Ok(_) => {
                        tracing::info!(
                            server_id = id,
                            shards = shards.len(),
                            "damaged shards met by reads reported"
                        );
                        break;
                    }
                    Err(status) => {
                        tracing::debug!(attempt, error = %status, "reporting damaged shards failed");
                        tokio::time::sleep(Duration::from_secs(1 << attempt.min(4))).await;
                    }
                }
            }
        }
    };
    (DamageReports(Some(tx)), task)
}
