//! How a daemon learns it should stop.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what `systemctl stop` sends).
/// The handlers are installed when this is called, not when the future is
/// first polled: a daemon calls it before it announces that it listens, so
/// a SIGTERM sent right after the announcement stops it cleanly instead of
/// killing it. Call it inside a tokio runtime. A signal that cannot be
/// listened for is logged and never completes, so the other still works.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(sig) => Some(sig),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            None
        }
    };
    let interrupt = listen(SignalKind::interrupt(), "Ctrl-C");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    async move {
        let wait = |sig: Option<tokio::signal::unix::Signal>| async move {
            match sig {
                Some(mut sig) => {
                    sig.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(interrupt) => tracing::info!("Ctrl-C received; shutting down"),
            () = wait(terminate) => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}
