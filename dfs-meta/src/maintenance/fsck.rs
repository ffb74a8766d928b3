//! `dfs fsck`: the whole volume checked against the chunk servers.
//!
//! Walks every chunk-map entry (counting references per chunk), every
//! dedup entry (comparing the stored count, and checking each shard is
//! present on an up server, and with `verify` that its checksum holds;
//! an inline entry's bytes are decoded and checked against its
//! fingerprint), and
//! every shard the servers list (those no entry points at are orphans),
//! and that directory entries and their back-references agree.
//! Each page is its own transaction, so on a volume being written the
//! reference counts can differ transiently; on an idle volume every figure
//! is exact.

use std::collections::{HashMap, HashSet};

use dfs_core::erasure;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::inline;
use dfs_core::time::now_ns;
use dfs_proto::{
    ChunkRecord, ChunkRefRecord, ChunkState, FsckProblem, FsckReport, ShardHealth, ShardKey,
};
use prost::Message;

use super::servers;
use super::Maintenance;
use crate::error::Result;
use crate::keys;
use crate::namespace;
use crate::store::{decode_counter, get_record};
use dfs_core::shard_key::wire_shard_key;

/// Rows read per transaction (each index row also reads its count: far
/// under FoundationDB's 5 s).
const PAGE: usize = 1_000;
/// Problems listed by name in the report (all are counted).
const MAX_PROBLEMS: usize = 100;

#[derive(Clone, Copy, Debug, Default)]
pub struct FsckOptions {
    pub verify: bool,
    pub orphan_grace_ns: i64,
}

struct Listed {
    written_ns: i64,
    len: u64,
    health: ShardHealth,
    claimed: bool,
}

fn problem(report: &mut FsckReport, kind: &str, detail: String) {
    if report.problems.len() < MAX_PROBLEMS {
        report.problems.push(FsckProblem {
            kind: kind.into(),
            detail,
        });
    }
}

