//! The scrubber: reads every shard once per period and verifies its
//! checksum, so that bit rot is found and repaired while the chunk's other
//! shards can still rebuild it, not when a client needs it.
//!
//! A pass walks the store in key order, [`PAGE_SHARDS`] shards at a time,
//! pausing between pages so that the pass is spread over the period instead
//! of competing with clients for the disk in one burst (see [`page_delay`]).
//!
//! Bad shards (checksum mismatch, unknown version, too short: whatever
//! [`decode_value`](crate::store::decode_value) rejects) are reported to the
//! metadata server with `ReportBadShards`, which rebuilds them from the
//! chunk's other shards and overwrites them with `PutShards`. The scrubber
//! never deletes a shard: a put replaces it, and until then the corrupt copy
//! costs nothing, since every read checks the checksum.
//!
//! Where a pass stands is kept in `<data>/scrub.cursor` after every page
//! ([`ScrubCursor`]): a restarted server resumes its pass after the last
//! shard it read, and waits out the rest of the period after a finished
//! one, so a server restarted more often than its period still reaches the
//! end of its key space. The pass shows on the `scrub` worker (`dfs
//! workers`).
//!
//! A report that fails (metadata server down, server not registered yet)
//! is kept and retried after the next page, and on the next pass. At most
//! [`MAX_RETAINED`] shards are kept; past that, new finds are dropped and
//! the next pass finds them again. A shard still bad when a pass reaches it
//! again is reported again: it has not been repaired yet, and a repeat is
//! safe, since repairing a shard twice writes the same bytes twice.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dfs_core::time::now_ns;
use dfs_core::workers::Worker;

use dfs_core::rpc::RpcTransport;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{ReportBadShardsRequest, ShardKey};

use crate::error::StoreError;
use crate::heartbeat::SharedServerId;
use crate::store::ShardStore;
use dfs_core::error::error_chain;
use dfs_core::shard_key::{split_key, KEY_LEN};

/// Default time for one pass over every shard (`--scrub-period`).
pub const DEFAULT_SCRUB_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shards read between two pauses.
pub const PAGE_SHARDS: usize = 256;
/// Longest pause between pages: a store that grows during a pass, or one
/// that starts nearly empty, is still walked at a useful pace.
pub const MAX_PAGE_DELAY: Duration = Duration::from_secs(60);
/// Wait before the first pass (less when the period is shorter): lets the
/// server register and take its first requests before it reads the disk.
pub const FIRST_PASS_DELAY: Duration = Duration::from_secs(10);
/// Most shards named in one `ReportBadShards` request.
pub const REPORT_BATCH: usize = 1_000;
/// Most bad shards kept while reports fail.
pub const MAX_RETAINED: usize = 100_000;

/// Why bad shards could not be reported; they are kept and retried.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The heartbeat task has not registered this server yet, so there is
    /// no server id to report under.
    #[error("not registered with the metadata server yet")]
    NotRegistered,
    #[error("ReportBadShards failed: {}", error_chain(.0))]
    Rpc(#[from] tonic::Status),
}

/// Counters since the scrubber started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrubStats {
    pub passes_completed: u64,
    /// Shards read and checked (a shard counts once per pass).
    pub shards_verified: u64,
    /// Bad shards found (a shard still bad at the next pass counts again).
    pub bad_found: u64,
    /// Bad shards the metadata server acknowledged.
    pub bad_reported: u64,
}

/// What one pass saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassSummary {
    pub verified: u64,
    pub bad: u64,
    /// Bad shards not kept for reporting because [`MAX_RETAINED`] were waiting.
    pub dropped: u64,
}

/// The file, in the data directory, that holds the scrub cursor.
pub const CURSOR_FILE: &str = "scrub.cursor";

/// How far the scrubber got, as kept on disk between pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubCursor {
    /// A pass under way, begun at `started_ns`: `verified` shards read,
    /// the last of them `after`.
    InPass {
        started_ns: i64,
        verified: u64,
        after: [u8; KEY_LEN],
    },
    /// The last pass, begun at `started_ns`, reached the end.
    Done { started_ns: i64 },
}

