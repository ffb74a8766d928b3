//! Inode records (`I ino`): read and written by the namespace, chunk-map
//! commits and the purge worker alike, so they live apart from all three;
//! and inode numbers, handed out from batches each metadata server
//! reserves.

use dfs_proto::InodeRecord;

use crate::error::{MetaError, Result};
use crate::keys;
use crate::namespace::{COUNTER_NEXT_INO, ROOT_INO};
use crate::store::{decode_counter, get_record, put_record, transact, KvTxn, MetaStore};

/// The inode `ino`, or `NotFound`.
pub fn get_inode(txn: &mut dyn KvTxn, ino: u64) -> Result<InodeRecord> {
    get_record(txn, &keys::inode(ino))?.ok_or(MetaError::NotFound)
}

pub fn put_inode(txn: &mut dyn KvTxn, inode: &InodeRecord) {
    put_record(txn, &keys::inode(inode.ino), inode);
}

/// Reserves `count` inode numbers for one metadata server and returns the
/// first. A short transaction of its own: creates then take numbers from
/// the reserved batch without touching a shared counter (several metadata
/// servers on FoundationDB would otherwise conflict on every create).
pub fn reserve_inodes(txn: &mut dyn KvTxn, count: u64) -> Result<u64> {
    let key = keys::counter(COUNTER_NEXT_INO);
    let next = decode_counter(txn.get(&key)?.as_deref()).max(ROOT_INO as i64 + 1);
    let end = next
        .checked_add(i64::try_from(count).map_err(|_| MetaError::Invalid("inode batch".into()))?)
        .ok_or_else(|| MetaError::Corrupt("inode counter overflow".into()))?;
    txn.set(&key, &end.to_le_bytes());
    u64::try_from(next).map_err(|_| MetaError::Corrupt("inode counter is negative".into()))
}

/// Hands out inode numbers from batches reserved with [`reserve_inodes`].
pub struct InodeAllocator {
    range: parking_lot::Mutex<(u64, u64)>,
    batch: u64,
}

impl InodeAllocator {
    pub fn new(batch: u64) -> Self {
        Self {
            range: parking_lot::Mutex::new((0, 0)),
            batch: batch.max(1),
        }
    }

    /// The next free inode number if the reserved batch has one: never
    /// blocks, so it needs no blocking thread (1,023 creates in 1,024).
    pub fn try_next(&self) -> Option<u64> {
        let mut range = self.range.lock();
        (range.0 < range.1).then(|| {
            range.0 += 1;
            range.0 - 1
        })
    }

    /// The next free inode number. Blocking (it may run a transaction):
    /// call it outside any other transaction. The lock is not held across
    /// that transaction; when two callers find the batch spent at once,
    /// one batch is installed and the other caller keeps one number of its
    /// own (the rest of its batch is skipped: numbers are not scarce).
    pub fn next(&self, store: &dyn MetaStore) -> Result<u64> {
        if let Some(ino) = self.try_next() {
            return Ok(ino);
        }
        let start = transact(store, |t| reserve_inodes(t, self.batch))?;
        let mut range = self.range.lock();
        if range.0 >= range.1 {
            *range = (start + 1, start + self.batch);
        }
        Ok(start)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::namespace::init_root;
    use crate::store::MemStore;

    #[test]
    fn inode_allocators_of_several_servers_never_collide() {
        let store = MemStore::default();
        transact(&store, |t| init_root(t, 1)).unwrap();
        let (a, b) = (InodeAllocator::new(3), InodeAllocator::new(3));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            assert!(seen.insert(a.next(&store).unwrap()));
            assert!(seen.insert(b.next(&store).unwrap()));
        }
        // A restarted server (a fresh allocator) continues after every batch.
        let c = InodeAllocator::new(3);
        let n = c.next(&store).unwrap();
        assert!(seen.iter().all(|&s| s < n) && !seen.contains(&ROOT_INO));
        // try_next hands out the rest of the batch without the store, then
        // says the batch is spent.
        assert_eq!(c.try_next(), Some(n + 1));
        assert_eq!(c.try_next(), Some(n + 2));
        assert_eq!(c.try_next(), None);
        assert_eq!(c.next(&store).unwrap(), n + 3);
        assert_eq!(
            InodeAllocator::new(3).try_next(),
            None,
            "nothing reserved yet"
        );
    }
}
