//! The codec model (issue 21, 5b): picks the codec and level of each chunk
//! from cheap features, per tier, instead of one fixed codec per tier.
//!
//! The features ([`Features`]) are the kind of file the chunk belongs to
//! (from its name and magic bytes), the byte entropy of a sample and an
//! LZ4 probe of the same sample; computing them costs a fraction of
//! compressing the chunk with LZ4. The model is a lookup table learned from
//! measurements: for each tier, kind, entropy bucket and LZ4 bucket, the
//! codec and level that stored a training corpus's chunks at the least cost,
//! where each tier weighs CPU seconds against stored bytes in its own way
//! ([`CostWeights`]). Cells the corpus filled too thinly fall back to a
//! coarser cell (the same buckets over all kinds, then the LZ4 bucket
//! alone), and buckets it never saw to today's rule: hot LZ4, warm zstd 3,
//! cold xz 6, raw when the LZ4 probe barely shrinks the sample. Chunks that
//! do not pay are stored raw, as before.
//!
//! The shipped model is `dfs-core/models/codec-model.json`; its
//! `provenance` says what it was trained on, when, on which CPU and with
//! which command (times are thread CPU seconds, so they are that CPU's).
//! To retrain it, from the workspace root with the CLI built in release
//! mode (it took about 5 minutes on 2 cores for 512 MiB):
//!
//! ```text
//! dfs codec train --out dfs-core/models/codec-model.json \
//!     --max-bytes 512M --max-file-bytes 2M --corpus "what this is" DIR...
//! dfs codec eval --held-out --model dfs-core/models/codec-model.json \
//!     --max-bytes 128M --max-file-bytes 2M DIR...
//! ```
//!
//! (`provenance.command` in the shipped file is the exact command, with
//! the directories.) `train` leaves out the files `eval --held-out`
//! measures: a fifth of them, by a hash of their path ([`corpus`]). The
//! model only picks among codecs every reader already decodes, so a new
//! model never changes the storage format; it must keep the unit tests
//! below passing (random data raw, text compressed, in every tier).

pub mod corpus;
mod features;
mod train;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use dfs_proto::Codec;
use serde::{Deserialize, Serialize};

use crate::codec::{compress_at, CodecPolicy};
use crate::tier::Tier;

pub use features::{Features, FileKind, SAMPLE_SLICE};
pub use train::{
    measure, thread_cpu_seconds, timed, train, train_measured, CostWeights, Measurement, Outcome,
    TierCost, CANDIDATES, MIN_CHUNKS,
};

/// The shipped model.
const SHIPPED: &str = include_str!("../models/codec-model.json");

/// Version of the model file's layout.
const FORMAT: u32 = 1;

/// Shown at the top of a model file.
const ABOUT: &str = "dfs codec model (dfs_core::codec_model): per tier, the codec and level \
     for a chunk from its file kind, sample entropy bucket and LZ4 probe bucket. Retrain with \
     `dfs codec train`; see provenance.command.";

/// Entropy bucket edges, in tenths of a bit per byte: a chunk is in the
/// bucket of the number of edges at or below its entropy.
const ENTROPY_EDGES: [u8; 6] = [30, 45, 55, 65, 72, 78];

/// LZ4 probe bucket edges, in percent: the last bucket (98 and up) is the
/// one today's probe stores raw.
const LZ4_EDGES: [u8; 6] = [25, 40, 55, 70, 85, 98];

/// A codec and its level: what the model answers.
///
/// Written as `raw`, `lz4`, `zstd-3` or `lzma-6` (xz container, preset 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Choice {
    pub codec: CodecPolicy,
    /// zstd level (1 to 19), xz preset (0 to 9); 0 for LZ4 and raw.
    pub level: i32,
}

impl Choice {
    /// Store the chunk as it is.
    pub const RAW: Choice = Choice::new(CodecPolicy::None, 0);

    pub const fn new(codec: CodecPolicy, level: i32) -> Choice {
        Choice { codec, level }
    }

    pub fn is_raw(self) -> bool {
        self.codec == CodecPolicy::None
    }

