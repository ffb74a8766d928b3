//! Keeping every chunk at full protection.
//!
//! A repair scan walks the dedup index and finds shards that need
//! rebuilding:
//! - shards on a server that has been down longer than `rebuild_after`, or
//!   is not registered any more: rebuilt onto other servers (failure domains
//!   the chunk does not use yet first) and the record moved;
//! - shards missing from a server that (re)started since its last
//!   reconciliation: its listing is compared with the index once per
//!   registration (a restarted server is not trusted blindly), each
//!   apparent gap confirmed by asking for that shard, then rebuilt in place;
//! - shards a scrubber reported damaged: rebuilt and written over the bad
//!   copy.
//!
//! A rebuild reads the chunk's other shards, reconstructs the lost ones,
//! and checks the result against the chunk's SHA-256 before writing
//! anything. The record is updated only if it did not change meanwhile (a
//! GC mark or a client re-upload wins); a shard written for an abandoned
//! update is an orphan that garbage collection removes. Shards on servers
//! that are merely suspect or briefly down are counted as under-protected
//! but left alone: rebuilding on every restart would move data for nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use dfs_core::codec;
use dfs_core::erasure;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::placement::{is_full, Candidate, Ring};
use dfs_core::time::now_ns;
use dfs_proto::{ChunkRecord, ChunkState, ServerState, ServerStatus, ShardHealth, ShardKey};
use futures::stream::{self, StreamExt};
use prost::Message;

use super::servers;
use super::Maintenance;
use crate::error::Result;
use crate::keys;
use crate::registry;
use crate::store::{get_record, put_record};
use dfs_core::shard_key::wire_shard_key;

/// Index entries read per transaction during a scan.
const SCAN_PAGE: usize = 1000;
/// Chunks rebuilt at once.
const REPAIR_PARALLELISM: usize = 8;

/// The chunk servers as one scan sees them.
pub struct ServerView {
    pub by_id: HashMap<u32, ServerStatus>,
    /// Servers that are up and have room: where rebuilt shards may go.
    pub ring: Ring,
    rebuild_after_ms: i64,
}

impl ServerView {
    /// `trust_ages`: heartbeat ages say whether a server is gone (false
    /// right after the metadata server started).
    pub fn new(
        list: Vec<ServerStatus>,
        rebuild_after: std::time::Duration,
        trust_ages: bool,
    ) -> Self {
        let mut candidates = Vec::new();
        let mut by_id = HashMap::new();
        for status in list {
            let Some(rec) = status.record.as_ref() else {
                continue;
            };
            if status.state() == ServerState::Up && !is_full(rec.capacity_bytes, rec.used_bytes) {
                candidates.push(Candidate {
                    id: rec.id,
                    zone: rec.zone.clone(),
                    rack: rec.rack.clone(),
                    capacity_bytes: rec.capacity_bytes,
                });
            }
            by_id.insert(rec.id, status);
        }
        Self {
            by_id,
            ring: Ring::new(candidates),
            rebuild_after_ms: if trust_ages {
                i64::try_from(rebuild_after.as_millis()).unwrap_or(i64::MAX)
            } else {
                i64::MAX
            },
        }
    }

    pub fn is_up(&self, id: u32) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|s| s.state() == ServerState::Up)
    }

    /// Down for longer than `rebuild_after`, or not registered at all: its
    /// shards are lost for good and rebuilt elsewhere.
    pub fn is_gone(&self, id: u32) -> bool {
        match self.by_id.get(&id) {
            None => true,
            Some(s) => {
                s.state() == ServerState::Down && s.heartbeat_age_ms >= self.rebuild_after_ms
            }
        }
    }

    pub fn address(&self, id: u32) -> Option<&str> {
        self.by_id
            .get(&id)
            .and_then(|s| s.record.as_ref())
            .map(|r| r.address.as_str())
    }

    pub fn up_servers(&self) -> impl Iterator<Item = (u32, &ServerStatus)> {
        self.by_id
            .iter()
            .filter(|(_, s)| s.state() == ServerState::Up)
            .map(|(&id, s)| (id, s))
    }
}

/// Why a shard must be rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Its server is gone: rebuild it elsewhere.
    Gone,
    /// Its server is up but does not have it: rebuild it there.
    Absent,
    /// Its server has a damaged copy: rebuild it over that copy.
    Corrupt,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The lost shards were rebuilt and the record points at them.
    Repaired(usize),
    /// The record changed meanwhile (dead, moved, re-uploaded): nothing to do.
    Changed,
    /// Fewer readable shards than needed: the chunk cannot be rebuilt now.
    Unreadable,
    /// Rebuilding or storing failed (no server with room, a put failed, the
    /// shards did not verify); the next scan tries again.
    Failed(String),
}

