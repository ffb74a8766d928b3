//! dfs chunk server: keeps erasure-coded shards in RocksDB and serves them.
//!
//! Layers, one module each:
//!
//! - [`store`]: the shard store (RocksDB, on-disk format, checksums, usage).
//! - [`identity`]: the server's persistent UUID (`<data>/server.id`).
//! - [`service`]: the `Chunks` gRPC service over the store.
//! - [`heartbeat`]: registration with the metadata server and heartbeats.
//! - [`scrub`]: reads every shard once per period and reports bad ones.
//! - [`error`]: the store's error type and its one mapping to the wire.
//!
//! [`run`] wires them together; `main.rs` only parses the command line.

pub mod damage;
pub mod error;
pub mod heartbeat;
pub mod identity;
pub mod scrub;
pub mod service;
pub mod store;
pub mod volumes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dfs_core::tls::Security;
use tokio::net::TcpListener;
use tracing::Instrument;

pub use error::StoreError;
pub use heartbeat::{Registration, SharedServerId};
pub use store::ShardStore;

/// Zone label when none is given.
pub const DEFAULT_ZONE: &str = "zone-default";
/// Rack label when none is given.
pub const DEFAULT_RACK: &str = "rack-default";

/// Everything a chunk server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address clients are told to use; defaults to the bound listen address.
    pub advertise: Option<String>,
    /// Metadata server `HOST:PORT`; `None` runs standalone (no registration).
    pub meta: Option<String>,
    /// Data directory: holds `shards/` (RocksDB) and `server.id`.
    pub data: PathBuf,
    pub zone: String,
    pub rack: String,
    pub heartbeat_interval: Duration,
    /// Most shard bytes to hold (`None`: as much as the disk allows).
    pub capacity: Option<u64>,
    /// Bytes of the file system to leave free (`None`: [`store::default_reserve`]).
    pub reserve: Option<u64>,
    /// Time for one scrub pass over every shard; zero disables scrubbing.
    /// The scrubber only runs with a metadata server to report to.
    pub scrub_period: Duration,
    /// Difference allowed between dfs-meta's clock, which dates shard
    /// tokens, and this server's.
    pub token_clock_skew: Duration,
}

impl ServerConfig {
    /// A standalone configuration with default labels and heartbeat interval.
    pub fn new(listen: SocketAddr, data: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen,
            advertise: None,
            meta: None,
            data: data.into(),
            zone: DEFAULT_ZONE.to_string(),
            rack: DEFAULT_RACK.to_string(),
            heartbeat_interval: heartbeat::DEFAULT_HEARTBEAT_INTERVAL,
            capacity: None,
            reserve: None,
            scrub_period: scrub::DEFAULT_SCRUB_PERIOD,
            token_clock_skew: service::DEFAULT_TOKEN_CLOCK_SKEW,
        }
    }
}

/// A server whose store is open and whose socket is bound, not yet serving.
#[derive(Debug)]
pub struct BoundServer {
    config: ServerConfig,
    store: Arc<ShardStore>,
    uuid: String,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl BoundServer {
    /// Opens the store and identity, then binds the listen address. Fails
    /// with a message naming the path or address when either is unusable.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let data = config.data.clone();
        let (capacity, reserve) = (config.capacity, config.reserve);
        let (store, uuid) = tokio::task::spawn_blocking(move || {
            let store = store::open_with_limits(&data, capacity, reserve)?;
            let uuid = identity::load_or_create(&data)?;
            Ok::<_, StoreError>((store, uuid))
        })
        .await
        .context("store open task failed")?
        .with_context(|| format!("unusable data directory {}", config.data.display()))?;

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        Ok(BoundServer {
            config,
            store: Arc::new(store),
            uuid,
            listener,
            local_addr,
        })
    }

    /// The address actually bound (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This server's persistent UUID.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The shard store being served.
    pub fn store(&self) -> &Arc<ShardStore> {
        &self.store
    }

    /// The address given to the metadata server for clients to use.
    pub fn advertised_address(&self) -> String {
        self.config
            .advertise
            .clone()
            .unwrap_or_else(|| self.local_addr.to_string())
    }

