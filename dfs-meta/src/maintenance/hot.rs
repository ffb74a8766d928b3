//! Storing a chunk dfs-meta holds as a client writing it hot would: used
//! to bring cold chunks back (`cold::reheat`).

use bytes::Bytes;
use dfs_core::codec::{compress, CodecPolicy};
use dfs_core::erasure;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{ChunkRecord, Codec, Layout};

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
        let shards = erasure::encode(&layout, &Bytes::from(stored)).map_err(|e| e.to_string())?;
        let shard_len = shards.first().map_or(0, Bytes::len) as u32;
        let view = self.view().await.map_err(|e| format!("server list: {e}"))?;
        let placed = view.ring.place(&fp.0, shards.len());
        if placed.len() < shards.len() {
            return Err(format!(
                "{} servers up with room, {} shards to place",
                placed.len(),
                shards.len()
            ));
        }
        self.put_each(&view, fp, &placed, shards).await?;
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

    /// Stores chunk `fp`, now `stored` with `codec`, in `rec`'s layout on
    /// `rec`'s servers, each shard on another server than the one holding
    /// that index now ([`beside`]): nothing is overwritten, so a reader of
    /// `rec` still finds its shards, which become orphans for GC once the
    /// returned record replaces it. The record is not written here.
    pub async fn store_beside(
        &self,
        fp: &Fingerprint,
        rec: &ChunkRecord,
        codec: Codec,
        stored: Vec<u8>,
    ) -> std::result::Result<ChunkRecord, String> {
        let placed = beside(&rec.shard_servers)
            .ok_or("its shards are all on one server: nowhere to write beside them")?;
        let layout = rec.layout.unwrap_or_default();
        let stored_len = stored.len() as u32;
        let shards = erasure::encode(&layout, &Bytes::from(stored)).map_err(|e| e.to_string())?;
        if shards.len() != placed.len() {
            return Err(format!(
                "{} shards for {} servers",
                shards.len(),
                placed.len()
            ));
        }
        let shard_len = shards.first().map_or(0, Bytes::len) as u32;
        let view = self.view().await.map_err(|e| format!("server list: {e}"))?;
        self.put_each(&view, fp, &placed, shards).await?;
        let mut new = rec.clone();
        new.stored_len = stored_len;
        new.set_codec(codec);
        new.dictionary = 0;
        new.shard_servers = placed;
        new.shard_len = shard_len;
        new.verified = true;
        new.verification_failed = false;
        Ok(new)
    }

    /// Puts shard `i` of chunk `fp` on server `placed[i]`, all at once.
    async fn put_each(
        &self,
        view: &super::ServerView,
        fp: &Fingerprint,
        placed: &[u32],
        shards: Vec<Bytes>,
    ) -> std::result::Result<(), String> {
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
        Ok(())
    }
}

/// `servers` (shard `i` on `servers[i]`) turned by the least step that
/// puts no shard on the server holding that index now: a server keeps
/// one key per (chunk, index), so the new shards land beside the old
/// ones, on the same servers (the same failure domains). `None` when no
/// turn does (every shard on one server).
pub fn beside(servers: &[u32]) -> Option<Vec<u32>> {
    let n = servers.len();
    (1..n)
        .map(|step| (0..n).map(|i| servers[(i + step) % n]).collect::<Vec<_>>())
        .find(|turned| turned.iter().zip(servers).all(|(new, old)| new != old))
}

#[cfg(test)]
mod tests {
    use super::beside;

    #[test]
    fn every_shard_moves_to_a_server_of_the_chunk_that_lacks_its_index() {
        let nine: Vec<u32> = (1..=9).collect();
        let turned = beside(&nine).expect("a turn");
        assert_eq!(turned, vec![2, 3, 4, 5, 6, 7, 8, 9, 1]);
        // Two shards on a server (three servers, six shards): still a turn.
        let three = [1, 2, 3, 1, 2, 3];
        let turned = beside(&three).expect("a turn");
        assert!(turned.iter().zip(&three).all(|(a, b)| a != b));
        let mut sorted = turned.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 1, 2, 2, 3, 3], "the same servers");
        // [1, 1, 2]: no turn keeps every shard off its index's server.
        assert_eq!(beside(&[1, 1, 2]), None);
        assert_eq!(beside(&[4]), None);
        assert_eq!(beside(&[]), None);
    }
}
