//! `dfs-server`: parses the command line and runs the chunk server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dfs_server::{ServerConfig, DEFAULT_RACK, DEFAULT_ZONE};

/// dfs chunk server: stores shards in RocksDB and serves them over gRPC.
#[derive(Debug, Parser)]
#[command(name = "dfs-server", version, about)]
struct Cli {
    /// Address to listen on, e.g. 0.0.0.0:7100 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", help_heading = "Network")]
    listen: SocketAddr,

    /// Address clients use to reach this server [default: the bound listen address].
    #[arg(long, value_name = "HOST:PORT", help_heading = "Network")]
    advertise: Option<String>,

    /// Metadata server to register with, or several, comma-separated (dfs-meta
    /// processes sharing one FoundationDB database: tried in turn when one is
    /// unreachable); without it the server runs standalone.
    #[arg(long, value_name = "ADDR[,ADDR...]", help_heading = "Network")]
    meta: Option<String>,

    /// Data directory (created if missing): holds `shards/` and `server.id`.
    #[arg(long, value_name = "PATH", help_heading = "Storage")]
    data: PathBuf,

    /// Failure-domain zone label.
    #[arg(long, value_name = "Z", default_value = DEFAULT_ZONE, help_heading = "Placement")]
    zone: String,

    /// Failure-domain rack label.
    #[arg(long, value_name = "R", default_value = DEFAULT_RACK, help_heading = "Placement")]
    rack: String,

    /// Milliseconds between heartbeats to the metadata server.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(10..=600_000),
        help_heading = "Network"
    )]
    heartbeat_ms: u64,

    /// Most shard bytes this server holds (e.g. 500G) [default: what the disk allows].
    #[arg(long, value_name = "BYTES", value_parser = parse_size, help_heading = "Storage")]
    capacity: Option<u64>,

    /// Free space always left on the data directory's file system
    /// [default: 5% of it, at most 1G].
    #[arg(long, value_name = "BYTES", value_parser = parse_size, help_heading = "Storage")]
    reserve: Option<u64>,

    /// Seconds for one scrub pass, which reads every shard, verifies its
    /// checksum and reports bad ones to the metadata server (604800: 7 days);
    /// 0 disables scrubbing.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = dfs_server::scrub::DEFAULT_SCRUB_PERIOD.as_secs(),
        help_heading = "Storage"
    )]
    scrub_period: u64,
    /// Seconds of difference allowed between dfs-meta's clock, which dates
    /// shard tokens, and this server's.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        help_heading = "Security"
    )]
    token_clock_skew: u64,
    #[command(flatten, next_help_heading = "Security")]
    tls: dfs_core::tls::TlsArgs,
    #[command(flatten)]
    metrics: dfs_core::telemetry::MetricsArgs,
    #[command(flatten)]
    traces: dfs_core::telemetry::TraceArgs,
}

fn parse_size(s: &str) -> Result<u64, String> {
    dfs_core::size::parse_size(s)
}

impl From<Cli> for ServerConfig {
    fn from(cli: Cli) -> Self {
        ServerConfig {
            listen: cli.listen,
            advertise: cli.advertise,
            meta: cli.meta,
            data: cli.data,
            zone: cli.zone,
            rack: cli.rack,
            heartbeat_interval: Duration::from_millis(cli.heartbeat_ms),
            capacity: cli.capacity,
            reserve: cli.reserve,
            scrub_period: Duration::from_secs(cli.scrub_period),
            token_clock_skew: Duration::from_secs(cli.token_clock_skew),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let identity = dfs_core::telemetry::traces::ProcessIdentity {
        service: "dfs-server",
        instance: cli
            .advertise
            .clone()
            .unwrap_or_else(|| cli.listen.to_string()),
    };
    let _traces = match dfs_core::telemetry::traces::init_daemon(identity, &cli.traces) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("dfs-server: {e}");
            return ExitCode::FAILURE;
        }
    };

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfs-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let security = match cli.tls.security(dfs_core::tls::Role::Server, "dfs-server") {
        Ok(security) => security,
        Err(e) => {
            eprintln!("dfs-server: cannot set up TLS: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signal handlers first: a SIGTERM right after the ready line stops the
    // server cleanly.
    let shutdown = {
        let _in_runtime = runtime.enter();
        dfs_core::shutdown::shutdown_signal()
    };
    if let Some(addr) = cli.metrics.metrics {
        match runtime.block_on(dfs_core::telemetry::serve(addr, "dfs-server")) {
            // Tests and scripts read where the metrics are from this line.
            Ok(bound) => println!("dfs-server metrics on {bound}"),
            Err(e) => {
                eprintln!("dfs-server: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match runtime.block_on(dfs_server::run(cli.into(), security, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