    /// Stores `raw` this way: the codec used (none when the choice is raw
    /// or did not shrink it) and the stored bytes.
    pub fn compress(self, raw: &[u8]) -> (Codec, Vec<u8>) {
        compress_at(self.codec, self.level, raw)
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.codec {
            CodecPolicy::None => f.write_str("raw"),
            CodecPolicy::Lz4 => f.write_str("lz4"),
            CodecPolicy::Auto => f.write_str("auto"),
            codec => write!(f, "{codec}-{}", self.level),
        }
    }
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, level) = match s.split_once('-') {
            Some((name, level)) => {
                let level = level
                    .parse::<i32>()
                    .map_err(|_| format!("codec choice `{s}`: bad level"))?;
                (name, Some(level))
            }
            None => (s, None),
        };
        let codec = match name {
            "raw" => CodecPolicy::None,
            other => other.parse::<CodecPolicy>().map_err(|e| e.to_string())?,
        };
        let (range, default) = match codec {
            CodecPolicy::Auto => return Err(format!("codec choice `{s}`: not a codec")),
            CodecPolicy::None | CodecPolicy::Lz4 => (0..=0, 0),
            CodecPolicy::Zstd => (1..=19, 3),
            CodecPolicy::Lzma => (0..=9, 6),
        };
        let level = level.unwrap_or(default);
        if !range.contains(&level) {
            return Err(format!("codec choice `{s}`: level out of {range:?}"));
        }
        Ok(Choice::new(codec, level))
    }
}

impl Serialize for Choice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Choice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One value per tier.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerTier<T> {
    pub hot: T,
    pub warm: T,
    pub cold: T,
}

impl<T> PerTier<T> {
    pub fn get(&self, tier: Tier) -> &T {
        match tier {
            Tier::Hot => &self.hot,
            Tier::Warm => &self.warm,
            Tier::Cold => &self.cold,
        }
    }
}

/// What a tier does with a chunk no cell covers: today's rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    pub choice: Choice,
    /// Raw when the LZ4 probe leaves more than this percentage of the
    /// sample.
    pub raw_above_lz4_percent: u8,
}

/// One entry of the table: what the training chunks in it chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    #[serde(with = "tier_name")]
    pub tier: Tier,
    /// None: any kind (a coarser cell).
    pub kind: Option<FileKind>,
    /// Entropy bucket; none: any entropy (the coarsest cell).
    pub entropy: Option<u8>,
    /// LZ4 probe bucket.
    pub lz4: u8,
    pub choice: Choice,
    /// Training chunks and raw bytes that fell in the cell.
    pub chunks: u64,
    pub bytes: u64,
    /// What the choice stored of them.
    pub stored: u64,
}

/// Training chunks of one kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindStats {
    pub kind: FileKind,
    pub files: u64,
    pub chunks: u64,
    pub bytes: u64,
}

/// What a model was trained on, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// In words.
    pub corpus: String,
    /// The directories the corpus was drawn from.
    pub roots: Vec<String>,
    pub files: u64,
    pub chunks: u64,
    /// Raw bytes of the chunks.
    pub bytes: u64,
    pub kinds: Vec<KindStats>,
    /// Which files were held out of training for `eval --held-out`.
    pub held_out: String,
    /// UTC date of training (YYYY-MM-DD).
    pub date: String,
    /// The command line that trained it.
    pub command: String,
    /// The CPU the times were measured on.
    pub cpu: String,
    /// Wall seconds training took.
    pub seconds: f64,
    pub weights: CostWeights,
    pub candidates: Vec<Choice>,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            corpus: String::new(),
            roots: Vec::new(),
            files: 0,
            chunks: 0,
            bytes: 0,
            kinds: Vec::new(),
            held_out: String::new(),
            date: String::new(),
            command: String::new(),
            cpu: String::new(),
            seconds: 0.0,
            weights: CostWeights::default(),
            candidates: Vec::new(),
        }
    }
}

/// A model as written to its file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ModelFile {
    format: u32,
    about: String,
    entropy_edges: Vec<u8>,
    lz4_edges: Vec<u8>,
    min_chunks: u64,
    fallback: PerTier<Fallback>,
    provenance: Provenance,
    cells: Vec<Cell>,
}

