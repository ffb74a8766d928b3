//! Errors that cross process boundaries, and the one place they become
//! errnos.
//!
//! # Error policy
//!
//! Every failure that leaves a dfs process is a [`DfsError`]: an errno (what
//! the FUSE client finally returns to the application) plus a `retryable`
//! flag (whether trying again can succeed). Each crate keeps its own typed
//! errors internally and converts at its RPC boundary; gRPC statuses carry a
//! `dfs.v1.ErrorDetail` in their details so nothing is lost in transit.
//!
//! * **Retryable** (`retryable = true`): the operation may succeed later
//!   unchanged — a server unavailable or overloaded, a timeout, a transport
//!   failure, too few shards reachable right now, an optimistic-concurrency
//!   conflict in the metadata store. Callers retry with backoff and give up
//!   with the errno (usually `EIO`, `ETIMEDOUT` or `EAGAIN`) only after
//!   their deadline.
//! * **Permanent**: the answer will not change by retrying — `ENOENT`,
//!   `EEXIST`, `ENOTEMPTY`, `ENOTDIR`, `EISDIR`, `EINVAL`, `ENAMETOOLONG`,
//!   `ENOSPC`, `EACCES`, `EPERM`, `EXDEV`... These are returned to the
//!   application as they are and are not logged as errors.
//! * **Bugs and corruption**: anything that "cannot happen" (undecodable
//!   stored records, chunks that fail their fingerprint, invariants broken)
//!   is `EIO`, permanent ([`DfsError::io`]), and logged at error level
//!   where it is detected — the application sees a plain I/O error, the
//!   operator sees why.

use std::fmt;

use bytes::Bytes;
use prost::Message;
use tonic::{Code, Status};

use crate::codec::CodecError;
use crate::erasure::ErasureError;
use crate::fingerprint::FingerprintError;

/// An error as it crosses processes: errno, retryability, message, and for
/// chunk-map commits the fingerprints the metadata server is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct DfsError {
    /// A positive `libc` errno.
    pub errno: i32,
    /// Whether retrying the same request can succeed.
    pub retryable: bool,
    /// Human-readable context, for logs.
    pub message: String,
    /// Fingerprints the metadata server does not know (or holds as dead)
    /// during a chunk-map commit: the client uploads them and commits again.
    pub missing_chunks: Vec<Vec<u8>>,
}

/// Shorthand for results carrying a [`DfsError`].
pub type DfsResult<T> = Result<T, DfsError>;

impl DfsError {
    /// A permanent error with this errno.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        DfsError {
            errno,
            retryable: false,
            message: message.into(),
            missing_chunks: Vec::new(),
        }
    }

    /// A retryable error with this errno.
    pub fn retryable(errno: i32, message: impl Into<String>) -> Self {
        DfsError {
            retryable: true,
            ..DfsError::new(errno, message)
        }
    }

    /// `EINVAL`: a malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        DfsError::new(libc::EINVAL, message)
    }

    /// `ENOSPC`: no server can take more data.
    pub fn no_space(message: impl Into<String>) -> Self {
        DfsError::new(libc::ENOSPC, message)
    }

    /// `EIO`, permanent: an I/O failure retrying will not fix.
    pub fn io(message: impl Into<String>) -> Self {
        DfsError::new(libc::EIO, message)
    }

    /// `EIO`, retryable: a server or the network is unavailable right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        DfsError::retryable(libc::EIO, message)
    }

    /// Attaches the fingerprints a chunk-map commit is missing.
    pub fn with_missing_chunks(mut self, missing: Vec<Vec<u8>>) -> Self {
        self.missing_chunks = missing;
        self
    }

    /// Prefixes the message with context, keeping errno and flags.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The gRPC code a status for this error carries. Only a hint for
    /// generic tooling: dfs processes read the errno from the details.
    pub fn code(&self) -> Code {
        if self.retryable {
            return Code::Unavailable;
        }
        match self.errno {
            libc::ENOENT | libc::ESTALE => Code::NotFound,
            libc::EEXIST => Code::AlreadyExists,
            libc::EINVAL | libc::ENAMETOOLONG => Code::InvalidArgument,
            libc::ENOSPC | libc::EDQUOT => Code::ResourceExhausted,
            libc::EACCES | libc::EPERM => Code::PermissionDenied,
            libc::ENOTEMPTY | libc::ENOTDIR | libc::EISDIR | libc::EXDEV => {
                Code::FailedPrecondition
            }
            libc::ENOSYS | libc::EOPNOTSUPP => Code::Unimplemented,
            libc::ERANGE | libc::EFBIG => Code::OutOfRange,
            _ => Code::Internal,
        }
    }

    /// The detail message carried in a status.
    pub fn detail(&self) -> dfs_proto::ErrorDetail {
        dfs_proto::ErrorDetail {
            errno: self.errno,
            retryable: self.retryable,
            missing_chunks: self.missing_chunks.clone(),
        }
    }
}

