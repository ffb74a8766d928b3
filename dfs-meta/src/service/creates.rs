//! Creates, and the inode numbers a client reserves to answer a create
//! before it sends it.
//!
//! A mount holding a directory's lease (`dir_lease`) may answer the
//! kernel's create of a regular file there at once, with a number from a
//! batch it reserved ([`MetaService::reserve_inodes_as`]), and send the
//! create later: with the file's first commit, in the same transaction
//! (`CommitChunksRequest.create`), or alone when something else needs it
//! made first. A small file written and closed is then one request. The
//! numbers come from the same counter as this server's own batches, so no
//! one else is ever given them; a create naming one must name a number
//! handed out already, and one no inode has (`namespace::create`).

use dfs_core::error::DfsError;
use dfs_core::tls::Caps;
use dfs_proto::{CreateRequest, FileKind, InodeRecord, ReserveInodesReply};
use tonic::{Response, Status};

use super::{with_changed_dirs, Access, MetaService};
use crate::confine::Scope;
use crate::error::{MetaError, Result};
use crate::namespace::{COUNTER_NEXT_INO, ROOT_INO};
use crate::store::{decode_counter, KvTxn};
use crate::{caps, dir_lease, inodes, keys};

/// Oldest a held create's `time_ns` is taken as (ns): a create is held
/// less than a lease; more is a client's clock off.
const HELD_CREATE_MAX_AGE_NS: i64 = 10 * dir_lease::LEASE_NS;

/// Inode numbers one ReserveInodes hands a client.
pub const CLIENT_INODE_BATCH: u64 = 1024;

/// Refuses a client-picked inode number from a caller that may not pick
/// one: only an unrestricted client (a confined or unprivileged one could
/// take numbers reserved for others).
pub(super) fn check_may_pick(caps: &Caps) -> Result<()> {
    if caps.unprivileged || caps.subtree.is_some() {
        return Err(MetaError::NotPermitted(
            "only an unrestricted client reserves inode numbers".into(),
        ));
    }
    Ok(())
}

/// A client-picked inode number must have been handed out (reserved)
/// already; that no inode has it, `namespace::create` checks after it has
/// looked for this very create made before (a retry).
fn check_handed_out(txn: &mut dyn KvTxn, ino: u64) -> Result<()> {
    let next = decode_counter(txn.get(&keys::counter(COUNTER_NEXT_INO))?.as_deref());
    if ino <= ROOT_INO || i64::try_from(ino).map_or(true, |ino| ino >= next) {
        return Err(MetaError::Invalid(format!(
            "inode number {ino} was never reserved"
        )));
    }
    Ok(())
}

/// [`dir_lease::create`] of a create whose request names its inode number
/// (`CreateRequest.ino`), its parent already resolved in the caller's
/// scope: a retry finding the name made by this create answers it, any
/// other inode under the name is EEXIST.
pub(super) fn create_picked(
    txn: &mut dyn KvTxn,
    req: &CreateRequest,
    now_ns: i64,
) -> Result<InodeRecord> {
    check_handed_out(txn, req.ino)?;
    let existed = txn.get(&keys::inode(req.ino))?.is_some();
    // The parent's times before this create (which sets them to now).
    let before = inodes::get_inode(txn, req.parent).ok();
    let mut made = dir_lease::create(txn, req, req.ino, now_ns)?;
    if made.ino != req.ino {
        return Err(MetaError::Exists);
    }
    if !existed && req.time_ns > 0 {
        // The times the client told its kernel (the lease above counts
        // from this server's clock), within what a held create can be:
        // not ahead of this clock, not older than a few leases. The
        // parent's never go back (a create answered earlier sent later).
        let oldest = now_ns.saturating_sub(HELD_CREATE_MAX_AGE_NS);
        let at = req.time_ns.clamp(oldest.min(now_ns), now_ns);
        (made.atime_ns, made.mtime_ns, made.ctime_ns) = (at, at, at);
        inodes::put_inode(txn, &made);
        let mut parent = inodes::get_inode(txn, req.parent)?;
        let (mtime, ctime) = before.map_or((at, at), |b| (b.mtime_ns, b.ctime_ns));
        parent.mtime_ns = now_ns.min(mtime.max(at));
        parent.ctime_ns = now_ns.min(ctime.max(at));
        inodes::put_inode(txn, &parent);
    }
    Ok(made)
}

