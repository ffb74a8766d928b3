//! The file-system core in process, without FUSE: the embedded mode's real
//! metadata service and chunk server, reached through their RPC transports
//! with faults injected into the metadata calls, driven by random sequences
//! of namespace and data operations (proptest, which shrinks a failure to
//! a short sequence) and checked against a plain model after every step:
//! the directory's names, every file's bytes through its handle, and the
//! volume's reference counts (`fsck`: every chunk's stored count equals
//! the references from chunk maps, no chunk missing or lost).
//!
//! `DFS_MODEL_CASES` sets the number of cases (default below); the test
//! prints how many it ran and how many faults it injected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfs_core::codec::CodecPolicy;
use dfs_core::error::DfsError;
use dfs_core::rpc::{boxed_transport, BoxError, RpcTransport};
use dfs_core::xorshift::XorShift;
use dfs_mount::cache::ChunkCache;
use dfs_mount::client::{Cluster, Connector, MetaRpc};
use dfs_mount::embedded::Embedded;
use dfs_mount::fs::namespace::Caller;
use dfs_mount::fs::{Dfs, OpenFile};
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{
    CreateRequest, FileKind, FsckRequest, GcRequest, RenameRequest, SetAttrRequest,
    RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;

const DEFAULT_CASES: u32 = 3000;
/// Names a case's files take ("f0".."f3").
const NAMES: u8 = 4;
const MAX_OFFSET: u32 = 320 * 1024;
const MAX_LEN: u32 = 200 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Write {
        file: u8,
        offset: u32,
        len: u32,
        seed: u64,
        text: bool,
    },
    Truncate {
        file: u8,
        size: u32,
    },
    Fsync(u8),
    Reopen(u8),
    /// `flags`: 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
    Rename {
        from: u8,
        to: u8,
        flags: u32,
    },
    SetXattr {
        file: u8,
        key: u8,
        len: u8,
        seed: u64,
    },
    RemoveXattr {
        file: u8,
        key: u8,
    },
    Chmod {
        file: u8,
        mode: u32,
    },
    Unlink(u8),
    Punch {
        file: u8,
        offset: u32,
        len: u32,
    },
    Copy {
        from: u8,
        to: u8,
        offset_in: u32,
        offset_out: u32,
        len: u32,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES;
    prop_oneof![
        4 => name.clone().prop_map(Op::Create),
        6 => (name.clone(), 0..MAX_OFFSET, 1..MAX_LEN, any::<u64>(), any::<bool>()).prop_map(
            |(file, offset, len, seed, text)| Op::Write { file, offset, len, seed, text }
        ),
        2 => (name.clone(), 0..MAX_OFFSET + MAX_LEN)
            .prop_map(|(file, size)| Op::Truncate { file, size }),
        2 => name.clone().prop_map(Op::Fsync),
        2 => name.clone().prop_map(Op::Reopen),
        3 => (name.clone(), name.clone(), prop_oneof![Just(0), Just(RENAME_NOREPLACE), Just(RENAME_EXCHANGE)])
            .prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        2 => (name.clone(), 0..3u8, any::<u8>(), any::<u64>())
            .prop_map(|(file, key, len, seed)| Op::SetXattr { file, key, len, seed }),
        1 => (name.clone(), 0..3u8).prop_map(|(file, key)| Op::RemoveXattr { file, key }),
        1 => (name.clone(), 0..0o1000u32).prop_map(|(file, mode)| Op::Chmod { file, mode }),
        1 => name.clone().prop_map(Op::Unlink),
        1 => (name.clone(), 0..MAX_OFFSET, 1..MAX_LEN)
            .prop_map(|(file, offset, len)| Op::Punch { file, offset, len }),
        2 => (name.clone(), name, 0..MAX_OFFSET, 0..MAX_OFFSET, 1..MAX_LEN).prop_map(
            |(from, to, offset_in, offset_out, len)| Op::Copy { from, to, offset_in, offset_out, len }
        ),
        1 => Just(Op::Restart),
    ]
}

/// Bytes a write puts: text that compresses (small chunks go inline) or
/// random bytes that do not (chunks go to the chunk server).
fn content(len: u32, seed: u64, text: bool) -> Vec<u8> {
    if text {
        format!("line {seed} of a source file, fn f() {{ {} }}\n", seed % 97)
            .into_bytes()
            .into_iter()
            .cycle()
            .take(len as usize)
            .collect()
    } else {
        XorShift(seed | 1).bytes(len as usize)
    }
}

/// Fails every `period`-th metadata call before it reaches the service,
/// as a connection that drops would (retryable: the client must try again
/// and the outcome must not change).
#[derive(Default)]
struct Faults {
    period: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl Faults {
    fn fail_now(&self) -> bool {
        let period = self.period.load(Ordering::Relaxed);
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if period > 0 && n % period == period - 1 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn faulty(inner: RpcTransport, faults: Arc<Faults>) -> RpcTransport {
    boxed_transport(tower::service_fn(
        move |request: tonic::codegen::http::Request<tonic::body::Body>| {
            let inner = inner.clone();
            let faults = faults.clone();
            async move {
                if faults.fail_now() {
                    return Err(Box::new(tonic::Status::unavailable("injected fault")) as BoxError);
                }
                inner
                    .oneshot(request)
                    .await
                    .map_err(|e| Box::new(e) as BoxError)
            }
        },
    ))
}

struct Rig {
    embedded: Embedded,
    faults: Arc<Faults>,
    /// Operations that changed something (not skipped for want of a file).
    applied: AtomicU64,
    written: AtomicU64,
}

impl Rig {
    async fn start(path: &std::path::Path) -> Self {
        let embedded = Embedded::start(path).await.expect("embedded volume");
        Self {
            embedded,
            faults: Arc::new(Faults::default()),
            applied: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// A client core as a mount builds it, over the faulty transport.
    async fn client(&self) -> Result<Arc<Dfs>, DfsError> {
        let meta = faulty(self.embedded.meta.clone(), self.faults.clone());
        // Two transports to the same service: a failed call is tried again
        // at once on the other, so faults cost no back-off sleep.
        let rpc = MetaRpc::new(vec![meta.clone(), meta], Duration::from_secs(10));
        let connector: Connector = self.embedded.connector();
        let cluster = Cluster::connect(rpc, connector).await?;
        Ok(Arc::new(Dfs::new(
            cluster,
            ChunkCache::new(0),
            CodecPolicy::Lz4,
            0,
        )))
    }

    /// Metadata calls for the checks themselves, without faults.
    fn admin(&self) -> MetaClient<RpcTransport> {
        MetaClient::new(self.embedded.meta.clone())
    }
}

fn name(i: u8) -> Vec<u8> {
    format!("f{i}").into_bytes()
}

/// One case: its files live in their own directory; at the end they are
/// removed and garbage collected, so the volume stays small.
struct Case<'a> {
    rig: &'a Rig,
    dfs: Arc<Dfs>,
    dir: u64,
    dir_name: Vec<u8>,
    model: BTreeMap<u8, Vec<u8>>,
    /// Each file's extended attributes and permission bits, by name.
    xattrs: BTreeMap<u8, BTreeMap<Vec<u8>, Vec<u8>>>,
    modes: BTreeMap<u8, u32>,
    open: BTreeMap<u8, (u64, Arc<OpenFile>)>,
    /// fsck's findings when the case started.
    damage_before: Damage,
}

type Outcome = Result<(), String>;

fn err(context: &str) -> impl Fn(DfsError) -> String + '_ {
    move |e| format!("{context}: {} (errno {})", e.message, e.errno)
}

impl<'a> Case<'a> {
    async fn start(rig: &'a Rig, n: u64) -> Result<Case<'a>, String> {
        let (damage_before, _) = fsck(rig).await?;
        let dfs = rig.client().await.map_err(err("client"))?;
        let dir_name = format!("case-{n}").into_bytes();
        let dir = dfs
            .create(CreateRequest {
                parent: 1,
                name: dir_name.clone(),
                kind: FileKind::Directory as i32,
                mode: 0o755,
                ..Default::default()
            })
            .await
            .map_err(err("mkdir"))?
            .ino;
        Ok(Case {
            rig,
            dfs,
            dir,
            dir_name,
            model: BTreeMap::new(),
            xattrs: BTreeMap::new(),
            modes: BTreeMap::new(),
            open: BTreeMap::new(),
            damage_before,
        })
    }

    /// What the model holds, to tell whether an operation changed it.
    fn snapshot(&self) -> impl PartialEq {
        (
            self.model.clone(),
            self.xattrs.clone(),
            self.modes.clone(),
            self.open
                .iter()
                .map(|(&f, (ino, _))| (f, *ino))
                .collect::<Vec<_>>(),
        )
    }

    fn handle(&self, file: u8) -> Option<Arc<OpenFile>> {
        self.open.get(&file).map(|(_, of)| of.clone())
    }

    async fn apply(&mut self, op: &Op) -> Outcome {
        let dfs = self.dfs.clone();
        match *op {
            Op::Create(file) => {
                if self.model.contains_key(&file) {
                    return Ok(());
                }
                let attr = dfs
                    .create(CreateRequest {
                        parent: self.dir,
                        name: name(file),
                        kind: FileKind::Regular as i32,
                        mode: 0o644,
                        ..Default::default()
                    })
                    .await
                    .map_err(err("create"))?;
                let of = dfs
                    .open_created(attr.ino, attr.data_version)
                    .await
                    .map_err(err("open created"))?;
                self.open.insert(file, (attr.ino, of));
                self.model.insert(file, Vec::new());
                self.xattrs.insert(file, BTreeMap::new());
                self.modes.insert(file, 0o644);
            }
            Op::Write {
                file,
                offset,
                len,
                seed,
                text,
            } => {
                let Some(of) = self.handle(file) else {
                    return Ok(());
                };
                let data = content(len, seed, text);
                self.rig
                    .written
                    .fetch_add(u64::from(len), Ordering::Relaxed);
                {
                    let mut st = dfs.lock_for_write(&of).await;
                    dfs.write(&mut st, u64::from(offset), &data)
                        .await
                        .map_err(err("write"))?;
                    dfs.write_behind(&mut st).await;
                }
                let bytes = self.model.entry(file).or_default();
                let end = offset as usize + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[offset as usize..end].copy_from_slice(&data);
            }
            Op::Truncate { file, size } => {
                let Some(of) = self.handle(file) else {
                    return Ok(());
                };
                let mut st = dfs.lock(&of).await;
                dfs.truncate(&mut st, u64::from(size))
                    .await
                    .map_err(err("truncate"))?;
                self.model.entry(file).or_default().resize(size as usize, 0);
            }
            Op::Fsync(file) => {
                let Some(of) = self.handle(file) else {
                    return Ok(());
                };
                let mut st = dfs.lock(&of).await;
                dfs.flush(&mut st).await.map_err(err("fsync"))?;
            }
            Op::Reopen(file) => {
                let Some((ino, of)) = self.open.remove(&file) else {
                    return Ok(());
                };
                dfs.release(&of).await.map_err(err("close"))?;
                let of = dfs.open(ino).await.map_err(err("reopen"))?;
                self.open.insert(file, (ino, of));
            }
            Op::Rename { from, to, flags } => {
                if from == to || !self.model.contains_key(&from) {
                    return Ok(());
                }
                let target_exists = self.model.contains_key(&to);
                let request = RenameRequest {
                    parent: self.dir,
                    name: name(from),
                    new_parent: self.dir,
                    new_name: name(to),
                    flags,
                    ..Default::default()
                };
                let refused = match flags {
                    RENAME_NOREPLACE if target_exists => Some(libc::EEXIST),
                    RENAME_EXCHANGE if !target_exists => Some(libc::ENOENT),
                    _ => None,
                };
                if let Some(errno) = refused {
                    return match dfs.rename(request).await {
                        Err(e) if e.errno == errno => Ok(()),
                        other => Err(format!(
                            "rename with flags {flags}: {other:?}, not errno {errno}"
                        )),
                    };
                }
                if flags == RENAME_EXCHANGE {
                    dfs.rename(request).await.map_err(err("rename exchange"))?;
                    swap(&mut self.open, from, to);
                    swap(&mut self.model, from, to);
                    swap(&mut self.xattrs, from, to);
                    swap(&mut self.modes, from, to);
                    return Ok(());
                }
                // The replaced file is closed first (a file unlinked while
                // open is the FUSE tests' business).
                if let Some((_, of)) = self.open.remove(&to) {
                    dfs.release(&of).await.map_err(err("close replaced"))?;
                }
                dfs.rename(request).await.map_err(err("rename"))?;
                move_entry(&mut self.open, from, to);
                move_entry(&mut self.model, from, to);
                move_entry(&mut self.xattrs, from, to);
                move_entry(&mut self.modes, from, to);
            }
            Op::SetXattr {
                file,
                key,
                len,
                seed,
            } => {
                let Some((ino, _)) = self.open.get(&file) else {
                    return Ok(());
                };
                let key = format!("user.k{key}").into_bytes();
                let value = XorShift(seed | 1).bytes(usize::from(len));
                let in_group = |_gid| true;
                let caller = Caller {
                    uid: 0,
                    in_group: &in_group,
                };
                dfs.setxattr(*ino, &key, &value, 0, &caller)
                    .await
                    .map_err(err("setxattr"))?;
                self.xattrs.entry(file).or_default().insert(key, value);
            }
            Op::RemoveXattr { file, key } => {
                let Some((ino, _)) = self.open.get(&file) else {
                    return Ok(());
                };
                let key = format!("user.k{key}").into_bytes();
                let had = self.xattrs.entry(file).or_default().remove(&key).is_some();
                match dfs.removexattr(*ino, &key).await {
                    Ok(()) if had => {}
                    Err(e) if !had && e.errno == libc::ENODATA => {}
                    other => return Err(format!("removexattr (set: {had}): {other:?}")),
                }
            }
            Op::Chmod { file, mode } => {
                let Some((ino, _)) = self.open.get(&file) else {
                    return Ok(());
                };
                let request = SetAttrRequest {
                    ino: *ino,
                    mode: Some(mode),
                    ..Default::default()
                };
                dfs.setattr(*ino, request, None)
                    .await
                    .map_err(err("chmod"))?;
                self.modes.insert(file, mode);
            }
            Op::Unlink(file) => {
                let Some((_, of)) = self.open.remove(&file) else {
                    return Ok(());
                };
                dfs.release(&of).await.map_err(err("close"))?;
                dfs.unlink(self.dir, &name(file))
                    .await
                    .map_err(err("unlink"))?;
                self.model.remove(&file);
                self.xattrs.remove(&file);
                self.modes.remove(&file);
            }
            Op::Punch { file, offset, len } => {
                let Some(of) = self.handle(file) else {
                    return Ok(());
                };
                let mut st = dfs.lock(&of).await;
                dfs.punch_hole(&mut st, u64::from(offset), u64::from(len))
                    .await
                    .map_err(err("punch hole"))?;
                let bytes = self.model.entry(file).or_default();
                let end = (offset as usize + len as usize).min(bytes.len());
                if (offset as usize) < end {
                    bytes[offset as usize..end].fill(0);
                }
            }
            Op::Copy {
                from,
                to,
                offset_in,
                offset_out,
                len,
            } => {
                let (Some(src), Some(dst)) = (self.handle(from), self.handle(to)) else {
                    return Ok(());
                };
                if from == to {
                    return Ok(());
                }
                let copied = dfs
                    .copy_file_range(
                        &src,
                        &dst,
                        u64::from(offset_in),
                        u64::from(offset_out),
                        u64::from(len),
                    )
                    .await
                    .map_err(err("copy_file_range"))? as usize;
                let source = self.model.get(&from).cloned().unwrap_or_default();
                let want = source
                    .len()
                    .saturating_sub(offset_in as usize)
                    .min(len as usize);
                if copied != want {
                    return Err(format!("copy_file_range copied {copied} bytes, not {want}"));
                }
                if copied > 0 {
                    let piece = &source[offset_in as usize..offset_in as usize + copied];
                    let bytes = self.model.entry(to).or_default();
                    let end = offset_out as usize + copied;
                    if bytes.len() < end {
                        bytes.resize(end, 0);
                    }
                    bytes[offset_out as usize..end].copy_from_slice(piece);
                }
            }
            Op::Restart => {
                // Every handle closed (its bytes committed), then a new
                // client that knows nothing of the old one's state.
                for (_, of) in self.open.values() {
                    dfs.release(of).await.map_err(err("close for restart"))?;
                }
                self.dfs = self.rig.client().await.map_err(err("client"))?;
                for (ino, of) in self.open.values_mut() {
                    *of = self
                        .dfs
                        .open(*ino)
                        .await
                        .map_err(err("open after restart"))?;
                }
            }
        }
        Ok(())
    }

    /// The directory lists exactly the model's names, every file reads as
    /// the model says, and the volume's reference counts add up.
    async fn check(&self, step: usize) -> Outcome {
        let listed: Vec<Vec<u8>> = self
            .dfs
            .read_dir_all(self.dir, false)
            .await
            .map_err(err("readdir"))?
            .into_iter()
            .map(|e| e.name)
            .collect();
        let expected: Vec<Vec<u8>> = self.model.keys().map(|&f| name(f)).collect();
        if listed != expected {
            return Err(format!(
                "step {step}: the directory lists {:?}, the model {:?}",
                lossy(&listed),
                lossy(&expected)
            ));
        }
        for (file, want) in &self.model {
            let (ino, of) = self
                .open
                .get(file)
                .cloned()
                .ok_or_else(|| format!("step {step}: f{file} has no handle"))?;
            let attr = self.dfs.getattr(ino).await.map_err(err("getattr"))?;
            let mode = self.modes.get(file).copied().unwrap_or_default();
            if attr.mode & 0o7777 != mode {
                return Err(format!(
                    "step {step}: f{file} has mode {:o}, the model {mode:o}",
                    attr.mode & 0o7777
                ));
            }
            let xattrs = self.xattrs.get(file).cloned().unwrap_or_default();
            let names = self.dfs.listxattr(ino).await.map_err(err("listxattr"))?;
            let mut names_sorted = names.clone();
            names_sorted.sort();
            if names_sorted != xattrs.keys().cloned().collect::<Vec<_>>() {
                return Err(format!(
                    "step {step}: f{file} lists xattrs {:?}, the model {:?}",
                    lossy(&names_sorted),
                    lossy(&xattrs.keys().cloned().collect::<Vec<_>>())
                ));
            }
            for (key, value) in &xattrs {
                let got = self.dfs.getxattr(ino, key).await.map_err(err("getxattr"))?;
                if got != *value {
                    return Err(format!(
                        "step {step}: f{file} xattr {} differs",
                        String::from_utf8_lossy(key)
                    ));
                }
            }
            let st = self.dfs.lock(&of).await;
            let got = self
                .dfs
                .read_range(&st, 0, st.size)
                .await
                .map_err(err("read"))?;
            if got != *want {
                let first = got
                    .iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                return Err(format!(
                    "step {step}: f{file} reads {} bytes, the model has {}; first difference at {first}",
                    got.len(),
                    want.len()
                ));
            }
        }
        fsck_clean(self.rig, step, self.damage_before).await
    }

    /// Removes the case's files and directory.
    async fn finish(mut self) -> Outcome {
        for (file, (_, of)) in std::mem::take(&mut self.open) {
            self.dfs.release(&of).await.map_err(err("close at end"))?;
            self.dfs
                .unlink(self.dir, &name(file))
                .await
                .map_err(err("unlink at end"))?;
        }
        self.dfs
            .rmdir(1, &self.dir_name)
            .await
            .map_err(err("rmdir at end"))
    }
}

/// Swaps the entries of `a` and `b` (either may be absent).
fn swap<V>(map: &mut BTreeMap<u8, V>, a: u8, b: u8) {
    let va = map.remove(&a);
    let vb = map.remove(&b);
    if let Some(v) = va {
        map.insert(b, v);
    }
    if let Some(v) = vb {
        map.insert(a, v);
    }
}

/// Moves the entry of `from` to `to`, replacing what `to` had.
fn move_entry<V>(map: &mut BTreeMap<u8, V>, from: u8, to: u8) {
    map.remove(&to);
    if let Some(v) = map.remove(&from) {
        map.insert(to, v);
    }
}

fn lossy(names: &[Vec<u8>]) -> Vec<String> {
    names
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// What fsck counts as broken: reference-count mismatches, chunk-map
/// entries with no index entry, chunks that cannot be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Damage {
    refcounts: u64,
    missing: u64,
    lost: u64,
}

async fn fsck(rig: &Rig) -> Result<(Damage, Vec<String>), String> {
    let report = rig
        .admin()
        .fsck(FsckRequest {
            verify: false,
            orphan_grace_ns: i64::MAX,
        })
        .await
        .map_err(|s| format!("fsck: {s}"))?
        .into_inner();
    let damage = Damage {
        refcounts: report.refcount_mismatches,
        missing: report.missing_entries,
        lost: report.lost_chunks,
    };
    let problems = report
        .problems
        .into_iter()
        .take(3)
        .map(|p| p.detail)
        .collect();
    Ok((damage, problems))
}

/// Fails when fsck finds more damage than `before` (what earlier cases
/// left: the volume is shared, and a case is judged by what it adds, so
/// a failure shrinks to the case that caused it).
async fn fsck_clean(rig: &Rig, step: usize, before: Damage) -> Outcome {
    let (now, problems) = fsck(rig).await?;
    if now.refcounts > before.refcounts || now.missing > before.missing || now.lost > before.lost {
        return Err(format!(
            "step {step}: fsck found {} reference-count mismatches, {} missing entries, {} lost chunks (before the case: {before:?}): {problems:?}",
            now.refcounts, now.missing, now.lost
        ));
    }
    Ok(())
}

async fn run_case(rig: &Rig, n: u64, ops: &[Op], fault_period: u64) -> Outcome {
    rig.faults.period.store(fault_period, Ordering::Relaxed);
    let mut case = Case::start(rig, n).await?;
    let before = case.damage_before;
    for (step, op) in ops.iter().enumerate() {
        let state_before = case.snapshot();
        case.apply(op)
            .await
            .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
        if case.snapshot() != state_before
            || matches!(op, Op::Fsync(_) | Op::Reopen(_) | Op::Restart)
        {
            rig.applied.fetch_add(1, Ordering::Relaxed);
        }
        case.check(step).await?;
    }
    rig.faults.period.store(0, Ordering::Relaxed);
    case.finish().await?;
    // Nobody else writes: what the case left unreferenced can go at once.
    rig.admin()
        .gc(GcRequest {
            grace_ns: 0,
            clock_skew_ns: 0,
            orphans: true,
            orphan_grace_ns: 0,
        })
        .await
        .map_err(|s| format!("gc: {s}"))?;
    fsck_clean(rig, ops.len(), before).await
}

#[test]
fn the_core_matches_a_model_with_faults_and_restarts() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rt.block_on(Rig::start(dir.path()));
    let cases = std::env::var("DFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = AtomicU64::new(0);
    let started = std::time::Instant::now();
    let strategy = (proptest::collection::vec(op(), 1..24), 0u64..40);
    let result = runner.run(&strategy, |(ops, fault_period)| {
        let n = ran.fetch_add(1, Ordering::Relaxed);
        // Period 0 and 1 would mean no faults or only faults.
        let period = if fault_period < 2 { 0 } else { fault_period };
        rt.block_on(run_case(&rig, n, &ops, period))
            .map_err(TestCaseError::fail)
    });
    eprintln!(
        "figures: core model: {} cases run ({cases} asked), {} operations applied, {} MiB written, {} metadata calls failed by injection, {:.1} s",
        ran.load(Ordering::Relaxed),
        rig.applied.load(Ordering::Relaxed),
        rig.written.load(Ordering::Relaxed) >> 20,
        rig.faults.injected.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
