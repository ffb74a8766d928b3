//! The kernel-facing layer: fuser calls land here on fuser's own threads,
//! run the async operation on the tokio runtime with `Handle::block_on`,
//! and answer through [`fail`], the one place errors become errnos.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dfs_core::error::DfsError;
use dfs_core::time::{ns_to_system_time, system_time_to_ns};
use dfs_proto::{CreateRequest, DirEntry, FileKind, InodeRecord, RenameRequest, SetAttrRequest};
use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags,
    PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen, ReplyPoll,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::fs::namespace::{Caller, Fallocate};
use crate::fs::{Dfs, OpenFile};
use crate::locks::Locks;

const BLOCK_SIZE: u32 = 4096;
const MAX_WRITE: u32 = 1024 * 1024;
/// Most bytes one copy_file_range request copies (it may copy less; the
/// caller asks again for the rest). Below 4 GiB: the reply is a u32.
const COPY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Entries whose attributes one readdirplus reply prepares. A reply buffer
/// (a page or a few) holds 25-100 entries of ~160 bytes; preparing many
/// more would be thrown away, fewer ends the reply early (the kernel asks
/// again from where it stopped).
const READDIRPLUS_PAGE: usize = 128;

struct FileHandleState {
    ino: u64,
    file: Arc<OpenFile>,
    append: bool,
    /// End of the last read, to spot sequential reads for readahead.
    last_read_end: AtomicU64,
}

struct DirHandleState {
    entries: Vec<DirEntry>,
    parent: u64,
    /// The directory as opendir saw it: what fstat on the open handle
    /// answers (with no links) once the directory is removed.
    attr: InodeRecord,
    /// Whether `entries` were read: not at opendir but when a listing
    /// starts (offset 0), so a listing after rewinddir sees names added
    /// since opendir (POSIX).
    loaded: bool,
}

pub struct DfsFuse {
    dfs: Arc<Dfs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    next_fh: AtomicU64,
    files: Mutex<HashMap<u64, Arc<FileHandleState>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandleState>>>,
    /// Inodes known (within `ttl`) to have no `security.capability`: the
    /// kernel asks for it before every write(2) to see whether the write
    /// must drop privileges, which would otherwise be one metadata round
    /// trip per write call.
    no_capability: Mutex<HashMap<u64, std::time::Instant>>,
    /// fcntl/flock locks, held in the metadata service for every client.
    locks: Arc<Locks>,
    /// Tells the kernel to drop cached pages (set once the session exists).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// POSIX ACLs enforced by the kernel (mount option `acl`, the default).
    posix_acl: bool,
}

/// True when the process behind `req` has `gid` as its file-system group
/// or a supplementary group (read from `/proc/PID/status`).
fn caller_in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

/// The attribute the kernel looks up before every write.
const CAPABILITY_XATTR: &[u8] = b"security.capability";
/// Bound on `no_capability` entries; the map starts over past it.
const NO_CAPABILITY_MAX: usize = 65_536;

/// The span every kernel request runs in: which request, on which inode,
/// from which process.
fn op_span(op: &'static str, req: &Request, ino: u64) -> tracing::Span {
    tracing::debug_span!("fuse", op, req = req.unique().0, ino, pid = req.pid())
}

/// The one place a `DfsError` becomes an errno: logs at a level that
/// matches how surprising the error is.
fn fail(op: &'static str, ino: u64, e: &DfsError) -> Errno {
    match e.errno {
        libc::ENOENT
        | libc::EEXIST
        | libc::ENOTEMPTY
        | libc::ENOTDIR
        | libc::EISDIR
        | libc::ENAMETOOLONG
        | libc::ENODATA => {
            tracing::debug!(op, ino, errno = e.errno, error = %e.message, "fuse request failed")
        }
        libc::EIO => tracing::error!(op, ino, error = %e.message, "fuse request failed with EIO"),
        _ => tracing::warn!(op, ino, errno = e.errno, error = %e.message, "fuse request failed"),
    }
    Errno::from_i32(e.errno)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::Regular | FileKind::Unspecified => FileType::RegularFile,
    }
}

fn kind_from_mode(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        _ => FileKind::Regular,
    }
}

