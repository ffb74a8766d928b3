//! The write pipeline for a batch of chunks that content-defined chunking
//! has already cut: fingerprint; small chunks compressed at once, and those
//! that store in a few KiB go inline (their bytes ride in the commit, with
//! no lookup and no upload); one batched dedup lookup for the rest, then
//! for unknown chunks only: compression, erasure coding, placement and
//! upload, with each server receiving one batch. A small flush stages its
//! chunks inline (dfs-meta moves them to the servers later), one too big
//! to stage as two halves (`split`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dfs_core::codec::{self, CodecPolicy};
use dfs_core::erasure;
use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::inline;
use dfs_proto::{ChunkRecord, Codec, Layout, LookupChunksRequest, MappedChunk, PutGrant};

use super::split;
use crate::client::Cluster;

/// A chunk cut from a file, not yet stored.
pub struct RawChunk {
    pub offset: u64,
    pub data: Bytes,
    /// The fingerprint, when whoever cut the chunk already computed it.
    pub fingerprint: Option<Fingerprint>,
}

impl RawChunk {
    pub fn new(offset: u64, data: Bytes) -> Self {
        Self {
            offset,
            data,
            fingerprint: None,
        }
    }
}

/// Fingerprints chunks on the blocking pool while the caller goes on (with
/// cutting the next window of a flush, so both cores work), and hands the
/// results back in order.
#[derive(Default)]
pub struct Fingerprinter {
    /// Chunks before this index are being fingerprinted (or done).
    started_to: usize,
    running: Vec<(usize, Running)>,
}

/// One batch of fingerprints: done in place (a small batch), or on the
/// blocking pool.
enum Running {
    Done(Vec<Fingerprint>),
    Started(tokio::task::JoinHandle<Vec<Fingerprint>>),
}

impl Fingerprinter {
    /// Starts fingerprinting the chunks of `chunks` not started yet.
    pub fn start(&mut self, chunks: &[RawChunk]) {
        if self.started_to >= chunks.len() {
            return;
        }
        let datas: Vec<Bytes> = chunks[self.started_to..]
            .iter()
            .map(|c| c.data.clone())
            .collect();
        let in_place = total_bytes(&datas) <= CPU_IN_PLACE_BYTES;
        let fingerprint = move || datas.iter().map(|d| Fingerprint::of(d)).collect();
        let running = if in_place {
            Running::Done(fingerprint())
        } else {
            Running::Started(tokio::task::spawn_blocking(fingerprint))
        };
        self.running.push((self.started_to, running));
        self.started_to = chunks.len();
    }

    /// Waits for every fingerprint started and stores them in `chunks`.
    pub async fn finish(self, chunks: &mut [RawChunk]) -> Result<(), DfsError> {
        for (first, running) in self.running {
            let fps = match running {
                Running::Done(fps) => fps,
                Running::Started(handle) => handle
                    .await
                    .map_err(|e| DfsError::new(libc::EIO, format!("worker failed: {e}")))?,
            };
            for (chunk, fp) in chunks[first..].iter_mut().zip(fps) {
                chunk.fingerprint = Some(fp);
            }
        }
        Ok(())
    }
}

/// A chunk ready for the commit: `uploaded` is set when this client wrote
/// its shards (the metadata server then creates its index entry).
pub struct StoredChunk {
    pub mapped: MappedChunk,
    pub uploaded: bool,
    /// The raw bytes, kept until the commit in case they must be uploaded
    /// again, and then handed to the cache.
    pub data: Bytes,
}

/// An unknown chunk after compression and coding.
pub(super) struct Encoded {
    pub(super) fp: Fingerprint,
    pub(super) record: ChunkRecord,
    pub(super) shards: Vec<Bytes>,
}

impl Encoded {
    /// A chunk kept inline: its bytes go in the commit, no shards.
    fn inline(fp: Fingerprint, raw_len: usize, codec: Codec, stored: Vec<u8>) -> Self {
        Self {
            fp,
            record: inline::record(raw_len as u32, codec, stored),
            shards: Vec::new(),
        }
    }
}

/// Put tokens from a dedup lookup: by chunk, by server.
pub(super) type PutGrants = HashMap<Fingerprint, HashMap<u32, Vec<u8>>>;