impl Maintenance {
    /// Checks a packed chunk: its pack is sealed in the index and its
    /// object is on the cold store (once per pack); with `verify`, the
    /// chunk itself is read back and checked against its fingerprint.
    async fn check_packed(
        &self,
        fp: &[u8],
        rec: &ChunkRecord,
        verify: bool,
        packs: &mut HashMap<u64, Option<String>>,
    ) -> std::result::Result<(), String> {
        let location = rec.packed.as_ref().ok_or("no pack location")?;
        let recall = self
            .recall()
            .ok_or("no cold store is configured (dfs-meta --cold-store)")?;
        let id = location.pack;
        let verdict = match packs.get(&id) {
            Some(known) => known.clone(),
            None => {
                let pack = self
                    .txn("fsck_pack", move |t| {
                        get_record::<dfs_proto::PackRecord>(t, &keys::pack(id))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let verdict = match pack {
                    None => Some(format!("pack {id} has no record")),
                    Some(p) if p.state() != dfs_proto::PackState::Sealed => {
                        Some(format!("pack {id} is not sealed"))
                    }
                    Some(p) => match recall.cold().size(&p.object).await {
                        Ok(size) if size == p.bytes => None,
                        Ok(size) => Some(format!("{} is {size} bytes, not {}", p.object, p.bytes)),
                        Err(e) => Some(e.to_string()),
                    },
                };
                packs.insert(id, verdict.clone());
                verdict
            }
        };
        if let Some(why) = verdict {
            return Err(why);
        }
        if verify {
            let id = Fingerprint::from_slice(fp).map_err(|e| e.to_string())?;
            recall.chunk(&id, rec).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Maintenance {
    pub async fn fsck(&self, options: FsckOptions) -> Result<FsckReport> {
        // Its size is the last run's, until this one ends.
        let (last, _) = self.fsck_worker.progress();
        self.fsck_worker.start(last);
        let outcome = self.fsck_inner(options).await;
        self.fsck_worker.finish(
            match &outcome {
                Ok(r) => Ok(format!(
                    "{} files, {} chunk references, {} problems",
                    r.files,
                    r.chunk_refs,
                    r.problems.len()
                )),
                Err(e) => Err(e.to_string()),
            },
            None,
        );
        outcome
    }

    async fn fsck_inner(&self, options: FsckOptions) -> Result<FsckReport> {
        let view = self.view().await?;
        let mut report = FsckReport::default();

        // What every up server holds.
        let mut held: HashMap<u32, HashMap<Vec<u8>, Listed>> = HashMap::new();
        for (id, status) in view.up_servers() {
            let Some(address) = status.record.as_ref().map(|r| r.address.clone()) else {
                continue;
            };
            let listed = match self.pool.client(id, &address) {
                Ok(mut client) => servers::list_all(&mut client).await.map(|l| (client, l)),
                Err(e) => Err(e),
            };
            let (mut client, listed) = match listed {
                Ok(x) => x,
                Err(e) => {
                    report.servers_unreachable += 1;
                    problem(
                        &mut report,
                        "server_unreachable",
                        format!("chunk server {id} ({address}): {e}"),
                    );
                    continue;
                }
            };
            self.fsck_worker.advance(listed.len() as u64);
            let mut health = vec![ShardHealth::Present; listed.len()];
            if options.verify {
                let keys: Vec<ShardKey> = listed
                    .iter()
                    .map(|s| ShardKey {
                        token: Default::default(),
                        fingerprint: s.fingerprint.clone(),
                        index: s.index,
                    })
                    .collect();
                match servers::check(&mut client, &keys, true).await {
                    Ok(h) => health = h,
                    Err(e) => {
                        report.servers_unreachable += 1;
                        problem(
                            &mut report,
                            "server_unreachable",
                            format!("chunk server {id}: verifying shards failed: {e}"),
                        );
                    }
                }
            }
            let map = listed
                .into_iter()
                .zip(health)
                .map(|(s, health)| {
                    (
                        wire_shard_key(&s.fingerprint, s.index),
                        Listed {
                            written_ns: s.written_ns,
                            len: s.len,
                            health,
                            claimed: false,
                        },
                    )
                })
                .collect();
            held.insert(id, map);
        }

        // References from chunk maps.
        let mut refs: HashMap<Vec<u8>, i64> = HashMap::new();
        let (begin, end) = keys::tag_range(keys::CHUNK);
        let mut cursor = begin;
        loop {
            let (from, to) = (cursor.clone(), end.clone());
            let rows = self
                .txn("fsck_chunk_maps", move |t| {
                    Ok(t.range(&from, &to, PAGE, false)?)
                })
                .await?;
            let Some((last, _)) = rows.last() else { break };
            cursor = last.clone();
            cursor.push(0);
            self.fsck_worker.advance(rows.len() as u64);
            for (key, value) in rows {
                let r = match ChunkRefRecord::decode(value.as_slice()) {
                    Ok(r) => r,
                    Err(e) => {
                        report.missing_entries += 1;
                        problem(
                            &mut report,
                            "corrupt_entry",
                            format!("chunk-map entry {key:?}: {e}"),
                        );
                        continue;
                    }
                };
                report.chunk_refs += 1;
                *refs.entry(r.fingerprint).or_default() += 1;
            }
        }
        report.files = self.txn("fsck_files", namespace::inode_count).await?;

        // Index entries, their counts and their shards.
        let (begin, end) = keys::tag_range(keys::HASH);
        let mut cursor = begin;
        let mut indexed: HashSet<Vec<u8>> = HashSet::new();
        // Packs looked at: id -> what was wrong with it (None: fine).
        let mut packs: HashMap<u64, Option<String>> = HashMap::new();
        let mut dictionaries = self
            .txn("fsck_dictionaries", crate::dictionary::load_all)
            .await?;
        loop {
            let (from, to) = (cursor.clone(), end.clone());
            let (rows, counts) = self
                .txn("fsck_index", move |t| {
                    let rows = t.range(&from, &to, PAGE, false)?;
                    let mut counts = HashMap::new();
                    for (key, _) in &rows {
                        let n = decode_counter(t.get(&keys::refs(&key[1..]))?.as_deref());
                        counts.insert(key[1..].to_vec(), n);
                    }
                    Ok((rows, counts))
                })
                .await?;
            let Some((last, _)) = rows.last() else { break };
            cursor = last.clone();
            cursor.push(0);
            self.fsck_worker.advance(rows.len() as u64);
            for (key, value) in rows {
                let fp = key[1..].to_vec();
                let rec = match ChunkRecord::decode(value.as_slice()) {
                    Ok(rec) => rec,
                    Err(e) => {
                        report.lost_chunks += 1;
                        problem(
                            &mut report,
                            "corrupt_entry",
                            format!("index entry of chunk {}: {e}", hex::encode(&fp)),
                        );
                        continue;
                    }
                };
                // Shards of dead entries are claimed too: gc deletes them.
                for (index, server) in rec.shard_servers.iter().enumerate() {
                    if let Some(l) = held
                        .get_mut(server)
                        .and_then(|m| m.get_mut(&wire_shard_key(&fp, index as u32)))
                    {
                        l.claimed = true;
                    }
                }
                if rec.state() == ChunkState::Dead {
                    report.dead_chunks += 1;
                    continue;
                }
                report.chunks += 1;
                indexed.insert(fp.clone());
                let stored = counts.get(&fp).copied().unwrap_or(0);
                let actual = refs.get(&fp).copied().unwrap_or(0);
                if stored != actual {
                    report.refcount_mismatches += 1;
                    problem(
                        &mut report,
                        "refcount",
                        format!(
                            "chunk {}: stored count {stored}, chunk maps reference it {actual} times",
                            hex::encode(&fp)
                        ),
                    );
                }
                if rec.is_inline() {
                    // No shards: the bytes are in the entry, as safe as the
                    // metadata store. With `verify`, decoded and checked.
                    let id = rec.dictionary;
                    if id != 0 && !dictionaries.contains_key(&id) {
                        // Trained since this run began.
                        if let Some(d) = self
                            .txn("fsck_dictionary", move |t| crate::dictionary::get(t, id))
                            .await?
                        {
                            let d = dfs_core::dictionary::Dictionary::new(id, d.data);
                            dictionaries.insert(id, std::sync::Arc::new(d));
                        }
                    }
                    let dictionary = dictionaries.get(&id).map(|d| d.as_ref());
                    let checked = match Fingerprint::from_slice(&fp) {
                        Ok(_) if rec.dictionary != 0 && dictionary.is_none() => {
                            Err(inline::InlineError::NeedsDictionary(rec.dictionary))
                        }
                        Ok(id) if options.verify => {
                            inline::decode(&id, &rec, dictionary).map(|_| ())
                        }
                        Ok(_) => inline::check_shape(&rec, inline::MAX_INLINE_BYTES),
                        Err(e) => Err(inline::InlineError::Malformed(e.to_string())),
                    };
                    match checked {
                        Ok(()) => report.healthy_chunks += 1,
                        Err(e) => {
                            report.lost_chunks += 1;
                            problem(
                                &mut report,
                                "lost_chunk",
                                format!("inline chunk {}: {e}", hex::encode(&fp)),
                            );
                        }
                    }
                    continue;
                }
                if rec.is_packed() {
                    // In a pack on the cold store: its object must be
                    // there; with `verify`, the chunk is read back.
                    match self
                        .check_packed(&fp, &rec, options.verify, &mut packs)
                        .await
                    {
                        Ok(()) => report.healthy_chunks += 1,
                        Err(e) => {
                            report.lost_chunks += 1;
                            problem(
                                &mut report,
                                "lost_chunk",
                                format!("packed chunk {}: {e}", hex::encode(&fp)),
                            );
                        }
                    }
                    continue;
                }
                let layout = rec.layout.unwrap_or_default();
                let need = erasure::shards_needed(&layout);
                let mut good = 0usize;
                let mut bad_here = Vec::new();
                for (index, &server) in rec.shard_servers.iter().enumerate() {
                    report.shards_checked += 1;
                    let listed = held
                        .get(&server)
                        .and_then(|m| m.get(&wire_shard_key(&fp, index as u32)));
                    match listed {
                        Some(l) if l.health == ShardHealth::Corrupt => {
                            report.corrupt_shards += 1;
                            bad_here.push(format!("{index}@{server}: corrupt"));
                        }
                        Some(_) => good += 1,
                        None if !view.is_up(server) => {
                            bad_here.push(format!("{index}@{server}: server not up"))
                        }
                        None => bad_here.push(format!("{index}@{server}: missing")),
                    }
                }
                if good == rec.shard_servers.len() && good > 0 {
                    report.healthy_chunks += 1;
                } else if good >= need && need > 0 {
                    report.under_protected_chunks += 1;
                    problem(
                        &mut report,
                        "under_protected",
                        format!("chunk {}: {}", hex::encode(&fp), bad_here.join(", ")),
                    );
                } else {
                    report.lost_chunks += 1;
                    problem(
                        &mut report,
                        "lost_chunk",
                        format!(
                            "chunk {}: {good} of {need} needed shards readable ({})",
                            hex::encode(&fp),
                            bad_here.join(", ")
                        ),
                    );
                }
            }
        }
        for tag in [keys::DIRENT, keys::BACKREF] {
            let mut from = Vec::new();
            loop {
                let start = from.clone();
                let (problems, next) = self
                    .txn("fsck_links", move |t| {
                        crate::confine::link_problems(t, tag, &start, PAGE)
                    })
                    .await?;
                report.link_mismatches += problems.len() as u64;
                for detail in problems {
                    problem(&mut report, "link_mismatch", detail);
                }
                match next {
                    Some(key) => from = key,
                    None => break,
                }
            }
        }
        for (fp, n) in &refs {
            if !indexed.contains(fp) {
                report.missing_entries += 1;
                problem(
                    &mut report,
                    "missing_entry",
                    format!(
                        "chunk {}: referenced {n} times but has no live index entry",
                        hex::encode(fp)
                    ),
                );
            }
        }

        let cut = now_ns().saturating_sub(options.orphan_grace_ns);
        let mut orphans: Vec<(u32, Vec<u8>, u64)> = Vec::new();
        for (server, shards) in &held {
            for (key, l) in shards {
                if !l.claimed && l.written_ns < cut {
                    orphans.push((*server, key.clone(), l.len));
                }
            }
        }
        orphans.sort();
        for (server, key, len) in orphans {
            report.orphan_shards += 1;
            report.orphan_bytes += len;
            let (fp, index) = key.split_at(key.len().saturating_sub(1));
            problem(
                &mut report,
                "orphan_shard",
                format!(
                    "server {server}: shard {} of chunk {} ({len} bytes) is not in the index",
                    index.first().copied().unwrap_or(0),
                    hex::encode(fp)
                ),
            );
        }
        Ok(report)
    }
}
