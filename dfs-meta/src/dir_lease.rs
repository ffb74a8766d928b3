//! Directory leases: a client that made a directory may answer lookups of
//! names it knows are absent there by itself, and close-to-open still holds.
//!
//! Why: a tree copy (`cp -r`, `tar x`) or any writer of new files looks up
//! each name before creating it, and every such lookup is a miss: a third
//! of the metadata requests of a small file, one round trip each. A mount
//! keeps the names of directories it made (`dfs-mount` `known_names`);
//! without a lease it could miss a file another client closed there.
//!
//! The protocol, all in the directory's own inode record (so every
//! dfs-meta sharing a store sees it, and it survives restarts):
//! - Making a directory with a client id leases it to that client for
//!   [`dfs_proto::DIRECTORY_LEASE`]; each name the holder adds renews it.
//! - Another client's change that adds a name (create, link, rename into
//!   it) finds the lease in force: its transaction fails with
//!   [`MetaError::DirectoryLeased`]; the service then revokes the lease (no
//!   renewal from then on; the holder sees it in its next reply and drops
//!   its view) and runs the change again once the lease has run out. The
//!   holder counts its lease from before it sent the request that renewed
//!   it, so its own expiry comes first: when the other client's change is
//!   acknowledged, the holder asks dfs-meta again.
//! - Removals need none of this: a holder's view only ever answers
//!   "absent", and a name removed behind its back is looked up in dfs-meta.
//! - A holder may answer a create in the directory before it sends it
//!   (`CreateRequest.ino`, sent with the file's first commit), so what that
//!   create takes from the directory must not change under it: another
//!   client's change of the directory itself (mode, owner, times, xattrs:
//!   [`admit_change`]) or its removal (rmdir, a rename over it) waits the
//!   lease out the same way.
//!
//! The cost: the first name another client adds to a directory leased to
//! someone else waits up to a lease (one second), once; the lease is not
//! granted again.

use dfs_proto::{CreateRequest, FileKind, InodeRecord, RenameRequest, RENAME_EXCHANGE};

use crate::error::{MetaError, Result};
use crate::inodes::{get_inode, put_inode};
use crate::namespace;
use crate::store::KvTxn;

/// [`dfs_proto::DIRECTORY_LEASE`] in nanoseconds.
pub const LEASE_NS: i64 = dfs_proto::DIRECTORY_LEASE.as_nanos() as i64;
/// How far the clocks of dfs-meta processes sharing a store may be apart: a
/// lease another process granted is waited out this much past its end.
pub const CLOCK_SKEW_NS: i64 = 100_000_000;

#[derive(Debug, PartialEq)]
enum Admission {
    /// No lease in force for anyone else, nothing to write.
    Free,
    /// The holder adds a name: its lease runs on.
    Renew,
    /// Someone else's lease ran out: clear it.
    Expired,
    /// Someone else's lease is in force until then.
    Held(i64),
}

fn admission(dir: &InodeRecord, client: u64, now_ns: i64) -> Admission {
    if dir.lease_holder == 0 {
        Admission::Free
    } else if client != 0 && dir.lease_holder == client {
        // A revoked lease is not renewed; its holder still adds names.
        if dir.lease_revoked {
            Admission::Free
        } else {
            Admission::Renew
        }
    } else if now_ns >= dir.lease_until_ns.saturating_add(CLOCK_SKEW_NS) {
        Admission::Expired
    } else {
        Admission::Held(dir.lease_until_ns)
    }
}

fn clear(dir: &mut InodeRecord) {
    dir.lease_holder = 0;
    dir.lease_until_ns = 0;
    dir.lease_revoked = false;
}

