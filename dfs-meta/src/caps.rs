//! Caps finer than a role, from the caller's client certificate
//! (`dfs ca issue --role client --unprivileged`): what an unprivileged
//! client may not create. Read-only certificates are refused every change
//! before any handler runs (`dfs_core::tls::authorize`); this module is for
//! what only the request's content tells.
//!
//! Unprivileged: no set-user-ID bit anywhere, no set-group-ID bit on
//! anything but a directory (there it only makes new entries inherit the
//! group, and mkdir in such a directory must keep working), no device
//! nodes, no `security.*` or `trusted.*` xattrs (capabilities, SELinux
//! labels and the like, which the kernel would honour on a node that
//! mounts with `suid`).

use dfs_core::tls::{Caps, PeerInfo};
use dfs_proto::{CreateRequest, FileKind, XattrRequest};
use tonic::Request;

use crate::error::MetaError;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

/// The caps of whoever sent `request`; none for an unrestricted caller
/// (any certificate without caps, plaintext, or in-process).
pub fn of<T>(request: &Request<T>) -> Caps {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity.as_ref())
        .map(|i| i.caps.clone())
        .unwrap_or_default()
}

fn refused(what: &str) -> MetaError {
    MetaError::NotPermitted(format!(
        "{what}: this client's certificate is unprivileged (`dfs ca issue --unprivileged`)"
    ))
}

/// Whether `mode` on an inode of kind `kind` carries a privilege bit.
fn privileged_mode(kind: FileKind, mode: u32) -> bool {
    mode & S_ISUID != 0 || (mode & S_ISGID != 0 && kind != FileKind::Directory)
}

pub fn check_create(caps: &Caps, r: &CreateRequest) -> Result<(), MetaError> {
    if !caps.unprivileged {
        return Ok(());
    }
    let kind = r.kind();
    if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
        return Err(refused("device nodes"));
    }
    if privileged_mode(kind, r.mode) {
        return Err(refused("set-user-ID and set-group-ID bits"));
    }
    if r.inherit_from != 0 {
        // It could take the group of a set-group-ID directory the client
        // may not create in.
        return Err(refused("inheriting from a directory other than the parent"));
    }
    Ok(())
}

/// A mode change on an inode of `kind`.
pub fn check_mode(caps: &Caps, kind: FileKind, mode: Option<u32>) -> Result<(), MetaError> {
    match mode {
        Some(mode) if caps.unprivileged && privileged_mode(kind, mode) => {
            Err(refused("set-user-ID and set-group-ID bits"))
        }
        _ => Ok(()),
    }
}

pub fn check_xattr(caps: &Caps, r: &XattrRequest) -> Result<(), MetaError> {
    if caps.unprivileged && (r.name.starts_with(b"security.") || r.name.starts_with(b"trusted.")) {
        return Err(refused("security.* and trusted.* extended attributes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unprivileged() -> Caps {
        Caps {
            unprivileged: true,
            ..Caps::default()
        }
    }

    fn create(kind: FileKind, mode: u32) -> CreateRequest {
        CreateRequest {
            kind: kind as i32,
            mode,
            ..CreateRequest::default()
        }
    }

    #[test]
    fn unprivileged_clients_make_nothing_privileged() {
        let u = unprivileged();
        assert!(check_create(&u, &create(FileKind::Regular, 0o4755)).is_err());
        assert!(check_create(&u, &create(FileKind::Regular, 0o2755)).is_err());
        assert!(check_create(&u, &create(FileKind::CharDevice, 0o644)).is_err());
        assert!(check_create(&u, &create(FileKind::BlockDevice, 0o644)).is_err());
        // A set-group-ID directory only passes its group on.
        assert!(check_create(&u, &create(FileKind::Directory, 0o2775)).is_ok());
        assert!(check_create(&u, &create(FileKind::Regular, 0o755)).is_ok());
        assert!(check_create(&u, &create(FileKind::Fifo, 0o644)).is_ok());
        let elsewhere = CreateRequest {
            inherit_from: 9,
            ..create(FileKind::Regular, 0o644)
        };
        assert!(check_create(&u, &elsewhere).is_err());
        assert!(check_create(&Caps::default(), &elsewhere).is_ok());
        assert!(check_mode(&u, FileKind::Regular, Some(0o4755)).is_err());
        assert!(check_mode(&u, FileKind::Directory, Some(0o2755)).is_ok());
        assert!(check_mode(&u, FileKind::Regular, None).is_ok());
        let x = |name: &[u8]| XattrRequest {
            name: name.to_vec(),
            ..XattrRequest::default()
        };
        assert!(check_xattr(&u, &x(b"security.capability")).is_err());
        assert!(check_xattr(&u, &x(b"trusted.overlay.opaque")).is_err());
        assert!(check_xattr(&u, &x(b"user.note")).is_ok());
        assert!(check_xattr(&u, &x(b"system.posix_acl_access")).is_ok());
    }

    #[test]
    fn others_are_not_limited() {
        let c = Caps::default();
        assert!(check_create(&c, &create(FileKind::CharDevice, 0o4755)).is_ok());
        assert!(check_mode(&c, FileKind::Regular, Some(0o6755)).is_ok());
    }
}