/// The lookup's grants (by request position) keyed by chunk.
fn put_grants(asked: &[Unstored], grants: &[PutGrant]) -> PutGrants {
    asked
        .iter()
        .zip(grants)
        .filter(|(_, grant)| !grant.servers.is_empty())
        .map(|(chunk, grant)| {
            let by_server = grant
                .servers
                .iter()
                .copied()
                .zip(grant.tokens.iter().cloned())
                .collect();
            (chunk.fp, by_server)
        })
        .collect()
}

/// How many upload rounds are tried when servers fail mid-upload.
pub(super) const UPLOAD_ROUNDS: usize = 4;

/// Chunks up to this many times the volume's inline limit are compressed
/// before the dedup lookup, to see whether they go inline (source files
/// compress 2-4x with LZ4); bigger ones rarely would.
const INLINE_PROBE_RATIO: usize = 4;

/// Bytes of CPU work (fingerprinting, compressing, coding) done in place on
/// the calling task rather than on a blocking thread: a hand-off there and
/// back costs more than a small file's work. A small file's flush woke
/// threads ~54 times in the mount (perf stat, 300 files of 128 KiB), each
/// hand-off two of them.
const CPU_IN_PLACE_BYTES: usize = 256 * 1024;

pub fn layout_for(volume: &dfs_proto::VolumeConfig, stored_len: usize) -> Layout {
    if volume.parity_shards == 0 {
        return Layout {
            data_shards: 1,
            parity_shards: 0,
            replicas: 1,
            inline: false,
            packed: false,
        };
    }
    if stored_len < volume.replicate_below_bytes as usize {
        // As many copies as coding would survive losses, plus one.
        return Layout {
            data_shards: 1,
            parity_shards: 0,
            replicas: volume.parity_shards + 1,
            inline: false,
            packed: false,
        };
    }
    Layout {
        data_shards: volume.data_shards,
        parity_shards: volume.parity_shards,
        replicas: 0,
        inline: false,
        packed: false,
    }
}

/// Whether stored bytes of `stored_len` go inline into the metadata store
/// (chunks storing in at most `limit`), taking them from `budget` (the
/// inline bytes this commit may still carry) when they do.
fn take_inline(limit: usize, stored_len: usize, budget: &mut usize) -> bool {
    let fits =
        stored_len <= limit && stored_len <= inline::MAX_INLINE_BYTES && stored_len <= *budget;
    if fits {
        *budget -= stored_len;
    }
    fits
}

/// A chunk not in the index yet, with its compressed bytes when they were
/// already computed (small chunks are compressed before the lookup).
pub(super) struct Unstored {
    fp: Fingerprint,
    data: Bytes,
    compressed: Option<(Codec, Bytes)>,
}

impl Unstored {
    pub(super) fn len(&self) -> usize {
        self.data.len()
    }

    pub(super) fn new(fp: Fingerprint, data: Bytes) -> Self {
        Self {
            fp,
            data,
            compressed: None,
        }
    }
}

/// Compresses a chunk; one best stored raw (incompressible data) is its own
/// bytes, shared with the write buffer rather than copied: the shards of a
/// raw chunk are slices of the buffer the kernel wrote into.
pub(super) fn compress_shared(policy: CodecPolicy, data: &Bytes) -> (Codec, Bytes) {
    match codec::compress_unless_raw(policy, data) {
        Some((codec, stored)) => (codec, Bytes::from(stored)),
        None => (Codec::None, data.clone()),
    }
}

/// Compresses a chunk (unless that was done already) and places it in a
/// layout: inline when it stores in at most `inline_limit` and the budget
/// allows, else replicas or Reed-Solomon shards.
fn encode(
    volume: &dfs_proto::VolumeConfig,
    policy: CodecPolicy,
    chunk: Unstored,
    inline_limit: usize,
    inline_budget: &Mutex<usize>,
) -> Result<Encoded, DfsError> {
    let Unstored {
        fp,
        data,
        compressed,
    } = chunk;
    let raw_len = data.len();
    let (codec, stored) = compressed.unwrap_or_else(|| compress_shared(policy, &data));
    let inline = {
        let mut budget = inline_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        take_inline(inline_limit, stored.len(), &mut budget)
    };
    if inline {
        return Ok(Encoded::inline(fp, raw_len, codec, Vec::from(stored)));
    }
    let layout = layout_for(volume, stored.len());
    let shards = erasure::encode(&layout, &stored)
        .map_err(|e| DfsError::new(libc::EIO, format!("erasure coding failed: {e}")))?;
    let shard_len = shards.first().map_or(0, Bytes::len) as u32;
    Ok(Encoded {
        fp,
        record: ChunkRecord {
            raw_len: raw_len as u32,
            stored_len: stored.len() as u32,
            codec: codec as i32,
            layout: Some(layout),
            shard_len,
            ..ChunkRecord::default()
        },
        shards,
    })
}

