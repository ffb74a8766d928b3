//! Request counts and latencies of a gRPC server, by method and errno,
//! and the span each request runs in (child of the caller's, from the
//! request's trace context): a tower layer in front of the generated
//! services, like the role check.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tracing::Instrument;

use super::catalog::{RPC_DURATION, RPC_REQUESTS};
use super::errno_name;
use super::series::Series;
use crate::error::DfsError;

/// The layer for `tonic::transport::Server::builder().layer(...)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTelemetryLayer;

impl<S> tower::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;
    fn layer(&self, inner: S) -> RpcTelemetry<S> {
        RpcTelemetry { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RpcTelemetry<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<Request<Body>> for RpcTelemetry<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let metrics_on = super::enabled();
        if !metrics_on && !super::traces::tracing_on() {
            return Box::pin(self.inner.call(request));
        }
        let (service, method) = split_path(request.uri().path());
        let span = super::traces::server_span(request.headers(), service, method);
        let started = Instant::now();
        // The handler's own spans open inside this one.
        let reply = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let reply = reply.await;
                let errno = match &reply {
                    Ok(response) => reply_errno(response.headers()),
                    Err(_) => libc::EIO,
                };
                super::traces::record_outcome(&tracing::Span::current(), errno);
                if metrics_on {
                    static DURATIONS: Series<(&str, &str), metrics::Histogram> = Series::new();
                    static REQUESTS: Series<(&str, &str, &str), metrics::Counter> =
                        Series::new();
                    DURATIONS
                        .get((service, method), |(service, method)| {
                            metrics::histogram!(RPC_DURATION, "service" => service, "method" => method)
                        })
                        .record(started.elapsed().as_secs_f64());
                    REQUESTS
                        .get((service, method, errno_name(errno)), |(service, method, errno)| {
                            metrics::counter!(
                                RPC_REQUESTS,
                                "service" => service,
                                "method" => method,
                                "errno" => errno
                            )
                        })
                        .increment(1);
                }
                reply
            }
            .instrument(span),
        )
    }
}

/// `/dfs.v1.Meta/Lookup` → (`Meta`, `Lookup`); anything else → `other`,
/// so that no caller can make up label values.
fn split_path(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    if crate::tls::allowed_roles(path).is_empty() {
        return ("other", "other");
    }
    (
        intern(service.rsplit('.').next().unwrap_or(service)),
        intern(method),
    )
}

/// Label values must be `'static`: the method names of the generated
/// services, leaked once each (a few dozen strings per process).
fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let mut names = names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = names.get(name) {
        return found;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// The errno of an answer: 0 unless its headers carry a gRPC error (an
/// error answer is headers only), whose details name the errno.
fn reply_errno(headers: &tonic::codegen::http::HeaderMap) -> i32 {
    match tonic::Status::from_header_map(headers) {
        Some(status) if status.code() != tonic::Code::Ok => DfsError::from(status).errno,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_bounded_labels() {
        assert_eq!(split_path("/dfs.v1.Meta/Lookup"), ("Meta", "Lookup"));
        assert_eq!(
            split_path("/dfs.v1.Chunks/PutShards"),
            ("Chunks", "PutShards")
        );
        assert_eq!(split_path("/dfs.v1.Meta/MadeUp"), ("other", "other"));
        assert_eq!(split_path("/x"), ("other", "other"));
        // The same method twice is one leaked string.
        let a = split_path("/dfs.v1.Meta/Lookup").1.as_ptr();
        let b = split_path("/dfs.v1.Meta/Lookup").1.as_ptr();
        assert_eq!(a, b);
    }

    #[test]
    fn error_answers_name_their_errno() {
        let status = tonic::Status::from(DfsError::new(libc::ENOENT, "gone"));
        let response = status.into_http::<Body>();
        assert_eq!(reply_errno(response.headers()), libc::ENOENT);
        assert_eq!(reply_errno(&Default::default()), 0);
    }
}