impl From<DfsError> for Status {
    fn from(e: DfsError) -> Status {
        let details = Bytes::from(e.detail().encode_to_vec());
        Status::with_details(e.code(), e.message, details)
    }
}

impl From<Status> for DfsError {
    fn from(s: Status) -> DfsError {
        if !s.details().is_empty() {
            if let Ok(d) = dfs_proto::ErrorDetail::decode(s.details()) {
                if d.errno > 0 {
                    return DfsError {
                        errno: d.errno,
                        retryable: d.retryable,
                        message: s.message().to_string(),
                        missing_chunks: d.missing_chunks,
                    };
                }
            }
        }
        // No dfs detail: the status came from the transport, a proxy, or a
        // tonic layer (deadline, decode limit...), not from a dfs handler.
        let retryable = match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => true,
            // Unknown is what tonic makes of an error it cannot classify;
            // with a source attached it came from the client's transport
            // stack (connection reset, refused...), which a retry may fix.
            Code::Unknown => std::error::Error::source(&s).is_some(),
            _ => false,
        };
        let message = if s.message().is_empty() {
            format!("rpc failed: {:?}", s.code())
        } else {
            format!("rpc failed: {:?}: {}", s.code(), s.message())
        };
        // tonic's own limits (a message over the size a service decodes)
        // say so, rather than a bare I/O error.
        let errno = match s.code() {
            Code::OutOfRange | Code::ResourceExhausted => libc::EMSGSIZE,
            _ => libc::EIO,
        };
        DfsError {
            errno,
            retryable,
            message,
            missing_chunks: Vec::new(),
        }
    }
}

impl From<std::io::Error> for DfsError {
    fn from(e: std::io::Error) -> DfsError {
        use std::io::ErrorKind as K;
        let errno = e.raw_os_error().unwrap_or(match e.kind() {
            K::NotFound => libc::ENOENT,
            K::PermissionDenied => libc::EACCES,
            K::AlreadyExists => libc::EEXIST,
            K::InvalidInput => libc::EINVAL,
            K::TimedOut => libc::ETIMEDOUT,
            K::Interrupted => libc::EINTR,
            K::WouldBlock => libc::EAGAIN,
            K::StorageFull => libc::ENOSPC,
            _ => libc::EIO,
        });
        let retryable = matches!(errno, libc::EINTR | libc::EAGAIN | libc::ETIMEDOUT);
        DfsError {
            errno,
            retryable,
            message: e.to_string(),
            missing_chunks: Vec::new(),
        }
    }
}

impl From<DfsError> for std::io::Error {
    fn from(e: DfsError) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.errno)
    }
}

/// Undecodable stored bytes: corruption, permanent (another replica or
/// shard set may still be fine; that is the caller's retry, not this one).
impl From<CodecError> for DfsError {
    fn from(e: CodecError) -> DfsError {
        DfsError::io(e.to_string())
    }
}

/// Too few shards reachable is retryable (servers come back); anything
/// else means inconsistent metadata or corrupt shards.
impl From<ErasureError> for DfsError {
    fn from(e: ErasureError) -> DfsError {
        match e {
            ErasureError::TooFewShards { .. } => DfsError::unavailable(e.to_string()),
            _ => DfsError::io(e.to_string()),
        }
    }
}

/// A malformed fingerprint in a request.
impl From<FingerprintError> for DfsError {
    fn from(e: FingerprintError) -> DfsError {
        DfsError::invalid(e.to_string())
    }
}