/// Answers a request whose only reply is success or an errno.
fn reply_empty<T>(result: Result<T, DfsError>, op: &'static str, ino: u64, reply: ReplyEmpty) {
    match result {
        Ok(_) => reply.ok(),
        Err(e) => reply.error(fail(op, ino, &e)),
    }
}

/// Answers a getxattr/listxattr: the size when asked for it (`size` 0),
/// the bytes when they fit, ERANGE when they do not.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() <= size as usize {
        reply.data(data);
    } else {
        reply.error(Errno::ERANGE);
    }
}

pub fn to_file_attr(r: &InodeRecord) -> FileAttr {
    FileAttr {
        ino: INodeNo(r.ino),
        size: r.size,
        blocks: r.size.div_ceil(512),
        atime: ns_to_system_time(r.atime_ns),
        mtime: ns_to_system_time(r.mtime_ns),
        ctime: ns_to_system_time(r.ctime_ns),
        crtime: ns_to_system_time(r.ctime_ns),
        kind: file_type(r.kind()),
        perm: (r.mode & 0o7777) as u16,
        nlink: r.nlink,
        uid: r.uid,
        gid: r.gid,
        rdev: r.rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn time_ns(t: Option<TimeOrNow>) -> (Option<i64>, bool) {
    match t {
        None => (None, false),
        Some(TimeOrNow::Now) => (None, true),
        Some(TimeOrNow::SpecificTime(t)) => (Some(system_time_to_ns(t)), false),
    }
}

impl DfsFuse {
    pub fn new(dfs: Arc<Dfs>, rt: tokio::runtime::Handle, ttl: Duration) -> Self {
        Self {
            rt,
            ttl,
            next_fh: AtomicU64::new(1),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            no_capability: Mutex::new(HashMap::new()),
            locks: dfs.new_lock_client(),
            dfs,
            notifier: Arc::new(std::sync::OnceLock::new()),
            posix_acl: true,
        }
    }

    /// Turns kernel enforcement of POSIX ACLs on or off (`-o noacl`).
    pub fn with_posix_acl(mut self, on: bool) -> Self {
        self.posix_acl = on;
        self
    }

    /// Where the mount puts the session's notifier once it exists.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn file_handle(&self, fh: FileHandle) -> Result<Arc<FileHandleState>, DfsError> {
        self.files
            .lock()
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| DfsError::new(libc::EBADF, "unknown file handle"))
    }

    /// The open directory behind `fh`, its entries read when a listing
    /// starts (offset 0: the first one, or one after rewinddir).
    fn dir_for_listing(
        &self,
        ino: u64,
        fh: FileHandle,
        offset: u64,
    ) -> Result<Arc<DirHandleState>, DfsError> {
        let dir = self
            .dirs
            .lock()
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| DfsError::new(libc::EBADF, "unknown directory handle"))?;
        if offset != 0 && dir.loaded {
            return Ok(dir);
        }
        let entries = self.rt.block_on(self.dfs.read_dir_all(ino, true))?;
        let fresh = Arc::new(DirHandleState {
            entries,
            parent: dir.parent,
            attr: dir.attr.clone(),
            loaded: true,
        });
        self.dirs.lock().insert(fh.0, fresh.clone());
        Ok(fresh)
    }

    /// The attributes of directory `ino` if this client has it open, with
    /// no links: for a directory that no longer exists.
    fn removed_open_dir(&self, ino: u64) -> Option<InodeRecord> {
        let dirs = self.dirs.lock();
        let handle = dirs.values().find(|d| d.attr.ino == ino)?;
        Some(InodeRecord {
            nlink: 0,
            ..handle.attr.clone()
        })
    }

    /// Remembers, for the attribute timeout, that `ino` has no
    /// `security.capability` (the kernel asks before every write).
    fn note_no_capability(&self, ino: u64) {
        let mut known = self.no_capability.lock();
        if known.len() >= NO_CAPABILITY_MAX {
            known.clear();
        }
        known.insert(ino, std::time::Instant::now());
    }

    fn reply_entry(
        &self,
        result: Result<InodeRecord, DfsError>,
        op: &'static str,
        parent: u64,
        reply: ReplyEntry,
    ) {
        match result {
            Ok(attr) => reply.entry(&self.ttl, &to_file_attr(&attr), Generation(attr.generation)),
            Err(e) => reply.error(fail(op, parent, &e)),
        }
    }

    fn new_request(
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: FileKind,
        mode: u32,
        umask: u32,
    ) -> CreateRequest {
        CreateRequest {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
            kind: kind as i32,
            mode,
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            symlink_target: Vec::new(),
            // The metadata server applies it unless the parent's default
            // ACL decides the permissions (the kernel leaves that to us:
            // FUSE_DONT_MASK).
            umask,
        }
    }

    /// Opens directory `ino`: its entries are read by the first readdir.
    async fn open_dir_async(&self, ino: u64) -> Result<DirHandleState, DfsError> {
        let attr = self.dfs.open_dir(ino).await?;
        Ok(DirHandleState {
            entries: Vec::new(),
            parent: if attr.parent == 0 { ino } else { attr.parent },
            attr,
            loaded: false,
        })
    }

    fn open_handle(&self, ino: u64, file: Arc<OpenFile>, flags: i32) -> u64 {
        let fh = self.fh();
        let state = FileHandleState {
            ino,
            file,
            append: flags & libc::O_APPEND != 0,
            last_read_end: AtomicU64::new(u64::MAX),
        };
        self.files.lock().insert(fh, Arc::new(state));
        fh
    }
}

