//! Metadata RPCs with retries: transient failures (a metadata server
//! restarting, a conflict) are retried with backoff for a bounded time,
//! after which the caller gets EIO instead of a hang.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_core::error::DfsError;
use dfs_core::rpc::RpcTransport;
use dfs_proto::meta_client::MetaClient;
use tonic::Response;

#[derive(Clone)]
pub struct MetaRpc {
    clients: Vec<MetaClient<RpcTransport>>,
    /// How long transient failures are retried before giving up, in ms.
    retry_for_ms: Arc<AtomicU64>,
    /// The server that answered last: calls start there, so a dead server
    /// listed first costs one failed attempt, not one per call.
    preferred: Arc<AtomicUsize>,
}

impl MetaRpc {
    /// `transports` are alternative metadata servers of one volume, tried in
    /// order when one is unreachable.
    pub fn new(transports: Vec<RpcTransport>, retry_for: Duration) -> Self {
        let clients = transports
            .into_iter()
            .map(|t| {
                MetaClient::new(t)
                    .max_decoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(dfs_proto::MAX_MESSAGE_BYTES)
            })
            .collect();
        let retry_for_ms = Arc::new(AtomicU64::new(retry_for.as_millis() as u64));
        Self {
            clients,
            retry_for_ms,
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Changes how long transient failures are retried (a mount connects
    /// with a short limit, then rides out restarts with a longer one).
    pub fn set_retry_for(&self, retry_for: Duration) {
        self.retry_for_ms
            .store(retry_for.as_millis() as u64, Ordering::Relaxed);
    }

    /// Calls `f` with a client, retrying retryable errors with backoff.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, DfsError>
    where
        F: Fn(MetaClient<RpcTransport>) -> Fut,
        Fut: Future<Output = Result<Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let retry_for = Duration::from_millis(self.retry_for_ms.load(Ordering::Relaxed));
        let mut delay = Duration::from_millis(20);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut attempt = 0usize;
        loop {
            let index = (first + attempt) % self.clients.len();
            match f(self.clients[index].clone()).await {
                Ok(reply) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(reply.into_inner());
                }
                Err(status) => {
                    let err = DfsError::from(status);
                    if !err.retryable || started.elapsed() >= retry_for {
                        if err.retryable {
                            tracing::error!(op, error = %err, "metadata service unreachable, giving up");
                            return Err(DfsError::new(
                                libc::EIO,
                                format!("{op}: metadata service unreachable: {}", err.message),
                            ));
                        }
                        return Err(err);
                    }
                    tracing::debug!(op, attempt, server = index, error = %err, "retrying metadata request");
                    attempt += 1;
                    // Try the other servers at once; back off once all failed.
                    if attempt.is_multiple_of(self.clients.len()) {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
    }
}