/// What one `store_chunks` moved through the pipeline, for the metrics.
struct PipelineFigures {
    cut: u64,
    deduplicated: u64,
    inline: u64,
    compressed: u64,
    coded: u64,
}

impl PipelineFigures {
    /// Called once the upload succeeded: `coded` bytes were uploaded.
    fn record(&self) {
        use dfs_core::telemetry::catalog::{DEDUP_HITS, PIPELINE_BYTES};
        use dfs_core::telemetry::series::Series;
        static STAGES: Series<&str, metrics::Counter> = Series::new();
        static HITS: Series<(), metrics::Counter> = Series::new();
        for (stage, bytes) in [
            ("cut", self.cut),
            ("inline", self.inline),
            ("compressed", self.compressed + self.inline),
            ("coded", self.coded),
            ("uploaded", self.coded),
        ] {
            STAGES
                .get(
                    stage,
                    |stage| metrics::counter!(PIPELINE_BYTES, "stage" => stage),
                )
                .increment(bytes);
        }
        HITS.get((), |()| metrics::counter!(DEDUP_HITS))
            .increment(self.deduplicated);
    }
}

/// Runs `f`, work on `bytes` bytes, on the blocking pool so CPU work uses
/// every core while this task keeps the network busy; a small file's worth
/// ([`CPU_IN_PLACE_BYTES`]) in place, quicker than the hand-off.
async fn cpu<T: Send + 'static>(
    bytes: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DfsError> {
    if bytes <= CPU_IN_PLACE_BYTES {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DfsError::new(libc::EIO, format!("worker failed: {e}")))
}

fn total_bytes(datas: &[Bytes]) -> usize {
    datas.iter().map(Bytes::len).sum()
}

impl Cluster {
    /// Stores `chunks` (deduplicated against the index) and returns them as
    /// chunk-map entries for the commit, in the same order.
    pub async fn store_chunks(
        &self,
        policy: CodecPolicy,
        chunks: Vec<RawChunk>,
    ) -> Result<Vec<StoredChunk>, DfsError> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let fps: Vec<Fingerprint> = if chunks.iter().all(|c| c.fingerprint.is_some()) {
            chunks.iter().filter_map(|c| c.fingerprint).collect()
        } else {
            let datas: Vec<Bytes> = chunks.iter().map(|c| c.data.clone()).collect();
            cpu(total_bytes(&datas), move || {
                datas.iter().map(|d| Fingerprint::of(d)).collect()
            })
            .await?
        };

