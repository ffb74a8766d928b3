//! The wire format between dfs processes, generated from `proto/dfs.proto`.
//!
//! Messages named `*Record` double as the values stored in the metadata
//! store, so they only ever change compatibly.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dfs.v1");
}

pub use v1::*;

/// Largest message either side accepts: a batch of shards for one server.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Response metadata key (binary, one value per directory, each an encoded
/// `InodeRecord`) under which the metadata server returns the directories a
/// change (create, link, unlink, rmdir, rename; setattr and xattr changes
/// of a directory) modified, as they are after it. The kernel asks for
/// their attributes right after such a change; a client answers from these
/// instead of another round trip. In metadata, not in the reply message,
/// so clients that do not know it ignore it.
pub const CHANGED_DIRS_METADATA: &str = "dfs-changed-dirs-bin";
/// `RenameRequest::flags`, with Linux's values.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
/// `XattrRequest::flags`, with Linux's values.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;
/// Largest extended attribute value, as Linux's VFS allows.
pub const XATTR_SIZE_MAX: usize = 65536;
/// Longest extended attribute name, as Linux's VFS allows.
pub const XATTR_NAME_MAX: usize = 255;

impl ChunkRecord {
    /// Whether the chunk's stored bytes live in this record (in the
    /// metadata store) rather than as shards on chunk servers.
    pub fn is_inline(&self) -> bool {
        self.layout.is_some_and(|l| l.inline)
    }
}
