//! Subtree caps: a client certificate issued with `--subtree /PATH` (as
//! cephx's `path=`) reaches only what lies under PATH, and sees PATH as
//! the root of the volume, the way an NFS export of a directory looks to
//! its clients. Nothing changes in the mount: dfs-meta maps the root inode
//! of every request from such a client to the subtree's directory and back
//! in every reply, and refuses (EACCES) any inode it names that is not
//! inside.
//!
//! "Inside" is decided in the request's own transaction, so a rename
//! racing it cannot slip an inode out between the check and the change:
//! - a directory: its parent chain (`InodeRecord.parent`) reaches the
//!   subtree's directory;
//! - any other inode: one of its links does, found through the
//!   back-references `B ino parent name` written with every directory
//!   entry (`namespace::put_dirent`); a hard link from inside makes a file
//!   reachable, as it would be by path;
//! - a file unlinked while open: the directory it was last unlinked from.
//!
//! The subtree is a path, resolved on each request (a few point reads), so
//! renaming its directory away takes the client's access with it, as with
//! cephx. Unconfined callers pay nothing: no reads at all.

use dfs_proto::{DirEntry, DirentRecord, FileKind, InodeRecord};
use prost::Message;

use crate::error::{MetaError, Result};
use crate::inodes::get_inode;
use crate::keys;
use crate::namespace::{self, ROOT_INO};
use crate::store::{tag_page, transact, KvTxn, MetaStore};

/// What one request may reach.
pub struct Scope<'a> {
    /// The directory the caller sees as the root.
    root: u64,
    /// The subtree's path, for messages; `None`: the whole volume.
    subtree: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// The whole volume: no mapping, no checks.
    pub const WHOLE: Scope<'static> = Scope {
        root: ROOT_INO,
        subtree: None,
    };

    /// The scope of a caller confined to `subtree` (a normalized absolute
    /// path, as certificates carry it), resolved in `txn`.
    pub fn resolve(txn: &mut dyn KvTxn, subtree: Option<&'a str>) -> Result<Scope<'a>> {
        let Some(path) = subtree.filter(|p| *p != "/") else {
            return Ok(Scope {
                root: ROOT_INO,
                subtree: None,
            });
        };
        let missing = || {
            MetaError::AccessDenied(format!(
                "{path}, the subtree this client's certificate is confined to, is not a directory of the volume"
            ))
        };
        let mut dir = ROOT_INO;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            let entry = namespace::lookup_entry(txn, dir, name.as_bytes())?.ok_or_else(missing)?;
            if entry.kind() != FileKind::Directory {
                return Err(missing());
            }
            dir = entry.ino;
        }
        Ok(Scope {
            root: dir,
            subtree: Some(path),
        })
    }

    fn confined(&self) -> bool {
        self.subtree.is_some()
    }

    /// The inode a request names as `ino`, as the store knows it; refused
    /// when it lies outside the subtree.
    pub fn ino(&self, txn: &mut dyn KvTxn, ino: u64) -> Result<u64> {
        let Some(path) = self.subtree else {
            return Ok(ino);
        };
        let ino = if ino == ROOT_INO { self.root } else { ino };
        if reaches(txn, self.root, ino)? {
            Ok(ino)
        } else {
            Err(MetaError::AccessDenied(format!(
                "inode {ino} is outside {path}, the subtree this client's certificate is confined to"
            )))
        }
    }

    /// An inode record as the caller sees it: the subtree's directory as
    /// the root.
    pub fn show(&self, inode: &mut InodeRecord) {
        if !self.confined() {
            return;
        }
        if inode.ino == self.root {
            inode.ino = ROOT_INO;
            inode.parent = ROOT_INO;
        } else if inode.parent == self.root {
            inode.parent = ROOT_INO;
        }
    }

    pub fn show_all(&self, inodes: &mut [InodeRecord]) {
        for inode in inodes {
            self.show(inode);
        }
    }

    pub fn show_entry(&self, entry: &mut DirEntry) {
        if !self.confined() {
            return;
        }
        if entry.ino == self.root {
            entry.ino = ROOT_INO;
        }
        if let Some(attr) = entry.attr.as_mut() {
            self.show(attr);
        }
    }
}

/// Whether directory `dir` is `root` or below it; a dangling parent chain
/// (a directory removed meanwhile) is not.
fn dir_within(txn: &mut dyn KvTxn, dir: u64, root: u64) -> Result<bool> {
    match namespace::is_within(txn, dir, root) {
        Err(MetaError::NotFound) => Ok(false),
        other => other,
    }
}

