//! Upkeep of the data on the chunk servers, driven by the metadata server
//! (it holds the index that says where every shard should be):
//! - `repair`: rebuilding shards of dead servers, of restarted servers that
//!   lost some, and shards the servers' scrubbers found damaged;
//! - `gc`: deleting chunks nothing references (after a grace period) and
//!   orphan shards no index entry points at;
//! - `fsck`: checking the whole volume against the servers (`dfs fsck`).
//!
//! `run` starts the background work as named workers, each its own task
//! with a status `dfs workers` shows (`dfs_core::workers`): `repair`
//! (reported shards as they come, the whole index every
//! `repair_interval`, paced by `repair_rate`), `lease-expiry` (files
//! unlinked while open and lock sessions of dead clients), `gc` (every
//! `gc_interval`); `dfs gc` and `dfs fsck` run on demand through the
//! `Meta` service and report on the `gc` and `fsck` workers.

pub mod fsck;
pub mod gc;
mod hot;
pub mod repair;
pub mod servers;
pub mod staged;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_core::rpc::Connector;
use dfs_core::time::now_ns;
use dfs_core::workers::{Pacer, Worker, Workers};
use dfs_proto::{RepairStatus, ServerStatus, ShardKey, WorkerStatus};

use crate::error::{MetaError, Result};
use crate::registry::{self, Liveness};
use crate::store::{transact, KvTxn, MetaStore};

pub use hot::beside;
pub use repair::ServerView;
pub use servers::tcp_connector;

/// Damaged shards by fingerprint: (shard index, server id).
pub(crate) type Reported = BTreeMap<Vec<u8>, BTreeSet<(u32, u32)>>;

/// When the background work runs.
#[derive(Clone, Copy, Debug)]
pub struct MaintenanceConfig {
    /// A server down this long has its shards rebuilt elsewhere.
    pub rebuild_after: Duration,
    /// Between two repair scans of the whole index.
    pub repair_interval: Duration,
    /// Between two automatic garbage collections; `None`: only on demand.
    pub gc_interval: Option<Duration>,
    /// How long a chunk stays unreferenced, and an orphan shard stays
    /// unclaimed, before it is deleted.
    pub gc_grace: Duration,
    /// Allowed difference between the metadata and chunk servers' clocks.
    pub clock_skew: Duration,
    /// A file unlinked while open stays (without a name) while its client
    /// renews the lease; one not renewed for this long belonged to a
    /// client that died, and is removed.
    pub unlinked_timeout: Duration,
    /// The shortest grace period (for unreferenced chunks and for orphan
    /// shards) a `dfs gc` may ask for: shorter ones are refused, whoever
    /// asks, so no request can delete an upload whose commit is on its way.
    pub min_gc_grace: Duration,
    /// Most chunks repaired per second (0: no limit), so that rebuilding
    /// a dead server's shards leaves disks and network to the clients.
    pub repair_rate: f64,
    /// How long a chunk a small flush staged inline stays in the metadata
    /// store before it moves to the chunk servers; `None`: clients are told
    /// not to stage (the volume's `stage_max_bytes` reads 0), and the
    /// worker only moves what was staged before (by clients of a dfs-meta
    /// that staged, or told to), after `staged::DRAIN_DELAY`.
    pub stage_delay: Option<Duration>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            rebuild_after: Duration::from_secs(600),
            repair_interval: Duration::from_secs(60),
            gc_interval: Some(Duration::from_secs(3600)),
            gc_grace: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(60),
            unlinked_timeout: Duration::from_secs(600),
            // In-process (tests, the embedded mode): no remote caller.
            min_gc_grace: Duration::ZERO,
            repair_rate: 0.0,
            // In-process users ask for it: their tests look at shards.
            stage_delay: None,
        }
    }
}