/// Where a table lookup lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CellKey {
    tier: Tier,
    kind: Option<FileKind>,
    entropy: Option<u8>,
    lz4: u8,
}

impl CellKey {
    fn new(tier: Tier, kind: Option<FileKind>, entropy: Option<u8>, lz4: u8) -> Self {
        CellKey {
            tier,
            kind,
            entropy,
            lz4,
        }
    }
}

/// Which level of the table answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The cell of the chunk's kind, entropy and LZ4 buckets.
    Cell,
    /// The cell of its buckets over all kinds.
    AnyKind,
    /// The cell of its LZ4 bucket alone.
    Lz4Bucket,
    /// No cell: the tier's fallback rule.
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cell => "cell",
            Source::AnyKind => "any-kind",
            Source::Lz4Bucket => "lz4-bucket",
            Source::Fallback => "fallback",
        }
    }
}

/// Why a model file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file is not valid JSON for a codec model: {0}")]
    Json(#[from] serde_json::Error),
    #[error("model file is malformed: {0}")]
    Malformed(String),
}

/// The codec model: see the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelFile", into = "ModelFile")]
pub struct CodecModel {
    file: ModelFile,
    index: HashMap<CellKey, Choice>,
}

impl TryFrom<ModelFile> for CodecModel {
    type Error = ModelError;
    fn try_from(file: ModelFile) -> Result<Self, ModelError> {
        CodecModel::from_file(file)
    }
}

impl From<CodecModel> for ModelFile {
    fn from(model: CodecModel) -> Self {
        model.file
    }
}

