//! The file-system core as one mount's kernel sees it: numbered handles on
//! open files and directories, and the operations that go through a handle
//! (read, write, flush, locks, listings). Each method is what one kernel
//! request asks for, in plain types: `crate::fuse` decodes the request,
//! calls one method, and encodes the reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_core::error::DfsError;
use dfs_proto::{CreateRequest, DirEntry, FileKind, InodeRecord};
use parking_lot::Mutex;

use super::namespace::{Caller, Fallocate};
use super::{Dfs, OpenFile};
use crate::locks::{HeldLock, Locks};

/// Most bytes one copy_file_range request copies (it may copy less; the
/// caller asks again for the rest). Below 4 GiB: the reply is a u32.
const COPY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Entries whose attributes one readdirplus reply prepares. A reply buffer
/// (a page or a few) holds 25-100 entries of ~160 bytes; preparing many
/// more would be thrown away, fewer ends the reply early (the kernel asks
/// again from where it stopped).
const READDIRPLUS_PAGE: usize = 128;
/// Entries one readdir reply is prepared from (a reply holds ~100-300).
const READDIR_PAGE: usize = 1024;
/// The attribute the kernel looks up before every write.
const CAPABILITY_XATTR: &[u8] = b"security.capability";
/// Bound on `no_capability` entries; the map starts over past it.
const NO_CAPABILITY_MAX: usize = 65_536;
/// Prefix of the POSIX ACL attributes.
const POSIX_ACL_PREFIX: &[u8] = b"system.posix_acl_";

struct FileHandle {
    ino: u64,
    file: Arc<OpenFile>,
    append: bool,
    /// End of the last read, to spot sequential reads for readahead.
    last_read_end: AtomicU64,
    /// End of the window readahead has already started fetches for: each
    /// sequential read only starts the chunks past it, not again the ones
    /// still in flight (which cost a task and a record clone each, dozens
    /// per 128 KiB read).
    readahead_until: AtomicU64,
}

struct DirHandle {
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

/// One entry of a directory listing as the kernel numbers them: offset 1
/// is ".", 2 is "..", 2 + i + 1 is entry i; `offset` is where the next
/// listing call resumes.
pub struct Listed {
    pub ino: u64,
    pub offset: u64,
    pub kind: FileKind,
    pub name: Vec<u8>,
    /// For readdirplus: the attributes, with this client's buffered writes
    /// laid over them.
    pub attr: Option<InodeRecord>,
}

/// Attributes and how long the kernel may keep them.
pub struct TimedAttr {
    pub attr: InodeRecord,
    pub valid_for: Duration,
}

pub struct Handles {
    dfs: Arc<Dfs>,
    /// fcntl/flock locks, held in the metadata service for every client.
    locks: Arc<Locks>,
    /// How long the kernel keeps attributes and names.
    ttl: Duration,
    next_fh: AtomicU64,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    /// Inodes known (within `ttl`) to have no `security.capability`: the
    /// kernel asks for it before every write(2) to see whether the write
    /// must drop privileges, which would otherwise be one metadata round
    /// trip per write call.
    no_capability: Mutex<HashMap<u64, Instant>>,
}

fn bad_handle(what: &str) -> DfsError {
    DfsError::new(libc::EBADF, format!("unknown {what} handle"))
}

impl Handles {
    pub fn new(dfs: Arc<Dfs>, ttl: Duration) -> Self {
        Self {
            locks: dfs.new_lock_client(),
            dfs,
            ttl,
            next_fh: AtomicU64::new(1),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            no_capability: Mutex::new(HashMap::new()),
        }
    }

    pub fn dfs(&self) -> &Arc<Dfs> {
        &self.dfs
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn file(&self, fh: u64) -> Result<Arc<FileHandle>, DfsError> {
        self.files
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| bad_handle("file"))
    }

