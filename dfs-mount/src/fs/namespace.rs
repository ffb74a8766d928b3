//! Names, attributes and extended attributes: the metadata operations of
//! the file system core, with the policies that go with them (what a
//! setattr commits first, what an unprivileged change drops, when
//! fallocate says ENOSPC). `crate::fuse` only decodes kernel requests into
//! these calls and encodes their replies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_core::error::DfsError;
use dfs_proto::{
    CreateRequest, DirEntry, Empty, FileKind, InoRequest, InodeRecord, LinkRequest, LookupRequest,
    ReadDirRequest, RemoveRequest, SetAttrRequest, StatFsReply, XattrRequest,
};

use super::known_names::NameChange;
use super::pending_attrs::PendingAttrs;
use super::statahead;
use super::{Dfs, FileState, OpenFile};
use crate::locks::Locks;
use dfs_core::time::now_ns;

/// The access ACL's extended attribute.
const ACL_ACCESS_XATTR: &[u8] = b"system.posix_acl_access";

/// Who asks for a change, as far as the policies below care.
pub struct Caller<'a> {
    pub uid: u32,
    /// Whether the caller has this group as its file-system group or a
    /// supplementary one.
    pub in_group: &'a dyn Fn(u32) -> bool,
}

/// What a `fallocate` asks for, decoded from its mode.
#[derive(Clone, Copy, Debug)]
pub struct Fallocate {
    pub offset: u64,
    pub length: u64,
    /// Leave the size as it is (FALLOC_FL_KEEP_SIZE).
    pub keep_size: bool,
    /// Punch a hole or zero the range (both read as zeros afterwards).
    pub zero: bool,
}

impl Dfs {
    /// A client of the byte-range locks the metadata service keeps.
    pub fn new_lock_client(&self) -> Arc<Locks> {
        Locks::new(self.cluster.meta.clone())
    }

    /// Directory `ino` as a change this client made just left it, and for
    /// how much longer of `ttl` that answer holds (see
    /// `client::meta::MetaClient::changed_dir`).
    pub fn changed_dir(
        &self,
        ino: u64,
        ttl: std::time::Duration,
    ) -> Option<(InodeRecord, std::time::Duration)> {
        self.cluster.meta.changed_dir(ino, ttl)
    }

    /// The cluster's capacity, use and file count.
    pub async fn statfs(&self) -> Result<StatFsReply, DfsError> {
        self.cluster.meta.stat_fs(Empty {}).await
    }

    /// Makes every namespace change acknowledged so far durable in the
    /// metadata store (creates, chmods, utimes and xattrs are committed
    /// without waiting for the disk; data commits always wait).
    pub async fn sync(&self) -> Result<(), DfsError> {
        self.cluster.meta.sync(Empty {}).await.map(|_| ())
    }

    /// [`Dfs::overlay_attr`] for many attributes at once (a directory
    /// listing).
    pub async fn overlay_attrs(&self, attrs: Vec<InodeRecord>) -> Vec<InodeRecord> {
        let mut out = Vec::with_capacity(attrs.len());
        for attr in attrs {
            out.push(self.overlay_attr(attr).await);
        }
        out
    }

    /// An inode's attributes as the metadata server has them, without what
    /// this client has buffered.
    pub async fn stored_attr(&self, ino: u64) -> Result<InodeRecord, DfsError> {
        self.cluster.meta.get_attr(InoRequest { ino }).await
    }

    /// An inode's attributes as this client sees them (its buffered writes
    /// laid over what the metadata server has).
    pub async fn getattr(&self, ino: u64) -> Result<InodeRecord, DfsError> {
        let attr = self.stored_attr(ino).await?;
        Ok(self.overlay_attr(attr).await)
    }

    /// An open file's attributes as dfs-meta recently answered for them,
    /// with this client's buffered state laid over, and how long the
    /// kernel may keep them (see `MetaRpc::recent_file`).
    pub async fn recent_open_file(
        &self,
        ino: u64,
        ttl: Duration,
    ) -> Option<(InodeRecord, Duration)> {
        self.open_file(ino)?;
        let meta = &self.cluster.meta;
        let (attr, left, changes) = meta.recent_file(ino, ttl)?;
        let attr = self.overlay_attr(attr).await;
        // The overlay waited for the file's state: a commit that held it
        // (of attributes deferred until now) may have changed the inode,
        // which dfs-meta's answer then lacks and the state no longer holds.
        meta.still_current(changes).then_some((attr, left))
    }