/// What a scan learned about one chunk: shards on servers not up, shards
/// readable, shards needed, the repair outcome (if one was needed), and the
/// servers a listing found without their shard.
type ChunkResult = (usize, usize, usize, Option<Outcome>, Vec<u32>);

/// A chunk in a scan: fingerprint, record, shards to rebuild, and how
/// many shards sit on servers that are not up (but not gone).
type ChunkFaults = (Vec<u8>, ChunkRecord, BTreeMap<usize, Fault>, usize);

#[derive(Default, Debug, Clone, Copy)]
pub struct ScanSummary {
    pub scanned: u64,
    pub under_protected: u64,
    pub lost: u64,
    pub repaired: u64,
    pub shards_rebuilt: u64,
}

impl Maintenance {
    /// Reads shard `index` of chunk `fp` from server `server` at `address`.
    pub(super) async fn read_shard(
        &self,
        server: u32,
        address: &str,
        fp: &Fingerprint,
        index: usize,
    ) -> std::result::Result<Vec<u8>, dfs_core::error::DfsError> {
        let mut client = self.pool.client(server, address)?;
        client
            .get_shard(ShardKey {
                token: Vec::new(),
                fingerprint: fp.to_vec(),
                index: index as u32,
            })
            .await
            .map(|r| Vec::from(r.into_inner().data))
            .map_err(dfs_core::error::DfsError::from)
    }

    /// Rebuilds the `faults` of one chunk, at most `repair_rate` chunks a
    /// second. Never changes anything if the rebuilt shards do not verify
    /// against the fingerprint.
    pub async fn repair_chunk(
        &self,
        view: &ServerView,
        fingerprint: &[u8],
        rec: &ChunkRecord,
        mut faults: BTreeMap<usize, Fault>,
    ) -> Outcome {
        self.repair_pacer.take(1, &self.repair_worker).await;
        let Ok(fp) = Fingerprint::from_slice(fingerprint) else {
            return Outcome::Failed("malformed fingerprint in the index".into());
        };
        let layout = rec.layout.unwrap_or_default();
        let total = rec.shard_servers.len();
        let need = erasure::shards_needed(&layout);
        if total == 0 || need == 0 || total != erasure::shard_count(&layout) {
            return Outcome::Failed(format!("chunk {fp}: malformed index entry"));
        }
        // Read every other shard on a server that is up.
        let reads = (0..total)
            .filter(|i| !faults.contains_key(i) && view.is_up(rec.shard_servers[*i]))
            .map(|index| {
                let server = rec.shard_servers[index];
                let address = view.address(server).unwrap_or_default().to_string();
                async move { (index, self.read_shard(server, &address, &fp, index).await) }
            });
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; total];
        for (index, result) in futures::future::join_all(reads).await {
            match result {
                Ok(data) if data.len() == rec.shard_len as usize => shards[index] = Some(data),
                Ok(_) => {
                    faults.insert(index, Fault::Corrupt);
                }
                Err(e) if e.errno == libc::EBADMSG => {
                    faults.insert(index, Fault::Corrupt);
                }
                Err(e) if e.errno == libc::ENOENT => {
                    faults.insert(index, Fault::Absent);
                }
                Err(e) => {
                    tracing::debug!(chunk = %fp, shard = index, server_id = rec.shard_servers[index], error = %e, "shard unreadable during repair");
                }
            }
        }
        let have = shards.iter().filter(|s| s.is_some()).count();
        if have < need {
            return Outcome::Unreadable;
        }
        let all = match rebuild_and_verify(&fp, rec, shards) {
            Ok(all) => all,
            Err(e) => return Outcome::Failed(e),
        };

