//! The broker's side towards the other brokers of its cluster: TLS material for the peer
//! listener (mutual TLS under the cluster CA, `tls.rs`) and the peer endpoint that carries the
//! metadata Raft's messages (`sluice_raft::QuicTransport` out, `sluice_raft::serve_peers` in).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::BrokerError;
use crate::config::ClusterSettings;
use crate::tls;

/// Most concurrent Raft RPC streams one peer may open.
const PEER_STREAMS: u32 = 256;

/// How long a node waits for another to finish creating the dev cluster CA.
const CA_WAIT: Duration = Duration::from_secs(30);

/// What this node proves itself with to peers, and what it trusts.
struct PeerMaterial {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The peer endpoint of node `node_id`: it listens on `cluster.peer_listen` and dials peers,
/// both under mutual TLS with the cluster CA. Returns the endpoint and the client
/// configuration to dial with.
pub(crate) fn peer_endpoint(
    node_id: u32,
    cluster: &ClusterSettings,
    congestion: sluice_client::QuicCongestion,
) -> Result<(quinn::Endpoint, quinn::ClientConfig), BrokerError> {
    let material = material(node_id, cluster)?;
    let mut transport = sluice_raft::peer_transport_config(PEER_STREAMS);
    congestion.apply(&mut transport);
    let transport = Arc::new(transport);
    let mut server = tls::peer_server_config(
        &material.ca,
        material.chain.clone(),
        material.key.clone_key(),
    )?;
    server.transport_config(transport.clone());
    let mut client = tls::peer_client_config(&material.ca, material.chain, material.key)?;
    client.transport_config(transport);
    let endpoint = quinn::Endpoint::server(server, cluster.peer_listen).map_err(|e| {
        BrokerError::Config(format!(
            "cannot listen for peers on {}: {e}",
            cluster.peer_listen
        ))
    })?;
    Ok((endpoint, client))
}

fn material(node_id: u32, cluster: &ClusterSettings) -> Result<PeerMaterial, BrokerError> {
    if let (Some(ca), Some(cert), Some(key)) =
        (&cluster.tls.ca, &cluster.tls.cert, &cluster.tls.key)
    {
        return Ok(PeerMaterial {
            ca: tls::load_certificates(ca)?,
            chain: tls::load_certificates(cert)?,
            key: tls::load_private_key(key)?,
        });
    }
    let dir = cluster.ca_dir.as_deref().ok_or_else(|| {
        BrokerError::Config("cluster needs tls (ca, cert, key) or a dev ca_dir".into())
    })?;
    let ca = with_dev_ca_lock(dir, || tls::create_cluster_ca(dir))?;
    let host = cluster
        .peer_advertised_addr
        .clone()
        .unwrap_or_else(|| cluster.peer_listen.to_string());
    let names: Vec<String> = host
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
        .into_iter()
        .collect();
    let (chain, key) = tls::issue_node_certificate(&ca, node_id, &names)?;
    Ok(PeerMaterial {
        ca: vec![ca.certificate().clone()],
        chain,
        key,
    })
}

/// Runs `f` (which loads or creates a dev CA in `dir`) under the directory's lock file, so that
/// of a cluster's nodes starting together, whichever gets there first creates the CA and the
/// others wait for it to go, then load what it wrote.
pub(crate) fn with_dev_ca_lock<T>(
    dir: &Path,
    f: impl FnOnce() -> Result<T, BrokerError>,
) -> Result<T, BrokerError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BrokerError::Config(format!("cannot create {}: {e}", dir.display())))?;
    let lock = dir.join("cluster-ca.lock");
    let started = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let ca = f();
                let _ = std::fs::remove_file(&lock);
                return ca;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if started.elapsed() > CA_WAIT {
                    return Err(BrokerError::Config(format!(
                        "{} stayed locked for {CA_WAIT:?}: another node is creating the cluster \
                         CA, or died doing it (remove the lock file if no node is starting)",
                        lock.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(BrokerError::Config(format!(
                    "cannot create {}: {e}",
                    lock.display()
                )));
            }
        }
    }
}
