//! Checking that an index entry's shards hold the chunk its fingerprint
//! names, before dedup offers the entry to anyone but its uploader.
//!
//! A client commits the record of a chunk it uploaded; nothing stops a
//! hostile one from committing a record for shards it never stored, or
//! stored as garbage, hoping another client's write of the same bytes is
//! deduplicated against it and lost. So an entry is offered for dedup only
//! to the identity that uploaded it (`ChunkRecord.owner`) until dfs-meta
//! has read its shards back, decoded them and found the fingerprint
//! (`verified`). The check runs when another identity first writes the
//! same chunk (its lookup or its commit), not for every upload: a volume
//! written by one identity never pays for it.

use std::collections::HashSet;

use dfs_core::erasure;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{ChunkRecord, ChunkState, DeleteShardsRequest, ShardKey};

use super::repair::ServerView;
use super::Maintenance;
use crate::error::Result;
use crate::keys;
use crate::store::{get_record, put_record};

/// What reading an entry's shards back showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The shards decode to the chunk the fingerprint names.
    Good,
    /// They do not, or too many are missing from servers that are up: the
    /// entry is not the chunk.
    Bad(String),
    /// Not enough servers answered to tell.
    Unknown(String),
}

impl Maintenance {
    /// Reads every shard of `rec` from the servers that are up and judges
    /// it against `fp`. Inline entries were checked at their commit.
    pub async fn verify_chunk(&self, fp: &Fingerprint, rec: &ChunkRecord) -> Verdict {
        if !rec.is_sharded() {
            // Inline: checked at its commit; packed: by dfs-meta itself.
            return Verdict::Good;
        }
        let view = match self.view().await {
            Ok(view) => view,
            Err(e) => return Verdict::Unknown(format!("server list: {e}")),
        };
        self.verify_with(&view, fp, rec).await
    }

    /// The raw bytes of a chunk kept as shards, read from the servers that
    /// are up, decoded and checked against `fp` (tiering moves them).
    pub async fn read_chunk(
        &self,
        fp: &Fingerprint,
        rec: &ChunkRecord,
    ) -> std::result::Result<Vec<u8>, String> {
        let view = self.view().await.map_err(|e| format!("server list: {e}"))?;
        let layout = rec.layout.unwrap_or_default();
        let total = rec.shard_servers.len();
        let need = erasure::shards_needed(&layout);
        if !rec.is_sharded() || total == 0 || need == 0 || total != erasure::shard_count(&layout) {
            return Err("not a chunk kept as shards".into());
        }
        let reads = (0..total).map(|index| {
            let server = rec.shard_servers[index];
            let address = view.address(server).map(str::to_string);
            let up = view.is_up(server);
            async move {
                let address = address.filter(|_| up)?;
                self.read_shard(server, &address, fp, index).await.ok()
            }
        });
        let shards: Vec<Option<Vec<u8>>> = futures::future::join_all(reads)
            .await
            .into_iter()
            .map(|s| s.filter(|d| d.len() == rec.shard_len as usize))
            .collect();
        let have = shards.iter().filter(|s| s.is_some()).count();
        if have < need {
            return Err(format!("{have} of {total} shards readable, {need} needed"));
        }
        let (fp, rec) = (*fp, rec.clone());
        tokio::task::spawn_blocking(move || {
            let layout = rec.layout.unwrap_or_default();
            let stored = erasure::decode(&layout, shards, rec.stored_len as usize)
                .map_err(|e| format!("chunk {fp}: {e}"))?;
            let raw = dfs_core::codec::decompress_i32(rec.codec, &stored, rec.raw_len as usize)
                .map_err(|e| format!("chunk {fp}: {e}"))?;
            if Fingerprint::of(&raw) != fp {
                return Err(format!(
                    "chunk {fp}: decoded bytes do not match the fingerprint"
                ));
            }
            Ok(raw)
        })
        .await
        .map_err(|e| format!("decode panicked: {e}"))?
    }

