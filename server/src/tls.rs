//! Optional TLS for both APIs (rustls with the `ring` provider): the certificate chain and private key come from
//! PEM files (`tls_cert`, `tls_key`). gRPC uses tonic's TLS; REST is served through [`TlsListener`], which does
//! handshakes off the accept path (a slow or silent client cannot hold up others) with a 10-second limit.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{rustls, server::TlsStream, TlsAcceptor};

use crate::error::Error;

/// The PEM files, read and checked.
#[derive(Clone)]
pub struct TlsFiles {
    /// Certificate chain PEM.
    pub cert_pem: Vec<u8>,
    /// Private key PEM.
    pub key_pem: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsFiles({} certificate bytes)", self.cert_pem.len())
    }
}

impl TlsFiles {
    /// Reads and validates the certificate chain and key (the key must match the certificate).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, Error> {
        let cert_pem = std::fs::read(cert).map_err(|e| Error::file(cert, e))?;
        let key_pem = std::fs::read(key).map_err(|e| Error::file(key, e))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| Error::file(cert, e))?;
        if certs.is_empty() {
            return Err(Error::file(cert, "holds no certificate"));
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::file(key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| Error::file(key, format!("the key does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            config: Arc::new(config),
        })
    }

    /// tonic's server TLS settings. With `client_ca` (PEM), clients may present a certificate, verified against
    /// it (mutual TLS); the replication stream then requires one.
    #[must_use]
    pub fn grpc(&self, client_ca: Option<&[u8]>) -> tonic::transport::ServerTlsConfig {
        let c = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ));
        match client_ca {
            Some(ca) => c
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(true),
            None => c,
        }
    }
}

/// A TLS listener for axum: a task accepts TCP connections and runs each handshake in its own task.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stop accepting (and close the port) as soon as the server lets go of the listener.
        self.acceptor_task.abort();
    }
}

impl TlsListener {
    /// Starts accepting on `tcp`.
    pub fn new(tcp: TcpListener, files: &TlsFiles) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(files.config.clone());
        let (tx, ready) = mpsc::channel(128);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            acceptor_task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task only ends when this listener is dropped; never resolve after that.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