        // Where each rebuilt shard goes: back where it was when that server
        // is up, else a server (and failure domain) the chunk does not use.
        let mut new_servers = rec.shard_servers.clone();
        let movers: Vec<usize> = faults
            .iter()
            .filter(|(&i, &f)| f == Fault::Gone || !view.is_up(rec.shard_servers[i]))
            .map(|(&i, _)| i)
            .collect();
        if !movers.is_empty() {
            let kept: Vec<u32> = (0..total)
                .filter(|i| !movers.contains(i))
                .map(|i| rec.shard_servers[i])
                .collect();
            let leaving: Vec<u32> = movers.iter().map(|&i| rec.shard_servers[i]).collect();
            let placed = view
                .ring
                .place_beside(fp.as_bytes(), movers.len(), &kept, &leaving);
            if placed.len() != movers.len() {
                return Outcome::Failed(format!(
                    "chunk {fp}: no chunk server with room to rebuild {} shards on",
                    movers.len()
                ));
            }
            for (k, &i) in movers.iter().enumerate() {
                new_servers[i] = placed[k];
            }
        }
        let mut batches: BTreeMap<u32, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
        for &i in faults.keys() {
            batches
                .entry(new_servers[i])
                .or_default()
                .push((i as u32, all[i].clone()));
        }
        for (server, batch) in batches {
            let Some(address) = view.address(server) else {
                return Outcome::Failed(format!("chunk server {server} is not registered"));
            };
            let result = match self.pool.client(server, address) {
                Ok(mut client) => servers::put(&mut client, &fp, batch).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                return Outcome::Failed(format!(
                    "chunk {fp}: storing rebuilt shards on server {server} failed: {e}"
                ));
            }
        }

