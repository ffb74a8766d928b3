//! `dfs`: the administrator's command. Talks to a metadata server.

mod gc;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{Empty, ServerState};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(name = "dfs", version, about = "Administer a dfs cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// referenced for the grace period, and reports what it freed.
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
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Chunk servers with their state and usage.
    Status {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Print one JSON object.
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
    /// logical / unique: how much dedup saves.
    dedup_ratio: f64,
    /// unique / stored: how much compression saves.
    compression_ratio: f64,
    /// raw / stored: what redundancy costs.
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
struct Status {
    servers: Vec<ServerRow>,
    servers_up: usize,
    servers_suspect: usize,
    servers_down: usize,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

async fn connect(meta: &str) -> anyhow::Result<MetaClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{meta}"))
        .with_context(|| format!("bad metadata server address `{meta}` (expected HOST:PORT)"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the metadata server at {meta}"))?;
    Ok(MetaClient::new(channel).max_decoding_message_size(dfs_proto::MAX_MESSAGE_BYTES))
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Up => "up",
        ServerState::Suspect => "suspect",
        ServerState::Down => "down",
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Stats { meta, json } => {
            let s = connect(&meta)
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
                dedup_ratio: ratio(s.logical_bytes, s.unique_bytes),
                compression_ratio: ratio(s.unique_bytes, s.stored_bytes),
                redundancy_overhead: ratio(s.raw_bytes, s.stored_bytes),
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
                println!("chunks          {:>16}", stats.chunks);
                println!("files           {:>16}", stats.files);
                println!(
                    "unreferenced    {:>16}  chunks, {} bytes (awaiting GC)",
                    stats.unreferenced_chunks, stats.unreferenced_bytes
                );
            }
        }
        Command::Gc {
            meta,
            grace,
            clock_skew,
            json,
        } => {
            let mut client = connect(&meta).await?;
            let report = gc::run(
                &mut client,
                Duration::from_secs(grace),
                Duration::from_secs(clock_skew),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("index entries scanned   {:>12}", report.scanned);
                println!("waiting (grace period)  {:>12}", report.waiting);
                println!("chunks freed            {:>12}", report.chunks_freed);
                println!("shards deleted          {:>12}", report.shards_deleted);
                println!("bytes freed             {:>12}", report.bytes_freed);
                println!("chunks pending          {:>12}", report.chunks_pending);
            }
        }
        Command::Status { meta, json } => {
            let reply = connect(&meta)
                .await?
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
            let count = |name: &str| servers.iter().filter(|s| s.state == name).count();
            let status = Status {
                servers_up: count("up"),
                servers_suspect: count("suspect"),
                servers_down: count("down"),
                servers,
            };
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!(
                    "{:>4}  {:<22} {:<14} {:<14} {:<8} {:>8} {:>14}",
                    "id", "address", "zone", "rack", "state", "shards", "shard bytes"
                );
                for s in &status.servers {
                    println!(
                        "{:>4}  {:<22} {:<14} {:<14} {:<8} {:>8} {:>14}",
                        s.id, s.address, s.zone, s.rack, s.state, s.shard_count, s.shard_bytes
                    );
                }
                println!(
                    "{} up, {} suspect, {} down",
                    status.servers_up, status.servers_suspect, status.servers_down
                );
            }
        }
    }
    Ok(())
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
