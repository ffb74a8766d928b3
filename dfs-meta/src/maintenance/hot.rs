//! Storing a chunk dfs-meta holds as a client writing it hot would: used
//! to bring cold chunks back (`cold::reheat`).

use dfs_core::codec::{compress, CodecPolicy};
use dfs_core::erasure;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{ChunkRecord, Layout};

use super::{servers, Maintenance};
use crate::registry;

impl Maintenance {
    /// Stores `raw` (chunk `fp`) as a chunk a client writes hot is
    /// stored: LZ4; inline when that small, else the volume's layout
    /// (replicas below its threshold) on servers the ring chooses, as a
    /// rebuild places shards. The record it returns is not written: a
    /// caller that does not use it leaves orphan shards for GC.
    pub async fn store_hot(
        &self,
        fp: &Fingerprint,
        raw: &[u8],
    ) -> std::result::Result<ChunkRecord, String> {
        let volume = self
            .txn("volume_config", registry::volume_config)
            .await
            .map_err(|e| format!("volume configuration: {e}"))?;
        let (codec, stored) = compress(CodecPolicy::Lz4, raw);
        if stored.len() <= volume.inline_max_bytes as usize
            && stored.len() <= dfs_core::inline::MAX_INLINE_BYTES
        {
            let mut rec = dfs_core::inline::record(raw.len() as u32, codec, stored);
            rec.verified = true;
            return Ok(rec);
        }
        let layout = if stored.len() < volume.replicate_below_bytes as usize {
            Layout {
                data_shards: 1,
                parity_shards: 0,
                replicas: volume.parity_shards + 1,
                ..Layout::default()
            }
        } else {
            Layout {
                data_shards: volume.data_shards,
                parity_shards: volume.parity_shards,
                ..Layout::default()
            }
        };
        let stored_len = stored.len() as u32;
        let shards = erasure::encode(&layout, &stored).map_err(|e| e.to_string())?;
        let shard_len = shards.first().map_or(0, Vec::len) as u32;
        let view = self.view().await.map_err(|e| format!("server list: {e}"))?;
        let placed = view.ring.place(&fp.0, shards.len());
        if placed.len() < shards.len() {
            return Err(format!(
                "{} servers up with room, {} shards to place",
                placed.len(),
                shards.len()
            ));
        }
        let puts = placed
            .iter()
            .zip(shards)
            .enumerate()
            .map(|(index, (&server, shard))| {
                let address = view.address(server).map(str::to_string);
                async move {
                    let address = address.ok_or(format!("server {server} has no address"))?;
                    let mut client = self
                        .pool
                        .client(server, &address)
                        .map_err(|e| e.to_string())?;
                    servers::put(&mut client, fp, vec![(index as u32, shard)])
                        .await
                        .map_err(|e| format!("server {server}: {e}"))
                }
            });
        for result in futures::future::join_all(puts).await {
            result?;
        }
        Ok(ChunkRecord {
            raw_len: raw.len() as u32,
            stored_len,
            codec: codec as i32,
            layout: Some(layout),
            shard_servers: placed,
            shard_len,
            verified: true,
            ..ChunkRecord::default()
        })
    }
}
