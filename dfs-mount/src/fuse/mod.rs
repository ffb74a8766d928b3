//! The kernel-facing layer, an adapter only: fuser calls land here on
//! fuser's own threads, are decoded into one call of the file-system core
//! ([`Handles`], [`Dfs`]) run on the tokio runtime with `Handle::block_on`,
//! and answered through [`fail`], the one place errors become errnos.
//! Policies (what a close commits, lock hand-over, listings) live in the
//! core, where the in-process model test reaches them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dfs_core::error::DfsError;
use dfs_core::telemetry::catalog::{FUSE_READ_BYTES, FUSE_WRITTEN_BYTES};
use dfs_core::telemetry::series::Series;
use dfs_proto::{CreateRequest, FileKind, InodeRecord, RenameRequest, SetAttrRequest};
use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use tracing::Instrument;

mod convert;
mod kernel_attrs;
mod op;

use convert::{caller_in_group, file_type, kind_from_mode, reply_xattr, time_ns, BLOCK_SIZE};
use op::{fail, op_span};

use crate::fs::handles::{Handles, Listed};
use crate::fs::namespace::{Caller, Fallocate};
use crate::fs::Dfs;

const MAX_WRITE: u32 = 1024 * 1024;

pub struct DfsFuse {
    core: Arc<Handles>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    /// Tells the kernel to drop cached pages (set once the session exists).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Regular files' sizes as the kernel was last told them.
    kernel: kernel_attrs::KernelAttrs,
    /// POSIX ACLs enforced by the kernel (mount option `acl`, the default).
    posix_acl: bool,
}

/// Answers a request whose only reply is success or an errno.
fn reply_empty<T>(result: Result<T, DfsError>, op: &'static str, ino: u64, reply: ReplyEmpty) {
    match result {
        Ok(_) => reply.ok(),
        Err(e) => reply.error(fail(op, ino, &e)),
    }
}

