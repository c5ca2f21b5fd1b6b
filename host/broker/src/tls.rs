//! TLS for the QUIC endpoints.
//!
//! Two listeners, two trust models. The client listener (ALPN `sluice/1`) presents a server
//! certificate from the config, or one signed by a dev CA, and does not ask clients for
//! certificates. The peer listener (ALPN [`PEER_ALPN`]) is mutual TLS under a cluster CA: each
//! broker presents a node certificate signed by that CA and accepts only a peer whose
//! certificate the same CA signed; the node id is read back from the certificate's
//! `node-<id>.sluice.invalid` name ([`peer_node_id`]). docs/cluster.md describes both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::BrokerError;
use crate::config::{BrokerConfig, ClientAuth};

/// The common name of a broker's dev server certificate: under mTLS, the principal of a broker
/// that is a client of another (a super-user when authorisation is on and the dev certificates
/// are in use).
pub const DEV_BROKER_NAME: &str = "Sluice broker";

/// Paths of the dev TLS material inside a data directory.
pub fn dev_ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca.pem")
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Tls(format!("{what}: {e}"))
}

/// Loads the server's certificate chain and key: from the config when given, otherwise the dev
/// CA's certificate under `DATA_DIR/tls/`, created on first start.
pub fn server_identity(
    config: &BrokerConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BrokerError> {
    let (cert, key) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_dev_certificates(config)?,
    };
    Ok((load_certificates(&cert)?, load_private_key(&key)?))
}

/// Reads the PEM certificates in `path`, in file order; an error when there are none.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(path)
            .map_err(|e| tls_err(&format!("cannot open {}", path.display()), e))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| tls_err(&format!("cannot parse {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the first PEM private key (PKCS#8, PKCS#1 or SEC1) in `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, BrokerError> {
    rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(path)
            .map_err(|e| tls_err(&format!("cannot open {}", path.display()), e))?,
    ))
    .map_err(|e| tls_err(&format!("cannot parse {}", path.display()), e))?
    .ok_or_else(|| BrokerError::Tls(format!("{} holds no private key", path.display())))
}

/// A CA whose key is on this machine: the dev CA of the client listener, or the dev cluster CA.
struct LocalCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: CertificateDer<'static>,
}

/// Loads the CA in `pem`/`key`, or creates both when neither exists.
///
/// The issuer is rebuilt from fixed parameters and the stored key, not parsed from `pem`: the
/// subject and key identifier it writes into the certificates it signs are the ones in the
/// stored CA certificate because both come from the same `common_name` and key. A key without
/// its certificate gets the certificate back the same way (it verifies what the old one did);
/// a certificate without its key is refused, as a new key would leave every holder of the old
/// certificate unable to verify what it signs.
fn load_or_create_ca(pem: &Path, key: &Path, common_name: &str) -> Result<LocalCa, BrokerError> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("CA params", e))?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let (keypair, cert) = match (key.exists(), pem.exists()) {
        (true, true) => {
            let keypair = read_key_pair(key)?;
            let cert = load_certificates(pem)?.swap_remove(0);
            (keypair, cert)
        }
        (true, false) => {
            let keypair = read_key_pair(key)?;
            let cert = params
                .self_signed(&keypair)
                .map_err(|e| tls_err("CA certificate", e))?;
            std::fs::write(pem, cert.pem()).map_err(|e| tls_err("cannot write the CA", e))?;
            (keypair, cert.der().clone())
        }
        (false, true) => {
            return Err(BrokerError::Tls(format!(
                "{} has no key at {}: restore the key, or remove the certificate to create a new CA",
                pem.display(),
                key.display()
            )));
        }
        (false, false) => {
            if let Some(dir) = pem.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| tls_err(&format!("cannot create {}", dir.display()), e))?;
            }
            let keypair = rcgen::KeyPair::generate().map_err(|e| tls_err("CA key", e))?;
            let cert = params
                .self_signed(&keypair)
                .map_err(|e| tls_err("CA certificate", e))?;
            write_private(key, keypair.serialize_pem().as_bytes())?;
            std::fs::write(pem, cert.pem()).map_err(|e| tls_err("cannot write the CA", e))?;
            tracing::info!(ca = %pem.display(), common_name, "created a dev CA");
            (keypair, cert.der().clone())
        }
    };
    Ok(LocalCa {
        issuer: rcgen::Issuer::new(params, keypair),
        cert,
    })
}

