//! Every metric a dfs process exports: name, kind, labels, help. The
//! recorder is told the help texts at start ([`describe_all`]), README's
//! list is printed from here (`dfs metrics list`), and tests check that a
//! live process exports nothing that is missing here.

/// How a metric behaves, as Prometheus types it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// The labels it carries besides `process` (on every metric).
    pub labels: &'static [&'static str],
    /// Which programs export it.
    pub exported_by: &'static str,
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    exported_by: &'static str,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        exported_by,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

// Names, one constant each: code records through these, never a literal.
pub const RPC_REQUESTS: &str = "dfs_rpc_requests_total";
pub const RPC_DURATION: &str = "dfs_rpc_request_duration_seconds";
pub const FUSE_OPERATIONS: &str = "dfs_fuse_operations_total";
pub const FUSE_DURATION: &str = "dfs_fuse_operation_duration_seconds";
pub const FUSE_ERRORS: &str = "dfs_fuse_errors_total";
pub const FUSE_READ_BYTES: &str = "dfs_fuse_read_bytes_total";
pub const FUSE_WRITTEN_BYTES: &str = "dfs_fuse_written_bytes_total";
pub const PIPELINE_BYTES: &str = "dfs_pipeline_bytes_total";
pub const DEDUP_HITS: &str = "dfs_dedup_hit_chunks_total";
pub const CHUNK_CACHE: &str = "dfs_chunk_cache_lookups_total";
pub const STORE_TRANSACTIONS: &str = "dfs_meta_transactions_total";
pub const STORE_RETRIES: &str = "dfs_meta_transaction_retries_total";
pub const STORE_DURATION: &str = "dfs_meta_transaction_duration_seconds";
pub const VOLUME_BYTES: &str = "dfs_volume_bytes";
pub const VOLUME_CHUNKS: &str = "dfs_volume_chunks";
pub const VOLUME_FILES: &str = "dfs_volume_files";
pub const VOLUME_DEDUP_RATIO: &str = "dfs_volume_dedup_ratio";
pub const VOLUME_COMPRESSION_RATIO: &str = "dfs_volume_compression_ratio";
pub const SERVERS: &str = "dfs_servers";
pub const REPAIR_CHUNKS: &str = "dfs_repair_chunks";
pub const WORKER_LAST_SUCCESS: &str = "dfs_worker_last_success_timestamp_seconds";
pub const WORKER_FAILING: &str = "dfs_worker_failing";
pub const WORKER_INTERVAL: &str = "dfs_worker_interval_seconds";
pub const SERVER_SHARDS: &str = "dfs_server_shards";
pub const SERVER_SHARD_BYTES: &str = "dfs_server_shard_bytes";
pub const SERVER_DISK_FREE_BYTES: &str = "dfs_server_disk_free_bytes";
pub const SERVER_DISK_TOTAL_BYTES: &str = "dfs_server_disk_total_bytes";
pub const SERVER_SHARDS_PUT: &str = "dfs_server_shards_put_total";
pub const SERVER_SHARD_BYTES_PUT: &str = "dfs_server_shard_bytes_put_total";
pub const SERVER_SHARDS_READ: &str = "dfs_server_shards_read_total";
pub const SERVER_CORRUPT_SHARDS: &str = "dfs_server_corrupt_shards_total";

