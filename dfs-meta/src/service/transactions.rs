//! How the `Meta` handlers run their bodies: one transaction each, on a
//! blocking thread or in place for point reads of a local snapshot, timed
//! (slow ones logged); and the small helpers that shape their replies.

use dfs_core::telemetry::catalog::STORE_DURATION;
use dfs_core::telemetry::series::Series;

use super::*;

/// How many times a change waits out a directory lease before it gives
/// up (with a retryable error): a lease is not renewed once revoked, so
/// one wait is enough unless another client made the directory again.
const LEASE_WAITS: usize = 3;

impl MetaService {
    /// Runs `body`, which only reads, on a blocking thread: on a snapshot
    /// that takes no lock where the store has one, so lookups do not queue
    /// behind other requests' synced commits.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        body: impl FnMut(&mut dyn KvTxn, i64) -> Result<T> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        self.execute(op, Access::Read, body).await
    }

    /// Like [`Self::read`] for a body that reads a few keys: on a local
    /// store it runs in place, without a thread handoff.
    pub(super) async fn point_read<T: Send + 'static>(
        &self,
        op: &'static str,
        body: impl FnMut(&mut dyn KvTxn, i64) -> Result<T> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        self.execute(op, Access::PointRead, body).await
    }

    /// Runs `body` as one transaction on a blocking thread.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        body: impl FnMut(&mut dyn KvTxn, i64) -> Result<T> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        // A body held back by another client's directory lease runs again
        // once the lease is revoked and has run out (`dir_lease`); a body
        // runs whole each time, so it is shared between attempts.
        let body = Arc::new(parking_lot::Mutex::new(body));
        let mut waits = 0;
        loop {
            let attempt = body.clone();
            let result = self
                .execute_raw(op, Access::ReadWrite, move |t, now| {
                    (attempt.lock())(t, now)
                })
                .await?;
            match result {
                Err(MetaError::DirectoryLeased { dir, .. }) if waits < LEASE_WAITS => {
                    waits += 1;
                    self.outwait_lease(dir).await?;
                }
                result => return to_response(op, result),
            }
        }
    }

    /// Revokes another client's lease on `dir`'s names and waits for it to
    /// run out.
    async fn outwait_lease(&self, dir: u64) -> Result<(), Status> {
        let ends = self
            .execute("revoke lease", Access::ReadWrite, move |t, now| {
                t.defer_sync();
                dir_lease::revoke(t, dir, now)
            })
            .await?
            .into_inner();
        if let Some(until_ns) = ends {
            let left = until_ns.saturating_add(dir_lease::CLOCK_SKEW_NS) - now_ns();
            let most = dir_lease::LEASE_NS + dir_lease::CLOCK_SKEW_NS;
            let left = u64::try_from(left.clamp(0, most)).unwrap_or(0);
            tracing::debug!(
                dir,
                wait_ms = left / 1_000_000,
                "waiting out a directory lease"
            );
            tokio::time::sleep(std::time::Duration::from_nanos(left)).await;
        }
        Ok(())
    }

    pub(super) async fn execute<T: Send + 'static>(
        &self,
        op: &'static str,
        access: Access,
        body: impl FnMut(&mut dyn KvTxn, i64) -> Result<T> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let result = self.execute_raw(op, access, body).await?;
        to_response(op, result)
    }

    /// [`Self::execute`] with the store's answer as it is, for handlers
    /// that act on some errors themselves.
    pub(super) async fn execute_raw<T: Send + 'static>(
        &self,
        op: &'static str,
        access: Access,
        mut body: impl FnMut(&mut dyn KvTxn, i64) -> Result<T> + Send + 'static,
    ) -> Result<Result<T>, Status> {
        let store = self.store.clone();
        let span = tracing::debug_span!("meta", op);
        if matches!(access, Access::PointRead) && store.snapshot_is_local() {
            // A point read of a local snapshot takes microseconds (memtable,
            // block cache or page cache) and no lock: handing it to a
            // blocking thread and back cost more than the read (stats at
            // one thread: 5,085-5,278 a second before, 5,777-8,725 after,
            // alternating runs). Larger reads stay on the blocking pool.
            let _entered = span.enter();
            let now = now_ns();
            let started = std::time::Instant::now();
            let result = read_only(store.as_ref(), |txn: &mut dyn KvTxn| body(txn, now));
            self.note_duration(op, started.elapsed());
            return Ok(result);
        }
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let now = now_ns();
            let body = |txn: &mut dyn KvTxn| body(txn, now);
            match access {
                Access::PointRead | Access::Read => read_only(store.as_ref(), body),
                Access::ReadWrite => transact(store.as_ref(), body),
            }
        })
        .instrument(span)
        .await
        .map_err(|e| Status::internal(format!("{op} panicked: {e}")))?;
        self.note_duration(op, started.elapsed());
        Ok(result)
    }

    /// `--inject-unknown-commit-every N`: every Nth create answers as if
    /// the store could not tell whether it committed (it did).
    pub(super) fn maybe_inject_unknown_create(&self) -> Result<(), Status> {
        let n = self.unknown_create_every;
        if n > 0
            && self
                .creates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % n
                == n - 1
        {
            let injected = StoreError::CommitUnknown(
                "injected after the commit (--inject-unknown-commit-every)".into(),
            );
            return Err(DfsError::from(MetaError::Store(injected)).into());
        }
        Ok(())
    }

    /// Makes every commit so far durable ([`crate::store::KvTxn::defer_sync`]).
    pub(super) async fn sync_store(&self) -> Result<(), Status> {
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let synced = tokio::task::spawn_blocking(move || store.sync())
            .await
            .map_err(|e| Status::internal(format!("sync panicked: {e}")))?;
        self.note_duration("sync", started.elapsed());
        synced.map_err(|e| DfsError::from(MetaError::Store(e)).into())
    }

    /// Keeps the longest transaction, and logs any slow one.
    pub(super) fn note_duration(&self, op: &'static str, took: std::time::Duration) {
        if took > SLOW_TRANSACTION {
            tracing::warn!(
                op,
                ms = took.as_millis() as u64,
                store = self.store.name(),
                "slow metadata transaction"
            );
        }
        if dfs_core::telemetry::enabled() {
            static SERIES: Series<&str, metrics::Histogram> = Series::new();
            SERIES
                .get(op, |op| metrics::histogram!(STORE_DURATION, "op" => op))
                .record(took.as_secs_f64());
        }
        let mut longest = self.longest.lock();
        if took > longest.0 {
            *longest = (took, op);
        }
    }
}

