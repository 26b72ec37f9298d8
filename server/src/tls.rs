//! Optional TLS for both APIs (rustls with the `ring` provider): the certificate chain and private key come from
//! PEM files (`tls_cert`, `tls_key`). gRPC uses tonic's TLS; REST connections are handed to
//! [`TlsFiles::acceptor`] by [`crate::listener`], which runs each handshake in the connection's own task with a
//! 10-second limit (a slow or silent client cannot hold up others, and counts against the connection cap).

use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::{rustls, TlsAcceptor};

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
        crate::auth::refuse_shared_file(key)?;
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

    /// The acceptor for REST connections.
    #[must_use]
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
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