fn read_key_pair(path: &Path) -> Result<rcgen::KeyPair, BrokerError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| tls_err(&format!("cannot read {}", path.display()), e))?;
    rcgen::KeyPair::from_pem(&pem)
        .map_err(|e| tls_err(&format!("cannot parse {}", path.display()), e))
}

/// Signs a fresh key for `names` (DNS names or IP addresses) with `ca`.
fn issue_certificate(
    ca: &LocalCa,
    common_name: &str,
    names: Vec<String>,
    usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
) -> Result<(rcgen::Certificate, rcgen::KeyPair), BrokerError> {
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| tls_err(&format!("{common_name} params"), e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = usages;
    let keypair =
        rcgen::KeyPair::generate().map_err(|e| tls_err(&format!("{common_name} key"), e))?;
    let cert = params
        .signed_by(&keypair, &ca.issuer)
        .map_err(|e| tls_err(&format!("{common_name} certificate"), e))?;
    Ok((cert, keypair))
}

/// Creates `ca.pem`, `ca.key`, `server.pem` and `server.key` under `DATA_DIR/tls/` when they
/// are missing. The server certificate names localhost, 127.0.0.1, ::1, the listen and
/// advertised hosts, and `tls.extra_names`.
fn ensure_dev_certificates(config: &BrokerConfig) -> Result<(PathBuf, PathBuf), BrokerError> {
    let dir = config.data_dir.join("tls");
    let (ca_pem, ca_key, server_pem, server_key) = (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    if server_pem.exists() && server_key.exists() {
        tracing::info!(ca = %ca_pem.display(), "using the dev TLS certificate; clients verify it with this CA");
        return Ok((server_pem, server_key));
    }
    // An existing CA is kept so clients that trust it keep working. The nodes of a dev
    // cluster share one client CA (beside the cluster CA, in `cluster.ca_dir`), so that a
    // client trusting it reaches every node; this node keeps a copy as its `ca.pem`.
    let ca = match config.cluster.as_ref().and_then(|c| c.ca_dir.as_deref()) {
        Some(shared) => {
            let (pem, key) = (
                shared.join(CLIENT_CA_CERT_FILE),
                shared.join(CLIENT_CA_KEY_FILE),
            );
            let ca = crate::peers::with_dev_ca_lock(shared, || {
                load_or_create_ca(&pem, &key, "Sluice dev CA")
            })?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| tls_err(&format!("cannot create {}", dir.display()), e))?;
            std::fs::copy(&pem, &ca_pem)
                .map_err(|e| tls_err(&format!("cannot copy {}", pem.display()), e))?;
            ca
        }
        None => load_or_create_ca(&ca_pem, &ca_key, "Sluice dev CA")?,
    };

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let listen_ip = config.listen.ip();
    if !listen_ip.is_unspecified() {
        names.push(listen_ip.to_string());
    }
    if let Some((host, _)) = config
        .advertised_addr
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
    {
        names.push(host.trim_matches(['[', ']']).to_string());
    }
    names.extend(config.tls.extra_names.iter().cloned());
    names.sort();
    names.dedup();
    let (cert, keypair) = issue_certificate(
        &ca,
        DEV_BROKER_NAME,
        names,
        // Client auth too: with `client_auth = "mtls"` a broker presents it when it is a
        // client of the other brokers (pipelines, partitioners, connectors).
        vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    write_private(&server_key, keypair.serialize_pem().as_bytes())?;
    std::fs::write(&server_pem, cert.pem())
        .map_err(|e| tls_err("cannot write the server certificate", e))?;
    tracing::info!(ca = %ca_pem.display(), "created a dev server certificate; clients verify the broker with this CA");
    Ok((server_pem, server_key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), BrokerError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| tls_err(&format!("cannot write {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| tls_err(&format!("cannot write {}", path.display()), e))
}

/// A client certificate with its key, issued by the dev CA of `data_dir` (`DATA_DIR/tls/ca.pem`
/// and `ca.key`, as a single broker creates them) or by the shared client CA of a dev cluster's
/// `ca_dir`: PEM certificate and PEM key. `name` becomes the subject's common name, the
/// principal the broker takes the client for under `client_auth = "mtls"`.
pub fn issue_client_certificate(
    ca_pem: &Path,
    ca_key: &Path,
    name: &str,
) -> Result<(String, String), BrokerError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(BrokerError::Tls(format!(
            "{name:?} is not a usable principal name (1 to 64 characters, no control characters)"
        )));
    }
    if !ca_key.exists() {
        return Err(BrokerError::Tls(format!(
            "no CA key at {}: issue-cert signs with a dev CA's key (a broker's DATA_DIR/tls, or a dev cluster's ca_dir)",
            ca_key.display()
        )));
    }
    let ca = load_or_create_ca(ca_pem, ca_key, "Sluice dev CA")?;
    let (cert, keypair) = issue_certificate(
        &ca,
        name,
        Vec::new(),
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    Ok((cert.pem(), keypair.serialize_pem()))
}

/// Why a client's certificate names no principal.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalError {
    #[error("the client presented no certificate")]
    NoCertificate,
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the client certificate has no common name and no DNS name to take as its principal")]
    Unnamed,
}

/// The principal of a client whose certificate the handshake verified: its subject's common
/// name, else its first DNS subject alternative name (docs/security.md, "Principals").
pub fn client_principal(connection: &quinn::Connection) -> Result<String, PrincipalError> {
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(PrincipalError::NoCertificate)?;
    let end_entity = chain.first().ok_or(PrincipalError::NoCertificate)?;
    principal_of(end_entity)
}

/// [`client_principal`] of one DER certificate.
pub fn principal_of(der: &[u8]) -> Result<String, PrincipalError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PrincipalError::Unparsable(e.to_string()))?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Ok(cn.to_owned());
    }
    let names = cert
        .subject_alternative_name()
        .map_err(|e| PrincipalError::Unparsable(e.to_string()))?;
    names
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) if !d.is_empty() => {
                Some((*d).to_owned())
            }
            _ => None,
        })
        .ok_or(PrincipalError::Unnamed)
}

