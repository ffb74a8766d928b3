//! The read pipeline for one chunk: an inline chunk's bytes came with the
//! chunk map and are only decoded; otherwise fetch shards in parallel (data shards
//! first, parity only when some fail), decode from any k of k+m,
//! decompress, and verify the SHA-256 fingerprint. A shard a server reports
//! corrupt is rewritten from the others once the chunk is verified.

use std::sync::Arc;

use bytes::Bytes;
use dfs_core::codec;
use dfs_core::erasure;
use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::inline;
use dfs_proto::{ChunkRecord, Codec, PutShardsRequest, Shard};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::client::Cluster;

/// Decodes shards into the chunk's raw bytes and checks its fingerprint.
fn assemble(
    fp: &Fingerprint,
    rec: &ChunkRecord,
    shards: Vec<Option<Bytes>>,
) -> Result<Bytes, DfsError> {
    let layout = rec.layout.unwrap_or_default();
    let stored = erasure::decode_shared(&layout, shards, rec.stored_len as usize)
        .map_err(|e| DfsError::new(libc::EIO, format!("chunk {fp}: {e}")))?;
    let codec = Codec::try_from(rec.codec).unwrap_or(Codec::None);
    let raw = codec::decompress_shared(codec, stored, rec.raw_len as usize)
        .map_err(|e| DfsError::new(libc::EIO, format!("chunk {fp}: {e}")))?;
    if Fingerprint::of(&raw) != *fp {
        return Err(DfsError::new(
            libc::EIO,
            format!("chunk {fp}: content does not match its fingerprint"),
        ));
    }
    Ok(raw)
}

fn is_corrupt(err: &DfsError) -> bool {
    err.errno == libc::EBADMSG
}

/// A server refused the read's token (expired, or none: a chunk map this
/// client made itself from its own upload).
pub fn is_token_refusal(err: &DfsError) -> bool {
    err.errno == libc::EKEYEXPIRED || err.errno == libc::EACCES
}

impl Cluster {
    /// Reads and verifies one chunk.
    /// `tokens`: the read token of each shard, by index (from the chunk
    /// map; none without a client certificate).
    pub async fn fetch_chunk(
        self: &Arc<Self>,
        fp: Fingerprint,
        rec: &ChunkRecord,
        tokens: &[Vec<u8>],
    ) -> Result<Bytes, DfsError> {
        if rec.is_inline() {
            // The bytes came with the chunk map.
            let dictionary = match rec.dictionary {
                0 => None,
                id => Some(self.dictionary(id).await?),
            };
            return inline::decode(&fp, rec, dictionary.as_deref())
                .map(Bytes::from)
                .map_err(|e| {
                    tracing::error!(chunk = %fp, error = %e, "inline chunk unreadable");
                    DfsError::new(libc::EIO, format!("chunk {fp}: {e}"))
                });
        }
        if rec.is_packed() {
            // In a pack on the cold store: dfs-meta reads it for us.
            let reply = self
                .meta
                .read_cold_chunk(dfs_proto::ColdChunkRequest {
                    fingerprint: fp.to_vec(),
                    token: tokens.first().cloned().unwrap_or_default(),
                })
                .await?;
            if Fingerprint::of(&reply.data) != fp {
                return Err(DfsError::new(
                    libc::EIO,
                    format!("chunk {fp}: cold read does not match its fingerprint"),
                ));
            }
            return Ok(Bytes::from(reply.data));
        }
        let layout = rec.layout.unwrap_or_default();
        let total = rec.shard_servers.len();
        let need = if layout.parity_shards == 0 {
            1
        } else {
            layout.data_shards as usize
        };
        if total == 0 || need == 0 || need > total {
            return Err(DfsError::new(
                libc::EIO,
                format!("chunk {fp}: malformed index entry"),
            ));
        }
        let mut shards: Vec<Option<Bytes>> = vec![None; total];
        let mut corrupt: Vec<usize> = Vec::new();
        let mut next = 0usize;
        let mut have = 0usize;
        let mut in_flight = FuturesUnordered::new();
        let mut last_error = None;
        // Start with the first `need` shards (the data shards: no decoding
        // needed when they all answer); each failure starts the next one.
        while next < need {
            in_flight.push(self.fetch_shard(fp, rec, tokens, next));
            next += 1;
        }
        let mut token_refused = false;
        while let Some((index, result)) = in_flight.next().await {
            match result {
                Ok(data) if data.len() == rec.shard_len as usize => {
                    shards[index] = Some(data);
                    have += 1;
                    if have == need {
                        break;
                    }
                }
                Ok(data) => {
                    tracing::warn!(chunk = %fp, shard = index, len = data.len(), "shard has the wrong length");
                    corrupt.push(index);
                    if next < total {
                        in_flight.push(self.fetch_shard(fp, rec, tokens, next));
                        next += 1;
                    }
                }
                Err(err) => {
                    token_refused |= is_token_refusal(&err);
                    tracing::warn!(chunk = %fp, shard = index, server_id = rec.shard_servers[index], error = %err, "shard read failed");
                    if is_corrupt(&err) {
                        corrupt.push(index);
                    }
                    last_error = Some(err);
                    if next < total {
                        in_flight.push(self.fetch_shard(fp, rec, tokens, next));
                        next += 1;
                    }
                }
            }
        }
        drop(in_flight);
        if have < need {
            let detail = last_error.map(|e| e.message).unwrap_or_default();
            return Err(DfsError::new(
                // The caller asks for fresh tokens and tries once more.
                if token_refused {
                    libc::EKEYEXPIRED
                } else {
                    libc::EIO
                },
                format!(
                    "chunk {fp}: only {have} of the {need} shards needed are readable ({detail})"
                ),
            ));
        }
        // The shards are kept (a copy) only to rewrite bad ones from.
        let kept = (!corrupt.is_empty()).then(|| shards.clone());
        let (raw, good) = match assemble(&fp, rec, shards) {
            Ok(raw) => (raw, kept.unwrap_or_default()),
            Err(err) => {
                // A shard passed its server's checksum yet decodes wrong:
                // fetch everything and find a combination that verifies.
                tracing::error!(chunk = %fp, error = %err, "chunk failed verification; trying other shards");
                self.recover_by_elimination(fp, rec, tokens, &mut corrupt)
                    .await?
            }
        };
        if !corrupt.is_empty() {
            if tokens.is_empty() {
                self.repair_shards(fp, rec.clone(), good, corrupt);
            } else {
                // A client with a certificate may only store chunks dfs-meta
                // told it to upload: the servers report corrupt shards
                // their reads meet, and dfs-meta rebuilds them.
                tracing::warn!(chunk = %fp, shards = ?corrupt, "bad shards left to dfs-meta's repair");
            }
        }
        Ok(raw)
    }