        let mut unique: Vec<Unstored> = Vec::new();
        let mut seen = HashSet::new();
        for (fp, chunk) in fps.iter().zip(&chunks) {
            if seen.insert(*fp) {
                unique.push(Unstored::new(*fp, chunk.data.clone()));
            }
        }
        // Small chunks are compressed first: those that go inline need no
        // dedup lookup (the commit creates their entry, or adds a reference
        // to the one that exists), so a small file is one request. A small
        // flush stages all its chunks that way (dfs-meta moves them to the
        // servers later): closing a small file waits for one synced
        // metadata write, not a lookup and nine chunk-server fsyncs.
        let new_bytes: usize = unique.iter().map(|u| u.data.len()).sum();
        let inline_limit = if new_bytes <= inline::STAGE_FLUSH_MAX {
            self.volume
                .inline_max_bytes
                .max(self.volume.stage_max_bytes) as usize
        } else {
            self.volume.inline_max_bytes as usize
        };
        let mut inline_budget = inline::CLIENT_INLINE_PER_COMMIT;
        let (mut inlined, mut unique) = self
            .encode_inline(policy, unique, inline_limit, &mut inline_budget)
            .await?;
        // A staged flush's chunks that store over the limit go as halves.
        let mut splits: HashMap<Fingerprint, [(usize, Fingerprint); 2]> = HashMap::new();
        if inline_limit > self.volume.inline_max_bytes as usize {
            unique.retain(|u| {
                let Some(halves) = split::halves(policy, &u.data, inline_limit) else {
                    return true;
                };
                let stored: usize = halves.iter().map(|h| h.stored.len()).sum();
                if stored > inline_budget {
                    return true;
                }
                inline_budget -= stored;
                splits.insert(u.fp, halves.each_ref().map(|h| (h.start, h.fp)));
                inlined.extend(
                    halves
                        .into_iter()
                        .map(|h| Encoded::inline(h.fp, h.data.len(), h.codec, h.stored)),
                );
                false
            });
        }
        let mut records: HashMap<Fingerprint, ChunkRecord> = HashMap::new();
        let mut uploaded: HashSet<Fingerprint> = HashSet::new();
        let inline_count = inlined.len();
        let inline_bytes: u64 = inlined.iter().map(|e| u64::from(e.record.stored_len)).sum();
        for e in inlined {
            uploaded.insert(e.fp);
            records.insert(e.fp, e.record);
        }
        let mut to_encode = Vec::new();
        let mut grants = PutGrants::new();
        if !unique.is_empty() {
            let request = LookupChunksRequest {
                fingerprints: unique.iter().map(|u| u.fp.to_vec()).collect(),
            };
            let reply = self.meta.lookup_chunks(request).await?;
            grants = put_grants(&unique, &reply.grants);
            if !grants.is_empty() {
                self.saw_tokens();
            }
            for (i, chunk) in unique.into_iter().enumerate() {
                match (reply.known.get(i), reply.records.get(i)) {
                    (Some(true), Some(rec)) => {
                        records.insert(chunk.fp, rec.clone());
                    }
                    _ => to_encode.push(chunk),
                }
            }
        }
        let looked_up = started.elapsed();
        // Two inline chunks may share a fingerprint (a split chunk's
        // halves): `records` has one entry for both.
        let deduplicated = records.len().saturating_sub(inline_count) as u64;
        let done = self
            .encode_and_upload(policy, to_encode, inline_limit, inline_budget, &grants)
            .await?;
        uploaded.extend(done.records.iter().map(|(fp, _)| *fp));
        records.extend(done.records);
        if dfs_core::telemetry::enabled() {
            PipelineFigures {
                cut: chunks.iter().map(|c| c.data.len() as u64).sum(),
                deduplicated,
                inline: inline_bytes,
                compressed: done.stored_bytes,
                coded: done.coded_bytes,
            }
            .record();
        }
        tracing::debug!(
            chunks = chunks.len(),
            new = uploaded.len(),
            hash_and_lookup_us = looked_up.as_micros() as u64,
            encode_and_upload_us = (started.elapsed() - looked_up).as_micros() as u64,
            "chunks stored"
        );

