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
        // LRU, not moka's default TinyLFU: TinyLFU admits a new entry
        // only if it was asked for more often than the one it would evict,
        // so once the cache is full a sequential read of new data has its
        // readahead thrown away at insertion and every chunk fetched twice
        // (readahead, then the read itself).
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_fp: &Fingerprint, data: &Bytes| {
                u32::try_from(data.len()).unwrap_or(u32::MAX)
            })
            .build();
        Self { cache }
    }

    /// The most bytes the cache holds.
    pub fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequential read of more data than the cache holds must keep what
    /// it just fetched: readahead inserts each chunk once, and the read
    /// that follows finds it only if the insert was admitted.
    #[tokio::test]
    async fn a_full_cache_admits_new_chunks() {
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        let cache = ChunkCache::new(16 * chunk.len() as u64);
        // Old chunks, each asked for a few times: TinyLFU would favour them.
        for i in 0..16u8 {
            let fp = Fingerprint([i; 32]);
            cache.insert(fp, chunk.clone()).await;
            for _ in 0..3 {
                assert!(cache.get(&fp).await.is_some());
            }
        }
        let mut kept = 0;
        for i in 16..80u8 {
            let fp = Fingerprint([i; 32]);
            cache.insert(fp, chunk.clone()).await;
            cache.cache.run_pending_tasks().await;
            kept += usize::from(cache.get(&fp).await.is_some());
        }
        assert_eq!(
            kept, 64,
            "every new chunk stays until newer ones push it out"
        );
        assert!(cache.cache.weighted_size() <= 16 * chunk.len() as u64);
    }
}
