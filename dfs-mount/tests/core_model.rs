//! The file-system core in process, without FUSE, called as the FUSE
//! adapter calls it (`Handles`, one method per kernel request): the embedded mode's real
//! metadata service and chunk server, reached through their RPC transports
//! with faults injected into the metadata calls, driven by random sequences
//! of namespace and data operations (proptest, which shrinks a failure to
//! a short sequence) and checked against a plain model after every step:
//! the directory's names and kinds, every file's links, mode, xattrs and
//! bytes through its handle, and the volume's reference counts (`fsck`: every chunk's stored count equals
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
use dfs_mount::fs::handles::Handles;
use dfs_mount::fs::known_names::Views;
use dfs_mount::fs::namespace::{Caller, Fallocate};
use dfs_mount::fs::Dfs;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{
    CreateRequest, FileKind, FsckRequest, GcRequest, RenameRequest, SetAttrRequest,
    RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;

const DEFAULT_CASES: u32 = 3000;
/// Names a case's files and directories take ("f0".."f4").
const NAMES: u8 = 5;
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
    Mkdir(u8),
    Rmdir(u8),
    /// A hard link `to` of the file named `from`.
    Link {
        from: u8,
        to: u8,
    },
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
        1 => name.clone().prop_map(Op::Mkdir),
        1 => name.clone().prop_map(Op::Rmdir),
        2 => (name.clone(), name.clone()).prop_map(|(from, to)| Op::Link { from, to }),
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
    /// `lease_client`: the id under which it takes directory leases. A
    /// client restarted within a case keeps its predecessor's (shut down
    /// first, so no two clients with views share one): with a new id, its
    /// first name added to a directory the old one made would wait a lease
    /// out, as a remount does (`tests/statahead.rs` covers that wait),
    /// and the 3,000 cases would take ten times as long.
    async fn client(&self, lease_client: u64) -> Result<Arc<Handles>, DfsError> {
        let meta = faulty(self.embedded.meta.clone(), self.faults.clone());
        // Two transports to the same service: a failed call is tried again
        // at once on the other, so faults cost no back-off sleep.
        let rpc = MetaRpc::new(vec![meta.clone(), meta], Duration::from_secs(10));
        let connector: Connector = self.embedded.connector();
        let cluster = Cluster::connect(rpc, connector).await?;
        let dfs = Dfs::new(cluster, ChunkCache::new(0), CodecPolicy::Lz4, 0);
        // Absent names known from this client's own changes while it holds
        // dfs-meta's lease on them, as a `consistency=read-own` mount.
        dfs.names.set_mode(Views::Leased {
            client: lease_client,
        });
        // Statahead pages too: every check's lookups must still see this
        // client's own changes.
        dfs.statahead.set_ttl(Duration::from_secs(1));
        Ok(Arc::new(Handles::new(
            Arc::new(dfs),
            Duration::from_secs(1),
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

/// What a name in the case's directory is, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// A regular file, by its id in `Case::files` (hard links share one).
    File(u32),
    /// An empty directory.
    Dir,
}

/// A regular file in the model, and the handle the case keeps open on it.
#[derive(Clone)]
struct FileModel {
    bytes: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    mode: u32,
    ino: u64,
    fh: u64,
}

/// One case: its files live in their own directory; at the end they are
/// removed and garbage collected, so the volume stays small.
struct Case<'a> {
    rig: &'a Rig,
    /// The core as the FUSE adapter calls it: handles over `Dfs`.
    core: Arc<Handles>,
    dir: u64,
    dir_name: Vec<u8>,
    names: BTreeMap<u8, Entry>,
    files: BTreeMap<u32, FileModel>,
    next_id: u32,
    /// fsck's findings when the case started.
    damage_before: Damage,
}

type Outcome = Result<(), String>;

fn err(context: &str) -> impl Fn(DfsError) -> String + '_ {
    move |e| format!("{context}: {} (errno {})", e.message, e.errno)
}

/// Fails unless `result` is the error `errno`.
fn expect_errno<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, DfsError>,
    errno: i32,
) -> Outcome {
    match result {
        Err(e) if e.errno == errno => Ok(()),
        other => Err(format!("{what}: {other:?}, not errno {errno}")),
    }
}

/// Handles are opened read-write, as `open(O_RDWR)` would.
const OPEN_FLAGS: i32 = libc::O_RDWR;

impl<'a> Case<'a> {
    async fn start(rig: &'a Rig, n: u64) -> Result<Case<'a>, String> {
        let (damage_before, _) = fsck(rig).await?;
        let core = rig.client(n + 1).await.map_err(err("client"))?;
        let dir_name = format!("case-{n}").into_bytes();
        let dir = core
            .dfs()
            .create(directory(1, dir_name.clone()))
            .await
            .map_err(err("mkdir"))?
            .ino;
        Ok(Case {
            rig,
            core,
            dir,
            dir_name,
            names: BTreeMap::new(),
            files: BTreeMap::new(),
            next_id: 0,
            damage_before,
        })
    }

    /// What the model holds, to tell whether an operation changed it.
    fn snapshot(&self) -> impl PartialEq {
        let files: Vec<_> = self
            .files
            .iter()
            .map(|(id, f)| (*id, f.bytes.clone(), f.xattrs.clone(), f.mode))
            .collect();
        (self.names.clone(), files)
    }

    /// The file behind name `i`, if it is one.
    fn file(&self, i: u8) -> Option<FileModel> {
        match self.names.get(&i)? {
            Entry::File(id) => self.files.get(id).cloned(),
            Entry::Dir => None,
        }
    }

    fn file_mut(&mut self, i: u8) -> Option<&mut FileModel> {
        match self.names.get(&i)? {
            Entry::File(id) => self.files.get_mut(id),
            Entry::Dir => None,
        }
    }

    fn links(&self, id: u32) -> usize {
        self.names
            .values()
            .filter(|e| **e == Entry::File(id))
            .count()
    }

    /// A close(2) and the handle's release, as the kernel sends them.
    async fn close(&self, f: &FileModel) -> Outcome {
        self.core
            .close(f.fh, f.ino, f.fh)
            .await
            .map_err(err("close"))?;
        self.core
            .release(f.fh, f.ino, None)
            .await
            .map_err(err("release"))
    }

    /// Name `i` goes away; a file whose last name it was is closed first
    /// (a file unlinked while open is the FUSE tests' business).
    async fn drop_name(&mut self, i: u8) -> Outcome {
        if let Some(Entry::File(id)) = self.names.get(&i).copied() {
            if self.links(id) == 1 {
                if let Some(f) = self.files.remove(&id) {
                    self.close(&f).await?;
                }
            }
        }
        self.names.remove(&i);
        Ok(())
    }

    async fn apply(&mut self, op: &Op) -> Outcome {
        let core = self.core.clone();
        let dfs = core.dfs().clone();
        match *op {
            Op::Create(i) => {
                if self.names.contains_key(&i) {
                    return Ok(());
                }
                let request = CreateRequest {
                    parent: self.dir,
                    name: name(i),
                    kind: FileKind::Regular as i32,
                    mode: 0o644,
                    ..Default::default()
                };
                let (attr, fh) = core
                    .create_open(request, OPEN_FLAGS)
                    .await
                    .map_err(err("create"))?;
                let id = self.next_id;
                self.next_id += 1;
                let file = FileModel {
                    bytes: Vec::new(),
                    xattrs: BTreeMap::new(),
                    mode: 0o644,
                    ino: attr.ino,
                    fh,
                };
                self.files.insert(id, file);
                self.names.insert(i, Entry::File(id));
            }
            Op::Mkdir(i) => {
                let made = dfs.create(directory(self.dir, name(i))).await;
                if self.names.contains_key(&i) {
                    return expect_errno("mkdir over a name", made, libc::EEXIST);
                }
                made.map_err(err("mkdir"))?;
                self.names.insert(i, Entry::Dir);
            }
            Op::Rmdir(i) => {
                let Some(entry) = self.names.get(&i).copied() else {
                    return Ok(());
                };
                let removed = dfs.rmdir(self.dir, &name(i)).await;
                if entry != Entry::Dir {
                    return expect_errno("rmdir of a file", removed, libc::ENOTDIR);
                }
                removed.map_err(err("rmdir"))?;
                self.names.remove(&i);
            }
            Op::Link { from, to } => {
                let Some(entry) = self.names.get(&from).copied() else {
                    return Ok(());
                };
                let ino = match entry {
                    Entry::File(id) => self.files.get(&id).map(|f| f.ino).unwrap_or_default(),
                    // A directory has no hard links.
                    Entry::Dir => return Ok(()),
                };
                let linked = dfs.link(ino, self.dir, &name(to)).await;
                if self.names.contains_key(&to) {
                    return expect_errno("link over a name", linked, libc::EEXIST);
                }
                linked.map_err(err("link"))?;
                self.names.insert(to, entry);
            }
            Op::Write {
                file,
                offset,
                len,
                seed,
                text,
            } => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                let data = content(len, seed, text);
                self.rig
                    .written
                    .fetch_add(u64::from(len), Ordering::Relaxed);
                core.write(f.fh, u64::from(offset), &data)
                    .await
                    .map_err(err("write"))?;
                if let Some(f) = self.file_mut(file) {
                    let end = offset as usize + data.len();
                    if f.bytes.len() < end {
                        f.bytes.resize(end, 0);
                    }
                    f.bytes[offset as usize..end].copy_from_slice(&data);
                }
            }
            Op::Truncate { file, size } => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                // ftruncate(2): a setattr with a size, as the kernel sends it.
                let request = SetAttrRequest {
                    ino: f.ino,
                    ..Default::default()
                };
                dfs.setattr(f.ino, request, Some(u64::from(size)))
                    .await
                    .map_err(err("truncate"))?;
                if let Some(f) = self.file_mut(file) {
                    f.bytes.resize(size as usize, 0);
                }
            }
            Op::Fsync(file) => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                core.fsync(f.fh).await.map_err(err("fsync"))?;
            }
            Op::Reopen(file) => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                self.close(&f).await?;
                let fh = core.open(f.ino, OPEN_FLAGS).await.map_err(err("reopen"))?;
                if let Some(f) = self.file_mut(file) {
                    f.fh = fh;
                }
            }
            Op::Rename { from, to, flags } => {
                let Some(source) = self.names.get(&from).copied() else {
                    return Ok(());
                };
                let target = self.names.get(&to).copied();
                // Renaming a name onto a link of the same file never reaches
                // the file system: the kernel answers it.
                if from == to || target == Some(source) && matches!(source, Entry::File(_)) {
                    return Ok(());
                }
                let request = RenameRequest {
                    parent: self.dir,
                    name: name(from),
                    new_parent: self.dir,
                    new_name: name(to),
                    flags,
                    ..Default::default()
                };
                let refused = match (flags, source, target) {
                    (RENAME_NOREPLACE, _, Some(_)) => Some(libc::EEXIST),
                    (RENAME_EXCHANGE, _, None) => Some(libc::ENOENT),
                    (RENAME_EXCHANGE, _, Some(_)) => None,
                    (_, Entry::File(_), Some(Entry::Dir)) => Some(libc::EISDIR),
                    (_, Entry::Dir, Some(Entry::File(_))) => Some(libc::ENOTDIR),
                    _ => None,
                };
                if let Some(errno) = refused {
                    let what = format!("rename {source:?} to {target:?} with flags {flags}");
                    return expect_errno(&what, dfs.rename(request).await, errno);
                }
                if flags == RENAME_EXCHANGE {
                    dfs.rename(request).await.map_err(err("rename exchange"))?;
                    swap(&mut self.names, from, to);
                    return Ok(());
                }
                if target.is_some() {
                    self.drop_name(to).await?;
                }
                dfs.rename(request).await.map_err(err("rename"))?;
                self.names.remove(&from);
                self.names.insert(to, source);
            }
            Op::SetXattr {
                file,
                key,
                len,
                seed,
            } => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                let key = format!("user.k{key}").into_bytes();
                let value = XorShift(seed | 1).bytes(usize::from(len));
                let in_group = |_gid| true;
                let caller = Caller {
                    uid: 0,
                    in_group: &in_group,
                };
                core.setxattr(f.ino, &key, &value, 0, &caller, true)
                    .await
                    .map_err(err("setxattr"))?;
                if let Some(f) = self.file_mut(file) {
                    f.xattrs.insert(key, value);
                }
            }
            Op::RemoveXattr { file, key } => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                let key = format!("user.k{key}").into_bytes();
                let had = f.xattrs.contains_key(&key);
                match core.removexattr(f.ino, &key).await {
                    Ok(()) if had => {}
                    Err(e) if !had && e.errno == libc::ENODATA => {}
                    other => return Err(format!("removexattr (set: {had}): {other:?}")),
                }
                if let Some(f) = self.file_mut(file) {
                    f.xattrs.remove(&key);
                }
            }
            Op::Chmod { file, mode } => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                let request = SetAttrRequest {
                    ino: f.ino,
                    mode: Some(mode),
                    ..Default::default()
                };
                dfs.setattr(f.ino, request, None)
                    .await
                    .map_err(err("chmod"))?;
                if let Some(f) = self.file_mut(file) {
                    f.mode = mode;
                }
            }
            Op::Unlink(i) => {
                let Some(entry) = self.names.get(&i).copied() else {
                    return Ok(());
                };
                if entry == Entry::Dir {
                    let unlinked = dfs.unlink(self.dir, &name(i)).await;
                    return expect_errno("unlink of a directory", unlinked, libc::EISDIR);
                }
                self.drop_name(i).await?;
                dfs.unlink(self.dir, &name(i))
                    .await
                    .map_err(err("unlink"))?;
            }
            Op::Punch { file, offset, len } => {
                let Some(f) = self.file(file) else {
                    return Ok(());
                };
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                let range = Fallocate::from_mode(u64::from(offset), u64::from(len), mode)
                    .map_err(err("fallocate mode"))?;
                core.fallocate(f.fh, f.ino, range, 0)
                    .await
                    .map_err(err("punch hole"))?;
                if let Some(f) = self.file_mut(file) {
                    let end = (offset as usize + len as usize).min(f.bytes.len());
                    if (offset as usize) < end {
                        f.bytes[offset as usize..end].fill(0);
                    }
                }
            }
            Op::Copy {
                from,
                to,
                offset_in,
                offset_out,
                len,
            } => {
                let (Some(src), Some(dst)) = (self.file(from), self.file(to)) else {
                    return Ok(());
                };
                if src.ino == dst.ino {
                    return Ok(());
                }
                let copied = core
                    .copy_file_range(
                        src.fh,
                        u64::from(offset_in),
                        dst.fh,
                        u64::from(offset_out),
                        u64::from(len),
                    )
                    .await
                    .map_err(err("copy_file_range"))? as usize;
                let want = src
                    .bytes
                    .len()
                    .saturating_sub(offset_in as usize)
                    .min(len as usize);
                if copied != want {
                    return Err(format!("copy_file_range copied {copied} bytes, not {want}"));
                }
                if let (true, Some(f)) = (copied > 0, self.file_mut(to)) {
                    let piece = &src.bytes[offset_in as usize..offset_in as usize + copied];
                    let end = offset_out as usize + copied;
                    if f.bytes.len() < end {
                        f.bytes.resize(end, 0);
                    }
                    f.bytes[offset_out as usize..end].copy_from_slice(piece);
                }
            }
            Op::Restart => {
                // Every handle closed (its bytes committed), then a new
                // client that knows nothing of the old one's state.
                for f in self.files.values() {
                    self.close(f).await?;
                }
                core.shut_down().await;
                let lease_client = self.core.dfs().names.lease_client();
                self.core = self.rig.client(lease_client).await.map_err(err("client"))?;
                for f in self.files.values_mut() {
                    f.fh = self
                        .core
                        .open(f.ino, OPEN_FLAGS)
                        .await
                        .map_err(err("open after restart"))?;
                }
            }
        }
        Ok(())
    }

    /// The directory lists exactly the model's names with their kinds,
    /// every file has the model's links, mode, xattrs and bytes (read
    /// through its handle), and the volume's reference counts add up.
    async fn check(&self, step: usize) -> Outcome {
        let dfs = self.core.dfs();
        let listed: Vec<(Vec<u8>, bool)> = dfs
            .read_dir_all(self.dir, false)
            .await
            .map_err(err("readdir"))?
            .into_iter()
            .map(|e| (e.name.clone(), e.kind() == FileKind::Directory))
            .collect();
        let expected: Vec<(Vec<u8>, bool)> = self
            .names
            .iter()
            .map(|(&i, e)| (name(i), *e == Entry::Dir))
            .collect();
        if listed != expected {
            return Err(format!(
                "step {step}: the directory lists {:?}, the model {:?} (name, is a directory)",
                lossy(&listed),
                lossy(&expected)
            ));
        }
        // Every name by lookup too, as the kernel finds them: once a few
        // go to dfs-meta in a row, statahead pages answer the rest, and
        // each answer must still show this client's last change.
        for i in 0..NAMES {
            let found = dfs.lookup(self.dir, &name(i)).await;
            let agrees = match (self.names.get(&i), &found) {
                (None, Err(e)) => e.errno == libc::ENOENT,
                (Some(Entry::Dir), Ok(attr)) => attr.kind() == FileKind::Directory,
                (Some(Entry::File(id)), Ok(attr)) => self.files.get(id).is_some_and(|f| {
                    attr.ino == f.ino
                        && attr.size == f.bytes.len() as u64
                        && attr.mode & 0o7777 == f.mode
                        && attr.nlink as usize == self.links(*id)
                }),
                _ => false,
            };
            if !agrees {
                let found = found.map(|a| (a.ino, a.kind(), a.size, a.mode & 0o7777, a.nlink));
                return Err(format!(
                    "step {step}: lookup of f{i} answers {found:?} (ino, kind, size, mode, links), the model has {:?}",
                    self.names.get(&i)
                ));
            }
        }
        for (id, f) in &self.files {
            let label = format!("file {id} (ino {})", f.ino);
            let attr = dfs.getattr(f.ino).await.map_err(err("getattr"))?;
            if attr.mode & 0o7777 != f.mode || attr.nlink as usize != self.links(*id) {
                return Err(format!(
                    "step {step}: {label} has mode {:o} and {} links, the model {:o} and {}",
                    attr.mode & 0o7777,
                    attr.nlink,
                    f.mode,
                    self.links(*id)
                ));
            }
            let list = self.core.listxattr(f.ino).await.map_err(err("listxattr"))?;
            let mut names: Vec<Vec<u8>> = list
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            names.sort();
            let want: Vec<Vec<u8>> = f.xattrs.keys().cloned().collect();
            if names != want {
                return Err(format!(
                    "step {step}: {label} lists xattrs {:?}, the model {:?}",
                    lossy_names(&names),
                    lossy_names(&want)
                ));
            }
            for (key, value) in &f.xattrs {
                let got = self
                    .core
                    .getxattr(f.ino, key)
                    .await
                    .map_err(err("getxattr"))?;
                if got != *value {
                    return Err(format!(
                        "step {step}: {label} xattr {} differs",
                        String::from_utf8_lossy(key)
                    ));
                }
            }
            // Asks for more than the model holds: a longer file shows.
            let asked = (f.bytes.len() + 4096) as u32;
            let got = self.core.read(f.fh, 0, asked).await.map_err(err("read"))?;
            if got != f.bytes {
                let first = got
                    .iter()
                    .zip(&f.bytes)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(f.bytes.len()));
                return Err(format!(
                    "step {step}: {label} reads {} bytes, the model has {}; first difference at {first}",
                    got.len(),
                    f.bytes.len()
                ));
            }
        }
        fsck_clean(self.rig, step, self.damage_before).await
    }

    /// Removes the case's files, directories and its own directory.
    async fn finish(mut self) -> Outcome {
        let dfs = self.core.dfs().clone();
        for i in self.names.keys().copied().collect::<Vec<_>>() {
            let entry = self.names.get(&i).copied();
            self.drop_name(i).await?;
            match entry {
                Some(Entry::Dir) => dfs.rmdir(self.dir, &name(i)).await,
                _ => dfs.unlink(self.dir, &name(i)).await,
            }
            .map_err(err("remove at end"))?;
        }
        self.core.shut_down().await;
        dfs.rmdir(1, &self.dir_name)
            .await
            .map_err(err("rmdir at end"))
    }
}

fn directory(parent: u64, name: Vec<u8>) -> CreateRequest {
    CreateRequest {
        parent,
        name,
        kind: FileKind::Directory as i32,
        mode: 0o755,
        ..Default::default()
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

fn lossy(names: &[(Vec<u8>, bool)]) -> Vec<(String, bool)> {
    names
        .iter()
        .map(|(n, dir)| (String::from_utf8_lossy(n).into_owned(), *dir))
        .collect()
}

fn lossy_names(names: &[Vec<u8>]) -> Vec<String> {
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
        refcounts: report.refcount_mismatches + report.link_mismatches,
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
