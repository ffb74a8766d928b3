//! Errors of the chunk server's storage layer, and their one mapping to the
//! typed error that crosses the wire.
//!
//! # Error policy
//!
//! Every [`StoreError`] that reaches a client goes through
//! `impl From<StoreError> for DfsError` below, so the client sees an
//! errno-like code and a retryable flag, never just a string.
//!
//! - **Permanent** (retrying this server cannot help; the client reads another
//!   shard or rebuilds from the survivors):
//!   - [`StoreError::NotFound`] → `ENOENT`: this server does not hold the shard.
//!   - [`StoreError::Corrupt`] → `EBADMSG`, message contains "corrupt": the
//!     stored bytes fail their checksum; reading them again returns the same
//!     bytes. Its own errno tells the client to rewrite the shard once it has
//!     rebuilt the chunk from the others.
//!   - [`StoreError::NoSpace`] → `ENOSPC`: the data directory's file system is
//!     full; the client places the shard elsewhere.
//!   - [`StoreError::Open`] and [`StoreError::Io`] → `EIO`: configuration or
//!     start-up problems; they normally stop the server before it serves.
//! - **Retryable**:
//!   - [`StoreError::Db`] → `EIO`, retryable when RocksDB reports a transient
//!     condition (busy, try again, timed out, incomplete, shutting down);
//!     permanent otherwise.
//! - **Bugs**: a panic inside a blocking store task is reported by the service
//!   as a permanent `EIO` and logged; it never takes the server down.

use std::io;
use std::path::PathBuf;

use dfs_core::error::DfsError;

/// What can go wrong in the shard store and the server's identity file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database (or the directory that holds it) cannot be created or opened.
    #[error("cannot open shard store at {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },

    /// No shard stored under this key.
    #[error("shard {fingerprint}/{index} not found")]
    NotFound { fingerprint: String, index: u8 },

    /// The stored value fails its version or checksum check.
    #[error("shard {fingerprint}/{index} is corrupt: {reason}")]
    Corrupt {
        fingerprint: String,
        index: u8,
        reason: String,
    },

    /// A put would replace a readable shard with other bytes, which only
    /// dfs-meta and chunk servers may do (repairs, conversions).
    #[error("shard {fingerprint}/{index} is already stored with other bytes: a client may not replace it")]
    Exists { fingerprint: String, index: u8 },

    /// The file system under the data directory is full.
    #[error("no space left on device: {0}")]
    NoSpace(String),

    /// Any other RocksDB failure.
    #[error("shard store error: {0}")]
    Db(rocksdb::Error),

    /// A file-system operation outside RocksDB (identity file, statvfs).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// Classifies a RocksDB error: a full disk becomes [`StoreError::NoSpace`].
    pub(crate) fn from_db(err: rocksdb::Error) -> Self {
        let msg = err.as_ref();
        if msg.contains("No space left on device") || msg.contains("NoSpace") {
            StoreError::NoSpace(err.into_string())
        } else {
            StoreError::Db(err)
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno a client sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound { .. } => libc::ENOENT,
            StoreError::NoSpace(_) => libc::ENOSPC,
            StoreError::Corrupt { .. } => libc::EBADMSG,
            StoreError::Exists { .. } => libc::EEXIST,
            StoreError::Db(_) | StoreError::Open { .. } | StoreError::Io { .. } => libc::EIO,
        }
    }

    /// Whether a client retrying the same request on this server can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Db(e) => matches!(
                e.kind(),
                rocksdb::ErrorKind::Busy
                    | rocksdb::ErrorKind::TryAgain
                    | rocksdb::ErrorKind::TimedOut
                    | rocksdb::ErrorKind::Incomplete
                    | rocksdb::ErrorKind::ShutdownInProgress
            ),
            StoreError::NotFound { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Exists { .. }
            | StoreError::NoSpace(_)
            | StoreError::Open { .. }
            | StoreError::Io { .. } => false,
        }
    }
}

impl From<StoreError> for DfsError {
    fn from(err: StoreError) -> Self {
        let errno = err.errno();
        if err.is_retryable() {
            DfsError::retryable(errno, err.to_string())
        } else {
            DfsError::new(errno, err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_typed() {
        let nf = DfsError::from(StoreError::NotFound {
            fingerprint: "ab".into(),
            index: 3,
        });
        assert_eq!(nf.errno, libc::ENOENT);
        assert!(!nf.retryable);

        let corrupt = DfsError::from(StoreError::Corrupt {
            fingerprint: "ab".into(),
            index: 3,
            reason: "crc mismatch".into(),
        });
        assert_eq!(corrupt.errno, libc::EBADMSG);
        assert!(!corrupt.retryable);
        assert!(corrupt.message.contains("corrupt"));

        let full = DfsError::from(StoreError::NoSpace("disk full".into()));
        assert_eq!(full.errno, libc::ENOSPC);
        assert!(!full.retryable);

        let io = DfsError::from(StoreError::io("statvfs /x", io::Error::other("boom")));
        assert_eq!(io.errno, libc::EIO);
    }
}
