//! Mutual TLS between brokers over real QUIC on 127.0.0.1: who the peer listener accepts, who a
//! dialling node accepts, and which node the listener learns it is talking to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_broker::tls::{self, ClusterCa, PEER_ALPN, PeerIdentityError};

/// Every network step of a test ends within this; a hang fails the test instead of the suite.
const STEP: Duration = Duration::from_secs(10);

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn cluster_ca(dir: &tempfile::TempDir) -> ClusterCa {
    tls::create_cluster_ca(dir.path()).expect("cluster CA")
}

fn node(ca: &ClusterCa, node_id: u32) -> Identity {
    tls::issue_node_certificate(ca, node_id, &["127.0.0.1".to_string()]).expect("node cert")
}

/// A certificate for `node-<id>.sluice.invalid` with both usages, signed by a CA of another
/// name than the cluster's: everything right but the issuer.
fn unrelated_node(node_id: u32) -> Identity {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Some other CA");
    let issuer = rcgen::Issuer::new(ca_params, rcgen::KeyPair::generate().unwrap());
    let mut params = rcgen::CertificateParams::new(vec![tls::node_dns_name(node_id)]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (vec![cert.der().clone()], key.into())
}

fn peer_server(ca: &ClusterCa, (chain, key): Identity) -> quinn::Endpoint {
    let config = tls::peer_server_config(&[ca.certificate().clone()], chain, key).expect("config");
    quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind")
}

fn client_endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind client");
    endpoint.set_default_client_config(config);
    endpoint
}

fn peer_client(ca: &ClusterCa, (chain, key): Identity) -> quinn::Endpoint {
    client_endpoint(
        tls::peer_client_config(&[ca.certificate().clone()], chain, key).expect("client config"),
    )
}

