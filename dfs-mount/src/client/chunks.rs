//! Shard traffic with chunk servers: one batched `PutShards` per server per
//! upload round, and single-shard reads.

use std::collections::{HashMap, HashSet};

use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{PutShardsRequest, Shard, ShardKey};
use futures::future::join_all;
use tracing::Instrument;

use super::Cluster;

/// Shard bytes in one `PutShards` request: far under the message limit
/// (`dfs_proto::MAX_MESSAGE_BYTES`) whatever one flush sends one server,
/// and small enough that a server is not asked to hold much at once.
const PUT_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Splits `shards` into consecutive groups of at most `limit` bytes (a
/// larger shard goes alone).
fn split_by_bytes(shards: Vec<Shard>, limit: usize) -> Vec<Vec<Shard>> {
    let mut groups: Vec<Vec<Shard>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for shard in shards {
        if !current.is_empty() && bytes + shard.data.len() > limit {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += shard.data.len();
        current.push(shard);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Shards bound for one server.
#[derive(Default)]
pub struct ServerBatch {
    pub shards: Vec<Shard>,
}

/// A server whose batch failed: the error, and the shards (fingerprint,
/// index) it did not store. Requests sent before the failure were stored
/// and stay where they are.
pub struct PutFailure {
    pub server_id: u32,
    pub error: DfsError,
    pub unstored: HashSet<(Vec<u8>, u32)>,
}

impl Cluster {
    /// Sends each server its batch, all servers in parallel, in requests
    /// of at most `PUT_REQUEST_BYTES`. Returns the servers that failed.
    pub async fn put_batches(&self, batches: HashMap<u32, ServerBatch>) -> Vec<PutFailure> {
        let sends = batches.into_iter().map(|(id, batch)| async move {
            let span =
                tracing::debug_span!("put_shards", server_id = id, shards = batch.shards.len());
            async {
                let mut requests = split_by_bytes(batch.shards, PUT_REQUEST_BYTES).into_iter();
                let error = match self.server(id).await {
                    Ok(conn) => {
                        let mut conn = conn.client;
                        let mut error = None;
                        for shards in requests.by_ref() {
                            let keys: Vec<(Vec<u8>, u32)> = shards
                                .iter()
                                .map(|s| (s.fingerprint.clone(), s.index))
                                .collect();
                            if let Err(e) = conn.put_shards(PutShardsRequest { shards }).await {
                                error = Some((DfsError::from(e), keys));
                                break;
                            }
                        }
                        error
                    }
                    Err(e) => Some((e, Vec::new())),
                };
                let (error, failed_keys) = error?;
                let mut unstored: HashSet<(Vec<u8>, u32)> = failed_keys.into_iter().collect();
                unstored.extend(requests.flatten().map(|s| (s.fingerprint, s.index)));
                Some(PutFailure {
                    server_id: id,
                    error,
                    unstored,
                })
            }
            .instrument(span)
            .await
        });
        join_all(sends).await.into_iter().flatten().collect()
    }

    pub async fn get_shard(
        &self,
        server_id: u32,
        fp: &Fingerprint,
        index: u32,
    ) -> Result<Vec<u8>, DfsError> {
        let mut conn = self.server(server_id).await?.client;
        let reply = conn
            .get_shard(ShardKey {
                fingerprint: fp.to_vec(),
                index,
            })
            .await
            .map_err(DfsError::from)?;
        Ok(reply.into_inner().data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(len: usize) -> Shard {
        Shard {
            fingerprint: vec![0; 32],
            index: 0,
            data: vec![0; len],
        }
    }

    #[test]
    fn batches_split_by_bytes_in_order() {
        let sizes = |groups: &[Vec<Shard>]| -> Vec<Vec<usize>> {
            groups
                .iter()
                .map(|g| g.iter().map(|s| s.data.len()).collect())
                .collect()
        };
        let groups = split_by_bytes(vec![shard(4), shard(4), shard(3), shard(9), shard(1)], 8);
        assert_eq!(sizes(&groups), vec![vec![4, 4], vec![3], vec![9], vec![1]]);
        assert!(split_by_bytes(Vec::new(), 8).is_empty());
    }
}
