//! The client's view of the cluster: one metadata connection, one
//! connection per chunk server, and the placement ring over the servers
//! that are up.
//!
//! Connections are made by a [`Connector`], so the same code talks to real
//! processes over TCP or, in the embedded `local:` mode, to services living
//! in this process.

pub mod chunks;
mod driven;
mod h2_transport;
pub mod meta;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_core::dictionary::Dictionary;
use dfs_core::error::DfsError;
use dfs_core::placement::{is_full, Candidate, Ring};
use dfs_core::rpc::RpcTransport;
use dfs_proto::chunks_client::ChunksClient;
use dfs_proto::{DictionaryRequest, Empty, ServerState, VolumeConfig};
use parking_lot::RwLock;

pub use driven::Driving;
pub use meta::MetaRpc;

pub use dfs_core::rpc::Connector;

/// Longest a single RPC may take before it fails as unavailable.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP connector: one HTTP/2 connection per server, made on first use and
/// again after one breaks (see [`h2_transport`] for why it drives `h2`
/// itself). Failures map to the statuses the retry logic expects:
/// connection errors are `Unavailable`, a server that does not answer
/// within `RPC_TIMEOUT` is `DeadlineExceeded`.
pub fn tcp_connector(
    security: dfs_core::tls::Security,
    peer: dfs_core::tls::Role,
    driving: Driving,
) -> Connector {
    Arc::new(move |address: &str| h2_transport::h2_transport(address, &security, peer, driving))
}

/// A status as a transport error: tonic hands a `Status` it finds there to
/// the caller as it is.
fn transport_status(status: tonic::Status) -> dfs_core::rpc::BoxError {
    Box::new(status)
}

#[derive(Clone)]
pub struct ServerConn {
    pub id: u32,
    pub address: String,
    pub client: ChunksClient<RpcTransport>,
}

struct Topology {
    servers: HashMap<u32, ServerConn>,
    ring: Arc<Ring>,
    refreshed: Instant,
    /// Servers that are up but left out of placement because they are full.
    full: usize,
}

pub struct Cluster {
    pub meta: MetaRpc,
    pub volume: VolumeConfig,
    connector: Connector,
    topology: RwLock<Topology>,
    shard_reads: chunks::ShardReadQueues,
    /// dfs-meta has handed this client shard tokens: chunk servers want
    /// them (a client with a certificate).
    tokens_in_use: std::sync::atomic::AtomicBool,
    /// Compression dictionaries fetched so far (they never change).
    dictionaries: parking_lot::Mutex<HashMap<u64, Arc<Dictionary>>>,
}

/// How long a fetched server list is trusted before it is fetched again.
const TOPOLOGY_TTL: Duration = Duration::from_secs(3);

impl Cluster {
    /// Whether reads and uploads need shard tokens here.
    pub fn tokens_in_use(&self) -> bool {
        self.tokens_in_use
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Called with every token dfs-meta hands out.
    pub fn saw_tokens(&self) {
        self.tokens_in_use
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn connect(meta: MetaRpc, connector: Connector) -> Result<Arc<Self>, DfsError> {
        let volume = meta.get_volume_config(Empty {}).await?;
        let cluster = Arc::new(Self {
            meta,
            volume,
            connector,
            topology: RwLock::new(Topology {
                servers: HashMap::new(),
                ring: Arc::new(Ring::new(Vec::new())),
                full: 0,
                refreshed: Instant::now() - TOPOLOGY_TTL * 2,
            }),
            shard_reads: chunks::ShardReadQueues::default(),
            tokens_in_use: std::sync::atomic::AtomicBool::new(false),
            dictionaries: parking_lot::Mutex::new(HashMap::new()),
        });
        cluster.refresh_topology().await?;
        Ok(cluster)
    }

    /// The volume's compression dictionary `id`, which chunks dfs-meta
    /// recompressed for the warm tier may name: fetched once, then kept.
    pub async fn dictionary(&self, id: u64) -> Result<Arc<Dictionary>, DfsError> {
        if let Some(d) = self.dictionaries.lock().get(&id) {
            return Ok(d.clone());
        }
        let rec = self
            .meta
            .get_dictionary(DictionaryRequest { id })
            .await
            .map_err(|e| {
                // A chunk names a dictionary that cannot be had: the
                // chunk is unreadable (EIO), whatever the reason.
                DfsError::new(
                    libc::EIO,
                    format!("compression dictionary {id}: {}", e.message),
                )
            })?;
        if rec.id != id || rec.data.is_empty() {
            return Err(DfsError::new(
                libc::EIO,
                format!("dfs-meta answered dictionary {} for {id}", rec.id),
            ));
        }
        let d = Arc::new(Dictionary::new(id, rec.data));
        self.dictionaries.lock().insert(id, d.clone());
        Ok(d)
    }

    /// Fetches the server list and rebuilds the placement ring over the
    /// servers that are up.
    pub async fn refresh_topology(&self) -> Result<(), DfsError> {
        let list = self.meta.list_servers(Empty {}).await?;
        let mut servers = HashMap::new();
        let mut candidates = Vec::new();
        let mut full = 0;
        {
            let old = self.topology.read();
            for status in &list.servers {
                let Some(rec) = &status.record else { continue };
                let conn = match old.servers.get(&rec.id) {
                    Some(c) if c.address == rec.address => c.clone(),
                    _ => ServerConn {
                        id: rec.id,
                        address: rec.address.clone(),
                        client: ChunksClient::new((self.connector)(&rec.address)?)
                            .max_decoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
                            .max_encoding_message_size(dfs_proto::MAX_MESSAGE_BYTES),
                    },
                };
                servers.insert(rec.id, conn);
                if status.state() == ServerState::Up && is_full(rec.capacity_bytes, rec.used_bytes)
                {
                    full += 1;
                } else if status.state() == ServerState::Up {
                    candidates.push(Candidate {
                        id: rec.id,
                        zone: rec.zone.clone(),
                        rack: rec.rack.clone(),
                        capacity_bytes: rec.capacity_bytes.max(1),
                    });
                }
            }
        }
        let mut topo = self.topology.write();
        topo.servers = servers;
        topo.ring = Arc::new(Ring::new(candidates));
        topo.full = full;
        topo.refreshed = Instant::now();
        Ok(())
    }

    async fn refresh_if_stale(&self) {
        let stale = self.topology.read().refreshed.elapsed() > TOPOLOGY_TTL;
        if stale {
            if let Err(e) = self.refresh_topology().await {
                tracing::warn!(error = %e, "cannot refresh the server list");
            }
        }
    }

    /// How many servers are up but full (see [`is_full`]).
    pub fn full_servers(&self) -> usize {
        self.topology.read().full
    }

    pub async fn ring(&self) -> Arc<Ring> {
        self.refresh_if_stale().await;
        self.topology.read().ring.clone()
    }

    pub async fn server(&self, id: u32) -> Result<ServerConn, DfsError> {
        if let Some(conn) = self.topology.read().servers.get(&id) {
            return Ok(conn.clone());
        }
        // A server registered since the last refresh.
        self.refresh_topology().await?;
        self.topology
            .read()
            .servers
            .get(&id)
            .cloned()
            .ok_or_else(|| DfsError::new(libc::EIO, format!("chunk server {id} is not registered")))
    }
}