    async fn verify_with(&self, view: &ServerView, fp: &Fingerprint, rec: &ChunkRecord) -> Verdict {
        let layout = rec.layout.unwrap_or_default();
        let total = rec.shard_servers.len();
        let need = erasure::shards_needed(&layout);
        if total == 0 || need == 0 || total != erasure::shard_count(&layout) {
            return Verdict::Bad("malformed layout".into());
        }
        let reads = (0..total).map(|index| {
            let server = rec.shard_servers[index];
            let address = view.address(server).map(str::to_string);
            let up = view.is_up(server);
            async move {
                let Some(address) = address.filter(|_| up) else {
                    return (index, None);
                };
                let result = self.read_shard(server, &address, fp, index).await;
                (index, Some(result))
            }
        });
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; total];
        // Shards a server that is up said it does not hold (or holds
        // damaged, or of the wrong size): evidence against the entry.
        let mut absent = 0usize;
        for (index, result) in futures::future::join_all(reads).await {
            match result {
                Some(Ok(data)) if data.len() == rec.shard_len as usize => {
                    shards[index] = Some(data)
                }
                Some(Ok(_)) => absent += 1,
                Some(Err(e)) if e.errno == libc::ENOENT || e.errno == libc::EBADMSG => absent += 1,
                _ => {}
            }
        }
        let have = shards.iter().filter(|s| s.is_some()).count();
        if have < need {
            return if absent > total - need {
                Verdict::Bad(format!(
                    "{absent} of {total} shards are not on their servers"
                ))
            } else {
                Verdict::Unknown(format!("{have} of {total} shards readable, {need} needed"))
            };
        }
        let read: Vec<Option<Vec<u8>>> = shards.clone();
        let fp_owned = *fp;
        let rec_owned = rec.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let all = super::repair::rebuild_and_verify(&fp_owned, &rec_owned, shards)?;
            // Every shard read must be the one the chunk codes to: parity
            // that is garbage would surface only at the next rebuild.
            for (i, got) in read.iter().enumerate() {
                if got.as_ref().is_some_and(|g| *g != all[i]) {
                    return Err(format!("shard {i} is not the chunk's"));
                }
            }
            Ok(())
        })
        .await;
        match checked {
            Ok(Ok(())) => Verdict::Good,
            Ok(Err(why)) => Verdict::Bad(why),
            Err(e) => Verdict::Unknown(format!("check panicked: {e}")),
        }
    }

    /// Checks the entries in `unchecked` (fingerprint, record) and writes
    /// each verdict into the index when the entry has not changed since
    /// it was read. Returns the fingerprints found good.
    pub async fn verify_and_record(
        &self,
        unchecked: Vec<(Fingerprint, ChunkRecord)>,
    ) -> Result<HashSet<Fingerprint>> {
        use futures::stream::{self, StreamExt};
        let verdicts: Vec<(Fingerprint, ChunkRecord, Verdict)> = stream::iter(unchecked)
            .map(|(fp, rec)| async move {
                let verdict = self.verify_chunk(&fp, &rec).await;
                (fp, rec, verdict)
            })
            .buffer_unordered(VERIFY_PARALLELISM)
            .collect()
            .await;
        let mut good = HashSet::new();
        let mut decided = Vec::new();
        for (fp, rec, verdict) in verdicts {
            match verdict {
                Verdict::Good => {
                    good.insert(fp);
                    decided.push((fp, rec, true));
                }
                Verdict::Bad(why) => {
                    tracing::warn!(chunk = %fp, owner = %hex(&rec.owner), why, "an index entry is not the chunk it names: no one will dedup against it");
                    decided.push((fp, rec, false));
                }
                Verdict::Unknown(why) => {
                    tracing::debug!(chunk = %fp, why, "cannot check an index entry now");
                }
            }
        }
        if decided.is_empty() {
            return Ok(good);
        }
        let failed: Vec<(Fingerprint, ChunkRecord)> = self
            .txn("verify_record", move |t| {
                let mut failed = Vec::new();
                for (fp, expected, is_good) in &decided {
                    let key = keys::hash(fp.as_bytes());
                    let Some(mut current) = get_record::<ChunkRecord>(t, &key)? else {
                        continue;
                    };
                    if current.state() != ChunkState::Live || !same_entry(&current, expected) {
                        continue;
                    }
                    if *is_good {
                        current.verified = true;
                    } else {
                        current.verification_failed = true;
                        failed.push((*fp, current.clone()));
                    }
                    put_record(t, &key, &current);
                }
                Ok(failed)
            })
            .await?;
        for (fp, rec) in failed {
            self.delete_uploads_of(&fp, &rec).await;
        }
        Ok(good)
    }

    /// Deletes what the uploader of an entry found not to be its chunk
    /// stored under its fingerprint: every shard index, on every server
    /// that is up (chunk servers keep who uploaded what). A client may
    /// never replace a stored shard with other bytes, so without this the
    /// next writer of the chunk could not store it where its garbage lies;
    /// shards anyone else stored stay. Best effort: what a server that is
    /// down keeps is an orphan for the sweep.
    async fn delete_uploads_of(&self, fp: &Fingerprint, rec: &ChunkRecord) {
        if rec.owner.is_empty() {
            return;
        }
        let view = match self.view().await {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(chunk = %fp, error = %e, "cannot delete a bad entry's uploads");
                return;
            }
        };
        let every_index: Vec<ShardKey> = (0..=u32::from(u8::MAX))
            .map(|index| ShardKey {
                token: Vec::new(),
                fingerprint: fp.to_vec(),
                index,
            })
            .collect();
        let before = dfs_core::time::now_ns();
        let up: Vec<u32> = view.up_servers().map(|(id, _)| id).collect();
        for server in up {
            let Some(address) = view.address(server) else {
                continue;
            };
            let shards = every_index.clone();
            let deleted = match self.pool.client(server, address) {
                Err(e) => Err(e.to_string()),
                Ok(mut client) => client
                    .delete_shards(DeleteShardsRequest {
                        shards,
                        written_before_ns: before,
                        uploaded_by: rec.owner.clone(),
                    })
                    .await
                    .map(|r| r.into_inner().deleted)
                    .map_err(|e| e.message().to_string()),
            };
            match deleted {
                Ok(n) => {
                    tracing::info!(chunk = %fp, server_id = server, shards = n, owner = %hex(&rec.owner), "deleted a bad entry's uploads")
                }
                Err(e) => {
                    tracing::warn!(chunk = %fp, server_id = server, error = %e, "cannot delete a bad entry's uploads")
                }
            }
        }
    }
}

/// Chunks checked at once.
const VERIFY_PARALLELISM: usize = 8;

/// Whether two records describe the same stored bytes in the same places.
fn same_entry(a: &ChunkRecord, b: &ChunkRecord) -> bool {
    a.shard_servers == b.shard_servers
        && a.codec == b.codec
        && a.layout == b.layout
        && a.stored_len == b.stored_len
        && a.shard_len == b.shard_len
        && a.raw_len == b.raw_len
        && a.owner == b.owner
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