    fn add_file(&self, ino: u64, file: Arc<OpenFile>, flags: i32) -> u64 {
        let fh = self.next_fh();
        let handle = FileHandle {
            ino,
            file,
            append: flags & libc::O_APPEND != 0,
            last_read_end: AtomicU64::new(u64::MAX),
            readahead_until: AtomicU64::new(0),
        };
        self.files.lock().insert(fh, Arc::new(handle));
        fh
    }

    /// Remembers, for the attribute timeout, that `ino` has no
    /// `security.capability` (the kernel asks before every write).
    fn note_no_capability(&self, ino: u64) {
        let mut known = self.no_capability.lock();
        if known.len() >= NO_CAPABILITY_MAX {
            known.clear();
        }
        known.insert(ino, Instant::now());
    }

    /// Attributes for `stat`: a directory this client just changed is
    /// answered from the change's reply (the kernel asks because it knows
    /// the change touched it), a file open here from dfs-meta's recent
    /// answer while this client changed nothing since; a directory removed
    /// while open here answers with no links, as on a local file system.
    pub async fn getattr(&self, ino: u64) -> Result<TimedAttr, DfsError> {
        if let Some((attr, valid_for)) = self.dfs.changed_dir(ino, self.ttl) {
            return Ok(TimedAttr { attr, valid_for });
        }
        if let Some((attr, valid_for)) = self.dfs.recent_open_file(ino, self.ttl).await {
            return Ok(TimedAttr { attr, valid_for });
        }
        match self.dfs.getattr(ino).await {
            Ok(attr) => Ok(TimedAttr {
                attr,
                valid_for: self.ttl,
            }),
            Err(e) if e.errno == libc::ENOENT => match self.removed_open_dir(ino) {
                Some(attr) => Ok(TimedAttr {
                    attr,
                    valid_for: Duration::ZERO,
                }),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
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

    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, DfsError> {
        let attr = self.dfs.getattr(ino).await?;
        if attr.kind() != FileKind::Symlink {
            return Err(DfsError::new(libc::EINVAL, "not a symbolic link"));
        }
        Ok(attr.symlink_target)
    }

    /// Sets an extended attribute. With ACLs off (`-o noacl`) the POSIX
    /// ACL attributes are refused, as ext4 does: the metadata server would
    /// keep the mode in step with an ACL the kernel does not enforce.
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        caller: &Caller<'_>,
        posix_acl: bool,
    ) -> Result<(), DfsError> {
        if !posix_acl && name.starts_with(POSIX_ACL_PREFIX) {
            return Err(DfsError::new(
                libc::EOPNOTSUPP,
                "POSIX ACLs are off on this mount",
            ));
        }
        self.no_capability.lock().remove(&ino);
        self.dfs.setxattr(ino, name, value, flags, caller).await
    }

    /// Reads an extended attribute; the kernel's capability probe before
    /// each write is answered from memory when the file has none.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, DfsError> {
        let capability = name == CAPABILITY_XATTR;
        let known_absent = || {
            self.no_capability
                .lock()
                .get(&ino)
                .is_some_and(|at| at.elapsed() < self.ttl)
        };
        if capability && known_absent() {
            return Err(DfsError::new(libc::ENODATA, "no such attribute"));
        }
        let result = self.dfs.getxattr(ino, name).await;
        if let Err(e) = &result {
            if capability && e.errno == libc::ENODATA {
                self.note_no_capability(ino);
            }
        }
        result
    }

    /// The names of `ino`'s extended attributes, NUL-terminated, back to
    /// back (as the kernel wants them).
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<u8>, DfsError> {
        let mut list = Vec::new();
        for name in self.dfs.listxattr(ino).await? {
            list.extend_from_slice(&name);
            list.push(0);
        }
        Ok(list)
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), DfsError> {
        self.no_capability.lock().remove(&ino);
        self.dfs.removexattr(ino, name).await
    }

    /// Opens `ino`; returns the handle number.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<u64, DfsError> {
        let file = self.dfs.open(ino).await?;
        Ok(self.add_file(ino, file, flags))
    }