/// `error: cause: cause…` on one line. Transport errors (tonic, hyper, h2)
/// hide the useful part (connection refused, reset, DNS failure) in their
/// sources. A cause whose text the line already ends with is not repeated.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_status() {
        let cases = [
            DfsError::new(libc::ENOENT, "no such file"),
            DfsError::new(libc::EEXIST, "taken"),
            DfsError::new(libc::ENOTEMPTY, "dir"),
            DfsError::invalid("bad"),
            DfsError::no_space("full"),
            DfsError::new(libc::EACCES, "nope"),
            DfsError::unavailable("server 3 down"),
            DfsError::retryable(libc::EAGAIN, "raced"),
            DfsError::new(libc::ENOENT, "missing chunks")
                .with_missing_chunks(vec![vec![1; 32], vec![2; 32]]),
            DfsError::retryable(libc::ENOSPC, "temporarily full"),
        ];
        for e in cases {
            let status = Status::from(e.clone());
            assert!(!status.details().is_empty());
            let back = DfsError::from(status);
            assert_eq!(back, e);
        }
    }

    #[test]
    fn status_codes() {
        assert_eq!(
            Status::from(DfsError::new(libc::ENOENT, "x")).code(),
            Code::NotFound
        );
        assert_eq!(
            Status::from(DfsError::new(libc::EEXIST, "x")).code(),
            Code::AlreadyExists
        );
        assert_eq!(
            Status::from(DfsError::invalid("x")).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Status::from(DfsError::no_space("x")).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            Status::from(DfsError::new(libc::EPERM, "x")).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            Status::from(DfsError::new(libc::EACCES, "x")).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            Status::from(DfsError::retryable(libc::ETIMEDOUT, "x")).code(),
            Code::Unavailable
        );
        assert_eq!(Status::from(DfsError::io("x")).code(), Code::Internal);
        let s = Status::from(DfsError::invalid("bad name"));
        assert_eq!(s.message(), "bad name");
    }

    #[test]
    fn plain_statuses() {
        let e = DfsError::from(Status::unavailable("connection refused"));
        assert_eq!((e.errno, e.retryable), (libc::EIO, true));
        assert!(e.message.contains("connection refused"));
        for s in [
            Status::deadline_exceeded("slow"),
            Status::cancelled("gone"),
            Status::from_error("transport broke".into()),
        ] {
            let e = DfsError::from(s);
            assert_eq!((e.errno, e.retryable), (libc::EIO, true), "{e}");
        }
        for s in [
            Status::unknown("handler said so"),
            Status::internal("boom"),
            Status::not_found("route"),
            Status::unimplemented("old server"),
        ] {
            let e = DfsError::from(s);
            assert_eq!((e.errno, e.retryable), (libc::EIO, false), "{e}");
        }
        // tonic's size limits: the request was too big, and will stay so.
        for s in [
            Status::resource_exhausted("message too large"),
            Status::out_of_range("decoded message length too large"),
        ] {
            let e = DfsError::from(s);
            assert_eq!((e.errno, e.retryable), (libc::EMSGSIZE, false), "{e}");
        }
        // Garbage details fall back to the code.
        let s = Status::with_details(Code::Unavailable, "x", Bytes::from_static(&[0xff; 3]));
        let e = DfsError::from(s);
        assert_eq!((e.errno, e.retryable), (libc::EIO, true));
    }

    #[test]
    fn display_and_io() {
        let e = DfsError::new(libc::ENOENT, "no such file");
        assert_eq!(
            e.to_string(),
            format!("no such file (errno {})", libc::ENOENT)
        );
        assert_eq!(e.clone().context("lookup").message, "lookup: no such file");
        let io: std::io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
        let back = DfsError::from(std::io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!((back.errno, back.retryable), (libc::EAGAIN, true));
        let kind = DfsError::from(std::io::Error::new(std::io::ErrorKind::NotFound, "x"));
        assert_eq!((kind.errno, kind.retryable), (libc::ENOENT, false));
    }

    #[test]
    fn from_component_errors() {
        let e = DfsError::from(ErasureError::TooFewShards { have: 1, need: 4 });
        assert!(e.retryable);
        let e = DfsError::from(CodecError::UnknownCodec(9));
        assert_eq!((e.errno, e.retryable), (libc::EIO, false));
        let e = DfsError::from(FingerprintError::BadLength(3));
        assert_eq!(e.errno, libc::EINVAL);
    }
}
