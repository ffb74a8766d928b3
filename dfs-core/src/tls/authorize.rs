//! Which role may call which RPC, checked on every request a TLS server
//! receives (a tower layer in front of the generated services, so no
//! handler can forget it). A method not in the table is refused to
//! everyone: a new RPC stays closed until someone writes down who may call
//! it. Caps finer than a role (a client's subtree or read-only) are for
//! the handlers; this layer hands them the identity in the request's
//! extensions ([`super::PeerInfo`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};

use super::identity::Role;
use super::PeerInfo;
use crate::error::DfsError;

use Role::{Admin, Client, Meta, Server};

/// The roles that may call `path` (`/dfs.v1.Service/Method`); empty: none.
pub fn allowed_roles(path: &str) -> &'static [Role] {
    let Some((service, method)) = path
        .strip_prefix("/dfs.v1.")
        .and_then(|p| p.split_once('/'))
    else {
        return &[];
    };
    match (service, method) {
        // The namespace and the data of files: mounts (and gateways).
        (
            "Meta",
            "Lookup" | "GetAttr" | "SetAttr" | "Create" | "Unlink" | "Rmdir" | "Rename"
            | "ForgetUnlinked" | "KeepUnlinked" | "Link" | "SetXattr" | "GetXattr" | "ListXattr"
            | "RemoveXattr" | "ReadDir" | "LookupChunks" | "CommitChunks" | "GetChunkMap"
            | "ReadColdChunk" | "GetDictionary" | "OpenLockSession" | "EndLockSession" | "SetLock"
            | "GetLock" | "Sync" | "ReserveInodes",
        ) => &[Client],
        // Read-only views a mount needs (df, where to place shards) and an
        // operator's `dfs status` too.
        ("Meta", "StatFs" | "GetVolumeConfig" | "ListServers") => &[Client, Admin],
        ("Meta", "Workers") => &[Admin],
        ("Meta", "Stats" | "Gc" | "Fsck" | "TierStatus") => &[Admin],
        // Chunk servers joining and reporting.
        ("Meta", "RegisterServer" | "Heartbeat" | "ReportBadShards") => &[Server],
        // Shard bytes: clients store and read them, dfs-meta rebuilds them.
        ("Chunks", "PutShards" | "GetShard" | "GetShards" | "Usage") => &[Client, Meta],
        // Only dfs-meta, which holds the index, deletes, lists or checks.
        ("Chunks", "DeleteShards" | "ListShards" | "CheckShards") => &[Meta],
        ("AccessKeys", "Add" | "List" | "Remove") => &[Admin],
        // dfs-meta also wants the `gateway` cap (`dfs_meta::access_keys`).
        ("AccessKeys", "Get") => &[Client],
        _ => &[],
    }
}

/// How long a request a client or chunk server may send runs on the
/// server, from its headers to its reply (a body trickled in, a handler
/// stuck on a lock or a disk): answered ETIMEDOUT after it, its work
/// dropped. A lock request waits at most 10 s of it; a 64 MiB put on a
/// slow disk takes seconds.
pub const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The deadline of a request to `path`: [`REQUEST_DEADLINE`], except for
/// the work only dfs-meta or an operator asks for (gc, fsck, stats,
/// listing and checking a server's shards), which walks whole volumes and
/// takes as long as it takes.
pub fn deadline(path: &str) -> Option<std::time::Duration> {
    let trusted_only = allowed_roles(path)
        .iter()
        .all(|role| matches!(role, Meta | Admin));
    (!trusted_only).then_some(REQUEST_DEADLINE)
}

/// Whether `path` changes the volume (refused to read-only certificates).
/// Locks are not changes: a read-only mount may still take them.
fn changes_the_volume(path: &str) -> bool {
    matches!(
        path.strip_prefix("/dfs.v1."),
        Some(
            "Meta/SetAttr"
                | "Meta/Create"
                | "Meta/Unlink"
                | "Meta/Rmdir"
                | "Meta/Rename"
                | "Meta/ForgetUnlinked"
                | "Meta/KeepUnlinked"
                | "Meta/Link"
                | "Meta/SetXattr"
                | "Meta/RemoveXattr"
                | "Meta/CommitChunks"
                | "Meta/ReserveInodes"
                | "Chunks/PutShards"
        )
    )
}