    /// [`Handles::open`], and the file's size as the open found it.
    pub async fn open_sized(&self, ino: u64, flags: i32) -> Result<(u64, u64), DfsError> {
        let file = self.dfs.open(ino).await?;
        let size = self.dfs.lock(&file).await.size;
        Ok((self.add_file(ino, file, flags), size))
    }

    /// Creates a regular file and opens it; returns its attributes and the
    /// handle number.
    pub async fn create_open(
        &self,
        request: CreateRequest,
        flags: i32,
    ) -> Result<(InodeRecord, u64), DfsError> {
        let attr = self.dfs.create_to_open(request).await?;
        let file = self.dfs.open_created(&attr).await?;
        // A new file has no extended attributes: the kernel's check for
        // file capabilities before each write needs no RPC.
        self.note_no_capability(attr.ino);
        let fh = self.add_file(attr.ino, file, flags);
        Ok((attr, fh))
    }

    /// Reads up to `size` bytes at `offset`; a read that starts where the
    /// last one ended starts readahead past it.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, DfsError> {
        let handle = self.file(fh)?;
        let st = self.dfs.lock(&handle.file).await;
        let end = (offset + u64::from(size)).min(st.size);
        let data = self.dfs.read_range(&st, offset, end.max(offset)).await?;
        let sequential = handle.last_read_end.swap(end, Ordering::Relaxed) == offset;
        if sequential {
            // The window is refilled half at a time: a burst of half a
            // window of chunks leaves as a few large GetShards per server,
            // where topping it up at each 128 KiB read sent a request of a
            // shard or two to each.
            let until = handle.readahead_until.load(Ordering::Relaxed);
            if until < end + self.dfs.readahead_bytes / 2 {
                let until = self.dfs.readahead(&st, end, until);
                handle.readahead_until.store(until, Ordering::Relaxed);
            }
        } else {
            handle.readahead_until.store(0, Ordering::Relaxed);
        }
        Ok(data)
    }

