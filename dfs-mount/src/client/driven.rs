//! Connections a blocked caller drives itself: a FUSE thread waiting in
//! `Handle::block_on` for a metadata RPC writes the request and reads the
//! answer on its own thread.
//!
//! Why: through the shared connection, whose task runs on the runtime's
//! workers, one metadata RPC from a FUSE thread woke a worker up to three
//! times to send (headers, then data), that worker woke the other, and
//! the answer woke the FUSE thread twice: `perf sched timehist` of ENOENT
//! lookups counted ~7 wake-ups and ~140 us of the ~310 us a lookup took on
//! the mount's side, on two cores where every wake-up of a parked thread
//! costs tens of microseconds. A caller that owns a connection for the
//! length of its call sends at once, and only the socket's readiness
//! passes through a worker (the I/O driver), once.
//!
//! A connection is owned by one call at a time and sits in its server's
//! pool between calls, where a task reads what the server sent every
//! [`IDLE_POLL`]: a server shutting down gracefully sends GOAWAY and a
//! ping and waits for the answer before it closes. What arrived since is
//! read again when a call takes the connection, which passes over one that
//! ended.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use dfs_core::rpc::BoxError;
use dfs_core::tls::Conn;
use tonic::codegen::http;

/// Who drives a transport's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driving {
    /// Always the connection's task, on the runtime's workers.
    Task,
    /// A caller that blocks until its call ends (not a task of the
    /// runtime: a FUSE thread) drives a connection of its own; tasks use
    /// the shared one. For small RPCs (metadata): a big transfer is better
    /// left to the connection's task, on whichever worker is free.
    BlockedCaller,
}

impl Driving {
    /// Whether the current caller drives a connection of its own.
    pub(super) fn by_caller(self) -> bool {
        // Inside `Handle::block_on` no task runs: the thread is blocked in
        // this call anyway.
        self == Driving::BlockedCaller && tokio::task::try_id().is_none()
    }
}

/// Idle connections kept per server, at most: one per FUSE thread that
/// calls at once (`-o threads`) is what a mount uses.
const MAX_IDLE: usize = 16;

/// How often idle connections read what their server sent.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// A connection and the handle that opens streams on it.
pub(super) struct Owned {
    sender: h2::client::SendRequest<Bytes>,
    connection: h2::client::Connection<Conn, Bytes>,
    /// The connection future completed (closed or failed): it must not be
    /// polled again, nor the connection used.
    ended: bool,
}

/// One server's idle owned connections.
#[derive(Default)]
pub(super) struct OwnedPool {
    idle: parking_lot::Mutex<Vec<Owned>>,
    /// A connection is being opened for the pool.
    opening: AtomicBool,
    /// The task that polls idle connections runs.
    watched: AtomicBool,
}

impl OwnedPool {
    /// An idle connection that is still open, if there is one.
    pub(super) fn take(&self) -> Option<Owned> {
        loop {
            let mut owned = self.idle.lock().pop()?;
            if owned.still_open() {
                return Some(owned);
            }
        }
    }

    /// Back after a call that left the connection usable.
    pub(super) fn put_back(&self, owned: Owned) {
        if owned.ended {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(owned);
        }
    }

    /// Whether this caller may open a connection for the pool: one at a
    /// time, so that callers arriving together open one, not one each.
    pub(super) fn claim_opening(&self) -> bool {
        !self.opening.swap(true, Ordering::AcqRel)
    }

    /// The opening claimed ended, with a connection or without.
    pub(super) fn opened(self: &Arc<Self>, owned: Option<Owned>) {
        if let Some(owned) = owned {
            self.put_back(owned);
            if !self.watched.swap(true, Ordering::AcqRel) {
                tokio::spawn(watch_idle(Arc::downgrade(self)));
            }
        }
        self.opening.store(false, Ordering::Release);
    }

    /// Drops every idle connection: a call on one of them failed, and
    /// the others to that server are as likely dead (nothing pings them),
    /// each worth a request timeout to find out.
    pub(super) fn clear(&self) {
        self.idle.lock().clear();
    }

    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

/// Polls the pool's idle connections every [`IDLE_POLL`] (answering
/// pings, dropping those that ended) until the pool is dropped.
async fn watch_idle(pool: std::sync::Weak<OwnedPool>) {
    loop {
        tokio::time::sleep(IDLE_POLL).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.idle.lock().retain_mut(Owned::still_open);
    }
}

impl Owned {
    pub(super) fn new(
        sender: h2::client::SendRequest<Bytes>,
        connection: h2::client::Connection<Conn, Bytes>,
    ) -> Self {
        Self {
            sender,
            connection,
            ended: false,
        }
    }

    /// Reads what the server sent while the connection sat idle; false if
    /// the connection ended or takes no new stream (GOAWAY).
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if Pin::new(&mut self.connection).poll(&mut cx).is_ready() {
            self.ended = true;
            return false;
        }
        matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// One call, start to end; the response comes whole (its body read
    /// while this caller drives the connection).
    pub(super) async fn exchange(
        &mut self,
        head: http::Request<()>,
        body: Bytes,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        std::future::poll_fn(|cx| self.sender.poll_ready(cx)).await?;
        let (response, mut stream) = self.sender.send_request(head, false)?;
        stream.send_data(body, true)?;
        let response = self.drive(response).await??;
        let (parts, mut recv) = response.into_parts();
        let mut frames = Vec::new();
        while let Some(data) = self
            .drive(std::future::poll_fn(|cx| recv.poll_data(cx)))
            .await?
        {
            let data = data?;
            // Back to the server's window at once, so that a reply bigger
            // than the window keeps coming.
            let _ = recv.flow_control().release_capacity(data.len());
            frames.push(Ok::<_, Infallible>(http_body::Frame::data(data)));
        }
        let trailers = self
            .drive(std::future::poll_fn(|cx| recv.poll_trailers(cx)))
            .await??;
        if let Some(trailers) = trailers {
            frames.push(Ok(http_body::Frame::trailers(trailers)));
        }
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        Ok(http::Response::from_parts(
            parts,
            tonic::body::Body::new(body),
        ))
    }

    /// Polls the connection (which sends what is queued and reads what
    /// arrived) together with `wanted` until `wanted` is ready; an error
    /// once the connection has ended without it.
    async fn drive<F: Future>(&mut self, wanted: F) -> Result<F::Output, BoxError> {
        let mut wanted = std::pin::pin!(wanted);
        std::future::poll_fn(|cx| {
            let mut gone = None;
            if !self.ended {
                match Pin::new(&mut self.connection).poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(result) => {
                        self.ended = true;
                        gone = Some(match result {
                            Ok(()) => BoxError::from("the server closed the connection"),
                            Err(e) => BoxError::from(e),
                        });
                    }
                }
            }
            // The connection's poll woke this task if it readied `wanted`.
            if let Poll::Ready(out) = wanted.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            match gone {
                Some(e) => Poll::Ready(Err(e)),
                None if self.ended => Poll::Ready(Err(BoxError::from("the connection had ended"))),
                None => Poll::Pending,
            }
        })
        .await
    }
}
