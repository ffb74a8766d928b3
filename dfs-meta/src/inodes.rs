//! Inode records (`I ino`): read and written by the namespace, chunk-map
//! commits and the purge worker alike, so they live apart from all three.

use dfs_proto::InodeRecord;

use crate::error::{MetaError, Result};
use crate::keys;
use crate::store::{get_record, put_record, KvTxn};

/// The inode `ino`, or `NotFound`.
pub fn get_inode(txn: &mut dyn KvTxn, ino: u64) -> Result<InodeRecord> {
    get_record(txn, &keys::inode(ino))?.ok_or(MetaError::NotFound)
}

pub fn put_inode(txn: &mut dyn KvTxn, inode: &InodeRecord) {
    put_record(txn, &keys::inode(inode.ino), inode);
}
