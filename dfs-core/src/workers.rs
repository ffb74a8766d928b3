//! Named background workers (issue 20): each piece of background work of
//! dfs-meta (repair, lease expiry, GC, purge, fsck) and of a chunk server
//! (scrub) runs as its own task and keeps a [`Worker`] up to date: its
//! state (idle, busy, throttled, failed), the progress of the run under
//! way, the last error, when it ran and runs next, and its throttle.
//! `dfs workers` lists them cluster-wide: dfs-meta answers with its own
//! and with those each chunk server sent in its last heartbeat.
//!
//! A [`Pacer`] is the throttle: a worker asks it before each unit of work
//! and is shown `throttled` while it waits.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use dfs_proto::WorkerStatus;
use parking_lot::Mutex;

use crate::time::now_ns;

/// What a worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Waiting for its next run.
    Idle,
    /// Running.
    Busy,
    /// Running, and waiting for its throttle.
    Throttled,
    /// Its last run failed; it runs again at its next time.
    Failed,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Throttled => "throttled",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: WorkerState,
    done: u64,
    total: u64,
    last_error: String,
    last_error_ns: i64,
    last_run_ns: i64,
    /// When a run last went well, or when the worker began: what "how
    /// long without a successful run" (the stalled alerts) counts from.
    last_success_ns: i64,
    next_run_ns: i64,
    /// How often it is meant to run; `None`: on demand.
    interval: Option<Duration>,
    runs: u64,
    throttle: String,
    summary: String,
}

/// One named worker's status, shared between its task and whoever asks.
#[derive(Debug)]
pub struct Worker {
    name: &'static str,
    /// What progress counts: chunks, shards, files.
    unit: &'static str,
    inner: Mutex<Inner>,
}

