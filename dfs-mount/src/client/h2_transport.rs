//! The mount's gRPC transport over TCP: one HTTP/2 connection per server,
//! driven with the `h2` crate directly.
//!
//! Why not hyper's client (which tonic's channel also wraps): hyper hands
//! each request to its dispatch task, which spawns one more task per request
//! to wait for the response and pass it back through a channel. Every RPC
//! then crossed four tasks (caller, dispatch, per-request, connection), and
//! on two cores shared with eleven processes each crossing is a wake-up of a
//! parked thread. With `h2` the caller's own future opens the stream, queues
//! the request whole (its DATA frame ends the stream) and waits for the
//! response; only the connection's task sits between it and the socket.
//!
//! The connection pings its server every 10 s: a server that stops
//! answering (a partition, a hung machine) fails the connection within 20 s,
//! and every request on it with `Unavailable`, so the retry logic can go
//! elsewhere, instead of each request waiting out the 30 s request timeout
//! in turn.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dfs_core::error::DfsError;
use dfs_core::rpc::{BoxError, RpcTransport};
use dfs_core::tls::{Role, Security};
use http_body_util::BodyExt;
use tonic::codegen::http;

use super::driven::{Driving, Owned, OwnedPool};
use super::{transport_status, RPC_TIMEOUT};
use dfs_core::error::error_chain;

/// Flow-control windows the mount grants servers: large enough that a read
/// reply never waits for a window update on loopback or a LAN. Windows are
/// permissions, not buffers: nothing is allocated for them.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// The transport's time limits.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// How long a TCP connect may take.
    connect: Duration,
    /// How long a request may wait for its response.
    request: Duration,
    /// How often a connection pings its server, and how long a ping may go
    /// unanswered before the connection counts as dead.
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

const TIMING: Timing = Timing {
    connect: Duration::from_secs(3),
    request: RPC_TIMEOUT,
    keepalive_interval: Duration::from_secs(10),
    keepalive_timeout: Duration::from_secs(10),
};

/// A transport to `address` (`host:port`), connecting on first use and again
/// after the connection breaks; over TLS (as `security` says) to a peer
/// whose certificate has role `peer`; `driving` says who drives the
/// connection a call goes over.
pub fn h2_transport(
    address: &str,
    security: &Security,
    peer: Role,
    driving: Driving,
) -> Result<RpcTransport, DfsError> {
    transport_with(address, TIMING, security.clone(), peer, driving)
}

fn transport_with(
    address: &str,
    timing: Timing,
    security: Security,
    peer: Role,
    driving: Driving,
) -> Result<RpcTransport, DfsError> {
    let authority: http::uri::Authority = address
        .parse()
        .map_err(|e| DfsError::new(libc::EINVAL, format!("bad server address {address}: {e}")))?;
    let mut conn = H2Connection::new(authority, timing, security, peer);
    conn.driving = driving;
    let conn = Arc::new(conn);
    let service = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        let conn = conn.clone();
        async move { conn.call(request).await }
    });
    Ok(dfs_core::rpc::boxed_transport(service))
}

struct H2Connection {
    authority: http::uri::Authority,
    timing: Timing,
    security: Security,
    peer: Role,
    /// The last connection's request handle; `None` before the first
    /// request. Kept after that connection ended or was retired (its
    /// `ended` is then set) until the next request replaces it.
    current: parking_lot::Mutex<Option<Live>>,
    /// Held while connecting, so that requests arriving together open one
    /// connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// Connect attempts ended so far, and why the last one failed (`None`
    /// when it succeeded): requests that queued behind a failed attempt
    /// share its error instead of each making one more.
    connects_finished: AtomicU64,
    last_connect_error: parking_lot::Mutex<Option<String>>,
    /// Who drives the connection of a call.
    driving: Driving,
    /// Connections callers drive themselves ([`Driving::BlockedCaller`]).
    owned: Arc<OwnedPool>,
}

#[derive(Clone)]
struct Live {
    sender: h2::client::SendRequest<Bytes>,
    /// Why the connection ended, set by its task before the connection is
    /// dropped (which fails the requests still on it).
    ended: Arc<std::sync::OnceLock<String>>,
}

impl Live {
    fn is_open(&self) -> bool {
        self.ended.get().is_none()
    }

    /// Takes the connection out of use: it can open no more streams (the
    /// server sent GOAWAY, or its stream ids ran out). Requests already on
    /// it finish there; the next one opens a new connection.
    fn retire(&self, why: &dyn std::error::Error) {
        let _ = self
            .ended
            .set(format!("no new requests: {}", error_chain(why)));
    }