/// A client that trusts the cluster CA but presents no certificate of its own.
fn anonymous_client(ca: &ClusterCa, alpn: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.certificate().clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    client_endpoint(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// What each side saw of one connection attempt.
struct Attempt {
    client: Result<quinn::Connection, quinn::ConnectionError>,
    server: Result<quinn::Connection, quinn::ConnectionError>,
}

async fn attempt(client: &quinn::Endpoint, server: &quinn::Endpoint, server_node: u32) -> Attempt {
    let addr = server.local_addr().expect("addr");
    let connecting = client
        .connect(addr, &tls::node_dns_name(server_node))
        .expect("connect");
    let accept = async {
        let incoming = server.accept().await.expect("an incoming connection");
        incoming.await
    };
    let (client, server) = tokio::time::timeout(STEP, async { tokio::join!(connecting, accept) })
        .await
        .expect("the handshake ends in time");
    Attempt { client, server }
}

/// The alert for a certificate from another dev cluster's CA. Every dev cluster CA has the
/// subject "Sluice cluster CA", so webpki takes the other CA's certificate for the issuer and
/// the signature check fails (`BadSignature`, alert decrypt_error) rather than the issuer
/// lookup (unknown_ca).
const OTHER_CLUSTER: AlertDescription = AlertDescription::DecryptError;

/// The crypto error QUIC reports for a TLS alert.
fn alert_code(alert: AlertDescription) -> quinn::TransportErrorCode {
    quinn::TransportErrorCode::crypto(u8::from(alert))
}

/// Asserts the side that refused closed the handshake with `alert`, and the other side cannot
/// use the connection: in TLS 1.3 the client may finish its half before the server rejects
/// its certificate, so its `connect` can succeed and the close arrives just after.
async fn assert_refused(attempt: Attempt, alert: AlertDescription) {
    let refusal = |err: &quinn::ConnectionError| match err {
        quinn::ConnectionError::TransportError(e) => e.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        other => panic!("not a TLS refusal: {other:?}"),
    };
    let server_err = attempt
        .server
        .expect_err("the server must refuse the handshake");
    assert_eq!(refusal(&server_err), alert_code(alert), "{server_err}");
    let client_err = match attempt.client {
        Err(err) => err,
        Ok(conn) => tokio::time::timeout(STEP, conn.closed())
            .await
            .expect("the refused connection closes"),
    };
    assert_eq!(refusal(&client_err), alert_code(alert), "{client_err}");
}

#[tokio::test]
async fn nodes_of_one_cluster_exchange_bytes_and_learn_each_others_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster_ca(&dir);
    let server = peer_server(&ca, node(&ca, 1));
    let client = peer_client(&ca, node(&ca, 2));

    let attempt = attempt(&client, &server, 1).await;
    let client_conn = attempt.client.expect("the client connects");
    let server_conn = attempt.server.expect("the server accepts");
    assert_eq!(
        client_conn.handshake_data().and_then(|d| d
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()
            .and_then(|d| d.protocol)),
        Some(PEER_ALPN.to_vec())
    );
    assert_eq!(tls::peer_node_id(&server_conn, [1, 2, 3]).unwrap(), 2);
    assert_eq!(tls::peer_node_id(&client_conn, [1, 2, 3]).unwrap(), 1);
    assert!(matches!(
        tls::peer_node_id(&server_conn, [1, 3]),
        Err(PeerIdentityError::NotAMember)
    ));

    let echo = tokio::spawn(async move {
        let (mut send, mut recv) = server_conn.accept_bi().await.expect("accept stream");
        let request = recv.read_to_end(1024).await.expect("read request");
        send.write_all(&[b"ack:".as_slice(), &request].concat())
            .await
            .expect("write reply");
        send.finish().expect("finish");
        // Keep the connection until the client has read the reply.
        server_conn.closed().await;
    });
    let reply = tokio::time::timeout(STEP, async {
        let (mut send, mut recv) = client_conn.open_bi().await.expect("open stream");
        send.write_all(b"append-entries").await.expect("write");
        send.finish().expect("finish");
        recv.read_to_end(1024).await.expect("read reply")
    })
    .await
    .expect("the exchange ends in time");
    assert_eq!(reply, b"ack:append-entries");
    client_conn.close(0u32.into(), b"done");
    tokio::time::timeout(STEP, echo)
        .await
        .expect("the server sees the close")
        .unwrap();
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, other_ca) = (cluster_ca(&dir), cluster_ca(&other_dir));
    let server = peer_server(&ca, node(&ca, 1));
    // Trusts the cluster CA, so only the server's check of the client can fail.
    let (chain, key) = node(&other_ca, 2);
    let client =
        client_endpoint(tls::peer_client_config(&[ca.certificate().clone()], chain, key).unwrap());
    assert_refused(attempt(&client, &server, 1).await, OTHER_CLUSTER).await;
}

#[tokio::test]
async fn a_client_certificate_from_an_unrelated_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster_ca(&dir);
    let server = peer_server(&ca, node(&ca, 1));
    let (chain, key) = unrelated_node(2);
    let client =
        client_endpoint(tls::peer_client_config(&[ca.certificate().clone()], chain, key).unwrap());
    assert_refused(
        attempt(&client, &server, 1).await,
        AlertDescription::UnknownCA,
    )
    .await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster_ca(&dir);
    let server = peer_server(&ca, node(&ca, 1));
    let client = anonymous_client(&ca, PEER_ALPN);
    assert_refused(
        attempt(&client, &server, 1).await,
        AlertDescription::CertificateRequired,
    )
    .await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_by_the_client() {
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, other_ca) = (cluster_ca(&dir), cluster_ca(&other_dir));
    // Trusts the cluster CA, so only the client's check of the server can fail.
    let (chain, key) = node(&other_ca, 1);
    let server = quinn::Endpoint::server(
        tls::peer_server_config(&[ca.certificate().clone()], chain, key).unwrap(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .unwrap();
    let client = peer_client(&ca, node(&ca, 2));
    let attempt = attempt(&client, &server, 1).await;
    let client_err = attempt
        .client
        .expect_err("the client must refuse the server");
    assert!(
        matches!(&client_err, quinn::ConnectionError::TransportError(e)
            if e.code == alert_code(OTHER_CLUSTER)),
        "{client_err}"
    );
    assert!(attempt.server.is_err(), "the server sees the refusal");
}

#[tokio::test]
async fn a_server_that_is_not_the_node_dialled_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster_ca(&dir);
    let server = peer_server(&ca, node(&ca, 1));
    let client = peer_client(&ca, node(&ca, 2));
    // Node 2 means to reach node 3; node 1 answers at that address.
    let attempt = attempt(&client, &server, 3).await;
    let client_err = attempt.client.expect_err("the client must refuse node 1");
    assert!(
        matches!(&client_err, quinn::ConnectionError::TransportError(e)
            if e.code == alert_code(AlertDescription::BadCertificate)),
        "{client_err}"
    );
}

