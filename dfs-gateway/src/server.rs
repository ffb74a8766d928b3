//! The HTTP side: connections (TLS when configured), limits on headers,
//! time to send them and requests in flight, `/health` for a load
//! balancer, and everything else handed to s3s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::service::S3Service;
use s3s::Body;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::volume::{Volume, ROOT_INO};

/// Largest request head (request line and headers) read before answering
/// 431: S3 requests need a few KiB; this also bounds a client that sends
/// headers forever.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 100;
/// How long `/health` waits for the metadata service.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ServerConfig {
    /// Requests served at once over all connections; more are answered
    /// 503 SlowDown at once rather than queued without bound.
    pub max_in_flight: usize,
    /// Time a client has to send a request's head, and to start the next
    /// one on a kept-alive connection.
    pub header_timeout: Duration,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A TLS acceptor from PEM files (certificate chain, private key).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    // ring, as the rest of dfs (no cmake/NASM build); see dfs_core::tls.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| format!("{} does not go with {}", key.display(), cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_string()));
    *response.status_mut() = status;
    response
}

fn too_busy() -> Response<Body> {
    let mut response = Response::new(Body::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
         <Message>the gateway has too many requests in flight; retry</Message></Error>"
            .to_string(),
    ));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    response
}

/// The web page (`/ui`): static, so served without a signature; every
/// request it makes is signed in the browser.
fn web_page() -> Response<Body> {
    let mut response = Response::new(Body::from(WEB_PAGE.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src 'self' blob:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    response
}

const WEB_PAGE: &str = include_str!("web/index.html");

/// `/health`: 200 when the metadata service answers, 503 when not, so a
/// load balancer takes a gateway that lost its cluster out of rotation.
async fn health(volume: &Volume) -> Response<Body> {
    match tokio::time::timeout(HEALTH_TIMEOUT, volume.dfs().getattr(ROOT_INO)).await {
        Ok(Ok(_)) => plain(StatusCode::OK, "ok\n"),
        _ => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the metadata service does not answer\n",
        ),
    }
}

async fn handle(
    request: Request<Incoming>,
    s3: S3Service,
    volume: Volume,
    in_flight: Arc<Semaphore>,
) -> Result<Response<Body>, Infallible> {
    // hyper bounds what it buffers per read, not always a whole head that
    // arrived at once: count it here too.
    let head_bytes: usize = request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_bytes > MAX_HEAD_BYTES {
        return Ok(plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        ));
    }
    if request.method() == hyper::Method::GET {
        match request.uri().path() {
            "/health" => return Ok(health(&volume).await),
            // Never a bucket: bucket names have at least three characters.
            "/ui" | "/ui/" => return Ok(web_page()),
            // Browsers ask for it with every page; there is none.
            "/favicon.ico" => return Ok(plain(StatusCode::NO_CONTENT, "")),
            _ => {}
        }
    }
    let Ok(_permit) = in_flight.try_acquire() else {
        return Ok(too_busy());
    };
    match s3.call(request.map(Body::from)).await {
        Ok(mut response) => {
            // An object is data, never a page of this origin: a browser
            // opening an HTML object (a presigned link) must not run it
            // beside /ui, where keys are typed.
            let headers = response.headers_mut();
            headers.insert(
                hyper::header::X_CONTENT_TYPE_OPTIONS,
                hyper::header::HeaderValue::from_static("nosniff"),
            );
            headers.insert(
                hyper::header::CONTENT_SECURITY_POLICY,
                hyper::header::HeaderValue::from_static("sandbox"),
            );
            Ok(response)
        }
        Err(e) => {
            tracing::warn!(error = ?e, "request failed before an S3 answer");
            Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"))
        }
    }
}

/// Serves until `shutdown` resolves; connections still open then get a
/// moment to finish their request.
pub async fn serve(
    listener: TcpListener,
    s3: S3Service,
    volume: Volume,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (socket, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = socket.set_nodelay(true);
        let (s3, volume, in_flight) = (s3.clone(), volume.clone(), in_flight.clone());
        let service = hyper::service::service_fn(move |request| {
            handle(request, s3.clone(), volume.clone(), in_flight.clone())
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        match &config.tls {
            None => {
                let connection = http.serve_connection(TokioIo::new(socket), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let timeout = config.header_timeout;
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(socket)).await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
    Ok(())
}
