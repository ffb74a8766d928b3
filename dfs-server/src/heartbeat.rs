//! Registration with the metadata server, then periodic heartbeats.
//!
//! The task never gives up: the metadata server may start after us, restart,
//! or forget us. Registration is retried with capped exponential backoff;
//! a failed heartbeat drops the connection and registers again (the metadata
//! server recognises us by our UUID, so re-registering keeps our server id).
//! The id is published in a [`SharedServerId`] for the scrubber's reports.

use dfs_core::error::error_chain;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfs_core::rpc::{boxed_transport, RpcTransport};
use dfs_core::shard_token::Gate;
use dfs_core::tls::{Role, Security};
use dfs_core::workers::Workers;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{HeartbeatRequest, RegisterServerRequest, WorkerStatus};
use tonic::transport::Endpoint;

use crate::error::StoreError;
use crate::store::{Capacity, ShardStore, Usage};

/// Default time between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Random, fixed for this process: tells the metadata server whether a
/// registration is a restart (shards to reconcile) or a reconnection.
pub fn boot_id() -> u64 {
    static BOOT_ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOOT_ID.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0)
}

/// Who this server is, as told to the metadata server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `HOST:PORT` of the metadata server (an `http://` prefix is
    /// accepted), or several, comma-separated: metadata servers sharing
    /// one FoundationDB database, tried in turn when one is unreachable.
    pub meta_addr: String,
    /// The server's persistent UUID (`<data>/server.id`).
    pub uuid: String,
    /// `HOST:PORT` clients use to reach this server's chunk service.
    pub address: String,
    pub zone: String,
    pub rack: String,
}

/// The id the metadata server gave this server, shared between the heartbeat
/// task, which sets it at every registration, and the scrubber, which names
/// this server with it in its reports. Clones share one value.
/// It also carries the key the server checks shard tokens with, which
/// every registration hands out again.
#[derive(Clone, Default)]
pub struct SharedServerId {
    id: Arc<AtomicU32>,
    gate: Gate,
}

/// What a registration returned.
pub struct Registered {
    pub id: u32,
    /// Empty from a metadata server that signs no shard tokens.
    pub token_key: Vec<u8>,
}

impl SharedServerId {
    /// The id, or `None` before the first registration. The metadata server
    /// numbers servers from 1, so 0 stands for "none yet".
    pub fn get(&self) -> Option<u32> {
        match self.id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// Publishes the id a registration returned.
    pub fn set(&self, id: u32) {
        self.id.store(id, Ordering::Release);
    }

    /// The shard token key, shared with the chunk service that checks it.
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }
}

#[derive(Debug, thiserror::Error)]
enum HeartbeatError {
    #[error("cannot connect to metadata server {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{rpc} failed: {status}")]
    Rpc {
        rpc: &'static str,
        status: tonic::Status,
    },
    #[error("cannot read local usage: {0}")]
    Store(#[from] StoreError),
    #[error("no metadata server address given")]
    NoMetaServer,
}

/// The URI tonic dials for `addr`: TLS is the connector's business (see
/// `dfs_core::tls`), so an `https://` prefix means the same as none.
fn meta_url(addr: &str) -> String {
    let bare = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    format!("http://{bare}")
}

async fn local_stats(store: &Arc<ShardStore>) -> Result<(Usage, Capacity), HeartbeatError> {
    let store = Arc::clone(store);
    let capacity = tokio::task::spawn_blocking(move || {
        Ok::<_, StoreError>((store.usage(), store.capacity()?))
    })
    .await
    .map_err(|e| StoreError::io("usage task failed", std::io::Error::other(e)))??;
    Ok(capacity)
}

type MetaRpc = MetaClient<RpcTransport>;

/// A transport to the metadata server that connects on first use and again
/// after a failure, for callers that only speak now and then (the
/// scrubber's reports): they need no reconnect loop of their own. Fails
/// only on an address that is not a valid URI.
pub fn lazy_meta_transport(
    meta_addr: &str,
    security: &Security,
) -> Result<RpcTransport, tonic::transport::Error> {
    let first = meta_addresses(meta_addr).next().unwrap_or_default();
    let channel = Endpoint::from_shared(meta_url(first))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .connect_with_connector_lazy(security.connector(Role::Meta));
    Ok(boxed_transport(channel))
}

/// The metadata servers of a `--meta` list, in order.
fn meta_addresses(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|a| !a.is_empty())
}

