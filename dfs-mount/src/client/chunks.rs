//! Shard traffic with chunk servers: one batched `PutShards` per server per
//! upload round, and shard reads gathered per server into `GetShards`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{GetShardsRequest, PutShardsRequest, Shard, ShardKey, ShardRead};
use futures::future::join_all;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::Cluster;

/// Shard bytes in one `PutShards` request: far under the message limit
/// (`dfs_proto::MAX_MESSAGE_BYTES`) whatever one flush sends one server,
/// and small enough that a server is not asked to hold much at once.
const PUT_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Splits `shards` into consecutive groups of at most `limit` bytes (a
/// larger shard goes alone).
fn split_by_bytes(shards: Vec<Shard>, limit: usize) -> Vec<Vec<Shard>> {
    let mut groups: Vec<Vec<Shard>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for shard in shards {
        if !current.is_empty() && bytes + shard.data.len() > limit {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += shard.data.len();
        current.push(shard);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Shards bound for one server.
#[derive(Default)]
pub struct ServerBatch {
    pub shards: Vec<Shard>,
}

/// A server whose batch failed: the error, and the shards (fingerprint,
/// index) it did not store. Requests sent before the failure were stored
/// and stay where they are.
pub struct PutFailure {
    pub server_id: u32,
    pub error: DfsError,
    pub unstored: HashSet<(Vec<u8>, u32)>,
}

impl Cluster {
    /// Sends each server its batch, all servers in parallel, in requests
    /// of at most `PUT_REQUEST_BYTES`. Returns the servers that failed.
    pub async fn put_batches(&self, batches: HashMap<u32, ServerBatch>) -> Vec<PutFailure> {
        let sends = batches.into_iter().map(|(id, batch)| async move {
            let span =
                tracing::debug_span!("put_shards", server_id = id, shards = batch.shards.len());
            async {
                let mut requests = split_by_bytes(batch.shards, PUT_REQUEST_BYTES).into_iter();
                let error = match self.server(id).await {
                    Ok(conn) => {
                        let mut conn = conn.client;
                        let mut error = None;
                        for shards in requests.by_ref() {
                            let keys: Vec<(Vec<u8>, u32)> = shards
                                .iter()
                                .map(|s| (s.fingerprint.clone(), s.index))
                                .collect();
                            if let Err(e) = conn.put_shards(PutShardsRequest { shards }).await {
                                error = Some((DfsError::from(e), keys));
                                break;
                            }
                        }
                        error
                    }
                    Err(e) => Some((e, Vec::new())),
                };
                let (error, failed_keys) = error?;
                let mut unstored: HashSet<(Vec<u8>, u32)> = failed_keys.into_iter().collect();
                unstored.extend(requests.flatten().map(|s| (s.fingerprint, s.index)));
                Some(PutFailure {
                    server_id: id,
                    error,
                    unstored,
                })
            }
            .instrument(span)
            .await
        });
        join_all(sends).await.into_iter().flatten().collect()
    }

    /// Reads one shard. Reads for a server go out together: while
    /// `READS_IN_FLIGHT_PER_SERVER` requests to it are in flight, new reads
    /// wait and leave as one `GetShards` when one of those returns. A lone
    /// read goes at once; readahead over many chunks becomes a few large
    /// requests per server instead of one round trip per ~11 KiB shard.
    pub async fn get_shard(
        self: &Arc<Self>,
        server_id: u32,
        fp: &Fingerprint,
        index: u32,
        token: Vec<u8>,
    ) -> Result<Bytes, DfsError> {
        let (reply_to, reply) = oneshot::channel();
        let key = ShardKey {
            token,
            fingerprint: fp.to_vec(),
            index,
        };
        if self.shard_reads.enqueue(server_id, key, reply_to) {
            tokio::spawn(Arc::clone(self).send_shard_reads(server_id));
        }
        reply.await.unwrap_or_else(|_| {
            Err(DfsError::retryable(
                libc::EIO,
                format!("shard read from server {server_id} was abandoned"),
            ))
        })
    }

    /// Sends the reads waiting for `server_id`, batch after batch, until
    /// none are left.
    async fn send_shard_reads(self: Arc<Self>, server_id: u32) {
        while let Some(batch) = self.shard_reads.next_batch(server_id) {
            let (keys, reply_to): (Vec<ShardKey>, Vec<_>) = batch.into_iter().unzip();
            let span = tracing::debug_span!("get_shards", server_id, shards = keys.len());
            match self.get_shards(server_id, keys).instrument(span).await {
                Ok(reads) => {
                    for (read, reply_to) in reads.into_iter().zip(reply_to) {
                        let _ = reply_to.send(shard_result(read));
                    }
                }
                Err(err) => {
                    for reply_to in reply_to {
                        let _ = reply_to.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    async fn get_shards(
        &self,
        server_id: u32,
        keys: Vec<ShardKey>,
    ) -> Result<Vec<ShardRead>, DfsError> {
        let wanted = keys.len();
        let mut conn = self.server(server_id).await?.client;
        let reply = conn
            .get_shards(GetShardsRequest { shards: keys })
            .await
            .map_err(DfsError::from)?
            .into_inner();
        if reply.shards.len() != wanted {
            return Err(DfsError::new(
                libc::EIO,
                format!(
                    "server {server_id} answered {} of {wanted} shard reads",
                    reply.shards.len()
                ),
            ));
        }
        Ok(reply.shards)
    }
}

/// One read of a `GetShards` reply as the `get_shard` caller sees it.
fn shard_result(read: ShardRead) -> Result<Bytes, DfsError> {
    match read.errno {
        0 => Ok(read.data),
        errno if read.retryable => Err(DfsError::retryable(errno, read.error)),
        errno => Err(DfsError::new(errno, read.error)),
    }
}

/// Requests to one server in flight at once; reads that arrive while they
/// are go out together in the next.
const READS_IN_FLIGHT_PER_SERVER: usize = 2;

/// Most reads one `GetShards` request carries (the server takes 1,000).
const MAX_READS_PER_REQUEST: usize = 256;

type ReplyTo = oneshot::Sender<Result<Bytes, DfsError>>;

/// Shard reads waiting for their server, per server.
#[derive(Default)]
pub struct ShardReadQueues {
    queues: Mutex<HashMap<u32, ReadQueue>>,
}

#[derive(Default)]
struct ReadQueue {
    waiting: Vec<(ShardKey, ReplyTo)>,
    /// Senders running for this server (each sends one request at a time).
    senders: usize,
}

impl ShardReadQueues {
    /// Queues a read; true when the caller must start a sender for the
    /// server (fewer than `READS_IN_FLIGHT_PER_SERVER` run).
    fn enqueue(&self, server_id: u32, key: ShardKey, reply_to: ReplyTo) -> bool {
        let mut queues = self.queues.lock();
        let queue = queues.entry(server_id).or_default();
        queue.waiting.push((key, reply_to));
        if queue.senders < READS_IN_FLIGHT_PER_SERVER {
            queue.senders += 1;
            true
        } else {
            false
        }
    }

    /// The next reads a sender sends, oldest first; `None` ends the sender.
    fn next_batch(&self, server_id: u32) -> Option<Vec<(ShardKey, ReplyTo)>> {
        let mut queues = self.queues.lock();
        let queue = queues.get_mut(&server_id)?;
        // Reads whose caller gave up are not sent.
        queue.waiting.retain(|(_, reply_to)| !reply_to.is_closed());
        if queue.waiting.is_empty() {
            queue.senders -= 1;
            if queue.senders == 0 {
                queues.remove(&server_id);
            }
            return None;
        }
        let take = queue.waiting.len().min(MAX_READS_PER_REQUEST);
        Some(queue.waiting.drain(..take).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(len: usize) -> Shard {
        Shard {
            token: Default::default(),
            fingerprint: vec![0; 32],
            index: 0,
            data: vec![0; len].into(),
        }
    }

    #[test]
    fn batches_split_by_bytes_in_order() {
        let sizes = |groups: &[Vec<Shard>]| -> Vec<Vec<usize>> {
            groups
                .iter()
                .map(|g| g.iter().map(|s| s.data.len()).collect())
                .collect()
        };
        let groups = split_by_bytes(vec![shard(4), shard(4), shard(3), shard(9), shard(1)], 8);
        assert_eq!(sizes(&groups), vec![vec![4, 4], vec![3], vec![9], vec![1]]);
        assert!(split_by_bytes(Vec::new(), 8).is_empty());
    }

    fn key(b: u8) -> ShardKey {
        ShardKey {
            token: Default::default(),
            fingerprint: vec![b; 32],
            index: 0,
        }
    }

    #[test]
    fn reads_queue_behind_the_senders_in_flight_and_leave_together() {
        let queues = ShardReadQueues::default();
        let mut replies = Vec::new();
        let mut started = 0;
        for b in 0..10u8 {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            if queues.enqueue(7, key(b), tx) {
                started += 1;
            }
        }
        assert_eq!(
            started, READS_IN_FLIGHT_PER_SERVER,
            "a sender per request in flight"
        );
        // Another server's reads start their own sender.
        let (tx, _other) = oneshot::channel();
        assert!(queues.enqueue(8, key(0), tx));

        // A caller that gave up is not asked for.
        drop(replies.remove(3));
        let batch = queues.next_batch(7).expect("reads waiting");
        let asked: Vec<u8> = batch.iter().map(|(k, _)| k.fingerprint[0]).collect();
        assert_eq!(
            asked,
            vec![0, 1, 2, 4, 5, 6, 7, 8, 9],
            "oldest first, all at once"
        );
        // Nothing left: each sender ends, and the last one clears the entry.
        assert!(queues.next_batch(7).is_none());
        assert!(queues.next_batch(7).is_none());
        assert!(!queues.queues.lock().contains_key(&7));
        let (tx, _rx) = oneshot::channel();
        assert!(
            queues.enqueue(7, key(1), tx),
            "a new read starts a sender again"
        );
    }

    #[test]
    fn a_batch_is_at_most_max_reads_per_request() {
        let queues = ShardReadQueues::default();
        let mut replies = Vec::new();
        for i in 0..(MAX_READS_PER_REQUEST + 5) {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            queues.enqueue(1, key(i as u8), tx);
        }
        assert_eq!(
            queues.next_batch(1).map(|b| b.len()),
            Some(MAX_READS_PER_REQUEST)
        );
        assert_eq!(queues.next_batch(1).map(|b| b.len()), Some(5));
    }

    #[test]
    fn a_failed_read_keeps_its_errno_and_retryability() {
        let read = |errno, retryable| ShardRead {
            data: bytes::Bytes::from_static(b"x"),
            errno,
            error: "why".into(),
            retryable,
        };
        assert_eq!(shard_result(read(0, false)), Ok(Bytes::from_static(b"x")));
        let err = shard_result(read(libc::EBADMSG, false)).expect_err("corrupt");
        assert_eq!((err.errno, err.retryable), (libc::EBADMSG, false));
        let err = shard_result(read(libc::EIO, true)).expect_err("busy");
        assert_eq!((err.errno, err.retryable), (libc::EIO, true));
    }
}
