//! Mutual TLS between the processes of a cluster (issue 19). Every
//! connection of a cluster (mount → dfs-meta and chunk servers, chunk
//! server → dfs-meta, dfs-meta → chunk servers, `dfs` → dfs-meta) is TLS 1.3
//! with a certificate on both sides, both signed by the cluster's CA
//! ([`ca`]). The certificate names the peer's role (and a client's caps,
//! [`identity`]); a server reads it once per connection and checks it on
//! every request ([`authorize`]). Plaintext is an explicit opt-out
//! (`--plaintext`), logged loudly; the embedded `local:` mode opens no port
//! and uses none of this.
//!
//! A program's TLS directory (`/etc/dfs/tls` by default) holds `ca.crt` and
//! its own `ROLE.crt` / `ROLE.key` (as `dfs ca issue` writes them).

pub mod authorize;
pub mod ca;
pub mod identity;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub use authorize::{allowed_roles, AuthorizeLayer};
pub use identity::{Caps, Identity, IdentityError, Role};

/// Where programs look for their certificates unless told otherwise.
pub const DEFAULT_TLS_DIR: &str = "/etc/dfs/tls";
/// The environment variable that overrides [`DEFAULT_TLS_DIR`] (every
/// program and the mount read it; `--tls-dir` / `-o tls=` win over it).
pub const TLS_DIR_ENV: &str = "DFS_TLS_DIR";
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// Revoked certificates (`dfs ca revoke`), beside `ca.crt`: every program
/// that finds it refuses the certificates it lists, as peers and as
/// servers it dials. Read at start.
pub const CRL_FILE: &str = "crl.pem";

/// How long a TLS handshake may take before the connection is dropped (a
/// peer that connects and says nothing must not hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connect plus handshake may take on the calling side.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Issue(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl TlsError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        TlsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The TLS directory a program uses: its flag, else `$DFS_TLS_DIR`, else
/// [`DEFAULT_TLS_DIR`].
pub fn tls_dir(flag: Option<&Path>) -> PathBuf {
    match flag {
        Some(dir) => dir.to_path_buf(),
        None => std::env::var_os(TLS_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR)),
    }
}

/// The flags every cluster program takes (`dfs-meta`, `dfs-server`, `dfs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Directory with the cluster's ca.crt and this program's ROLE.crt and
    /// ROLE.key, as `dfs ca issue` writes them [default: $DFS_TLS_DIR, else
    /// /etc/dfs/tls]
    #[arg(long, value_name = "DIR", global = true)]
    pub tls_dir: Option<PathBuf>,
    /// No TLS: connections are neither encrypted nor authenticated, and
    /// anyone who reaches the port can do anything. Only for a trusted,
    /// isolated network.
    #[arg(long, global = true)]
    pub plaintext: bool,
}

impl TlsArgs {
    pub fn security(&self, role: Role, program: &str) -> Result<Security, TlsError> {
        Security::configure(self.tls_dir.as_deref(), role, self.plaintext, program)
    }
}

/// One process's TLS material, ready for both directions.
pub struct Tls {
    identity: Identity,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .finish()
    }
}

impl Tls {
    /// Loads `dir/ca.crt` and `dir/ROLE.crt` + `dir/ROLE.key`, and checks
    /// that the certificate is signed by that CA and names `role`.
    pub fn load(dir: &Path, role: Role) -> Result<Self, TlsError> {
        Self::load_files(
            &dir.join(CA_CERT),
            &dir.join(format!("{role}.crt")),
            &dir.join(format!("{role}.key")),
            role,
        )
    }