    /// `error`, with why the connection ended if it has: a request on a
    /// connection that ended learns only that its stream broke.
    fn explain(&self, error: impl Into<BoxError>) -> BoxError {
        let error = error.into();
        match self.ended.get() {
            Some(why) => format!("{}: connection ended: {why}", error_chain(&*error)).into(),
            None => error,
        }
    }
}

impl H2Connection {
    fn new(
        authority: http::uri::Authority,
        timing: Timing,
        security: Security,
        peer: Role,
    ) -> Self {
        Self {
            authority,
            timing,
            security,
            peer,
            current: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            connects_finished: AtomicU64::new(0),
            last_connect_error: parking_lot::Mutex::new(None),
            driving: Driving::Task,
            owned: Arc::default(),
        }
    }

    async fn call(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        let (mut parts, body) = request.into_parts();
        // tonic gives the path; the origin is this server's.
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|e| transport_status(tonic::Status::internal(e.to_string())))?;
        // Every dfs call is unary and its request is encoded at once: sent
        // whole, its one DATA frame carries the end of the stream.
        let body = body
            .collect()
            .await
            // Encoding failed (a message over the size limit): its status as
            // it is.
            .map_err(transport_status)?
            .to_bytes();
        let head = http::Request::from_parts(parts, ());
        let limit = self.timing.request;
        let result = tokio::time::timeout(limit, self.exchange(head, body)).await;
        if !matches!(result, Ok(Ok(_))) && self.driving.by_caller() {
            self.owned.clear();
        }
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(transport_status(tonic::Status::unavailable(format!(
                "{}: {}",
                self.authority,
                error_chain(&*e)
            )))),
            Err(_) => Err(transport_status(tonic::Status::deadline_exceeded(format!(
                "{}: no answer within {limit:?}",
                self.authority
            )))),
        }
    }

    async fn exchange(
        &self,
        head: http::Request<()>,
        body: Bytes,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        if self.driving.by_caller() {
            if let Some(mut owned) = self.owned.take() {
                let result = owned.exchange(clone_head(&head), body).await;
                self.owned.put_back(owned);
                return result;
            }
            // This call goes through the shared connection; the next ones
            // find a connection of their own.
            self.open_owned();
        }
        // A connection that refuses new streams is retired and the request
        // tried once more on a new one: nothing of it was sent.
        let mut attempts = 0;
        let (live, response, mut stream) = loop {
            attempts += 1;
            let live = self.live().await?;
            let opened = match live.sender.clone().ready().await {
                Ok(mut sender) => sender.send_request(clone_head(&head), false),
                Err(e) => Err(e),
            };
            match opened {
                Ok((response, stream)) => break (live, response, stream),
                Err(e) => {
                    live.retire(&e);
                    if attempts == 2 {
                        return Err(live.explain(e));
                    }
                }
            }
        };
        // Queued whole: h2 sends it as the server's flow-control window
        // allows, from the connection's task.
        stream.send_data(body, true).map_err(|e| live.explain(e))?;
        let response = response.await.map_err(|e| live.explain(e))?;
        Ok(response.map(|recv| tonic::body::Body::new(RecvBody::new(recv))))
    }

    /// The live connection, opened if there is none.
    async fn live(&self) -> Result<Live, BoxError> {
        if let Some(live) = self.current.lock().as_ref().filter(|l| l.is_open()) {
            return Ok(live.clone());
        }
        let finished_before = self.connects_finished.load(Ordering::Acquire);
        let _connecting = self.connecting.lock().await;
        if let Some(live) = self.current.lock().as_ref().filter(|l| l.is_open()) {
            return Ok(live.clone());
        }
        // An attempt ended while this request waited its turn and left no
        // connection: its failure is this request's too. Otherwise every
        // request queued behind a server that drops connects (a partition,
        // a powered-off machine) would wait out one more connect timeout,
        // in turn, before the caller could go to another server.
        if self.connects_finished.load(Ordering::Acquire) != finished_before {
            if let Some(why) = self.last_connect_error.lock().clone() {
                return Err(format!("{why} (a connect attempt this request waited for)").into());
            }
        }
        let result = self.connect().await;
        *self.last_connect_error.lock() = result.as_ref().err().map(|e| error_chain(&**e));
        if let Ok(live) = &result {
            *self.current.lock() = Some(live.clone());
        }
        self.connects_finished.fetch_add(1, Ordering::Release);
        result
    }

    /// Opens a connection for the pool of owned ones, in the background,
    /// unless one is being opened. A failure is dropped: the calls meanwhile
    /// take the shared connection, which reports it.
    fn open_owned(&self) {
        if !self.owned.claim_opening() {
            return;
        }
        let (authority, timing, security, peer) = (
            self.authority.clone(),
            self.timing,
            self.security.clone(),
            self.peer,
        );
        let pool = Arc::clone(&self.owned);
        tokio::spawn(async move {
            let opened = handshake(&authority, timing, &security, peer).await;
            if let Err(e) = &opened {
                tracing::debug!(server = %authority, error = %error_chain(&**e), "no connection of a caller's own");
            }
            pool.opened(
                opened
                    .ok()
                    .map(|(sender, connection)| Owned::new(sender, connection)),
            );
        });
    }

    async fn connect(&self) -> Result<Live, BoxError> {
        let (sender, mut connection) =
            handshake(&self.authority, self.timing, &self.security, self.peer).await?;
        let ended = Arc::new(std::sync::OnceLock::new());
        let ping_pong = connection.ping_pong();
        let authority = self.authority.clone();
        let task_ended = ended.clone();
        let timing = self.timing;
        tokio::spawn(async move {
            let result = match ping_pong {
                Some(ping_pong) => {
                    tokio::select! {
                        result = &mut connection => result.map_err(BoxError::from),
                        dead = keepalive(ping_pong, timing) => Err(dead),
                    }
                }
                None => (&mut connection).await.map_err(BoxError::from),
            };
            let why = match result {
                Ok(()) => {
                    tracing::debug!(server = %authority, "connection closed");
                    "closed".to_string()
                }
                Err(e) => {
                    let why = error_chain(&*e);
                    tracing::info!(server = %authority, error = %why, "connection ended");
                    why
                }
            };
            let _ = task_ended.set(why);
            drop(connection);
        });
        Ok(Live { sender, ended })
    }
}

