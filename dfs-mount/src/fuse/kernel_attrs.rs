//! The sizes of regular files as this mount last told the kernel, so that
//! an open can tell whether the kernel's copy is out of date.
//!
//! Close-to-open (`consistency=read-own`) promises that a file opened after
//! another client closed it reads as that client left it. The open itself
//! loads the file fresh from the metadata server, but the kernel keeps the attributes
//! of a looked-up file for the cache lifetime and bounds every read by the
//! size it keeps: a file that grew elsewhere since would read short. An
//! open that finds a size other than the one the kernel was given drops the
//! kernel's attributes (FUSE_NOTIFY_INVAL_INODE, attributes only), so the
//! read past the old size asks again. Files this client grew through the
//! kernel's writes are not counted as changed (the kernel grew its size
//! itself); files changed otherwise pay one attribute request.
//!
//! Left: two replies with different sizes racing to the kernel can be
//! remembered in the other order than they arrive; a file changed in that
//! window by another client may then read short until the TTL ends.

use std::collections::HashMap;

use dfs_proto::{FileKind, InodeRecord};
use fuser::FileAttr;
use parking_lot::Mutex;

use super::convert::to_file_attr;

/// Files remembered at once; past it the memory is cleared, and opens of
/// files not remembered drop the kernel's attributes to be safe.
const MAX_FILES: usize = 1 << 20;

#[derive(Default)]
pub struct KernelAttrs {
    sizes: Mutex<HashMap<u64, u64>>,
}

impl KernelAttrs {
    /// `r` as the kernel gets it, noting a regular file's size.
    pub fn told(&self, r: &InodeRecord) -> FileAttr {
        if r.kind() == FileKind::Regular {
            let mut sizes = self.sizes.lock();
            if sizes.len() >= MAX_FILES && !sizes.contains_key(&r.ino) {
                sizes.clear();
            }
            sizes.insert(r.ino, r.size);
        }
        to_file_attr(r)
    }

    /// Whether the kernel may hold a size of `ino` other than `size`, the
    /// size an open just found.
    pub fn stale(&self, ino: u64, size: u64) -> bool {
        self.sizes.lock().get(&ino) != Some(&size)
    }

    /// A write through the kernel ended at `end`: the kernel's size grew
    /// to it by itself.
    pub fn wrote(&self, ino: u64, end: u64) {
        if let Some(size) = self.sizes.lock().get_mut(&ino) {
            *size = (*size).max(end);
        }
    }

    /// The kernel was told to drop `ino`'s attributes; it asks again.
    pub fn dropped(&self, ino: u64) {
        self.sizes.lock().remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64, size: u64, kind: FileKind) -> InodeRecord {
        let mut r = InodeRecord {
            ino,
            size,
            ..Default::default()
        };
        r.set_kind(kind);
        r
    }

    #[test]
    fn an_open_finding_another_size_than_the_kernel_got_is_stale() {
        let k = KernelAttrs::default();
        assert!(k.stale(5, 0), "never told: the kernel may hold anything");
        k.told(&file(5, 100, FileKind::Regular));
        assert!(!k.stale(5, 100));
        assert!(k.stale(5, 9000), "grew elsewhere");
        k.wrote(5, 9000);
        assert!(!k.stale(5, 9000), "grown by this client's own writes");
        k.dropped(5);
        assert!(k.stale(5, 100));
        k.told(&file(6, 4096, FileKind::Directory));
        assert!(k.stale(6, 4096), "only regular files are remembered");
    }
}
