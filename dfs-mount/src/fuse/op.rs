//! What every kernel request goes through: its span and, with metrics on,
//! its count and latency; and [`fail`], the one place a `DfsError` becomes
//! an errno.

use dfs_core::error::DfsError;
use dfs_core::telemetry::catalog::{FUSE_DURATION, FUSE_ERRORS, FUSE_OPERATIONS};
use dfs_core::telemetry::errno_name;
use dfs_core::telemetry::series::Series;
use fuser::{Errno, Request};

/// The span every kernel request runs in: which request, on which inode,
/// from which process.
pub(super) fn op_span(op: &'static str, req: &Request, ino: u64) -> OpSpan {
    OpSpan {
        span: tracing::debug_span!(
            "fuse",
            otel.name = op,
            op,
            req = req.unique().0,
            ino,
            pid = req.pid()
        ),
        op,
    }
}

/// A kernel request's span, and, while metrics are on, its count and
/// latency (recorded when the request's guard drops, after the reply).
pub(super) struct OpSpan {
    pub(super) span: tracing::Span,
    op: &'static str,
}

impl OpSpan {
    pub(super) fn entered(self) -> OpGuard {
        OpGuard {
            started: dfs_core::telemetry::enabled().then(std::time::Instant::now),
            op: self.op,
            _span: self.span.entered(),
        }
    }
}

pub(super) struct OpGuard {
    started: Option<std::time::Instant>,
    op: &'static str,
    _span: tracing::span::EnteredSpan,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            static SERIES: Series<&str, (metrics::Counter, metrics::Histogram)> = Series::new();
            let (count, latency) = SERIES.get(self.op, |op| {
                (
                    metrics::counter!(FUSE_OPERATIONS, "op" => op),
                    metrics::histogram!(FUSE_DURATION, "op" => op),
                )
            });
            count.increment(1);
            latency.record(started.elapsed().as_secs_f64());
        }
    }
}

/// The one place a `DfsError` becomes an errno: logs at a level that
/// matches how surprising the error is.
pub(super) fn fail(op: &'static str, ino: u64, e: &DfsError) -> Errno {
    match e.errno {
        errno if dfs_core::telemetry::routine_errno(errno) => {
            tracing::debug!(op, ino, errno, error = %e.message, "fuse request failed")
        }
        libc::EIO => tracing::error!(op, ino, error = %e.message, "fuse request failed with EIO"),
        _ => tracing::warn!(op, ino, errno = e.errno, error = %e.message, "fuse request failed"),
    }
    metrics::counter!(FUSE_ERRORS, "op" => op, "errno" => errno_name(e.errno)).increment(1);
    Errno::from_i32(e.errno)
}