    pub fn load_files(ca: &Path, cert: &Path, key: &Path, role: Role) -> Result<Self, TlsError> {
        let missing = |path: &Path, e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                TlsError::BadFile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "missing: make it with `dfs ca issue --role {role} NAME --out {}` (or run with --plaintext on a trusted network)",
                        path.parent().map_or_else(String::new, |p| p.display().to_string())
                    ),
                }
            } else {
                TlsError::io(path, e)
            }
        };
        let read = |path: &Path| std::fs::read(path).map_err(|e| missing(path, e));
        let ca_pem = read(ca)?;
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let bad = |path: &Path, reason: String| TlsError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(ca, format!("not a PEM certificate: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, format!("not a PEM certificate: {e}")))?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(key, format!("not a PEM private key: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad(cert, "no certificate in the file".into()))?;
        let identity = Identity::from_certificate(leaf).map_err(|e| bad(cert, e.to_string()))?;
        if identity.role != role {
            return Err(bad(
                cert,
                format!(
                    "is {} certificate; this program needs {} one",
                    with_article(identity.role),
                    with_article(role)
                ),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in ca_certs {
            roots
                .add(c)
                .map_err(|e| bad(ca, format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad(ca, "no certificate in the file".into()));
        }
        let roots = Arc::new(roots);
        let crl_path = ca.with_file_name(CRL_FILE);
        let crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>> =
            match std::fs::read(&crl_path) {
                Ok(pem) => rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&crl_path, format!("not a PEM revocation list: {e}")))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(TlsError::io(&crl_path, e)),
            };
        // ring, not aws-lc-rs: no cmake/NASM build on every machine. rustls
        // marks it deprecated only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .with_crls(crls.clone())
        .build()
        .map_err(|e| bad(&crl_path, format!("cannot verify clients with it: {e}")))?;
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .with_crls(crls)
        .build()
        .map_err(|e| bad(&crl_path, format!("cannot verify servers with it: {e}")))?;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|e| bad(key, format!("does not go with {}: {e}", cert.display())))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, private)
            .map_err(|e| bad(key, format!("does not go with {}: {e}", cert.display())))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            identity,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

fn with_article(role: Role) -> String {
    match role {
        Role::Admin => "an admin".to_string(),
        other => format!("a {other}"),
    }
}

/// What a program does about transport security.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS with the cluster CA.
    Tls(Arc<Tls>),
    /// No encryption and no authentication: anyone who reaches the port
    /// can do anything. Only when asked for.
    Plaintext,
}

impl Security {
    /// What a program started with `--tls-dir DIR` (or none) and
    /// `--plaintext` uses: plaintext only when asked, with a warning in
    /// the log; otherwise the certificates must be there.
    pub fn configure(
        dir: Option<&Path>,
        role: Role,
        plaintext: bool,
        program: &str,
    ) -> Result<Security, TlsError> {
        if plaintext {
            tracing::warn!(
                program,
                "PLAINTEXT: --plaintext was given, so connections are neither encrypted nor authenticated; anyone who can reach the ports can read and change every file"
            );
            return Ok(Security::Plaintext);
        }
        let dir = tls_dir(dir);
        let tls = Tls::load(&dir, role)?;
        tracing::info!(program, identity = %tls.identity(), dir = %dir.display(), "mutual TLS on");
        Ok(Security::Tls(Arc::new(tls)))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }

