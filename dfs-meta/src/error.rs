//! Errors of the metadata server and their one mapping to errno.
//!
//! Policy: `Store(Conflict)` and store I/O errors are retryable (the store
//! may be briefly unavailable); every namespace error (`NotFound`, `Exists`,
//! ...) is permanent and is the answer to the request; `Corrupt` means a
//! stored record could not be decoded: that is a bug or damage, reported as
//! EIO and logged at error level.

use dfs_core::error::DfsError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("no such extended attribute")]
    NoXattr,
    #[error("extended attribute value or name too large")]
    XattrTooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("permission denied: {0}")]
    AccessDenied(String),
    /// Background work on this object must finish first; retry shortly.
    #[error("busy: {0}")]
    Busy(String),
    #[error("{} chunks are not in the dedup index", .0.len())]
    MissingChunks(Vec<Vec<u8>>),
    /// The commit would use index entries another identity uploaded that
    /// dfs-meta has not checked yet (`maintenance::verify`): the service
    /// checks them and commits again; a client only sees it as a retry.
    #[error("{} chunks are other clients' uploads not checked yet; retry", .0.len())]
    Unchecked(Vec<Vec<u8>>),
    /// The commit's uploads would replace entries found not to be their
    /// chunks: the service reads those uploads back first
    /// (`chunkmap::commit_checked`); a client only sees it as a retry.
    #[error("{} uploads replace entries found bad and are not checked yet; retry", .0.len())]
    ReplacesFailed(Vec<Vec<u8>>),
    /// Adding a name to `dir` must wait for another client's lease on its
    /// names to run out (`dir_lease`): the service revokes it, waits and
    /// runs the transaction again; a client only sees it as a retry.
    #[error("directory {dir} is leased to another client until {until_ns}; retry")]
    DirectoryLeased { dir: u64, until_ns: i64 },
    /// The client's lock session lease ran out: its locks were given up.
    #[error("lock session {0} expired; its locks were released")]
    LockSessionExpired(u64),
    #[error("too many locks on inode {0}")]
    TooManyLocks(u64),
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
    /// The cold store (`cold`) failed or is unreachable.
    #[error("{0}")]
    ColdStore(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<MetaError> for DfsError {
    fn from(e: MetaError) -> Self {
        let message = e.to_string();
        match e {
            MetaError::NotFound => DfsError::new(libc::ENOENT, message),
            MetaError::Exists => DfsError::new(libc::EEXIST, message),
            MetaError::NotDir => DfsError::new(libc::ENOTDIR, message),
            MetaError::IsDir => DfsError::new(libc::EISDIR, message),
            MetaError::NotEmpty => DfsError::new(libc::ENOTEMPTY, message),
            MetaError::NameTooLong => DfsError::new(libc::ENAMETOOLONG, message),
            MetaError::Invalid(_) => DfsError::new(libc::EINVAL, message),
            MetaError::NotPermitted(_) => DfsError::new(libc::EPERM, message),
            MetaError::AccessDenied(_) => DfsError::new(libc::EACCES, message),
            MetaError::NoXattr => DfsError::new(libc::ENODATA, message),
            MetaError::XattrTooBig => DfsError::new(libc::E2BIG, message),
            MetaError::TooManyLinks => DfsError::new(libc::EMLINK, message),
            MetaError::LockSessionExpired(_) => DfsError::new(libc::ENOLCK, message),
            // The client renews its session on ENOLCK and asks once more,
            // which is harmless here: the second answer reaches the caller.
            MetaError::TooManyLocks(_) => DfsError::new(libc::ENOLCK, message),
            MetaError::Busy(_)
            | MetaError::Unchecked(_)
            | MetaError::ReplacesFailed(_)
            | MetaError::DirectoryLeased { .. } => DfsError::retryable(libc::EAGAIN, message),
            MetaError::MissingChunks(missing) => {
                let mut err = DfsError::new(libc::EAGAIN, message);
                err.missing_chunks = missing;
                err
            }
            MetaError::ColdStore(_) => {
                tracing::error!(error = %message, "cold store request failed");
                DfsError::new(libc::EIO, message)
            }
            MetaError::Corrupt(_) => {
                tracing::error!(error = %message, "corrupt metadata");
                DfsError::new(libc::EIO, message)
            }
            MetaError::Store(StoreError::Conflict | StoreError::Io(_)) => {
                DfsError::retryable(libc::EIO, message)
            }
            MetaError::Store(StoreError::Open(_)) => DfsError::new(libc::EIO, message),
            // A request the shared code should have split: a bug, not retryable.
            MetaError::Store(StoreError::TooLarge(_)) => {
                tracing::error!(error = %message, "metadata transaction too large");
                DfsError::new(libc::EIO, message)
            }
            // The caller cannot know whether it happened: retrying is its call
            // (chunk-map commits are idempotent, creates are not).
            MetaError::Store(StoreError::CommitUnknown(_)) => {
                DfsError::retryable(libc::EIO, message)
            }
        }
    }
}

impl crate::store::ConflictError for MetaError {
    fn is_conflict(&self) -> bool {
        matches!(self, MetaError::Store(StoreError::Conflict))
    }
    fn is_store_trouble(&self) -> bool {
        matches!(self, MetaError::Store(e) if e.is_store_trouble())
    }
}

impl From<prost::DecodeError> for MetaError {
    fn from(e: prost::DecodeError) -> Self {
        MetaError::Corrupt(e.to_string())
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;
