//! The `Chunks` gRPC service: puts and gets shards, reports usage, lists
//! and checks what it holds (for the orphan sweep and fsck).
//!
//! RocksDB calls block, so each runs on tokio's blocking pool. Every failure
//! leaves as a [`DfsError`] (errno + retryable flag) inside the status.

use std::collections::HashMap;
use std::sync::Arc;

use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::shard_token::{Gate, ServerKey, ShardOp, TokenError};
use dfs_core::time::now_ns;
use dfs_core::tls::{PeerInfo, Role};
use dfs_proto::chunks_server::{Chunks, ChunksServer};
use dfs_proto::{
    CheckShardsReply, CheckShardsRequest, DeleteShardsReply, DeleteShardsRequest, Empty,
    GetShardReply, GetShardsReply, GetShardsRequest, ListShardsReply, ListShardsRequest,
    PutShardsRequest, ServerUsage, Shard, ShardHealth, ShardInfo, ShardKey, ShardRead,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::damage::DamageReports;
use crate::error::StoreError;
use crate::store::{ShardCheck, ShardStore, Uploader};
use dfs_core::shard_key::{split_key, KEY_LEN};
use dfs_core::telemetry::catalog::{SERVER_SHARDS_PUT, SERVER_SHARDS_READ, SERVER_SHARD_BYTES_PUT};
use dfs_core::telemetry::series::Series;

/// Most shards one `ListShards` reply lists; a limit of 0 or more means this.
/// Keeps a reply well under the message limit and one request from holding
/// a blocking thread for long.
pub const MAX_LIST_SHARDS: u32 = 10_000;
/// Most keys one `CheckShards` request may name.
pub const MAX_CHECK_SHARDS: usize = 10_000;
/// Most keys one `DeleteShards` request may name (garbage collection sends
/// at most 1,000).
pub const MAX_DELETE_SHARDS: usize = 10_000;

/// The chunk service over one shard store.
#[derive(Debug, Clone)]
pub struct ChunkService {
    store: Arc<ShardStore>,
    /// The key shard tokens are checked with (set at registration).
    gate: Gate,
    /// Difference allowed between dfs-meta's clock (which set a token's
    /// expiry) and this server's.
    skew_ns: i64,
    /// Corrupt shards met by reads go to dfs-meta from here.
    damage: DamageReports,
}

pub const DEFAULT_TOKEN_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(30);

impl ChunkService {
    /// A service that checks no tokens: for in-process callers, which are
    /// never clients with certificates.
    pub fn new(store: Arc<ShardStore>) -> Self {
        Self::with_gate(store, Gate::default(), DEFAULT_TOKEN_CLOCK_SKEW)
    }

    pub fn with_gate(store: Arc<ShardStore>, gate: Gate, skew: std::time::Duration) -> Self {
        let skew_ns = i64::try_from(skew.as_nanos()).unwrap_or(i64::MAX);
        ChunkService {
            store,
            gate,
            skew_ns,
            damage: DamageReports::default(),
        }
    }

    /// Reports corrupt shards its reads meet through `damage`.
    pub fn reporting_damage(mut self, damage: DamageReports) -> Self {
        self.damage = damage;
        self
    }

    /// The key to check `request`'s shard tokens with: `None` when it
    /// needs none (not a client with a certificate: dfs-meta, or a
    /// plaintext or in-process caller).
    fn token_key<T>(&self, request: &Request<T>) -> Result<Option<Checker>, Status> {
        let client = PeerInfo::of(request)
            .and_then(|peer| peer.identity.as_ref())
            .is_some_and(|identity| identity.role == Role::Client);
        if !client {
            return Ok(None);
        }
        match self.gate.key() {
            Some(key) => Ok(Some(Checker {
                key,
                skew_ns: self.skew_ns,
            })),
            None => Err(token_refused(TokenError::NoKey)),
        }
    }
}

/// Checks the tokens of one request.
struct Checker {
    key: Arc<ServerKey>,
    skew_ns: i64,
}

fn check_token(
    checker: Option<&Checker>,
    op: ShardOp,
    fingerprint: &[u8],
    token: &[u8],
) -> Result<(), TokenError> {
    match checker {
        None => Ok(()),
        Some(c) => c.key.check(op, fingerprint, token, now_ns(), c.skew_ns),
    }
}

fn token_refused(e: TokenError) -> Status {
    let errno = e.errno();
    let err = if errno == libc::EAGAIN {
        DfsError::retryable(errno, e.to_string())
    } else {
        DfsError::new(errno, e.to_string())
    };
    err.into()
}

/// The tonic server for [`ChunkService`], accepting requests up to
/// [`dfs_proto::MAX_SHARD_REQUEST_BYTES`] and sending replies up to
/// [`dfs_proto::MAX_MESSAGE_BYTES`]. Clients with certificates need shard
/// tokens that check with the key in `gate`.
pub fn chunk_service_server(service: ChunkService) -> ChunksServer<ChunkService> {
    ChunksServer::new(service)
        .max_decoding_message_size(dfs_proto::MAX_SHARD_REQUEST_BYTES)
        .max_encoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::from(DfsError::new(libc::EINVAL, msg))
}

/// Checks a key from the wire: a 32-byte fingerprint and an index below 256.
fn parse_key(fingerprint: &[u8], index: u32) -> Result<(Fingerprint, u8), Status> {
    let fp = Fingerprint::from_slice(fingerprint).map_err(|_| {
        invalid(format!(
            "fingerprint must be 32 bytes, got {}",
            fingerprint.len()
        ))
    })?;
    let index = u8::try_from(index)
        .map_err(|_| invalid(format!("shard index {index} out of range 0..=255")))?;
    Ok((fp, index))
}

/// Checks a listing cursor from the wire: empty, or a whole store key.
fn parse_after(after: &[u8]) -> Result<Option<[u8; KEY_LEN]>, Status> {
    if after.is_empty() {
        return Ok(None);
    }
    <[u8; KEY_LEN]>::try_from(after).map(Some).map_err(|_| {
        invalid(format!(
            "`after` must be empty or {KEY_LEN} bytes (fingerprint and index), got {}",
            after.len()
        ))
    })
}

/// The page size a `ListShards` limit asks for.
fn list_limit(limit: u32) -> usize {
    let limit = if limit == 0 {
        MAX_LIST_SHARDS
    } else {
        limit.min(MAX_LIST_SHARDS)
    };
    limit as usize
}

fn health(check: &ShardCheck) -> ShardHealth {
    match check {
        ShardCheck::Missing => ShardHealth::Missing,
        ShardCheck::Present => ShardHealth::Present,
        ShardCheck::Good => ShardHealth::Good,
        ShardCheck::Corrupt(_) => ShardHealth::Corrupt,
    }
}

/// Runs a store call on the blocking pool and maps its error to the wire.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            match &err {
                StoreError::NotFound { .. } => tracing::debug!(%err, "shard not found"),
                // Already logged with its ids by the store.
                StoreError::Corrupt { .. } => {}
                _ => tracing::warn!(%err, "shard store request failed"),
            }
            Err(Status::from(DfsError::from(err)))
        }
        Err(join) => {
            tracing::error!(error = %join, "shard store task panicked");
            Err(Status::from(DfsError::new(
                libc::EIO,
                format!("internal error in shard store task: {join}"),
            )))
        }
    }
}