    fn fetch_shard(
        self: &Arc<Self>,
        fp: Fingerprint,
        rec: &ChunkRecord,
        tokens: &[Vec<u8>],
        index: usize,
    ) -> impl std::future::Future<Output = (usize, Result<Bytes, DfsError>)> + '_ {
        let server = rec.shard_servers[index];
        let token = tokens.get(index).cloned().unwrap_or_default();
        async move {
            (
                index,
                self.get_shard(server, &fp, index as u32, token).await,
            )
        }
    }

    /// Finds a set of shards that decodes to the fingerprint when some
    /// shard passed its server's checksum yet is wrong: every shard is
    /// fetched, those of the wrong length are dropped, then one suspect at
    /// a time is left out, then every pair (9 of 6+3 make 36 tries of a
    /// chunk of at most 128 KiB).
    async fn recover_by_elimination(
        self: &Arc<Self>,
        fp: Fingerprint,
        rec: &ChunkRecord,
        tokens: &[Vec<u8>],
        corrupt: &mut Vec<usize>,
    ) -> Result<(Bytes, Vec<Option<Bytes>>), DfsError> {
        let total = rec.shard_servers.len();
        let mut fetched: Vec<Option<Bytes>> = futures::future::join_all(
            (0..total).map(|i| async move { self.fetch_shard(fp, rec, tokens, i).await.1.ok() }),
        )
        .await;
        for (index, shard) in fetched.iter_mut().enumerate() {
            if shard
                .as_ref()
                .is_some_and(|s| s.len() != rec.shard_len as usize)
            {
                *shard = None;
                if !corrupt.contains(&index) {
                    corrupt.push(index);
                }
            }
        }
        // Maybe only the wrong-length shards were bad.
        if let Ok(raw) = assemble(&fp, rec, fetched.clone()) {
            return Ok((raw, fetched));
        }
        let mut suspects: Vec<Vec<usize>> = (0..total).map(|a| vec![a]).collect();
        for a in 0..total {
            suspects.extend((a + 1..total).map(|b| vec![a, b]));
        }
        for left_out in suspects {
            if left_out.iter().any(|&i| fetched[i].is_none()) {
                continue;
            }
            let mut attempt = fetched.clone();
            for &i in &left_out {
                attempt[i] = None;
            }
            if let Ok(raw) = assemble(&fp, rec, attempt.clone()) {
                tracing::warn!(chunk = %fp, shards = ?left_out, "found the bad shards by elimination");
                for i in left_out {
                    if !corrupt.contains(&i) {
                        corrupt.push(i);
                    }
                }
                return Ok((raw, attempt));
            }
        }
        Err(DfsError::new(
            libc::EIO,
            format!("chunk {fp}: no combination of shards verifies"),
        ))
    }

    /// Rewrites shards that a server reported corrupt, rebuilt from the
    /// verified ones, in the background.
    fn repair_shards(
        self: &Arc<Self>,
        fp: Fingerprint,
        rec: ChunkRecord,
        good: Vec<Option<Bytes>>,
        corrupt: Vec<usize>,
    ) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let layout = rec.layout.unwrap_or_default();
            let shards = if layout.parity_shards == 0 {
                match good.iter().flatten().next() {
                    Some(copy) => vec![copy.clone(); rec.shard_servers.len()],
                    None => return,
                }
            } else {
                let good = good.into_iter().map(|s| s.map(Vec::from)).collect();
                match erasure::reconstruct_all(&layout, good) {
                    Ok(s) => s.into_iter().map(Bytes::from).collect(),
                    Err(e) => {
                        tracing::warn!(chunk = %fp, error = %e, "cannot rebuild shards for repair");
                        return;
                    }
                }
            };
            for index in corrupt {
                let (Some(server), Some(data)) = (rec.shard_servers.get(index), shards.get(index))
                else {
                    continue;
                };
                let request = PutShardsRequest {
                    shards: vec![Shard {
                        token: Default::default(),
                        fingerprint: fp.to_vec(),
                        index: index as u32,
                        data: data.clone(),
                    }],
                };
                let result = match cluster.server(*server).await {
                    Ok(conn) => conn
                        .client
                        .clone()
                        .put_shards(request)
                        .await
                        .map_err(DfsError::from)
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(chunk = %fp, shard = index, server_id = server, "repaired corrupt shard")
                    }
                    Err(e) => {
                        tracing::warn!(chunk = %fp, shard = index, server_id = server, error = %e, "shard repair failed")
                    }
                }
            }
        });
    }
}
