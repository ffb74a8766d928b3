//! The volume's figures as Prometheus gauges (issue 20): what `dfs stats`
//! and `dfs status` print, published every [`GAUGE_PERIOD`] while metrics
//! are on. `dfs stats` scans the dedup index, so not at every scrape.

use std::time::Duration;

use dfs_core::telemetry::catalog::{
    REPAIR_CHUNKS, SERVERS, STORE_RETRIES, STORE_TRANSACTIONS, VOLUME_BYTES, VOLUME_CHUNKS,
    VOLUME_COMPRESSION_RATIO, VOLUME_DEDUP_RATIO, VOLUME_FILES, WORKER_FAILING, WORKER_INTERVAL,
    WORKER_LAST_SUCCESS,
};
use dfs_proto::meta_server::Meta;
use dfs_proto::{Empty, ServerState, StatsReply};
use metrics::{counter, gauge};
use tonic::Request;

use super::MetaService;
use crate::error::Result;
use crate::registry::Liveness;
use crate::store::KvTxn;
use crate::{chunkmap, namespace, registry};

/// Between two refreshes of the volume gauges, at least.
pub const GAUGE_PERIOD: Duration = Duration::from_secs(15);

/// The volume figures come from a scan of the dedup index, which grows
/// with the volume: the wait after a refresh is at least this many times
/// what the refresh took, so that it costs at most 1% of one core however
/// large the volume (a 3 s scan: a refresh every 5 minutes).
const REFRESH_COST_SHARE: u32 = 100;

/// The volume's figures, as `dfs stats` prints them: a scan of the dedup
/// index, the inode count, the servers' shard bytes.
pub(super) fn volume_stats(t: &mut dyn KvTxn, liveness: &Liveness, now: i64) -> Result<StatsReply> {
    let mut stats = chunkmap::stats(t)?;
    stats.files = namespace::inode_count(t)?;
    stats.dictionary_id = crate::dictionary::latest(t)?.map_or(0, |d| d.id);
    stats.raw_bytes = registry::list(t, liveness, now)?
        .iter()
        .filter_map(|s| s.record.as_ref())
        .map(|r| r.shard_bytes)
        .sum();
    Ok(stats)
}

impl MetaService {
    /// Refreshes the gauges now, then every [`GAUGE_PERIOD`] or more
    /// ([`REFRESH_COST_SHARE`]), for ever.
    pub async fn publish_gauges(self) {
        loop {
            let started = std::time::Instant::now();
            self.publish_once().await;
            tokio::time::sleep(next_refresh_after(started.elapsed())).await;
        }
    }

    async fn publish_once(&self) {
        let (transactions, retries) = crate::store::transaction_counts();
        counter!(STORE_TRANSACTIONS).absolute(transactions);
        counter!(STORE_RETRIES).absolute(retries);
        match self.stats(Request::new(Empty {})).await {
            Ok(stats) => {
                let s = stats.into_inner();
                for (kind, value) in [
                    ("logical", s.logical_bytes),
                    ("unique", s.unique_bytes),
                    ("stored", s.stored_bytes),
                    ("raw", s.raw_bytes),
                    ("inline", s.inline_bytes),
                    ("staged", s.staged_bytes),
                    ("unreferenced", s.unreferenced_bytes),
                ] {
                    gauge!(VOLUME_BYTES, "kind" => kind).set(value as f64);
                }
                gauge!(VOLUME_CHUNKS, "state" => "all").set(s.chunks as f64);
                gauge!(VOLUME_CHUNKS, "state" => "inline").set(s.inline_chunks as f64);
                gauge!(VOLUME_CHUNKS, "state" => "staged").set(s.staged_chunks as f64);
                gauge!(VOLUME_CHUNKS, "state" => "unreferenced").set(s.unreferenced_chunks as f64);
                gauge!(VOLUME_FILES).set(s.files as f64);
                gauge!(VOLUME_DEDUP_RATIO).set(ratio(s.logical_bytes, s.unique_bytes));
                gauge!(VOLUME_COMPRESSION_RATIO).set(ratio(s.unique_bytes, s.stored_bytes));
            }
            Err(e) => tracing::warn!(error = %e.message(), "metrics: volume figures unavailable"),
        }
        match self.list_servers(Request::new(Empty {})).await {
            Ok(list) => {
                let list = list.into_inner();
                let (mut up, mut suspect, mut down) = (0u64, 0u64, 0u64);
                for s in &list.servers {
                    match s.state() {
                        ServerState::Up => up += 1,
                        ServerState::Suspect => suspect += 1,
                        ServerState::Down => down += 1,
                    }
                }
                for (state, n) in [("up", up), ("suspect", suspect), ("down", down)] {
                    gauge!(SERVERS, "state" => state).set(n as f64);
                }
                let repair = list.repair.unwrap_or_default();
                gauge!(REPAIR_CHUNKS, "state" => "under_protected")
                    .set(repair.under_protected_chunks as f64);
                gauge!(REPAIR_CHUNKS, "state" => "lost").set(repair.lost_chunks as f64);
                gauge!(REPAIR_CHUNKS, "state" => "repaired").set(repair.chunks_repaired as f64);
            }
            Err(e) => tracing::warn!(error = %e.message(), "metrics: server list unavailable"),
        }
        for w in self.maintenance.cluster_workers() {
            let labels = [("worker", w.name.clone()), ("owner", w.process.clone())];
            gauge!(WORKER_FAILING, &labels).set(if w.state == "failed" { 1.0 } else { 0.0 });
            // Only scheduled workers can stall: an on-demand one (fsck,
            // gc with --gc-interval 0) has no time it is due.
            if w.interval_ns > 0 {
                gauge!(WORKER_LAST_SUCCESS, &labels).set(w.last_success_ns as f64 / 1e9);
                gauge!(WORKER_INTERVAL, &labels).set(w.interval_ns as f64 / 1e9);
            }
        }
    }
}

/// The wait before the next refresh, after one that took `took`.
fn next_refresh_after(took: Duration) -> Duration {
    GAUGE_PERIOD.max(took.saturating_mul(REFRESH_COST_SHARE))
}

/// `a / b`, 1 for an empty volume.
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_refresh_waits_longer() {
        assert_eq!(next_refresh_after(Duration::from_millis(20)), GAUGE_PERIOD);
        assert_eq!(
            next_refresh_after(Duration::from_secs(3)),
            Duration::from_secs(300)
        );
    }
}
