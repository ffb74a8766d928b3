//! Learning the codec model from measurements.
//!
//! Every chunk of a training corpus is compressed with every candidate
//! ([`CANDIDATES`]) and decompressed again; each try is timed and its
//! stored size kept ([`Measurement`]). For each tier, each chunk's tries
//! are scored with that tier's [`TierCost`], the scores are summed per table
//! cell (one cell per kind, entropy bucket and LZ4 bucket, plus coarser
//! cells over all kinds and over LZ4 bucket alone), and each cell gets the
//! candidate whose summed cost is least. Summing costs over a cell weighs
//! chunks by their size, so a cell's choice is the one that is best for the
//! bytes that fall in it, not for the average chunk.
//!
//! The model is as good as its corpus and the CPU it was measured on: the
//! times are this machine's. See `dfs codec train` for the command that
//! builds the shipped model, and `dfs codec eval` for how it is checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::features::{Features, FileKind};
use super::{bucket, CellKey, Choice, CodecModel, Fallback, ModelFile, PerTier, Provenance};
use crate::codec::{decompress, CodecError, CodecPolicy};
use crate::tier::Tier;

/// What training tries on every chunk: raw, LZ4, zstd at four levels and xz
/// at presets 6 and 9 (xz presets between differ from these mostly in
/// dictionary size, which is capped at 256 KiB for a chunk anyway).
pub const CANDIDATES: [Choice; 8] = [
    Choice::RAW,
    Choice::new(CodecPolicy::Lz4, 0),
    Choice::new(CodecPolicy::Zstd, 1),
    Choice::new(CodecPolicy::Zstd, 3),
    Choice::new(CodecPolicy::Zstd, 9),
    Choice::new(CodecPolicy::Zstd, 19),
    Choice::new(CodecPolicy::Lzma, 6),
    Choice::new(CodecPolicy::Lzma, 9),
];

/// A cell needs at least this many training chunks to get its own entry;
/// emptier ones fall back to a coarser cell.
pub const MIN_CHUNKS: u64 = 8;

/// How a tier trades CPU time against stored bytes. The cost of storing a
/// chunk one way, in seconds, is
///
/// `compress_weight * compress_s + reads * decompress_s + stored_bytes / bytes_per_second`
///
/// that is, a byte stored is worth `1 / bytes_per_second` seconds of CPU.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierCost {
    /// How much a second spent compressing counts.
    pub compress_weight: f64,
    /// How many times a chunk is expected to be decompressed while in the
    /// tier.
    pub reads: f64,
    /// Stored bytes that cost as much as one second of CPU.
    pub bytes_per_second: f64,
}

impl TierCost {
    /// The cost, in seconds, of one way of storing a chunk.
    pub fn cost(&self, o: &Outcome) -> f64 {
        self.compress_weight * o.compress_s
            + self.reads * o.decompress_s
            + o.stored as f64 / self.bytes_per_second
    }
}

/// The weights each tier is trained with.
pub type CostWeights = PerTier<TierCost>;

impl Default for CostWeights {
    /// The shipped model's weights, from what each tier is for.
    ///
    /// **Hot: latency.** A hot chunk is compressed on the write path and
    /// decompressed on reads while it is hot (we assume 4). Its bytes cross
    /// the network to three replicas and back out once per read: about 7
    /// transfers at ~1.25 GB/s (10 GbE), ~5.6 ns a byte, plus a fast disk's
    /// write and capacity: a stored byte is worth ~10 ns, **1 s per 100
    /// MB**. (At 1 s per 500 MB, LZ4 at ~800 MB/s plus four decodes does
    /// not pay even on text on the training machine, so hot would store
    /// almost everything raw and spend the network the replicas share.)
    ///
    /// **Cold: money.** A cold chunk is recompressed once, by the tiering
    /// worker in the background, and almost never read (0.1 reads, and a
    /// recall waits on the object store far longer than on any decoder).
    /// A vCPU-second costs about $1e-5; a byte in an object store's cheap
    /// class for three years about $1.4e-10 ($0.004/GB-month): a CPU-second
    /// buys ~70 KB of storage, so **1 s per 50 KB**. This is what makes xz
    /// pay: at 1 s per 5 MB, zstd 9 would beat xz 6 on nearly all data.
    ///
    /// **Warm: between.** Recompressed by the tiering worker on the same
    /// servers clients use, kept for months on erasure-coded chunk
    /// servers, read now and then (1 read) on the live path. Its byte value
    /// is the geometric middle of hot's and cold's, **1 s per ~2.2 MB**.
    fn default() -> Self {
        PerTier {
            hot: TierCost {
                compress_weight: 1.0,
                reads: 4.0,
                bytes_per_second: 100e6,
            },
            warm: TierCost {
                compress_weight: 1.0,
                reads: 1.0,
                bytes_per_second: 2.2e6,
            },
            cold: TierCost {
                compress_weight: 1.0,
                reads: 0.1,
                bytes_per_second: 50e3,
            },
        }
    }
}

