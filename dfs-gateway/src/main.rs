//! `dfs-gateway`: serves a dfs volume over the S3 API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dfs_gateway::auth::Keys;
use dfs_gateway::limits::{Gate, Limits};
use dfs_gateway::s3::Gateway;
use dfs_gateway::server::{self, ServerConfig};
use dfs_gateway::sweep::{self, SweepPolicy};
use dfs_gateway::volume::Volume;
use dfs_mount::cache::ChunkCache;
use dfs_mount::client::{tcp_connector, Cluster, Driving, MetaRpc};
use dfs_mount::fs::handles::Handles;
use dfs_mount::fs::Dfs;

/// S3-compatible gateway to a dfs volume: a bucket is a directory at the
/// volume's root, a key a path below it. Requests are signed (AWS
/// Signature V4) with keys made by `dfs keys add`, each acting as one
/// POSIX user with that user's permissions.
#[derive(Parser, Debug)]
#[command(name = "dfs-gateway", version)]
struct Cli {
    /// HOST:PORT of the metadata servers, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    meta: Vec<String>,
    /// Address to serve S3 on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM) ...
    #[arg(long, value_name = "FILE", requires = "https_key")]
    https_cert: Option<PathBuf>,
    /// ... and this private key (PEM).
    #[arg(long, value_name = "FILE", requires = "https_cert")]
    https_key: Option<PathBuf>,
    /// Host names for virtual-hosted-style requests (BUCKET.NAME);
    /// path-style requests work without.
    #[arg(long = "domain", value_name = "NAME")]
    domains: Vec<String>,
    /// Requests served at once; more are answered 503 SlowDown.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Requests a second one key may make, unless the key sets its own
    /// (0: unlimited).
    #[arg(long, default_value_t = 0)]
    key_request_rate: u32,
    /// Bytes a second one key may move, up and down together, unless the
    /// key sets its own (0: unlimited).
    #[arg(long, default_value_t = 0)]
    key_byte_rate: u64,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = 30)]
    header_timeout: u64,
    /// Seconds a key read from dfs-meta is used before it is read again: a
    /// key removed with `dfs keys remove` works at most this long.
    #[arg(long, default_value_t = 60)]
    key_cache_secs: u64,
    /// Access keys not in the cache looked up in dfs-meta a second, all
    /// keys together; past it, requests with such keys get 503 SlowDown.
    #[arg(long, default_value_t = 100)]
    key_lookup_rate: u32,
    /// Seconds a file in /.s3/tmp (a PUT's bytes before they become the
    /// object) may stay unchanged before it is removed: what a gateway that
    /// died mid-PUT left.
    #[arg(long, default_value_t = 86_400)]
    sweep_tmp_after: u64,
    /// Seconds a multipart upload may stay unchanged before it is aborted
    /// (0: never).
    #[arg(long, default_value_t = 7 * 86_400)]
    sweep_uploads_after: u64,
    /// Seconds between sweeps of /.s3.
    #[arg(long, default_value_t = 3_600)]
    sweep_every: u64,
    /// Bytes of chunks cached for reads.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    #[command(flatten, next_help_heading = "Security")]
    tls: dfs_core::tls::TlsArgs,
    #[command(flatten)]
    traces: dfs_core::telemetry::TraceArgs,
}

fn parse_size(s: &str) -> Result<u64, String> {
    dfs_core::size::parse_size(s)
}

/// How long the first contact with the metadata servers may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the gateway rides out a metadata server restart.
const RETRY_FOR: Duration = Duration::from_secs(60);

async fn run(cli: Cli, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let security = cli
        .tls
        .security(dfs_core::tls::Role::Client, "dfs-gateway")
        .context("cannot set up TLS (a client certificate with the gateway cap, or --plaintext)")?;
    let to_meta = tcp_connector(security.clone(), dfs_core::tls::Role::Meta, Driving::Task);
    let transports = cli
        .meta
        .iter()
        .map(|a| to_meta(a).map_err(|e| anyhow::anyhow!("{}", e.message)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = Keys::new(
        transports[0].clone(),
        Duration::from_secs(cli.key_cache_secs),
        cli.key_lookup_rate,
    );
    let meta = MetaRpc::new(transports, CONNECT_TIMEOUT);
    let to_servers = tcp_connector(security, dfs_core::tls::Role::Server, Driving::Task);
    let cluster = tokio::time::timeout(CONNECT_TIMEOUT * 2, Cluster::connect(meta, to_servers))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the metadata server at {:?}", cli.meta))?
        .map_err(|e| anyhow::anyhow!("cannot reach the metadata server: {}", e.message))?;
    cluster.meta.set_retry_for(RETRY_FOR);
    let dfs = Arc::new(Dfs::new(
        cluster,
        ChunkCache::new(cli.cache_size),
        dfs_core::codec::CodecPolicy::default(),
        4 << 20,
    ));
    // No kernel caches behind the gateway: nothing to keep attributes for.
    let volume = Volume::new(Arc::new(Handles::new(dfs, Duration::ZERO)));
    volume
        .prepare()
        .await
        .map_err(|e| anyhow::anyhow!("cannot make the gateway's directory /.s3: {}", e.message))?;
    let sweeping = tokio::spawn(sweep::run(
        volume.clone(),
        SweepPolicy {
            tmp_after: Duration::from_secs(cli.sweep_tmp_after.max(1)),
            uploads_after: (cli.sweep_uploads_after > 0)
                .then(|| Duration::from_secs(cli.sweep_uploads_after)),
            every: Duration::from_secs(cli.sweep_every.max(1)),
        },
    ));
    let limits = Arc::new(Limits::new(cli.key_request_rate, cli.key_byte_rate));
    let gateway = Gateway {
        volume: volume.clone(),
        keys: keys.clone(),
        limits: limits.clone(),
    };
    let s3 = {
        let mut builder = s3s::service::S3ServiceBuilder::new(gateway);
        builder.set_auth(keys.clone());
        builder.set_access(Gate { keys, limits });
        if !cli.domains.is_empty() {
            builder.set_host(s3s::host::MultiDomain::new(&cli.domains).context("bad --domain")?);
        }
        builder.build()
    };
    let tls = match (&cli.https_cert, &cli.https_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let bound = listener.local_addr()?;
    // Tests and scripts wait for this line.
    println!("dfs-gateway listening on {bound}");
    tracing::info!(%bound, https = tls.is_some(), "gateway up");
    let config = ServerConfig {
        max_in_flight: cli.max_in_flight,
        header_timeout: Duration::from_secs(cli.header_timeout.max(1)),
        tls,
    };
    let served = server::serve(listener, s3, volume.clone(), config, shutdown).await;
    sweeping.abort();
    served?;
    volume.handles.shut_down().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let identity = dfs_core::telemetry::traces::ProcessIdentity {
        service: "dfs-gateway",
        instance: cli.listen.to_string(),
    };
    let _traces = match dfs_core::telemetry::traces::init_daemon(identity, &cli.traces) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("dfs-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfs-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = {
        let _in_runtime = runtime.enter();
        dfs_core::shutdown::shutdown_signal()
    };
    match runtime.block_on(run(cli, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