impl MetaService {
    pub(super) async fn reserve_inodes_as(
        &self,
        caps: Caps,
    ) -> std::result::Result<Response<ReserveInodesReply>, Status> {
        check_may_pick(&caps).map_err(|e| Status::from(DfsError::from(e)))?;
        // Synced (no deferred sync): after a crash the counter must not
        // hand these numbers out again.
        self.execute("reserve_inodes", Access::ReadWrite, |t, _| {
            Ok(ReserveInodesReply {
                first: inodes::reserve_inodes(t, CLIENT_INODE_BATCH)?,
                count: CLIENT_INODE_BATCH,
            })
        })
        .await
    }

    pub(super) async fn create_as(
        &self,
        caps: Caps,
        r: CreateRequest,
    ) -> std::result::Result<Response<InodeRecord>, Status> {
        let refuse = |e: MetaError| Status::from(DfsError::from(e));
        caps::check_create(&caps, &r).map_err(refuse)?;
        let ino = if r.ino != 0 {
            check_may_pick(&caps).map_err(refuse)?;
            r.ino
        } else {
            match self.inodes.try_next() {
                Some(ino) => ino,
                None => {
                    let (store, inodes) = (self.store.clone(), self.inodes.clone());
                    tokio::task::spawn_blocking(move || inodes.next(store.as_ref()))
                        .await
                        .map_err(|e| Status::internal(format!("inode allocation panicked: {e}")))?
                        .map_err(|e| Status::from(DfsError::from(e)))?
                }
            }
        };
        let (asked, inherit_from) = (r.parent, r.inherit_from);
        let mut r = r;
        let reply = self
            .run("create", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                r.parent = scope.ino(t, asked)?;
                if inherit_from != 0 {
                    r.inherit_from = scope.ino(t, inherit_from)?;
                }
                let made = if r.ino != 0 {
                    create_picked(t, &r, now)?
                } else {
                    dir_lease::create(t, &r, ino, now)?
                };
                let mut made = [made, inodes::get_inode(t, r.parent)?];
                scope.show_all(&mut made);
                let [inode, parent] = made;
                Ok((inode, vec![parent]))
            })
            .await?;
        self.maybe_inject_unknown_create()?;
        Ok(with_changed_dirs(reply))
    }

    /// The create a commit carries (`CommitChunksRequest.create`), checked
    /// before its transaction: a regular file, the commit's own inode.
    pub(super) fn check_carried_create(
        caps: &Caps,
        ino: u64,
        create: &CreateRequest,
    ) -> Result<()> {
        caps::check_create(caps, create)?;
        check_may_pick(caps)?;
        if create.ino != ino || create.kind() != FileKind::Regular {
            return Err(MetaError::Invalid(
                "a commit carries only its own file's create".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::init_root;
    use crate::store::{transact, MemStore, MetaStore};
    use crate::{acl, xattrs};
    use dfs_proto::XattrRequest;

    fn run<T>(store: &MemStore, f: impl FnMut(&mut dyn KvTxn) -> Result<T>) -> Result<T> {
        transact(store as &dyn MetaStore, f)
    }

    fn file(name: &[u8], ino: u64, create_id: u64) -> CreateRequest {
        CreateRequest {
            parent: ROOT_INO,
            name: name.to_vec(),
            kind: FileKind::Regular as i32,
            mode: 0o644,
            create_id,
            ino,
            ..Default::default()
        }
    }

    #[test]
    fn a_picked_inode_number_must_be_reserved_unused_and_its_name_free() {
        let store = MemStore::default();
        run(&store, |t| init_root(t, 1).map(|_| ())).expect("root");
        let first = run(&store, |t| inodes::reserve_inodes(t, 4)).expect("reserve");
        let now = 100 * dir_lease::LEASE_NS;
        let timed = CreateRequest {
            time_ns: now - 7,
            ..file(b"a", first, 5)
        };
        let made = run(&store, |t| create_picked(t, &timed, now)).expect("create");
        assert_eq!(made.ino, first);
        // Dated as the client answered it, the parent's change too.
        let at = now - 7;
        assert_eq!((made.atime_ns, made.mtime_ns, made.ctime_ns), (at, at, at));
        let root = run(&store, |t| inodes::get_inode(t, ROOT_INO)).expect("root");
        assert_eq!((root.mtime_ns, root.ctime_ns), (at, at));
        // One answered earlier and sent later does not date the parent
        // back; a time ahead of this clock is taken as now.
        let earlier = CreateRequest {
            time_ns: now - 9,
            ..file(b"e", first + 2, 15)
        };
        run(&store, |t| create_picked(t, &earlier, now)).expect("create");
        let root = run(&store, |t| inodes::get_inode(t, ROOT_INO)).expect("root");
        assert_eq!((root.mtime_ns, root.ctime_ns), (at, at));
        let ahead = CreateRequest {
            time_ns: now + 1_000_000_000,
            ..file(b"h", first + 3, 16)
        };
        let made = run(&store, |t| create_picked(t, &ahead, now)).expect("create");
        assert_eq!(made.ctime_ns, now);
        // The same create again (a retry) answers what it made.
        let again = run(&store, |t| create_picked(t, &file(b"a", first, 5), 11)).expect("retry");
        assert_eq!(again.ino, first);
        // Another create naming a number in use, or one never handed out.
        assert!(run(&store, |t| create_picked(t, &file(b"b", first, 6), 12)).is_err());
        assert!(run(&store, |t| namespace_lookup(t, b"b")).is_err());
        for never in [first + 4, first + 1000, ROOT_INO, 0] {
            assert!(matches!(
                run(&store, |t| create_picked(t, &file(b"c", never, 7), 12)),
                Err(MetaError::Invalid(_))
            ));
        }
        // A name taken by another create.
        assert!(matches!(
            run(&store, |t| create_picked(t, &file(b"a", first + 1, 8), 12)),
            Err(MetaError::Exists)
        ));
        run(&store, |t| create_picked(t, &file(b"d", first + 1, 9), 12)).expect("create");
    }

    fn namespace_lookup(t: &mut dyn KvTxn, name: &[u8]) -> Result<InodeRecord> {
        crate::namespace::lookup(t, ROOT_INO, name)
    }

    #[test]
    fn a_directory_record_says_whether_it_has_a_default_acl() {
        let store = MemStore::default();
        run(&store, |t| init_root(t, 1).map(|_| ())).expect("root");
        let dir = |name: &[u8], parent| CreateRequest {
            parent,
            name: name.to_vec(),
            kind: FileKind::Directory as i32,
            mode: 0o755,
            ..Default::default()
        };
        let d = run(&store, |t| {
            dir_lease::create(t, &dir(b"d", ROOT_INO), 10, 1)
        })
        .expect("mkdir");
        assert!(!d.default_acl);
        // u::rwx g::r-x o::r-x as a default ACL.
        let minimal = acl::Acl::parse(&{
            let mut v = vec![2, 0, 0, 0];
            for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 5)] {
                v.extend_from_slice(&tag.to_le_bytes());
                v.extend_from_slice(&perm.to_le_bytes());
                v.extend_from_slice(&u32::MAX.to_le_bytes());
            }
            v
        })
        .expect("acl");
        let set = XattrRequest {
            ino: 10,
            name: acl::DEFAULT.to_vec(),
            value: minimal.to_bytes(),
            ..Default::default()
        };
        run(&store, |t| xattrs::set_xattr(t, &set, 2)).expect("setfacl -d");
        assert!(
            run(&store, |t| inodes::get_inode(t, 10))
                .expect("d")
                .default_acl
        );
        // A directory made in it inherits the default ACL, and says so.
        let sub = run(&store, |t| dir_lease::create(t, &dir(b"s", 10), 11, 3)).expect("mkdir");
        assert!(sub.default_acl);
        run(&store, |t| xattrs::remove_xattr(t, 10, acl::DEFAULT, 4)).expect("setfacl -k");
        assert!(
            !run(&store, |t| inodes::get_inode(t, 10))
                .expect("d")
                .default_acl
        );
    }
}
