//! `dfs codec train|eval|explain`: the codec model of issue 21 (5b), see
//! `dfs_core::codec_model`.
//!
//! * `train --out FILE DIR...` walks the directories (regular files only:
//!   symlinks, special files and unreadable files are skipped), samples
//!   files deterministically up to a byte budget per file kind (so that one
//!   huge kind does not drown the others; at most `--max-file-bytes` from
//!   the start of each file), cuts them into chunks with the file system's
//!   chunker, measures every candidate codec on every chunk and writes the
//!   trained model, with its provenance, as JSON.
//! * `eval DIR...` compares, per tier, what the model stores and spends
//!   against today's fixed codecs and against storing raw.
//! * `explain FILE`: the features of a file's chunks and the model's choice
//!   for each in every tier.
//!
//! **Held-out files.** A file is held out when the FNV-1a hash of its
//! canonical path is 0 modulo 5 (about a fifth of the files). `train`
//! never uses held-out files; `eval --held-out` uses only them, so its
//! figures are for files the model has not seen. Without `--held-out`,
//! `eval` samples from all files. (`dfs_core::codec_model::corpus`.)
//!
//! Times are thread CPU seconds, so that a busy machine or several
//! measuring threads do not inflate them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use dfs_core::codec::{compress, compress_at, decompress, CodecPolicy};
use dfs_core::codec_model::corpus::{self, CorpusFile, Split, HELD_OUT_RULE};
use dfs_core::codec_model::{
    measure, timed, train_measured, Choice, CodecModel, CostWeights, Features, FileKind, KindStats,
    Measurement, Outcome, CANDIDATES,
};
use dfs_core::size::parse_size;
use dfs_core::tier::Tier;
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum CodecCommand {
    /// Trains a codec model on the files under DIR... (held-out files
    /// excepted) and writes it as JSON.
    Train {
        /// Where to write the model.
        #[arg(long)]
        out: PathBuf,
        /// Raw bytes to sample in all, shared evenly by the file kinds
        /// found (what a kind leaves unused goes to the others).
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        max_bytes: u64,
        /// At most this much from the start of any one file.
        #[arg(long, default_value = "4M", value_parser = parse_size)]
        max_file_bytes: u64,
        /// What the corpus is, in words, for the provenance.
        #[arg(long)]
        corpus: Option<String>,
        /// A JSON file of cost weights (`{"hot": {"compress_weight": ..,
        /// "reads": .., "bytes_per_second": ..}, "warm": .., "cold": ..}`);
        /// the built-in ones otherwise.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Threads that measure (default: one per CPU).
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Per tier: stored bytes and CPU seconds of the model against fixed
    /// LZ4, zstd 3, xz 6 (today's codecs, with today's LZ4 probe) and raw.
    Eval {
        /// The model to evaluate (default: the one built in).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Only the files `train` held out.
        #[arg(long)]
        held_out: bool,
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        max_bytes: u64,
        #[arg(long, default_value = "4M", value_parser = parse_size)]
        max_file_bytes: u64,
        #[arg(long)]
        jobs: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// The features of FILE's chunks and the model's choice per tier.
    Explain {
        file: PathBuf,
        #[arg(long)]
        model: Option<PathBuf>,
        /// At most this much from the start of the file.
        #[arg(long, default_value = "16M", value_parser = parse_size)]
        max_bytes: u64,
        /// Print one JSON object per chunk.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: CodecCommand) -> anyhow::Result<()> {
    match command {
        CodecCommand::Train {
            out,
            max_bytes,
            max_file_bytes,
            corpus,
            weights,
            jobs,
            dirs,
        } => train(&TrainArgs {
            out,
            max_bytes,
            max_file_bytes,
            corpus,
            weights,
            jobs: jobs_or_cpus(jobs),
            dirs,
        }),
        CodecCommand::Eval {
            model,
            held_out,
            max_bytes,
            max_file_bytes,
            jobs,
            json,
            dirs,
        } => {
            let model = load_model(model.as_deref())?;
            let split = if held_out { Split::HeldOut } else { Split::All };
            let files = corpus::select(walk(&dirs)?, split, max_bytes, max_file_bytes);
            let report = eval(&model, &files, jobs_or_cpus(jobs))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_eval(&report, held_out);
            }
            Ok(())
        }
        CodecCommand::Explain {
            file,
            model,
            max_bytes,
            json,
        } => explain(&load_model(model.as_deref())?, &file, max_bytes, json),
    }
}

fn jobs_or_cpus(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

fn load_model(path: Option<&Path>) -> anyhow::Result<CodecModel> {
    match path {
        None => Ok(CodecModel::builtin().clone()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the model {}", path.display()))?;
            CodecModel::from_json(&text)
                .with_context(|| format!("{} is no codec model", path.display()))
        }
    }
}

/// The files under `dirs`, with a line on stderr about them.
fn walk(dirs: &[PathBuf]) -> anyhow::Result<Vec<CorpusFile>> {
    let walked = corpus::walk(dirs).context("cannot open a corpus directory")?;
    eprintln!(
        "corpus: {} files, {} under the roots ({} unreadable, skipped)",
        walked.files.len(),
        human(walked.files.iter().map(|f| f.len).sum()),
        walked.skipped
    );
    Ok(walked.files)
}

/// Runs `f` on every chunk of every file on `jobs` threads; returns the
/// results per file, in `files` order. A file that cannot be read (it
/// vanished) is skipped; an error from `f` stops the run.
fn for_each_chunk<R: Send>(
    files: &[CorpusFile],
    jobs: usize,
    f: impl Fn(&CorpusFile, &[u8]) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<Vec<R>>> {
    let next = AtomicUsize::new(0);
    let done_bytes = AtomicU64::new(0);
    let total: u64 = files.iter().map(|f| f.take).sum();
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Vec<R>)>> = Mutex::new(Vec::new());
    let error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let mut data = Vec::new();
                let read =
                    File::open(&file.path).and_then(|h| h.take(file.take).read_to_end(&mut data));
                let mut out = Vec::new();
                if read.is_ok() {
                    let mut off = 0;
                    for len in dfs_core::cut_lengths(&data, true) {
                        match f(file, &data[off..off + len]) {
                            Ok(r) => out.push(r),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                let e = e.context(format!("{}", file.path.display()));
                                if let Ok(mut slot) = error.lock() {
                                    slot.get_or_insert(e);
                                }
                                return;
                            }
                        }
                        off += len;
                    }
                }
                if let Ok(mut r) = results.lock() {
                    r.push((i, out));
                }
                let before = done_bytes.fetch_add(file.take, Ordering::Relaxed);
                let tenth = |b: u64| b * 10 / total.max(1);
                if tenth(before) != tenth(before + file.take) {
                    eprintln!(
                        "  {:>3}%  {} of {} in {:.0}s",
                        tenth(before + file.take) * 10,
                        human(before + file.take),
                        human(total),
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a measuring thread panicked"))?;
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

// ---- train ----

struct TrainArgs {
    out: PathBuf,
    max_bytes: u64,
    max_file_bytes: u64,
    corpus: Option<String>,
    weights: Option<PathBuf>,
    jobs: usize,
    dirs: Vec<PathBuf>,
}

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let weights = match &args.weights {
        None => CostWeights::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the weights {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} holds no cost weights", path.display()))?
        }
    };
    let files = corpus::select(
        walk(&args.dirs)?,
        Split::Train,
        args.max_bytes,
        args.max_file_bytes,
    );
    eprintln!(
        "training on {} files, {} (held-out files excepted), {} threads",
        files.len(),
        human(files.iter().map(|f| f.take).sum()),
        args.jobs
    );
    let per_file = for_each_chunk(&files, args.jobs, |file, chunk| {
        Measurement::of(file.kind, chunk, &CANDIDATES).context("a codec failed its round trip")
    })?;
    let mut files_per_kind: BTreeMap<FileKind, u64> = BTreeMap::new();
    for (file, chunks) in files.iter().zip(&per_file) {
        if !chunks.is_empty() {
            *files_per_kind.entry(file.kind).or_default() += 1;
        }
    }
    let measured: Vec<Measurement> = per_file.into_iter().flatten().collect();
    let mut model = train_measured(&measured, &CANDIDATES, &weights);
    let p = model.provenance_mut();
    p.corpus = args
        .corpus
        .clone()
        .unwrap_or_else(|| "files under the roots".to_string());
    p.roots = args
        .dirs
        .iter()
        .map(|d| {
            std::fs::canonicalize(d)
                .unwrap_or_else(|_| d.clone())
                .display()
                .to_string()
        })
        .collect();
    p.files = files_per_kind.values().sum();
    for k in &mut p.kinds {
        k.files = files_per_kind.get(&k.kind).copied().unwrap_or(0);
    }
    p.held_out = HELD_OUT_RULE.to_string();
    p.date = utc_date();
    p.command = command_line();
    p.cpu = cpu_name();
    p.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let json = model.to_json()?;
    std::fs::write(&args.out, json)
        .with_context(|| format!("cannot write the model to {}", args.out.display()))?;
    let p = model.provenance();
    println!(
        "trained on {} files, {} chunks, {} in {:.0}s; {} cells; written to {}",
        p.files,
        p.chunks,
        human(p.bytes),
        p.seconds,
        model.cells().len(),
        args.out.display()
    );
    print_kinds(&p.kinds);
    Ok(())
}

fn print_kinds(kinds: &[KindStats]) {
    println!(
        "  {:<12} {:>8} {:>8} {:>12}",
        "kind", "files", "chunks", "bytes"
    );
    for k in kinds {
        println!(
            "  {:<12} {:>8} {:>8} {:>12}",
            k.kind.as_str(),
            k.files,
            k.chunks,
            human(k.bytes)
        );
    }
}

// ---- eval ----

/// Totals of one way of storing a corpus, in one tier.
#[derive(Clone, Debug, Default, Serialize)]
struct Totals {
    name: String,
    stored_bytes: u64,
    compress_s: f64,
    decompress_s: f64,
    /// The tier's cost (seconds) under the model's weights.
    cost_s: f64,
}

impl Totals {
    fn add(&mut self, o: &Outcome, cost: f64) {
        self.stored_bytes += o.stored;
        self.compress_s += o.compress_s;
        self.decompress_s += o.decompress_s;
        self.cost_s += cost;
    }
}

#[derive(Debug, Serialize)]
struct TierReport {
    tier: &'static str,
    /// The model first, then lz4, zstd-3, lzma-6, raw.
    rows: Vec<Totals>,
    /// Raw bytes the model stored with each choice.
    model_choices: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct EvalReport {
    files: u64,
    chunks: u64,
    raw_bytes: u64,
    kinds: Vec<KindStats>,
    /// CPU seconds the features took, and those LZ4 takes to compress
    /// every chunk whole (no probe).
    features_s: f64,
    lz4_compress_s: f64,
    /// The same for chunks of 48 KiB and more (three samples each).
    big_features_s: f64,
    big_lz4_compress_s: f64,
    tiers: Vec<TierReport>,
}

/// What eval measured of one chunk.
struct ChunkEval {
    raw_len: u64,
    kind: FileKind,
    /// Per tier: the model's choice and outcome (its compress time
    /// includes computing the features).
    model: Vec<(Choice, Outcome)>,
    /// lz4, zstd-3, lzma-6 as `codec::compress` does today, and raw.
    baselines: [Outcome; 4],
    features_s: f64,
    /// LZ4 on the whole chunk, without a probe.
    lz4_s: f64,
}

const BASELINES: [(&str, CodecPolicy); 4] = [
    ("lz4", CodecPolicy::Lz4),
    ("zstd-3", CodecPolicy::Zstd),
    ("lzma-6", CodecPolicy::Lzma),
    ("raw", CodecPolicy::None),
];

/// Today's `codec::compress(policy)`, timed both ways.
fn measure_today(policy: CodecPolicy, raw: &[u8]) -> anyhow::Result<Outcome> {
    if policy == CodecPolicy::None {
        return Ok(measure(Choice::RAW, raw)?);
    }
    let ((codec, stored), compress_s) = timed(|| compress(policy, raw));
    let (back, decompress_s) = timed(|| decompress(codec, &stored, raw.len()));
    anyhow::ensure!(back? == raw, "{policy} round trip changed the bytes");
    Ok(Outcome {
        stored: stored.len() as u64,
        compress_s,
        decompress_s,
    })
}

fn eval_chunk(model: &CodecModel, kind: FileKind, raw: &[u8]) -> anyhow::Result<ChunkEval> {
    let (features, features_s) = timed(|| Features::with_kind(kind, raw));
    let (_, lz4_s) = timed(|| compress_at(CodecPolicy::Lz4, 0, raw));
    let mut measured: Vec<(Choice, Outcome)> = Vec::new();
    let mut per_tier = Vec::with_capacity(3);
    for tier in Tier::ALL {
        let choice = model.choose(tier, &features);
        let outcome = match measured.iter().find(|(c, _)| *c == choice) {
            Some((_, o)) => *o,
            None => {
                let o = measure(choice, raw)?;
                measured.push((choice, o));
                o
            }
        };
        let with_features = Outcome {
            compress_s: outcome.compress_s + features_s,
            ..outcome
        };
        per_tier.push((choice, with_features));
    }
    Ok(ChunkEval {
        raw_len: raw.len() as u64,
        kind,
        model: per_tier,
        baselines: [
            measure_today(BASELINES[0].1, raw)?,
            measure_today(BASELINES[1].1, raw)?,
            measure_today(BASELINES[2].1, raw)?,
            measure_today(BASELINES[3].1, raw)?,
        ],
        features_s,
        lz4_s,
    })
}

fn eval(model: &CodecModel, files: &[CorpusFile], jobs: usize) -> anyhow::Result<EvalReport> {
    eprintln!(
        "evaluating on {} files, {}, {jobs} threads",
        files.len(),
        human(files.iter().map(|f| f.take).sum())
    );
    let per_file = for_each_chunk(files, jobs, |file, chunk| {
        eval_chunk(model, file.kind, chunk)
    })?;
    let weights = model.provenance().weights;
    let mut kinds: BTreeMap<FileKind, KindStats> = BTreeMap::new();
    let mut report = EvalReport {
        files: 0,
        chunks: 0,
        raw_bytes: 0,
        kinds: Vec::new(),
        features_s: 0.0,
        lz4_compress_s: 0.0,
        big_features_s: 0.0,
        big_lz4_compress_s: 0.0,
        tiers: Vec::new(),
    };
    let mut tiers: Vec<TierReport> = Tier::ALL
        .iter()
        .map(|t| TierReport {
            tier: t.as_str(),
            rows: std::iter::once("model")
                .chain(BASELINES.iter().map(|b| b.0))
                .map(|name| Totals {
                    name: name.to_string(),
                    ..Totals::default()
                })
                .collect(),
            model_choices: BTreeMap::new(),
        })
        .collect();
    for chunks in &per_file {
        let Some(first) = chunks.first() else {
            continue;
        };
        report.files += 1;
        let k = kinds.entry(first.kind).or_insert_with(|| KindStats {
            kind: first.kind,
            files: 0,
            chunks: 0,
            bytes: 0,
        });
        k.files += 1;
        for c in chunks {
            k.chunks += 1;
            k.bytes += c.raw_len;
            report.chunks += 1;
            report.raw_bytes += c.raw_len;
            report.features_s += c.features_s;
            report.lz4_compress_s += c.lz4_s;
            if c.raw_len >= 48 * 1024 {
                report.big_features_s += c.features_s;
                report.big_lz4_compress_s += c.lz4_s;
            }
            for (t, tier) in Tier::ALL.iter().enumerate() {
                let w = weights.get(*tier);
                let (choice, o) = &c.model[t];
                tiers[t].rows[0].add(o, w.cost(o));
                *tiers[t]
                    .model_choices
                    .entry(choice.to_string())
                    .or_default() += c.raw_len;
                for (row, o) in tiers[t].rows[1..].iter_mut().zip(&c.baselines) {
                    row.add(o, w.cost(o));
                }
            }
        }
    }
    report.kinds = kinds.into_values().collect();
    report.tiers = tiers;
    Ok(report)
}

fn print_eval(r: &EvalReport, held_out: bool) {
    println!(
        "{} corpus: {} files, {} chunks, {} raw",
        if held_out { "held-out" } else { "whole" },
        r.files,
        r.chunks,
        human(r.raw_bytes)
    );
    print_kinds(&r.kinds);
    let percent = |a: f64, b: f64| 100.0 * a / b.max(1e-9);
    println!(
        "features: {:.3} CPU s, {:.0}% of compressing every chunk whole with LZ4 ({:.3} s); \
         chunks of 48 KiB and more: {:.0}%",
        r.features_s,
        percent(r.features_s, r.lz4_compress_s),
        r.lz4_compress_s,
        percent(r.big_features_s, r.big_lz4_compress_s)
    );
    for t in &r.tiers {
        println!();
        println!(
            "{:<5} {:<8} {:>14} {:>7} {:>11} {:>13} {:>10}",
            t.tier, "codec", "stored bytes", "ratio", "compress s", "decompress s", "cost s"
        );
        for row in &t.rows {
            println!(
                "      {:<8} {:>14} {:>7.3} {:>11.2} {:>13.2} {:>10.2}",
                row.name,
                row.stored_bytes,
                r.raw_bytes as f64 / row.stored_bytes.max(1) as f64,
                row.compress_s,
                row.decompress_s,
                row.cost_s
            );
        }
        let mix: Vec<String> = t
            .model_choices
            .iter()
            .map(|(c, b)| format!("{c} {:.0}%", 100.0 * *b as f64 / r.raw_bytes.max(1) as f64))
            .collect();
        println!("      model chose (by raw bytes): {}", mix.join(", "));
    }
}

// ---- explain ----

#[derive(Serialize)]
struct ExplainRow {
    offset: u64,
    len: u64,
    kind: FileKind,
    entropy_bits: f64,
    lz4_percent: u8,
    entropy_bucket: u8,
    lz4_bucket: u8,
    /// Per tier: choice and which table level gave it.
    hot: String,
    warm: String,
    cold: String,
}

fn explain(model: &CodecModel, path: &Path, max_bytes: u64, json: bool) -> anyhow::Result<()> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(max_bytes).read_to_end(&mut data))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let kind = FileKind::of(path.to_str(), &data);
    if !json {
        println!("{}: {kind}, {}", path.display(), human(data.len() as u64));
        println!(
            "{:>10} {:>7} {:>7} {:>5}  {:<22} {:<22} {:<22}",
            "offset", "len", "entropy", "lz4%", "hot", "warm", "cold"
        );
    }
    let mut offset = 0usize;
    for len in dfs_core::cut_lengths(&data, true) {
        let chunk = &data[offset..offset + len];
        let f = Features::with_kind(kind, chunk);
        let (e, l) = model.buckets(&f);
        let say = |tier| {
            let (choice, source) = model.choose_explained(tier, &f);
            format!("{choice} ({})", source.as_str())
        };
        let row = ExplainRow {
            offset: offset as u64,
            len: len as u64,
            kind,
            entropy_bits: f.entropy_bits(),
            lz4_percent: f.lz4_percent,
            entropy_bucket: e,
            lz4_bucket: l,
            hot: say(Tier::Hot),
            warm: say(Tier::Warm),
            cold: say(Tier::Cold),
        };
        if json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>10} {:>7} {:>7.1} {:>5}  {:<22} {:<22} {:<22}",
                row.offset, row.len, row.entropy_bits, row.lz4_percent, row.hot, row.warm, row.cold
            );
        }
        offset += len;
    }
    Ok(())
}

// ---- small helpers ----

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// This process's command line, quoted for a POSIX shell where needed.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CPU's model name and how many this process may use.
fn cpu_name() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("{name}, {} CPUs", jobs_or_cpus(None))
}

/// Today's date in UTC, YYYY-MM-DD.
fn utc_date() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a
/// day number (days since 1970-01-01).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