impl DfsFuse {
    pub fn new(dfs: Arc<Dfs>, rt: tokio::runtime::Handle, ttl: Duration) -> Self {
        Self {
            core: Arc::new(Handles::new(dfs, ttl)),
            rt,
            ttl,
            notifier: Arc::new(std::sync::OnceLock::new()),
            kernel: kernel_attrs::KernelAttrs::default(),
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

    fn reply_entry(
        &self,
        result: Result<InodeRecord, DfsError>,
        op: &'static str,
        parent: u64,
        reply: ReplyEntry,
    ) {
        match result {
            Ok(attr) => reply.entry(
                &self.ttl,
                &self.kernel.told(&attr),
                Generation(attr.generation),
            ),
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
            // The core gives each create an id of its own, and its
            // client id.
            create_id: 0,
            inherit_from: 0,
            client_id: 0,
            ino: 0,
            time_ns: 0,
        }
    }

    /// The listing of an open directory from `offset`, or the errno.
    fn listing(
        &self,
        op: &'static str,
        ino: u64,
        fh: FileHandle,
        offset: u64,
        plus: bool,
    ) -> Result<Vec<Listed>, Errno> {
        self.rt
            .block_on(self.core.list(ino, fh.0, offset, plus))
            .map_err(|e| fail(op, ino, &e))
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
        self.rt.block_on(self.core.shut_down());
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = op_span("lookup", req, parent.0).entered();
        let result = self
            .rt
            .block_on(self.core.dfs().lookup_timed(parent.0, name.as_bytes()));
        match result {
            Ok((attr, valid_for)) => reply.entry(
                &valid_for.unwrap_or(self.ttl),
                &self.kernel.told(&attr),
                Generation(attr.generation),
            ),
            Err(e) => reply.error(fail("lookup", parent.0, &e)),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = op_span("getattr", req, ino.0).entered();
        match self.rt.block_on(self.core.getattr(ino.0)) {
            Ok(timed) => reply.attr(&timed.valid_for, &self.kernel.told(&timed.attr)),
            Err(e) => reply.error(fail("getattr", ino.0, &e)),
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
            // The core's (directory leases).
            client_id: 0,
        };
        match self
            .rt
            .block_on(self.core.dfs().setattr(ino.0, request, size))
        {
            // Not cached: the kernel applies a setattr reply even when a
            // concurrent create or rename in the same directory changed the
            // inode after it (rsync sets a directory's times while files
            // land in it, then trusts `stat` to tell whether to set them
            // again). The next stat asks the metadata server.
            Ok(attr) => reply.attr(&Duration::ZERO, &self.kernel.told(&attr)),
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
        let linked = self.core.dfs().link(ino.0, newparent.0, newname.as_bytes());
        self.reply_entry(self.rt.block_on(linked), "link", ino.0, reply);
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
        let in_group = |gid| caller_in_group(req, gid);
        let caller = Caller {
            uid: req.uid(),
            in_group: &in_group,
        };
        let result = self.rt.block_on(self.core.setxattr(
            ino.0,
            name.as_bytes(),
            value,
            flags as u32,
            &caller,
            self.posix_acl,
        ));
        reply_empty(result, "setxattr", ino.0, reply);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = op_span("getxattr", req, ino.0).entered();
        match self.rt.block_on(self.core.getxattr(ino.0, name.as_bytes())) {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(fail("getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = op_span("listxattr", req, ino.0).entered();
        match self.rt.block_on(self.core.listxattr(ino.0)) {
            Ok(list) => reply_xattr(reply, size, &list),
            Err(e) => reply.error(fail("listxattr", ino.0, &e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = op_span("removexattr", req, ino.0).entered();
        let result = self
            .rt
            .block_on(self.core.removexattr(ino.0, name.as_bytes()));
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
        let result = self.rt.block_on(async {
            let range = Fallocate::from_mode(offset, length, mode)?;
            self.core.fallocate(fh.0, ino.0, range, req.uid()).await
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
        // The kernel answers SEEK_SET/CUR/END itself.
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            reply.error(Errno::EINVAL);
            return;
        }
        let data = whence == libc::SEEK_DATA;
        match self.rt.block_on(self.core.seek(fh.0, offset, data)) {
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
        let copy = self
            .core
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len);
        match self.rt.block_on(copy) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fail("copy_file_range", ino_in.0, &e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = op_span("readlink", req, ino.0).entered();
        match self.rt.block_on(self.core.readlink(ino.0)) {
            Ok(target) => reply.data(&target),
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
        let result = self.rt.block_on(self.core.dfs().create(request));
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
        let result = self.rt.block_on(self.core.dfs().create(request));
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
        let result = self.rt.block_on(self.core.dfs().create(request));
        self.reply_entry(result, "symlink", parent.0, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = op_span("unlink", req, parent.0).entered();
        let result = self
            .rt
            .block_on(self.core.dfs().unlink(parent.0, name.as_bytes()));
        reply_empty(result, "unlink", parent.0, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = op_span("rmdir", req, parent.0).entered();
        let result = self
            .rt
            .block_on(self.core.dfs().rmdir(parent.0, name.as_bytes()));
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
            client_id: 0,
        };
        let result = self.rt.block_on(self.core.dfs().rename(request));
        reply_empty(result, "rename", parent.0, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = op_span("open", req, ino.0).entered();
        match self.rt.block_on(self.core.open_sized(ino.0, flags.0)) {
            Ok((fh, size)) => {
                // Close-to-open: the kernel's size of a file that changed
                // elsewhere would cut its reads short (see kernel_attrs).
                if self.kernel.stale(ino.0, size) {
                    if let Some(n) = self.notifier.get() {
                        match n.inval_inode(ino, -1, 0) {
                            Ok(()) => self.kernel.dropped(ino.0),
                            Err(e) => {
                                tracing::debug!(ino = ino.0, error = %e, "cannot drop attributes")
                            }
                        }
                    }
                }
                reply.opened(FileHandle(fh), FopenFlags::empty())
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
        match self.rt.block_on(self.core.create_open(request, flags)) {
            Ok((attr, fh)) => reply.created(
                &self.ttl,
                &self.kernel.told(&attr),
                Generation(attr.generation),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
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
        match self.rt.block_on(self.core.read(fh.0, offset, size)) {
            Ok(data) => {
                static BYTES: Series<(), metrics::Counter> = Series::new();
                BYTES
                    .get((), |()| metrics::counter!(FUSE_READ_BYTES))
                    .increment(data.len() as u64);
                reply.data(&data)
            }
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
        match self.rt.block_on(self.core.write(fh.0, offset, data)) {
            Ok(()) => {
                // The kernel grows its size with the write itself.
                self.kernel.wrote(ino.0, offset + data.len() as u64);
                static BYTES: Series<(), metrics::Counter> = Series::new();
                BYTES
                    .get((), |()| metrics::counter!(FUSE_WRITTEN_BYTES))
                    .increment(data.len() as u64);
                reply.written(data.len() as u32)
            }
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
        let result = self.rt.block_on(self.core.close(fh.0, ino.0, lock_owner.0));
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
        let result = self.rt.block_on(self.core.fsync(fh.0));
        reply_empty(result, "fsync", ino.0, reply);
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = op_span("fsyncdir", req, ino.0).entered();
        let result = self.rt.block_on(self.core.dfs().sync());
        reply_empty(result, "fsyncdir", ino.0, reply);
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
        let owner = lock_owner.map(|o| o.0);
        let result = self.rt.block_on(self.core.release(fh.0, ino.0, owner));
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
        let asked = self.core.get_lock(ino.0, lock_owner.0, start, end, typ);
        match self.rt.block_on(asked) {
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
        // Not timed: a blocking lock waits as long as its holder keeps it.
        let span = op_span("setlk", req, ino.0).span;
        let (core, notifier) = (self.core.clone(), self.notifier.clone());
        let waiter = sleep.then_some(req.pid());
        let ino = ino.0;
        self.rt.spawn(
            async move {
                let set = core.set_lock(fh.0, ino, lock_owner.0, start, end, typ, pid, waiter);
                let result = set.await;
                // The file changed under the lock: its cached pages go
                // before the lock is granted (from a blocking thread, with
                // the file's state unlocked: dropping pages waits for reads
                // in progress, and reads need the state).
                if let (Ok(true), Some(n)) = (&result, notifier.get().cloned()) {
                    let dropped =
                        tokio::task::spawn_blocking(move || n.inval_inode(INodeNo(ino), 0, 0));
                    if let Ok(Err(e)) = dropped.await {
                        tracing::debug!(ino, error = %e, "cannot drop cached pages");
                    }
                }
                reply_empty(result, "setlk", ino, reply);
            }
            .instrument(span),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = op_span("opendir", req, ino.0).entered();
        match self.rt.block_on(self.core.open_dir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
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
        match self.listing("readdir", ino.0, fh, offset, false) {
            Ok(listed) => {
                for e in listed {
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
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
        match self.listing("readdirplus", ino.0, fh, offset, true) {
            Ok(listed) => {
                for e in listed {
                    let Some(attr) = e.attr else { break };
                    let name = OsStr::from_bytes(&e.name);
                    let generation = Generation(attr.generation);
                    let attr = self.kernel.told(&attr);
                    if reply.add(INodeNo(e.ino), e.offset, name, &self.ttl, &attr, generation) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
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
        self.core.release_dir(fh.0);
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _span = op_span("statfs", req, ino.0).entered();
        match self.rt.block_on(self.core.dfs().statfs()) {
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
