//! Reads: committed chunks with the write buffer laid over them, through
//! the chunk cache, and readahead for sequential readers.

use super::closed_maps;
use super::*;
use dfs_core::telemetry::catalog::CHUNK_CACHE;
use dfs_core::telemetry::series::Series;

impl Dfs {
    /// Reads `[start, end)` of the file as this client sees it: committed
    /// chunks, zeros in holes, buffered writes on top.
    pub async fn read_range(
        &self,
        st: &FileState,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, DfsError> {
        let mut out = vec![0u8; end.saturating_sub(start) as usize];
        if out.is_empty() {
            return Ok(out);
        }
        let chunks = st.map.overlapping(start, end);
        let datas: Vec<(MappedChunk, Bytes)> =
            stream::iter(chunks.into_iter().map(|c| async move {
                let data = self.chunk_data(st.ino, &c).await?;
                Ok::<_, DfsError>((c, data))
            }))
            .buffered(READ_PARALLELISM)
            .try_collect()
            .await?;
        for (c, data) in datas {
            let c_end = c.offset + data.len() as u64;
            let from = c.offset.max(start);
            let to = c_end.min(end);
            if from < to {
                out[(from - start) as usize..(to - start) as usize]
                    .copy_from_slice(&data[(from - c.offset) as usize..(to - c.offset) as usize]);
            }
        }
        st.buffer.overlay(start, &mut out);
        Ok(out)
    }

    /// The bytes of chunk `c` of inode `ino`.
    pub async fn chunk_data(&self, ino: u64, c: &MappedChunk) -> Result<Bytes, DfsError> {
        let fp = Fingerprint::from_slice(&c.fingerprint)
            .map_err(|e| DfsError::new(libc::EIO, format!("bad fingerprint in chunk map: {e}")))?;
        // Cached: nothing of the entry (record, tokens) is needed.
        let cached = self.cache.get(&fp).await;
        if dfs_core::telemetry::enabled() {
            let result = if cached.is_some() { "hit" } else { "miss" };
            static LOOKUPS: Series<&str, metrics::Counter> = Series::new();
            LOOKUPS
                .get(
                    result,
                    |result| metrics::counter!(CHUNK_CACHE, "result" => result),
                )
                .increment(1);
        }
        if let Some(data) = cached {
            return checked_len(fp, data, c.len);
        }
        let rec = c
            .chunk
            .clone()
            .ok_or_else(|| DfsError::new(libc::EIO, format!("chunk {fp} has no index entry")))?;
        // A map this client made from its own upload carries no read
        // tokens: where servers want them, ask first rather than be refused.
        let (rec, tokens) = if closed_maps::is_hollow(&rec) {
            // A kept map's inline record, its bytes no longer cached: they
            // come with the entry.
            self.hollow_entry(ino, c, &fp).await?
        } else if c.shard_tokens.is_empty()
            && !rec.is_inline()
            && self.cluster.tokens_in_use()
            && !self.cache.contains(&fp)
        {
            let fresh = self.fresh_chunk(ino, c).await?;
            (fresh.chunk.unwrap_or(rec), fresh.shard_tokens)
        } else {
            (rec, c.shard_tokens.clone())
        };
        // The record tried, to tell after a failure whether it changed.
        let tried = rec.is_sharded().then(|| rec.clone());
        let data = match self
            .cache
            .get_or_fetch(&self.cluster, fp, rec, tokens)
            .await
        {
            Err(e) if e.errno == libc::EKEYEXPIRED || e.errno == libc::ESTALE => {
                // The map's read tokens expired (or it came from this
                // client's own upload, with none), or the chunk left the
                // cold store since: the chunk's entry again, with fresh
                // tokens.
                let fresh = self.fresh_chunk(ino, c).await?;
                let rec = fresh.chunk.clone().unwrap_or_default();
                self.cache
                    .get_or_fetch(&self.cluster, fp, rec, fresh.shard_tokens)
                    .await?
            }
            Err(e) if e.errno == libc::EIO && tried.is_some() => {
                // The chunk may have moved since this map was fetched
                // (recompressed by the tiering worker onto new shards, or
                // packed) and its old shards been collected: read it by its
                // record as it is now, if that is another.
                let Ok(fresh) = self.fresh_chunk(ino, c).await else {
                    return Err(e);
                };
                match fresh.chunk {
                    Some(rec) if Some(&rec) != tried.as_ref() => {
                        self.cache
                            .get_or_fetch(&self.cluster, fp, rec, fresh.shard_tokens)
                            .await?
                    }
                    _ => return Err(e),
                }
            }
            other => other?,
        };
        checked_len(fp, data, c.len)
    }

    /// The entry (record and read tokens) of chunk `c`, whose record in a
    /// kept map is hollow: as the file maps it now, or, if the file changed
    /// since it was opened, by fingerprint (the entry outlives the change
    /// until garbage collection), so the version opened is still read.
    async fn hollow_entry(
        &self,
        ino: u64,
        c: &MappedChunk,
        fp: &Fingerprint,
    ) -> Result<(ChunkRecord, Vec<Vec<u8>>), DfsError> {
        let err = match self.fresh_chunk(ino, c).await {
            Ok(fresh) => match fresh.chunk {
                Some(rec) => return Ok((rec, fresh.shard_tokens)),
                None => DfsError::new(libc::EIO, format!("chunk {fp} has no index entry")),
            },
            Err(e) => e,
        };
        let reply = self
            .cluster
            .meta
            .lookup_chunks(dfs_proto::LookupChunksRequest {
                fingerprints: vec![fp.to_vec()],
            })
            .await?;
        match (reply.known.first(), reply.records.into_iter().next()) {
            (Some(true), Some(rec)) if rec.is_inline() && !closed_maps::is_hollow(&rec) => {
                Ok((rec, Vec::new()))
            }
            _ => Err(err),
        }
    }

    /// Chunk `c` of `ino` as the metadata server maps it now, with fresh
    /// read tokens. The same chunk, or EIO: a file changed by another
    /// client is read again from its new map at the next open.
    async fn fresh_chunk(&self, ino: u64, c: &MappedChunk) -> Result<MappedChunk, DfsError> {
        let reply = self
            .cluster
            .meta
            .get_chunk_map(dfs_proto::ChunkMapRequest {
                ino,
                from_offset: c.offset,
                limit: 1,
                unless_data_version: 0,
            })
            .await?;
        reply
            .chunks
            .into_iter()
            .find(|m| m.offset == c.offset && m.fingerprint == c.fingerprint)
            .ok_or_else(|| {
                DfsError::new(
                    libc::EIO,
                    format!("inode {ino}: the chunk at {} changed while read", c.offset),
                )
            })
    }

    /// Starts fetching the chunks in the window after `offset` into the
    /// cache, but for those before `issued_until` (started by an earlier
    /// read of the same sequential run); returns the window's end.
    pub fn readahead(&self, st: &FileState, offset: u64, issued_until: u64) -> u64 {
        let end = (offset + self.readahead_bytes).min(st.committed_size);
        let start = offset.max(issued_until);
        for c in st.map.overlapping_iter(start, end) {
            if c.offset < issued_until {
                // Straddles the old window's end: started then.
                continue;
            }
            let (Ok(fp), Some(rec)) = (Fingerprint::from_slice(&c.fingerprint), c.chunk.as_ref())
            else {
                continue;
            };
            // Nothing to read with (a map from this client's own upload):
            // the read itself fetches the tokens.
            if self.cache.contains(&fp)
                || (c.shard_tokens.is_empty() && !rec.is_inline() && self.cluster.tokens_in_use())
                || closed_maps::is_hollow(rec)
            {
                continue;
            }
            let rec = rec.clone();
            let cache = self.cache.clone();
            let cluster = self.cluster.clone();
            let tokens = c.shard_tokens.clone();
            tokio::spawn(async move {
                if let Err(e) = cache.get_or_fetch(&cluster, fp, rec, tokens).await {
                    tracing::debug!(chunk = %fp, error = %e, "readahead failed");
                }
            });
        }
        end.max(issued_until)
    }
}

/// `data`, if it is as long as the chunk map says chunk `fp` is.
fn checked_len(fp: Fingerprint, data: Bytes, len: u32) -> Result<Bytes, DfsError> {
    if data.len() != len as usize {
        return Err(DfsError::new(
            libc::EIO,
            format!("chunk {fp} is {} bytes, the map says {len}", data.len()),
        ));
    }
    Ok(data)
}