/// Registers through the first metadata server of the list, starting at
/// `first` (the one after the last that failed), that answers.
async fn connect_and_register_any(
    reg: &Registration,
    store: &Arc<ShardStore>,
    first: usize,
    security: &Security,
) -> Result<(MetaRpc, Registered, usize), HeartbeatError> {
    let addresses: Vec<&str> = meta_addresses(&reg.meta_addr).collect();
    let count = addresses.len().max(1);
    let mut last_error = None;
    for i in 0..count {
        let index = (first + i) % count;
        let addr = addresses.get(index).copied().unwrap_or(&reg.meta_addr);
        match connect_and_register(addr, reg, store, security).await {
            Ok((client, id)) => return Ok((client, id, index)),
            Err(e) => {
                tracing::debug!(meta = addr, error = %error_chain(&e), "metadata server did not take the registration");
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or(HeartbeatError::NoMetaServer))
}

async fn connect_and_register(
    addr: &str,
    reg: &Registration,
    store: &Arc<ShardStore>,
    security: &Security,
) -> Result<(MetaRpc, Registered), HeartbeatError> {
    let url = meta_url(addr);
    let connect_err = |source| HeartbeatError::Connect {
        addr: addr.to_string(),
        source,
    };
    let channel = Endpoint::from_shared(url)
        .map_err(connect_err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(security.connector(Role::Meta))
        .await
        .map_err(connect_err)?;
    register(
        MetaClient::new(boxed_transport(channel)),
        reg.clone(),
        Arc::clone(store),
    )
    .await
}

// Owned arguments: borrowed ones trip rustc's higher-ranked `Send` check
// on the spawned heartbeat task (rust-lang/rust#102211).
async fn register(
    mut client: MetaRpc,
    reg: Registration,
    store: Arc<ShardStore>,
) -> Result<(MetaRpc, Registered), HeartbeatError> {
    let (_, capacity) = local_stats(&store).await?;
    let reply = client
        .register_server(RegisterServerRequest {
            uuid: reg.uuid.clone(),
            address: reg.address.clone(),
            zone: reg.zone.clone(),
            rack: reg.rack.clone(),
            capacity_bytes: capacity.total_bytes,
            used_bytes: capacity.used_bytes,
            boot_id: boot_id(),
        })
        .await
        .map_err(|status| HeartbeatError::Rpc {
            rpc: "RegisterServer",
            status,
        })?;
    let reply = reply.into_inner();
    Ok((
        client,
        Registered {
            id: reply.server_id,
            token_key: reply.token_key,
        },
    ))
}

async fn send_heartbeat(
    client: &mut MetaRpc,
    server_id: u32,
    store: &Arc<ShardStore>,
    workers: &[WorkerStatus],
) -> Result<(), HeartbeatError> {
    let (usage, capacity) = local_stats(store).await?;
    client
        .heartbeat(HeartbeatRequest {
            server_id,
            capacity_bytes: capacity.total_bytes,
            used_bytes: capacity.used_bytes,
            shard_count: usage.shard_count,
            shard_bytes: usage.shard_bytes,
            workers: workers.to_vec(),
        })
        .await
        .map_err(|status| HeartbeatError::Rpc {
            rpc: "Heartbeat",
            status,
        })?;
    Ok(())
}

/// Registers with the metadata server and heartbeats every `interval`,
/// forever. Run it as a task and abort it on shutdown.
pub async fn register_and_heartbeat(
    reg: Registration,
    store: Arc<ShardStore>,
    interval: Duration,
    security: Security,
) {
    register_and_heartbeat_sharing(
        reg,
        store,
        interval,
        SharedServerId::default(),
        security,
        Workers::new(),
    )
    .await
}

/// [`register_and_heartbeat`], publishing the server id in `server_id` at
/// every registration.
pub async fn register_and_heartbeat_sharing(
    reg: Registration,
    store: Arc<ShardStore>,
    interval: Duration,
    server_id: SharedServerId,
    security: Security,
    workers: Arc<Workers>,
) {
    heartbeat_loop(
        reg,
        store,
        interval,
        MetaLink::Tcp { next: 0, security },
        server_id,
        workers,
    )
    .await
}

/// Registers once through an already-made transport (an in-process
/// metadata service, in the embedded mode); returns the server id.
pub async fn register_via(
    reg: &Registration,
    transport: RpcTransport,
    store: &Arc<ShardStore>,
) -> Result<u32, String> {
    register(MetaClient::new(transport), reg.clone(), Arc::clone(store))
        .await
        .map(|(_, registered)| registered.id)
        .map_err(|e| error_chain(&e))
}

/// [`register_and_heartbeat`] through an already-made transport.
pub async fn heartbeat_via(
    reg: Registration,
    transport: RpcTransport,
    store: Arc<ShardStore>,
    interval: Duration,
) {
    heartbeat_loop(
        reg,
        store,
        interval,
        MetaLink::Transport(transport),
        SharedServerId::default(),
        Workers::new(),
    )
    .await
}

/// How the heartbeat task reaches the metadata server.
enum MetaLink {
    /// Dial `Registration::meta_addr` over TCP (each in turn, for a list),
    /// starting with the one at this index.
    Tcp { next: usize, security: Security },
    /// Use this transport (in-process service).
    Transport(RpcTransport),
}

impl MetaLink {
    async fn connect_and_register(
        &mut self,
        reg: Registration,
        store: Arc<ShardStore>,
    ) -> Result<(MetaRpc, Registered), HeartbeatError> {
        match self {
            MetaLink::Tcp { next, security } => {
                let (client, id, index) =
                    connect_and_register_any(&reg, &store, *next, security).await?;
                *next = index;
                Ok((client, id))
            }
            MetaLink::Transport(t) => register(MetaClient::new(t.clone()), reg, store).await,
        }
    }

    /// The metadata server just failed: the next registration starts with
    /// the one after it.
    fn skip_current(&mut self) {
        if let MetaLink::Tcp { next, .. } = self {
            *next += 1;
        }
    }
}

async fn heartbeat_loop(
    reg: Registration,
    store: Arc<ShardStore>,
    interval: Duration,
    mut link: MetaLink,
    shared_id: SharedServerId,
    workers: Arc<Workers>,
) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let (mut client, registered) = match link
            .connect_and_register(reg.clone(), Arc::clone(&store))
            .await
        {
            Ok(registered) => registered,
            Err(err) => {
                let err = error_chain(&err);
                tracing::warn!(meta = %reg.meta_addr, %err, retry_in = ?backoff, "registration failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = INITIAL_BACKOFF;
        let server_id = registered.id;
        shared_id.set(server_id);
        if !registered.token_key.is_empty() {
            shared_id.gate().set(&registered.token_key);
        }
        tracing::info!(
            meta = %reg.meta_addr,
            server_id,
            server_uuid = %reg.uuid,
            address = %reg.address,
            zone = %reg.zone,
            rack = %reg.rack,
            "registered with metadata server"
        );

        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let statuses = workers.statuses(&format!("dfs-server {server_id} {}", reg.address));
            if let Err(err) = send_heartbeat(&mut client, server_id, &store, &statuses).await {
                let err = error_chain(&err);
                tracing::warn!(meta = %reg.meta_addr, server_id, %err, "heartbeat failed; registering again");
                link.skip_current();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use dfs_proto::meta_server::{Meta, MetaServer};
    use dfs_proto::*;
    use tonic::{Request, Response, Status};

    #[derive(Default)]
    struct Seen {
        registrations: Vec<RegisterServerRequest>,
        heartbeats: Vec<HeartbeatRequest>,
        bad_shard_reports: Vec<ReportBadShardsRequest>,
    }

    /// A metadata server that only knows registrations, heartbeats and
    /// bad-shard reports.
    #[derive(Clone, Default)]
    struct FakeMeta(Arc<Mutex<Seen>>);

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("fake"))
    }

    #[tonic::async_trait]
    impl Meta for FakeMeta {
        async fn open_lock_session(
            &self,
            _: Request<LockSessionRequest>,
        ) -> Result<Response<LockSessionReply>, Status> {
            unimplemented()
        }
        async fn end_lock_session(
            &self,
            _: Request<LockSessionRequest>,
        ) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn set_lock(
            &self,
            _: Request<SetLockRequest>,
        ) -> Result<Response<SetLockReply>, Status> {
            unimplemented()
        }
        async fn get_lock(
            &self,
            _: Request<SetLockRequest>,
        ) -> Result<Response<GetLockReply>, Status> {
            unimplemented()
        }
        async fn lookup(&self, _: Request<LookupRequest>) -> Result<Response<InodeRecord>, Status> {
            unimplemented()
        }
        async fn get_attr(&self, _: Request<InoRequest>) -> Result<Response<InodeRecord>, Status> {
            unimplemented()
        }
        async fn set_attr(
            &self,
            _: Request<SetAttrRequest>,
        ) -> Result<Response<InodeRecord>, Status> {
            unimplemented()
        }
        async fn create(&self, _: Request<CreateRequest>) -> Result<Response<InodeRecord>, Status> {
            unimplemented()
        }
        async fn unlink(&self, _: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn rmdir(&self, _: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn forget_unlinked(&self, _: Request<InoRequest>) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn keep_unlinked(
            &self,
            _: Request<KeepUnlinkedRequest>,
        ) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn link(&self, _: Request<LinkRequest>) -> Result<Response<InodeRecord>, Status> {
            unimplemented()
        }
        async fn set_xattr(&self, _: Request<XattrRequest>) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn get_xattr(
            &self,
            _: Request<XattrRequest>,
        ) -> Result<Response<XattrReply>, Status> {
            unimplemented()
        }
        async fn list_xattr(
            &self,
            _: Request<InoRequest>,
        ) -> Result<Response<XattrListReply>, Status> {
            unimplemented()
        }
        async fn remove_xattr(&self, _: Request<XattrRequest>) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn gc(&self, _: Request<GcRequest>) -> Result<Response<GcReport>, Status> {
            unimplemented()
        }
        async fn fsck(&self, _: Request<FsckRequest>) -> Result<Response<FsckReport>, Status> {
            unimplemented()
        }
        async fn report_bad_shards(
            &self,
            request: Request<ReportBadShardsRequest>,
        ) -> Result<Response<Empty>, Status> {
            let mut seen = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            seen.bad_shard_reports.push(request.into_inner());
            Ok(Response::new(Empty {}))
        }
        async fn read_dir(
            &self,
            _: Request<ReadDirRequest>,
        ) -> Result<Response<ReadDirReply>, Status> {
            unimplemented()
        }
        async fn stat_fs(&self, _: Request<Empty>) -> Result<Response<StatFsReply>, Status> {
            unimplemented()
        }
        async fn sync(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
            unimplemented()
        }
        async fn get_volume_config(
            &self,
            _: Request<Empty>,
        ) -> Result<Response<VolumeConfig>, Status> {
            unimplemented()
        }
        async fn lookup_chunks(
            &self,
            _: Request<LookupChunksRequest>,
        ) -> Result<Response<LookupChunksReply>, Status> {
            unimplemented()
        }
        async fn commit_chunks(
            &self,
            _: Request<CommitChunksRequest>,
        ) -> Result<Response<InodeRecord>, Status> {
            unimplemented()
        }
        async fn reserve_inodes(
            &self,
            _: Request<Empty>,
        ) -> Result<Response<ReserveInodesReply>, Status> {
            unimplemented()
        }
        async fn get_chunk_map(
            &self,
            _: Request<ChunkMapRequest>,
        ) -> Result<Response<ChunkMapReply>, Status> {
            unimplemented()
        }
        async fn read_cold_chunk(
            &self,
            _: Request<ColdChunkRequest>,
        ) -> Result<Response<ColdChunkReply>, Status> {
            unimplemented()
        }
        async fn get_dictionary(
            &self,
            _: Request<DictionaryRequest>,
        ) -> Result<Response<DictionaryRecord>, Status> {
            unimplemented()
        }
        async fn register_server(
            &self,
            request: Request<RegisterServerRequest>,
        ) -> Result<Response<RegisterServerReply>, Status> {
            let mut seen = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            seen.registrations.push(request.into_inner());
            Ok(Response::new(RegisterServerReply {
                token_key: Default::default(),
                server_id: 7,
            }))
        }
        async fn heartbeat(
            &self,
            request: Request<HeartbeatRequest>,
        ) -> Result<Response<Empty>, Status> {
            let mut seen = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
            seen.heartbeats.push(request.into_inner());
            // The second heartbeat "forgets" us, forcing a re-registration.
            if seen.heartbeats.len() == 2 {
                return Err(Status::not_found("unknown server"));
            }
            Ok(Response::new(Empty {}))
        }
        async fn workers(&self, _: Request<Empty>) -> Result<Response<WorkersReply>, Status> {
            unimplemented()
        }
        async fn list_servers(
            &self,
            _: Request<Empty>,
        ) -> Result<Response<ListServersReply>, Status> {
            unimplemented()
        }
        async fn stats(&self, _: Request<Empty>) -> Result<Response<StatsReply>, Status> {
            unimplemented()
        }
        async fn tier_status(
            &self,
            _: Request<Empty>,
        ) -> Result<Response<TierStatusReply>, Status> {
            unimplemented()
        }
    }

    #[tokio::test]
    async fn scrubber_reports_under_the_registered_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ShardStore::open(dir.path()).expect("open"));
        let fp = dfs_core::fingerprint::Fingerprint([4; 32]);
        store
            .put_batch(&[(fp, 0, b"fine"), (fp, 1, b"soon bad")])
            .expect("put");
        let mut raw = store.raw_get_value(&fp, 1).expect("raw").expect("present");
        raw[crate::store::VALUE_HEADER_LEN] ^= 0x80;
        store.raw_put_value(&fp, 1, &raw).expect("raw put");

        let meta = FakeMeta::default();
        let seen = Arc::clone(&meta.0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetaServer::new(meta))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let reg = Registration {
            meta_addr: addr.to_string(),
            uuid: "0e0c3c1e-0000-4000-8000-000000000002".into(),
            address: "127.0.0.1:9".into(),
            zone: "z1".into(),
            rack: "r1".into(),
        };
        let server_id = SharedServerId::default();
        assert_eq!(server_id.get(), None);
        // The scrubber may start before the registration; its first report
        // then waits for the id.
        let scrubber = tokio::spawn(crate::scrub::run(
            Arc::clone(&store),
            Duration::from_millis(100),
            lazy_meta_transport(&addr.to_string(), &Security::Plaintext).expect("transport"),
            server_id.clone(),
            Arc::new(dfs_core::workers::Worker::new("scrub", "shards")),
        ));
        let heartbeat = tokio::spawn(register_and_heartbeat_sharing(
            reg,
            Arc::clone(&store),
            Duration::from_millis(50),
            server_id.clone(),
            Security::Plaintext,
            Workers::new(),
        ));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            {
                let seen = seen.lock().expect("lock");
                if let Some(report) = seen.bad_shard_reports.first() {
                    assert_eq!(report.server_id, 7);
                    assert_eq!(
                        report.shards,
                        vec![ShardKey {
                            token: Default::default(),
                            fingerprint: vec![4; 32],
                            index: 1
                        }]
                    );
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no bad-shard report seen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server_id.get(), Some(7));
        scrubber.abort();
        heartbeat.abort();
        server.abort();
    }

    #[test]
    fn meta_url_adds_scheme_once() {
        assert_eq!(meta_url("10.0.0.1:7000"), "http://10.0.0.1:7000");
        assert_eq!(meta_url("http://h:1"), "http://h:1");
    }

    #[tokio::test]
    async fn registers_late_heartbeats_and_reregisters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ShardStore::open(dir.path()).expect("open"));
        store
            .put_batch(&[(dfs_core::fingerprint::Fingerprint([1; 32]), 0, b"abcd")])
            .expect("put");

        // Reserve a port, then start the heartbeat task before the meta server exists.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let reg = Registration {
            meta_addr: addr.to_string(),
            uuid: "0e0c3c1e-0000-4000-8000-000000000001".into(),
            address: "127.0.0.1:9".into(),
            zone: "z1".into(),
            rack: "r1".into(),
        };
        let task = tokio::spawn(register_and_heartbeat(
            reg.clone(),
            Arc::clone(&store),
            Duration::from_millis(50),
            Security::Plaintext,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;

        let meta = FakeMeta::default();
        let seen = Arc::clone(&meta.0);
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetaServer::new(meta))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            {
                let seen = seen.lock().expect("lock");
                if seen.registrations.len() >= 2 && seen.heartbeats.len() >= 3 {
                    let r = &seen.registrations[0];
                    assert_eq!(r.uuid, reg.uuid);
                    assert_eq!(r.address, "127.0.0.1:9");
                    assert_eq!((r.zone.as_str(), r.rack.as_str()), ("z1", "r1"));
                    assert!(r.capacity_bytes > 0);
                    let hb = &seen.heartbeats[0];
                    assert_eq!(hb.server_id, 7);
                    assert_eq!((hb.shard_count, hb.shard_bytes), (1, 4));
                    assert!(hb.capacity_bytes > 0);
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no re-registration seen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        server.abort();
    }
}