/// Why a request is refused, or `None` when it may go on. A request with
/// no identity came over plaintext (an explicit opt-out): nothing to check.
fn refusal(path: &str, info: Option<&PeerInfo>) -> Option<DfsError> {
    let identity = match info {
        Some(PeerInfo {
            identity: Some(identity),
            ..
        }) => identity,
        Some(PeerInfo { identity: None, .. }) => return None,
        // Not from a connection this module accepted: refuse, never guess.
        None => {
            return Some(DfsError::new(
                libc::EACCES,
                format!("{path}: the connection carries no peer identity"),
            ))
        }
    };
    let allowed = allowed_roles(path);
    if allowed.contains(&identity.role) {
        if identity.caps.read_only && changes_the_volume(path) {
            return Some(DfsError::new(
                libc::EROFS,
                format!("{path}: {} has a read-only certificate", identity.name),
            ));
        }
        return None;
    }
    let message = if allowed.is_empty() {
        format!("{path} may not be called over the network")
    } else {
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        format!(
            "{path} needs a {} certificate; {} has a {} one",
            names.join(" or "),
            identity.name,
            identity.role
        )
    };
    Some(DfsError::new(libc::EACCES, message))
}

/// The layer for `tonic::transport::Server::builder().layer(...)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthorizeLayer;

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<Request<Body>> for Authorize<S>
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
        let path = request.uri().path();
        match refusal(path, request.extensions().get::<PeerInfo>()) {
            None => match deadline(path) {
                None => Box::pin(self.inner.call(request)),
                Some(limit) => {
                    let path = path.to_owned();
                    Box::pin(within(limit, path, self.inner.call(request)))
                }
            },
            Some(error) => {
                tracing::warn!(
                    path,
                    remote = ?request.extensions().get::<PeerInfo>().and_then(|p| p.remote),
                    error = %error.message,
                    "request refused"
                );
                let response = tonic::Status::from(error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// `reply`, or ETIMEDOUT once `limit` has passed (dropping it).
async fn within<E>(
    limit: std::time::Duration,
    path: String,
    reply: impl std::future::Future<Output = Result<Response<Body>, E>>,
) -> Result<Response<Body>, E> {
    match tokio::time::timeout(limit, reply).await {
        Ok(reply) => reply,
        Err(_) => {
            tracing::warn!(path, "request ran past its deadline");
            let error = DfsError::new(
                libc::ETIMEDOUT,
                format!(
                    "{path} ran longer than the server's {} s deadline",
                    limit.as_secs()
                ),
            );
            Ok(tonic::Status::from(error).into_http())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::Identity;
    use std::sync::Arc;

    fn info(role: Role) -> PeerInfo {
        PeerInfo {
            remote: None,
            identity: Some(Arc::new(Identity::new(role, "t"))),
            key_id: None,
        }
    }

    #[test]
    fn client_and_server_requests_have_deadlines() {
        for path in [
            "/dfs.v1.Meta/SetLock",
            "/dfs.v1.Chunks/PutShards",
            "/dfs.v1.Meta/Heartbeat",
        ] {
            assert_eq!(deadline(path), Some(REQUEST_DEADLINE), "{path}");
        }
        for path in [
            "/dfs.v1.Meta/Fsck",
            "/dfs.v1.Meta/Gc",
            "/dfs.v1.Chunks/CheckShards",
        ] {
            assert_eq!(deadline(path), None, "{path}");
        }
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_timed_out() {
        let limit = std::time::Duration::from_millis(20);
        let never = std::future::pending::<Result<Response<Body>, std::convert::Infallible>>();
        let started = std::time::Instant::now();
        let reply = within(limit, "/dfs.v1.Meta/GetAttr".into(), never)
            .await
            .unwrap();
        assert!(started.elapsed() >= limit);
        let status = tonic::Status::from_header_map(reply.headers()).unwrap();
        assert_eq!(DfsError::from(status).errno, libc::ETIMEDOUT);
        // A reply in time passes as it is.
        let quick = async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) };
        let reply = within(limit, String::new(), quick).await.unwrap();
        assert!(tonic::Status::from_header_map(reply.headers()).is_none());
    }

    #[test]
    fn every_rpc_of_the_protocol_has_roles() {
        // Every method the services define is in the table (a new one
        // would be refused to all until added).
        let proto = include_str!("../../../proto/proto/dfs.proto");
        let mut service = "";
        let mut count = 0;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.trim_end_matches('{').trim();
            }
            if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap().trim();
                let path = format!("/dfs.v1.{service}/{method}");
                assert!(!allowed_roles(&path).is_empty(), "{path} has no roles");
                count += 1;
            }
        }
        assert!(count > 30, "parsed {count} rpcs");
    }

    #[test]
    fn roles_are_kept_apart() {
        let refused = |path: &str, role| refusal(path, Some(&info(role))).is_some();
        assert!(refused("/dfs.v1.Meta/Gc", Role::Client));
        assert!(refused("/dfs.v1.Meta/RegisterServer", Role::Client));
        assert!(refused("/dfs.v1.Meta/ReportBadShards", Role::Client));
        assert!(refused("/dfs.v1.Chunks/DeleteShards", Role::Client));
        assert!(refused("/dfs.v1.Meta/Lookup", Role::Server));
        assert!(refused("/dfs.v1.Meta/CommitChunks", Role::Admin));
        assert!(refused("/dfs.v1.Chunks/PutShards", Role::Server));
        assert!(refused("/dfs.v1.Meta/NoSuchMethod", Role::Admin));
        assert!(refused("/other.Service/Lookup", Role::Client));
        assert!(!refused("/dfs.v1.Meta/Lookup", Role::Client));
        assert!(!refused("/dfs.v1.Meta/Gc", Role::Admin));
        assert!(!refused("/dfs.v1.Chunks/DeleteShards", Role::Meta));
        assert!(!refused("/dfs.v1.Meta/Heartbeat", Role::Server));
        // A read-only client reads, locks, and changes nothing.
        let mut ro = Identity::new(Role::Client, "ro");
        ro.caps.read_only = true;
        let ro = PeerInfo {
            remote: None,
            identity: Some(Arc::new(ro)),
            key_id: None,
        };
        for path in [
            "/dfs.v1.Meta/Lookup",
            "/dfs.v1.Meta/GetChunkMap",
            "/dfs.v1.Meta/SetLock",
            "/dfs.v1.Chunks/GetShards",
        ] {
            assert!(refusal(path, Some(&ro)).is_none(), "{path}");
        }
        for path in [
            "/dfs.v1.Meta/Create",
            "/dfs.v1.Meta/CommitChunks",
            "/dfs.v1.Meta/SetXattr",
            "/dfs.v1.Chunks/PutShards",
        ] {
            assert_eq!(
                refusal(path, Some(&ro)).unwrap().errno,
                libc::EROFS,
                "{path}"
            );
        }
        let mut sub = Identity::new(Role::Client, "sub");
        sub.caps.subtree = Some("/a".into());
        let sub = PeerInfo {
            remote: None,
            identity: Some(Arc::new(sub)),
            key_id: None,
        };
        // A subtree is dfs-meta's to enforce (`dfs_meta::confine`): the
        // role table lets a confined client's calls through, and no more.
        assert!(refusal("/dfs.v1.Meta/Lookup", Some(&sub)).is_none());
        assert!(refusal("/dfs.v1.Meta/Gc", Some(&sub)).is_some());
        // Plaintext (no identity, by opt-out) is not checked; a request
        // from nowhere known is refused.
        let plain = PeerInfo {
            remote: None,
            identity: None,
            key_id: None,
        };
        assert!(refusal("/dfs.v1.Meta/Gc", Some(&plain)).is_none());
        assert_eq!(
            refusal("/dfs.v1.Meta/Gc", None).unwrap().errno,
            libc::EACCES
        );
    }
}
