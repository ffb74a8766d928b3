//! Reading cold chunks back: the frame holding a chunk is fetched from its
//! pack with one ranged GET, decompressed, and kept in memory a while, so
//! the chunks around it (the rest of a file, the next files of a tree)
//! cost no second request. Every chunk handed out is checked against its
//! fingerprint.

use std::sync::Arc;

use dfs_core::fingerprint::Fingerprint;
use dfs_proto::ChunkRecord;

use super::pack::{chunk_in, frame_raw, object_name};
use super::{ColdError, ColdStore};

/// Raw frame bytes kept in memory.
const FRAME_CACHE_BYTES: u64 = 256 << 20;

/// Reads cold chunks from a cold store.
pub struct Recall {
    cold: Arc<ColdStore>,
    /// (pack, frame offset) -> raw frame.
    frames: moka::future::Cache<(u64, u64), Arc<Vec<u8>>>,
}

impl Recall {
    pub fn new(cold: Arc<ColdStore>) -> Self {
        Self {
            cold,
            frames: moka::future::Cache::builder()
                .max_capacity(FRAME_CACHE_BYTES)
                .weigher(|_, frame: &Arc<Vec<u8>>| u32::try_from(frame.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }

    pub fn cold(&self) -> &Arc<ColdStore> {
        &self.cold
    }

    /// The raw bytes of the packed chunk `fp` whose record is `rec`.
    pub async fn chunk(&self, fp: &Fingerprint, rec: &ChunkRecord) -> Result<Vec<u8>, ColdError> {
        let location = rec
            .packed
            .filter(|_| rec.is_packed())
            .ok_or_else(|| ColdError::Corrupt(format!("chunk {fp}: not in a pack")))?;
        let key = (location.pack, location.frame_offset);
        let cold = self.cold.clone();
        let at = location;
        let frame = self
            .frames
            .try_get_with(key, async move {
                let object = object_name(at.pack);
                let range = at.frame_offset..at.frame_offset + u64::from(at.frame_len);
                let stored = match cold.get_range(&object, range).await {
                    // In an archive class: ask for it, answer "later".
                    Err(ColdError::Archived { object }) => {
                        cold.restore(&object).await?;
                        tracing::info!(object = %object, "cold chunk read: restore from archive storage asked for");
                        return Err(ColdError::Restoring { object });
                    }
                    other => other?,
                };
                let raw = tokio::task::spawn_blocking(move || frame_raw(&stored, &at))
                    .await
                    .map_err(|e| ColdError::Corrupt(format!("frame decode panicked: {e}")))??;
                Ok::<_, ColdError>(Arc::new(raw))
            })
            .await
            .map_err(|e: Arc<ColdError>| (*e).clone())?;
        let chunk = chunk_in(&frame, &location, rec.raw_len)?;
        if Fingerprint::of(chunk) != *fp {
            self.frames.invalidate(&key).await;
            return Err(ColdError::Corrupt(format!(
                "chunk {fp} in {}: its bytes do not match the fingerprint",
                object_name(location.pack)
            )));
        }
        Ok(chunk.to_vec())
    }
}