/// `inode` as a changed directory, if it is one (a setattr or xattr change
/// of a directory changes its ctime and perhaps its mode).
pub(super) fn changed_if_dir(inode: &InodeRecord) -> Vec<InodeRecord> {
    if inode.kind() == FileKind::Directory {
        vec![inode.clone()]
    } else {
        Vec::new()
    }
}

/// A removed directory as a client still holding it open sees it.
pub(super) fn gone(dir: InodeRecord) -> InodeRecord {
    InodeRecord { nlink: 0, ..dir }
}

/// A namespace change's reply, with the directories it modified (as they
/// are after it) in the response metadata: see
/// [`dfs_proto::CHANGED_DIRS_METADATA`].
pub(super) fn with_changed_dirs<T>(reply: Response<(T, Vec<InodeRecord>)>) -> Response<T> {
    let (message, dirs) = reply.into_inner();
    let mut response = Response::new(message);
    for dir in dirs {
        response.metadata_mut().append_bin(
            CHANGED_DIRS_METADATA,
            tonic::metadata::MetadataValue::from_bytes(&prost::Message::encode_to_vec(&dir)),
        );
    }
    response
}

pub(super) fn to_response<T>(op: &'static str, result: Result<T>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            let err = DfsError::from(e);
            tracing::debug!(op, errno = err.errno, error = %err.message, "meta request failed");
            Err(err.into())
        }
    }
}

/// Whether a request's body may write, and how much it reads.
#[derive(Clone, Copy)]
pub(super) enum Access {
    /// Reads a few keys (lookup, getattr, getxattr, F_GETLK).
    PointRead,
    /// Reads a range of keys (a page of a directory or chunk map, a batch
    /// of dedup lookups).
    Read,
    ReadWrite,
}

/// Syncs commits that deferred their sync at least every
/// [`DEFERRED_SYNC_EVERY`], so a namespace change is on disk within that
/// even when no fsync or data commit comes after it.
pub(super) async fn sync_deferred(store: Arc<dyn MetaStore>) {
    let mut every = tokio::time::interval(crate::store::DEFERRED_SYNC_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !store.has_deferred() {
            continue;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "syncing deferred commits failed; will retry")
            }
            Err(e) => tracing::error!(error = %e, "syncing deferred commits panicked"),
        }
    }
}