    /// `name` in directory `parent`. "." and ".." come from the kernel
    /// only when it decodes a file handle (open_by_handle_at, NFS export):
    /// inode numbers are global, so any inode can be found from its number.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<InodeRecord, DfsError> {
        Ok(self.lookup_timed(parent, name).await?.0)
    }

    /// [`Dfs::lookup`], and, when a statahead page answered, how much
    /// longer the answer may be kept (otherwise the whole cache lifetime).
    pub async fn lookup_timed(
        &self,
        parent: u64,
        name: &[u8],
    ) -> Result<(InodeRecord, Option<Duration>), DfsError> {
        match name {
            b"." => return Ok((self.getattr(parent).await?, None)),
            b".." => {
                let dir = self.getattr(parent).await?;
                if dir.kind() != FileKind::Directory {
                    return Err(DfsError::new(libc::ENOTDIR, "not a directory"));
                }
                let up = if dir.parent == 0 { dir.ino } else { dir.parent };
                return Ok((self.getattr(up).await?, None));
            }
            _ => {}
        }
        if self.names.absent(parent, name) {
            return Err(DfsError::new(libc::ENOENT, "no such file or directory"));
        }
        let meta = &self.cluster.meta;
        let changes = meta.changes();
        if let Some((attr, left)) = self.statahead.answer(parent, name, changes) {
            return Ok((self.overlay_attr(attr).await, Some(left)));
        }
        let request = LookupRequest {
            parent,
            name: name.to_vec(),
        };
        let attr = match self.statahead.missed(parent, name, changes) {
            None => {
                let found = meta.lookup(request).await?;
                self.statahead.found(parent, changes);
                found
            }
            Some(page) => {
                let asked = Instant::now();
                let page_request = ReadDirRequest {
                    ino: parent,
                    after_name: page.after,
                    limit: statahead::PAGE_ENTRIES,
                    plus: true,
                };
                let (found, page) = tokio::join!(meta.lookup(request), meta.read_dir(page_request));
                match page {
                    Ok(page) => {
                        self.statahead
                            .store(parent, page.entries, page.more, asked, changes)
                    }
                    Err(e) => tracing::debug!(parent, error = %e, "statahead page not read"),
                }
                found?
            }
        };
        Ok((self.overlay_attr(attr).await, None))
    }

    /// Creates a file, directory, symlink or node. The request carries an
    /// id of its own, the same on every retry, so that a retry of a create
    /// that happened answers with its inode instead of EEXIST.
    pub async fn create(&self, request: CreateRequest) -> Result<InodeRecord, DfsError> {
        self.create_inner(request, false).await
    }

    /// [`Dfs::create`] of a file about to be opened (FUSE create): answered
    /// at once where this client may, and sent with the file's first
    /// commit (`early_create`). A file made by mknod is never opened, so
    /// nothing but a deadline would send it: it goes at once.
    pub async fn create_to_open(&self, request: CreateRequest) -> Result<InodeRecord, DfsError> {
        self.create_inner(request, true).await
    }

    async fn create_inner(
        &self,
        mut request: CreateRequest,
        to_open: bool,
    ) -> Result<InodeRecord, DfsError> {
        if request.create_id == 0 {
            request.create_id = rand::random::<u64>() | 1;
        }
        if request.client_id == 0 {
            request.client_id = self.names.lease_client();
        }
        if to_open {
            if let Some(made) = self.answer_create(&request).await {
                return Ok(made);
            }
        }
        let (parent, is_dir) = (request.parent, request.kind() == FileKind::Directory);
        let name = std::mem::take(&mut request.name);
        let sent = Instant::now();
        let result = self
            .cluster
            .meta
            .create(CreateRequest {
                name: name.clone(),
                ..request
            })
            .await;
        self.note_names(parent, result.is_ok(), NameChange::Added(&name), sent);
        if let (Ok(made), true) = (&result, is_dir) {
            self.cluster.meta.note_made_dir(made);
            self.names.made(made, sent);
        }
        result
    }

    /// Tells the view of `dir`'s names ([`super::known_names`]) what this client's
    /// change of it did, or that it failed (the view is dropped).
    /// `sent`: when the change was sent (a lease it renewed counts from
    /// then).
    pub(super) fn note_names(
        &self,
        dir: u64,
        changed: bool,
        change: NameChange<'_>,
        sent: Instant,
    ) {
        if changed {
            let after = self.cluster.meta.last_changed_dir(dir);
            self.names.changed(after.as_ref(), dir, change, sent);
        } else {
            self.names.forget(dir);
        }
    }

    /// A new name for `ino` (a hard link).
    pub async fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<InodeRecord, DfsError> {
        let request = LinkRequest {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
            client_id: self.names.lease_client(),
        };
        let sent = Instant::now();
        let linked = self.cluster.meta.link(request).await;
        self.note_names(
            new_parent,
            linked.is_ok(),
            NameChange::Added(new_name),
            sent,
        );
        let attr = linked?;
        if let Some(file) = self.open_file(ino) {
            // A deferred setattr's reply is built on this: one more link.
            file.state.lock().await.learn(Some(attr.clone()));
        }
        Ok(self.overlay_attr(attr).await)
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), DfsError> {
        let request = RemoveRequest {
            parent,
            name: name.to_vec(),
            keep_ino: 0,
            client_id: self.names.lease_client(),
        };
        let sent = Instant::now();
        let removed = self.cluster.meta.rmdir(request).await;
        self.note_names(parent, removed.is_ok(), NameChange::Removed(name), sent);
        removed.map(|_| ())
    }

    /// Directory `ino`'s attributes, for opening it (ENOTDIR otherwise).
    pub async fn open_dir(&self, ino: u64) -> Result<InodeRecord, DfsError> {
        let attr = self.stored_attr(ino).await?;
        if attr.kind() != FileKind::Directory {
            return Err(DfsError::new(libc::ENOTDIR, "not a directory"));
        }
        Ok(attr)
    }

    /// Changes attributes, and with `size` the file's length. Buffered
    /// writes are committed first: they would otherwise stamp their own
    /// mtime when committed later, undoing an explicit utimens.
    pub async fn setattr(
        &self,
        ino: u64,
        request: SetAttrRequest,
        size: Option<u64>,
    ) -> Result<InodeRecord, DfsError> {
        let touches_meta = request.mode.is_some()
            || request.uid.is_some()
            || request.gid.is_some()
            || request.atime_ns.is_some()
            || request.mtime_ns.is_some()
            || request.atime_now
            || request.mtime_now;
        if let Some(size) = size {
            let file = self.open(ino).await?;
            let result = {
                let mut st = self.lock(&file).await;
                self.truncate(&mut st, size).await
            };
            self.release(&file).await?;
            result?;
        } else if touches_meta {
            if let Some(file) = self.open_file(ino) {
                let mut st = self.lock(&file).await;
                if let Some(attr) = defer_attrs(&mut st, &request) {
                    return Ok(attr);
                }
                // Committed first, so that an explicit mtime lands after
                // the data's.
                self.flush(&mut st).await?;
            }
        }
        if touches_meta {
            // A directory this client holds the lease of: its own change
            // does not wait the lease out (`dir_lease`).
            let request = SetAttrRequest {
                client_id: self.names.lease_client(),
                ..request
            };
            let attr = self.cluster.meta.set_attr(request).await?;
            if let Some(file) = self.open_file(ino) {
                // What a later deferred setattr's reply is built on.
                file.state.lock().await.learn(Some(attr.clone()));
            }
            return Ok(self.overlay_attr(attr).await);
        }
        self.getattr(ino).await
    }

    /// Clears set-user-ID and set-group-ID on `ino`, if set: what a change
    /// of the contents by an unprivileged user does.
    pub async fn drop_suid_sgid(&self, ino: u64) -> Result<(), DfsError> {
        let attr = self.getattr(ino).await?;
        let privileged = libc::S_ISUID | libc::S_ISGID;
        if attr.mode & privileged == 0 {
            return Ok(());
        }
        let request = SetAttrRequest {
            ino,
            mode: Some(attr.mode & !privileged & 0o7777),
            ..Default::default()
        };
        self.setattr(ino, request, None).await.map(|_| ())
    }

    /// `fallocate(2)` on an open file. Space is never reserved ahead
    /// (chunks are deduplicated and coded when written): allocating grows
    /// the size, and zeroing punches a hole, which reads as zeros and costs
    /// nothing. A request for more than the cluster has free could never
    /// be written, so it fails with ENOSPC at once.
    pub async fn fallocate(
        &self,
        file: &Arc<OpenFile>,
        ino: u64,
        range: Fallocate,
        caller_uid: u32,
    ) -> Result<(), DfsError> {
        let mut st = self.lock(file).await;
        if range.zero {
            self.punch_hole(&mut st, range.offset, range.length).await?;
        } else {
            let fs = self.statfs().await?;
            let free = fs.capacity_bytes.saturating_sub(fs.used_bytes);
            if fs.capacity_bytes > 0 && range.length > free {
                return Err(DfsError::new(
                    libc::ENOSPC,
                    format!(
                        "fallocate of {} bytes: the cluster has {free} bytes free",
                        range.length
                    ),
                ));
            }
        }
        let end = range.offset.saturating_add(range.length);
        if !range.keep_size && end > st.size {
            self.truncate(&mut st, end).await?;
        }
        drop(st);
        // As a write does (the kernel asks for that one itself).
        if caller_uid != 0 {
            self.drop_suid_sgid(ino).await?;
        }
        Ok(())
    }

    /// Sets an extended attribute. fuser cannot receive the kernel's
    /// FUSE_SETXATTR_ACL_KILL_SGID, so its rule is applied here: setting
    /// an access ACL clears set-group-ID unless the caller is in the file's
    /// group or root.
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        caller: &Caller<'_>,
    ) -> Result<(), DfsError> {
        let mut request = XattrRequest {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
            kill_sgid: false,
            client_id: self.names.lease_client(),
        };
        // An access ACL and the mode follow each other in dfs-meta.
        self.commit_pending_attrs(ino).await?;
        if name == ACL_ACCESS_XATTR && caller.uid != 0 {
            let attr = self.getattr(ino).await?;
            if attr.mode & libc::S_ISGID != 0 {
                request.kill_sgid = !(caller.in_group)(attr.gid);
            }
        }
        let result = self.cluster.meta.set_xattr(request).await.map(|_| ());
        self.forget_known_attr(ino).await;
        result
    }

    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, DfsError> {
        if name.starts_with(b"system.posix_acl") {
            self.commit_pending_attrs(ino).await?;
        }
        let request = XattrRequest {
            ino,
            name: name.to_vec(),
            ..Default::default()
        };
        self.cluster.meta.get_xattr(request).await.map(|r| r.value)
    }

    /// The names of `ino`'s extended attributes.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, DfsError> {
        self.cluster
            .meta
            .list_xattr(InoRequest { ino })
            .await
            .map(|r| r.names)
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), DfsError> {
        self.commit_pending_attrs(ino).await?;
        let request = XattrRequest {
            ino,
            name: name.to_vec(),
            client_id: self.names.lease_client(),
            ..Default::default()
        };
        let result = self.cluster.meta.remove_xattr(request).await.map(|_| ());
        self.forget_known_attr(ino).await;
        result
    }

    /// Commits the attributes an open `ino` holds back (with its data),
    /// before an operation whose outcome depends on them.
    async fn commit_pending_attrs(&self, ino: u64) -> Result<(), DfsError> {
        if let Some(file) = self.open_file(ino) {
            let mut st = self.lock(&file).await;
            if st.pending_attrs.is_some() {
                self.flush(&mut st).await?;
            }
        }
        Ok(())
    }

    /// An ACL change may have moved the mode: a deferred setattr's reply
    /// must not be built on the inode as it was.
    async fn forget_known_attr(&self, ino: u64) {
        if let Some(file) = self.open_file(ino) {
            file.state.lock().await.known_attr = None;
        }
    }

    pub async fn read_dir_all(&self, ino: u64, plus: bool) -> Result<Vec<DirEntry>, DfsError> {
        let mut entries = Vec::new();
        let mut after = Vec::new();
        loop {
            let request = ReadDirRequest {
                ino,
                after_name: after.clone(),
                limit: 1000,
                plus,
            };
            let reply = self.cluster.meta.read_dir(request).await?;
            if let Some(last) = reply.entries.last() {
                after = last.name.clone();
            }
            entries.extend(reply.entries);
            if !reply.more {
                return Ok(entries);
            }
        }
    }

    /// Attributes as this client sees them: buffered writes change size and
    /// mtime before they are committed.
    pub async fn overlay_attr(&self, mut attr: InodeRecord) -> InodeRecord {
        if attr.kind() != FileKind::Regular {
            return attr;
        }
        if let Some(of) = self.open_file(attr.ino) {
            let st = of.state.lock().await;
            if !st.loaded {
                // A placeholder whose load failed knows nothing yet.
                return attr;
            }
            st.overlay(&mut attr);
        }
        attr
    }
}

/// Keeps `request` for the file's next commit when the file has buffered
/// data or attributes already waiting (see [`super::pending_attrs`]), and
/// returns the attributes as they will be; None when it must go now.
fn defer_attrs(st: &mut FileState, request: &SetAttrRequest) -> Option<InodeRecord> {
    if !st.loaded || st.orphaned || st.unlinked_kept || !PendingAttrs::can_defer(request) {
        return None;
    }
    if !st.data_dirty() && st.pending_attrs.is_none() {
        return None;
    }
    let mut attr = st.known_attr.clone()?;
    st.pending_attrs
        .get_or_insert_with(PendingAttrs::default)
        .merge(request, now_ns());
    st.overlay(&mut attr);
    Some(attr)
}
