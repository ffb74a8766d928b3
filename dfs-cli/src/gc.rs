//! `dfs gc` and `dfs fsck`: the metadata server does the work (it holds
//! the index and reaches every chunk server); these print its reports.

use serde::Serialize;

/// `dfs gc --json` keys (see `GcReport` in dfs.proto).
#[derive(Serialize, Debug)]
pub struct GcJson {
    pub scanned: u64,
    pub waiting: u64,
    pub chunks_freed: u64,
    pub shards_deleted: u64,
    pub bytes_freed: u64,
    pub chunks_pending: u64,
    pub orphan_shards_deleted: u64,
    pub orphan_bytes_freed: u64,
    pub orphan_shards_young: u64,
    pub servers_unreachable: u64,
}

impl From<dfs_proto::GcReport> for GcJson {
    fn from(r: dfs_proto::GcReport) -> Self {
        Self {
            scanned: r.scanned,
            waiting: r.waiting,
            chunks_freed: r.chunks_freed,
            shards_deleted: r.shards_deleted,
            bytes_freed: r.bytes_freed,
            chunks_pending: r.chunks_pending,
            orphan_shards_deleted: r.orphan_shards_deleted,
            orphan_bytes_freed: r.orphan_bytes_freed,
            orphan_shards_young: r.orphan_shards_young,
            servers_unreachable: r.servers_unreachable,
        }
    }
}

pub fn print_gc(r: &GcJson) {
    println!("index entries scanned   {:>12}", r.scanned);
    println!("waiting (grace period)  {:>12}", r.waiting);
    println!("chunks freed            {:>12}", r.chunks_freed);
    println!("shards deleted          {:>12}", r.shards_deleted);
    println!("bytes freed             {:>12}", r.bytes_freed);
    println!("chunks pending          {:>12}", r.chunks_pending);
    println!("orphan shards deleted   {:>12}", r.orphan_shards_deleted);
    println!("orphan bytes freed      {:>12}", r.orphan_bytes_freed);
    println!("orphans in grace period {:>12}", r.orphan_shards_young);
    println!("servers unreachable     {:>12}", r.servers_unreachable);
}

#[derive(Serialize, Debug)]
pub struct Problem {
    pub kind: String,
    pub detail: String,
}

/// `dfs fsck --json` keys (see `FsckReport` in dfs.proto).
#[derive(Serialize, Debug)]
pub struct FsckJson {
    pub files: u64,
    pub chunk_refs: u64,
    pub chunks: u64,
    pub healthy_chunks: u64,
    pub under_protected_chunks: u64,
    pub lost_chunks: u64,
    pub missing_entries: u64,
    pub refcount_mismatches: u64,
    pub link_mismatches: u64,
    pub dead_chunks: u64,
    pub orphan_shards: u64,
    pub orphan_bytes: u64,
    pub corrupt_shards: u64,
    pub shards_checked: u64,
    pub servers_unreachable: u64,
    pub problems: Vec<Problem>,
    /// True when nothing threatens data: no lost, under-protected or
    /// corrupt chunk, no missing entry, no wrong count, no directory
    /// entry and back-reference that disagree, every server
    /// reachable. Orphans only waste space and do not count.
    pub clean: bool,
}

impl From<dfs_proto::FsckReport> for FsckJson {
    fn from(r: dfs_proto::FsckReport) -> Self {
        let clean = r.lost_chunks == 0
            && r.under_protected_chunks == 0
            && r.missing_entries == 0
            && r.refcount_mismatches == 0
            && r.link_mismatches == 0
            && r.corrupt_shards == 0
            && r.servers_unreachable == 0;
        Self {
            files: r.files,
            chunk_refs: r.chunk_refs,
            chunks: r.chunks,
            healthy_chunks: r.healthy_chunks,
            under_protected_chunks: r.under_protected_chunks,
            lost_chunks: r.lost_chunks,
            missing_entries: r.missing_entries,
            refcount_mismatches: r.refcount_mismatches,
            link_mismatches: r.link_mismatches,
            dead_chunks: r.dead_chunks,
            orphan_shards: r.orphan_shards,
            orphan_bytes: r.orphan_bytes,
            corrupt_shards: r.corrupt_shards,
            shards_checked: r.shards_checked,
            servers_unreachable: r.servers_unreachable,
            problems: r
                .problems
                .into_iter()
                .map(|p| Problem {
                    kind: p.kind,
                    detail: p.detail,
                })
                .collect(),
            clean,
        }
    }
}

pub fn print_fsck(r: &FsckJson) {
    for p in &r.problems {
        println!("{:<18} {}", p.kind, p.detail);
    }
    println!("files                   {:>12}", r.files);
    println!("chunk-map entries       {:>12}", r.chunk_refs);
    println!("chunks                  {:>12}", r.chunks);
    println!("  healthy               {:>12}", r.healthy_chunks);
    println!("  under-protected       {:>12}", r.under_protected_chunks);
    println!("  lost                  {:>12}", r.lost_chunks);
    println!("shards checked          {:>12}", r.shards_checked);
    println!("corrupt shards          {:>12}", r.corrupt_shards);
    println!("missing index entries   {:>12}", r.missing_entries);
    println!("wrong reference counts  {:>12}", r.refcount_mismatches);
    println!("entries without links   {:>12}", r.link_mismatches);
    println!("dead chunks (for gc)    {:>12}", r.dead_chunks);
    println!(
        "orphan shards           {:>12}  ({} bytes)",
        r.orphan_shards, r.orphan_bytes
    );
    println!("servers unreachable     {:>12}", r.servers_unreachable);
    println!("{}", if r.clean { "clean" } else { "PROBLEMS FOUND" });
}