impl ScrubCursor {
    fn encode(&self) -> String {
        match self {
            Self::InPass {
                started_ns,
                verified,
                after,
            } => format!("pass {started_ns} {verified} {}\n", hex::encode(after)),
            Self::Done { started_ns } => format!("done {started_ns}\n"),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        match words.next()? {
            "pass" => {
                let started_ns = words.next()?.parse().ok()?;
                let verified = words.next()?.parse().ok()?;
                let after = hex::decode(words.next()?).ok()?.try_into().ok()?;
                Some(Self::InPass {
                    started_ns,
                    verified,
                    after,
                })
            }
            "done" => Some(Self::Done {
                started_ns: words.next()?.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// The cursor kept in `data_dir`; `None` when there is none or it is
    /// unreadable (a pass then starts from the beginning).
    pub fn load(data_dir: &Path) -> Option<Self> {
        let path = data_dir.join(CURSOR_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        let cursor = Self::decode(&text);
        if cursor.is_none() {
            tracing::warn!(path = %path.display(), "unreadable scrub cursor; the pass starts over");
        }
        cursor
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        crate::identity::write_atomically(
            data_dir,
            &data_dir.join(CURSOR_FILE),
            self.encode().as_bytes(),
        )
    }
}

/// The pause after each page so that a pass over `shard_count` shards takes
/// about `period`: `period / pages`, at most [`MAX_PAGE_DELAY`].
pub fn page_delay(period: Duration, shard_count: u64) -> Duration {
    let pages = shard_count.div_ceil(PAGE_SHARDS as u64).max(1);
    let nanos = period.as_nanos() / u128::from(pages);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(MAX_PAGE_DELAY)
}

/// Scrub state that outlives a pass: counters and the bad shards not yet
/// reported.
#[derive(Debug)]
pub struct Scrubber {
    store: Arc<ShardStore>,
    /// Found and not yet acknowledged, without duplicates.
    pending: BTreeSet<[u8; KEY_LEN]>,
    stats: ScrubStats,
    /// The last report failed: further failures log at debug, not warn, so a
    /// metadata server that is down for hours does not flood the log.
    report_failing: bool,
}

impl Scrubber {
    pub fn new(store: Arc<ShardStore>) -> Self {
        Scrubber {
            store,
            pending: BTreeSet::new(),
            stats: ScrubStats::default(),
            report_failing: false,
        }
    }

    pub fn stats(&self) -> ScrubStats {
        self.stats
    }

    /// Bad shards waiting to be reported.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Reads and verifies every shard once, pausing `pace` between pages,
    /// and reports bad ones through `report` after each page that leaves
    /// any waiting. Only a store error ends a pass early; failed reports
    /// are kept for later.
    pub async fn scrub_pass<R, F>(
        &mut self,
        pace: Duration,
        report: R,
    ) -> Result<PassSummary, StoreError>
    where
        R: FnMut(Vec<ShardKey>) -> F,
        F: Future<Output = Result<(), ReportError>>,
    {
        self.scrub_pass_from(pace, None, |_, _, _| {}, report).await
    }

    /// [`Scrubber::scrub_pass`] from the shard after `after` (the rest of
    /// a pass begun earlier), calling `on_page(last key, shards read,
    /// whether every bad shard found so far was reported)` after each page.
    pub async fn scrub_pass_from<R, F>(
        &mut self,
        pace: Duration,
        after: Option<[u8; KEY_LEN]>,
        mut on_page: impl FnMut([u8; KEY_LEN], u64, bool),
        mut report: R,
    ) -> Result<PassSummary, StoreError>
    where
        R: FnMut(Vec<ShardKey>) -> F,
        F: Future<Output = Result<(), ReportError>>,
    {
        let mut pass = PassSummary::default();
        let mut after = after;
        loop {
            let store = Arc::clone(&self.store);
            let (page, full) =
                tokio::task::spawn_blocking(move || store.list_after(after.as_ref(), PAGE_SHARDS))
                    .await
                    .map_err(|e| {
                        StoreError::io("scrub page task failed", std::io::Error::other(e))
                    })??;
            for shard in &page {
                pass.verified += 1;
                self.stats.shards_verified += 1;
                if let Some(reason) = &shard.corrupt {
                    pass.bad += 1;
                    self.stats.bad_found += 1;
                    metrics::counter!(dfs_core::telemetry::catalog::SERVER_CORRUPT_SHARDS)
                        .increment(1);
                    tracing::warn!(
                        fingerprint = %shard.fingerprint,
                        shard = shard.index,
                        %reason,
                        "scrub found a bad shard"
                    );
                    if !self.retain(shard.key()) {
                        pass.dropped += 1;
                    }
                }
            }
            if !self.pending.is_empty() {
                self.flush(&mut report).await;
            }
            if let Some(last) = page.last() {
                on_page(last.key(), page.len() as u64, self.pending.is_empty());
            }
            match (full, page.last()) {
                (true, Some(last)) => after = Some(last.key()),
                _ => break,
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
        self.stats.passes_completed += 1;
        if pass.dropped > 0 {
            tracing::warn!(
                dropped = pass.dropped,
                waiting = self.pending.len(),
                "too many unreported bad shards; the next pass finds the dropped ones again"
            );
        }
        Ok(pass)
    }

    /// Keeps a bad shard for reporting; false if it had to be dropped.
    fn retain(&mut self, key: [u8; KEY_LEN]) -> bool {
        if self.pending.len() >= MAX_RETAINED && !self.pending.contains(&key) {
            return false;
        }
        self.pending.insert(key);
        true
    }

    /// Reports waiting shards in batches until done or a report fails.
    async fn flush<R, F>(&mut self, report: &mut R)
    where
        R: FnMut(Vec<ShardKey>) -> F,
        F: Future<Output = Result<(), ReportError>>,
    {
        while !self.pending.is_empty() {
            let batch: Vec<[u8; KEY_LEN]> =
                self.pending.iter().take(REPORT_BATCH).copied().collect();
            let keys = batch
                .iter()
                .map(|key| {
                    let (fp, index) = split_key(key);
                    ShardKey {
                        token: Default::default(),
                        fingerprint: fp.0.to_vec(),
                        index: u32::from(index),
                    }
                })
                .collect();
            match report(keys).await {
                Ok(()) => {
                    for key in &batch {
                        self.pending.remove(key);
                    }
                    self.stats.bad_reported += batch.len() as u64;
                    if self.report_failing {
                        tracing::info!("bad-shard reports go through again");
                    }
                    self.report_failing = false;
                }
                Err(err) => {
                    let waiting = self.pending.len();
                    if self.report_failing {
                        tracing::debug!(%err, waiting, "bad shards still not reported");
                    } else {
                        tracing::warn!(%err, waiting, "cannot report bad shards; will retry");
                    }
                    self.report_failing = true;
                    return;
                }
            }
        }
    }
}

/// Scrubs forever: a pass every `period` (the first after
/// [`FIRST_PASS_DELAY`] or `period`, whichever is shorter, unless the
/// cursor says the last pass ended less than a period ago), reporting bad
/// shards through `meta` under the id in `server_id` once the heartbeat task
/// has set it, and its progress on `worker`. A pass the cursor shows under
/// way resumes where it was. Returns at once for a zero period. Run it as
/// a task and abort it on shutdown.
pub async fn run(
    store: Arc<ShardStore>,
    period: Duration,
    meta: RpcTransport,
    server_id: SharedServerId,
    worker: Arc<Worker>,
) {
    if period.is_zero() {
        return;
    }
    worker.set_throttle(format!("one pass per {}s", period.as_secs_f64()));
    worker.set_interval(period);
    let data_dir = store.data_dir().to_path_buf();
    let mut cursor = ScrubCursor::load(&data_dir);
    let mut wait = period.min(FIRST_PASS_DELAY);
    if let Some(ScrubCursor::Done { started_ns }) = cursor {
        wait = wait.max(period.saturating_sub(since(started_ns)));
    }
    worker.set_next_run(wait);
    tokio::time::sleep(wait).await;
    let client = MetaClient::new(meta);
    let mut report = move |shards: Vec<ShardKey>| {
        let mut client = client.clone();
        let id = server_id.get();
        async move {
            let server_id = id.ok_or(ReportError::NotRegistered)?;
            let count = shards.len();
            client
                .report_bad_shards(ReportBadShardsRequest { server_id, shards })
                .await?;
            tracing::info!(server_id, shards = count, "bad shards reported");
            Ok(())
        }
    };
    let mut scrubber = Scrubber::new(Arc::clone(&store));
    loop {
        let shards = store.usage().shard_count;
        let pace = page_delay(period, shards);
        let (started_ns, resume_after, mut verified) = match cursor.take() {
            Some(ScrubCursor::InPass {
                started_ns,
                verified,
                after,
            }) => {
                tracing::info!(shards, verified, page_delay = ?pace, "scrub pass resuming where it stopped");
                worker.resume(verified, shards);
                (started_ns, Some(after), verified)
            }
            _ => {
                tracing::info!(shards, page_delay = ?pace, "scrub pass starting");
                worker.start(shards);
                (now_ns(), None, 0)
            }
        };
        let mut save_failing = false;
        let on_page = |after: [u8; KEY_LEN], read: u64, all_reported: bool| {
            verified += read;
            worker.advance(read);
            // Bad shards not yet reported live only in memory: the cursor
            // stays before them, so a restart finds them again.
            if !all_reported {
                return;
            }
            let at = ScrubCursor::InPass {
                started_ns,
                verified,
                after,
            };
            match at.save(&data_dir) {
                Ok(()) => save_failing = false,
                Err(e) if !save_failing => {
                    save_failing = true;
                    tracing::warn!(error = %e, "cannot keep the scrub cursor; a restart begins the pass again");
                }
                Err(_) => {}
            }
        };
        let outcome = scrubber
            .scrub_pass_from(pace, resume_after, on_page, &mut report)
            .await;
        let next = period.saturating_sub(since(started_ns));
        match outcome {
            Ok(pass) => {
                let totals = scrubber.stats();
                tracing::info!(
                    verified = pass.verified,
                    bad = pass.bad,
                    elapsed = ?since(started_ns),
                    passes_completed = totals.passes_completed,
                    total_verified = totals.shards_verified,
                    total_bad = totals.bad_found,
                    total_reported = totals.bad_reported,
                    waiting_report = scrubber.pending(),
                    "scrub pass done"
                );
                if let Err(e) = (ScrubCursor::Done { started_ns }).save(&data_dir) {
                    tracing::warn!(error = %e, "cannot keep the scrub cursor");
                }
                worker.finish(
                    Ok(format!(
                        "{} shards verified, {} bad, {} waiting to be reported",
                        pass.verified,
                        pass.bad,
                        scrubber.pending()
                    )),
                    Some(next),
                );
            }
            Err(err) => {
                tracing::warn!(%err, "scrub pass stopped by a store error; trying again next period");
                worker.finish(Err(err.to_string()), Some(next));
            }
        }
        // tokio clamps a sleep past the end of time, so a huge period is safe.
        tokio::time::sleep(next).await;
    }
}

/// Time since `ns` (wall clock), zero for a time in the future.
fn since(ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(now_ns().saturating_sub(ns)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use dfs_core::fingerprint::Fingerprint;

    use dfs_core::shard_key::shard_key;

    fn fp(n: u16) -> Fingerprint {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&n.to_be_bytes());
        Fingerprint(b)
    }

    /// A store of `n` shards, with those in `bad` corrupted three ways.
    fn store_with(n: u16, bad: &[u16]) -> (tempfile::TempDir, Arc<ShardStore>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ShardStore::open(dir.path()).expect("open");
        for i in 0..n {
            let payload = vec![(i % 251) as u8; usize::from(i % 97)];
            store
                .put_batch(&[(fp(i), (i % 7) as u8, &payload[..])])
                .expect("put");
        }
        for (k, &i) in bad.iter().enumerate() {
            let index = (i % 7) as u8;
            let mut raw = store
                .raw_get_value(&fp(i), index)
                .expect("raw get")
                .expect("present");
            match k % 3 {
                0 => *raw.last_mut().expect("non-empty") ^= 0x40,
                1 => raw[0] = 42,
                _ => raw.truncate(3),
            }
            store.raw_put_value(&fp(i), index, &raw).expect("raw put");
        }
        (dir, Arc::new(store))
    }

    fn key_of(k: &ShardKey) -> [u8; KEY_LEN] {
        let fp = Fingerprint::from_slice(&k.fingerprint).expect("32 bytes");
        shard_key(&fp, u8::try_from(k.index).expect("index"))
    }

    /// A reporter that records what it is given, failing while `fail` holds.
    fn recorder(
        seen: &Arc<Mutex<Vec<Vec<ShardKey>>>>,
        fail: &Arc<Mutex<bool>>,
    ) -> impl FnMut(Vec<ShardKey>) -> std::future::Ready<Result<(), ReportError>> {
        let (seen, fail) = (Arc::clone(seen), Arc::clone(fail));
        move |keys| {
            if *fail.lock().expect("lock") {
                return std::future::ready(Err(ReportError::NotRegistered));
            }
            seen.lock().expect("lock").push(keys);
            std::future::ready(Ok(()))
        }
    }

    #[test]
    fn the_cursor_reads_back_what_was_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(ScrubCursor::load(dir.path()), None);
        for cursor in [
            ScrubCursor::InPass {
                started_ns: 1_700_000_000_000_000_000,
                verified: 4096,
                after: shard_key(&fp(9), 4),
            },
            ScrubCursor::Done { started_ns: 42 },
        ] {
            cursor.save(dir.path()).expect("save");
            assert_eq!(ScrubCursor::load(dir.path()), Some(cursor));
        }
        std::fs::write(dir.path().join(CURSOR_FILE), "pass 1 2 zz").expect("write");
        assert_eq!(
            ScrubCursor::load(dir.path()),
            None,
            "unreadable: start over"
        );
    }

    /// A scrubber stopped in the middle of a pass (its server restarted)
    /// reads only the shards after its cursor when it starts again, and
    /// the pass it finishes is the one it began.
    #[tokio::test]
    async fn a_restarted_scrubber_resumes_where_it_was() {
        let (dir, store) = store_with(2000, &[]);
        // 8 pages over 1.6 s: a page every 200 ms.
        let period = Duration::from_millis(1600);
        let nowhere = || {
            crate::heartbeat::lazy_meta_transport(
                "127.0.0.1:1",
                &dfs_core::tls::Security::Plaintext,
            )
            .expect("transport")
        };
        let first = tokio::spawn(run(
            Arc::clone(&store),
            period,
            nowhere(),
            SharedServerId::default(),
            Arc::new(Worker::new("scrub", "shards")),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(ScrubCursor::InPass { verified, .. }) = ScrubCursor::load(dir.path()) {
                if verified >= 512 {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pass never got going"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.abort();
        let _ = first.await;
        let Some(ScrubCursor::InPass {
            started_ns,
            verified,
            ..
        }) = ScrubCursor::load(dir.path())
        else {
            panic!("no cursor of a pass under way");
        };
        assert!(verified < 2000, "stopped in the middle");

        let worker = Arc::new(Worker::new("scrub", "shards"));
        let second = tokio::spawn(run(
            Arc::clone(&store),
            period,
            nowhere(),
            SharedServerId::default(),
            Arc::clone(&worker),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while worker.status("test").runs == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pass never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        second.abort();
        let status = worker.status("test");
        assert_eq!(
            status.summary,
            format!(
                "{} shards verified, 0 bad, 0 waiting to be reported",
                2000 - verified
            ),
            "only the shards after the cursor were read again"
        );
        // The pass took longer than its period, so the next may have begun.
        match ScrubCursor::load(dir.path()) {
            Some(ScrubCursor::Done { started_ns: done }) => assert_eq!(
                done, started_ns,
                "the pass that ended is the one begun before the restart"
            ),
            Some(ScrubCursor::InPass {
                started_ns: next, ..
            }) => assert!(next > started_ns, "a new pass after the resumed one"),
            None => panic!("the cursor is gone"),
        }
    }

    #[tokio::test]
    async fn a_pass_reports_exactly_the_bad_shards() {
        let (_dir, store) = store_with(300, &[17, 280]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(false));
        let mut scrubber = Scrubber::new(store);

        let pass = scrubber
            .scrub_pass(Duration::ZERO, recorder(&seen, &fail))
            .await
            .expect("pass");
        assert_eq!(
            pass,
            PassSummary {
                verified: 300,
                bad: 2,
                dropped: 0
            }
        );
        let reports = std::mem::take(&mut *seen.lock().expect("lock"));
        // One report per page that found one: 17 is in the first page of
        // 256, 280 in the second.
        assert_eq!(reports.len(), 2);
        let reported: Vec<[u8; KEY_LEN]> = reports.iter().flatten().map(key_of).collect();
        assert_eq!(
            reported,
            vec![shard_key(&fp(17), 3), shard_key(&fp(280), 0)]
        );
        assert_eq!(
            scrubber.stats(),
            ScrubStats {
                passes_completed: 1,
                shards_verified: 300,
                bad_found: 2,
                bad_reported: 2
            }
        );
        assert_eq!(scrubber.pending(), 0);
    }

    #[tokio::test]
    async fn failed_reports_are_kept_and_retried() {
        let (_dir, store) = store_with(600, &[1, 2, 300, 599]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(true));
        let mut scrubber = Scrubber::new(Arc::clone(&store));

        scrubber
            .scrub_pass(Duration::ZERO, recorder(&seen, &fail))
            .await
            .expect("pass");
        assert!(seen.lock().expect("lock").is_empty());
        assert_eq!(scrubber.pending(), 4);
        assert_eq!(scrubber.stats().bad_reported, 0);

        // The metadata server rebuilt one meanwhile. All four kept are
        // reported after the first page; 300, still bad when the pass gets
        // there, again after the second.
        store
            .put_batch(&[(fp(599), (599 % 7) as u8, &[1u8][..])])
            .expect("repair");
        *fail.lock().expect("lock") = false;
        let pass = scrubber
            .scrub_pass(Duration::ZERO, recorder(&seen, &fail))
            .await
            .expect("pass");
        assert_eq!((pass.verified, pass.bad), (600, 3));
        let reports: Vec<Vec<[u8; KEY_LEN]>> = seen
            .lock()
            .expect("lock")
            .iter()
            .map(|r| r.iter().map(key_of).collect())
            .collect();
        let key = |i: u16| shard_key(&fp(i), (i % 7) as u8);
        assert_eq!(
            reports,
            vec![vec![key(1), key(2), key(300), key(599)], vec![key(300)]]
        );
        assert_eq!(
            scrubber.stats(),
            ScrubStats {
                passes_completed: 2,
                shards_verified: 1200,
                bad_found: 7,
                bad_reported: 5
            }
        );
        assert_eq!(scrubber.pending(), 0);
    }

    #[tokio::test]
    async fn reports_go_in_batches_and_retention_is_bounded() {
        let (_dir, store) = store_with(10, &[]);
        let mut scrubber = Scrubber::new(store);
        for n in 0..MAX_RETAINED + 5 {
            let retained = scrubber.retain(shard_key(&fp((n / 256) as u16), (n % 256) as u8));
            assert_eq!(retained, n < MAX_RETAINED, "{n}");
        }
        // Already waiting: not a new entry, so kept.
        assert!(scrubber.retain(shard_key(&fp(0), 0)));
        assert_eq!(scrubber.pending(), MAX_RETAINED);

        let seen = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(false));
        scrubber.flush(&mut recorder(&seen, &fail)).await;
        let sizes: Vec<usize> = seen.lock().expect("lock").iter().map(Vec::len).collect();
        assert_eq!(sizes.len(), MAX_RETAINED / REPORT_BATCH);
        assert!(sizes.iter().all(|&s| s == REPORT_BATCH));
        assert_eq!(scrubber.pending(), 0);
        assert_eq!(scrubber.stats().bad_reported, MAX_RETAINED as u64);
    }

    #[test]
    fn pace_spreads_a_pass_over_the_period() {
        let week = DEFAULT_SCRUB_PERIOD;
        // An empty or small store: one page, capped.
        assert_eq!(page_delay(week, 0), MAX_PAGE_DELAY);
        assert_eq!(
            page_delay(Duration::from_secs(10), 100),
            Duration::from_secs(10)
        );
        // 256 Mi shards = 1 Mi pages over a week: about 577 ms each.
        let d = page_delay(week, 256 << 20);
        assert_eq!(d, week / (1 << 20));
        assert_eq!(page_delay(week, (256 << 20) + 1), week / ((1 << 20) + 1));
        assert_eq!(page_delay(Duration::ZERO, 1_000), Duration::ZERO);
        assert_eq!(page_delay(Duration::MAX, u64::MAX), MAX_PAGE_DELAY);
    }
}
