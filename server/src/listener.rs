//! The REST listener: every connection an unauthenticated client can open is bounded. At most
//! `max_connections` are open at once (one more is closed at once and counted); the TLS handshake has 10 s; the
//! request head — and, once a response is sent, the next one on a kept-alive connection — must arrive within
//! `header_timeout`, so an idle or trickling connection is closed; the body within `body_timeout` (the gate in
//! [`crate::rest`]). Shutdown stops accepting, lets requests in flight finish (up to 30 s), then closes the rest.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tokio_rustls::TlsAcceptor;

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(30);

/// Limits of the REST listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at most (TLS handshakes included).
    pub max_connections: usize,
    /// Time to send a request head, and to start the next one on an idle kept-alive connection.
    pub header_timeout: Duration,
}

/// What the listener counted (for metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

/// Serves `router` on `tcp` (with TLS when `tls` is given) until `stop` turns true.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            r = tcp.accept() => Some(r),
            () = async { let _ = stop.wait_for(|s| *s).await; } => None,
        };
        let Some(accepted) = accepted else { break };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: go on shortly.
                tracing::warn!("REST accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, max = limits.max_connections, "REST connection refused: too many open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        counters.open.fetch_add(1, Ordering::Relaxed);
        let (router, limits, counters) = (router.clone(), limits.clone(), counters.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, router, &limits, watcher).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => serve_connection(s, router, &limits, watcher).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(tcp);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            "REST connections still open after {} s; closing them",
            DRAIN.as_secs()
        );
    }
    Ok(())
}

async fn serve_connection<S>(
    io: S,
    router: Router,
    limits: &Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("REST connection ended: {e}");
    }
}