/// Whether inode `ino` can be reached from directory `root`.
fn reaches(txn: &mut dyn KvTxn, root: u64, ino: u64) -> Result<bool> {
    let inode = get_inode(txn, ino)?;
    if inode.kind() == FileKind::Directory {
        return dir_within(txn, ino, root);
    }
    if inode.nlink == 0 {
        return Ok(inode.parent != 0 && dir_within(txn, inode.parent, root)?);
    }
    let prefix = keys::backref_prefix(ino);
    for (key, _) in txn.range(&prefix, &keys::prefix_end(&prefix), 0, false)? {
        let (_, parent, _) = keys::backref_parts(&key)
            .ok_or_else(|| MetaError::Corrupt("short back-reference key".into()))?;
        if dir_within(txn, parent, root)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Marks a store whose every non-directory entry has its back-reference.
fn built_marker() -> Vec<u8> {
    keys::counter("backrefs_built")
}

/// Marks a new, empty volume as having all its back-references.
pub fn mark_built(txn: &mut dyn KvTxn) {
    txn.set(&built_marker(), &1i64.to_le_bytes());
}

/// Entries read per transaction while building back-references.
const BUILD_PAGE: usize = 2_000;

/// Writes the back-references of a volume made before they existed: once,
/// at start-up, in bounded transactions (each page reads its entries, so
/// a concurrent change of one conflicts rather than being missed; entries
/// made meanwhile by new code carry their own). Returns how many it wrote.
pub fn build_backrefs(store: &dyn MetaStore) -> Result<u64> {
    if transact(store, |t| {
        Ok::<_, MetaError>(t.get(&built_marker())?.is_some())
    })? {
        return Ok(0);
    }
    tracing::info!("writing the back-references of every file (once, for subtree caps)");
    let mut from = Vec::new();
    let mut written = 0;
    loop {
        let (next, count) = transact(store, |t| {
            let (rows, next) = tag_page(t, keys::DIRENT, &from, BUILD_PAGE)?;
            let mut count = 0u64;
            for (key, value) in &rows {
                let entry = DirentRecord::decode(value.as_slice())?;
                if entry.kind() == FileKind::Directory {
                    continue;
                }
                let parent = keys::dirent_parent(key)
                    .ok_or_else(|| MetaError::Corrupt("short directory entry key".into()))?;
                t.set(
                    &keys::backref(entry.ino, parent, keys::dirent_name(key)),
                    &[],
                );
                count += 1;
            }
            Ok::<_, MetaError>((next, count))
        })?;
        written += count;
        match next {
            Some(key) => from = key,
            None => break,
        }
    }
    transact(store, |t| {
        mark_built(t);
        Ok::<_, MetaError>(())
    })?;
    tracing::info!(written, "back-references written");
    Ok(written)
}

/// One page of the fsck pass over directory entries (`tag` DIRENT: each
/// non-directory's has its back-reference) or back-references (`tag`
/// BACKREF: each has its entry, naming the same inode): what disagrees,
/// in words, and where the next page starts.
pub fn link_problems(
    txn: &mut dyn KvTxn,
    tag: u8,
    from: &[u8],
    limit: usize,
) -> Result<(Vec<String>, Option<Vec<u8>>)> {
    let (rows, next) = tag_page(txn, tag, from, limit)?;
    let short = || MetaError::Corrupt("short directory entry or back-reference key".into());
    let mut problems = Vec::new();
    if tag == keys::DIRENT {
        let mut wanted = Vec::new();
        for (key, value) in &rows {
            let entry = DirentRecord::decode(value.as_slice())?;
            if entry.kind() != FileKind::Directory {
                let parent = keys::dirent_parent(key).ok_or_else(short)?;
                wanted.push((entry.ino, parent, keys::dirent_name(key).to_vec()));
            }
        }
        let backrefs: Vec<Vec<u8>> = wanted
            .iter()
            .map(|(ino, parent, name)| keys::backref(*ino, *parent, name))
            .collect();
        for ((ino, parent, name), found) in wanted.iter().zip(txn.get_many(&backrefs)?) {
            if found.is_none() {
                problems.push(format!(
                    "entry {:?} in directory {parent} (inode {ino}) has no back-reference",
                    String::from_utf8_lossy(name)
                ));
            }
        }
    } else {
        let mut parts = Vec::new();
        for (key, _) in &rows {
            let (ino, parent, name) = keys::backref_parts(key).ok_or_else(short)?;
            parts.push((ino, parent, name.to_vec()));
        }
        let entries: Vec<Vec<u8>> = parts
            .iter()
            .map(|(_, parent, name)| keys::dirent(*parent, name))
            .collect();
        let found = crate::store::get_records::<DirentRecord>(txn, &entries)?;
        for ((ino, parent, name), entry) in parts.iter().zip(found) {
            if entry.map(|e| e.ino) != Some(*ino) {
                problems.push(format!(
                    "back-reference of inode {ino} names {:?} in directory {parent}, which is not its entry",
                    String::from_utf8_lossy(name)
                ));
            }
        }
    }
    Ok((problems, next))
}

#[cfg(test)]
mod tests;