#[tokio::test]
async fn the_client_alpn_is_refused_by_the_peer_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster_ca(&dir);
    let server = peer_server(&ca, node(&ca, 1));
    let client = anonymous_client(&ca, sluice_proto::ALPN);
    assert_refused(
        attempt(&client, &server, 1).await,
        AlertDescription::NoApplicationProtocol,
    )
    .await;
}

#[test]
fn the_cluster_ca_is_kept_across_restarts_and_its_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let first = cluster_ca(&dir);
    let again = cluster_ca(&dir);
    assert_eq!(first.certificate(), again.certificate());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(tls::CLUSTER_CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A certificate issued after the reload verifies under the certificate first written.
    let (chain, _) = node(&again, 4);
    assert_client_cert_verifies(first.certificate(), &chain[0]);
}

#[test]
fn a_cluster_ca_certificate_without_its_key_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    cluster_ca(&dir);
    std::fs::remove_file(dir.path().join(tls::CLUSTER_CA_KEY_FILE)).unwrap();
    let err = tls::create_cluster_ca(dir.path()).unwrap_err();
    assert!(err.to_string().contains("has no key"), "{err}");
}

#[test]
fn a_cluster_ca_key_without_its_certificate_gets_an_equivalent_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster_ca(&dir);
    let (chain, _) = node(&ca, 5);
    std::fs::remove_file(dir.path().join(tls::CLUSTER_CA_CERT_FILE)).unwrap();
    let rewritten = cluster_ca(&dir);
    assert!(dir.path().join(tls::CLUSTER_CA_CERT_FILE).exists());
    assert_client_cert_verifies(rewritten.certificate(), &chain[0]);
}

/// Asserts `ca` is a trust anchor for `cert` as a peer's client certificate.
fn assert_client_cert_verifies(ca: &CertificateDer<'static>, cert: &CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(cert, &[], rustls::pki_types::UnixTime::now())
        .expect("the CA certificate is a trust anchor for the node certificate");
}

/// The client listener's dev CA shares its code with the cluster CA; its server certificate
/// must still verify under `DATA_DIR/tls/ca.pem`, before and after a restart.
#[test]
fn the_client_listener_dev_certificate_still_verifies_under_the_dev_ca() {
    use rustls::client::danger::ServerCertVerifier;
    let dir = tempfile::tempdir().unwrap();
    let config = sluice_broker::BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let (chain, _) = tls::server_identity(&config).unwrap();
    std::fs::remove_file(dir.path().join("tls").join("server.pem")).unwrap();
    let (reissued, _) = tls::server_identity(&config).unwrap();
    assert_ne!(chain, reissued);
    let ca = tls::load_certificates(&tls::dev_ca_path(dir.path())).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca[0].clone()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    for cert in [&chain[0], &reissued[0]] {
        verifier
            .verify_server_cert(
                cert,
                &[],
                &rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("the dev CA verifies the server certificate");
    }
}