/// Most shards one `GetShards` request may name: with shards of at most
/// ~64 KiB (a 128 KiB chunk as 2 replicas) a reply stays under 64 MiB.
pub const MAX_GET_SHARDS: usize = 1_000;

/// One read of a `GetShards` request, as its reply carries it.
fn shard_read(result: Result<Vec<u8>, StoreError>) -> ShardRead {
    match result {
        Ok(data) => ShardRead {
            data: data.into(),
            ..Default::default()
        },
        Err(err) => {
            if !matches!(
                err,
                StoreError::NotFound { .. } | StoreError::Corrupt { .. }
            ) {
                tracing::warn!(%err, "shard read failed");
            }
            let err = DfsError::from(err);
            ShardRead {
                data: Default::default(),
                errno: err.errno,
                error: err.message,
                retryable: err.retryable,
            }
        }
    }
}

/// A `GetShards` answer for a read whose token was refused.
fn refused_read(e: &TokenError) -> ShardRead {
    ShardRead {
        data: Default::default(),
        errno: e.errno(),
        error: e.to_string(),
        retryable: e.errno() == libc::EAGAIN,
    }
}

#[tonic::async_trait]
impl Chunks for ChunkService {
    async fn put_shards(
        &self,
        request: Request<PutShardsRequest>,
    ) -> Result<Response<Empty>, Status> {
        let key = self.token_key(&request)?;
        // A token lets a client store a chunk's shards, never replace
        // stored ones with other bytes: a token granted before someone
        // else's upload of the chunk must not overwrite it once committed.
        let owner = dfs_core::tls::PeerInfo::owner_id(&request);
        let client = key.is_some();
        let shards = request.into_inner().shards;
        // Chunks whose leftovers (written before a time) a token lets this
        // client replace: those of chunks dfs-meta found dead.
        let mut dead_before: HashMap<Fingerprint, i64> = HashMap::new();
        if let Some(checker) = &key {
            for shard in &shards {
                let before = checker
                    .key
                    .check_put(&shard.fingerprint, &shard.token, now_ns(), checker.skew_ns)
                    .map_err(token_refused)?;
                if before > 0 {
                    let (fp, _) = parse_key(&shard.fingerprint, shard.index)?;
                    let at = dead_before.entry(fp).or_default();
                    *at = (*at).max(before);
                }
            }
        }
        let bytes: usize = shards.iter().map(|s| s.data.len()).sum();
        let count = shards.len();
        let span = tracing::info_span!("put_shards", shards = count, bytes);
        let store = Arc::clone(&self.store);
        async move {
            let mut keys = Vec::with_capacity(shards.len());
            let mut payloads = Vec::with_capacity(shards.len());
            for Shard {
                fingerprint,
                index,
                data,
                token: _,
            } in shards
            {
                let (fp, index) = parse_key(&fingerprint, index)?;
                tracing::debug!(fingerprint = %fp, shard = index, len = data.len(), "put shard");
                keys.push((fp, index));
                payloads.push(data);
            }
            blocking(move || {
                let batch: Vec<(Fingerprint, u8, &[u8])> = keys
                    .into_iter()
                    .zip(payloads.iter())
                    .map(|((fp, index), data)| (fp, index, &data[..]))
                    .collect();
                let uploader = if client {
                    Uploader::Client {
                        owner: &owner,
                        dead_before: &dead_before,
                    }
                } else {
                    Uploader::Cluster
                };
                let result = store.put_batch_with(&batch, uploader);
                if let Err(StoreError::Exists { fingerprint, index }) = &result {
                    // Who stored what this client would overwrite: one of
                    // them is hostile (or two clients coded one chunk
                    // differently); the operator decides which to revoke.
                    let earlier = batch
                        .iter()
                        .find(|(fp, i, _)| i == index && fp.to_string() == *fingerprint)
                        .and_then(|(fp, ..)| store.uploader(fp, *index).ok().flatten())
                        .map_or_else(|| "the cluster".to_string(), hex::encode);
                    tracing::warn!(
                        %fingerprint,
                        shard = index,
                        client = %hex::encode(&owner),
                        stored_by = %earlier,
                        "refused a client's put over a stored shard with other bytes"
                    );
                }
                result
            })
            .await?;
            if dfs_core::telemetry::enabled() {
                static SHARDS: Series<(), metrics::Counter> = Series::new();
                static BYTES: Series<(), metrics::Counter> = Series::new();
                SHARDS
                    .get((), |()| metrics::counter!(SERVER_SHARDS_PUT))
                    .increment(count as u64);
                BYTES
                    .get((), |()| metrics::counter!(SERVER_SHARD_BYTES_PUT))
                    .increment(bytes as u64);
            }
            Ok(Response::new(Empty {}))
        }
        .instrument(span)
        .await
    }

