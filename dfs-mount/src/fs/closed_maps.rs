//! Chunk maps of files this client closed, kept so that opening one again
//! asks dfs-meta only whether the file changed.
//!
//! Close-to-open consistency makes every open read the file's chunk map
//! from dfs-meta. For a small file that is most of the work: its staged
//! chunks ride in the map, so reopening a 128 KiB file this client just
//! wrote moved its 128 KiB again (and dfs-meta read them from its blob
//! files: ~0.5 ms there alone after `drop_caches`). Now the last close keeps
//! the map, and the next open asks for the map "unless its data version is
//! still N": an unchanged file's answer is a few bytes and the kept map is
//! used; a changed one's answer is its map, as before. Only maps whose
//! chunks are all inline are kept (small files: a map with shards holds read
//! tokens that expire). Kept maps are
//! hollow: inline chunks' bytes are dropped (the chunk cache has them, and
//! a kept map is used only while it holds every one of them; a read that
//! finds one gone since asks dfs-meta for that chunk's entry), so a map
//! costs a few hundred bytes a chunk. Every change of a
//! file's contents (a commit: writes, truncations, copies) bumps its data
//! version, and inode numbers are never reused, so a kept map is used only
//! while it is the file's map. Records in it may be older than dfs-meta's
//! (a staged chunk moved to the servers since, a chunk recompressed): the
//! read path already fetches a chunk's entry again when its record fails,
//! as it does for a map held open for long.

use std::sync::Arc;

use moka::future::Cache;

use dfs_proto::ChunkRecord;

use super::file::ChunkMap;

/// Bytes of kept maps (tens of thousands of small files').
pub const CLOSED_MAPS_BYTES: u64 = 8 * 1024 * 1024;

/// What a kept map costs, per chunk (a hollow inline record and its
/// fingerprint; maps with shards, and their read tokens, are not kept).
const ENTRY_WEIGHT: usize = 256;

/// An inline chunk's record without its bytes, as kept maps hold them.
pub fn is_hollow(rec: &ChunkRecord) -> bool {
    rec.is_inline() && rec.inline_data.is_empty()
}

/// A closed file's committed chunk map, size and data version.
#[derive(Debug)]
pub struct ClosedMap {
    pub map: ChunkMap,
    pub size: u64,
    pub data_version: u64,
}

pub struct ClosedMaps {
    cache: Cache<u64, Arc<ClosedMap>>,
}

impl Default for ClosedMaps {
    fn default() -> Self {
        Self::new(CLOSED_MAPS_BYTES)
    }
}

impl ClosedMaps {
    pub fn new(capacity_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_ino: &u64, closed: &Arc<ClosedMap>| {
                let bytes = ENTRY_WEIGHT * (closed.map.chunks.len() + 1);
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Self { cache }
    }

    /// Keeps the map of a file closed with nothing buffered, hollow. A
    /// version of 0 (never committed) is not kept: there is nothing to ask
    /// about.
    pub async fn keep(&self, ino: u64, mut closed: ClosedMap) {
        if closed.data_version == 0 {
            return;
        }
        for rec in closed
            .map
            .chunks
            .values_mut()
            .filter_map(|c| c.chunk.as_mut())
        {
            if rec.is_inline() {
                rec.inline_data = Vec::new();
            }
        }
        self.cache.insert(ino, Arc::new(closed)).await;
    }

    /// The kept map of `ino`, which leaves the cache: an open file's state
    /// holds its map until the last close keeps it again.
    pub async fn take(&self, ino: u64) -> Option<ClosedMap> {
        let kept = self.cache.remove(&ino).await?;
        Some(Arc::try_unwrap(kept).unwrap_or_else(|shared| ClosedMap {
            map: shared.map.clone(),
            size: shared.size,
            data_version: shared.data_version,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dfs_proto::MappedChunk;

    fn map_with_inline(bytes: usize) -> ChunkMap {
        let mut map = ChunkMap::default();
        map.chunks.insert(
            0,
            MappedChunk {
                offset: 0,
                len: bytes as u32,
                chunk: Some(dfs_core::inline::record(
                    bytes as u32,
                    dfs_proto::Codec::None,
                    vec![7; bytes],
                )),
                ..MappedChunk::default()
            },
        );
        map
    }

    #[tokio::test]
    async fn a_kept_map_is_taken_once() {
        let maps = ClosedMaps::default();
        maps.keep(
            5,
            ClosedMap {
                map: map_with_inline(100),
                size: 100,
                data_version: 3,
            },
        )
        .await;
        let taken = maps.take(5).await.unwrap();
        assert_eq!((taken.size, taken.data_version), (100, 3));
        let rec = taken.map.chunks[&0].chunk.as_ref().unwrap();
        assert!(is_hollow(rec), "kept with its inline bytes");
        assert!(maps.take(5).await.is_none());
    }

    #[tokio::test]
    async fn a_file_never_committed_is_not_kept() {
        let maps = ClosedMaps::default();
        let closed = ClosedMap {
            map: ChunkMap::default(),
            size: 0,
            data_version: 0,
        };
        maps.keep(9, closed).await;
        assert!(maps.take(9).await.is_none());
    }

    #[tokio::test]
    async fn kept_maps_stay_within_their_bytes() {
        let maps = ClosedMaps::new(64 * 1024);
        for ino in 1..=1024u64 {
            let closed = ClosedMap {
                map: map_with_inline(128 * 1024),
                size: 128 * 1024,
                data_version: 1,
            };
            maps.keep(ino, closed).await;
        }
        maps.cache.run_pending_tasks().await;
        assert!(maps.cache.weighted_size() <= 64 * 1024);
        // The newest are the ones kept.
        assert!(maps.take(1024).await.is_some());
        assert!(maps.take(1).await.is_none());
    }
}
