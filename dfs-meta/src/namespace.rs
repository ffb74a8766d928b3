//! Namespace operations: each function runs inside one transaction and
//! either applies whole or not at all.

use dfs_proto::{
    CreateRequest, DirEntry, DirentRecord, FileKind, InodeRecord, RenameRequest, SetAttrRequest,
};
use prost::Message;

use crate::error::{MetaError, Result};
use crate::inodes::{get_inode, put_inode};
use crate::keys;
use crate::store::{decode_counter, get_record, put_record, KvTxn};
use crate::{acl, chunkmap};

pub const ROOT_INO: u64 = 1;
/// Longest name one directory entry may have, as on Linux.
pub const NAME_MAX: usize = 255;
pub use dfs_proto::{RENAME_EXCHANGE, RENAME_NOREPLACE};

pub(crate) const S_ISGID: u32 = 0o2000;
pub(crate) const COUNTER_NEXT_INO: &str = "next_ino";
pub const COUNTER_INODES: &str = "inodes";

fn get_dir(txn: &mut dyn KvTxn, ino: u64) -> Result<InodeRecord> {
    let dir = get_inode(txn, ino)?;
    if dir.kind() != FileKind::Directory {
        return Err(MetaError::NotDir);
    }
    Ok(dir)
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(MetaError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(MetaError::Invalid(format!(
            "bad file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

pub fn lookup_entry(txn: &mut dyn KvTxn, parent: u64, name: &[u8]) -> Result<Option<DirentRecord>> {
    get_record(txn, &keys::dirent(parent, name))
}

/// Creates the root directory and the volume record on an empty store.
pub fn init_root(txn: &mut dyn KvTxn, now_ns: i64) -> Result<bool> {
    if txn.get(&keys::inode(ROOT_INO))?.is_some() {
        return Ok(false);
    }
    let root = InodeRecord {
        ino: ROOT_INO,
        kind: FileKind::Directory as i32,
        mode: 0o755,
        nlink: 2,
        atime_ns: now_ns,
        mtime_ns: now_ns,
        ctime_ns: now_ns,
        parent: ROOT_INO,
        ..Default::default()
    };
    put_inode(txn, &root);
    txn.set(
        &keys::counter(COUNTER_NEXT_INO),
        &(ROOT_INO as i64 + 1).to_le_bytes(),
    );
    txn.atomic_add(&keys::counter(COUNTER_INODES), 1)?;
    Ok(true)
}

pub fn lookup(txn: &mut dyn KvTxn, parent: u64, name: &[u8]) -> Result<InodeRecord> {
    get_dir(txn, parent)?;
    if name.len() > NAME_MAX {
        return Err(MetaError::NameTooLong);
    }
    let entry = lookup_entry(txn, parent, name)?.ok_or(MetaError::NotFound)?;
    get_inode(txn, entry.ino)
}

/// Creates `req.name` in `req.parent` as inode `ino` (from an
/// [`InodeAllocator`](crate::inodes::InodeAllocator)).
pub fn create(
    txn: &mut dyn KvTxn,
    req: &CreateRequest,
    ino: u64,
    now_ns: i64,
) -> Result<InodeRecord> {
    check_name(&req.name)?;
    let mut parent = get_dir(txn, req.parent)?;
    if let Some(existing) = lookup_entry(txn, req.parent, &req.name)? {
        // This very create again (its reply was lost, or its commit's
        // outcome unknown): what it made is the answer.
        if req.create_id != 0 && existing.create_id == req.create_id {
            return get_inode(txn, existing.ino);
        }
        return Err(MetaError::Exists);
    }
    let kind = req.kind();
    if kind == FileKind::Unspecified {
        return Err(MetaError::Invalid("file kind not given".into()));
    }
    if kind == FileKind::Symlink
        && (req.symlink_target.is_empty() || req.symlink_target.len() > 4096)
    {
        return Err(MetaError::Invalid(
            "symlink target must be 1 to 4096 bytes".into(),
        ));
    }
    let mut mode = req.mode & 0o7777;
    // Where the new inode inherits from: its parent, or the directory it
    // will be renamed into (`inherit_from`).
    let (from_ino, from_mode, from_gid) = match req.inherit_from {
        0 => (parent.ino, parent.mode, parent.gid),
        dir => {
            let d = get_dir(txn, dir)?;
            (d.ino, d.mode, d.gid)
        }
    };
    // A default ACL on the parent replaces the umask: the new inode's ACL
    // is it, limited by the mode asked for.
    let inherited = match kind {
        FileKind::Symlink => None,
        _ => txn.get(&keys::xattr(from_ino, acl::DEFAULT))?,
    };
    let mut new_xattrs: Vec<(&[u8], Vec<u8>)> = Vec::new();
    match inherited.as_deref().map(acl::Acl::parse) {
        Some(Ok(default)) => {
            let access = default.masked_for_create(mode);
            mode = (mode & !0o777) | access.mode_bits();
            if !access.is_minimal() {
                new_xattrs.push((acl::ACCESS, access.to_bytes()));
            }
            if kind == FileKind::Directory {
                new_xattrs.push((acl::DEFAULT, default.to_bytes()));
            }
        }
        Some(Err(e)) => {
            tracing::warn!(parent = req.parent, error = %e, "ignoring an unreadable default ACL");
            mode &= !req.umask;
        }
        None => mode &= !req.umask,
    }
    // A directory's tiering policy is handed down to what is made in it.
    if kind != FileKind::Symlink {
        let tier = dfs_core::tier::XATTR.as_bytes();
        if let Some(policy) = txn.get(&keys::xattr(from_ino, tier))? {
            new_xattrs.push((tier, policy));
        }
    }
    let mut gid = req.gid;
    // A setgid directory hands its group down, and the bit to subdirectories.
    if from_mode & S_ISGID != 0 {
        gid = from_gid;
        if kind == FileKind::Directory {
            mode |= S_ISGID;
        }
    }
    if txn.get(&keys::inode(ino))?.is_some() {
        return Err(MetaError::Corrupt(format!("inode {ino} handed out twice")));
    }
    let is_dir = kind == FileKind::Directory;
    let inode = InodeRecord {
        ino,
        kind: kind as i32,
        mode,
        uid: req.uid,
        gid,
        size: if kind == FileKind::Symlink {
            req.symlink_target.len() as u64
        } else {
            0
        },
        atime_ns: now_ns,
        mtime_ns: now_ns,
        ctime_ns: now_ns,
        nlink: if is_dir { 2 } else { 1 },
        rdev: req.rdev,
        generation: 0,
        symlink_target: req.symlink_target.clone(),
        parent: if is_dir { req.parent } else { 0 },
        data_version: 0,
        access_day: 0, // set by its first write (`access`)
        tier: dfs_proto::Tier::Hot as i32,
        default_acl: is_dir && new_xattrs.iter().any(|(name, _)| *name == acl::DEFAULT),
        ..Default::default()
    };
    put_inode(txn, &inode);
    for (name, value) in new_xattrs {
        txn.set(&keys::xattr(ino, name), &value);
    }
    put_dirent(
        txn,
        req.parent,
        &req.name,
        &DirentRecord {
            ino,
            kind: kind as i32,
            create_id: req.create_id,
        },
    );
    if is_dir {
        parent.nlink += 1;
    }
    parent.mtime_ns = now_ns;
    parent.ctime_ns = now_ns;
    parent.entry_changes += 1;
    put_inode(txn, &parent);
    txn.atomic_add(&keys::counter(COUNTER_INODES), 1)?;
    Ok(inode)
}

/// Writes a directory entry and, for a non-directory, its back-reference
/// (`B ino parent name`): the one way entries are made, so the two never
/// part. Subtree caps find a file's directories through them.
fn put_dirent(txn: &mut dyn KvTxn, parent: u64, name: &[u8], entry: &DirentRecord) {
    put_record(txn, &keys::dirent(parent, name), entry);
    if entry.kind() != FileKind::Directory {
        txn.set(&keys::backref(entry.ino, parent, name), &[]);
    }
}

/// Counts one change of `dir`'s entries ([`InodeRecord::entry_changes`]):
/// called once per directory by each transaction that changes them.
fn count_entry_change(txn: &mut dyn KvTxn, dir: u64) -> Result<()> {
    let mut record = get_inode(txn, dir)?;
    record.entry_changes += 1;
    put_inode(txn, &record);
    Ok(())
}

/// Removes a directory entry and its back-reference.
fn clear_dirent(txn: &mut dyn KvTxn, parent: u64, name: &[u8], entry: &DirentRecord) {
    txn.clear(&keys::dirent(parent, name));
    if entry.kind() != FileKind::Directory {
        txn.clear(&keys::backref(entry.ino, parent, name));
    }
}

/// Drops one link to `inode` (its entry in directory `from_dir`); when
/// none is left the inode and its chunk map go, and the chunks' reference
/// counts drop with them, unless the caller keeps it open (`keep_ino`):
/// then it stays, without links, until [`forget_unlinked`], remembering
/// `from_dir` as its parent (the directory a subtree cap judges it by).
/// True when the purge worker has the rest of a large file's chunk map to
/// release (see [`remove_inode`]).
fn drop_link(
    txn: &mut dyn KvTxn,
    mut inode: InodeRecord,
    from_dir: u64,
    keep_ino: u64,
    now_ns: i64,
) -> Result<bool> {
    let is_dir = inode.kind() == FileKind::Directory;
    inode.nlink = inode.nlink.saturating_sub(1);
    inode.ctime_ns = now_ns;
    if !is_dir && inode.nlink == 0 && keep_ino == inode.ino {
        inode.parent = from_dir;
        txn.set(&keys::unlinked_open(inode.ino), &now_ns.to_le_bytes());
        put_inode(txn, &inode);
        return Ok(false);
    }
    if is_dir || inode.nlink == 0 {
        return remove_inode(txn, &inode);
    }
    put_inode(txn, &inode);
    Ok(false)
}

/// Removes an inode that has no links left. True when part of its chunk
/// map is left to the purge worker.
fn remove_inode(txn: &mut dyn KvTxn, inode: &InodeRecord) -> Result<bool> {
    // A small file's chunks go with it; a large one's are purged in
    // bounded transactions afterwards (`purge`): the name and inode go
    // now, so nobody ever sees a half-removed file.
    let purge_left = inode.kind() == FileKind::Regular
        && !chunkmap::purge_some(txn, inode.ino, chunkmap::PURGE_BATCH)?;
    if purge_left {
        txn.set(&keys::trash(inode.ino), &[]);
    }
    // Key by key, not a range clear: RocksDB range tombstones slow every
    // later read, and most inodes have no attributes at all.
    let xattrs = keys::xattr_prefix(inode.ino);
    for (key, _) in txn.range(&xattrs, &keys::prefix_end(&xattrs), 0, false)? {
        txn.clear(&key);
    }
    txn.clear(&keys::inode(inode.ino));
    crate::access::forget(txn, inode);
    // Locks left by clients (their `W` index entries go when the session
    // ends, finding no table).
    txn.clear(&keys::lock_table(inode.ino));
    txn.atomic_add(&keys::counter(COUNTER_INODES), -1)?;
    Ok(purge_left)
}

/// Renews the leases of kept unlinked inodes (a client still has them
/// open). Inodes without a marker are skipped: already forgotten.
pub fn keep_unlinked(txn: &mut dyn KvTxn, inos: &[u64], now_ns: i64) -> Result<()> {
    for &ino in inos {
        let marker = keys::unlinked_open(ino);
        if txn.get(&marker)?.is_some() {
            txn.set(&marker, &now_ns.to_le_bytes());
        }
    }
    Ok(())
}

/// Looks at up to `limit` unlinked-open markers from `from` (a key; empty:
/// the first) and forgets the inodes whose lease was last renewed before
/// `expired_before_ns` (their client died). Returns how many were removed
/// and the key to continue from (`None`: no markers left).
pub fn expire_unlinked(
    txn: &mut dyn KvTxn,
    from: &[u8],
    expired_before_ns: i64,
    limit: usize,
) -> Result<(u64, Option<Vec<u8>>)> {
    let (rows, next) = crate::store::tag_page(txn, keys::UNLINKED_OPEN, from, limit)?;
    let mut removed = 0;
    for (key, value) in rows {
        let renewed = crate::store::decode_counter(Some(&value));
        if renewed >= expired_before_ns {
            continue;
        }
        let Some(ino) = keys::unlinked_open_ino(&key) else {
            continue;
        };
        forget_unlinked(txn, ino)?;
        removed += 1;
    }
    Ok((removed, next))
}

/// Removes an inode kept by an unlink or rename while a client had it
/// open, now that the client closed it. Repeating it, or calling it for an
/// inode with links, changes nothing.
///
/// True when part of the file's chunk map is left to the purge worker.
pub fn forget_unlinked(txn: &mut dyn KvTxn, ino: u64) -> Result<bool> {
    let marker = keys::unlinked_open(ino);
    if txn.get(&marker)?.is_none() {
        return Ok(false);
    }
    txn.clear(&marker);
    match get_record::<InodeRecord>(txn, &keys::inode(ino))? {
        Some(inode) if inode.nlink == 0 => remove_inode(txn, &inode),
        _ => Ok(false),
    }
}

fn dir_is_empty(txn: &mut dyn KvTxn, ino: u64) -> Result<bool> {
    let prefix = keys::dirent_prefix(ino);
    Ok(txn
        .range(&prefix, &keys::prefix_end(&prefix), 1, false)?
        .is_empty())
}

pub fn unlink(
    txn: &mut dyn KvTxn,
    parent_ino: u64,
    name: &[u8],
    keep_ino: u64,
    now_ns: i64,
) -> Result<bool> {
    let mut parent = get_dir(txn, parent_ino)?;
    let entry = lookup_entry(txn, parent_ino, name)?.ok_or(MetaError::NotFound)?;
    let inode = get_inode(txn, entry.ino)?;
    if inode.kind() == FileKind::Directory {
        return Err(MetaError::IsDir);
    }
    clear_dirent(txn, parent_ino, name, &entry);
    let purge_left = drop_link(txn, inode, parent_ino, keep_ino, now_ns)?;
    parent.mtime_ns = now_ns;
    parent.ctime_ns = now_ns;
    parent.entry_changes += 1;
    put_inode(txn, &parent);
    Ok(purge_left)
}

pub fn rmdir(txn: &mut dyn KvTxn, parent_ino: u64, name: &[u8], now_ns: i64) -> Result<()> {
    if name == b"." {
        return Err(MetaError::Invalid("cannot remove `.`".into()));
    }
    if name == b".." {
        return Err(MetaError::NotEmpty);
    }
    let mut parent = get_dir(txn, parent_ino)?;
    let entry = lookup_entry(txn, parent_ino, name)?.ok_or(MetaError::NotFound)?;
    let inode = get_inode(txn, entry.ino)?;
    if inode.kind() != FileKind::Directory {
        return Err(MetaError::NotDir);
    }
    if !dir_is_empty(txn, inode.ino)? {
        return Err(MetaError::NotEmpty);
    }
    clear_dirent(txn, parent_ino, name, &entry);
    drop_link(txn, inode, parent_ino, 0, now_ns)?;
    parent.nlink = parent.nlink.saturating_sub(1);
    parent.mtime_ns = now_ns;
    parent.ctime_ns = now_ns;
    parent.entry_changes += 1;
    put_inode(txn, &parent);
    Ok(())
}

/// True when `dir` is `ancestor` or lies below it.
pub(crate) fn is_within(txn: &mut dyn KvTxn, mut dir: u64, ancestor: u64) -> Result<bool> {
    // Bounded walk: a cycle in stored parents would be corruption.
    for _ in 0..4096 {
        if dir == ancestor {
            return Ok(true);
        }
        if dir == ROOT_INO {
            return Ok(false);
        }
        dir = get_inode(txn, dir)?.parent;
    }
    Err(MetaError::Corrupt(
        "directory parent chain too deep or cyclic".into(),
    ))
}

pub fn rename(txn: &mut dyn KvTxn, req: &RenameRequest, now_ns: i64) -> Result<bool> {
    check_name(&req.new_name)?;
    if req.name.len() > NAME_MAX {
        return Err(MetaError::NameTooLong);
    }
    let noreplace = req.flags & RENAME_NOREPLACE != 0;
    let exchange = req.flags & RENAME_EXCHANGE != 0;
    if (noreplace && exchange) || req.flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
        return Err(MetaError::Invalid(format!("rename flags {:#x}", req.flags)));
    }
    get_dir(txn, req.parent)?;
    get_dir(txn, req.new_parent)?;
    let src_entry = lookup_entry(txn, req.parent, &req.name)?.ok_or(MetaError::NotFound)?;
    let mut src = get_inode(txn, src_entry.ino)?;
    let dst_entry = lookup_entry(txn, req.new_parent, &req.new_name)?;
    if let Some(dst) = &dst_entry {
        if dst.ino == src.ino {
            // Same file under both names (or the same name): nothing to do.
            return Ok(false);
        }
        if noreplace {
            return Err(MetaError::Exists);
        }
    } else if exchange {
        return Err(MetaError::NotFound);
    }
    let src_is_dir = src.kind() == FileKind::Directory;
    if src_is_dir && req.parent != req.new_parent && is_within(txn, req.new_parent, src.ino)? {
        return Err(MetaError::Invalid(
            "cannot move a directory into itself".into(),
        ));
    }

    let dst = match &dst_entry {
        Some(e) => Some(get_inode(txn, e.ino)?),
        None => None,
    };
    if exchange {
        let mut dst = dst.ok_or(MetaError::NotFound)?;
        let dst_is_dir = dst.kind() == FileKind::Directory;
        if dst_is_dir && req.parent != req.new_parent && is_within(txn, req.parent, dst.ino)? {
            return Err(MetaError::Invalid(
                "cannot move a directory into itself".into(),
            ));
        }
        let dst_entry = dst_entry.as_ref().ok_or(MetaError::NotFound)?;
        clear_dirent(txn, req.parent, &req.name, &src_entry);
        clear_dirent(txn, req.new_parent, &req.new_name, dst_entry);
        put_dirent(txn, req.new_parent, &req.new_name, &src_entry);
        put_dirent(txn, req.parent, &req.name, dst_entry);
        src.ctime_ns = now_ns;
        dst.ctime_ns = now_ns;
        if src_is_dir {
            src.parent = req.new_parent;
        }
        if dst_is_dir {
            dst.parent = req.parent;
        }
        put_inode(txn, &src);
        put_inode(txn, &dst);
        if src_is_dir != dst_is_dir && req.parent != req.new_parent {
            let (gains, loses) = if src_is_dir {
                (req.new_parent, req.parent)
            } else {
                (req.parent, req.new_parent)
            };
            adjust_dir(txn, gains, 1, now_ns)?;
            adjust_dir(txn, loses, -1, now_ns)?;
        }
        adjust_dir(txn, req.parent, 0, now_ns)?;
        adjust_dir(txn, req.new_parent, 0, now_ns)?;
        count_renamed_entries(txn, req)?;
        return Ok(false);
    }

    let mut purge_left = false;
    if let Some(dst) = dst {
        let dst_is_dir = dst.kind() == FileKind::Directory;
        match (src_is_dir, dst_is_dir) {
            (true, false) => return Err(MetaError::NotDir),
            (false, true) => return Err(MetaError::IsDir),
            (true, true) if !dir_is_empty(txn, dst.ino)? => return Err(MetaError::NotEmpty),
            _ => {}
        }
        if dst_is_dir {
            // The replaced directory's `..` no longer counts for new_parent.
            adjust_dir(txn, req.new_parent, -1, now_ns)?;
        }
        if let Some(e) = &dst_entry {
            clear_dirent(txn, req.new_parent, &req.new_name, e);
        }
        purge_left = drop_link(txn, dst, req.new_parent, req.keep_ino, now_ns)?;
    }
    clear_dirent(txn, req.parent, &req.name, &src_entry);
    put_dirent(txn, req.new_parent, &req.new_name, &src_entry);
    src.ctime_ns = now_ns;
    if src_is_dir {
        src.parent = req.new_parent;
    }
    put_inode(txn, &src);
    if src_is_dir && req.parent != req.new_parent {
        adjust_dir(txn, req.parent, -1, now_ns)?;
        adjust_dir(txn, req.new_parent, 1, now_ns)?;
    } else {
        adjust_dir(txn, req.parent, 0, now_ns)?;
        adjust_dir(txn, req.new_parent, 0, now_ns)?;
    }
    count_renamed_entries(txn, req)?;
    Ok(purge_left)
}

/// A rename changes the entries of its one or two directories once each.
fn count_renamed_entries(txn: &mut dyn KvTxn, req: &RenameRequest) -> Result<()> {
    count_entry_change(txn, req.parent)?;
    if req.new_parent != req.parent {
        count_entry_change(txn, req.new_parent)?;
    }
    Ok(())
}

/// Changes a directory's link count by `delta` and stamps its times.
fn adjust_dir(txn: &mut dyn KvTxn, ino: u64, delta: i32, now_ns: i64) -> Result<()> {
    let mut dir = get_inode(txn, ino)?;
    dir.nlink = dir.nlink.saturating_add_signed(delta);
    dir.mtime_ns = now_ns;
    dir.ctime_ns = now_ns;
    put_inode(txn, &dir);
    Ok(())
}

pub fn set_attr(txn: &mut dyn KvTxn, req: &SetAttrRequest, now_ns: i64) -> Result<InodeRecord> {
    let mut inode = get_inode(txn, req.ino)?;
    if let Some(mode) = req.mode {
        inode.mode = mode & 0o7777;
        // chmod rewrites the access ACL's owner, mask and other entries.
        let key = keys::xattr(req.ino, acl::ACCESS);
        if let Some(value) = txn.get(&key)? {
            match acl::Acl::parse(&value) {
                Ok(mut access) => {
                    access.chmod(inode.mode);
                    txn.set(&key, &access.to_bytes());
                }
                Err(e) => {
                    tracing::warn!(ino = req.ino, error = %e, "unreadable access ACL left as is")
                }
            }
        }
    }
    if req.uid.is_some() || req.gid.is_some() {
        if let Some(uid) = req.uid {
            inode.uid = uid;
        }
        if let Some(gid) = req.gid {
            inode.gid = gid;
        }
        // As on Linux: a change of owner clears setuid, and setgid when the
        // group can execute (otherwise it marks mandatory locking).
        if inode.kind() != FileKind::Directory {
            inode.mode &= !0o4000;
            if inode.mode & 0o010 != 0 {
                inode.mode &= !S_ISGID;
            }
        }
    }
    if req.atime_now {
        inode.atime_ns = now_ns;
    } else if let Some(t) = req.atime_ns {
        inode.atime_ns = t;
    }
    if req.mtime_now {
        inode.mtime_ns = now_ns;
    } else if let Some(t) = req.mtime_ns {
        inode.mtime_ns = t;
    }
    inode.ctime_ns = now_ns;
    put_inode(txn, &inode);
    Ok(inode)
}

/// Most links one inode may have (ext4's limit).
const LINK_MAX: u32 = 65_000;

/// Gives the non-directory `ino` another name, `new_name` in `new_parent`.
pub fn link(
    txn: &mut dyn KvTxn,
    ino: u64,
    new_parent: u64,
    new_name: &[u8],
    now_ns: i64,
) -> Result<InodeRecord> {
    check_name(new_name)?;
    let mut parent = get_dir(txn, new_parent)?;
    let mut inode = get_inode(txn, ino)?;
    if inode.kind() == FileKind::Directory {
        return Err(MetaError::NotPermitted(
            "hard links to directories are not allowed".into(),
        ));
    }
    if inode.nlink == 0 {
        // Unlinked but still open: linkat(2) of such a file fails too.
        return Err(MetaError::NotFound);
    }
    if inode.nlink >= LINK_MAX {
        return Err(MetaError::TooManyLinks);
    }
    if lookup_entry(txn, new_parent, new_name)?.is_some() {
        return Err(MetaError::Exists);
    }
    put_dirent(
        txn,
        new_parent,
        new_name,
        &DirentRecord {
            ino,
            kind: inode.kind,
            create_id: 0,
        },
    );
    inode.nlink += 1;
    inode.ctime_ns = now_ns;
    put_inode(txn, &inode);
    parent.mtime_ns = now_ns;
    parent.ctime_ns = now_ns;
    parent.entry_changes += 1;
    put_inode(txn, &parent);
    Ok(inode)
}

/// One page of a directory, in name order, strictly after `after`.
pub fn read_dir(
    txn: &mut dyn KvTxn,
    ino: u64,
    after: &[u8],
    limit: usize,
    plus: bool,
) -> Result<(Vec<DirEntry>, bool)> {
    get_dir(txn, ino)?;
    let prefix = keys::dirent_prefix(ino);
    let begin = if after.is_empty() {
        prefix.clone()
    } else {
        let mut k = keys::dirent(ino, after);
        k.push(0);
        k
    };
    let limit = limit.clamp(1, 10_000);
    let rows = txn.range(&begin, &keys::prefix_end(&prefix), limit + 1, false)?;
    let more = rows.len() > limit;
    let mut entries = Vec::with_capacity(rows.len().min(limit));
    for (key, value) in rows.into_iter().take(limit) {
        let rec = DirentRecord::decode(value.as_slice())?;
        let attr = if plus {
            Some(get_inode(txn, rec.ino)?)
        } else {
            None
        };
        entries.push(DirEntry {
            name: keys::dirent_name(&key).to_vec(),
            ino: rec.ino,
            kind: rec.kind,
            attr,
        });
    }
    Ok((entries, more))
}

pub fn inode_count(txn: &mut dyn KvTxn) -> Result<u64> {
    Ok(decode_counter(txn.get(&keys::counter(COUNTER_INODES))?.as_deref()).max(0) as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{transact, MemStore};

    #[test]
    fn a_create_sent_again_finds_its_own_name() {
        let store = MemStore::default();
        transact(&store, |t| init_root(t, 1)).unwrap();
        let request = CreateRequest {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            kind: FileKind::Regular as i32,
            mode: 0o644,
            create_id: 7,
            ..Default::default()
        };
        let first = transact(&store, |t| create(t, &request, 100, 1)).unwrap();
        // A retry after an unknown commit: the same id finds the same file.
        let again = transact(&store, |t| create(t, &request, 101, 2)).unwrap();
        assert_eq!((again.ino, again.nlink), (first.ino, 1));
        // Another create of the name, or one without an id, is refused.
        for create_id in [8, 0] {
            let other = CreateRequest {
                create_id,
                ..request.clone()
            };
            let result = transact(&store, |t| create(t, &other, 102, 3));
            assert!(matches!(result, Err(MetaError::Exists)), "{result:?}");
        }
        let listed = transact(&store, |t| read_dir(t, ROOT_INO, b"", 10, false)).unwrap();
        assert_eq!(listed.0.len(), 1, "one name, not a duplicate");
    }

    #[test]
    fn each_change_of_a_directory_s_entries_counts_once() {
        let store = MemStore::default();
        transact(&store, |t| init_root(t, 1)).unwrap();
        let changes = |ino: u64| {
            transact(&store, |t| get_inode(t, ino))
                .unwrap()
                .entry_changes
        };
        let make = |parent: u64, name: &[u8], kind: FileKind, ino: u64| {
            let request = CreateRequest {
                parent,
                name: name.to_vec(),
                kind: kind as i32,
                mode: 0o755,
                ..Default::default()
            };
            transact(&store, |t| create(t, &request, ino, 10)).unwrap()
        };
        let a = make(ROOT_INO, b"a", FileKind::Directory, 100);
        let b = make(ROOT_INO, b"b", FileKind::Directory, 101);
        assert_eq!((changes(ROOT_INO), changes(a.ino)), (2, 0));
        make(a.ino, b"f", FileKind::Regular, 102);
        make(a.ino, b"g", FileKind::Regular, 103);
        // Renames within one directory, and across two (a directory moved).
        let within = RenameRequest {
            parent: a.ino,
            name: b"f".to_vec(),
            new_parent: a.ino,
            new_name: b"g".to_vec(),
            ..Default::default()
        };
        transact(&store, |t| rename(t, &within, 20)).unwrap();
        assert_eq!(changes(a.ino), 2 + 1, "a rename over a name counts once");
        let across = RenameRequest {
            parent: ROOT_INO,
            name: b"a".to_vec(),
            new_parent: b.ino,
            new_name: b"a".to_vec(),
            ..Default::default()
        };
        transact(&store, |t| rename(t, &across, 21)).unwrap();
        assert_eq!(
            (changes(ROOT_INO), changes(b.ino), changes(a.ino)),
            (3, 1, 3)
        );
        transact(&store, |t| link(t, 102, ROOT_INO, b"h", 22)).unwrap();
        transact(&store, |t| unlink(t, a.ino, b"g", 0, 23)).unwrap();
        transact(&store, |t| rmdir(t, b.ino, b"a", 24)).unwrap();
        assert_eq!((changes(ROOT_INO), changes(b.ino)), (4, 2));
    }

    #[test]
    fn a_create_can_inherit_from_the_directory_it_will_be_renamed_into() {
        let store = MemStore::default();
        transact(&store, |t| init_root(t, 1)).unwrap();
        let dir = |name: &[u8], mode: u32, gid: u32| CreateRequest {
            parent: ROOT_INO,
            name: name.to_vec(),
            kind: FileKind::Directory as i32,
            mode,
            gid,
            ..Default::default()
        };
        let tmp = transact(&store, |t| create(t, &dir(b"tmp", 0o700, 0), 10, 1)).unwrap();
        let team = transact(&store, |t| create(t, &dir(b"team", 0o2775, 50), 11, 1)).unwrap();
        // The team directory: group rw for everyone it makes, and a policy.
        let default = acl::Acl {
            entries: vec![
                acl::Entry {
                    tag: acl::USER_OBJ,
                    perm: 7,
                    id: u32::MAX,
                },
                acl::Entry {
                    tag: acl::GROUP_OBJ,
                    perm: 6,
                    id: u32::MAX,
                },
                acl::Entry {
                    tag: acl::OTHER,
                    perm: 4,
                    id: u32::MAX,
                },
            ],
        };
        let tier = dfs_core::tier::XATTR.as_bytes();
        transact(&store, |t| {
            t.set(&keys::xattr(team.ino, acl::DEFAULT), &default.to_bytes());
            t.set(&keys::xattr(team.ino, tier), b"cold");
            Ok::<_, MetaError>(())
        })
        .unwrap();
        let file = |inherit_from: u64, name: &[u8]| CreateRequest {
            parent: tmp.ino,
            name: name.to_vec(),
            kind: FileKind::Regular as i32,
            mode: 0o666,
            uid: 1000,
            gid: 1000,
            umask: 0o022,
            inherit_from,
            ..Default::default()
        };
        // As if made in the team directory: its group, its ACL, its policy.
        let made = transact(&store, |t| create(t, &file(team.ino, b"a"), 20, 2)).unwrap();
        assert_eq!((made.gid, made.mode & 0o7777), (50, 0o664));
        let policy = transact(&store, |t| t.get(&keys::xattr(made.ino, tier))).unwrap();
        assert_eq!(policy.as_deref(), Some(&b"cold"[..]));
        // From its own parent, as before: the umask, the caller's group.
        let plain = transact(&store, |t| create(t, &file(0, b"b"), 21, 2)).unwrap();
        assert_eq!((plain.gid, plain.mode & 0o7777), (1000, 0o644));
        let policy = transact(&store, |t| t.get(&keys::xattr(plain.ino, tier))).unwrap();
        assert_eq!(policy, None);
        // Inheriting from something that is not a directory is refused.
        let result = transact(&store, |t| create(t, &file(plain.ino, b"c"), 22, 3));
        assert!(matches!(result, Err(MetaError::NotDir)), "{result:?}");
    }
}