    /// Writes `data` at `offset` (at the end for an O_APPEND handle) into
    /// the file's buffer, starting a write-behind flush when it is full.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<(), DfsError> {
        let handle = self.file(fh)?;
        let mut st = self.dfs.lock_for_write(&handle.file).await;
        let offset = if handle.append { st.size } else { offset };
        self.dfs.write(&mut st, offset, data).await?;
        self.dfs.write_behind(&mut st).await;
        Ok(())
    }

    /// Commits what the handle's file has buffered (fsync, and each close).
    pub async fn fsync(&self, fh: u64) -> Result<(), DfsError> {
        let handle = self.file(fh)?;
        let mut st = self.dfs.lock(&handle.file).await;
        let clean = st.is_clean() && st.behind.is_none();
        // Attributes held back with no data left to carry them go as a
        // SetAttr of their own, which is not synced.
        let attrs_alone = st.pending_attrs.is_some() && !st.data_dirty();
        self.dfs.flush(&mut st).await?;
        if clean || attrs_alone {
            // Nothing to commit, so no synced commit covers the namespace
            // changes before it (the create, a chmod): sync them.
            self.dfs.sync().await?;
        }
        Ok(())
    }

    /// Commits what the handle's file has buffered (a commit is synced).
    async fn flush(&self, fh: u64) -> Result<(), DfsError> {
        let handle = self.file(fh)?;
        let mut st = self.dfs.lock(&handle.file).await;
        self.dfs.flush(&mut st).await
    }

    /// A close of a descriptor: its data is committed, then the process's
    /// fcntl locks on the file are released (the next holder sees the
    /// data), even when the data could not be committed.
    pub async fn close(&self, fh: u64, ino: u64, lock_owner: u64) -> Result<(), DfsError> {
        let flushed = self.flush(fh).await;
        let released = self.locks.release_owner(ino, lock_owner).await;
        flushed.and(released)
    }

    /// The last close of an open file description: the file is released,
    /// then its flock (the kernel names the owner only when it took one)
    /// and its OFD locks (never named: found by the handle).
    pub async fn release(
        &self,
        fh: u64,
        ino: u64,
        lock_owner: Option<u64>,
    ) -> Result<(), DfsError> {
        let handle = self.files.lock().remove(&fh);
        let released = match handle {
            Some(h) => self.dfs.release(&h.file).await,
            None => Ok(()),
        };
        let unlocked = async {
            if let Some(owner) = lock_owner {
                self.locks.release_owner(ino, owner).await?;
            }
            self.locks.release_handle(ino, fh).await
        }
        .await;
        released.and(unlocked)
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `offset`.
    pub async fn seek(&self, fh: u64, offset: i64, data: bool) -> Result<u64, DfsError> {
        let handle = self.file(fh)?;
        let st = self.dfs.lock(&handle.file).await;
        let offset =
            u64::try_from(offset).map_err(|_| DfsError::new(libc::ENXIO, "negative offset"))?;
        self.dfs
            .seek_data_or_hole(&st, offset, data)
            .ok_or_else(|| DfsError::new(libc::ENXIO, "no data or hole past the offset"))
    }

    pub async fn fallocate(
        &self,
        fh: u64,
        ino: u64,
        range: Fallocate,
        caller_uid: u32,
    ) -> Result<(), DfsError> {
        let handle = self.file(fh)?;
        self.dfs
            .fallocate(&handle.file, ino, range, caller_uid)
            .await
    }

    /// Copies up to `len` bytes between two open files by sharing chunks;
    /// returns how many it copied. A short copy is allowed (callers loop):
    /// it bounds memory for the bytes copied at the edges and the size of
    /// one commit.
    pub async fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Result<u64, DfsError> {
        let src = self.file(fh_in)?;
        let dst = self.file(fh_out)?;
        self.dfs
            .copy_file_range(
                &src.file,
                &dst.file,
                offset_in,
                offset_out,
                len.min(COPY_BYTES_MAX),
            )
            .await
    }

    /// Asks for an fcntl/flock lock (`wait`: the pid of a caller that
    /// waits for it). What was written under a lock is committed before it
    /// changes hands, and a reader taking one sees what another client
    /// wrote under it: the returned flag says the file's chunk map was
    /// reloaded, so cached pages must go.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_lock(
        &self,
        fh: u64,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        wait: Option<u32>,
    ) -> Result<bool, DfsError> {
        let file = self.files.lock().get(&fh).map(|h| h.file.clone());
        if let Some(file) = &file {
            let mut st = self.dfs.lock(file).await;
            self.dfs.flush(&mut st).await?;
        }
        self.locks
            .set(ino, fh, owner, start, end, typ, pid, wait)
            .await?;
        if typ == libc::F_UNLCK {
            return Ok(false);
        }
        match &file {
            Some(file) => self.dfs.refresh(&mut *self.dfs.lock(file).await).await,
            None => Ok(false),
        }
    }

    pub async fn get_lock(
        &self,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
    ) -> Result<HeldLock, DfsError> {
        self.locks.get(ino, owner, start, end, typ).await
    }

    /// Opens directory `ino`: its entries are read by the first listing.
    pub async fn open_dir(&self, ino: u64) -> Result<u64, DfsError> {
        let attr = self.dfs.open_dir(ino).await?;
        let handle = DirHandle {
            entries: Vec::new(),
            parent: if attr.parent == 0 { ino } else { attr.parent },
            attr,
            loaded: false,
        };
        let fh = self.next_fh();
        self.dirs.lock().insert(fh, Arc::new(handle));
        Ok(fh)
    }

    pub fn release_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// The open directory behind `fh`, its entries read when a listing
    /// starts (offset 0: the first one, or one after rewinddir).
    async fn dir_for_listing(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Arc<DirHandle>, DfsError> {
        let dir = self
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| bad_handle("directory"))?;
        if offset != 0 && dir.loaded {
            return Ok(dir);
        }
        let entries = self.dfs.read_dir_all(ino, true).await?;
        let fresh = Arc::new(DirHandle {
            entries,
            parent: dir.parent,
            attr: dir.attr.clone(),
            loaded: true,
        });
        self.dirs.lock().insert(fh, fresh.clone());
        Ok(fresh)
    }

    /// The listing of open directory `fh` from `offset` on; with `plus`,
    /// each entry carries its attributes (a page of them at most: the
    /// kernel asks again from where a reply stops).
    pub async fn list(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        plus: bool,
    ) -> Result<Vec<Listed>, DfsError> {
        let dir = self.dir_for_listing(ino, fh, offset).await?;
        let mut listed = Vec::new();
        if offset < 2 {
            let dots = [(ino, &b"."[..]), (dir.parent, &b".."[..])];
            for (i, (dot_ino, name)) in dots.into_iter().enumerate().skip(offset as usize) {
                let attr = match plus {
                    true => Some(self.dfs.getattr(dot_ino).await?),
                    false => None,
                };
                listed.push(Listed {
                    ino: dot_ino,
                    offset: i as u64 + 1,
                    kind: FileKind::Directory,
                    name: name.to_vec(),
                    attr,
                });
            }
        }
        let first = offset.saturating_sub(2) as usize;
        let entries = dir.entries.get(first..).unwrap_or_default();
        if !plus {
            let page = entries.iter().take(READDIR_PAGE).enumerate();
            listed.extend(page.map(|(i, e)| Listed {
                ino: e.ino,
                offset: (2 + first + i + 1) as u64,
                kind: e.kind(),
                name: e.name.clone(),
                attr: None,
            }));
            return Ok(listed);
        }
        let page: Vec<InodeRecord> = entries
            .iter()
            .take(READDIRPLUS_PAGE)
            .map_while(|e| e.attr.clone())
            .collect();
        let attrs = self.dfs.overlay_attrs(page).await;
        listed.extend(
            entries
                .iter()
                .zip(attrs)
                .enumerate()
                .map(|(i, (e, attr))| Listed {
                    ino: e.ino,
                    offset: (2 + first + i + 1) as u64,
                    kind: e.kind(),
                    name: e.name.clone(),
                    attr: Some(attr),
                }),
        );
        Ok(listed)
    }

    /// At the end of the session: commits whatever an abrupt end left
    /// buffered (the kernel flushes every handle before a clean unmount)
    /// and ends this client's lock session.
    pub async fn shut_down(&self) {
        let handles: Vec<Arc<FileHandle>> = self.files.lock().values().cloned().collect();
        for h in handles {
            let mut st = self.dfs.lock(&h.file).await;
            if let Err(e) = self.dfs.flush(&mut st).await {
                tracing::error!(ino = h.ino, error = %e, "data not flushed at unmount");
            }
        }
        self.dfs.cluster.meta.settle_deferred().await;
        self.locks.end().await;
    }
}

