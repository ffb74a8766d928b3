//! In-memory chunk cache, bounded in bytes. Concurrent readers of the same
//! chunk share one fetch (readahead and the reader it runs ahead of).

use std::sync::Arc;

use bytes::Bytes;
use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::ChunkRecord;
use moka::future::Cache;

use crate::client::Cluster;

#[derive(Clone)]
pub struct ChunkCache {
    cache: Cache<Fingerprint, Bytes>,
}

impl ChunkCache {
    pub fn new(capacity_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_fp: &Fingerprint, data: &Bytes| {
                u32::try_from(data.len()).unwrap_or(u32::MAX)
            })
            .build();
        Self { cache }
    }

    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.cache.contains_key(fp)
    }

    /// The chunk's bytes if they are cached.
    pub async fn get(&self, fp: &Fingerprint) -> Option<Bytes> {
        self.cache.get(fp).await
    }

    pub async fn insert(&self, fp: Fingerprint, data: Bytes) {
        self.cache.insert(fp, data).await;
    }

    /// The chunk's verified bytes, from the cache or fetched once.
    pub async fn get_or_fetch(
        &self,
        cluster: &Arc<Cluster>,
        fp: Fingerprint,
        rec: ChunkRecord,
        tokens: Vec<Vec<u8>>,
    ) -> Result<Bytes, DfsError> {
        self.cache
            .try_get_with(
                fp,
                async move { cluster.fetch_chunk(fp, &rec, &tokens).await },
            )
            .await
            .map_err(|e: Arc<DfsError>| (*e).clone())
    }
}
