//! Extended attributes (`X ino name`), with the POSIX ACLs among them:
//! an access ACL is kept in step with the mode bits, and one that says no
//! more than the mode is not stored. A tiering policy
//! (`user.dfs.tier`, `dfs_core::tier`) is checked and kept canonical.

use dfs_proto::{FileKind, XattrRequest};

use crate::acl;
use crate::error::{MetaError, Result};
use crate::inodes::{get_inode, put_inode};
use crate::keys;
use crate::namespace::S_ISGID;
use crate::store::KvTxn;

fn check_xattr_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(MetaError::Invalid("empty extended attribute name".into()));
    }
    if name.len() > dfs_proto::XATTR_NAME_MAX {
        return Err(MetaError::XattrTooBig);
    }
    Ok(())
}

/// Sets an extended attribute; `flags` as setxattr(2) (XATTR_CREATE fails
/// on an existing name, XATTR_REPLACE on a missing one).
pub fn set_xattr(txn: &mut dyn KvTxn, req: &XattrRequest, now_ns: i64) -> Result<()> {
    let (ino, name, value, flags) = (req.ino, &req.name[..], &req.value[..], req.flags);
    check_xattr_name(name)?;
    if value.len() > dfs_proto::XATTR_SIZE_MAX {
        return Err(MetaError::XattrTooBig);
    }
    if flags & !(dfs_proto::XATTR_CREATE | dfs_proto::XATTR_REPLACE) != 0
        || flags == dfs_proto::XATTR_CREATE | dfs_proto::XATTR_REPLACE
    {
        return Err(MetaError::Invalid(format!("setxattr flags {flags:#x}")));
    }
    let mut inode = get_inode(txn, ino)?;
    let key = keys::xattr(ino, name);
    let exists = txn.get(&key)?.is_some();
    if exists && flags & dfs_proto::XATTR_CREATE != 0 {
        return Err(MetaError::Exists);
    }
    if !exists && flags & dfs_proto::XATTR_REPLACE != 0 {
        return Err(MetaError::NoXattr);
    }
    if name == acl::ACCESS || name == acl::DEFAULT {
        let parsed = acl::Acl::parse(value)?;
        if inode.kind() == FileKind::Symlink {
            return Err(MetaError::NotPermitted(
                "symbolic links have no ACLs".into(),
            ));
        }
        if name == acl::DEFAULT {
            if inode.kind() != FileKind::Directory {
                return Err(MetaError::AccessDenied(
                    "only directories have default ACLs".into(),
                ));
            }
            txn.set(&key, &parsed.to_bytes());
            inode.default_acl = true;
        } else {
            // The mode carries what the ACL says of owner, mask and other;
            // an ACL that says no more is not kept.
            inode.mode = (inode.mode & !0o777) | parsed.mode_bits();
            if req.kill_sgid {
                inode.mode &= !S_ISGID;
            }
            if parsed.is_minimal() {
                txn.clear(&key);
            } else {
                txn.set(&key, &parsed.to_bytes());
            }
        }
    } else if name == dfs_core::tier::XATTR.as_bytes() {
        // A tiering policy: refused unless it parses, kept in its
        // canonical form.
        let text = std::str::from_utf8(value)
            .map_err(|_| MetaError::Invalid("a tier policy is text".into()))?;
        let policy = dfs_core::tier::TierPolicy::parse(text)
            .map_err(|e| MetaError::Invalid(e.to_string()))?;
        txn.set(&key, policy.to_string().as_bytes());
    } else {
        txn.set(&key, value);
    }
    inode.ctime_ns = now_ns;
    put_inode(txn, &inode);
    Ok(())
}

pub fn get_xattr(txn: &mut dyn KvTxn, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
    check_xattr_name(name)?;
    get_inode(txn, ino)?;
    txn.get(&keys::xattr(ino, name))?.ok_or(MetaError::NoXattr)
}

/// Every extended attribute name of `ino`, in byte order.
pub fn list_xattr(txn: &mut dyn KvTxn, ino: u64) -> Result<Vec<Vec<u8>>> {
    get_inode(txn, ino)?;
    let prefix = keys::xattr_prefix(ino);
    Ok(txn
        .range(&prefix, &keys::prefix_end(&prefix), 0, false)?
        .into_iter()
        .map(|(k, _)| k[prefix.len()..].to_vec())
        .collect())
}

pub fn remove_xattr(txn: &mut dyn KvTxn, ino: u64, name: &[u8], now_ns: i64) -> Result<()> {
    check_xattr_name(name)?;
    let mut inode = get_inode(txn, ino)?;
    let key = keys::xattr(ino, name);
    if txn.get(&key)?.is_none() {
        return Err(MetaError::NoXattr);
    }
    txn.clear(&key);
    if name == acl::DEFAULT {
        inode.default_acl = false;
    }
    inode.ctime_ns = now_ns;
    put_inode(txn, &inode);
    Ok(())
}
