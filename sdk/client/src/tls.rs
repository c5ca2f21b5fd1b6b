//! TLS settings: which certificates the client trusts when it meets a broker.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ClientError;

/// Which certificate authorities the client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsConfig {
    /// PEM file holding one or more CA certificates (the dev broker writes its CA to a file).
    CaFile(PathBuf),
    /// PEM-encoded CA certificates in memory.
    CaPem(Vec<u8>),
    /// The operating system's trust store.
    SystemRoots,
    /// Accept any certificate. Traffic is still encrypted but anyone on the path can pose as the
    /// broker; for throwaway local experiments only. Logs a warning on every connection.
    InsecureSkipVerify,
}

/// A client certificate and its key (PEM files), for brokers that require mutual TLS
/// (`client_auth = "mtls"`): the certificate's common name is the client's principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientIdentity {
    fn load(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        ClientError,
    > {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                ClientError::InvalidConfig(format!("cannot read {}: {e}", path.display()))
            })
        };
        let pem = read(&self.cert)?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ClientError::InvalidConfig(format!("{}: not PEM: {e}", self.cert.display()))
            })?;
        if chain.is_empty() {
            return Err(ClientError::InvalidConfig(format!(
                "{} holds no PEM certificate",
                self.cert.display()
            )));
        }
        let key = rustls_pemfile::private_key(&mut &read(&self.key)?[..])
            .map_err(|e| {
                ClientError::InvalidConfig(format!("{}: not PEM: {e}", self.key.display()))
            })?
            .ok_or_else(|| {
                ClientError::InvalidConfig(format!("{} holds no private key", self.key.display()))
            })?;
        Ok((chain, key))
    }
}

/// Builds the rustls configuration for QUIC: TLS 1.3 only (QUIC requires it), ring as the
/// crypto provider, the `sluice/1` ALPN id, and the client certificate when one is given.
pub(crate) fn rustls_client_config(
    tls: &TlsConfig,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::InvalidConfig(format!("TLS: {e}")))?;
    let mut config = match tls {
        TlsConfig::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::InvalidConfig(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            present(
                builder.with_root_certificates(roots_from_pem(&pem, &path.display().to_string())?),
                identity,
            )?
        }
        TlsConfig::CaPem(pem) => present(
            builder.with_root_certificates(roots_from_pem(pem, "the CA PEM given")?),
            identity,
        )?,
        TlsConfig::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(cause = %e, "skipping part of the system trust store");
            }
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ClientError::InvalidConfig(
                    "no usable CA certificates in the system trust store; pass the broker's CA file instead".into(),
                ));
            }
            present(builder.with_root_certificates(roots), identity)?
        }
        TlsConfig::InsecureSkipVerify => {
            tracing::warn!(
                "TLS certificate verification is OFF: any server can pose as the broker; use only for local experiments"
            );
            present(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
                identity,
            )?
        }
    };
    config.alpn_protocols = vec![sluice_proto::ALPN.to_vec()];
    Ok(config)
}

/// Finishes the configuration: with the client certificate, or without one.
fn present(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => {
            let (chain, key) = identity.load()?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientError::InvalidConfig(format!(
                    "client certificate {} and key {} do not go together: {e}",
                    identity.cert.display(),
                    identity.key.display()
                ))
            })
        }
    }
}

fn roots_from_pem(pem: &[u8], source: &str) -> Result<RootCertStore, ClientError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::InvalidConfig(format!("cannot parse {source} as PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::InvalidConfig(format!(
            "{source} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            ClientError::InvalidConfig(format!("{source}: unusable CA certificate: {e}"))
        })?;
    }
    Ok(roots)
}

/// Skips the certificate chain check but still checks handshake signatures, so the session is
/// at least bound to whichever key the server showed.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_garbage_pem_is_refused_clearly() {
        let err = rustls_client_config(&TlsConfig::CaPem(b"not a pem".to_vec()), None).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = rustls_client_config(&TlsConfig::CaFile("/nonexistent/ca.pem".into()), None)
            .unwrap_err();
        assert!(err.to_string().contains("cannot read CA file"), "{err}");
    }

    #[test]
    fn a_missing_or_mismatched_client_identity_is_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("sluice-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = ClientIdentity {
            cert: dir.join("nope.pem"),
            key: dir.join("nope.key"),
        };
        let err = rustls_client_config(&TlsConfig::InsecureSkipVerify, Some(&missing)).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        std::fs::write(dir.join("empty.pem"), b"").unwrap();
        std::fs::write(dir.join("empty.key"), b"").unwrap();
        let empty = ClientIdentity {
            cert: dir.join("empty.pem"),
            key: dir.join("empty.key"),
        };
        let err = rustls_client_config(&TlsConfig::InsecureSkipVerify, Some(&empty)).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn alpn_is_set() {
        let c = rustls_client_config(&TlsConfig::InsecureSkipVerify, None).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"sluice/1".to_vec()]);
    }
}
