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
            a = admit(&tcp, &slots, &limits, &counters, "REST") => Some(a),
            () = async { let _ = stop.wait_for(|s| *s).await; } => None,
        };
        let Some((stream, peer, slot)) = accepted else {
            break;
        };
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

/// The next connection that gets one of the `slots`: connections over the cap are closed at once (and
/// counted); accept errors (out of descriptors, a reset before the accept) are logged and retried shortly.
async fn admit(
    tcp: &TcpListener,
    slots: &Arc<Semaphore>,
    limits: &Limits,
    counters: &Counters,
    api: &'static str,
) -> (
    tokio::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("{api} accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, max = limits.max_connections, "{api} connection refused: too many open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        return (stream, peer, slot);
    }
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
        // Room above the API's own head limits (`rest::MAX_URI_BYTES`, `MAX_HEADERS`, `MAX_HEADER_BYTES`), so a
        // request just over them reaches the API and gets its JSON answer (414 / 431) rather than hyper's bare one.
        .max_buf_size(4 * (crate::rest::MAX_URI_BYTES + crate::rest::MAX_HEADER_BYTES))
        .max_headers(4 * crate::rest::MAX_HEADERS)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("REST connection ended: {e}");
    }
}

/// The gRPC side of the same budget: connections beyond `limits.max_connections` are closed at once, and one
/// that sends nothing within `limits.header_timeout` of being accepted (not even the HTTP/2 preface or a TLS
/// hello) is closed. (Idle HTTP/2 connections are probed with keep-alive pings by the server.)
pub fn grpc_incoming(
    tcp: TcpListener,
    limits: Limits,
    counters: Arc<Counters>,
) -> impl futures_util::Stream<Item = std::io::Result<Capped>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    futures_util::stream::unfold(
        (tcp, slots, limits, counters),
        |(tcp, slots, limits, counters)| async move {
            let (stream, _peer, slot) = admit(&tcp, &slots, &limits, &counters, "gRPC").await;
            let capped = Capped {
                inner: stream,
                _slot: slot,
                first_byte: Some(Box::pin(tokio::time::sleep(limits.header_timeout))),
            };
            Some((Ok(capped), (tcp, slots, limits, counters)))
        },
    )
}

/// A gRPC connection holding one of the capped slots until it is dropped; closed if its first byte does not
/// arrive in time.
#[derive(Debug)]
pub struct Capped {
    inner: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    first_byte: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.first_byte = None;
        } else if let Some(deadline) = self.first_byte.as_mut() {
            if r.is_pending() && std::future::Future::poll(deadline.as_mut(), cx).is_ready() {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client sent nothing in time",
                )));
            }
        }
        r
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
