//! `dfs`: the administrator's command. Talks to a metadata server.

mod ca;
mod codec;
mod gc;
mod keys;
mod tier;
mod workers;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{Empty, FsckRequest, GcRequest, RepairStatus, ServerState};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(name = "dfs", version, about = "Administer a dfs cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: dfs_core::tls::TlsArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Space and dedup statistics: logical, unique, stored and raw bytes.
    Stats {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Garbage collection: deletes the shards of chunks no file has
    /// referenced for the grace period, and orphan shards no chunk claims
    /// that are older than it, and reports what it freed.
    Gc {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Seconds a chunk must stay unreferenced before it is deleted.
        #[arg(long, default_value_t = 3600)]
        grace: u64,
        /// Largest difference, in seconds, between the clocks of the
        /// metadata and chunk servers (at most --grace).
        #[arg(long, default_value_t = 60)]
        clock_skew: u64,
        /// Seconds an orphan shard (one no index entry claims) is kept before
        /// it is deleted: longer than any client takes from uploading a
        /// chunk to committing it. 0 is only safe while nobody writes.
        #[arg(long, default_value_t = 3600)]
        orphan_grace: u64,
        /// Leave orphan shards alone.
        #[arg(long)]
        no_orphans: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Checks the whole volume against the chunk servers: missing, lost
    /// and under-protected chunks, reference counts, orphan shards. Exits
    /// with 1 when something threatens data.
    Fsck {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Also read every shard and verify its checksum.
        #[arg(long)]
        verify: bool,
        /// Seconds within which an unclaimed shard is not yet an orphan
        /// (a client may be between upload and commit).
        #[arg(long, default_value_t = 600)]
        orphan_grace: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's certificate authority: make it, issue certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Tiering policies of files and directories on a mount: when they
    /// move from hot to warm to cold.
    #[command(subcommand)]
    Tier(tier::TierCommand),
    /// The codec model that picks each chunk's codec and level: train it
    /// on a corpus, evaluate it, explain its choices for a file.
    #[command(subcommand)]
    Codec(codec::CodecCommand),
    /// S3 access keys of dfs-gateway: each signs requests as one POSIX
    /// user (uid, gid, groups), with that user's permissions.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Every Prometheus metric dfs processes export (with `--metrics`
    /// ADDR, or the mount's `-o metrics=ADDR`), as a Markdown table.
    Metrics,
    /// Chunk servers with their state and usage, repairs, and what needs
    /// attention, in words.
    Status {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Print it again every SECS seconds (2 if not given) until
        /// interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Every background worker of the cluster (dfs-meta's repair,
    /// lease-expiry, gc, purge and fsck, each chunk server's scrub): state,
    /// progress, last and next run, throttle, last error.
    Workers {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Stats {
    logical_bytes: u64,
    unique_bytes: u64,
    stored_bytes: u64,
    raw_bytes: u64,
    chunks: u64,
    files: u64,
    unreferenced_chunks: u64,
    unreferenced_bytes: u64,
    /// Chunks kept inline in the metadata store, and their stored bytes
    /// (part of stored_bytes, not of raw_bytes).
    inline_chunks: u64,
    inline_bytes: u64,
    /// Of those, chunks small flushes staged there that the staging worker
    /// has yet to move to the chunk servers, and their stored bytes.
    staged_chunks: u64,
    staged_bytes: u64,
    /// Stored bytes of the chunks in each tier (part of stored_bytes).
    hot_bytes: u64,
    warm_bytes: u64,
    cold_bytes: u64,
    /// Chunks in packs on the cold store, and their share of the packs'
    /// bytes (part of stored_bytes, not of raw_bytes).
    packed_chunks: u64,
    packed_bytes: u64,
    /// Chunks compressed with the volume's dictionary, their stored
    /// bytes, and the newest dictionary's id (0: none trained yet).
    dictionary_chunks: u64,
    dictionary_bytes: u64,
    dictionary_id: u64,
    /// The longest metadata transaction of the answering dfs-meta since it
    /// started, in milliseconds, and the request that ran it.
    longest_transaction_ms: f64,
    longest_transaction_op: String,
    /// Transactions of the answering dfs-meta since it started, and how
    /// many times their bodies ran again after a conflict.
    transactions: u64,
    transaction_retries: u64,
    /// logical / unique: how much dedup saves.
    dedup_ratio: f64,
    /// unique / stored: how much compression saves.
    compression_ratio: f64,
    /// raw / stored on chunk servers (stored less inline): what
    /// redundancy costs.
    redundancy_overhead: f64,
}

#[derive(Serialize)]
struct ServerRow {
    id: u32,
    address: String,
    zone: String,
    rack: String,
    state: &'static str,
    heartbeat_age_ms: i64,
    capacity_bytes: u64,
    used_bytes: u64,
    shard_count: u64,
    shard_bytes: u64,
}

#[derive(Serialize)]
struct Repair {
    under_protected_chunks: u64,
    lost_chunks: u64,
    chunks_repaired: u64,
    shards_rebuilt: u64,
    pending_reports: u64,
    scanning: bool,
    scanned_chunks: u64,
    /// Seconds since the last complete repair scan (null: none yet).
    last_scan_age_s: Option<f64>,
}

impl From<RepairStatus> for Repair {
    fn from(r: RepairStatus) -> Self {
        Self {
            under_protected_chunks: r.under_protected_chunks,
            lost_chunks: r.lost_chunks,
            chunks_repaired: r.chunks_repaired,
            shards_rebuilt: r.shards_rebuilt,
            pending_reports: r.pending_reports,
            scanning: r.scanning,
            scanned_chunks: r.scanned_chunks,
            last_scan_age_s: (r.last_scan_ns > 0)
                .then(|| (dfs_core::time::now_ns() - r.last_scan_ns).max(0) as f64 / 1e9),
        }
    }
}

#[derive(Serialize)]
struct Status {
    /// `ok`, or `warn` when `attention` says something.
    health: &'static str,
    /// What needs attention, in words, and what to do about it.
    attention: Vec<String>,
    servers: Vec<ServerRow>,
    servers_up: usize,
    servers_suspect: usize,
    servers_down: usize,
    repair: Repair,
}

/// A chunk server's disk fuller than this needs attention (the alert
/// rule's threshold too).
const DISK_FULL_RATIO: f64 = 0.9;

/// What needs attention in the servers and repairs, in words.
fn attention(servers: &[ServerRow], repair: &Repair) -> Vec<String> {
    let mut lines = Vec::new();
    let named = |state: &str| -> Vec<String> {
        servers
            .iter()
            .filter(|s| s.state == state)
            .map(|s| format!("{} ({})", s.id, s.address))
            .collect()
    };
    let down = named("down");
    if !down.is_empty() {
        lines.push(format!(
            "{} chunk server(s) down: {}; their shards are rebuilt elsewhere once they stay down \
             past dfs-meta's --rebuild-after; restart them, or replace their disks",
            down.len(),
            down.join(", ")
        ));
    }
    let suspect = named("suspect");
    if !suspect.is_empty() {
        lines.push(format!(
            "{} chunk server(s) missed heartbeats: {}; check that they run and are reachable",
            suspect.len(),
            suspect.join(", ")
        ));
    }
    if repair.lost_chunks > 0 {
        lines.push(format!(
            "{} chunk(s) lost at the last scan: fewer shards readable than needed; bring back \
             the servers that are down, then run `dfs fsck`",
            repair.lost_chunks
        ));
    }
    if repair.under_protected_chunks > 0 {
        lines.push(format!(
            "{} chunk(s) under-protected: shards missing or on servers not up; repair is under \
             way (`dfs workers` shows it)",
            repair.under_protected_chunks
        ));
    }
    if repair.pending_reports > 0 {
        lines.push(format!(
            "{} damaged shard(s) reported by scrubbers wait for repair",
            repair.pending_reports
        ));
    }
    for s in servers {
        if s.capacity_bytes > 0 && s.used_bytes as f64 > DISK_FULL_RATIO * s.capacity_bytes as f64 {
            lines.push(format!(
                "chunk server {} ({}) is {:.0}% full; add servers or disks, or run `dfs gc`",
                s.id,
                s.address,
                100.0 * s.used_bytes as f64 / s.capacity_bytes as f64
            ));
        }
    }
    lines
}

/// How long `dfs gc` and `dfs fsck` wait for the metadata server.
const LONG_REQUEST: Duration = Duration::from_secs(24 * 3600);

fn secs_to_ns(secs: u64) -> i64 {
    i64::try_from(u128::from(secs) * 1_000_000_000).unwrap_or(i64::MAX)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

async fn connect(
    meta: &str,
    tls: &dfs_core::tls::TlsArgs,
) -> anyhow::Result<MetaClient<tonic::transport::Channel>> {
    connect_for(meta, Duration::from_secs(30), tls).await
}

/// Like `connect`, for a request that may run for up to `timeout`.
async fn connect_for(
    meta: &str,
    timeout: Duration,
    tls: &dfs_core::tls::TlsArgs,
) -> anyhow::Result<MetaClient<tonic::transport::Channel>> {
    let channel = meta_channel(meta, timeout, tls).await?;
    Ok(MetaClient::new(channel).max_decoding_message_size(dfs_proto::MAX_MESSAGE_BYTES))
}

/// A connection to a metadata server as an admin, for any of its services.
async fn meta_channel(
    meta: &str,
    timeout: Duration,
    tls: &dfs_core::tls::TlsArgs,
) -> anyhow::Result<tonic::transport::Channel> {
    let security = tls
        .security(dfs_core::tls::Role::Admin, "dfs")
        .context("cannot set up TLS (an admin certificate, or --plaintext)")?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{meta}"))
        .with_context(|| format!("bad metadata server address `{meta}` (expected HOST:PORT)"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    let channel = endpoint
        .connect_with_connector(security.connector(dfs_core::tls::Role::Meta))
        .await
        .with_context(|| format!("cannot reach the metadata server at {meta}"))?;
    Ok(channel)
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Up => "up",
        ServerState::Suspect => "suspect",
        ServerState::Down => "down",
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ca(command) => ca::run(command)?,
        Command::Tier(tier::TierCommand::Status { meta, json }) => {
            let reply = connect(&meta, &cli.tls)
                .await?
                .tier_status(Empty {})
                .await
                .context("tier status request failed")?
                .into_inner();
            tier::print_status(reply, json)?;
        }
        Command::Tier(command) => tier::run(command)?,
        Command::Codec(command) => codec::run(command)?,
        Command::Keys(command) => {
            let channel = meta_channel(command.meta(), Duration::from_secs(30), &cli.tls).await?;
            keys::run(command, channel).await?
        }
        Command::Metrics => print!("{}", dfs_core::telemetry::catalog::markdown()),
        Command::Stats { meta, json } => {
            let s = connect(&meta, &cli.tls)
                .await?
                .stats(Empty {})
                .await
                .context("stats request failed")?
                .into_inner();
            let stats = Stats {
                logical_bytes: s.logical_bytes,
                unique_bytes: s.unique_bytes,
                stored_bytes: s.stored_bytes,
                raw_bytes: s.raw_bytes,
                chunks: s.chunks,
                files: s.files,
                unreferenced_chunks: s.unreferenced_chunks,
                unreferenced_bytes: s.unreferenced_bytes,
                inline_chunks: s.inline_chunks,
                inline_bytes: s.inline_bytes,
                staged_chunks: s.staged_chunks,
                staged_bytes: s.staged_bytes,
                hot_bytes: s.hot_bytes,
                warm_bytes: s.warm_bytes,
                cold_bytes: s.cold_bytes,
                packed_chunks: s.packed_chunks,
                packed_bytes: s.packed_bytes,
                dictionary_chunks: s.dictionary_chunks,
                dictionary_bytes: s.dictionary_bytes,
                dictionary_id: s.dictionary_id,
                longest_transaction_ms: s.longest_transaction_us as f64 / 1000.0,
                longest_transaction_op: s.longest_transaction_op,
                transactions: s.transactions,
                transaction_retries: s.transaction_retries,
                dedup_ratio: ratio(s.logical_bytes, s.unique_bytes),
                compression_ratio: ratio(s.unique_bytes, s.stored_bytes),
                // Of the bytes the chunk servers hold: inline and packed
                // ones are not.
                redundancy_overhead: ratio(
                    s.raw_bytes,
                    s.stored_bytes
                        .saturating_sub(s.inline_bytes)
                        .saturating_sub(s.packed_bytes),
                ),
            };
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                println!("logical bytes   {:>16}", stats.logical_bytes);
                println!(
                    "unique bytes    {:>16}  (dedup {:.2}x)",
                    stats.unique_bytes, stats.dedup_ratio
                );
                println!(
                    "stored bytes    {:>16}  (compression {:.2}x)",
                    stats.stored_bytes, stats.compression_ratio
                );
                println!(
                    "raw bytes       {:>16}  (redundancy {:.2}x)",
                    stats.raw_bytes, stats.redundancy_overhead
                );
                println!(
                    "inline bytes    {:>16}  in {} chunks kept in the metadata store",
                    stats.inline_bytes, stats.inline_chunks
                );
                println!(
                    "  staged bytes  {:>16}  in {} of them, to move to the chunk servers",
                    stats.staged_bytes, stats.staged_chunks
                );
                println!(
                    "packed bytes    {:>16}  in {} chunks in packs on the cold store",
                    stats.packed_bytes, stats.packed_chunks
                );
                println!(
                    "dictionary      {:>16}  stored bytes in {} chunks compressed with dictionary {}",
                    stats.dictionary_bytes, stats.dictionary_chunks, stats.dictionary_id
                );
                println!(
                    "by tier         {:>16}  hot, {} warm, {} cold (stored bytes)",
                    stats.hot_bytes, stats.warm_bytes, stats.cold_bytes
                );
                println!("chunks          {:>16}", stats.chunks);
                println!("files           {:>16}", stats.files);
                println!(
                    "unreferenced    {:>16}  chunks, {} bytes (awaiting GC)",
                    stats.unreferenced_chunks, stats.unreferenced_bytes
                );
                println!(
                    "longest txn     {:>14.1}ms  ({}, since this dfs-meta started)",
                    stats.longest_transaction_ms, stats.longest_transaction_op
                );
                println!(
                    "transactions    {:>16}  ({} retried after a conflict)",
                    stats.transactions, stats.transaction_retries
                );
            }
        }
        Command::Gc {
            meta,
            grace,
            clock_skew,
            orphan_grace,
            no_orphans,
            json,
        } => {
            anyhow::ensure!(
                grace >= clock_skew,
                "--grace ({grace}s) must be at least --clock-skew ({clock_skew}s), or shards \
                 written just before a chunk died could outlive it"
            );
            let mut client = connect_for(&meta, LONG_REQUEST, &cli.tls).await?;
            let poll = connect(&meta, &cli.tls).await.ok();
            let report: gc::GcJson = workers::with_progress(
                "gc",
                poll,
                client.gc(GcRequest {
                    grace_ns: secs_to_ns(grace),
                    clock_skew_ns: secs_to_ns(clock_skew),
                    orphans: !no_orphans,
                    orphan_grace_ns: secs_to_ns(orphan_grace),
                }),
            )
            .await
            .context("garbage collection failed")?
            .into_inner()
            .into();
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                gc::print_gc(&report);
            }
        }
        Command::Fsck {
            meta,
            verify,
            orphan_grace,
            json,
        } => {
            let mut client = connect_for(&meta, LONG_REQUEST, &cli.tls).await?;
            let poll = connect(&meta, &cli.tls).await.ok();
            let report: gc::FsckJson = workers::with_progress(
                "fsck",
                poll,
                client.fsck(FsckRequest {
                    verify,
                    orphan_grace_ns: secs_to_ns(orphan_grace),
                }),
            )
            .await
            .context("fsck failed")?
            .into_inner()
            .into();
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                gc::print_fsck(&report);
            }
            if !report.clean {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Status { meta, json, watch } => match watch {
            None => print!("{}", status_report(&meta, &cli.tls, json).await?),
            Some(every) => {
                let clear = std::io::IsTerminal::is_terminal(&std::io::stdout());
                loop {
                    let report = match status_report(&meta, &cli.tls, json).await {
                        Ok(report) => report,
                        Err(e) => format!("dfs: {e:#}\n"),
                    };
                    if clear {
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{report}");
                    tokio::time::sleep(Duration::from_secs(every.max(1))).await;
                }
            }
        },
        Command::Workers { meta, json } => {
            let rows = workers::fetch(&mut connect(&meta, &cli.tls).await?)
                .await
                .context("workers request failed (it needs an admin certificate)")?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                workers::print(&rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dfs status` as text (or one JSON line): servers, repairs, and what
/// needs attention.
async fn status_report(
    meta: &str,
    tls: &dfs_core::tls::TlsArgs,
    json: bool,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut client = connect(meta, tls).await?;
    let reply = client
        .list_servers(Empty {})
        .await
        .context("status request failed")?
        .into_inner();
    let servers: Vec<ServerRow> = reply
        .servers
        .iter()
        .filter_map(|s| {
            let r = s.record.as_ref()?;
            Some(ServerRow {
                id: r.id,
                address: r.address.clone(),
                zone: r.zone.clone(),
                rack: r.rack.clone(),
                state: state_name(s.state()),
                heartbeat_age_ms: s.heartbeat_age_ms,
                capacity_bytes: r.capacity_bytes,
                used_bytes: r.used_bytes,
                shard_count: r.shard_count,
                shard_bytes: r.shard_bytes,
            })
        })
        .collect();
    let repair: Repair = reply.repair.unwrap_or_default().into();
    let mut attention = attention(&servers, &repair);
    // Workers need an admin certificate; a client's status goes without.
    if let Ok(rows) = workers::fetch(&mut client).await {
        attention.extend(workers::attention(&rows));
    }
    let count = |name: &str| servers.iter().filter(|s| s.state == name).count();
    let status = Status {
        health: if attention.is_empty() { "ok" } else { "warn" },
        attention,
        servers_up: count("up"),
        servers_suspect: count("suspect"),
        servers_down: count("down"),
        servers,
        repair,
    };
    let mut out = String::new();
    if json {
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
        return Ok(out);
    }
    writeln!(out, "health: {}", status.health.to_uppercase())?;
    for line in &status.attention {
        writeln!(out, "  - {line}")?;
    }
    writeln!(
        out,
        "{:>4}  {:<22} {:<14} {:<14} {:<8} {:>8} {:>14}",
        "id", "address", "zone", "rack", "state", "shards", "shard bytes"
    )?;
    for s in &status.servers {
        writeln!(
            out,
            "{:>4}  {:<22} {:<14} {:<14} {:<8} {:>8} {:>14}",
            s.id, s.address, s.zone, s.rack, s.state, s.shard_count, s.shard_bytes
        )?;
    }
    writeln!(
        out,
        "{} up, {} suspect, {} down",
        status.servers_up, status.servers_suspect, status.servers_down
    )?;
    let r = &status.repair;
    let last = r.last_scan_age_s.map_or("no scan yet".to_string(), |s| {
        format!("last scan {s:.0}s ago")
    });
    writeln!(
        out,
        "chunks under-protected: {}, lost: {} ({last}{}); repaired since start: {} chunks, {} shards; damaged shards waiting: {}",
        r.under_protected_chunks,
        r.lost_chunks,
        if r.scanning {
            format!(", scanning: {} chunks so far", r.scanned_chunks)
        } else {
            String::new()
        },
        r.chunks_repaired,
        r.shards_rebuilt,
        r.pending_reports
    )?;
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dfs: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plaintext = cli.tls.plaintext;
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("dfs: {message}");
            // A TLS server drops a plaintext client after its first bytes,
            // which reads as a broken transport: say what it likely is.
            if plaintext && message.contains("transport error") {
                eprintln!(
                    "dfs: hint: this dfs ran with --plaintext; a cluster with TLS (the default) drops such connections"
                );
            }
            ExitCode::FAILURE
        }
    }
}