impl Filesystem for DfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        // One by one: a flag the kernel lacks must not cost the others.
        let mut wanted = vec![
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // File handles (name_to_handle_at, NFS): see lookup.
            InitFlags::FUSE_EXPORT_SUPPORT,
            // fcntl and flock locks are kept by the metadata service (locks.rs).
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
        ];
        if self.posix_acl {
            // The kernel enforces ACLs; the metadata server keeps them in
            // step with the mode, and applies the umask itself because a
            // default ACL replaces it.
            wanted.push(InitFlags::FUSE_POSIX_ACL);
            wanted.push(InitFlags::FUSE_DONT_MASK);
        }
        for flag in wanted {
            if config.add_capabilities(flag).is_err() {
                tracing::warn!(?flag, "the kernel does not offer this FUSE capability");
                if flag == InitFlags::FUSE_POSIX_ACL {
                    self.posix_acl = false;
                }
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // The kernel flushes every handle before an unmount completes; this
        // catches whatever an abrupt end of the session left behind.
        let handles: Vec<Arc<FileHandleState>> = self.files.lock().values().cloned().collect();
        for h in handles {
            let result = self.rt.block_on(async {
                let mut st = self.dfs.lock(&h.file).await;
                self.dfs.flush(&mut st).await
            });
            if let Err(e) = result {
                tracing::error!(ino = h.ino, error = %e, "data not flushed at unmount");
            }
        }
        self.rt.block_on(self.locks.end());
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = op_span("lookup", req, parent.0).entered();
        let result = self.rt.block_on(self.dfs.lookup(parent.0, name.as_bytes()));
        self.reply_entry(result, "lookup", parent.0, reply);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = op_span("getattr", req, ino.0).entered();
        // A directory this client just changed: the kernel asks because it
        // knows the change touched it, and the change's reply said how.
        if let Some((attr, left)) = self.dfs.changed_dir(ino.0, self.ttl) {
            reply.attr(&left, &to_file_attr(&attr));
            return;
        }
        match self.rt.block_on(self.dfs.getattr(ino.0)) {
            Ok(attr) => reply.attr(&self.ttl, &to_file_attr(&attr)),
            Err(e) => match self
                .removed_open_dir(ino.0)
                .filter(|_| e.errno == libc::ENOENT)
            {
                // Removed (rmdir, or renamed over) while open here: as on a
                // local file system, the open directory has no links left.
                Some(attr) => reply.attr(&Duration::ZERO, &to_file_attr(&attr)),
                None => reply.error(fail("getattr", ino.0, &e)),
            },
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = op_span("setattr", req, ino.0).entered();
        let (atime_ns, atime_now) = time_ns(atime);
        let (mtime_ns, mtime_now) = time_ns(mtime);
        let request = SetAttrRequest {
            ino: ino.0,
            mode,
            uid,
            gid,
            atime_ns,
            mtime_ns,
            atime_now,
            mtime_now,
        };
        match self.rt.block_on(self.dfs.setattr(ino.0, request, size)) {
            // Not cached: the kernel applies a setattr reply even when a
            // concurrent create or rename in the same directory changed the
            // inode after it (rsync sets a directory's times while files
            // land in it, then trusts `stat` to tell whether to set them
            // again). The next stat asks the metadata server.
            Ok(attr) => reply.attr(&Duration::ZERO, &to_file_attr(&attr)),
            Err(e) => reply.error(fail("setattr", ino.0, &e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _span = op_span("link", req, ino.0).entered();
        let result = self
            .rt
            .block_on(self.dfs.link(ino.0, newparent.0, newname.as_bytes()));
        self.reply_entry(result, "link", ino.0, reply);
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("setxattr", req, ino.0).entered();
        if !self.posix_acl && name.as_bytes().starts_with(b"system.posix_acl_") {
            // The metadata server would keep the mode in step with an ACL
            // the kernel does not enforce here: refuse, as ext4 with noacl.
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        self.no_capability.lock().remove(&ino.0);
        let in_group = |gid| caller_in_group(req, gid);
        let caller = Caller {
            uid: req.uid(),
            in_group: &in_group,
        };
        let result = self.rt.block_on(self.dfs.setxattr(
            ino.0,
            name.as_bytes(),
            value,
            flags as u32,
            &caller,
        ));
        reply_empty(result, "setxattr", ino.0, reply);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = op_span("getxattr", req, ino.0).entered();
        let capability = name.as_bytes() == CAPABILITY_XATTR;
        if capability
            && self
                .no_capability
                .lock()
                .get(&ino.0)
                .is_some_and(|at| at.elapsed() < self.ttl)
        {
            reply.error(Errno::ENODATA);
            return;
        }
        let result = self.rt.block_on(self.dfs.getxattr(ino.0, name.as_bytes()));
        match result {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => {
                if capability && e.errno == libc::ENODATA {
                    self.note_no_capability(ino.0);
                }
                reply.error(fail("getxattr", ino.0, &e))
            }
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = op_span("listxattr", req, ino.0).entered();
        let result = self.rt.block_on(self.dfs.listxattr(ino.0));
        match result {
            Ok(names) => {
                // The kernel wants the names NUL-terminated, back to back.
                let mut list = Vec::new();
                for name in names {
                    list.extend_from_slice(&name);
                    list.push(0);
                }
                reply_xattr(reply, size, &list);
            }
            Err(e) => reply.error(fail("listxattr", ino.0, &e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = op_span("removexattr", req, ino.0).entered();
        self.no_capability.lock().remove(&ino.0);
        let result = self
            .rt
            .block_on(self.dfs.removexattr(ino.0, name.as_bytes()));
        reply_empty(result, "removexattr", ino.0, reply);
    }

    /// A dfs file is always ready to be read and written. ENOSYS says so
    /// once: the kernel stops asking and reports every file ready, as for
    /// a regular file on a local disk (fuser's default answers the same,
    /// with a warning in the log).
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _notifier: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// No ioctl is supported: a terminal probe (`isatty`, which Python
    /// runs on every file it opens) gets ENOTTY as on any regular file,
    /// without the warning fuser's default logs for each one.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("fallocate", req, ino.0).entered();
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0
            || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size)
            || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && mode & libc::FALLOC_FL_ZERO_RANGE != 0)
        {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let range = Fallocate {
            offset,
            length,
            keep_size,
            zero,
        };
        let result = self.rt.block_on(async {
            let handle = self.file_handle(fh)?;
            self.dfs
                .fallocate(&handle.file, ino.0, range, req.uid())
                .await
        });
        reply_empty(result, "fallocate", ino.0, reply);
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let _span = op_span("lseek", req, ino.0).entered();
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            reply.error(Errno::EINVAL);
            return;
        }
        let result = self.rt.block_on(async {
            let handle = self.file_handle(fh)?;
            let st = self.dfs.lock(&handle.file).await;
            let offset =
                u64::try_from(offset).map_err(|_| DfsError::new(libc::ENXIO, "negative offset"))?;
            self.dfs
                .seek_data_or_hole(&st, offset, whence == libc::SEEK_DATA)
                .ok_or_else(|| DfsError::new(libc::ENXIO, "no data or hole past the offset"))
        });
        match result {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(fail("lseek", ino.0, &e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _span = op_span("copy_file_range", req, ino_in.0).entered();
        // A short copy is allowed (callers loop): bounds memory for the
        // bytes copied at the edges and the size of one commit.
        let len = len.min(COPY_BYTES_MAX);
        let result = self.rt.block_on(async {
            let src = self.file_handle(fh_in)?;
            let dst = self.file_handle(fh_out)?;
            self.dfs
                .copy_file_range(&src.file, &dst.file, offset_in, offset_out, len)
                .await
        });
        match result {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fail("copy_file_range", ino_in.0, &e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = op_span("readlink", req, ino.0).entered();
        match self.rt.block_on(self.dfs.getattr(ino.0)) {
            Ok(attr) if attr.kind() == FileKind::Symlink => reply.data(&attr.symlink_target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(fail("readlink", ino.0, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = op_span("mknod", req, parent.0).entered();
        let mut request = Self::new_request(req, parent, name, kind_from_mode(mode), mode, umask);
        request.rdev = rdev;
        let result = self.rt.block_on(self.dfs.create(request));
        self.reply_entry(result, "mknod", parent.0, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _span = op_span("mkdir", req, parent.0).entered();
        let request = Self::new_request(req, parent, name, FileKind::Directory, mode, umask);
        let result = self.rt.block_on(self.dfs.create(request));
        self.reply_entry(result, "mkdir", parent.0, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _span = op_span("symlink", req, parent.0).entered();
        let mut request = Self::new_request(req, parent, link_name, FileKind::Symlink, 0o777, 0);
        request.symlink_target = target.as_os_str().as_bytes().to_vec();
        let result = self.rt.block_on(self.dfs.create(request));
        self.reply_entry(result, "symlink", parent.0, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = op_span("unlink", req, parent.0).entered();
        let result = self.rt.block_on(self.dfs.unlink(parent.0, name.as_bytes()));
        reply_empty(result, "unlink", parent.0, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = op_span("rmdir", req, parent.0).entered();
        let result = self.rt.block_on(self.dfs.rmdir(parent.0, name.as_bytes()));
        reply_empty(result, "rmdir", parent.0, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("rename", req, parent.0).entered();
        let request = RenameRequest {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
            new_parent: newparent.0,
            new_name: newname.as_bytes().to_vec(),
            flags: flags.bits(),
            keep_ino: 0,
        };
        let result = self.rt.block_on(self.dfs.rename(request));
        reply_empty(result, "rename", parent.0, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = op_span("open", req, ino.0).entered();
        match self.rt.block_on(self.dfs.open(ino.0)) {
            Ok(file) => {
                let fh = self.open_handle(ino.0, file, flags.0);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(fail("open", ino.0, &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = op_span("create", req, parent.0).entered();
        let request = Self::new_request(req, parent, name, FileKind::Regular, mode, umask);
        let result = self.rt.block_on(async {
            let attr = self.dfs.create(request).await?;
            let file = self.dfs.open_created(attr.ino, attr.data_version).await?;
            Ok::<_, DfsError>((attr, file))
        });
        match result {
            Ok((attr, file)) => {
                // A new file has no extended attributes: the kernel's check
                // for file capabilities before each write needs no RPC.
                self.note_no_capability(attr.ino);
                let fh = self.open_handle(attr.ino, file, flags);
                reply.created(
                    &self.ttl,
                    &to_file_attr(&attr),
                    Generation(attr.generation),
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(fail("create", parent.0, &e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = op_span("read", req, ino.0).entered();
        let result = self.rt.block_on(async {
            let handle = self.file_handle(fh)?;
            let st = self.dfs.lock(&handle.file).await;
            let end = (offset + u64::from(size)).min(st.size);
            let data = self.dfs.read_range(&st, offset, end.max(offset)).await?;
            let sequential = handle.last_read_end.swap(end, Ordering::Relaxed) == offset;
            if sequential {
                self.dfs.readahead(&st, end);
            }
            Ok::<_, DfsError>(data)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fail("read", ino.0, &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = op_span("write", req, ino.0).entered();
        let result = self.rt.block_on(async {
            let handle = self.file_handle(fh)?;
            let mut st = self.dfs.lock_for_write(&handle.file).await;
            let offset = if handle.append { st.size } else { offset };
            self.dfs.write(&mut st, offset, data).await?;
            self.dfs.write_behind(&mut st).await;
            Ok::<_, DfsError>(())
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(fail("write", ino.0, &e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("flush", req, ino.0).entered();
        let result = self.rt.block_on(async {
            let handle = self.file_handle(fh)?;
            let flushed = {
                let mut st = self.dfs.lock(&handle.file).await;
                self.dfs.flush(&mut st).await
            };
            // A close releases the process's fcntl locks on the file, after
            // its data is committed (the next holder sees it), and even when
            // the data could not be committed.
            let released = self.locks.release_owner(ino.0, lock_owner.0).await;
            flushed.and(released)
        });
        reply_empty(result, "flush", ino.0, reply);
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("fsync", req, ino.0).entered();
        let result = self.rt.block_on(async {
            let handle = self.file_handle(fh)?;
            let mut st = self.dfs.lock(&handle.file).await;
            self.dfs.flush(&mut st).await
        });
        reply_empty(result, "fsync", ino.0, reply);
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("release", req, ino.0).entered();
        let handle = self.files.lock().remove(&fh.0);
        let result = match handle {
            Some(h) => self.rt.block_on(self.dfs.release(&h.file)),
            None => Ok(()),
        };
        // The last close of an open file description releases its flock
        // (the kernel names the owner only when it took one) and its OFD
        // locks (never named: found by the handle they came through).
        let locks = self.rt.block_on(async {
            if let Some(owner) = lock_owner {
                self.locks.release_owner(ino.0, owner.0).await?;
            }
            self.locks.release_handle(ino.0, fh.0).await
        });
        let result = result.and(locks);
        reply_empty(result, "release", ino.0, reply);
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let _span = op_span("getlk", req, ino.0).entered();
        match self
            .rt
            .block_on(self.locks.get(ino.0, lock_owner.0, start, end, typ))
        {
            Ok(held) => reply.locked(held.start, held.end, held.typ, held.pid),
            Err(e) => reply.error(fail("getlk", ino.0, &e)),
        }
    }

    /// Answered from a task: F_SETLKW may wait for a long time, and must not
    /// hold one of the FUSE threads meanwhile.
    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let span = op_span("setlk", req, ino.0);
        let file = self.files.lock().get(&fh.0).map(|h| h.file.clone());
        let (dfs, locks, notifier) = (self.dfs.clone(), self.locks.clone(), self.notifier.clone());
        let waiter = sleep.then_some(req.pid());
        let ino = ino.0;
        self.rt.spawn(
            async move {
                let result = async {
                    // What was written under a lock is committed before the
                    // lock changes hands.
                    if let Some(file) = &file {
                        let mut st = dfs.lock(file).await;
                        dfs.flush(&mut st).await?;
                    }
                    locks
                        .set(ino, fh.0, lock_owner.0, start, end, typ, pid, waiter)
                        .await?;
                    // ... and what another client wrote under it is what a
                    // reader holding it now sees.
                    if typ != libc::F_UNLCK {
                        let reloaded = match &file {
                            Some(file) => dfs.refresh(&mut *dfs.lock(file).await).await?,
                            None => false,
                        };
                        // With the state unlocked: dropping pages waits for
                        // pages under read, and reads need the state.
                        if let (true, Some(n)) = (reloaded, notifier.get().cloned()) {
                            let dropped = tokio::task::spawn_blocking(move || {
                                n.inval_inode(INodeNo(ino), 0, 0)
                            })
                            .await;
                            if let Ok(Err(e)) = dropped {
                                tracing::debug!(ino, error = %e, "cannot drop cached pages");
                            }
                        }
                    }
                    Ok::<_, DfsError>(())
                }
                .await;
                reply_empty(result, "setlk", ino, reply);
            }
            .instrument(span),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = op_span("opendir", req, ino.0).entered();
        match self.rt.block_on(self.open_dir_async(ino.0)) {
            Ok(state) => {
                let fh = self.fh();
                self.dirs.lock().insert(fh, Arc::new(state));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(fail("opendir", ino.0, &e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = op_span("readdir", req, ino.0).entered();
        let dir = match self.dir_for_listing(ino.0, fh, offset) {
            Ok(dir) => dir,
            Err(e) => {
                reply.error(fail("readdir", ino.0, &e));
                return;
            }
        };
        // Offsets: 1 is ".", 2 is "..", 2 + i + 1 is entry i.
        let mut next = offset;
        loop {
            let full = match next {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(dir.parent), 2, FileType::Directory, ".."),
                n => {
                    let Some(e) = dir.entries.get((n - 2) as usize) else {
                        break;
                    };
                    reply.add(
                        INodeNo(e.ino),
                        n + 1,
                        file_type(e.kind()),
                        OsStr::from_bytes(&e.name),
                    )
                }
            };
            if full {
                break;
            }
            next += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _span = op_span("readdirplus", req, ino.0).entered();
        let dir = match self.dir_for_listing(ino.0, fh, offset) {
            Ok(dir) => dir,
            Err(e) => {
                reply.error(fail("readdirplus", ino.0, &e));
                return;
            }
        };
        let mut next = offset;
        let dots = if offset < 2 {
            let this = self.rt.block_on(self.dfs.getattr(ino.0));
            let parent = self.rt.block_on(self.dfs.getattr(dir.parent));
            match (this, parent) {
                (Ok(a), Ok(b)) => Some((a, b)),
                (Err(e), _) | (_, Err(e)) => {
                    reply.error(fail("readdirplus", ino.0, &e));
                    return;
                }
            }
        } else {
            None
        };
        // The entries' attributes with this client's buffered writes laid
        // over them, in one trip to the runtime for a page of them (the
        // kernel asks again from where a reply stops).
        let first = offset.saturating_sub(2) as usize;
        let page = dir
            .entries
            .get(first..)
            .unwrap_or_default()
            .iter()
            .take(READDIRPLUS_PAGE)
            .map_while(|e| e.attr.clone());
        let attrs = self.rt.block_on(self.dfs.overlay_attrs(page.collect()));
        loop {
            let full = match (next, &dots) {
                (0, Some((this, _))) => {
                    reply.add(ino, 1, ".", &self.ttl, &to_file_attr(this), Generation(0))
                }
                (1, Some((_, parent))) => reply.add(
                    INodeNo(dir.parent),
                    2,
                    "..",
                    &self.ttl,
                    &to_file_attr(parent),
                    Generation(0),
                ),
                (n, _) if n >= 2 => {
                    let Some(e) = dir.entries.get((n - 2) as usize) else {
                        break;
                    };
                    let Some(attr) = attrs.get((n - 2) as usize - first) else {
                        break;
                    };
                    reply.add(
                        INodeNo(e.ino),
                        n + 1,
                        OsStr::from_bytes(&e.name),
                        &self.ttl,
                        &to_file_attr(attr),
                        Generation(attr.generation),
                    )
                }
                _ => break,
            };
            if full {
                break;
            }
            next += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("releasedir", req, ino.0).entered();
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _span = op_span("statfs", req, ino.0).entered();
        let result = self.rt.block_on(self.dfs.statfs());
        match result {
            Ok(s) => {
                let blocks = s.capacity_bytes / u64::from(BLOCK_SIZE);
                let free = s.capacity_bytes.saturating_sub(s.used_bytes) / u64::from(BLOCK_SIZE);
                reply.statfs(
                    blocks,
                    free,
                    free,
                    s.files,
                    u64::from(u32::MAX),
                    BLOCK_SIZE,
                    255,
                    BLOCK_SIZE,
                );
            }
            Err(e) => reply.error(fail("statfs", ino.0, &e)),
        }
    }
}