/// One way of storing one chunk, as measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Bytes stored (the raw length when the codec did not shrink it).
    pub stored: u64,
    /// CPU seconds to compress (including a try that did not shrink it).
    pub compress_s: f64,
    /// CPU seconds to decompress (0 for raw).
    pub decompress_s: f64,
}

/// CPU time this thread has used, in seconds: unlike wall time, it does
/// not count the time the thread waited for a CPU, so measurements taken on
/// a busy machine (or on several threads at once) stay comparable.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call, and CLOCK_THREAD_CPUTIME_ID is a clock every Linux has.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Runs `f` and returns its result and the thread CPU seconds it took:
/// the least of up to three runs while they are short (under 1 ms in all),
/// since a short run's time is mostly noise (a cold cache, an interrupt).
pub fn timed<T>(mut f: impl FnMut() -> T) -> (T, f64) {
    let start = thread_cpu_seconds();
    let mut out = f();
    let mut best = thread_cpu_seconds() - start;
    let mut spent = best;
    for _ in 0..2 {
        if spent >= 1e-3 {
            break;
        }
        let start = thread_cpu_seconds();
        out = f();
        let took = thread_cpu_seconds() - start;
        best = best.min(took);
        spent += took;
    }
    (out, best.max(0.0))
}

/// Stores `raw` as `choice` says, times it both ways (thread CPU time, see
/// [`timed`]) and checks that it reads back.
pub fn measure(choice: Choice, raw: &[u8]) -> Result<Outcome, CodecError> {
    if choice.is_raw() {
        return Ok(Outcome {
            stored: raw.len() as u64,
            compress_s: 0.0,
            decompress_s: 0.0,
        });
    }
    let ((codec, stored), compress_s) = timed(|| choice.compress(raw));
    let (back, decompress_s) = timed(|| decompress(codec, &stored, raw.len()));
    if back? != raw {
        return Err(CodecError::Corrupt {
            codec: choice.codec.name(),
            reason: "a round trip changed the bytes".to_string(),
        });
    }
    Ok(Outcome {
        stored: stored.len() as u64,
        compress_s,
        decompress_s,
    })
}

/// A chunk's features and how each candidate stored it.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub features: Features,
    pub raw_len: u64,
    /// One per candidate, in the order of the candidate list.
    pub outcomes: Vec<Outcome>,
}

