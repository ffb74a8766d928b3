//! `local:PATH`: the whole file system in this process, on one machine.
//!
//! The metadata service (on RocksDB at `PATH/meta`) and one chunk server
//! (shards in RocksDB at `PATH/chunks`) run here, and the client talks to
//! them through the very same gRPC services as to remote ones, only without
//! a socket: nothing listens on the network, and the code path is the one
//! the cluster uses. With one server the volume stores one copy of each
//! chunk (layout 1+0); RocksDB's checksums and ours still detect damage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dfs_core::error::DfsError;
use dfs_core::rpc::{boxed_transport, RpcTransport};
use dfs_meta::store::RocksStore;
use dfs_meta::{default_volume, Liveness, MaintenanceConfig, MetaService};

use crate::client::Connector;

/// The address the embedded chunk server registers under.
pub const LOCAL_SERVER_ADDRESS: &str = "local";

/// How long a mount waits for the volume's previous client to let go of
/// it: `umount` returns before that client has closed its stores, so
/// `umount && mount` would otherwise fail on the RocksDB lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `open` again while it fails on a RocksDB lock held by another
/// process, for up to [`LOCK_WAIT`].
async fn while_locked<T, E: std::fmt::Display>(
    mut open: impl FnMut() -> tokio::task::JoinHandle<Result<T, E>>,
) -> Result<Result<T, E>, tokio::task::JoinError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let result = open().await?;
        match &result {
            // RocksDB says "IO error: While lock file: PATH/LOCK: ...": the
            // phrase, not "LOCK" alone, which a user's path may contain.
            Err(e)
                if e.to_string().contains("While lock file")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            _ => return Ok(result),
        }
    }
}

pub struct Embedded {
    pub meta: RpcTransport,
    chunks: RpcTransport,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Embedded {
    pub async fn start(path: &Path) -> anyhow::Result<Self> {
        let root = PathBuf::from(path);
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create data directory {}", root.display()))?;
        let meta_path = root.join("meta");
        let store = while_locked(|| {
            let meta_path = meta_path.clone();
            tokio::task::spawn_blocking(move || RocksStore::open(&meta_path))
        })
        .await?
        .with_context(|| {
            format!(
                "cannot open the metadata store under {} (is another dfs-mount using it?)",
                root.display()
            )
        })?;
        let chunk_dir = root.join("chunks");
        let shard_store = while_locked(|| {
            let dir = chunk_dir.clone();
            tokio::task::spawn_blocking(move || {
                dfs_server::store::open_with_limits(&dir, None, None)
            })
        })
        .await?
        .with_context(|| format!("cannot open the shard store under {}", chunk_dir.display()))?;
        let shard_store = Arc::new(shard_store);
        let uuid = dfs_server::identity::load_or_create(&chunk_dir)
            .context("cannot read the server identity")?;
        // In process: no certificates, so no shard tokens to check.
        let chunks = boxed_transport(dfs_server::service::chunk_service_server(
            dfs_server::service::ChunkService::new(shard_store.clone()),
        ));
        // The metadata service reaches the in-process chunk server for
        // garbage collection and repairs.
        let to_chunks = chunks.clone();
        let connector: dfs_core::rpc::Connector =
            Arc::new(move |_address: &str| Ok(to_chunks.clone()));
        let service = MetaService::open(
            Arc::new(store),
            default_volume(1, 0),
            Liveness::default(),
            MaintenanceConfig::default(),
            connector,
        )
        .map_err(|e| anyhow::anyhow!("cannot open the volume: {e}"))?;
        service.start_background();
        // The access-key service beside the metadata service, as dfs-meta
        // serves them on one port.
        let access_keys = dfs_meta::access_keys::AccessKeyService::new(service.store());
        let meta = boxed_transport(
            tonic::service::Routes::new(service.into_server())
                .add_service(access_keys.into_server()),
        );
        let registration = dfs_server::Registration {
            meta_addr: LOCAL_SERVER_ADDRESS.into(),
            uuid,
            address: LOCAL_SERVER_ADDRESS.into(),
            zone: dfs_server::DEFAULT_ZONE.into(),
            rack: dfs_server::DEFAULT_RACK.into(),
        };
        // Register before the first mount request so placement has a server.
        let server_id =
            dfs_server::heartbeat::register_via(&registration, meta.clone(), &shard_store)
                .await
                .map_err(|e| anyhow::anyhow!("cannot register the embedded chunk server: {e}"))?;
        tracing::info!(server_id, path = %path.display(), "embedded chunk server registered");
        let heartbeat = tokio::spawn(dfs_server::heartbeat::heartbeat_via(
            registration,
            meta.clone(),
            shard_store,
            Duration::from_secs(1),
        ));
        Ok(Self {
            meta,
            chunks,
            heartbeat,
        })
    }

    /// Resolves the embedded server's address to its in-process service.
    pub fn connector(&self) -> Connector {
        let chunks = self.chunks.clone();
        Arc::new(move |address: &str| {
            if address == LOCAL_SERVER_ADDRESS {
                Ok(chunks.clone())
            } else {
                Err(DfsError::new(
                    libc::EIO,
                    format!("embedded volume refers to a remote server {address}"),
                ))
            }
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