    async fn get_shard(
        &self,
        request: Request<ShardKey>,
    ) -> Result<Response<GetShardReply>, Status> {
        let token_key = self.token_key(&request)?;
        let key = request.into_inner();
        check_token(
            token_key.as_ref(),
            ShardOp::Get,
            &key.fingerprint,
            &key.token,
        )
        .map_err(token_refused)?;
        let (fp, index) = parse_key(&key.fingerprint, key.index)?;
        let span = tracing::info_span!("get_shard", fingerprint = %fp, shard = index);
        let store = Arc::clone(&self.store);
        async move {
            let damage = self.damage.clone();
            let data = blocking(move || {
                let read = store.get(&fp, index);
                if matches!(read, Err(StoreError::Corrupt { .. })) {
                    damage.found(fp.as_bytes(), index);
                }
                read
            })
            .await?;
            tracing::debug!(len = data.len(), "get shard");
            shards_read(1);
            Ok(Response::new(GetShardReply { data: data.into() }))
        }
        .instrument(span)
        .await
    }

    async fn get_shards(
        &self,
        request: Request<GetShardsRequest>,
    ) -> Result<Response<GetShardsReply>, Status> {
        let token_key = self.token_key(&request)?;
        let wanted = request.into_inner().shards;
        if wanted.len() > MAX_GET_SHARDS {
            return Err(invalid(format!(
                "{} shards asked in one request, at most {MAX_GET_SHARDS}",
                wanted.len()
            )));
        }
        let span = tracing::info_span!("get_shards", shards = wanted.len());
        let store = Arc::clone(&self.store);
        async move {
            let mut keys = Vec::with_capacity(wanted.len());
            for k in &wanted {
                let parsed = parse_key(&k.fingerprint, k.index)?;
                // A refused token is that shard's answer, not the request's.
                let allowed =
                    check_token(token_key.as_ref(), ShardOp::Get, &k.fingerprint, &k.token);
                keys.push((parsed, allowed));
            }
            // One blocking task for the whole request: a failed read is
            // that shard's answer, not the request's.
            let damage = self.damage.clone();
            let shards = blocking(move || {
                Ok(keys
                    .iter()
                    .map(|((fp, index), allowed)| match allowed {
                        Ok(()) => {
                            let read = store.get(fp, *index);
                            if matches!(read, Err(StoreError::Corrupt { .. })) {
                                damage.found(fp.as_bytes(), *index);
                            }
                            shard_read(read)
                        }
                        Err(e) => refused_read(e),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
            let read = shards.iter().filter(|s| s.errno == 0).count();
            shards_read(read as u64);
            Ok(Response::new(GetShardsReply { shards }))
        }
        .instrument(span)
        .await
    }

    async fn delete_shards(
        &self,
        request: Request<DeleteShardsRequest>,
    ) -> Result<Response<DeleteShardsReply>, Status> {
        let request = request.into_inner();
        if request.shards.len() > MAX_DELETE_SHARDS {
            return Err(DfsError::invalid(format!(
                "at most {MAX_DELETE_SHARDS} shards per DeleteShards request, got {}",
                request.shards.len()
            ))
            .into());
        }
        let span = tracing::info_span!("delete_shards", shards = request.shards.len());
        let store = Arc::clone(&self.store);
        async move {
            let mut keys = Vec::with_capacity(request.shards.len());
            for k in &request.shards {
                keys.push(parse_key(&k.fingerprint, k.index)?);
            }
            let before = request.written_before_ns;
            let uploaded_by = request.uploaded_by;
            let (deleted, bytes) = blocking(move || {
                let only = (!uploaded_by.is_empty()).then_some(uploaded_by.as_slice());
                store.delete_written_before(&keys, before, only)
            })
            .await?;
            tracing::info!(deleted, bytes, "garbage shards deleted");
            Ok(Response::new(DeleteShardsReply { deleted, bytes }))
        }
        .instrument(span)
        .await
    }

    async fn list_shards(
        &self,
        request: Request<ListShardsRequest>,
    ) -> Result<Response<ListShardsReply>, Status> {
        let request = request.into_inner();
        let after = parse_after(&request.after)?;
        let limit = list_limit(request.limit);
        let span = tracing::info_span!(
            "list_shards",
            limit,
            after_fingerprint = tracing::field::Empty,
            after_shard = tracing::field::Empty,
        );
        if let Some(key) = &after {
            let (fp, index) = split_key(key);
            span.record("after_fingerprint", tracing::field::display(fp));
            span.record("after_shard", index);
        }
        let store = Arc::clone(&self.store);
        async move {
            let (page, full) = blocking(move || store.list_after(after.as_ref(), limit)).await?;
            let next = match (full, page.last()) {
                (true, Some(last)) => last.key().to_vec(),
                _ => Vec::new(),
            };
            tracing::debug!(listed = page.len(), more = full, "shards listed");
            let shards = page
                .into_iter()
                .map(|s| ShardInfo {
                    fingerprint: s.fingerprint.0.to_vec(),
                    index: u32::from(s.index),
                    len: s.len,
                    written_ns: s.written_ns,
                })
                .collect();
            Ok(Response::new(ListShardsReply { shards, next }))
        }
        .instrument(span)
        .await
    }

    async fn check_shards(
        &self,
        request: Request<CheckShardsRequest>,
    ) -> Result<Response<CheckShardsReply>, Status> {
        let CheckShardsRequest { shards, verify } = request.into_inner();
        if shards.len() > MAX_CHECK_SHARDS {
            return Err(invalid(format!(
                "at most {MAX_CHECK_SHARDS} shards per CheckShards request, got {}",
                shards.len()
            )));
        }
        let span = tracing::info_span!("check_shards", shards = shards.len(), verify);
        let store = Arc::clone(&self.store);
        async move {
            let keys = shards
                .iter()
                .map(|k| parse_key(&k.fingerprint, k.index))
                .collect::<Result<Vec<_>, _>>()?;
            let health: Vec<i32> = blocking(move || {
                keys.iter()
                    .map(|(fp, index)| Ok(health(&store.check(fp, *index, verify)?) as i32))
                    .collect()
            })
            .await?;
            let count = |h: ShardHealth| health.iter().filter(|&&x| x == h as i32).count();
            tracing::debug!(
                missing = count(ShardHealth::Missing),
                corrupt = count(ShardHealth::Corrupt),
                "shards checked"
            );
            Ok(Response::new(CheckShardsReply { health }))
        }
        .instrument(span)
        .await
    }

    async fn usage(&self, _request: Request<Empty>) -> Result<Response<ServerUsage>, Status> {
        let store = Arc::clone(&self.store);
        async move {
            let (usage, capacity) =
                blocking(move || Ok((store.usage(), store.capacity()?))).await?;
            Ok(Response::new(ServerUsage {
                shard_count: usage.shard_count,
                shard_bytes: usage.shard_bytes,
                capacity_bytes: capacity.total_bytes,
                used_bytes: capacity.used_bytes,
            }))
        }
        .instrument(tracing::info_span!("usage"))
        .await
    }
}

/// Counts shards served (a handle kept: every read request passes here).
fn shards_read(count: u64) {
    if dfs_core::telemetry::enabled() {
        static READ: Series<(), metrics::Counter> = Series::new();
        READ.get((), |()| metrics::counter!(SERVER_SHARDS_READ))
            .increment(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use dfs_proto::chunks_client::ChunksClient;
    use tokio::net::TcpListener;

    async fn start(store: Arc<ShardStore>) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(chunk_service_server(ChunkService::new(store)))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .expect("serve");
        });
        (format!("http://{addr}"), tx)
    }

    #[tokio::test]
    async fn invalid_keys_are_einval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ShardStore::open(dir.path()).expect("open"));
        let (url, _stop) = start(store).await;
        let mut client = ChunksClient::connect(url).await.expect("connect");

        let status = client
            .get_shard(ShardKey {
                token: Default::default(),
                fingerprint: vec![1; 31],
                index: 0,
            })
            .await
            .expect_err("short fingerprint");
        assert_eq!(DfsError::from(status).errno, libc::EINVAL);

        let status = client
            .put_shards(PutShardsRequest {
                shards: vec![Shard {
                    token: Default::default(),
                    fingerprint: vec![1; 32],
                    index: 256,
                    data: vec![1].into(),
                }],
            })
            .await
            .expect_err("index out of range");
        let err = DfsError::from(status);
        assert_eq!(err.errno, libc::EINVAL);
        assert!(!err.retryable);
    }

    #[tokio::test]
    async fn list_shards_pages_and_rejects_a_bad_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ShardStore::open(dir.path()).expect("open"));
        for n in 0..5u8 {
            store
                .raw_put_value(
                    &Fingerprint([n; 32]),
                    n,
                    &crate::store::encode_value_at(&vec![n; usize::from(n)], 100 + i64::from(n)),
                )
                .expect("put");
        }
        // A corrupt header is still listed: len from the value, written_ns 0.
        store
            .raw_put_value(
                &Fingerprint([9; 32]),
                1,
                &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9],
            )
            .expect("raw put");
        let (url, _stop) = start(store).await;
        let mut client = ChunksClient::connect(url).await.expect("connect");