impl Measurement {
    /// Measures every candidate on chunk `raw` of a file of `kind`.
    pub fn of(kind: FileKind, raw: &[u8], candidates: &[Choice]) -> Result<Self, CodecError> {
        Ok(Measurement {
            features: Features::with_kind(kind, raw),
            raw_len: raw.len() as u64,
            outcomes: candidates
                .iter()
                .map(|&c| measure(c, raw))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Trains a model on chunks (each with its file's kind), trying
/// [`CANDIDATES`]. Measures on this thread; `dfs codec train` measures on
/// several and calls [`train_measured`].
pub fn train(
    samples: &[(FileKind, &[u8])],
    weights: &CostWeights,
) -> Result<CodecModel, CodecError> {
    let measured = samples
        .iter()
        .map(|(kind, raw)| Measurement::of(*kind, raw, &CANDIDATES))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(train_measured(&measured, &CANDIDATES, weights))
}

/// What one cell has seen.
struct Acc {
    chunks: u64,
    bytes: u64,
    cost: Vec<f64>,
    stored: Vec<u64>,
}

/// Trains a model from measurements of `candidates` (each measurement's
/// outcomes in that order). The provenance gets the chunk and byte counts,
/// per kind too, the candidates and the weights; the caller fills in the
/// rest (corpus, files, date, command).
pub fn train_measured(
    measured: &[Measurement],
    candidates: &[Choice],
    weights: &CostWeights,
) -> CodecModel {
    let mut file = empty_file();
    let mut cells: BTreeMap<CellKey, Acc> = BTreeMap::new();
    let mut kinds: BTreeMap<FileKind, (u64, u64)> = BTreeMap::new();
    for m in measured {
        let e = bucket(&file.entropy_edges, m.features.entropy_tenths);
        let l = bucket(&file.lz4_edges, m.features.lz4_percent);
        let k = kinds.entry(m.features.kind).or_default();
        k.0 += 1;
        k.1 += m.raw_len;
        for tier in Tier::ALL {
            let w = weights.get(tier);
            let keys = [
                CellKey::new(tier, Some(m.features.kind), Some(e), l),
                CellKey::new(tier, None, Some(e), l),
                CellKey::new(tier, None, None, l),
            ];
            for key in keys {
                let acc = cells.entry(key).or_insert_with(|| Acc {
                    chunks: 0,
                    bytes: 0,
                    cost: vec![0.0; candidates.len()],
                    stored: vec![0; candidates.len()],
                });
                acc.chunks += 1;
                acc.bytes += m.raw_len;
                for (i, o) in m.outcomes.iter().enumerate().take(candidates.len()) {
                    acc.cost[i] += w.cost(o);
                    acc.stored[i] += o.stored;
                }
            }
        }
    }
    // Each cell's best candidate (the first of equals: candidates are
    // listed cheapest first).
    let best: BTreeMap<CellKey, (usize, &Acc)> = cells
        .iter()
        .filter(|(_, acc)| acc.chunks >= MIN_CHUNKS)
        .filter_map(|(key, acc)| {
            let i = (0..candidates.len()).min_by(|&a, &b| acc.cost[a].total_cmp(&acc.cost[b]))?;
            Some((*key, (i, acc)))
        })
        .collect();
    // Drop a cell that chooses what the coarser cell it falls back to
    // chooses: lookups give the same answer, and the file stays readable.
    let parent = |key: &CellKey| match (key.kind, key.entropy) {
        (Some(_), _) => Some(CellKey::new(key.tier, None, key.entropy, key.lz4)),
        (None, Some(_)) => Some(CellKey::new(key.tier, None, None, key.lz4)),
        (None, None) => None,
    };
    file.cells = best
        .iter()
        .filter(|(key, (i, _))| {
            parent(key)
                .and_then(|p| best.get(&p))
                .is_none_or(|(pi, _)| pi != i)
        })
        .map(|(key, &(i, acc))| super::Cell {
            tier: key.tier,
            kind: key.kind,
            entropy: key.entropy,
            lz4: key.lz4,
            choice: candidates[i],
            chunks: acc.chunks,
            bytes: acc.bytes,
            stored: acc.stored[i],
        })
        .collect();
    file.provenance = Provenance {
        chunks: measured.len() as u64,
        bytes: measured.iter().map(|m| m.raw_len).sum(),
        kinds: kinds
            .into_iter()
            .map(|(kind, (chunks, bytes))| super::KindStats {
                kind,
                files: 0,
                chunks,
                bytes,
            })
            .collect(),
        weights: *weights,
        candidates: candidates.to_vec(),
        ..Provenance::default()
    };
    file.min_chunks = MIN_CHUNKS;
    // Only reached with a well-formed file: the edges are today's and the
    // cells come from them.
    CodecModel::from_file(file).unwrap_or_else(|_| CodecModel::today())
}

/// The fallback rule of a model without cells: today's fixed codecs, with
/// the LZ4 probe deciding raw.
pub(super) fn today_fallback() -> PerTier<Fallback> {
    let rule = |codec, level| Fallback {
        choice: Choice::new(codec, level),
        raw_above_lz4_percent: 97,
    };
    PerTier {
        hot: rule(CodecPolicy::Lz4, 0),
        warm: rule(CodecPolicy::Zstd, 3),
        cold: rule(CodecPolicy::Lzma, 6),
    }
}

/// Unused fields of a fresh model file, for [`train_measured`].
pub(super) fn empty_file() -> ModelFile {
    ModelFile {
        format: super::FORMAT,
        about: super::ABOUT.to_string(),
        entropy_edges: super::ENTROPY_EDGES.to_vec(),
        lz4_edges: super::LZ4_EDGES.to_vec(),
        min_chunks: MIN_CHUNKS,
        fallback: today_fallback(),
        provenance: Provenance::default(),
        cells: Vec::new(),
    }
}
