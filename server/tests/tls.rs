//! TLS on both APIs: a server started with a certificate and key serves gRPC and REST over TLS only, a client
//! that trusts the CA verifies writes end to end, and plaintext is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::sync::Arc;

use aerodb_engine::{Payload, VerifierKey};
use aerodb_server::client::VerifiedClient;
use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_apis_serve_tls_and_refuse_plaintext() {
    let tmp = TempDir::new("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    std::fs::write(tmp.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(tmp.path().join("key.pem"), &key_pem).unwrap();
    std::fs::set_permissions(
        tmp.path().join("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    let srv = start(
        tmp.path(),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );

    // gRPC over TLS, with the verifying client.
    let vkey = VerifierKey::parse(&srv.verifier_key).unwrap();
    let url = format!("https://127.0.0.1:{}", srv.grpc.port());
    let mut c = VerifiedClient::connect_tls(&url, Some(WRITER), vkey, Some(cert_pem.as_bytes()))
        .await
        .unwrap();
    let w = c
        .append("acme", Payload::Event(Bytes::from_static(b"over tls")))
        .await
        .unwrap();
    assert_eq!(w.commit_id, 1);

    // REST over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(
        format!("GET /v1/records/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {READER}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"commit_id\":1"), "{text}");

    // Plaintext to either port gets no service.
    let plain = std::thread::spawn({
        let addr = srv.http;
        move || aerodb_server::httpc::call(addr, "GET", "/v1/health", None, None)
    })
    .join()
    .unwrap();
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200),
        "plaintext REST answered: {plain:?}"
    );
    let mut plain_grpc =
        aerodb_proto::v1::ledger_client::LedgerClient::connect(format!("http://{}", srv.grpc))
            .await
            .map(Some)
            .unwrap_or(None);
    if let Some(c) = plain_grpc.as_mut() {
        assert!(c
            .health(tonic::Request::new(aerodb_proto::v1::HealthRequest {}))
            .await
            .is_err());
    }
    report_figure(
        "TLS",
        "gRPC (verifying client) and REST served over TLS; plaintext refused on both ports",
    );
}