    /// Serves until `shutdown` completes, then lets in-flight requests
    /// finish. `security` covers both the chunk service and the calls to
    /// the metadata server.
    pub async fn serve(
        self,
        security: Security,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut background = Vec::new();
        // Its background work, reported in every heartbeat (`dfs workers`).
        let workers = dfs_core::workers::Workers::new();
        // Learned at registration: no registration, no client with a
        // certificate gets a shard (EAGAIN until then).
        let server_id = SharedServerId::default();
        let mut service = service::ChunkService::with_gate(
            Arc::clone(&self.store),
            server_id.gate(),
            self.config.token_clock_skew,
        );
        match &self.config.meta {
            Some(meta_addr) => {
                let address = self.advertised_address();
                if self.config.advertise.is_none() && self.local_addr.ip().is_unspecified() {
                    tracing::warn!(
                        %address,
                        "advertising an unspecified address; pass --advertise HOST:PORT"
                    );
                }
                let reg = Registration {
                    meta_addr: meta_addr.clone(),
                    uuid: self.uuid.clone(),
                    address,
                    zone: self.config.zone.clone(),
                    rack: self.config.rack.clone(),
                };
                background.push(tokio::spawn(heartbeat::register_and_heartbeat_sharing(
                    reg,
                    Arc::clone(&self.store),
                    self.config.heartbeat_interval,
                    server_id.clone(),
                    security.clone(),
                    Arc::clone(&workers),
                )));
                match heartbeat::lazy_meta_transport(meta_addr, &security) {
                    Ok(meta) => {
                        let (reports, reporter) = damage::reporter(meta, server_id.clone());
                        service = service.reporting_damage(reports);
                        background.push(tokio::spawn(reporter));
                    }
                    Err(err) => {
                        tracing::warn!(meta = %meta_addr, err = %dfs_core::error::error_chain(&err), "bad metadata server address; damaged shards met by reads are left to the scrubber");
                    }
                }
                let scrub_worker = workers.add("scrub", "shards");
                if let Some(task) =
                    self.start_scrubber(meta_addr, server_id, &security, scrub_worker)
                {
                    background.push(task);
                }
            }
            None => {
                tracing::info!("no metadata server given; running standalone, without scrubbing");
            }
        }

        background.push(tokio::spawn(compact_volumes_periodically(Arc::clone(
            &self.store,
        ))));
        if dfs_core::telemetry::enabled() {
            background.push(tokio::spawn(publish_store_gauges(Arc::clone(&self.store))));
        }

        // Handshaken connections (TLS unless --plaintext), with
        // TCP_NODELAY; every request checked against the caller's role.
        let incoming = security.incoming(self.listener);
        let result = tonic::transport::Server::builder()
            .max_frame_size(dfs_core::rpc::MAX_FRAME_BYTES)
            .max_concurrent_streams(dfs_core::rpc::MAX_CONCURRENT_STREAMS)
            .http2_max_header_list_size(dfs_core::rpc::MAX_HEADER_LIST_BYTES)
            .layer(dfs_core::telemetry::RpcTelemetryLayer)
            .layer(dfs_core::tls::AuthorizeLayer)
            .add_service(service::chunk_service_server(service))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("chunk service failed");
        for task in background {
            task.abort();
            // Wait for the task to drop its handle on the store, so that the
            // store closes with the last one.
            let _ = task.await;
        }
        tracing::info!("dfs-server stopped");
        result
    }

    /// Starts the scrubber unless `--scrub-period 0` turned it off.
    fn start_scrubber(
        &self,
        meta_addr: &str,
        server_id: SharedServerId,
        security: &Security,
        worker: Arc<dfs_core::workers::Worker>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.config.scrub_period;
        if period.is_zero() {
            tracing::info!("scrubbing disabled (--scrub-period 0)");
            return None;
        }
        let meta = match heartbeat::lazy_meta_transport(meta_addr, security) {
            Ok(meta) => meta,
            Err(err) => {
                // The heartbeat task reports the same address as unusable
                // on every attempt; serving shards still works.
                tracing::warn!(
                    meta = %meta_addr,
                    err = %dfs_core::error::error_chain(&err),
                    "bad metadata server address; scrubber not started"
                );
                return None;
            }
        };
        tracing::info!(period = ?period, "scrubber started");
        let span = tracing::info_span!("scrub", server_uuid = %self.uuid);
        Some(tokio::spawn(
            scrub::run(Arc::clone(&self.store), period, meta, server_id, worker).instrument(span),
        ))
    }
}

/// Runs a chunk server until `shutdown` completes.
///
/// Prints `dfs-server listening on ADDR` to stdout once bound (ADDR with the
/// real port when listening on port 0); tests and scripts wait for it.
pub async fn run(
    config: ServerConfig,
    security: Security,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = BoundServer::bind(config).await?;
    announce(server.local_addr());
    tracing::info!(
        addr = %server.local_addr(),
        server_uuid = %server.uuid(),
        data = %server.config.data.display(),
        transport = security.describe(),
        "chunk server ready"
    );
    server.serve(security, shutdown).await
}

fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Stdout may be closed by a supervisor; that must not stop the server.
    let _ = writeln!(out, "dfs-server listening on {addr}");
    let _ = out.flush();
}