impl CodecModel {
    /// The shipped model, parsed once. Should it not parse (the unit tests
    /// make sure it does), today's rule with an error in the log: a bad
    /// model must cost compression, never the process.
    pub fn builtin() -> &'static CodecModel {
        static MODEL: OnceLock<CodecModel> = OnceLock::new();
        MODEL.get_or_init(|| {
            CodecModel::from_json(SHIPPED).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the shipped codec model does not parse; using today's fixed codecs");
                CodecModel::today()
            })
        })
    }

    /// A model without cells that does what dfs did before it: hot LZ4,
    /// warm zstd 3, cold xz 6, each raw when a sample's LZ4 probe leaves
    /// more than 97%.
    pub fn today() -> CodecModel {
        CodecModel {
            file: train::empty_file(),
            index: HashMap::new(),
        }
    }

    /// Parses a model file.
    pub fn from_json(text: &str) -> Result<CodecModel, ModelError> {
        CodecModel::from_file(serde_json::from_str::<ModelFile>(text)?)
    }

    /// The model as a file: top-level fields pretty-printed, one line per
    /// cell.
    pub fn to_json(&self) -> Result<String, ModelError> {
        let mut top = self.file.clone();
        let cells = std::mem::take(&mut top.cells);
        let mut out = serde_json::to_string_pretty(&top)?;
        // Replace the empty `"cells": []` that closes the object.
        let tail = out
            .rfind("\"cells\"")
            .ok_or_else(|| ModelError::Malformed("no cells field".to_string()))?;
        out.truncate(tail);
        out.push_str("\"cells\": [\n");
        for (i, cell) in cells.iter().enumerate() {
            out.push_str("    ");
            out.push_str(&serde_json::to_string(cell)?);
            out.push_str(if i + 1 < cells.len() { ",\n" } else { "\n" });
        }
        out.push_str("  ]\n}\n");
        Ok(out)
    }

    fn from_file(file: ModelFile) -> Result<CodecModel, ModelError> {
        let bad = |why: String| Err(ModelError::Malformed(why));
        if file.format != FORMAT {
            return bad(format!(
                "format {} (this build reads {FORMAT})",
                file.format
            ));
        }
        for (name, edges) in [("entropy", &file.entropy_edges), ("lz4", &file.lz4_edges)] {
            if edges.len() > 32 || edges.windows(2).any(|w| w[0] >= w[1]) {
                return bad(format!("{name}_edges must be at most 32 increasing values"));
            }
        }
        let mut index = HashMap::with_capacity(file.cells.len());
        for c in &file.cells {
            let e_ok = c
                .entropy
                .is_none_or(|e| usize::from(e) <= file.entropy_edges.len());
            if !e_ok || usize::from(c.lz4) > file.lz4_edges.len() {
                return bad(format!("a cell's bucket is out of range: {c:?}"));
            }
            if c.kind.is_some() && c.entropy.is_none() {
                return bad(format!("a cell with a kind needs an entropy bucket: {c:?}"));
            }
            let key = CellKey::new(c.tier, c.kind, c.entropy, c.lz4);
            if index.insert(key, c.choice).is_some() {
                return bad(format!("cell given twice: {key:?}"));
            }
        }
        Ok(CodecModel { file, index })
    }

    /// What it was trained on.
    pub fn provenance(&self) -> &Provenance {
        &self.file.provenance
    }

    /// For the trainer's caller, to fill in what only it knows.
    pub fn provenance_mut(&mut self) -> &mut Provenance {
        &mut self.file.provenance
    }

    /// The table's cells.
    pub fn cells(&self) -> &[Cell] {
        &self.file.cells
    }

    /// The entropy and LZ4 buckets of `f`.
    pub fn buckets(&self, f: &Features) -> (u8, u8) {
        (
            bucket(&self.file.entropy_edges, f.entropy_tenths),
            bucket(&self.file.lz4_edges, f.lz4_percent),
        )
    }

    /// How to store a chunk of `tier` with features `f`.
    pub fn choose(&self, tier: Tier, f: &Features) -> Choice {
        self.choose_explained(tier, f).0
    }

    /// Like [`choose`](Self::choose), and which level of the table
    /// answered.
    pub fn choose_explained(&self, tier: Tier, f: &Features) -> (Choice, Source) {
        let (e, l) = self.buckets(f);
        let tries = [
            (CellKey::new(tier, Some(f.kind), Some(e), l), Source::Cell),
            (CellKey::new(tier, None, Some(e), l), Source::AnyKind),
            (CellKey::new(tier, None, None, l), Source::Lz4Bucket),
        ];
        for (key, source) in tries {
            if let Some(&choice) = self.index.get(&key) {
                return (choice, source);
            }
        }
        let rule = self.file.fallback.get(tier);
        let choice = if f.lz4_percent > rule.raw_above_lz4_percent {
            Choice::RAW
        } else {
            rule.choice
        };
        (choice, Source::Fallback)
    }

    /// Compresses chunk `raw` of `tier` as the model says, `kind` being its
    /// file's: the codec used and the stored bytes (raw when the choice is
    /// raw or does not shrink the chunk).
    pub fn compress(&self, tier: Tier, kind: FileKind, raw: &[u8]) -> (Codec, Vec<u8>) {
        self.choose(tier, &Features::with_kind(kind, raw))
            .compress(raw)
    }
}

/// Compresses `raw` for `tier` as the shipped model says. `name` is the
/// file's name or path, if known; `raw` is taken as the start of the file
/// (its magic bytes count). For a file's later chunks, find the kind once
/// with [`FileKind::of`] and call [`CodecModel::compress`].
pub fn compress_auto(tier: Tier, name: Option<&str>, raw: &[u8]) -> (Codec, Vec<u8>) {
    let kind = FileKind::of(name, raw);
    CodecModel::builtin().compress(tier, kind, raw)
}

/// The bucket of `value`: how many edges are at or below it.
fn bucket(edges: &[u8], value: u8) -> u8 {
    u8::try_from(edges.iter().filter(|&&e| value >= e).count()).unwrap_or(u8::MAX)
}

/// A tier as its name in model files.
mod tier_name {
    use super::Tier;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tier: &Tier, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tier.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tier, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown tier `{name}`")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::xorshift::{xorshift_bytes, XorShift};