/// A new connection to `authority`: TCP (with TCP_NODELAY), unless
/// plaintext the TLS handshake, then HTTP/2's.
async fn handshake(
    authority: &http::uri::Authority,
    timing: Timing,
    security: &Security,
    peer: Role,
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<dfs_core::tls::Conn, Bytes>,
    ),
    BoxError,
> {
    let limit = timing.connect;
    let tcp = match tokio::time::timeout(limit, security.connect(authority.as_str(), peer)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {limit:?}"),
            )
            .into())
        }
    };
    Ok(h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(dfs_core::rpc::MAX_FRAME_BYTES)
        .handshake::<_, Bytes>(tcp)
        .await?)
}

/// A request's head, for a second try (`http::Request` is not `Clone`;
/// extensions are not sent on the wire anyway).
fn clone_head(head: &http::Request<()>) -> http::Request<()> {
    let mut copy = http::Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    copy
}

/// Pings the server every `keepalive_interval`; returns (ending the
/// connection, and with it every request on it) when a ping goes unanswered
/// for `keepalive_timeout` or cannot be sent.
async fn keepalive(mut ping_pong: h2::PingPong, timing: Timing) -> BoxError {
    let limit = timing.keepalive_timeout;
    loop {
        tokio::time::sleep(timing.keepalive_interval).await;
        match tokio::time::timeout(limit, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return e.into(),
            Err(_) => {
                return std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("server did not answer a ping within {limit:?}"),
                )
                .into()
            }
        }
    }
}

/// A response body read from an h2 stream: its DATA frames, then its
/// trailers (where gRPC puts the call's status).
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    trailers_done: bool,
}

impl RecvBody {
    fn new(recv: h2::RecvStream) -> Self {
        Self {
            recv,
            data_done: false,
            trailers_done: false,
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // Received bytes go back to the server's window at once:
                    // tonic takes them from here.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
            }
        }
        if this.trailers_done {
            return Poll::Ready(None);
        }
        let trailers = std::task::ready!(this.recv.poll_trailers(cx));
        this.trailers_done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_done
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dfs_proto::chunks_client::ChunksClient;
    use dfs_proto::chunks_server::{Chunks, ChunksServer};
    use dfs_proto::{
        CheckShardsReply, CheckShardsRequest, DeleteShardsReply, DeleteShardsRequest, Empty,
        GetShardReply, ListShardsReply, ListShardsRequest, PutShardsRequest, ServerUsage, Shard,
        ShardKey,
    };
    use std::net::SocketAddr;
    use tonic::{Request, Response, Status};

