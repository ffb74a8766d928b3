//! POSIX permission checks for requests, as the kernel makes them for a
//! mount (`generic_permission` with POSIX ACLs): a mount leaves them to the
//! kernel (`default_permissions`), so the gateway, which has no kernel in
//! between, makes them itself against the same mode bits and ACLs.

use dfs_core::error::DfsError;
use dfs_mount::fs::Dfs;
use dfs_proto::{FileKind, InodeRecord};

use crate::auth::User;

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

use dfs_meta::acl::{Acl, Entry, GROUP, GROUP_OBJ, MASK, OTHER, USER};

/// Parses the xattr form of an access ACL; `None` when it is not one (a
/// damaged value is treated as no ACL: the mode bits decide).
pub fn parse_acl(value: &[u8]) -> Option<Vec<Entry>> {
    Acl::parse(value).ok().map(|acl| acl.entries)
}

/// Whether `user` may do `want` (a mix of READ, WRITE, EXEC) to an inode
/// with `attr` and access ACL `acl`: owner bits for the owner, else named
/// users, else the owning and named groups (masked), else other.
pub fn allowed(user: &User, attr: &InodeRecord, acl: Option<&[Entry]>, want: u32) -> bool {
    let mode = attr.mode;
    if user.is_root() {
        // Root reads and writes anything; it executes (searches) what
        // anyone may, and any directory.
        return want & EXEC == 0 || attr.kind() == FileKind::Directory || mode & 0o111 != 0;
    }
    if user.uid == attr.uid {
        return (mode >> 6) & want == want;
    }
    let Some(acl) = acl else {
        let bits = if user.in_group(attr.gid) {
            mode >> 3
        } else {
            mode
        };
        return bits & want == want;
    };
    let mask = acl
        .iter()
        .find(|e| e.tag == MASK)
        .map_or(7, |e| u32::from(e.perm));
    if let Some(e) = acl.iter().find(|e| e.tag == USER && e.id == user.uid) {
        return u32::from(e.perm) & mask & want == want;
    }
    let mut in_some_group = false;
    for e in acl {
        let matches = match e.tag {
            GROUP_OBJ => user.in_group(attr.gid),
            GROUP => user.in_group(e.id),
            _ => false,
        };
        if matches {
            in_some_group = true;
            if u32::from(e.perm) & mask & want == want {
                return true;
            }
        }
    }
    if in_some_group {
        return false;
    }
    match acl.iter().find(|e| e.tag == OTHER) {
        Some(e) => u32::from(e.perm) & want == want,
        None => mode & want == want,
    }
}

/// Whether `user` may remove or replace `victim` in `dir` (having write
/// and search permission on `dir`): in a sticky directory (mode 01000, as
/// /tmp) only root, the directory's owner and the victim's owner may.
pub fn may_remove(user: &User, dir: &InodeRecord, victim: &InodeRecord) -> bool {
    dir.mode & 0o1000 == 0 || user.is_root() || user.uid == dir.uid || user.uid == victim.uid
}

/// `may_remove` as an error, for handlers.
pub fn check_remove(user: &User, dir: &InodeRecord, victim: &InodeRecord) -> Result<(), DfsError> {
    if may_remove(user, dir, victim) {
        Ok(())
    } else {
        Err(DfsError::new(
            libc::EPERM,
            format!(
                "uid {} may not remove inode {}: its directory is sticky and neither is theirs",
                user.uid, victim.ino
            ),
        ))
    }
}

/// `allowed`, reading the ACL from dfs-meta only when it could matter
/// (neither root nor the owner asks).
pub async fn check(dfs: &Dfs, user: &User, attr: &InodeRecord, want: u32) -> Result<(), DfsError> {
    let acl = if user.is_root() || user.uid == attr.uid {
        None
    } else {
        match dfs.getxattr(attr.ino, dfs_meta::acl::ACCESS).await {
            Ok(value) => parse_acl(&value),
            Err(e) if e.errno == libc::ENODATA || e.errno == libc::EOPNOTSUPP => None,
            Err(e) => return Err(e),
        }
    };
    if allowed(user, attr, acl.as_deref(), want) {
        Ok(())
    } else {
        Err(DfsError::new(
            libc::EACCES,
            format!(
                "uid {} may not {} inode {}",
                user.uid,
                describe(want),
                attr.ino
            ),
        ))
    }
}

fn describe(want: u32) -> &'static str {
    match want {
        READ => "read",
        WRITE => "write",
        EXEC => "search",
        _ => "change",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: FileKind, mode: u32, uid: u32, gid: u32) -> InodeRecord {
        InodeRecord {
            ino: 7,
            kind: kind as i32,
            mode,
            uid,
            gid,
            ..Default::default()
        }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> User {
        User {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    use dfs_meta::acl::USER_OBJ;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = dfs_meta::acl::VERSION.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn mode_bits_decide_without_an_acl() {
        let f = attr(FileKind::Regular, 0o640, 10, 20);
        assert!(allowed(&user(10, 99, &[]), &f, None, READ | WRITE));
        assert!(allowed(&user(11, 20, &[]), &f, None, READ));
        assert!(!allowed(&user(11, 20, &[]), &f, None, WRITE));
        assert!(allowed(&user(11, 1, &[20]), &f, None, READ));
        assert!(!allowed(&user(12, 30, &[]), &f, None, READ));
        // The owner's bits apply to the owner even when others have more.
        let g = attr(FileKind::Regular, 0o077, 10, 20);
        assert!(!allowed(&user(10, 20, &[]), &g, None, READ));
    }

    #[test]
    fn a_sticky_directory_keeps_others_objects() {
        let dir = attr(FileKind::Directory, 0o1777, 0, 0);
        let theirs = attr(FileKind::Regular, 0o644, 20, 20);
        assert!(!may_remove(&user(10, 10, &[]), &dir, &theirs));
        assert!(may_remove(&user(20, 20, &[]), &dir, &theirs));
        assert!(may_remove(&User::root(), &dir, &theirs));
        let plain = attr(FileKind::Directory, 0o777, 0, 0);
        assert!(may_remove(&user(10, 10, &[]), &plain, &theirs));
    }

    #[test]
    fn root_needs_an_exec_bit_to_execute_files_only() {
        let f = attr(FileKind::Regular, 0o600, 10, 20);
        assert!(allowed(&User::root(), &f, None, READ | WRITE));
        assert!(!allowed(&User::root(), &f, None, EXEC));
        let d = attr(FileKind::Directory, 0o700, 10, 20);
        assert!(allowed(&User::root(), &d, None, EXEC));
    }

    #[test]
    fn named_entries_and_the_mask() {
        let f = attr(FileKind::Regular, 0o640, 10, 20);
        let value = acl(&[
            (USER_OBJ, 6, u32::MAX),
            (USER, 6, 30),
            (GROUP_OBJ, 4, u32::MAX),
            (GROUP, 6, 40),
            (MASK, 4, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        let entries = parse_acl(&value).unwrap_or_default();
        assert_eq!(entries.len(), 6);
        // Named user 30: rw, masked to r.
        assert!(allowed(&user(30, 1, &[]), &f, Some(&entries), READ));
        assert!(!allowed(&user(30, 1, &[]), &f, Some(&entries), WRITE));
        // Named group 40: rw masked to r.
        assert!(allowed(&user(31, 40, &[]), &f, Some(&entries), READ));
        assert!(!allowed(&user(31, 40, &[]), &f, Some(&entries), WRITE));
        // Nobody else.
        assert!(!allowed(&user(32, 1, &[]), &f, Some(&entries), READ));
        assert!(parse_acl(b"junk").is_none());
    }
}