        let stored = |offset: u64, data: Bytes, fp: Fingerprint| -> Result<StoredChunk, DfsError> {
            let record = records
                .get(&fp)
                .cloned()
                .ok_or_else(|| DfsError::io("chunk record lost"))?;
            Ok(StoredChunk {
                mapped: MappedChunk {
                    shard_tokens: Default::default(),
                    offset,
                    len: data.len() as u32,
                    fingerprint: fp.to_vec(),
                    chunk: Some(record),
                },
                uploaded: uploaded.contains(&fp),
                data,
            })
        };
        let mut out = Vec::with_capacity(chunks.len() + splits.len());
        for (c, fp) in chunks.into_iter().zip(fps) {
            match splits.get(&fp) {
                Some([(_, first), (mid, second)]) => {
                    out.push(stored(c.offset, c.data.slice(..*mid), *first)?);
                    out.push(stored(
                        c.offset + *mid as u64,
                        c.data.slice(*mid..),
                        *second,
                    )?);
                }
                None => out.push(stored(c.offset, c.data, fp)?),
            }
        }
        Ok(out)
    }

    /// Uploads the chunks in `stored` whose fingerprints are in `missing`
    /// whatever the index said before, and marks them uploaded.
    pub async fn reupload(
        &self,
        policy: CodecPolicy,
        stored: &mut [StoredChunk],
        missing: &[Vec<u8>],
    ) -> Result<(), DfsError> {
        let mut seen = HashSet::new();
        let raw: Vec<Unstored> = stored
            .iter()
            .filter(|s| {
                missing.contains(&s.mapped.fingerprint) && seen.insert(s.mapped.fingerprint.clone())
            })
            .filter_map(|s| {
                Fingerprint::from_slice(&s.mapped.fingerprint)
                    .ok()
                    .map(|fp| Unstored::new(fp, s.data.clone()))
            })
            .collect();
        // Put tokens for them (a client with a certificate needs one per
        // chunk and server): the chunks are unknown now, so the lookup
        // grants them.
        let grants = if raw.is_empty() {
            PutGrants::new()
        } else {
            let reply = self
                .meta
                .lookup_chunks(LookupChunksRequest {
                    fingerprints: raw.iter().map(|u| u.fp.to_vec()).collect(),
                })
                .await?;
            put_grants(&raw, &reply.grants)
        };
        let done = self
            .encode_and_upload(
                policy,
                raw,
                self.volume.inline_max_bytes as usize,
                inline::CLIENT_INLINE_PER_COMMIT,
                &grants,
            )
            .await?;
        let records: HashMap<Fingerprint, ChunkRecord> = done.records.into_iter().collect();
        for s in stored.iter_mut() {
            if let Some(rec) = Fingerprint::from_slice(&s.mapped.fingerprint)
                .ok()
                .and_then(|fp| records.get(&fp))
            {
                s.mapped.chunk = Some(rec.clone());
                s.uploaded = true;
            }
        }
        Ok(())
    }

    /// Compresses the chunks small enough that they may go inline (at most
    /// `INLINE_PROBE_RATIO` times `limit` raw) and encodes those that store
    /// in at most `limit`; returns them and the chunks left for the dedup
    /// lookup.
    async fn encode_inline(
        &self,
        policy: CodecPolicy,
        chunks: Vec<Unstored>,
        limit: usize,
        budget: &mut usize,
    ) -> Result<(Vec<Encoded>, Vec<Unstored>), DfsError> {
        let probe_max = limit * INLINE_PROBE_RATIO;
        let (probed, rest): (Vec<_>, Vec<_>) =
            chunks.into_iter().partition(|u| u.data.len() <= probe_max);
        if probed.is_empty() {
            return Ok((Vec::new(), rest));
        }
        let compress = move |probed: Vec<Unstored>| {
            probed
                .into_iter()
                .map(|u| Unstored {
                    compressed: Some(compress_shared(policy, &u.data)),
                    ..u
                })
                .collect::<Vec<_>>()
        };
        let probed_bytes: usize = probed.iter().map(|u| u.data.len()).sum();
        let compressed = cpu(probed_bytes, move || compress(probed)).await?;
        let mut inlined = Vec::new();
        let mut left = rest;
        for chunk in compressed {
            match chunk.compressed {
                Some((codec, stored)) if take_inline(limit, stored.len(), budget) => {
                    let stored = Vec::from(stored);
                    inlined.push(Encoded::inline(chunk.fp, chunk.data.len(), codec, stored));
                }
                // Compressed already: the encoding after the lookup reuses it.
                _ => left.push(chunk),
            }
        }
        Ok((inlined, left))
    }

    /// Compresses and codes `raw` on two blocking threads, one per core.
    /// Chunks that store in at most `inline_limit` go inline while
    /// `inline_budget` (shared with the flush's other batches) lasts.
    pub(super) async fn encode_all(
        &self,
        policy: CodecPolicy,
        raw: Vec<Unstored>,
        inline_limit: usize,
        inline_budget: Arc<Mutex<usize>>,
    ) -> Result<Vec<Encoded>, DfsError> {
        // Two halves, one per core; more tasks would only add copying.
        let volume = self.volume;
        let mid = raw.len() / 2;
        let mut first = raw;
        let second = first.split_off(mid);
        let bytes = |half: &[Unstored]| half.iter().map(|u| u.data.len()).sum::<usize>();
        let (bytes1, bytes2) = (bytes(&first), bytes(&second));
        let half = move |chunks: Vec<Unstored>, budget: Arc<Mutex<usize>>| {
            move || {
                chunks
                    .into_iter()
                    .map(|u| encode(&volume, policy, u, inline_limit, &budget))
                    .collect::<Result<Vec<_>, _>>()
            }
        };
        let a = cpu(bytes1, half(first, Arc::clone(&inline_budget)));
        let b = cpu(bytes2, half(second, inline_budget));
        let (a, b) = futures::join!(a, b);
        let mut out = a??;
        out.extend(b??);
        Ok(out)
    }
}