/// `dir`'s record; `None` when it does not exist (the namespace operation
/// reports that), any other failure as it is.
fn directory(txn: &mut dyn KvTxn, dir: u64) -> Result<Option<InodeRecord>> {
    match get_inode(txn, dir) {
        Ok(record) => Ok(Some(record)),
        Err(MetaError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Before a transaction adds a name to `dir` for `client` (0: none).
fn admit(txn: &mut dyn KvTxn, dir: u64, client: u64, now_ns: i64) -> Result<()> {
    admit_as(txn, dir, client, now_ns, true)
}

/// [`admit`] and [`admit_change`]: `renews`, whether the holder's change
/// renews its lease (one that adds a name does).
fn admit_as(txn: &mut dyn KvTxn, dir: u64, client: u64, now_ns: i64, renews: bool) -> Result<()> {
    let Some(mut record) = directory(txn, dir)? else {
        return Ok(());
    };
    match admission(&record, client, now_ns) {
        Admission::Free => {}
        Admission::Renew if !renews => {}
        Admission::Renew => {
            record.lease_until_ns = now_ns.saturating_add(LEASE_NS);
            put_inode(txn, &record);
        }
        Admission::Expired => {
            clear(&mut record);
            put_inode(txn, &record);
        }
        Admission::Held(until_ns) => return Err(MetaError::DirectoryLeased { dir, until_ns }),
    }
    Ok(())
}

/// [`namespace::create`] under the parent's lease; a directory made with a
/// client id (not a retry finding an earlier one) is leased to it.
pub fn create(
    txn: &mut dyn KvTxn,
    req: &CreateRequest,
    ino: u64,
    now_ns: i64,
) -> Result<InodeRecord> {
    admit(txn, req.parent, req.client_id, now_ns)?;
    let mut made = namespace::create(txn, req, ino, now_ns)?;
    if made.ino == ino && made.kind() == FileKind::Directory && req.client_id != 0 {
        made.lease_holder = req.client_id;
        made.lease_until_ns = now_ns.saturating_add(LEASE_NS);
        made.lease_revoked = false;
        put_inode(txn, &made);
    }
    Ok(made)
}

/// Before a transaction changes `dir` itself or removes it, for `client`
/// (0: none): another client's lease in force holds it back. A holder's
/// own change does not renew its lease (it adds no name).
pub fn admit_change(txn: &mut dyn KvTxn, dir: u64, client: u64, now_ns: i64) -> Result<()> {
    admit_as(txn, dir, client, now_ns, false)
}

/// [`namespace::rmdir`] under the removed directory's lease.
pub fn rmdir(
    txn: &mut dyn KvTxn,
    parent: u64,
    name: &[u8],
    client: u64,
    now_ns: i64,
) -> Result<()> {
    if let Some(entry) = namespace::lookup_entry(txn, parent, name)? {
        if entry.kind() == FileKind::Directory {
            admit_change(txn, entry.ino, client, now_ns)?;
        }
    }
    namespace::rmdir(txn, parent, name, now_ns)
}

/// [`namespace::link`] under the new parent's lease.
pub fn link(
    txn: &mut dyn KvTxn,
    ino: u64,
    new_parent: u64,
    new_name: &[u8],
    client: u64,
    now_ns: i64,
) -> Result<InodeRecord> {
    admit(txn, new_parent, client, now_ns)?;
    namespace::link(txn, ino, new_parent, new_name, now_ns)
}

/// [`namespace::rename`] under the new parent's lease (an exchange adds no
/// name).
pub fn rename(txn: &mut dyn KvTxn, req: &RenameRequest, now_ns: i64) -> Result<bool> {
    if req.flags & RENAME_EXCHANGE == 0 {
        admit(txn, req.new_parent, req.client_id, now_ns)?;
        // A directory it replaces is removed.
        if let Some(target) = namespace::lookup_entry(txn, req.new_parent, &req.new_name)? {
            if target.kind() == FileKind::Directory {
                admit_change(txn, target.ino, req.client_id, now_ns)?;
            }
        }
    }
    namespace::rename(txn, req, now_ns)
}

/// Revokes the lease on `dir` so that it is not renewed; answers when it
/// runs out (this process's clock), or `None` when none is in force.
///
/// A lease is never granted or renewed for more than [`LEASE_NS`] past
/// the moment it was, which was before now: one that ends further ahead
/// was dated by a clock since stepped back, and ends at most a lease from
/// now instead (so a change waits one lease, not the step).
pub fn revoke(txn: &mut dyn KvTxn, dir: u64, now_ns: i64) -> Result<Option<i64>> {
    let Some(mut record) = directory(txn, dir)? else {
        return Ok(None);
    };
    if record.lease_holder == 0 || now_ns >= record.lease_until_ns.saturating_add(CLOCK_SKEW_NS) {
        return Ok(None);
    }
    let latest = now_ns.saturating_add(LEASE_NS);
    if !record.lease_revoked || record.lease_until_ns > latest {
        record.lease_revoked = true;
        record.lease_until_ns = record.lease_until_ns.min(latest);
        put_inode(txn, &record);
    }
    Ok(Some(record.lease_until_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{transact, MemStore, MetaStore};

    fn leased(holder: u64, until_ns: i64, revoked: bool) -> InodeRecord {
        InodeRecord {
            ino: 5,
            kind: FileKind::Directory as i32,
            lease_holder: holder,
            lease_until_ns: until_ns,
            lease_revoked: revoked,
            ..Default::default()
        }
    }

    #[test]
    fn only_another_clients_lease_in_force_holds_an_addition_back() {
        let now = 10 * LEASE_NS;
        assert_eq!(admission(&leased(0, 0, false), 7, now), Admission::Free);
        assert_eq!(
            admission(&leased(7, now + 1, false), 7, now),
            Admission::Renew
        );
        assert_eq!(
            admission(&leased(7, now + 1, true), 7, now),
            Admission::Free
        );
        assert_eq!(
            admission(&leased(7, now + 1, false), 8, now),
            Admission::Held(now + 1)
        );
        assert_eq!(
            admission(&leased(7, now + 1, false), 0, now),
            Admission::Held(now + 1),
            "a client without an id is another client"
        );
        // Ended, but within the clock skew: still waited out.
        assert_eq!(
            admission(&leased(7, now - 1, true), 8, now),
            Admission::Held(now - 1)
        );
        assert_eq!(
            admission(&leased(7, now - CLOCK_SKEW_NS, false), 8, now),
            Admission::Expired
        );
    }

    fn run<T>(store: &MemStore, f: impl FnMut(&mut dyn KvTxn) -> Result<T>) -> Result<T> {
        transact(store as &dyn MetaStore, f)
    }

    #[test]
    fn a_made_directory_is_leased_renewed_by_its_holder_and_revoked_for_others() {
        let store = MemStore::default();
        run(&store, |t| namespace::init_root(t, 1).map(|_| ())).expect("root");
        let entry = |parent, name: &[u8], kind: FileKind, client| CreateRequest {
            parent,
            name: name.to_vec(),
            kind: kind as i32,
            mode: 0o755,
            client_id: client,
            ..Default::default()
        };
        let dir = |name: &[u8], client| entry(1, name, FileKind::Directory, client);
        let t0 = 100 * LEASE_NS;
        let d = run(&store, |t| create(t, &dir(b"d", 7), 10, t0)).expect("mkdir");
        assert_eq!((d.lease_holder, d.lease_until_ns), (7, t0 + LEASE_NS));
        let anon = run(&store, |t| create(t, &dir(b"anon", 0), 11, t0)).expect("mkdir");
        assert_eq!(anon.lease_holder, 0, "no id, no lease");

        // The holder's additions renew it.
        let file = |name: &[u8], client| entry(10, name, FileKind::Regular, client);
        run(&store, |t| create(t, &file(b"a", 7), 12, t0 + 5)).expect("create");
        let d = run(&store, |t| get_inode(t, 10)).expect("dir");
        assert_eq!(d.lease_until_ns, t0 + 5 + LEASE_NS);

        // Another client's addition is held back until it is revoked and
        // has run out; nothing of it is written meanwhile.
        let held = run(&store, |t| create(t, &file(b"b", 8), 13, t0 + 10));
        assert!(matches!(
            held,
            Err(MetaError::DirectoryLeased { dir: 10, until_ns }) if until_ns == t0 + 5 + LEASE_NS
        ));
        assert!(run(&store, |t| namespace::lookup(t, 10, b"b")).is_err());
        let ends = run(&store, |t| revoke(t, 10, t0 + 10)).expect("revoke");
        assert_eq!(ends, Some(t0 + 5 + LEASE_NS));
        // The holder goes on adding names, without renewal.
        run(&store, |t| create(t, &file(b"c", 7), 14, t0 + 20)).expect("create");
        let d = run(&store, |t| get_inode(t, 10)).expect("dir");
        assert!(d.lease_revoked && d.lease_until_ns == t0 + 5 + LEASE_NS);
        let after = t0 + 5 + LEASE_NS + CLOCK_SKEW_NS;
        run(&store, |t| create(t, &file(b"b", 8), 13, after)).expect("create once run out");
        let d = run(&store, |t| get_inode(t, 10)).expect("dir");
        assert_eq!(d.lease_holder, 0, "cleared, not granted again");

        // A lease dated by a clock since stepped back ends at most a lease
        // after its revocation.
        let f = run(&store, |t| {
            create(t, &dir(b"f", 7), 21, after + 10 * LEASE_NS)
        })
        .expect("mkdir");
        assert_eq!(f.lease_until_ns, after + 11 * LEASE_NS);
        let ends = run(&store, |t| revoke(t, 21, after)).expect("revoke");
        assert_eq!(ends, Some(after + LEASE_NS));
        assert!(run(&store, |t| revoke(t, 999, after))
            .expect("no such dir")
            .is_none());

        // Links and renames into a leased directory wait too; an exchange
        // adds no name and does not.
        let e = run(&store, |t| create(t, &dir(b"e", 7), 20, after)).expect("mkdir");
        assert_eq!(e.lease_holder, 7);
        let link_in = run(&store, |t| link(t, 12, 20, b"l", 8, after));
        assert!(matches!(
            link_in,
            Err(MetaError::DirectoryLeased { dir: 20, .. })
        ));
        let rename_in = |flags| RenameRequest {
            parent: 10,
            name: b"a".to_vec(),
            new_parent: 20,
            new_name: b"a".to_vec(),
            flags,
            client_id: 8,
            ..Default::default()
        };
        let moved = run(&store, |t| rename(t, &rename_in(0), after));
        assert!(matches!(
            moved,
            Err(MetaError::DirectoryLeased { dir: 20, .. })
        ));
        run(&store, |t| link(t, 12, 20, b"l", 7, after)).expect("holder links");
        let swapped = run(&store, |t| rename(t, &rename_in(RENAME_EXCHANGE), after));
        assert!(!matches!(swapped, Err(MetaError::DirectoryLeased { .. })));
    }

    #[test]
    fn another_clients_change_or_removal_of_a_leased_directory_waits_the_lease_out() {
        let store = MemStore::default();
        run(&store, |t| namespace::init_root(t, 1).map(|_| ())).expect("root");
        let dir = |name: &[u8], client| CreateRequest {
            parent: 1,
            name: name.to_vec(),
            kind: FileKind::Directory as i32,
            mode: 0o755,
            client_id: client,
            ..Default::default()
        };
        let t0 = 100 * LEASE_NS;
        run(&store, |t| create(t, &dir(b"d", 7), 10, t0)).expect("mkdir");
        // Its holder changes it without waiting and without renewing.
        run(&store, |t| admit_change(t, 10, 7, t0 + 5)).expect("holder");
        let d = run(&store, |t| get_inode(t, 10)).expect("dir");
        assert_eq!(d.lease_until_ns, t0 + LEASE_NS, "not renewed");
        // Anyone else waits, for a change of it and for its removal, by
        // rmdir or by a rename over it.
        let held = |r: Result<()>| matches!(r, Err(MetaError::DirectoryLeased { dir: 10, .. }));
        assert!(held(run(&store, |t| admit_change(t, 10, 8, t0 + 5))));
        assert!(held(run(&store, |t| admit_change(t, 10, 0, t0 + 5))));
        assert!(held(run(&store, |t| rmdir(t, 1, b"d", 8, t0 + 5))));
        run(&store, |t| create(t, &dir(b"other", 0), 11, t0)).expect("mkdir");
        let over = RenameRequest {
            parent: 1,
            name: b"other".to_vec(),
            new_parent: 1,
            new_name: b"d".to_vec(),
            client_id: 8,
            ..Default::default()
        };
        assert!(held(run(&store, |t| rename(t, &over, t0 + 5).map(|_| ()))));
        assert!(run(&store, |t| namespace::lookup(t, 1, b"d")).is_ok());
        // Files and directories without a lease are not held back.
        run(&store, |t| admit_change(t, 11, 8, t0 + 5)).expect("no lease");
        // Once it has run out, the removal goes through.
        let after = t0 + LEASE_NS + CLOCK_SKEW_NS;
        run(&store, |t| rmdir(t, 1, b"d", 8, after)).expect("rmdir once run out");
        assert!(run(&store, |t| namespace::lookup(t, 1, b"d")).is_err());
    }
}