        let expected = rec.clone();
        let key = keys::hash(fp.as_bytes());
        let updated = self
            .txn("repair_commit", move |t| {
                let Some(mut current) = get_record::<ChunkRecord>(t, &key)? else {
                    return Ok(false);
                };
                // Unchanged: still live, same servers and same encoding (a
                // dead entry uploaded again may have been encoded otherwise).
                if current.state() != ChunkState::Live
                    || current.shard_servers != expected.shard_servers
                    || current.codec != expected.codec
                    || current.layout != expected.layout
                    || current.stored_len != expected.stored_len
                    || current.shard_len != expected.shard_len
                    || current.raw_len != expected.raw_len
                {
                    return Ok(false);
                }
                if current.shard_servers != new_servers {
                    current.shard_servers = new_servers.clone();
                    put_record(t, &key, &current);
                }
                Ok(true)
            })
            .await;
        match updated {
            Ok(true) => {
                tracing::info!(chunk = %fp, shards = faults.len(), "rebuilt shards");
                Outcome::Repaired(faults.len())
            }
            Ok(false) => Outcome::Changed,
            Err(e) => Outcome::Failed(format!("chunk {fp}: updating the index failed: {e}")),
        }
    }

    /// One pass over the whole index: counts under-protected and lost
    /// chunks and rebuilds what can be rebuilt.
    pub async fn repair_scan(&self) -> Result<ScanSummary> {
        let _one_at_a_time = self.scan_lock.lock().await;
        {
            let mut status = self.status.lock();
            status.scanning = true;
            status.scanned_chunks = 0;
        }
        let outcome = self.repair_scan_inner().await;
        let mut status = self.status.lock();
        status.scanning = false;
        if let Ok(summary) = &outcome {
            status.under_protected_chunks = summary.under_protected;
            status.lost_chunks = summary.lost;
            status.last_scan_ns = now_ns();
        }
        outcome
    }

    async fn repair_scan_inner(&self) -> Result<ScanSummary> {
        let view = self.view().await?;
        // Servers registered (restarted) since their shards were last
        // reconciled; recorded in the store, so a restart of the metadata
        // server does not list every server again.
        // One server per scan, so only one listing is held in memory.
        let mut listings: HashMap<u32, HashSet<Vec<u8>>> = HashMap::new();
        let mut reconciling: Vec<(u32, i64)> = Vec::new();
        let mut restarted: Vec<(u32, &ServerStatus)> = view
            .up_servers()
            .filter(|(_, s)| {
                s.record
                    .as_ref()
                    .is_some_and(|r| r.reconciled_ns != r.registered_ns)
            })
            .collect();
        restarted.sort_by_key(|(id, _)| *id);
        restarted.truncate(1);
        // Servers whose reconciliation could not be completed this scan.
        let mut unclean: HashSet<u32> = HashSet::new();
        for (id, status) in restarted {
            let Some(rec) = status.record.as_ref() else {
                continue;
            };
            let listed = match self.pool.client(id, &rec.address) {
                Ok(mut client) => servers::list_all(&mut client).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(shards) => {
                    let keys = shards
                        .into_iter()
                        .map(|s| wire_shard_key(&s.fingerprint, s.index))
                        .collect();
                    listings.insert(id, keys);
                    reconciling.push((id, rec.registered_ns));
                }
                Err(e) => {
                    tracing::warn!(server_id = id, error = %e, "cannot list a restarted server's shards; reconciling later")
                }
            }
        }

        let mut summary = ScanSummary::default();
        let (begin, end) = keys::tag_range(keys::HASH);
        let mut cursor = begin;
        loop {
            let from = cursor.clone();
            let end2 = end.clone();
            let rows = self
                .txn("repair_scan", move |t| {
                    Ok(t.range(&from, &end2, SCAN_PAGE, false)?)
                })
                .await?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            cursor = last.clone();
            cursor.push(0);
            let page_len = rows.len();

            // Faults per chunk, with the gaps a listing suggests still to
            // be confirmed (the chunk may be newer than the listing).
            let mut chunks: Vec<ChunkFaults> = Vec::new();
            let mut to_confirm: BTreeMap<u32, Vec<(usize, usize)>> = BTreeMap::new();
            for (key, value) in rows {
                let rec = match ChunkRecord::decode(value.as_slice()) {
                    Ok(rec) => rec,
                    Err(e) => {
                        tracing::error!(key = ?key, error = %e, "undecodable index entry; skipped");
                        continue;
                    }
                };
                if rec.state() != ChunkState::Live {
                    continue;
                }
                summary.scanned += 1;
                if !rec.is_sharded() {
                    // Kept by the metadata store itself, or in a pack on
                    // the cold store: nothing to rebuild.
                    continue;
                }
                let fingerprint = key[1..].to_vec();
                let mut faults = BTreeMap::new();
                let mut unavailable = 0;
                for (index, &server) in rec.shard_servers.iter().enumerate() {
                    if view.is_gone(server) {
                        faults.insert(index, Fault::Gone);
                    } else if !view.is_up(server) {
                        unavailable += 1;
                    } else if listings
                        .get(&server)
                        .is_some_and(|l| !l.contains(&wire_shard_key(&fingerprint, index as u32)))
                    {
                        to_confirm
                            .entry(server)
                            .or_default()
                            .push((chunks.len(), index));
                    }
                }
                chunks.push((fingerprint, rec, faults, unavailable));
            }
            for (server, wanted) in to_confirm {
                let keys: Vec<ShardKey> = wanted
                    .iter()
                    .map(|&(c, index)| ShardKey {
                        token: Default::default(),
                        fingerprint: chunks[c].0.clone(),
                        index: index as u32,
                    })
                    .collect();
                let address = view.address(server).unwrap_or_default().to_string();
                let health = match self.pool.client(server, &address) {
                    Ok(mut client) => servers::check(&mut client, &keys, false).await,
                    Err(e) => Err(e),
                };
                match health {
                    Ok(health) => {
                        for (&(c, index), h) in wanted.iter().zip(health) {
                            if h == ShardHealth::Missing {
                                chunks[c].2.insert(index, Fault::Absent);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(server_id = server, error = %e, "cannot confirm missing shards");
                        unclean.insert(server);
                    }
                }
            }

            let view_ref = &view;
            let results: Vec<ChunkResult> = stream::iter(chunks.into_iter().map(
                |(fp, rec, faults, unavailable)| async move {
                    let total = rec.shard_servers.len();
                    let need = erasure::shards_needed(&rec.layout.unwrap_or_default());
                    let lost_shards = faults.len() + unavailable;
                    let readable = total.saturating_sub(lost_shards);
                    if faults.is_empty() {
                        return (unavailable, readable, need, None, Vec::new());
                    }
                    let absent_on: Vec<u32> = faults
                        .iter()
                        .filter(|(_, &f)| f == Fault::Absent)
                        .map(|(&i, _)| rec.shard_servers[i])
                        .collect();
                    let outcome = self.repair_chunk(view_ref, &fp, &rec, faults).await;
                    match &outcome {
                        Outcome::Failed(why) => {
                            tracing::warn!(error = %why, "repair failed; retrying on the next scan")
                        }
                        // Counted as it happens: `dfs status` and the
                        // throttle's test see repairs one by one.
                        Outcome::Repaired(n) => {
                            let mut status = self.status.lock();
                            status.chunks_repaired += 1;
                            status.shards_rebuilt += *n as u64;
                        }
                        _ => {}
                    }
                    (unavailable, readable, need, Some(outcome), absent_on)
                },
            ))
            .buffer_unordered(REPAIR_PARALLELISM)
            .collect()
            .await;
            for (unavailable, readable, need, outcome, absent_on) in results {
                if matches!(outcome, Some(Outcome::Unreadable | Outcome::Failed(_))) {
                    // A gap found by the listing is still open: list again.
                    unclean.extend(absent_on);
                }
                let lost = match &outcome {
                    Some(Outcome::Unreadable) => true,
                    None => readable < need,
                    Some(_) => false,
                };
                if lost {
                    summary.lost += 1;
                }
                let repaired = match outcome {
                    None => true,
                    Some(Outcome::Repaired(n)) => {
                        summary.repaired += 1;
                        summary.shards_rebuilt += n as u64;
                        true
                    }
                    Some(Outcome::Changed) => true,
                    Some(Outcome::Unreadable | Outcome::Failed(_)) => false,
                };
                if !repaired || unavailable > 0 {
                    summary.under_protected += 1;
                }
            }
            self.repair_worker.advance(page_len as u64);
            self.status.lock().scanned_chunks += page_len as u64;
            // Counted into the status as they happened, not again at the end.
            summary.repaired = 0;
            summary.shards_rebuilt = 0;
        }
        for (id, registered_ns) in reconciling {
            if unclean.contains(&id) {
                tracing::warn!(
                    server_id = id,
                    "reconciliation incomplete; listing the server again next scan"
                );
                continue;
            }
            self.txn("reconciled", move |t| {
                registry::mark_reconciled(t, id, registered_ns)
            })
            .await?;
            tracing::info!(
                server_id = id,
                "shards of a restarted server reconciled with the index"
            );
        }
        Ok(summary)
    }

    /// Rebuilds the shards scrubbers reported damaged. Reports that could
    /// not be handled are kept for the next round.
    pub async fn repair_reported(&self) -> Result<()> {
        let reported = std::mem::take(&mut *self.reported.lock());
        if reported.is_empty() {
            return Ok(());
        }
        let mut retry = BTreeMap::new();
        let outcome = self.repair_reports(reported, &mut retry).await;
        // Whatever was not repaired (including after an error) waits for
        // the next round.
        let mut pending = self.reported.lock();
        for (fp, shards) in retry {
            pending.entry(fp).or_default().extend(shards);
        }
        outcome
    }

    async fn repair_reports(
        &self,
        reported: super::Reported,
        retry: &mut super::Reported,
    ) -> Result<()> {
        let view = match self.view().await {
            Ok(v) => v,
            Err(e) => {
                retry.extend(reported);
                return Err(e);
            }
        };
        let mut queue = reported.into_iter();
        while let Some((fingerprint, shards)) = queue.next() {
            let key = keys::hash(&fingerprint);
            let rec = match self
                .txn("repair_lookup", move |t| get_record::<ChunkRecord>(t, &key))
                .await
            {
                Ok(rec) => rec,
                Err(e) => {
                    retry.insert(fingerprint, shards);
                    retry.extend(queue);
                    return Err(e);
                }
            };
            let Some(rec) = rec.filter(|r| r.state() == ChunkState::Live) else {
                continue; // collected meanwhile
            };
            let faults: BTreeMap<usize, Fault> = shards
                .iter()
                .filter(|&&(index, server)| rec.shard_servers.get(index as usize) == Some(&server))
                .map(|&(index, _)| (index as usize, Fault::Corrupt))
                .collect();
            if faults.is_empty() {
                continue; // the shard moved: the bad copy is an orphan now
            }
            match self.repair_chunk(&view, &fingerprint, &rec, faults).await {
                Outcome::Repaired(n) => {
                    let mut status = self.status.lock();
                    status.chunks_repaired += 1;
                    status.shards_rebuilt += n as u64;
                }
                Outcome::Changed => {}
                Outcome::Unreadable | Outcome::Failed(_) => {
                    retry.insert(fingerprint, shards);
                }
            }
        }
        Ok(())
    }
}

/// Reconstructs every shard from the readable ones and checks that the
/// chunk they encode matches its fingerprint.
pub(super) fn rebuild_and_verify(
    fp: &Fingerprint,
    rec: &ChunkRecord,
    shards: Vec<Option<Vec<u8>>>,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    let layout = rec.layout.unwrap_or_default();
    let all = erasure::reconstruct_all(&layout, shards)
        .map_err(|e| format!("chunk {fp}: cannot rebuild shards: {e}"))?;
    let stored = erasure::decode(
        &layout,
        all.iter().cloned().map(Some).collect(),
        rec.stored_len as usize,
    )
    .map_err(|e| format!("chunk {fp}: rebuilt shards do not decode: {e}"))?;
    let raw = codec::decompress_i32(rec.codec, &stored, rec.raw_len as usize)
        .map_err(|e| format!("chunk {fp}: rebuilt chunk does not decompress: {e}"))?;
    if Fingerprint::of(&raw) != *fp {
        return Err(format!(
            "chunk {fp}: rebuilt chunk does not match its fingerprint (a shard is bad despite its checksum)"
        ));
    }
    Ok(all)
}