    /// Bytes a fake shard of `len` bytes holds.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// A chunk service that checks what it is sent and answers with
    /// replies of the size asked for.
    struct Fake;

    #[tonic::async_trait]
    impl Chunks for Fake {
        async fn put_shards(
            &self,
            r: Request<PutShardsRequest>,
        ) -> Result<Response<Empty>, Status> {
            for shard in r.into_inner().shards {
                if shard.data != pattern(shard.data.len()) {
                    return Err(Status::data_loss("shard arrived changed"));
                }
            }
            Ok(Response::new(Empty {}))
        }
        async fn get_shard(&self, r: Request<ShardKey>) -> Result<Response<GetShardReply>, Status> {
            let len = r.into_inner().index as usize;
            Ok(Response::new(GetShardReply {
                data: pattern(len).into(),
            }))
        }
        async fn get_shards(
            &self,
            _: Request<dfs_proto::GetShardsRequest>,
        ) -> Result<Response<dfs_proto::GetShardsReply>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn delete_shards(
            &self,
            _: Request<DeleteShardsRequest>,
        ) -> Result<Response<DeleteShardsReply>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn list_shards(
            &self,
            _: Request<ListShardsRequest>,
        ) -> Result<Response<ListShardsReply>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn check_shards(
            &self,
            _: Request<CheckShardsRequest>,
        ) -> Result<Response<CheckShardsReply>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn usage(&self, _: Request<Empty>) -> Result<Response<ServerUsage>, Status> {
            Err(DfsError::unavailable("draining")
                .with_missing_chunks(vec![vec![7]])
                .into())
        }
    }

