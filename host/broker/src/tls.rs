//! TLS for the QUIC endpoint: production certificates from the config, or a dev CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::BrokerError;
use crate::config::BrokerConfig;

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
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cert)
            .map_err(|e| tls_err(&format!("cannot open {}", cert.display()), e))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| tls_err(&format!("cannot parse {}", cert.display()), e))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key)
            .map_err(|e| tls_err(&format!("cannot open {}", key.display()), e))?,
    ))
    .map_err(|e| tls_err(&format!("cannot parse {}", key.display()), e))?
    .ok_or_else(|| BrokerError::Tls(format!("{} holds no private key", key.display())))?;
    Ok((certs, key))
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
    std::fs::create_dir_all(&dir)
        .map_err(|e| tls_err(&format!("cannot create {}", dir.display()), e))?;

    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("CA params", e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice dev CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_keypair = if ca_key.exists() && ca_pem.exists() {
        // Keep an existing CA so clients that trust it keep working.
        let pem =
            std::fs::read_to_string(&ca_key).map_err(|e| tls_err("cannot read the CA key", e))?;
        rcgen::KeyPair::from_pem(&pem).map_err(|e| tls_err("cannot parse the CA key", e))?
    } else {
        let kp = rcgen::KeyPair::generate().map_err(|e| tls_err("CA key", e))?;
        let cert = ca_params
            .self_signed(&kp)
            .map_err(|e| tls_err("CA certificate", e))?;
        write_private(&ca_key, kp.serialize_pem().as_bytes())?;
        std::fs::write(&ca_pem, cert.pem()).map_err(|e| tls_err("cannot write the CA", e))?;
        kp
    };
    let issuer = rcgen::Issuer::new(ca_params, ca_keypair);

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
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| tls_err("server params", e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice broker");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let kp = rcgen::KeyPair::generate().map_err(|e| tls_err("server key", e))?;
    let cert = params
        .signed_by(&kp, &issuer)
        .map_err(|e| tls_err("server certificate", e))?;
    write_private(&server_key, kp.serialize_pem().as_bytes())?;
    std::fs::write(&server_pem, cert.pem())
        .map_err(|e| tls_err("cannot write the server certificate", e))?;
    tracing::info!(ca = %ca_pem.display(), "created a dev CA and server certificate; clients verify the broker with this CA");
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .with_no_client_auth()
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
    server.transport_config(Arc::new(transport));
    Ok(server)
}
