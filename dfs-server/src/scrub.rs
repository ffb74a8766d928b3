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
//! A report that fails (metadata server down, server not registered yet)
//! is kept and retried after the next page, and on the next pass. At most
//! [`MAX_RETAINED`] shards are kept; past that, new finds are dropped and
//! the next pass finds them again. A shard still bad when a pass reaches it
//! again is reported again: it has not been repaired yet, and a repeat is
//! safe, since repairing a shard twice writes the same bytes twice.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dfs_core::rpc::RpcTransport;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{ReportBadShardsRequest, ShardKey};
use tokio::time::Instant;

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
        mut report: R,
    ) -> Result<PassSummary, StoreError>
    where
        R: FnMut(Vec<ShardKey>) -> F,
        F: Future<Output = Result<(), ReportError>>,
    {
        let mut pass = PassSummary::default();
        let mut after: Option<[u8; KEY_LEN]> = None;
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
/// [`FIRST_PASS_DELAY`] or `period`, whichever is shorter), reporting bad
/// shards through `meta` under the id in `server_id` once the heartbeat task
/// has set it. Returns at once for a zero period. Run it as a task and abort
/// it on shutdown.
pub async fn run(
    store: Arc<ShardStore>,
    period: Duration,
    meta: RpcTransport,
    server_id: SharedServerId,
) {
    if period.is_zero() {
        return;
    }
    tokio::time::sleep(period.min(FIRST_PASS_DELAY)).await;
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
        let started = Instant::now();
        let shards = store.usage().shard_count;
        let pace = page_delay(period, shards);
        tracing::info!(shards, page_delay = ?pace, "scrub pass starting");
        match scrubber.scrub_pass(pace, &mut report).await {
            Ok(pass) => {
                let totals = scrubber.stats();
                tracing::info!(
                    verified = pass.verified,
                    bad = pass.bad,
                    elapsed = ?started.elapsed(),
                    passes_completed = totals.passes_completed,
                    total_verified = totals.shards_verified,
                    total_bad = totals.bad_found,
                    total_reported = totals.bad_reported,
                    waiting_report = scrubber.pending(),
                    "scrub pass done"
                );
            }
            Err(err) => {
                tracing::warn!(%err, "scrub pass stopped by a store error; trying again next period");
            }
        }
        // tokio clamps a sleep past the end of time, so a huge period is safe.
        tokio::time::sleep(period.saturating_sub(started.elapsed())).await;
    }
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