/// How often the volume files are looked at for space to reclaim.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(60);
/// A closed volume is compacted once this fraction of it is deleted shards.
const COMPACTION_DEAD_FRACTION: f64 = 0.5;

/// The store's figures as Prometheus gauges, every few seconds (issue 20).
async fn publish_store_gauges(store: Arc<ShardStore>) {
    use dfs_core::telemetry::catalog::{
        SERVER_DISK_FREE_BYTES, SERVER_DISK_TOTAL_BYTES, SERVER_SHARDS, SERVER_SHARD_BYTES,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let usage = store.usage();
        metrics::gauge!(SERVER_SHARDS).set(usage.shard_count as f64);
        metrics::gauge!(SERVER_SHARD_BYTES).set(usage.shard_bytes as f64);
        let store = Arc::clone(&store);
        // statvfs: off the async threads.
        if let Ok(Ok(capacity)) = tokio::task::spawn_blocking(move || store.capacity()).await {
            metrics::gauge!(SERVER_DISK_TOTAL_BYTES).set(capacity.total_bytes as f64);
            metrics::gauge!(SERVER_DISK_FREE_BYTES)
                .set(capacity.total_bytes.saturating_sub(capacity.used_bytes) as f64);
        }
    }
}

/// Reclaims the space of deleted shards in volume files, in the background.
async fn compact_volumes_periodically(store: Arc<ShardStore>) {
    let mut tick = tokio::time::interval(COMPACTION_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.compact_volumes(COMPACTION_DEAD_FRACTION))
            .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(freed)) => tracing::info!(freed, "volume compaction reclaimed space"),
            Ok(Err(e)) => tracing::warn!(error = %e, "volume compaction failed"),
            Err(e) => tracing::warn!(error = %e, "volume compaction task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use dfs_core::error::DfsError;
    use dfs_proto::chunks_client::ChunksClient;
    use dfs_proto::{Empty, PutShardsRequest, Shard, ShardKey};

    fn localhost0() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn put_get_usage_through_a_real_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = BoundServer::bind(ServerConfig::new(localhost0(), dir.path()))
            .await
            .expect("bind");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(Security::Plaintext, async {
            let _ = stopped.await;
        }));

        let mut client = ChunksClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
            .max_decoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(dfs_proto::MAX_MESSAGE_BYTES);
        let big = vec![0xabu8; 8 << 20]; // above tonic's 4 MiB default limit
        client
            .put_shards(PutShardsRequest {
                shards: vec![
                    Shard {
                        token: Default::default(),
                        fingerprint: vec![1; 32],
                        index: 0,
                        data: b"first".to_vec().into(),
                    },
                    Shard {
                        token: Default::default(),
                        fingerprint: vec![1; 32],
                        index: 8,
                        data: big.clone().into(),
                    },
                ],
            })
            .await
            .expect("put");

        let got = client
            .get_shard(ShardKey {
                token: Default::default(),
                fingerprint: vec![1; 32],
                index: 8,
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(got.data, big);

        let missing = client
            .get_shard(ShardKey {
                token: Default::default(),
                fingerprint: vec![2; 32],
                index: 0,
            })
            .await
            .expect_err("missing");
        let err = DfsError::from(missing);
        assert_eq!(err.errno, libc::ENOENT);
        assert!(!err.retryable);

        let usage = client.usage(Empty {}).await.expect("usage").into_inner();
        assert_eq!(usage.shard_count, 2);
        assert_eq!(usage.shard_bytes, 5 + (8 << 20));
        assert!(usage.capacity_bytes > 0);
        assert!(usage.used_bytes <= usage.capacity_bytes);

        drop(client);
        stop.send(()).expect("stop");
        serving.await.expect("join").expect("clean shutdown");

        // The store is closed on shutdown: the same directory opens again,
        // with the same identity and the same shards.
        let again = BoundServer::bind(ServerConfig::new(localhost0(), dir.path()))
            .await
            .expect("rebind");
        assert_eq!(again.store().usage().shard_count, 2);
        assert_eq!(
            again.uuid(),
            identity::load_or_create(dir.path()).expect("id")
        );
    }

    #[tokio::test]
    async fn bad_data_dir_fails_fast_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = run(
            ServerConfig::new(localhost0(), &file),
            Security::Plaintext,
            std::future::pending(),
        )
        .await
        .expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("cannot open shard store at"), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }

    #[tokio::test]
    async fn busy_listen_address_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let taken = std::net::TcpListener::bind(localhost0()).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = BoundServer::bind(ServerConfig::new(addr, dir.path()))
            .await
            .expect_err("address in use");
        assert!(format!("{err:#}").contains(&format!("cannot listen on {addr}")));
    }
}
