//! A transport type that lets gRPC clients talk to a real network channel or
//! straight to an in-process server through the same code path.
//!
//! Generated tonic clients are generic over their transport service. Fixing
//! that parameter to one boxed type means the code holding clients (mount,
//! servers talking to each other, tests) is not generic, and tests can plug
//! a `SomeServer::new(service)` in place of a `Channel` and exercise the
//! whole RPC stack — encoding, status details, errors — without sockets.

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

/// Any error a transport can produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A transport failure. A concrete type rather than `BoxError` itself: a
/// trait object in the error type makes rustc reject spawned futures that
/// call through the transport ("implementation of `From` is not general
/// enough", rust-lang/rust#102211).
#[derive(Debug)]
pub struct TransportError(pub BoxError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    // tonic finds hyper/h2 errors (and so the right status code) by
    // walking the source chain.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// A cloneable, type-erased gRPC transport: use as the `T` of a generated
/// `FooClient<T>` (`FooClient::new(transport)`). `Sync` so that clients can
/// be shared between threads behind an `Arc`.
pub type RpcTransport = BoxCloneSyncService<Request<Body>, Response<Body>, TransportError>;

/// Turns a server's registered address into a transport: a connection for
/// a cluster, the in-process service for an embedded volume. The mount and
/// the metadata server's maintenance workers each bring their own.
pub type Connector =
    std::sync::Arc<dyn Fn(&str) -> Result<RpcTransport, crate::error::DfsError> + Send + Sync>;

/// Boxes a transport: a `tonic::transport::Channel`, a generated
/// `FooServer<impl Foo>` (in-process), or any tower service speaking
/// HTTP requests with tonic bodies.
pub fn boxed_transport<S>(svc: S) -> RpcTransport
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        svc.map_request(with_trace_context)
            .map_err(|e| TransportError(e.into())),
    )
}

/// Every request carries the caller's trace context while traces are on:
/// the server's spans then join the caller's trace.
fn with_trace_context(mut request: Request<Body>) -> Request<Body> {
    crate::telemetry::traces::inject(request.headers_mut());
    request
}

/// The largest HTTP/2 frame a dfs server or the mount accepts (the
/// protocol's default is 16 KiB). A shard batch or a read reply then goes
/// as one DATA frame instead of a train of 16 KiB ones: every frame that
/// crosses the socket alone wakes the peer, and with nine chunk servers
/// and a client sharing two cores those wake-ups were the cost of a small
/// file's upload. 256 KiB keeps a big upload's frames short enough that a
/// small request on the same connection is not held up behind one.
pub const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// Requests one HTTP/2 connection may have in flight on a dfs server: a
/// mount keeps a few per FUSE thread and two shard reads per server; a
/// peer opening thousands is refused more streams, not served.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Bytes of request headers a dfs server accepts (gRPC metadata: ours
/// are a few hundred bytes).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[tokio::test]
    async fn channel_boxes() {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let transport = boxed_transport(channel);
        let _clone = transport.clone();
    }

    #[tokio::test]
    async fn in_process_service_is_called() {
        // Stands in for a generated `FooServer`: answers every request.
        let svc = tower::service_fn(|req: Request<Body>| async move {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = tonic::codegen::http::StatusCode::IM_A_TEAPOT;
            resp.headers_mut()
                .insert("x-path", req.uri().path().parse().unwrap());
            Ok::<_, Infallible>(resp)
        });
        let mut transport = boxed_transport(svc);
        let req = Request::builder()
            .uri("http://in-process/dfs.v1.Meta/Lookup")
            .body(Body::empty())
            .unwrap();
        let resp = transport.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 418);
        assert_eq!(resp.headers()["x-path"], "/dfs.v1.Meta/Lookup");
    }

    /// The point of the type: a generated client over an in-process
    /// generated server, with a `DfsError` crossing as status details.
    #[tokio::test]
    async fn generated_client_to_in_process_server() {
        use crate::DfsError;
        use dfs_proto::chunks_client::ChunksClient;
        use dfs_proto::chunks_server::{Chunks, ChunksServer};
        use dfs_proto::{
            CheckShardsReply, CheckShardsRequest, DeleteShardsReply, DeleteShardsRequest, Empty,
            GetShardReply, ListShardsReply, ListShardsRequest, PutShardsRequest, ServerUsage,
            ShardKey,
        };
        use tonic::{Request as Req, Response as Resp, Status};

        struct Fake;
        #[tonic::async_trait]
        impl Chunks for Fake {
            async fn put_shards(&self, _: Req<PutShardsRequest>) -> Result<Resp<Empty>, Status> {
                Err(DfsError::no_space("disk full").into())
            }
            async fn get_shard(&self, r: Req<ShardKey>) -> Result<Resp<GetShardReply>, Status> {
                Ok(Resp::new(GetShardReply {
                    data: r.into_inner().fingerprint.into(),
                }))
            }
            async fn get_shards(
                &self,
                _: Req<dfs_proto::GetShardsRequest>,
            ) -> Result<Resp<dfs_proto::GetShardsReply>, Status> {
                Err(Status::unimplemented("not in this fake"))
            }
            async fn delete_shards(
                &self,
                _: Req<DeleteShardsRequest>,
            ) -> Result<Resp<DeleteShardsReply>, Status> {
                Err(Status::unimplemented("not in this fake"))
            }
            async fn list_shards(
                &self,
                _: Req<ListShardsRequest>,
            ) -> Result<Resp<ListShardsReply>, Status> {
                Err(Status::unimplemented("not in this fake"))
            }
            async fn check_shards(
                &self,
                _: Req<CheckShardsRequest>,
            ) -> Result<Resp<CheckShardsReply>, Status> {
                Err(Status::unimplemented("not in this fake"))
            }
            async fn usage(&self, _: Req<Empty>) -> Result<Resp<ServerUsage>, Status> {
                Err(DfsError::unavailable("draining")
                    .with_missing_chunks(vec![vec![7]])
                    .into())
            }
        }

        let mut client = ChunksClient::new(boxed_transport(ChunksServer::new(Fake)));
        let reply = client
            .get_shard(ShardKey {
                token: Default::default(),
                fingerprint: vec![1, 2, 3],
                index: 0,
            })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().data, vec![1, 2, 3]);

        let err = DfsError::from(
            client
                .put_shards(PutShardsRequest::default())
                .await
                .unwrap_err(),
        );
        assert_eq!(err, DfsError::no_space("disk full"));
        let err = DfsError::from(client.usage(Empty {}).await.unwrap_err());
        assert_eq!((err.errno, err.retryable), (libc::EIO, true));
        assert_eq!(err.missing_chunks, vec![vec![7]]);
    }
}