        let mut listed = Vec::new();
        let mut after = Vec::new();
        let mut pages = 0;
        loop {
            let reply = client
                .list_shards(ListShardsRequest { after, limit: 4 })
                .await
                .expect("list")
                .into_inner();
            pages += 1;
            assert!(reply.shards.len() <= 4);
            listed.extend(reply.shards);
            if reply.next.is_empty() {
                break;
            }
            after = reply.next;
        }
        assert_eq!(pages, 2);
        let summary: Vec<(u8, u32, u64, i64)> = listed
            .iter()
            .map(|s| (s.fingerprint[0], s.index, s.len, s.written_ns))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 0, 0, 100),
                (1, 1, 1, 101),
                (2, 2, 2, 102),
                (3, 3, 3, 103),
                (4, 4, 4, 104),
                (9, 1, 1, 0),
            ]
        );
        assert!(listed.iter().all(|s| s.fingerprint.len() == 32));

        // Limit 0 means the largest page: everything at once, complete.
        let reply = client
            .list_shards(ListShardsRequest {
                after: Vec::new(),
                limit: 0,
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!((reply.shards.len(), reply.next.is_empty()), (6, true));
        assert_eq!(list_limit(0), 10_000);
        assert_eq!(list_limit(u32::MAX), 10_000);
        assert_eq!(list_limit(17), 17);

        let status = client
            .list_shards(ListShardsRequest {
                after: vec![0; 32],
                limit: 10,
            })
            .await
            .expect_err("a cursor of 32 bytes");
        let err = DfsError::from(status);
        assert_eq!(err.errno, libc::EINVAL);
        assert!(!err.retryable);
    }

    #[tokio::test]
    async fn check_shards_answers_per_key_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ShardStore::open(dir.path()).expect("open"));
        store
            .put_batch(&[
                (Fingerprint([1; 32]), 0, &b"good"[..]),
                (Fingerprint([1; 32]), 1, &b"soon bad"[..]),
            ])
            .expect("put");
        let mut raw = store
            .raw_get_value(&Fingerprint([1; 32]), 1)
            .expect("raw")
            .expect("present");
        raw[crate::store::VALUE_HEADER_LEN] ^= 1;
        store
            .raw_put_value(&Fingerprint([1; 32]), 1, &raw)
            .expect("raw put");
        let (url, _stop) = start(store).await;
        let mut client = ChunksClient::connect(url).await.expect("connect");

        let key = |n: u8, index: u32| ShardKey {
            token: Default::default(),
            fingerprint: vec![n; 32],
            index,
        };
        let keys = vec![key(1, 1), key(2, 0), key(1, 0), key(1, 1)];
        let ask = |verify| CheckShardsRequest {
            shards: keys.clone(),
            verify,
        };
        let health = client
            .check_shards(ask(true))
            .await
            .expect("check")
            .into_inner()
            .health;
        use ShardHealth::*;
        let expect = |h: &[ShardHealth]| h.iter().map(|&h| h as i32).collect::<Vec<_>>();
        assert_eq!(health, expect(&[Corrupt, Missing, Good, Corrupt]));
        let health = client
            .check_shards(ask(false))
            .await
            .expect("check")
            .into_inner()
            .health;
        assert_eq!(health, expect(&[Present, Missing, Present, Present]));

        let status = client
            .check_shards(CheckShardsRequest {
                shards: vec![key(1, 0); MAX_CHECK_SHARDS + 1],
                verify: false,
            })
            .await
            .expect_err("too many keys");
        assert_eq!(DfsError::from(status).errno, libc::EINVAL);
        let status = client
            .check_shards(CheckShardsRequest {
                shards: vec![key(1, 256)],
                verify: false,
            })
            .await
            .expect_err("index out of range");
        assert_eq!(DfsError::from(status).errno, libc::EINVAL);
    }

    #[tokio::test]
    async fn corrupt_shard_is_permanent_eio() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ShardStore::open(dir.path()).expect("open"));
        let fp = Fingerprint([9; 32]);
        store
            .put_batch(&[(Fingerprint([9; 32]), 2, b"payload")])
            .expect("put");
        let mut raw = store.raw_get_value(&fp, 2).expect("raw").expect("present");
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        store.raw_put_value(&fp, 2, &raw).expect("raw put");

        let (url, _stop) = start(store).await;
        let mut client = ChunksClient::connect(url).await.expect("connect");
        let status = client
            .get_shard(ShardKey {
                token: Default::default(),
                fingerprint: vec![9; 32],
                index: 2,
            })
            .await
            .expect_err("corrupt");
        let err = DfsError::from(status);
        assert_eq!(err.errno, libc::EBADMSG);
        assert!(!err.retryable);
        assert!(err.message.contains("corrupt"), "{}", err.message);
    }

    #[tokio::test]
    async fn get_shards_answers_each_read_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ShardStore::open(dir.path()).expect("open"));
        store
            .put_batch(&[
                (Fingerprint([1; 32]), 0, b"first"),
                (Fingerprint([2; 32]), 5, b"second"),
                (Fingerprint([3; 32]), 1, b"to be damaged"),
            ])
            .expect("put");
        let damaged = Fingerprint([3; 32]);
        let mut raw = store
            .raw_get_value(&damaged, 1)
            .expect("raw")
            .expect("present");
        raw[0] ^= 0xff;
        store.raw_put_value(&damaged, 1, &raw).expect("raw put");

        let (url, _stop) = start(store).await;
        let mut client = ChunksClient::connect(url).await.expect("connect");
        let key = |b: u8, index: u32| ShardKey {
            token: Default::default(),
            fingerprint: vec![b; 32],
            index,
        };
        let reads = client
            .get_shards(GetShardsRequest {
                shards: vec![key(2, 5), key(9, 0), key(3, 1), key(1, 0), key(2, 5)],
            })
            .await
            .expect("get_shards")
            .into_inner()
            .shards;
        let answers: Vec<(i32, &[u8])> = reads.iter().map(|r| (r.errno, &r.data[..])).collect();
        assert_eq!(
            answers,
            vec![
                (0, &b"second"[..]),
                (libc::ENOENT, &b""[..]),
                (libc::EBADMSG, &b""[..]),
                (0, &b"first"[..]),
                (0, &b"second"[..]),
            ]
        );
        assert!(reads[2].error.contains("corrupt"), "{}", reads[2].error);
        assert!(!reads[1].retryable && !reads[2].retryable);

        // A bad key fails the whole request, as in GetShard.
        let status = client
            .get_shards(GetShardsRequest {
                shards: vec![key(1, 0), key(1, 300)],
            })
            .await
            .expect_err("index out of range");
        assert_eq!(DfsError::from(status).errno, libc::EINVAL);
        let status = client
            .get_shards(GetShardsRequest {
                shards: vec![key(1, 0); MAX_GET_SHARDS + 1],
            })
            .await
            .expect_err("too many");
        assert_eq!(DfsError::from(status).errno, libc::EINVAL);
    }
}
