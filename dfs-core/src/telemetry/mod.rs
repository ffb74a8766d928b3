//! Prometheus metrics for every dfs process (issue 20).
//!
//! Each process that is asked to (`--metrics ADDR`, the mount's
//! `-o metrics=ADDR`) installs the `metrics` crate's global recorder, a
//! `metrics-exporter-prometheus` one, and answers `GET /metrics` on ADDR
//! in the Prometheus text format. Code anywhere records through the
//! `metrics` macros; without a recorder those cost one relaxed atomic load.
//! Every metric a process may export is listed, with its help text, in
//! [`catalog`]: the README's list is generated from it, and a test checks
//! that what a live process exports is in it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod catalog;
mod rpc;
pub mod series;
pub mod traces;

pub use rpc::RpcTelemetryLayer;
pub use traces::{LogFormat, TraceArgs};

/// Bucket bounds (seconds) of every latency histogram: 50 µs to 60 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0, 60.0,
];

/// Bucket bounds (bytes) of every size histogram: 512 B to 64 MiB.
pub const SIZE_BUCKETS: [f64; 9] = [
    512.0,
    4096.0,
    32768.0,
    131_072.0,
    524_288.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// `--metrics ADDR` for dfs-meta and dfs-server.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 0.0.0.0:9100;
    /// port 0 picks a free one). Off by default.
    #[arg(long = "metrics", value_name = "ADDR", help_heading = "Observability")]
    pub metrics: Option<SocketAddr>,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process serves metrics: recording is skipped otherwise.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
}

/// Installs the process's recorder and serves `/metrics` on `addr` (port
/// 0: any free one) from the current tokio runtime. Returns the bound
/// address. Call once per process; a second call fails.
pub async fn serve(addr: SocketAddr, process: &'static str) -> Result<SocketAddr, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &SIZE_BUCKETS))
        .map_err(|e| TelemetryError::Install(e.to_string()))?
        .add_global_label("process", process)
        // Gauges are refreshed every few seconds; one left alone for ten
        // minutes describes something gone (a worker of a server that
        // left), not a value to keep showing.
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(Duration::from_secs(600)),
        )
        .install_recorder()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    catalog::describe_all();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Listen { addr, source })?;
    tokio::spawn(upkeep(handle.clone()));
    tokio::spawn(accept(listener, handle));
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(%bound, "metrics served on /metrics");
    Ok(bound)
}

/// Histograms are drained into their buckets only on upkeep: without it
/// their memory grows between scrapes.
async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

async fn accept(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, most likely: try again shortly.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &handle)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let served = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "metrics connection ended");
            }
        });
    }
}

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn answer<B>(req: &hyper::Request<B>, handle: &PrometheusHandle) -> Reply {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            hyper::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (&hyper::Method::GET, "/") => (
            hyper::StatusCode::OK,
            "text/plain; charset=utf-8",
            "dfs: metrics on /metrics\n".to_string(),
        ),
        _ => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are on /metrics\n".to_string(),
        ),
    };
    let mut reply = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *reply.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        reply
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    reply
}

/// Errors a caller expects and handles (a lookup of a name that is not
/// there, a create that finds one): logged at debug, never an error
/// status on a trace.
pub fn routine_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOENT
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::ENAMETOOLONG
            | libc::ENODATA
    )
}

/// The symbolic name of an errno for a metric label (`ENOENT`), or its
/// number for one not listed.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EBADMSG => "EBADMSG",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EKEYEXPIRED => "EKEYEXPIRED",
        libc::EDEADLK => "EDEADLK",
        libc::EINTR => "EINTR",
        _ => "other",
    }
}
