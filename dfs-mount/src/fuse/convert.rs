//! Kernel types to and from the core's: attributes, file kinds, times,
//! the caller's groups, and the getxattr/listxattr size protocol.

use dfs_core::time::{ns_to_system_time, system_time_to_ns};
use dfs_proto::{FileKind, InodeRecord};
use fuser::{Errno, FileAttr, FileType, INodeNo, ReplyXattr, Request, TimeOrNow};

/// The block size `stat` and `statfs` report.
pub const BLOCK_SIZE: u32 = 4096;

/// True when the process behind `req` has `gid` as its file-system group
/// or a supplementary group (read from `/proc/PID/status`).
pub fn caller_in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

pub fn file_type(kind: FileKind) -> FileType {
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

pub fn kind_from_mode(mode: u32) -> FileKind {
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

/// Answers a getxattr/listxattr: the size when asked for it (`size` 0),
/// the bytes when they fit, ERANGE when they do not.
pub fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
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

pub fn time_ns(t: Option<TimeOrNow>) -> (Option<i64>, bool) {
    match t {
        None => (None, false),
        Some(TimeOrNow::Now) => (None, true),
        Some(TimeOrNow::SpecificTime(t)) => (Some(system_time_to_ns(t)), false),
    }
}