/// The crypto provider of every TLS endpoint the broker runs or dials: ring, as quinn uses.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Unacknowledged bytes the broker sends on one connection; room for a default fetch response
/// (8 MiB) in flight.
pub const SEND_WINDOW: u64 = 16 * 1024 * 1024;

/// The QUIC server configuration: TLS 1.3, ALPN `sluice/1`, stream credit and receive windows
/// from the broker's limits (they bound what QUIC buffers for each client).
pub fn quic_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    config: &BrokerConfig,
) -> Result<quinn::ServerConfig, BrokerError> {
    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?;
    let builder = match config.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Mtls | ClientAuth::Credentials => {
            let path = config
                .tls
                .client_ca
                .clone()
                .unwrap_or_else(|| dev_ca_path(&config.data_dir));
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certificates(&path)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_err(&format!("client CA {}", path.display()), e))?;
            }
            // Under mTLS `build` without `allow_unauthenticated`: no certificate, no
            // connection. Under credentials a certificate is optional (one presented must
            // still verify); without one the client authenticates on the connection.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if config.client_auth == ClientAuth::Credentials {
                verifier.allow_unauthenticated()
            } else {
                verifier
            }
            .build()
            .map_err(|e| tls_err("client certificate verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("server certificate and key do not match", e))?;
    tls.alpn_protocols = vec![sluice_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC TLS", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let window = config.connection_window_bytes;
    transport
        .max_concurrent_bidi_streams(config.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        // A stream may fill a quarter of the connection's window: one that is not being read
        // (waiting for memory, or behind a long-poll) cannot stall the others.
        .stream_receive_window((window / 4).max(64 * 1024).into())
        .receive_window(window.into())
        // Unacknowledged response bytes QUIC keeps per connection: a client that stops reading
        // pins at most this much of the broker's memory in the transport.
        .send_window(SEND_WINDOW)
        // The transport's own timeout for a peer that went silent; a client that keeps the
        // connection alive but sends no requests is closed by the server after
        // `idle_timeout_ms` (server.rs).
        .max_idle_timeout(Some(
            std::time::Duration::from_secs(60)
                .try_into()
                .expect("60s fits"),
        ))
        .keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    config.quic_congestion.apply(&mut transport);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// ALPN of the broker-to-broker protocol (Raft, later replication). A peer endpoint offers only
/// this one, so a client of `sluice/1` cannot reach it and a peer cannot reach the client
/// listener.
pub const PEER_ALPN: &[u8] = b"sluice-peer/1";

/// Where a broker finds its peer TLS material. With all three set, production: the cluster
/// CA's certificate (the only trust anchor for peers) and this node's certificate chain and
/// key, as PEM files (`[cluster.tls]` in the broker config). Loaded with [`load_certificates`]
/// and [`load_private_key`].
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerTlsSettings {
    /// PEM certificate(s) of the cluster CA.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain of this node, signed by the cluster CA.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
}

/// File names of a dev cluster's shared client CA (what clients trust to reach any of its
/// nodes), inside `cluster.ca_dir` beside the cluster CA.
pub const CLIENT_CA_CERT_FILE: &str = "client-ca.pem";
/// See [`CLIENT_CA_CERT_FILE`]; written with mode 0600.
pub const CLIENT_CA_KEY_FILE: &str = "client-ca.key";

/// File names of the dev cluster CA, inside the directory given to [`create_cluster_ca`].
pub const CLUSTER_CA_CERT_FILE: &str = "cluster-ca.pem";
/// See [`CLUSTER_CA_CERT_FILE`]; written with mode 0600.
pub const CLUSTER_CA_KEY_FILE: &str = "cluster-ca.key";

/// A dev cluster CA whose key is at hand, to issue node certificates.
pub struct ClusterCa(LocalCa);

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // rcgen's `Issuer` elides its key in `Debug`.
        f.debug_struct("ClusterCa")
            .field("issuer", &self.0.issuer)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// The CA's certificate: the trust anchor to hand to [`peer_server_config`] and
    /// [`peer_client_config`].
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.0.cert
    }
}

/// Loads the dev cluster CA from `dir`, creating [`CLUSTER_CA_CERT_FILE`] and
/// [`CLUSTER_CA_KEY_FILE`] (and `dir`) when neither exists. Every broker of a dev cluster
/// must use the same files; create them once, before the brokers start, as two creating them
/// at the same moment would each write their own.
pub fn create_cluster_ca(dir: &Path) -> Result<ClusterCa, BrokerError> {
    load_or_create_ca(
        &dir.join(CLUSTER_CA_CERT_FILE),
        &dir.join(CLUSTER_CA_KEY_FILE),
        "Sluice cluster CA",
    )
    .map(ClusterCa)
}

/// The DNS name that identifies node `node_id` in its peer certificate. A peer dials node
/// `node_id` with this as the server name, so the handshake checks it reached that node.
pub fn node_dns_name(node_id: u32) -> String {
    // The name the Raft transport dials node `node_id` with: one definition for both sides.
    sluice_raft::peer_server_name(u64::from(node_id))
}

/// Signs a certificate for node `node_id`, usable both to serve and to dial peers (extended
/// key usages serverAuth and clientAuth). It names [`node_dns_name`] and `names` (DNS names
/// or IP addresses, e.g. the peer listen address). Returns the chain (the node certificate
/// alone; peers hold the CA) and its key.
pub fn issue_node_certificate(
    ca: &ClusterCa,
    node_id: u32,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BrokerError> {
    let mut all_names = vec![node_dns_name(node_id)];
    all_names.extend(names.iter().cloned());
    all_names.sort();
    all_names.dedup();
    let (cert, keypair) = issue_certificate(
        &ca.0,
        &format!("Sluice node {node_id}"),
        all_names,
        vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    Ok((vec![cert.der().clone()], keypair.into()))
}

/// A root store holding only the cluster CA: peers must not be trusted because some public CA
/// signed them.
fn cluster_roots(
    ca_certs: &[CertificateDer<'static>],
) -> Result<rustls::RootCertStore, BrokerError> {
    if ca_certs.is_empty() {
        return Err(BrokerError::Tls("no cluster CA certificate given".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca_certs {
        roots
            .add(cert.clone())
            .map_err(|e| tls_err("cannot use the cluster CA certificate", e))?;
    }
    Ok(roots)
}

/// The QUIC server configuration of the peer listener: TLS 1.3, ALPN [`PEER_ALPN`] only, and a
/// client certificate required and verified against `ca_certs` alone. A peer with no
/// certificate, or with one the cluster CA did not sign, fails the handshake.
pub fn peer_server_config(
    ca_certs: &[CertificateDer<'static>],
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, BrokerError> {
    let provider = crypto_provider();
    // `build` without `allow_unauthenticated`: a client certificate is mandatory.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(cluster_roots(ca_certs)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls_err("peer certificate verifier", e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain, key)
        .map_err(|e| tls_err("node certificate and key do not match", e))?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC TLS", e))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The QUIC client configuration to dial peers: TLS 1.3, ALPN [`PEER_ALPN`], the server
/// verified against `ca_certs` alone (not the system roots), this node's certificate presented.
/// Dial node `n` with [`node_dns_name`]`(n)` as the server name.
pub fn peer_client_config(
    ca_certs: &[CertificateDer<'static>],
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig, BrokerError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .with_root_certificates(cluster_roots(ca_certs)?)
        .with_client_auth_cert(cert_chain, key)
        .map_err(|e| tls_err("node certificate and key do not match", e))?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC TLS", e))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Why [`peer_node_id`] could not name the node at the other end of a peer connection. All are
/// reasons to close the connection: the handshake has verified the certificate's signature, so
/// these mean a certificate issued for something other than one member of this cluster.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    /// The connection carries no peer certificate: it is not a handshaken peer connection.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer's certificate could not be parsed.
    #[error("the peer certificate cannot be parsed: {0}")]
    Unparsable(rustls::Error),
    /// The certificate names none of the members given.
    #[error("the peer certificate names no member of the cluster")]
    NotAMember,
    /// The certificate names two members; node certificates name one.
    #[error("the peer certificate names both node {0} and node {1}")]
    Ambiguous(u32, u32),
}

/// The node at the other end of a peer connection: the one member of `members` whose
/// [`node_dns_name`] the peer's verified certificate carries.
///
/// The name is matched by webpki (through rustls), the code that checks server names, rather
/// than read out of the certificate: the workspace has no X.509 parser of its own. A node learns
/// the member ids from the cluster membership, or checks a single id the peer claims.
pub fn peer_node_id(
    connection: &quinn::Connection,
    members: impl IntoIterator<Item = u32>,
) -> Result<u32, PeerIdentityError> {
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(PeerIdentityError::NoCertificate)?;
    let end_entity = chain.first().ok_or(PeerIdentityError::NoCertificate)?;
    let cert = rustls::server::ParsedCertificate::try_from(end_entity)
        .map_err(PeerIdentityError::Unparsable)?;
    let mut found = None;
    for id in members {
        let Ok(name) = ServerName::try_from(node_dns_name(id)) else {
            continue;
        };
        if rustls::client::verify_server_name(&cert, &name).is_ok() {
            match found {
                Some(first) if first != id => return Err(PeerIdentityError::Ambiguous(first, id)),
                _ => found = Some(id),
            }
        }
    }
    found.ok_or(PeerIdentityError::NotAMember)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(common_name: Option<&str>, dns: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_principal_is_the_common_name_else_the_first_dns_name() {
        let both = certificate(Some("alice"), &["alice.example.com"]);
        assert_eq!(principal_of(&both).unwrap(), "alice");
        let dns = certificate(None, &["svc.example.com", "other.example.com"]);
        assert_eq!(principal_of(&dns).unwrap(), "svc.example.com");
        let neither = certificate(None, &[]);
        assert!(matches!(
            principal_of(&neither),
            Err(PrincipalError::Unnamed)
        ));
        assert!(matches!(
            principal_of(b"not a certificate"),
            Err(PrincipalError::Unparsable(_))
        ));
    }

    #[test]
    fn issued_client_certificates_carry_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        assert!(
            issue_client_certificate(&pem, &key, "bob").is_err(),
            "no CA key yet"
        );
        load_or_create_ca(&pem, &key, "Sluice dev CA").unwrap();
        let (cert, _key) = issue_client_certificate(&pem, &key, "bob").unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(principal_of(&der).unwrap(), "bob");
        assert!(issue_client_certificate(&pem, &key, "").is_err());
        assert!(issue_client_certificate(&pem, &key, "a\nb").is_err());
    }
}