pub struct Maintenance {
    store: Arc<dyn MetaStore>,
    liveness: Liveness,
    config: MaintenanceConfig,
    pool: servers::ServerPool,
    status: parking_lot::Mutex<RepairStatus>,
    /// Damaged shards reported by scrubbers: fingerprint → (index, server).
    reported: parking_lot::Mutex<Reported>,
    wake: tokio::sync::Notify,
    /// Wakes the purge worker after files were removed.
    purge_wake: Arc<tokio::sync::Notify>,
    scan_lock: tokio::sync::Mutex<()>,
    gc_lock: tokio::sync::Mutex<()>,
    /// When this metadata server started: heartbeat ages and lease ages
    /// only mean something once it has been up long enough to receive them.
    started: Instant,
    /// This process's named workers, and the ones maintenance runs.
    workers: Arc<Workers>,
    repair_worker: Arc<Worker>,
    gc_worker: Arc<Worker>,
    lease_worker: Arc<Worker>,
    fsck_worker: Arc<Worker>,
    /// `repair_rate`, applied to every chunk repaired.
    repair_pacer: Pacer,
    /// The chunk servers' workers, as their last heartbeats reported them.
    server_workers: parking_lot::Mutex<BTreeMap<u32, Vec<WorkerStatus>>>,
    /// The cold store and its reader, when one is configured.
    recall: std::sync::OnceLock<Arc<crate::cold::recall::Recall>>,
    /// The sizes of the packs tiering writes there.
    pack_sizes: parking_lot::Mutex<crate::cold::pack::PackSizes>,
}

/// The workers a chunk server runs, the only ones its heartbeat may
/// report.
const SERVER_WORKERS: [&str; 1] = ["scrub"];

/// Most bytes kept of a text a chunk server reports about a worker.
const MAX_REPORTED_TEXT: usize = 1024;

/// A chunk server's workers are forgotten after this long without a
/// heartbeat: `dfs status` says it is down meanwhile.
const FORGET_SERVER_WORKERS: Duration = Duration::from_secs(600);

