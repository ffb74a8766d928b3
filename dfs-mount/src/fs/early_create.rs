//! Creates answered before they are sent.
//!
//! A new small file took two round trips to dfs-meta: its create, then its
//! commit at close (a quarter of the time a 128 KiB file took to write).
//! In a directory whose names this client knows under dfs-meta's lease
//! (`known_names`), the name is certainly free and no other client can
//! take it or change the directory before the lease runs out, so the
//! create's outcome is known here: the kernel gets its answer at once,
//! with an inode number this client reserved, and the metadata client
//! holds the create until the file's first commit carries it, or anything
//! else needs it made first (`client::meta::deferred`).
//!
//! Only what can be told exactly: a regular file without set-user-ID,
//! set-group-ID or sticky bits, in a directory without a default ACL, seen
//! as this client's last change of it left it, with enough of the lease
//! left to send the create alone before it ends if nothing carried it.

use std::time::Duration;

use dfs_proto::{CreateRequest, FileKind, InodeRecord, Tier};

use super::Dfs;

/// Lease left (as this client counts it) for a create to be answered early.
const LEASE_LEFT_TO_ANSWER: Duration = Duration::from_millis(500);
/// How long before the lease ends a held create goes out alone: a
/// request's way to dfs-meta and its transaction, with room to spare.
const SEND_BEFORE_LEASE_ENDS: Duration = Duration::from_millis(300);

const S_ISGID: u32 = 0o2000;

/// Whether `request` is a create whose outcome can be told here: a plain
/// regular file from a client that takes leases.
fn answerable(request: &CreateRequest) -> bool {
    request.kind() == FileKind::Regular
        && request.mode & 0o7000 == 0
        && request.inherit_from == 0
        && request.rdev == 0
        && request.client_id != 0
}

/// The inode `request` makes in `parent` (which has no default ACL), as
/// dfs-meta makes it (`namespace::create`), dated `now_ns`.
fn answered(request: &CreateRequest, ino: u64, parent: &InodeRecord, now_ns: i64) -> InodeRecord {
    let gid = if parent.mode & S_ISGID != 0 {
        parent.gid
    } else {
        request.gid
    };
    InodeRecord {
        ino,
        kind: FileKind::Regular as i32,
        mode: request.mode & 0o7777 & !request.umask,
        uid: request.uid,
        gid,
        atime_ns: now_ns,
        mtime_ns: now_ns,
        ctime_ns: now_ns,
        nlink: 1,
        tier: Tier::Hot as i32,
        ..Default::default()
    }
}

impl Dfs {
    /// The created inode, answered without a round trip when this client
    /// may (see the module); `None`: send the create as usual.
    pub(super) async fn answer_create(&self, request: &CreateRequest) -> Option<InodeRecord> {
        if !answerable(request) || !self.names.absent(request.parent, &request.name) {
            return None;
        }
        let meta = &self.cluster.meta;
        let parent = meta.last_changed_dir(request.parent)?;
        if parent.default_acl || parent.kind() != FileKind::Directory {
            return None;
        }
        let ino = meta.reserved_ino().await?;
        // After the reservation (which may have waited for dfs-meta): the
        // view must still be of this very directory record.
        let until = self
            .names
            .claim_absent(&parent, &request.name, LEASE_LEFT_TO_ANSWER)?;
        let now_ns = dfs_core::time::now_ns();
        let made = answered(request, ino, &parent, now_ns);
        let parent = InodeRecord {
            mtime_ns: now_ns,
            ctime_ns: now_ns,
            ..parent
        };
        let held = CreateRequest {
            ino,
            time_ns: now_ns,
            ..request.clone()
        };
        meta.defer_create(held, until - SEND_BEFORE_LEASE_ENDS, &made, parent);
        Some(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mode: u32) -> CreateRequest {
        CreateRequest {
            parent: 5,
            name: b"f".to_vec(),
            kind: FileKind::Regular as i32,
            mode,
            uid: 1000,
            gid: 100,
            umask: 0o022,
            client_id: 7,
            ..Default::default()
        }
    }

    #[test]
    fn only_plain_regular_files_of_a_leasing_client_are_answered_early() {
        assert!(answerable(&request(0o644)));
        for mode in [0o4755, 0o2755, 0o1644] {
            assert!(!answerable(&request(mode)), "{mode:o}");
        }
        let dir = CreateRequest {
            kind: FileKind::Directory as i32,
            ..request(0o755)
        };
        let inherit = CreateRequest {
            inherit_from: 9,
            ..request(0o644)
        };
        let no_lease = CreateRequest {
            client_id: 0,
            ..request(0o644)
        };
        assert!(!answerable(&dir) && !answerable(&inherit) && !answerable(&no_lease));
    }

    #[test]
    fn the_answer_is_the_inode_dfs_meta_makes() {
        let parent = InodeRecord {
            ino: 5,
            kind: FileKind::Directory as i32,
            mode: 0o755,
            gid: 50,
            ..Default::default()
        };
        let made = answered(&request(0o666), 42, &parent, 9);
        assert_eq!(
            (made.ino, made.mode, made.uid, made.gid),
            (42, 0o644, 1000, 100)
        );
        assert_eq!((made.atime_ns, made.mtime_ns, made.ctime_ns), (9, 9, 9));
        assert_eq!(
            (made.nlink, made.size, made.kind()),
            (1, 0, FileKind::Regular)
        );
        // A set-group-ID directory hands its group down.
        let sgid = InodeRecord {
            mode: 0o2775,
            ..parent
        };
        assert_eq!(answered(&request(0o666), 42, &sgid, 9).gid, 50);
    }
}
