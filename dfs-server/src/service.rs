//! The `Chunks` gRPC service: puts and gets shards, reports usage.
//!
//! RocksDB calls block, so each runs on tokio's blocking pool. Every failure
//! leaves as a [`DfsError`] (errno + retryable flag) inside the status.

use std::sync::Arc;

use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::chunks_server::{Chunks, ChunksServer};
use dfs_proto::{
    DeleteShardsReply, DeleteShardsRequest, Empty, GetShardReply, PutShardsRequest, ServerUsage,
    Shard, ShardKey,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::StoreError;
use crate::store::ShardStore;

/// The chunk service over one shard store.
#[derive(Debug, Clone)]
pub struct ChunkService {
    store: Arc<ShardStore>,
}

impl ChunkService {
    pub fn new(store: Arc<ShardStore>) -> Self {
        ChunkService { store }
    }
}

/// The tonic server for [`ChunkService`], accepting messages up to
/// [`dfs_proto::MAX_MESSAGE_BYTES`] either way.
pub fn chunk_service_server(store: Arc<ShardStore>) -> ChunksServer<ChunkService> {
    ChunksServer::new(ChunkService::new(store))
        .max_decoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
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

#[tonic::async_trait]
impl Chunks for ChunkService {
    async fn put_shards(
        &self,
        request: Request<PutShardsRequest>,
    ) -> Result<Response<Empty>, Status> {
        let shards = request.into_inner().shards;
        let bytes: usize = shards.iter().map(|s| s.data.len()).sum();
        let span = tracing::info_span!("put_shards", shards = shards.len(), bytes);
        let store = Arc::clone(&self.store);
        async move {
            let mut keys = Vec::with_capacity(shards.len());
            let mut payloads = Vec::with_capacity(shards.len());
            for Shard {
                fingerprint,
                index,
                data,
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
                    .map(|((fp, index), data)| (fp, index, data.as_slice()))
                    .collect();
                store.put_batch(&batch)
            })
            .await?;
            Ok(Response::new(Empty {}))
        }
        .instrument(span)
        .await
    }

    async fn get_shard(
        &self,
        request: Request<ShardKey>,
    ) -> Result<Response<GetShardReply>, Status> {
        let key = request.into_inner();
        let (fp, index) = parse_key(&key.fingerprint, key.index)?;
        let span = tracing::info_span!("get_shard", fingerprint = %fp, shard = index);
        let store = Arc::clone(&self.store);
        async move {
            let data = blocking(move || store.get(&fp, index)).await?;
            tracing::debug!(len = data.len(), "get shard");
            Ok(Response::new(GetShardReply { data }))
        }
        .instrument(span)
        .await
    }

    async fn delete_shards(
        &self,
        request: Request<DeleteShardsRequest>,
    ) -> Result<Response<DeleteShardsReply>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("delete_shards", shards = request.shards.len());
        let store = Arc::clone(&self.store);
        async move {
            let mut keys = Vec::with_capacity(request.shards.len());
            for k in &request.shards {
                keys.push(parse_key(&k.fingerprint, k.index)?);
            }
            let before = request.written_before_ns;
            let (deleted, bytes) =
                blocking(move || store.delete_written_before(&keys, before)).await?;
            tracing::info!(deleted, bytes, "garbage shards deleted");
            Ok(Response::new(DeleteShardsReply { deleted, bytes }))
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
                .add_service(chunk_service_server(store))
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
                fingerprint: vec![1; 31],
                index: 0,
            })
            .await
            .expect_err("short fingerprint");
        assert_eq!(DfsError::from(status).errno, libc::EINVAL);

        let status = client
            .put_shards(PutShardsRequest {
                shards: vec![Shard {
                    fingerprint: vec![1; 32],
                    index: 256,
                    data: vec![1],
                }],
            })
            .await
            .expect_err("index out of range");
        let err = DfsError::from(status);
        assert_eq!(err.errno, libc::EINVAL);
        assert!(!err.retryable);
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
}