fn truncate_text(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Most damaged shards kept waiting for repair (reports past it are
/// dropped; the scrubber finds them again on its next pass).
const MAX_REPORTED: usize = 100_000;

impl Maintenance {
    /// Cold chunks live in packs on `recall`'s store (set once, at start).
    pub fn set_cold_store(&self, recall: Arc<crate::cold::recall::Recall>) {
        let _ = self.recall.set(recall);
    }

    /// Packs of other sizes than the defaults (a test hook).
    pub fn set_pack_sizes(&self, sizes: crate::cold::pack::PackSizes) {
        *self.pack_sizes.lock() = sizes;
    }

    pub fn pack_sizes(&self) -> crate::cold::pack::PackSizes {
        *self.pack_sizes.lock()
    }

    /// The cold store's reader, when one is configured.
    pub fn recall(&self) -> Option<&Arc<crate::cold::recall::Recall>> {
        self.recall.get()
    }

    /// The allowed difference between dfs-meta's and chunk servers' clocks.
    pub fn clock_skew_ns(&self) -> i64 {
        i64::try_from(self.config.clock_skew.as_nanos()).unwrap_or(i64::MAX)
    }
}

impl Maintenance {
    pub fn new(
        store: Arc<dyn MetaStore>,
        liveness: Liveness,
        config: MaintenanceConfig,
        connector: Connector,
        purge_wake: Arc<tokio::sync::Notify>,
    ) -> Arc<Self> {
        let workers = Workers::new();
        let repair_worker = workers.add("repair", "chunks");
        if config.repair_rate > 0.0 {
            repair_worker.set_throttle(format!("{} chunks/s", config.repair_rate));
        }
        repair_worker.set_interval(config.repair_interval);
        let lease_worker = workers.add("lease-expiry", "files and sessions");
        lease_worker.set_interval(config.repair_interval);
        let gc_worker = workers.add("gc", "chunks");
        if let Some(interval) = config.gc_interval {
            gc_worker.set_interval(interval);
        }
        let fsck_worker = workers.add("fsck", "records");
        Arc::new(Self {
            store,
            liveness,
            config,
            pool: servers::ServerPool::new(connector),
            status: parking_lot::Mutex::new(RepairStatus::default()),
            reported: parking_lot::Mutex::new(BTreeMap::new()),
            wake: tokio::sync::Notify::new(),
            purge_wake,
            scan_lock: tokio::sync::Mutex::new(()),
            gc_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            repair_pacer: Pacer::new(config.repair_rate),
            server_workers: parking_lot::Mutex::new(BTreeMap::new()),
            recall: std::sync::OnceLock::new(),
            pack_sizes: parking_lot::Mutex::new(Default::default()),
            workers,
            repair_worker,
            gc_worker,
            lease_worker,
            fsck_worker,
        })
    }

    /// This dfs-meta's named workers.
    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    /// Keeps what a chunk server's heartbeat said of its workers, as far
    /// as a server may say it: only the workers chunk servers run, under
    /// a name dfs-meta gives (never one of its own), with bounded text and
    /// dfs-meta's own receive time.
    pub fn note_server_workers(&self, server_id: u32, workers: Vec<WorkerStatus>) {
        let now = now_ns();
        let kept: Vec<WorkerStatus> = workers
            .into_iter()
            .filter(|w| SERVER_WORKERS.contains(&w.name.as_str()))
            .take(SERVER_WORKERS.len())
            .map(|mut w| {
                w.process = format!("dfs-server {server_id}");
                if !matches!(w.state.as_str(), "idle" | "busy" | "throttled" | "failed") {
                    w.state = "unknown".into();
                }
                for text in [
                    &mut w.unit,
                    &mut w.last_error,
                    &mut w.summary,
                    &mut w.throttle,
                ] {
                    truncate_text(text, MAX_REPORTED_TEXT);
                }
                w.reported_ns = now;
                w
            })
            .collect();
        self.server_workers.lock().insert(server_id, kept);
    }

    /// Every worker of the cluster: this dfs-meta's, then each chunk
    /// server's as of its last heartbeat (`reported_ns` says when); a
    /// server silent for [`FORGET_SERVER_WORKERS`] is left out (and
    /// forgotten: a server gone for good, or registered anew).
    pub fn cluster_workers(&self) -> Vec<WorkerStatus> {
        let mut all = self.workers.statuses("dfs-meta");
        let cut = now_ns()
            .saturating_sub(i64::try_from(FORGET_SERVER_WORKERS.as_nanos()).unwrap_or(i64::MAX));
        let mut reported = self.server_workers.lock();
        reported.retain(|_, list| list.iter().all(|w| w.reported_ns >= cut));
        for list in reported.values() {
            all.extend(list.iter().cloned());
        }
        all
    }

    pub fn config(&self) -> &MaintenanceConfig {
        &self.config
    }

    /// Runs `body` as one transaction on a blocking thread.
    async fn txn<T: Send + 'static>(
        &self,
        op: &'static str,
        body: impl FnMut(&mut dyn KvTxn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        let mut body = body;
        tokio::task::spawn_blocking(move || transact(store.as_ref(), |t| body(t)))
            .await
            .map_err(|e| MetaError::Invalid(format!("{op} panicked: {e}")))?
    }

    async fn servers(&self) -> Result<Vec<ServerStatus>> {
        let liveness = self.liveness;
        self.txn("list_servers", move |t| {
            registry::list(t, &liveness, now_ns())
        })
        .await
    }

    async fn view(&self) -> Result<ServerView> {
        // Right after a restart every heartbeat looks old (the servers had
        // nobody to send them to): nobody is gone before this server has
        // been up for `rebuild_after` itself.
        let trust_ages = self.started.elapsed() >= self.config.rebuild_after;
        Ok(ServerView::new(
            self.servers().await?,
            self.config.rebuild_after,
            trust_ages,
        ))
    }

    /// Progress of rebuilds and repairs, for `dfs status`.
    pub fn status(&self) -> RepairStatus {
        let mut status = *self.status.lock();
        status.pending_reports = self.reported.lock().values().map(|s| s.len() as u64).sum();
        status
    }

    /// Queues shards a server's scrubber found damaged, and wakes the
    /// background loop to rebuild them.
    pub fn report_bad(&self, server_id: u32, shards: Vec<ShardKey>) -> Result<()> {
        for s in &shards {
            if s.fingerprint.len() != 32 || s.index > 255 {
                return Err(MetaError::Invalid(
                    "a reported shard key has a malformed fingerprint or index".into(),
                ));
            }
        }
        let mut reported = self.reported.lock();
        let mut held: usize = reported.values().map(BTreeSet::len).sum();
        for s in shards {
            if held >= MAX_REPORTED {
                tracing::warn!("too many damaged shards waiting for repair; dropping reports");
                break;
            }
            tracing::warn!(server_id, chunk = %hex::encode(&s.fingerprint), shard = s.index, "damaged shard reported");
            if reported
                .entry(s.fingerprint)
                .or_default()
                .insert((s.index, server_id))
            {
                held += 1;
            }
        }
        drop(reported);
        self.wake.notify_one();
        Ok(())
    }

    /// Starts the background workers, each its own task: `repair`,
    /// `lease-expiry` and (with a `gc_interval`) `gc`. Errors are logged,
    /// shown on the worker, and the work retried at its next run.
    pub async fn run(self: Arc<Self>) {
        let mut tasks = vec![
            tokio::spawn(Arc::clone(&self).repair_loop()),
            tokio::spawn(Arc::clone(&self).lease_loop()),
        ];
        if let Some(interval) = self.config.gc_interval {
            tasks.push(tokio::spawn(Arc::clone(&self).gc_loop(interval)));
        }
        // Also with staging off: nothing staged may stay inline for good.
        let delay = self.config.stage_delay.unwrap_or(staged::DRAIN_DELAY);
        tasks.push(tokio::spawn(staged::staging_loop(Arc::clone(&self), delay)));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a maintenance worker panicked");
            }
        }
    }

    /// Repairs reported shards as they come and scans the whole index
    /// every `repair_interval`.
    async fn repair_loop(self: Arc<Self>) {
        let worker = Arc::clone(&self.repair_worker);
        let first = Duration::from_secs(2).min(self.config.repair_interval);
        let mut next_scan = Instant::now() + first;
        worker.set_next_run(first);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_scan.into()) => {}
                _ = self.wake.notified() => {}
            }
            let reported: u64 = self.reported.lock().values().map(|s| s.len() as u64).sum();
            // Reported shards between scans: a failure shows on the
            // worker; a success does not stand for the scan's.
            if reported > 0 {
                if let Err(e) = self.repair_reported().await {
                    tracing::warn!(error = %e, "repairing reported shards failed");
                    worker.finish(
                        Err(format!("repairing reported shards: {e}")),
                        Some(next_scan.saturating_duration_since(Instant::now())),
                    );
                }
            }
            if Instant::now() < next_scan {
                continue;
            }
            // Its size is the last scan's, until this one ends.
            worker.start(self.status.lock().scanned_chunks);
            let outcome = self.repair_scan().await;
            next_scan = Instant::now() + self.config.repair_interval;
            let outcome = match outcome {
                Ok(summary) => {
                    tracing::debug!(
                        scanned = summary.scanned,
                        under_protected = summary.under_protected,
                        lost = summary.lost,
                        "repair scan done"
                    );
                    Ok(format!(
                        "{} chunks scanned, {} under-protected, {} lost",
                        summary.scanned, summary.under_protected, summary.lost
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "repair scan failed");
                    Err(e.to_string())
                }
            };
            worker.finish(outcome, Some(self.config.repair_interval));
        }
    }

    /// Every `repair_interval`: removes files unlinked while open by
    /// clients that died, and ends their lock sessions.
    async fn lease_loop(self: Arc<Self>) {
        let worker = Arc::clone(&self.lease_worker);
        let interval = self.config.repair_interval;
        loop {
            worker.set_next_run(interval);
            tokio::time::sleep(interval).await;
            worker.start(0);
            let files = self.expire_unlinked().await;
            if let Err(e) = &files {
                tracing::warn!(error = %e, "expiring unlinked files of dead clients failed");
            }
            let sessions = self.expire_lock_sessions().await;
            if let Err(e) = &sessions {
                tracing::warn!(error = %e, "ending lock sessions of dead clients failed");
            }
            let outcome = match (files, sessions) {
                (Ok(files), Ok(sessions)) => {
                    worker.advance(files + sessions);
                    Ok(format!(
                        "{files} unlinked files removed, {sessions} lock sessions ended"
                    ))
                }
                (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            };
            worker.finish(outcome, Some(interval));
        }
    }

    /// Collects garbage every `interval`.
    async fn gc_loop(self: Arc<Self>, interval: Duration) {
        loop {
            self.gc_worker.set_next_run(interval);
            tokio::time::sleep(interval).await;
            let request = gc::GcOptions {
                grace: self.config.gc_grace,
                clock_skew: self.config.clock_skew,
                orphan_grace: Some(self.config.gc_grace),
            };
            match self.gc(request).await {
                Ok(report) => tracing::info!(
                    chunks_freed = report.chunks_freed,
                    bytes_freed = report.bytes_freed,
                    orphan_shards_deleted = report.orphan_shards_deleted,
                    "garbage collection done"
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    }
}

impl Maintenance {
    /// Removes files that were unlinked while open by a client that has
    /// not renewed their lease for `unlinked_timeout` (it died).
    pub async fn expire_unlinked(&self) -> Result<u64> {
        // Leases could not be renewed while this server was down.
        if self.started.elapsed() < self.config.unlinked_timeout {
            return Ok(0);
        }
        let cut = now_ns().saturating_sub(
            i64::try_from(self.config.unlinked_timeout.as_nanos()).unwrap_or(i64::MAX),
        );
        let mut total = 0;
        let mut from = Vec::new();
        loop {
            let start = from.clone();
            let (removed, next) = self
                .txn("expire_unlinked", move |t| {
                    crate::namespace::expire_unlinked(t, &start, cut, 10)
                })
                .await?;
            total += removed;
            match next {
                Some(key) => from = key,
                None => break,
            }
        }
        if total > 0 {
            tracing::info!(
                files = total,
                "removed unlinked files whose clients stopped renewing them"
            );
            self.purge_wake.notify_one();
        }
        Ok(total)
    }
}

impl Maintenance {
    /// Ends the lock sessions whose lease ran out (their clients died or
    /// lost contact), releasing their locks.
    pub async fn expire_lock_sessions(&self) -> Result<u64> {
        // Leases could not be renewed while this server was down.
        if self.started.elapsed() < crate::locks::LEASE {
            return Ok(0);
        }
        let mut ended = 0;
        let mut from = Vec::new();
        loop {
            let start = from.clone();
            let (expired, next) = self
                .txn("expired_lock_sessions", move |t| {
                    crate::locks::expired_sessions(t, &start, now_ns(), 100)
                })
                .await?;
            for session in expired {
                // One session that cannot be ended must not keep the
                // sessions after it from expiring.
                match self.end_expired_session(session).await {
                    Ok(true) => {
                        tracing::info!(
                            session,
                            "ended the lock session of a client that stopped renewing it"
                        );
                        ended += 1;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(session, error = %e, "cannot end an expired lock session")
                    }
                }
            }
            match next {
                Some(key) => from = key,
                None => break,
            }
        }
        Ok(ended)
    }

    /// Ends `session` if it is still expired (it may have been renewed
    /// since it was listed), in bounded steps. True when it was ended.
    async fn end_expired_session(&self, session: u64) -> Result<bool> {
        loop {
            let step = self
                .txn("end_lock_session", move |t| {
                    let (expired, _) = crate::locks::expired_sessions(
                        t,
                        &crate::keys::lock_session(session),
                        now_ns(),
                        1,
                    )?;
                    if expired.first() != Some(&session) {
                        return Ok(None);
                    }
                    crate::locks::end_session_step(t, session).map(Some)
                })
                .await?;
            match step {
                None => return Ok(false),
                Some(true) => return Ok(true),
                Some(false) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maintenance() -> Arc<Maintenance> {
        let connector: Connector = Arc::new(|_: &str| {
            Err(dfs_core::error::DfsError::unavailable(
                "no servers in this test",
            ))
        });
        Maintenance::new(
            Arc::new(crate::store::MemStore::default()),
            Liveness {
                suspect_after: Duration::from_secs(6),
                down_after: Duration::from_secs(30),
            },
            MaintenanceConfig::default(),
            connector,
            Arc::new(tokio::sync::Notify::new()),
        )
    }

    /// A chunk server's heartbeat says what its scrubber does, and no
    /// more: it cannot pass for dfs-meta's workers, invent others, or
    /// hand dfs-meta unbounded text.
    #[test]
    fn what_a_server_reports_of_its_workers_is_bounded() {
        let m = maintenance();
        let own = m.cluster_workers().len();
        let forged = WorkerStatus {
            name: "gc".into(),
            process: "dfs-meta".into(),
            state: "idle".into(),
            ..Default::default()
        };
        let scrub = WorkerStatus {
            name: "scrub".into(),
            process: "dfs-meta".into(),
            state: "sleeping".into(),
            last_error: "é".repeat(5000),
            reported_ns: 1,
            ..Default::default()
        };
        m.note_server_workers(7, vec![forged, scrub.clone(), scrub]);
        let all = m.cluster_workers();
        assert_eq!(all.len(), own + 1, "only one scrub worker kept");
        let kept = &all[own];
        assert_eq!(
            (
                kept.name.as_str(),
                kept.process.as_str(),
                kept.state.as_str()
            ),
            ("scrub", "dfs-server 7", "unknown")
        );
        assert!(kept.last_error.len() <= MAX_REPORTED_TEXT);
        assert!(kept.reported_ns > 1, "dated by dfs-meta");
        assert_eq!(
            all.iter()
                .filter(|w| w.process == "dfs-meta" && w.name == "gc")
                .count(),
            1,
            "dfs-meta's own gc only"
        );
    }
}