pub const CATALOG: &[Metric] = &[
    metric(RPC_REQUESTS, Counter, &["service", "method", "errno"], "dfs-meta, dfs-server",
        "Requests served, by gRPC service and method, and the errno they were answered with (OK for none)."),
    metric(RPC_DURATION, Histogram, &["service", "method"], "dfs-meta, dfs-server",
        "Time from a request's arrival to its answer's headers."),
    metric(FUSE_OPERATIONS, Counter, &["op"], "dfs-mount",
        "Kernel requests answered, by FUSE operation."),
    metric(FUSE_DURATION, Histogram, &["op"], "dfs-mount",
        "Time to answer a kernel request, by FUSE operation."),
    metric(FUSE_ERRORS, Counter, &["op", "errno"], "dfs-mount",
        "Kernel requests answered with an error, by operation and errno."),
    metric(FUSE_READ_BYTES, Counter, &[], "dfs-mount",
        "Bytes returned to read requests."),
    metric(FUSE_WRITTEN_BYTES, Counter, &[], "dfs-mount",
        "Bytes accepted from write requests."),
    metric(PIPELINE_BYTES, Counter, &["stage"], "dfs-mount",
        "Bytes through each write-pipeline stage: cut (chunks written), compressed (out of the compressor, new chunks), inline (of those, kept in the metadata store), coded (shard bytes), uploaded (to chunk servers)."),
    metric(DEDUP_HITS, Counter, &[], "dfs-mount",
        "Chunks written that the volume already held (not uploaded)."),
    metric(CHUNK_CACHE, Counter, &["result"], "dfs-mount",
        "Chunks reads looked for in the client's chunk cache: hit, or miss (fetched from chunk servers)."),
    metric(STORE_TRANSACTIONS, Counter, &[], "dfs-meta",
        "Metadata store transactions committed."),
    metric(STORE_RETRIES, Counter, &[], "dfs-meta",
        "Metadata store transactions run again after a conflict."),
    metric(STORE_DURATION, Histogram, &["op"], "dfs-meta",
        "Time a metadata transaction took, by operation: waiting for the store, its reads and its commit (synced where the change must be durable)."),
    metric(VOLUME_BYTES, Gauge, &["kind"], "dfs-meta",
        "The volume's bytes: logical (what files hold), unique (after dedup), stored (after compression), raw (on chunk servers, with redundancy), inline (in the metadata store), unreferenced (waiting for GC)."),
    metric(VOLUME_CHUNKS, Gauge, &["state"], "dfs-meta",
        "Chunks in the dedup index: all (referenced), inline, unreferenced (waiting for GC)."),
    metric(VOLUME_FILES, Gauge, &[], "dfs-meta",
        "Inodes in the volume."),
    metric(VOLUME_DEDUP_RATIO, Gauge, &[], "dfs-meta",
        "Logical bytes over unique bytes."),
    metric(VOLUME_COMPRESSION_RATIO, Gauge, &[], "dfs-meta",
        "Unique bytes over stored bytes."),
    metric(SERVERS, Gauge, &["state"], "dfs-meta",
        "Registered chunk servers by state: up, suspect (heartbeats late), down."),
    metric(REPAIR_CHUNKS, Gauge, &["state"], "dfs-meta",
        "Chunks as the last repair scan found them: under_protected, lost, repaired (total since dfs-meta started)."),
    metric(WORKER_LAST_SUCCESS, Gauge, &["worker", "owner"], "dfs-meta",
        "When each scheduled background worker of the cluster (owner: the process running it; chunk servers' as of their last heartbeat) last finished a run without error, or began, in Unix seconds."),
    metric(WORKER_INTERVAL, Gauge, &["worker", "owner"], "dfs-meta",
        "How often each scheduled background worker is meant to run (a scrubber: its pass period), in seconds."),
    metric(WORKER_FAILING, Gauge, &["worker", "owner"], "dfs-meta",
        "1 while a background worker's last run failed (`dfs workers` shows the error)."),
    metric(SERVER_SHARDS, Gauge, &[], "dfs-server",
        "Shards this chunk server holds."),
    metric(SERVER_SHARD_BYTES, Gauge, &[], "dfs-server",
        "Payload bytes of the shards this chunk server holds."),
    metric(SERVER_DISK_FREE_BYTES, Gauge, &[], "dfs-server",
        "Bytes this chunk server may still store (its capacity or its file system's free space, less the reserve)."),
    metric(SERVER_DISK_TOTAL_BYTES, Gauge, &[], "dfs-server",
        "Size of the file system under this chunk server's data directory."),
    metric(SERVER_SHARDS_PUT, Counter, &[], "dfs-server",
        "Shards stored."),
    metric(SERVER_SHARD_BYTES_PUT, Counter, &[], "dfs-server",
        "Payload bytes of the shards stored."),
    metric(SERVER_SHARDS_READ, Counter, &[], "dfs-server",
        "Shards read for clients, dfs-meta and the scrubber."),
    metric(SERVER_CORRUPT_SHARDS, Counter, &[], "dfs-server",
        "Shards found failing their checksum (reads and scrubbing)."),
];

/// Tells the installed recorder every metric's help text.
pub fn describe_all() {
    for m in CATALOG {
        match m.kind {
            Counter => metrics::describe_counter!(m.name, m.help),
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// The catalog as a Markdown table (README's metrics list).
pub fn markdown() -> String {
    let mut out =
        String::from("| metric | type | labels | exported by | meaning |\n|---|---|---|---|---|\n");
    for m in CATALOG {
        let labels = if m.labels.is_empty() {
            "-".to_string()
        } else {
            m.labels.join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            labels,
            m.exported_by,
            m.help
        ));
    }
    out
}

/// The catalog entry a series name belongs to: its own name, or a
/// histogram's `_bucket`, `_sum` and `_count`.
pub fn find(series: &str) -> Option<&'static Metric> {
    CATALOG.iter().find(|m| {
        series == m.name
            || (m.kind == Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| series.strip_suffix(suffix) == Some(m.name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in CATALOG {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("dfs_"), "{}", m.name);
            assert!(
                m.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                m.name
            );
            match m.kind {
                Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Histogram => assert!(
                    m.name.ends_with("_seconds") || m.name.ends_with("_bytes"),
                    "{}",
                    m.name
                ),
                Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            assert!(!m.help.is_empty());
        }
        assert_eq!(
            find("dfs_rpc_request_duration_seconds_bucket").map(|m| m.name),
            Some(RPC_DURATION)
        );
        assert!(find("dfs_rpc_requests_total_bucket").is_none());
    }
}