    /// `"tls"` or `"plaintext"`, for startup lines.
    pub fn describe(&self) -> &'static str {
        match self {
            Security::Tls(_) => "tls",
            Security::Plaintext => "plaintext",
        }
    }

    /// Connects to `address` (`host:port`), expecting a peer of role
    /// `peer` (checked by its certificate's name, whatever address was
    /// dialled), within [`CONNECT_TIMEOUT`].
    pub async fn connect(&self, address: &str, peer: Role) -> io::Result<Conn> {
        let connect = async {
            let tcp = TcpStream::connect(address).await?;
            // A small reply must not wait for a delayed ACK.
            tcp.set_nodelay(true)?;
            match self {
                Security::Plaintext => Ok(Conn::Plain(tcp)),
                Security::Tls(tls) => {
                    let name = ServerName::try_from(peer.dns_name())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client))
                        .connect(name, tcp)
                        .await
                        .map_err(|e| {
                            io::Error::new(
                                e.kind(),
                                format!("TLS handshake with {address} failed: {e}"),
                            )
                        })?;
                    Ok(Conn::Tls(Box::new(stream.into())))
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection to {address} within {CONNECT_TIMEOUT:?}"),
            )),
        }
    }

    /// A connector for tonic's `Endpoint::connect_with_connector`.
    pub fn connector(&self, peer: Role) -> Connector {
        Connector {
            security: self.clone(),
            peer,
        }
    }

    /// The connections accepted on `listener`, handshaken (in their own
    /// tasks, so one slow peer delays no other) and labelled with the
    /// peer's identity, for tonic's `serve_with_incoming`.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<ServerConn>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let security = self.clone();
        // Handshakes in progress at once: a flood of connections that never
        // finish theirs waits at accept (the kernel's backlog) instead of
        // growing tasks and memory here; each holds a permit 10 s at most.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                match &security {
                    Security::Plaintext => {
                        let conn = ServerConn {
                            conn: Conn::Plain(tcp),
                            info: PeerInfo {
                                remote: Some(remote),
                                identity: None,
                                key_id: None,
                            },
                        };
                        if tx.send(Ok(conn)).await.is_err() {
                            return;
                        }
                    }
                    Security::Tls(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server));
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let accepted = accept_tls(acceptor, tcp, remote).await;
                            drop(permit);
                            match accepted {
                                Ok(conn) => {
                                    let _ = tx.send(Ok(conn)).await;
                                }
                                Err(e) => {
                                    tracing::info!(%remote, error = %e, "connection refused");
                                }
                            }
                        });
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// TLS handshakes one listener runs at once.
const MAX_HANDSHAKES: usize = 256;

async fn accept_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> io::Result<ServerConn> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(result) => {
            result.map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?
        }
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no TLS handshake within 10 s",
            ))
        }
    };
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate"))?;
    let refused = |e: IdentityError| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string());
    let identity = Identity::from_certificate(leaf).map_err(refused)?;
    let key_id = identity::public_key_id(leaf).map_err(refused)?;
    tracing::debug!(%remote, %identity, "peer connected");
    Ok(ServerConn {
        conn: Conn::Tls(Box::new(stream.into())),
        info: PeerInfo {
            remote: Some(remote),
            identity: Some(Arc::new(identity)),
            key_id: Some(key_id),
        },
    })
}

/// Who is on the other end of a served connection: its address and, over
/// TLS, the identity its certificate names (`None`: plaintext, where
/// nobody is authenticated). tonic puts it in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub identity: Option<Arc<Identity>>,
    /// [`identity::public_key_id`] of the peer's certificate (TLS only).
    pub key_id: Option<[u8; 32]>,
}

impl PeerInfo {
    /// The caller of `request`, when it came over a connection this module
    /// accepted (`None`: in-process).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }

    /// The caller's owner id: the first [`OWNER_ID_LEN`] bytes of its key
    /// id, telling identities apart (the certificate proved which one).
    /// What dfs-meta keeps in `ChunkRecord.owner` and chunk servers beside
    /// a client's uploads. Empty without a certificate.
    pub fn owner_id<T>(request: &tonic::Request<T>) -> Vec<u8> {
        Self::of(request)
            .and_then(|peer| peer.key_id)
            .map(|id| id[..OWNER_ID_LEN].to_vec())
            .unwrap_or_default()
    }
}

/// Bytes of [`PeerInfo::owner_id`].
pub const OWNER_ID_LEN: usize = 16;

/// A connection, encrypted or not.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// An accepted connection with who is on the other end.
pub struct ServerConn {
    conn: Conn,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for ServerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }
}

/// tonic's client connector: dials the endpoint's `host:port` with
/// [`Security::connect`].
#[derive(Clone)]
pub struct Connector {
    security: Security,
    peer: Role,
}

impl tower::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Conn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let security = self.security.clone();
        let peer = self.peer;
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no host:port in {uri}"),
                )
            })?;
            let address = match authority.port_u16() {
                Some(_) => authority.as_str().to_string(),
                None => format!("{}:80", authority.as_str()),
            };
            let conn = security.connect(&address, peer).await?;
            Ok(hyper_util::rt::TokioIo::new(conn))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