impl Worker {
    pub fn new(name: &'static str, unit: &'static str) -> Self {
        Self {
            name,
            unit,
            inner: Mutex::new(Inner {
                state: WorkerState::Idle,
                done: 0,
                total: 0,
                last_error: String::new(),
                last_error_ns: 0,
                last_run_ns: 0,
                last_success_ns: now_ns(),
                next_run_ns: 0,
                interval: None,
                runs: 0,
                throttle: String::new(),
                summary: String::new(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn state(&self) -> WorkerState {
        self.inner.lock().state
    }

    /// Its throttle, in words ("20 chunks/s"), shown beside its state.
    pub fn set_throttle(&self, throttle: impl Into<String>) {
        self.inner.lock().throttle = throttle.into();
    }

    /// How often it is meant to run (the stalled alerts compare its last
    /// success with it).
    pub fn set_interval(&self, every: Duration) {
        self.inner.lock().interval = Some(every);
    }

    /// A run begins, over `total` units (0: not known yet).
    pub fn start(&self, total: u64) {
        let mut inner = self.inner.lock();
        inner.state = WorkerState::Busy;
        inner.done = 0;
        inner.total = total;
    }

    /// A run that resumes where an earlier one (of an earlier process)
    /// stopped: `done` of `total` units are behind it.
    pub fn resume(&self, done: u64, total: u64) {
        let mut inner = self.inner.lock();
        inner.state = WorkerState::Busy;
        inner.done = done;
        inner.total = total.max(done);
    }

    /// `n` more units done.
    pub fn advance(&self, n: u64) {
        let mut inner = self.inner.lock();
        inner.done = inner.done.saturating_add(n);
        if inner.total != 0 && inner.done > inner.total {
            inner.total = inner.done;
        }
    }

    /// The run's size became known, or changed.
    pub fn set_total(&self, total: u64) {
        self.inner.lock().total = total;
    }

    pub fn progress(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.done, inner.total)
    }

    fn set_throttled(&self, waiting: bool) {
        let mut inner = self.inner.lock();
        match (inner.state, waiting) {
            (WorkerState::Busy, true) => inner.state = WorkerState::Throttled,
            (WorkerState::Throttled, false) => inner.state = WorkerState::Busy,
            _ => {}
        }
    }

    /// The run ended: `Ok(summary)` in words, or the error. `next`: when
    /// the next run starts (`None`: as it was; on demand if never set).
    pub fn finish(&self, outcome: Result<String, String>, next: Option<Duration>) {
        let now = now_ns();
        let mut inner = self.inner.lock();
        inner.runs += 1;
        inner.last_run_ns = now;
        if let Some(d) = next {
            inner.next_run_ns = now.saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        }
        match outcome {
            Ok(summary) => {
                inner.state = WorkerState::Idle;
                inner.last_success_ns = now;
                inner.summary = summary;
                inner.last_error.clear();
            }
            Err(error) => {
                inner.state = WorkerState::Failed;
                inner.last_error = error;
                inner.last_error_ns = now;
            }
        }
    }

    /// When the next run starts, for a worker that knows it before its
    /// first run ends.
    pub fn set_next_run(&self, after: Duration) {
        self.inner.lock().next_run_ns =
            now_ns().saturating_add(i64::try_from(after.as_nanos()).unwrap_or(i64::MAX));
    }

    pub fn status(&self, process: &str) -> WorkerStatus {
        let inner = self.inner.lock();
        WorkerStatus {
            name: self.name.to_string(),
            process: process.to_string(),
            state: inner.state.as_str().to_string(),
            done: inner.done,
            total: inner.total,
            unit: self.unit.to_string(),
            last_error: inner.last_error.clone(),
            last_error_ns: inner.last_error_ns,
            last_run_ns: inner.last_run_ns,
            next_run_ns: inner.next_run_ns,
            runs: inner.runs,
            throttle: inner.throttle.clone(),
            summary: inner.summary.clone(),
            reported_ns: now_ns(),
            last_success_ns: inner.last_success_ns,
            interval_ns: inner
                .interval
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        }
    }
}

/// A process's workers, by name, in the order they were added.
#[derive(Debug, Default)]
pub struct Workers {
    list: Mutex<Vec<Arc<Worker>>>,
}

impl Workers {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds (or finds) the worker `name`.
    pub fn add(&self, name: &'static str, unit: &'static str) -> Arc<Worker> {
        let mut list = self.list.lock();
        if let Some(found) = list.iter().find(|w| w.name == name) {
            return Arc::clone(found);
        }
        let worker = Arc::new(Worker::new(name, unit));
        list.push(Arc::clone(&worker));
        worker
    }

    pub fn get(&self, name: &str) -> Option<Arc<Worker>> {
        self.list.lock().iter().find(|w| w.name == name).cloned()
    }

    pub fn statuses(&self, process: &str) -> Vec<WorkerStatus> {
        self.list.lock().iter().map(|w| w.status(process)).collect()
    }
}

/// A rate limit of `per_second` units: [`Pacer::take`] waits until a unit
/// may go, so that no window of time sees more than `per_second` times
/// its length, plus one second's worth (the burst a pause lets build up).
#[derive(Debug)]
pub struct Pacer {
    per_second: f64,
    /// When the units handed out so far are paid for: a unit waits until
    /// then; a pause banks at most a second.
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// `per_second` of 0: no limit.
    pub fn new(per_second: f64) -> Self {
        Self {
            per_second,
            next: Mutex::new(None),
        }
    }

    pub fn limited(&self) -> bool {
        self.per_second > 0.0
    }

    /// Waits for `n` units' turn, shown on `worker` as throttled.
    pub async fn take(&self, n: u64, worker: &Worker) {
        if !self.limited() || n == 0 {
            return;
        }
        let wait_until = {
            let mut next = self.next.lock();
            let now = Instant::now();
            let burst = Duration::from_secs(1);
            // Time not used in the last second is still there to use.
            let earliest = now.checked_sub(burst).unwrap_or(now);
            let start = next.map_or(earliest, |at| at.max(earliest));
            // A rate so small that one unit costs more than an hour is
            // an hour a unit.
            let cost = Duration::try_from_secs_f64(n as f64 / self.per_second)
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(3600));
            let at = start.checked_add(cost).unwrap_or(start);
            *next = Some(at);
            at
        };
        if wait_until > Instant::now() {
            worker.set_throttled(true);
            tokio::time::sleep_until(wait_until).await;
            worker.set_throttled(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_moves_through_its_states() {
        let workers = Workers::new();
        let w = workers.add("repair", "chunks");
        assert!(Arc::ptr_eq(&w, &workers.add("repair", "chunks")));
        assert_eq!(w.state(), WorkerState::Idle);
        w.start(10);
        w.advance(4);
        assert_eq!(w.progress(), (4, 10));
        w.finish(
            Err("server 3 unreachable".into()),
            Some(Duration::from_secs(60)),
        );
        let s = &workers.statuses("dfs-meta")[0];
        assert_eq!(
            (s.name.as_str(), s.state.as_str(), s.runs),
            ("repair", "failed", 1)
        );
        assert_eq!(s.last_error, "server 3 unreachable");
        assert!(s.next_run_ns > s.last_run_ns);
        let next = w.status("dfs-meta").next_run_ns;
        w.start(0);
        w.finish(Ok("3 chunks repaired".into()), None);
        let s = w.status("dfs-meta");
        assert_eq!((s.state.as_str(), s.next_run_ns), ("idle", next));
        assert!(s.last_error.is_empty());
        assert_eq!(s.summary, "3 chunks repaired");
        w.resume(7, 5);
        assert_eq!(w.progress(), (7, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_holds_its_rate() {
        let worker = Worker::new("repair", "chunks");
        worker.start(0);
        let pacer = Pacer::new(10.0);
        let started = tokio::time::Instant::now();
        for _ in 0..50 {
            pacer.take(1, &worker).await;
        }
        // 50 units at 10/s, less the one-second burst: at least 4 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(4), "{took:?}");
        assert!(took <= Duration::from_secs(5), "{took:?}");
        assert_eq!(worker.state(), WorkerState::Busy);
        let unlimited = Pacer::new(0.0);
        let started = tokio::time::Instant::now();
        unlimited.take(1000, &worker).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