    /// Prose-like text from a small vocabulary, deterministic.
    fn text(seed: u64, len: usize) -> Vec<u8> {
        let words = [
            "chunk ",
            "server ",
            "the ",
            "metadata ",
            "replica ",
            "of ",
            "a ",
            "file\n",
            "directory ",
            "fingerprint ",
            "tier ",
            "cold ",
            "and ",
            "is ",
        ];
        let mut rng = XorShift(seed);
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            out.extend_from_slice(words[rng.below(words.len() as u64) as usize].as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn the_shipped_model_parses_and_says_where_it_came_from() {
        let model = CodecModel::from_json(SHIPPED).unwrap();
        let p = model.provenance();
        assert!(!p.corpus.is_empty() && !p.command.is_empty() && !p.date.is_empty());
        assert!(p.command.contains("codec train"), "{}", p.command);
        assert!(p.files > 0 && p.chunks > 0 && p.bytes > 0);
        assert!(!p.kinds.is_empty() && !p.candidates.is_empty());
        assert!(!model.cells().is_empty());
        assert_eq!(CodecModel::builtin(), &model);
        // Written back, it reads the same.
        assert_eq!(
            CodecModel::from_json(&model.to_json().unwrap()).unwrap(),
            model
        );
    }

    #[test]
    fn random_bytes_are_stored_raw_in_every_tier() {
        for (seed, len) in [(1, 100), (2, 40_000), (3, 64 * 1024), (4, 128 * 1024)] {
            let raw = xorshift_bytes(seed, len);
            // Hot does not even try. (Cold, where a byte is worth far more
            // CPU, may try a codec on such a chunk: some of the corpus's
            // high-entropy chunks did shrink a little. What it stores is
            // still raw.)
            let f = Features::of(Some("blob.bin"), &raw);
            assert!(
                CodecModel::builtin().choose(Tier::Hot, &f).is_raw(),
                "{len}"
            );
            for tier in Tier::ALL {
                let (codec, stored) = compress_auto(tier, None, &raw);
                assert_eq!(codec, Codec::None);
                assert_eq!(stored, raw);
            }
        }
    }

    #[test]
    fn text_is_compressed_in_every_tier() {
        for len in [40_000, 64 * 1024, 128 * 1024] {
            let raw = text(9, len);
            for tier in Tier::ALL {
                let (codec, stored) = compress_auto(tier, Some("notes.txt"), &raw);
                assert_ne!(codec, Codec::None, "{tier} {len}");
                assert!(stored.len() < raw.len() / 2, "{tier} {len}");
                let back = crate::codec::decompress(codec, &stored, raw.len()).unwrap();
                assert_eq!(back, raw);
            }
        }
    }

    #[test]
    fn compressed_formats_are_stored_raw() {
        // A gzip and a PNG header followed by what such files hold:
        // incompressible bytes.
        for magic in [
            &b"\x1f\x8b\x08\x00\x00\x00\x00\x00"[..],
            b"\x89PNG\r\n\x1a\n",
        ] {
            let mut raw = magic.to_vec();
            raw.extend(xorshift_bytes(5, 64 * 1024));
            assert_eq!(FileKind::of(None, &raw), FileKind::Compressed);
            for tier in Tier::ALL {
                let (codec, _) = compress_auto(tier, Some("x"), &raw);
                assert_eq!(codec, Codec::None, "{tier}");
            }
        }
    }

    #[test]
    fn today_model_reproduces_the_fixed_codecs() {
        let model = CodecModel::today();
        let f = Features::of(None, &text(1, 64 * 1024));
        assert_eq!(model.choose(Tier::Hot, &f).to_string(), "lz4");
        assert_eq!(model.choose(Tier::Warm, &f).to_string(), "zstd-3");
        assert_eq!(model.choose(Tier::Cold, &f).to_string(), "lzma-6");
        let noise = Features::of(None, &xorshift_bytes(3, 64 * 1024));
        for tier in Tier::ALL {
            assert_eq!(
                model.choose_explained(tier, &noise),
                (Choice::RAW, Source::Fallback)
            );
        }
        let round = CodecModel::from_json(&model.to_json().unwrap()).unwrap();
        assert_eq!(round, model);
    }

    #[test]
    fn choices_parse_and_print() {
        for s in ["raw", "lz4", "zstd-1", "zstd-19", "lzma-0", "lzma-9"] {
            assert_eq!(s.parse::<Choice>().unwrap().to_string(), s);
        }
        assert_eq!("zstd".parse::<Choice>().unwrap().to_string(), "zstd-3");
        assert_eq!("none".parse::<Choice>().unwrap(), Choice::RAW);
        for bad in ["zstd-0", "zstd-20", "lzma-10", "lz4-3", "gzip-6", "zstd-x"] {
            assert!(bad.parse::<Choice>().is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_models_are_refused() {
        let good = CodecModel::today().to_json().unwrap();
        assert!(CodecModel::from_json(&good).is_ok());
        assert!(CodecModel::from_json("{").is_err());
        let bad_format = good.replace("\"format\": 1", "\"format\": 2");
        assert!(CodecModel::from_json(&bad_format).is_err());
        let cell = r#"{"tier":"hot","kind":null,"entropy":null,"lz4":99,"choice":"lz4","chunks":1,"bytes":1,"stored":1}"#;
        let out_of_range = good.replace("\"cells\": [\n  ]", &format!("\"cells\": [{cell}]"));
        assert_ne!(out_of_range, good);
        assert!(CodecModel::from_json(&out_of_range).is_err());
    }

    #[test]
    fn training_learns_text_compresses_and_noise_does_not() {
        let mut chunks = Vec::new();
        for i in 0..12u64 {
            chunks.push((FileKind::Text, text(i + 1, 48 * 1024 + 512 * i as usize)));
            chunks.push((FileKind::Other, xorshift_bytes(i + 100, 40 * 1024)));
        }
        let samples: Vec<(FileKind, &[u8])> = chunks.iter().map(|(k, c)| (*k, &c[..])).collect();
        let model = train(&samples, &CostWeights::default()).unwrap();
        let p = model.provenance();
        assert_eq!(p.chunks, 24);
        assert_eq!(p.kinds.len(), 2);
        for tier in Tier::ALL {
            let (choice, source) = model.choose_explained(
                tier,
                &Features::with_kind(FileKind::Text, &text(77, 50_000)),
            );
            assert!(!choice.is_raw(), "{tier}");
            assert_ne!(source, Source::Fallback);
            let noise = Features::with_kind(FileKind::Other, &xorshift_bytes(999, 50_000));
            let (choice, source) = model.choose_explained(tier, &noise);
            assert!(choice.is_raw(), "{tier}: {choice}");
            assert_ne!(source, Source::Fallback);
        }
        // Cold values bytes far more than hot: it never picks a weaker
        // codec for the text.
        let f = Features::with_kind(FileKind::Text, &text(78, 50_000));
        let (hot, cold) = (model.choose(Tier::Hot, &f), model.choose(Tier::Cold, &f));
        assert_ne!(hot, cold);
        // Written out and read back, it answers the same.
        let again = CodecModel::from_json(&model.to_json().unwrap()).unwrap();
        assert_eq!(again, model);
    }

    #[test]
    fn empty_cells_fall_back() {
        // Trained on text only: an executable chunk of a bucket no text
        // reached goes to the coarser cells, then to the fallback rule.
        let chunks: Vec<Vec<u8>> = (0..10).map(|i| text(i + 1, 40_000)).collect();
        let samples: Vec<(FileKind, &[u8])> =
            chunks.iter().map(|c| (FileKind::Text, &c[..])).collect();
        let model = train(&samples, &CostWeights::default()).unwrap();
        let f = Features::with_kind(FileKind::Text, &text(50, 40_000));
        let exe = Features {
            kind: FileKind::Executable,
            ..f
        };
        let (a, sa) = model.choose_explained(Tier::Warm, &f);
        let (b, sb) = model.choose_explained(Tier::Warm, &exe);
        assert_eq!(a, b);
        assert_ne!(sa, Source::Fallback);
        assert!(matches!(sb, Source::AnyKind | Source::Lz4Bucket), "{sb:?}");
        let noise = Features::with_kind(FileKind::Other, &xorshift_bytes(1, 40_000));
        for tier in Tier::ALL {
            let (choice, source) = model.choose_explained(tier, &noise);
            assert_eq!((choice, source), (Choice::RAW, Source::Fallback), "{tier}");
        }
        let squeezable = Features {
            entropy_tenths: 10,
            lz4_percent: 5,
            kind: FileKind::Other,
        };
        assert_eq!(
            model.choose_explained(Tier::Cold, &squeezable),
            ("lzma-6".parse().unwrap(), Source::Fallback)
        );
    }
}