impl Fallocate {
    /// Decodes fallocate(2)'s mode: EOPNOTSUPP for what dfs does not do
    /// (unknown flags, punching a hole that changes the size, punching and
    /// zeroing at once).
    pub fn from_mode(offset: u64, length: u64, mode: i32) -> Result<Self, DfsError> {
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero_range = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && !keep_size) || (punch && zero_range) {
            return Err(DfsError::new(
                libc::EOPNOTSUPP,
                format!("fallocate mode {mode:#x} is not supported"),
            ));
        }
        Ok(Self {
            offset,
            length,
            keep_size,
            zero: punch || zero_range,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallocate_modes_dfs_cannot_do_are_refused() {
        let punch = libc::FALLOC_FL_PUNCH_HOLE;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE;
        for mode in [punch, punch | zero | keep, 0x100] {
            let e = Fallocate::from_mode(0, 1, mode).expect_err("refused");
            assert_eq!(e.errno, libc::EOPNOTSUPP, "mode {mode:#x}");
        }
        let hole = Fallocate::from_mode(4, 8, punch | keep).expect("a hole");
        assert!(hole.zero && hole.keep_size);
        let grow = Fallocate::from_mode(0, 8, 0).expect("growth");
        assert!(!grow.zero && !grow.keep_size);
        assert!(Fallocate::from_mode(0, 8, zero).expect("zeroing").zero);
    }
}
