//! The wire format between dfs processes, generated from `proto/dfs.proto`.
//!
//! Messages named `*Record` double as the values stored in the metadata
//! store, so they only ever change compatibly.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dfs.v1");
}

pub use v1::*;

pub mod codec;

/// Largest message either side accepts: a batch of shards for one server.
/// Replies are bounded by it; requests by the smaller limits below.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Largest request dfs-meta decodes: a chunk-map commit carries at most
/// 4 MiB of inline bytes and the entries of one 64 MiB flush group (about
/// 250 KB); anything bigger is refused before it is read into memory.
pub const MAX_META_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest request a chunk server decodes: a client's `PutShards` is at
/// most 32 MiB of shards (plus one shard that is bigger alone).
pub const MAX_SHARD_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Most chunks (and replaced ranges) one `CommitChunks` may carry, and
/// fingerprints one `LookupChunks` may ask about: a 64 MiB flush group cut
/// at the 32 KiB minimum is 2,048.
pub const MAX_CHUNKS_PER_REQUEST: usize = 16_384;
/// Response metadata key (binary, one value per directory, each an encoded
/// `InodeRecord`) under which the metadata server returns the directories a
/// change (create, link, unlink, rmdir, rename; setattr and xattr changes
/// of a directory) modified, as they are after it. The kernel asks for
/// their attributes right after such a change; a client answers from these
/// instead of another round trip. In metadata, not in the reply message,
/// so clients that do not know it ignore it.
pub const CHANGED_DIRS_METADATA: &str = "dfs-changed-dirs-bin";
/// How long a directory lease lasts past the holder's last added name
/// (`InodeRecord::lease_holder`). Another client adding a name waits at
/// most this long for it.
pub const DIRECTORY_LEASE: std::time::Duration = std::time::Duration::from_secs(1);
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

    /// Whether the chunk lives in a pack object on the cold store.
    pub fn is_packed(&self) -> bool {
        self.layout.is_some_and(|l| l.packed)
    }

    /// Whether the chunk is kept as shards on chunk servers (neither
    /// inline nor packed).
    pub fn is_sharded(&self) -> bool {
        !self.is_inline() && !self.is_packed()
    }

    /// How a writer whose certificate is `owner` (see `ChunkRecord.owner`)
    /// may use this index entry.
    pub fn standing_for(&self, owner: &[u8]) -> Standing {
        if self.state() != ChunkState::Live {
            Standing::Absent
        } else if self.verification_failed {
            Standing::Failed
        } else if self.verified || !self.is_sharded() || self.owner == owner {
            Standing::Usable
        } else {
            Standing::Unchecked
        }
    }
}

/// What an index entry is to one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Dead (or none): the chunk must be uploaded.
    Absent,
    /// Checked, inline, or uploaded by this writer: dedup against it.
    Usable,
    /// Another identity's upload, not checked yet: dfs-meta reads it back
    /// before anyone else may dedup against it.
    Unchecked,
    /// Checked and found not to be the chunk: the next upload replaces it.
    Failed,
}
