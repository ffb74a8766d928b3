//! dfs metadata server: the namespace tree, inodes, chunk maps, the dedup
//! index and the chunk-server registry, kept in a transactional key-value
//! store behind the [`store::MetaStore`] trait.

pub mod access;
pub mod access_keys;
pub mod acl;
pub mod caps;
pub mod chunkmap;
pub mod cold;
pub mod confine;
pub mod dictionary;
pub mod dir_lease;
pub mod error;
pub mod inodes;
pub mod keys;
pub mod locks;
pub mod maintenance;
pub mod namespace;
pub mod purge;
pub mod registry;
pub mod service;
pub mod store;
pub mod tiering;
pub mod xattrs;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use dfs_proto::VolumeConfig;

pub use maintenance::{tcp_connector, MaintenanceConfig};
pub use registry::Liveness;
pub use service::MetaService;

/// Settings of a new volume: Reed-Solomon `data_shards + parity_shards`,
/// with chunks stored in at most `inline_max_bytes` kept inline in the
/// metadata store and those smaller than `replicate_below_bytes` as
/// replicas.
pub fn default_volume(data_shards: u32, parity_shards: u32) -> VolumeConfig {
    VolumeConfig {
        data_shards,
        parity_shards,
        replicate_below_bytes: 4096,
        chunk_min: 32 * 1024,
        chunk_avg: 64 * 1024,
        chunk_max: 128 * 1024,
        inline_max_bytes: dfs_core::inline::DEFAULT_INLINE_MAX,
        stage_max_bytes: dfs_core::inline::MAX_INLINE_BYTES as u32,
    }
}

/// Parses an erasure-coding scheme such as `6+3`.
pub fn parse_ec(s: &str) -> anyhow::Result<(u32, u32)> {
    let (k, m) = s.split_once('+').context("expected K+M, such as 6+3")?;
    let k: u32 = k.trim().parse().context("K must be a number")?;
    let m: u32 = m.trim().parse().context("M must be a number")?;
    anyhow::ensure!(
        (1..=64).contains(&k) && m <= 64 && k + m <= 255,
        "K+M out of range: 1<=K<=64, M<=64, K+M<=255"
    );
    Ok((k, m))
}

/// Serves `service` on `listen` until `shutdown` resolves; prints the bound
/// address on stdout (tests and scripts wait for that line).
pub async fn serve(
    listen: SocketAddr,
    service: MetaService,
    security: dfs_core::tls::Security,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    service.start_background();
    if dfs_core::telemetry::enabled() {
        tokio::spawn(service.clone().publish_gauges());
    }
    println!("dfs-meta listening on {bound}");
    tracing::info!(%bound, "metadata server up");
    // Connections come handshaken (TLS unless --plaintext) and with
    // TCP_NODELAY; every request is checked against the caller's role.
    let incoming = security.incoming(listener);
    let access_keys = access_keys::AccessKeyService::new(service.store());
    tonic::transport::Server::builder()
        .max_frame_size(dfs_core::rpc::MAX_FRAME_BYTES)
        .max_concurrent_streams(dfs_core::rpc::MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(dfs_core::rpc::MAX_HEADER_LIST_BYTES)
        .layer(dfs_core::telemetry::RpcTelemetryLayer)
        .layer(dfs_core::tls::AuthorizeLayer)
        .add_service(service.into_server())
        .add_service(access_keys.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("metadata server failed")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ec_parsing() {
        assert_eq!(super::parse_ec("6+3").ok(), Some((6, 3)));
        assert!(super::parse_ec("6").is_err());
        assert!(super::parse_ec("0+3").is_err());
    }
}
