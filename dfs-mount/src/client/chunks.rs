//! Shard traffic with chunk servers: one batched `PutShards` per server per
//! upload round, and single-shard reads.

use std::collections::HashMap;

use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{PutShardsRequest, Shard, ShardKey};
use futures::future::join_all;
use tracing::Instrument;

use super::Cluster;

/// Shards bound for one server.
#[derive(Default)]
pub struct ServerBatch {
    pub shards: Vec<Shard>,
}

impl Cluster {
    /// Sends each server its batch, all servers in parallel. Returns the
    /// ids of the servers whose batch failed, with the error.
    pub async fn put_batches(&self, batches: HashMap<u32, ServerBatch>) -> Vec<(u32, DfsError)> {
        let sends = batches.into_iter().map(|(id, batch)| async move {
            let span =
                tracing::debug_span!("put_shards", server_id = id, shards = batch.shards.len());
            let result = async {
                let mut conn = self.server(id).await?.client;
                conn.put_shards(PutShardsRequest {
                    shards: batch.shards,
                })
                .await
                .map_err(DfsError::from)?;
                Ok::<_, DfsError>(())
            }
            .instrument(span)
            .await;
            (id, result)
        });
        join_all(sends)
            .await
            .into_iter()
            .filter_map(|(id, r)| r.err().map(|e| (id, e)))
            .collect()
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
