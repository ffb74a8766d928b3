use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// dfs metadata server.
#[derive(Parser, Debug)]
#[command(name = "dfs-meta", version, args_override_self = true)]
struct Args {
    /// Address to serve the metadata API on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Where the metadata lives: rocksdb:PATH, or fdb:CLUSTER_FILE[#PREFIX]
    /// when built with FoundationDB (PREFIX: the volume's part of the key
    /// space, for a database several volumes share).
    #[arg(long)]
    store: String,
    /// Erasure coding of a new volume, K data + M parity shards.
    #[arg(long, default_value = "6+3")]
    ec: String,
    /// Seconds without a heartbeat before a chunk server is suspect.
    #[arg(long, default_value_t = 6)]
    suspect_after: u64,
    /// Seconds without a heartbeat before a chunk server is down.
    #[arg(long, default_value_t = 30)]
    down_after: u64,
    /// Seconds a chunk server may stay down before its shards are rebuilt
    /// on the others.
    #[arg(long, default_value_t = 600)]
    rebuild_after: u64,
    /// Seconds between repair scans of the whole dedup index.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    repair_interval: u64,
    /// Most chunks repaired per second (0: no limit), so that rebuilding
    /// a dead server's shards leaves disks and network to the clients.
    #[arg(long, default_value_t = 0.0, value_name = "CHUNKS_PER_SEC")]
    repair_rate: f64,
    /// Seconds a chunk a small flush staged inline in the metadata store
    /// stays there before it moves to the chunk servers (0: clients do not
    /// stage; their small files go to the servers at once).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    stage_delay: u64,
    /// Seconds between automatic garbage collections (0: only `dfs gc`).
    #[arg(long, default_value_t = 3600)]
    gc_interval: u64,
    /// Seconds an unreferenced chunk or an orphan shard is kept before
    /// automatic garbage collection deletes it.
    #[arg(long, default_value_t = 3600)]
    gc_grace: u64,
    /// The shortest grace period, in seconds, a `dfs gc` request may ask
    /// for (for unreferenced chunks and orphan shards); shorter ones are
    /// refused, so no caller can make GC delete uploads not yet committed.
    #[arg(long, default_value_t = 600)]
    min_gc_grace: u64,
    /// Largest difference, in seconds, between this server's clock and the
    /// chunk servers'.
    #[arg(long, default_value_t = 60)]
    clock_skew: u64,
    /// Seconds after which a file unlinked while open is removed if its
    /// client stopped renewing it (the client died). Clients renew every
    /// 60 s: keep this well above that.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    unlinked_timeout: u64,
    /// Seconds a shard token (signed with each chunk map and each upload
    /// grant) stays good; clients refresh expired ones.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    token_lifetime: u64,
    /// Test hook: every N-th create that committed is answered as if its
    /// commit's outcome were unknown (FoundationDB's commit_unknown_result).
    #[arg(long, default_value_t = 0, hide = true)]
    inject_unknown_commit_every: u64,
    /// Seconds between two passes of the tiering worker, which moves the
    /// chunks of files that aged to the tier their policy asks for
    /// (`dfs tier`); 0: it does not run.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    tier_interval: u64,
    /// Test hook: tiering (files' access days, their ages) reads the
    /// system clock plus the whole seconds written in this file, re-read
    /// every second, so a test can age a volume.
    #[arg(long, value_name = "PATH", hide = true)]
    tier_clock_offset_file: Option<std::path::PathBuf>,
    /// Where cold files' chunks go, packed (issue 21): s3://BUCKET[/PREFIX]
    /// (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION; AWS_ALLOW_HTTP=true for plain
    /// HTTP) or file:///DIR. Without it, cold chunks stay where they are,
    /// recompressed with LZMA when kept inline.
    #[arg(long, value_name = "URL")]
    cold_store: Option<String>,
    /// A cold file read again comes back to hot: its chunks leave their
    /// packs for chunk servers (or the metadata store, when small), LZ4.
    #[arg(long, requires = "cold_store")]
    reheat: bool,
    /// The S3 storage class packs are written in (GLACIER, DEEP_ARCHIVE,
    /// STANDARD_IA...; default: the bucket's). A read of a chunk in an
    /// archived pack asks for a restore and fails with EAGAIN until the
    /// copy is readable.
    #[arg(long, value_name = "CLASS", requires = "cold_store")]
    cold_storage_class: Option<String>,
    /// Test hook: packs of about this many bytes (and frames no bigger)
    /// instead of 64 MiB, so a migration writes many.
    #[arg(long, value_name = "BYTES", hide = true)]
    cold_pack_bytes: Option<u64>,
    #[command(flatten)]
    tls: dfs_core::tls::TlsArgs,
    #[command(flatten)]
    metrics: dfs_core::telemetry::MetricsArgs,
    #[command(flatten)]
    traces: dfs_core::telemetry::TraceArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let identity = dfs_core::telemetry::traces::ProcessIdentity {
        service: "dfs-meta",
        instance: args.listen.to_string(),
    };
    let _traces = dfs_core::telemetry::traces::init_daemon(identity, &args.traces)?;
    let security = args
        .tls
        .security(dfs_core::tls::Role::Meta, "dfs-meta")
        .context("cannot set up TLS")?;
    let (k, m) = dfs_meta::parse_ec(&args.ec).context("bad --ec")?;
    let store = dfs_meta::store::open_store(&args.store)
        .with_context(|| format!("cannot open store {}", args.store))?;
    let service_store_name = store.name();
    let liveness = dfs_meta::Liveness {
        suspect_after: Duration::from_secs(args.suspect_after),
        down_after: Duration::from_secs(args.down_after.max(args.suspect_after)),
    };
    anyhow::ensure!(
        args.gc_grace >= args.clock_skew,
        "--gc-grace ({}) must be at least --clock-skew ({})",
        args.gc_grace,
        args.clock_skew
    );
    anyhow::ensure!(
        args.repair_rate.is_finite() && args.repair_rate >= 0.0,
        "--repair-rate must be a number of chunks per second, 0 for no limit"
    );
    anyhow::ensure!(
        args.gc_grace >= args.min_gc_grace,
        "--gc-grace ({}) must be at least --min-gc-grace ({})",
        args.gc_grace,
        args.min_gc_grace
    );
    let maintenance = dfs_meta::MaintenanceConfig {
        rebuild_after: Duration::from_secs(args.rebuild_after),
        repair_interval: Duration::from_secs(args.repair_interval),
        gc_interval: (args.gc_interval > 0).then(|| Duration::from_secs(args.gc_interval)),
        gc_grace: Duration::from_secs(args.gc_grace),
        clock_skew: Duration::from_secs(args.clock_skew),
        unlinked_timeout: Duration::from_secs(args.unlinked_timeout),
        min_gc_grace: Duration::from_secs(args.min_gc_grace),
        repair_rate: args.repair_rate,
        stage_delay: (args.stage_delay > 0).then(|| Duration::from_secs(args.stage_delay)),
    };
    let service = dfs_meta::MetaService::open(
        store,
        dfs_meta::default_volume(k, m),
        liveness,
        maintenance,
        dfs_meta::tcp_connector(security.clone()),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the volume: {e}"))?
    .inject_unknown_create_commits(args.inject_unknown_commit_every)
    .with_token_lifetime(Duration::from_secs(args.token_lifetime))
    .with_reheat(args.reheat);
    let service = service.with_tier_interval(
        (args.tier_interval > 0).then(|| Duration::from_secs(args.tier_interval)),
    );
    let service = match &args.tier_clock_offset_file {
        Some(path) => {
            service.with_tier_clock(dfs_meta::access::TierClock::with_offset_file(path.clone()))
        }
        None => service,
    };
    if let Some(url) = &args.cold_store {
        let cold = dfs_meta::cold::ColdStore::open(url)
            .context("bad --cold-store")?
            .with_storage_class(args.cold_storage_class.clone());
        let recall = dfs_meta::cold::recall::Recall::new(std::sync::Arc::new(cold));
        service
            .maintenance()
            .set_cold_store(std::sync::Arc::new(recall));
        if let Some(bytes) = args.cold_pack_bytes {
            service
                .maintenance()
                .set_pack_sizes(dfs_meta::cold::pack::PackSizes::small(bytes));
        }
        tracing::info!(cold_store = %url, "cold chunks go to packs on the cold store");
    }
    tracing::info!(listen = %args.listen, store = %args.store, backend = service_store_name, transport = security.describe(), "dfs-meta serving");
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(addr) = args.metrics.metrics {
        let bound = runtime.block_on(dfs_core::telemetry::serve(addr, "dfs-meta"))?;
        // Tests and scripts read where the metrics are from this line.
        println!("dfs-meta metrics on {bound}");
    }
    let served = runtime.block_on(async {
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        // Installed before the ready line: a SIGTERM right after it stops
        // the server cleanly.
        let signal = dfs_core::shutdown::shutdown_signal();
        let shutdown = async move {
            signal.await;
            let _ = signalled_tx.send(());
        };
        let server = dfs_meta::serve(args.listen, service, security, shutdown);
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result,
            Ok(()) = signalled_rx => {
                // Requests in flight get a moment to finish; one waiting on
                // a store that stopped answering does not hold the exit.
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("requests still in flight at shutdown were abandoned");
                        Ok(())
                    }
                }
            }
        }
    });
    // Store work still running on blocking threads (a transaction waiting
    // for a database that stopped answering) is not waited for past this
    // either: SIGTERM ends the process promptly whatever the store's state.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    served
}

/// How long, after SIGTERM, requests in flight and then blocking store work
/// may still run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