    /// Serves `Fake` on `listener` until the returned sender is dropped or
    /// fired; the handle ends when the server has.
    fn serve(
        listener: tokio::net::TcpListener,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ChunksServer::new(Fake).max_decoding_message_size(64 << 20))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        (stop, task)
    }

    /// A request for a reply of `len` bytes from `Fake`.
    fn reply_of(len: u32) -> ShardKey {
        ShardKey {
            token: Default::default(),
            fingerprint: vec![1],
            index: len,
        }
    }

    fn client(address: SocketAddr, timing: Timing) -> ChunksClient<RpcTransport> {
        ChunksClient::new(
            transport_with(
                &address.to_string(),
                timing,
                Security::Plaintext,
                Role::Meta,
                Driving::Task,
            )
            .unwrap(),
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_cross_whole_with_their_errors_and_beyond_the_windows() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_stop, _server) = serve(listener);
        let mut client = client(address, TIMING);

        let small = client.get_shard(reply_of(100));
        assert_eq!(small.await.unwrap().into_inner().data, pattern(100));

        // 20 MiB each way: past the server's 1 MiB window for what the
        // mount sends and the mount's 8 MiB window for what it receives,
        // so both sides must hand window back while the call runs.
        let big = 20 << 20;
        let reply = client.get_shard(reply_of(big as u32));
        assert_eq!(reply.await.unwrap().into_inner().data, pattern(big));
        let upload = PutShardsRequest {
            shards: vec![Shard {
                data: pattern(big).into(),
                ..Default::default()
            }],
        };
        client.put_shards(upload).await.unwrap();

        // Several calls at once share the one connection.
        let calls = (0..16u32).map(|i| {
            let mut client = client.clone();
            async move { client.get_shard(reply_of(i * 1000)).await }
        });
        for (i, reply) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(reply.unwrap().into_inner().data, pattern(i * 1000));
        }

        // A server's error arrives as the status it sent, details and all.
        let err = DfsError::from(client.usage(Empty {}).await.unwrap_err());
        assert_eq!((err.errno, err.retryable), (libc::EIO, true));
        assert_eq!(err.missing_chunks, vec![vec![7]]);
    }

    #[test]
    fn a_blocked_caller_drives_a_connection_of_its_own() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (address, stop, server) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (stop, server) = serve(listener);
            (address, stop, server)
        });
        let conn = Arc::new(H2Connection {
            driving: Driving::BlockedCaller,
            ..H2Connection::new(
                address.to_string().parse().unwrap(),
                TIMING,
                Security::Plaintext,
                Role::Meta,
            )
        });
        let transport = {
            let conn = conn.clone();
            dfs_core::rpc::boxed_transport(tower::service_fn(
                move |request: http::Request<tonic::body::Body>| {
                    let conn = conn.clone();
                    async move { conn.call(request).await }
                },
            ))
        };
        let mut client = ChunksClient::new(transport)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let handle = runtime.handle().clone();
        let blocked = |client: &mut ChunksClient<RpcTransport>, len: usize| {
            let reply = handle.block_on(client.get_shard(reply_of(len as u32)));
            assert_eq!(reply.unwrap().into_inner().data, pattern(len));
        };

        // The first call goes over the shared connection and has one of
        // the caller's own opened; the next ones take it.
        blocked(&mut client, 100);
        for _ in 0..100 {
            if conn.owned.idle_count() == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(conn.owned.idle_count(), 1);
        // Past both windows each way while the caller drives.
        let big = 20 << 20;
        blocked(&mut client, big);
        let upload = PutShardsRequest {
            shards: vec![Shard {
                data: pattern(big).into(),
                ..Default::default()
            }],
        };
        handle.block_on(client.put_shards(upload)).unwrap();
        // An error answer, details and all.
        let err = DfsError::from(handle.block_on(client.usage(Empty {})).unwrap_err());
        assert_eq!(err.missing_chunks, vec![vec![7]]);
        assert_eq!(conn.owned.idle_count(), 1, "one connection served them all");

        // A task of the runtime keeps to the shared connection.
        let mut task_client = client.clone();
        runtime
            .block_on(
                runtime.spawn(async move { task_client.get_shard(reply_of(10)).await.map(|_| ()) }),
            )
            .unwrap()
            .unwrap();
        assert_eq!(conn.owned.idle_count(), 1);

        // The server goes and another takes its address: the idle
        // connection, closed meanwhile, is passed over.
        stop.send(()).unwrap();
        runtime.block_on(server).unwrap();
        let status = handle.block_on(client.get_shard(reply_of(10))).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        let (_stop, _server) = runtime
            .block_on(async { serve(tokio::net::TcpListener::bind(address).await.unwrap()) });
        for len in [10, 1000, 100_000] {
            blocked(&mut client, len);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_gone_fails_calls_and_its_successor_is_reached() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, server) = serve(listener);
        let mut client = client(address, TIMING);
        let key = reply_of(10);
        client.get_shard(key.clone()).await.unwrap();

        stop.send(()).unwrap();
        server.await.unwrap();
        let status = client.get_shard(key.clone()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");

        // A new server on the same address: the next call connects again.
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let (_stop, _server) = serve(listener);
        client.get_shard(key).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_answering_fails_calls_at_the_keepalive_not_the_timeout() {
        // Accepts connections and never says a word (a hung or
        // partitioned server).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let timing = Timing {
            request: Duration::from_secs(60),
            keepalive_interval: Duration::from_millis(200),
            keepalive_timeout: Duration::from_millis(300),
            ..TIMING
        };
        let mut client = client(address, timing);
        let started = std::time::Instant::now();
        let status = client.get_shard(reply_of(10)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(status.message().contains("ping"), "{status}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        silent.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_queued_behind_a_connect_that_fails_share_its_failure() {
        // A listener whose accept queue is full: the kernel drops further
        // connects (SYNs), as a partitioned or powered-off server does.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = socket.local_addr().unwrap();
        let _listener = socket.listen(0).unwrap();
        let mut fillers = Vec::new();
        let probe = Duration::from_millis(300);
        let black_holed = loop {
            match tokio::time::timeout(probe, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => panic!("connect to a full listener failed at once: {e}"),
                Err(_) => break true,
            }
            if fillers.len() > 16 {
                break false;
            }
        };
        assert!(black_holed, "the kernel accepted every connect");

        let timing = Timing {
            connect: Duration::from_millis(500),
            ..TIMING
        };
        let conn = H2Connection::new(
            address.to_string().parse().unwrap(),
            timing,
            Security::Plaintext,
            Role::Meta,
        );
        let waiting = (0..8).map(|_| conn.live());
        for result in futures::future::join_all(waiting).await {
            let err = result
                .err()
                .expect("a black-holed server cannot be connected to");
            assert!(err.to_string().contains("no connection within"), "{err}");
        }
        // One attempt for all eight, not eight in turn (4 s).
        assert_eq!(conn.connects_finished.load(Ordering::Acquire), 1);

        // The next request, arriving after that failure, tries again.
        assert!(conn.live().await.is_err());
        assert_eq!(conn.connects_finished.load(Ordering::Acquire), 2);
    }

    #[tokio::test]
    async fn nobody_listening_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let status = client(address, TIMING)
            .get_shard(reply_of(10))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(status.message().contains(&address.to_string()), "{status}");
    }
}
