//! The Sluice broker: a QUIC endpoint in front of redb-backed partition logs and a metadata
//! controller.
//!
//! Requests enter through `server` (one task per connection, one per stream: limits, framing,
//! ordering), are dispatched by `router` to one module per request family (`produce`, `fetch`,
//! `admin`, `topic_delete`, `groups`, `plugins`, `pipelines`), and reach the partition logs in
//! `sluice-storage` and the metadata state machine in `sluice-metadata` through
//! [`controller::MetadataController`]. Partition leadership and high watermarks are in
//! `leadership`; every error a client sees is mapped in `wire_error`. Responses leave the way
//! requests came, in request order per stream.

mod acls;
mod admin;
mod auth;
mod authz;
mod cluster;
pub mod config;
mod connectors;
pub mod controller;
mod fetch;
mod groups;
mod leadership;
mod metrics;
mod peers;
mod pipelines;
mod plugins;
mod produce;
mod producer_ids;
mod quotas;
mod replicas;
mod replication;
mod retention;
mod router;
mod server;
mod sessions;
pub mod tls;
mod topic_delete;
mod wire_error;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_storage::{PartitionId, Store, StoreOptions};
use tokio::sync::{Notify, watch};

pub use config::BrokerConfig;
use controller::MetadataController;

/// How long a starting broker waits for the metadata log to take its registration.
const REGISTRATION_WAIT: Duration = Duration::from_secs(60);

/// Errors that stop a broker from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is invalid; the message names the setting.
    #[error("configuration: {0}")]
    Config(String),
    /// Certificates or keys could not be created or loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The store could not be opened or failed.
    #[error("storage: {0}")]
    Storage(#[from] sluice_storage::StorageError),
    /// The metadata log could not be read.
    #[error("metadata: {0}")]
    Metadata(String),
    /// The endpoint could not bind or failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The data dir's disk failed at start-up (full, read-only, ...): creating the dir, opening
    /// the store, or writing a file in it. The message starts with `data dir <path>:` and says
    /// what was being done.
    #[error("{0}")]
    Disk(String),
}

/// Shared state of a running broker.
#[derive(Debug)]
pub(crate) struct Broker {
    config: BrokerConfig,
    node_id: u32,
    cluster_id: String,
    /// The client address this node registers (what clients are told to connect to).
    advertised: String,
    store: Store,
    controller: MetadataController,
    groups: groups::GroupCoordinator,
    plugins: plugins::PluginRegistry,
    pipelines: pipelines::PipelineRunners,
    connectors: connectors::ConnectorTasks,
    partitions: RwLock<HashMap<PartitionId, Arc<leadership::PartitionRuntime>>>,
    /// Connection, memory and validation limits shared by all clients.
    limits: server::ClientLimits,
    /// Becomes true when shutdown begins; long-polls watch it to return early.
    shutdown: watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// This broker as a client of the cluster (see [`Broker::cluster_client`]).
    cluster_client: tokio::sync::OnceCell<sluice_client::Client>,
    /// The rest of the producer id block this broker hands out from.
    producer_ids: producer_ids::ProducerIdBlock,
    /// Follower tasks of the partitions this node replicates but does not lead.
    followers: replication::Followers,
    /// Leader state of the replicated partitions this node leads.
    leaders: replication::Leaders,
    /// Each principal's quota clocks on this broker.
    quota_clocks: quotas::QuotaClocks,
    /// A random secret of this process: the decoy SCRAM credentials of unknown users derive
    /// from it.
    auth_secret: Vec<u8>,
}

/// A running broker. Dropping it does not stop it; call [`BrokerHandle::shutdown`].
#[derive(Debug)]
pub struct BrokerHandle {
    broker: Arc<Broker>,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
    retention_task: tokio::task::JoinHandle<()>,
    expiry_task: tokio::task::JoinHandle<()>,
    /// The metrics and health listener, when `metrics_listen` is set.
    observe: Option<sluice_observe::Endpoint>,
}

impl BrokerHandle {
    /// The address the QUIC endpoint is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the metrics and health listener is bound to, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.observe.as_ref().map(|o| o.local_addr())
    }

    /// Stops accepting connections, lets in-flight requests finish (up to the configured
    /// timeout), stops the metadata log, closes the store cleanly and closes the endpoint.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        tracing::info!("shutting down: no new requests, finishing in-flight ones");
        self.broker.shutdown.send_replace(true);
        if let Some(endpoint) = &self.observe {
            endpoint.set_not_ready("shutting down");
        }
        self.endpoint.set_server_config(None);
        self.accept_task.abort();
        self.retention_task.abort();
        self.expiry_task.abort();
        let timeout = Duration::from_millis(self.broker.config.shutdown_timeout_ms);
        let drained = tokio::time::timeout(timeout, async {
            loop {
                let notified = self.broker.idle.notified();
                if self.broker.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-flight requests still running after {timeout:?}; closing anyway");
        }
        // A clean restart starts from the latest high watermarks.
        self.broker.checkpoint_high_watermarks().await;
        if let Err(e) = self.broker.controller.shutdown().await {
            tracing::warn!(cause = %e, "metadata log did not stop cleanly");
        }
        let store = self.broker.store.clone();
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .map_err(|e| BrokerError::Metadata(format!("store shutdown task: {e}")))??;
        self.endpoint.close(0u32.into(), b"broker shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        tracing::info!("broker stopped; store closed cleanly");
        Ok(())
    }
}

/// Starts a broker: opens the store, replays the metadata log, registers this node and
/// starts serving QUIC. Must be called inside a tokio runtime.
pub async fn start(mut config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
    config.validate()?;
    // Brokers with the dev certificates reach each other as clients under this name: with
    // authorisation on, it may do everything, as a configured super-user may.
    if config.tls.cert.is_none() && !config.super_users.iter().any(|u| u == tls::DEV_BROKER_NAME) {
        config.super_users.push(tls::DEV_BROKER_NAME.to_owned());
    }
    // Disk errors name the data dir and what was being done: a full disk is no network error.
    let data_dir = config.data_dir.clone();
    let disk = move |what: &str, err: &dyn std::fmt::Display| {
        BrokerError::Disk(format!("data dir {}: {what}: {err}", data_dir.display()))
    };
    let store_disk = |what: &str, err: sluice_storage::StorageError| match err {
        // Its own words add that writes resume, which is not so while starting.
        sluice_storage::StorageError::DiskFull { location, cause } => {
            disk(what, &format!("disk full: {cause} writing {location}"))
        }
        other => disk(what, &other),
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| disk("cannot create it", &e))?;
    // Up first, so that an operator sees the node live (and not yet ready) while it opens.
    let observe = match config.metrics_listen {
        Some(addr) => {
            let bearer = match &config.metrics_bearer_token_file {
                Some(path) => Some(metrics_token(path).map_err(BrokerError::Metadata)?),
                None => None,
            };
            let endpoint = sluice_observe::Endpoint::start(addr, bearer)
                .await
                .map_err(BrokerError::Metadata)?;
            endpoint.set_not_ready("opening the store");
            metrics::describe();
            write_addr_file(&config.data_dir, "metrics.addr", endpoint.local_addr())?;
            Some(endpoint)
        }
        None => None,
    };
    let (certs, key) = tls::server_identity(&config)?;
    let server_config = tls::quic_server_config(certs, key, &config)?;

    let store_path = config.data_dir.join("sluice.redb");
    let options = StoreOptions {
        cache_bytes: config.store_cache_bytes,
        max_unsynced_bytes: config.store_max_unsynced_bytes,
        ..StoreOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path, options))
        .await
        .map_err(|e| BrokerError::Metadata(format!("store open task: {e}")))?
        .map_err(|e| store_disk("opening the store", e))?;
    // A data dir without a cluster id is new (or was wiped): whatever this node held in
    // the cluster before is gone, which its registration says.
    let mut fresh = false;
    let cluster_id = match store.meta_get("cluster_id")? {
        Some(id) => String::from_utf8_lossy(&id).into_owned(),
        None => {
            fresh = true;
            tracing::info!(data_dir = %config.data_dir.display(), "a new data dir: this node registers as holding no data (in no in-sync set until it has caught up)");
            let id = config.cluster_id.clone().unwrap_or_else(new_cluster_id);
            store
                .meta_put("cluster_id", id.as_bytes())
                .map_err(|e| store_disk("storing the cluster id", e))?;
            id
        }
    };
    check_identity(&config, &store, &cluster_id)?;
    let controller = MetadataController::open(&config, &store)
        .await
        .map_err(|e| {
            BrokerError::Disk(format!(
                "data dir {}: opening the metadata log: {e}",
                config.data_dir.display()
            ))
        })?;

    let endpoint = quinn::Endpoint::server(server_config, config.listen)?;
    let local_addr = endpoint.local_addr()?;
    let advertised = config.advertised(local_addr);
    let node_id = config.node_id;
    // Every start is a new life of the node: registering gives it a new broker epoch (and
    // unfences it), so nothing from an earlier life can pass for this one; it leads nothing
    // another in-sync replica can lead, and is in sync again only once it has caught up.
    // The quorum may still be settling (an election right after this node's restart): an
    // unavailable metadata log is waited out, bounded, rather than failing the start.
    // Ready before registering: from its registration on, the node's session runs, so what
    // comes between registering and heartbeating must be short (a node fenced during its own
    // start on a busy machine, found by the dev cluster test).
    let plugins = plugins::PluginRegistry::new(&config.data_dir.join("plugin-cache"))?;
    let registering = std::time::Instant::now();
    loop {
        let registration = sessions::registration(&config, &advertised, fresh);
        match controller.propose_async(registration).await {
            Ok(()) => break,
            Err(controller::ProposeError::Unavailable(why))
                if registering.elapsed() < REGISTRATION_WAIT =>
            {
                tracing::info!(cause = %why, "registering this broker: the metadata log is not available yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(BrokerError::Disk(format!(
                    "data dir {}: registering this broker in the metadata log: {e}",
                    config.data_dir.display()
                )));
            }
        }
    }
    // A crash between a topic's metadata entry and its partitions' creation in the store
    // leaves partitions missing, and one between a delete's metadata entry and the removal of
    // its data leaves data behind; the pass the replica watcher runs on every change puts
    // both right.
    replicas::reconcile(&store, &controller, node_id)?;

    let limits = server::ClientLimits::new(&config);
    let broker = Arc::new(Broker {
        config,
        node_id,
        cluster_id,
        advertised,
        store,
        controller,
        groups: groups::GroupCoordinator::default(),
        plugins,
        pipelines: pipelines::PipelineRunners::default(),
        connectors: connectors::ConnectorTasks::default(),
        partitions: RwLock::new(HashMap::new()),
        limits,
        shutdown: watch::channel(false).0,
        in_flight: AtomicUsize::new(0),
        idle: Notify::new(),
        cluster_client: tokio::sync::OnceCell::new(),
        producer_ids: producer_ids::ProducerIdBlock::default(),
        followers: replication::Followers::default(),
        leaders: replication::Leaders::default(),
        quota_clocks: quotas::QuotaClocks::default(),
        auth_secret: sluice_client::scram::random_bytes(32),
    });
    if broker.controller.is_clustered() {
        // Heartbeats from now on: loading group state and the rest below may take a while.
        tokio::spawn(sessions::run(broker.clone()));
    }
    tracing::info!(node_id, addr = %local_addr, cluster_id = %broker.cluster_id, client_auth = broker.config.client_auth.as_str(), "broker listening (QUIC, ALPN sluice/1)");
    if broker.config.client_auth == config::ClientAuth::None {
        tracing::warn!(
            addr = %local_addr,
            "CLIENT AUTHENTICATION IS OFF (client_auth = \"none\"): anyone who can reach this UDP port can create and delete topics, read and write every topic and deploy plugins. Set client_auth = \"mtls\" for anything but a dev laptop (docs/security.md)"
        );
    }
    let accept_task = tokio::spawn(server::accept_loop(broker.clone(), endpoint.clone()));
    // Tools and tests that start a broker on port 0 learn its address from this file, written
    // once the broker serves.
    let data_dir = &broker.config.data_dir;
    write_addr_file(data_dir, "broker.addr", local_addr)?;
    if let Some(endpoint) = &observe {
        endpoint.set_not_ready("loading consumer group state");
    }
    if broker.config.group_load_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(broker.config.group_load_delay_ms)).await;
    }
    let b = broker.clone();
    tokio::task::spawn_blocking(move || groups::GroupCoordinator::load(&b))
        .await
        .map_err(|e| BrokerError::Metadata(format!("group load task: {e}")))??;
    groups::drop_deleted_offsets(&broker).await?;
    // Pipelines resume from their checkpoints by themselves (paused ones stay paused).
    pipelines::PipelineRunners::follow(&broker);
    connectors::ConnectorTasks::follow(&broker);
    tokio::spawn(replicas::watch(broker.clone()));
    if broker.controller.is_clustered() {
        replication::serve(&broker);
        tokio::spawn(replication::maintain_in_sync(
            broker.clone(),
            Duration::from_millis(250),
        ));
        tokio::spawn(leadership::balance(broker.clone()));
    }
    if let Some(endpoint) = &observe {
        let weak = Arc::downgrade(&broker);
        endpoint.set_collector(move || {
            let weak = weak.clone();
            async move {
                if let Some(broker) = weak.upgrade() {
                    metrics::collect(&broker).await;
                }
            }
        });
        endpoint.set_ready();
    }
    let retention_task = tokio::spawn(retention::run(broker.clone()));
    let expiry_task = tokio::spawn(groups::GroupCoordinator::run_expiry(
        broker.clone(),
        Duration::from_millis(250),
    ));
    Ok(BrokerHandle {
        broker,
        endpoint,
        local_addr,
        accept_task,
        retention_task,
        expiry_task,
        observe,
    })
}

/// Lower-case hexadecimal of `bytes` (token ids, connector positions in listings).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bearer token in `path` (surrounding whitespace dropped; it must not be empty).
fn metrics_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("metrics_bearer_token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(char::is_control) {
        return Err(format!(
            "metrics_bearer_token_file {}: empty, or not one line",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Writes `name` in the data dir with the address a listener is bound to: tools and tests that
/// start a broker on port 0 learn it from there. Written whole (a rename), once it serves.
fn write_addr_file(
    data_dir: &std::path::Path,
    name: &str,
    addr: SocketAddr,
) -> Result<(), BrokerError> {
    let tmp = data_dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, addr.to_string())
        .and_then(|_| std::fs::rename(&tmp, data_dir.join(name)))
        .map_err(|e| {
            BrokerError::Disk(format!(
                "data dir {}: writing {name}: {e}",
                data_dir.display()
            ))
        })
}

impl Broker {
    /// A client of the cluster, bootstrapped from this broker itself, for work that writes to
    /// partitions other brokers lead (pipelines). Connected on first use.
    pub(crate) async fn cluster_client(
        &self,
    ) -> Result<&sluice_client::Client, sluice_proto::WireError> {
        self.cluster_client
            .get_or_try_init(|| async {
                let ca = self
                    .config
                    .tls
                    .ca
                    .clone()
                    .unwrap_or_else(|| tls::dev_ca_path(&self.config.data_dir));
                let mut config = sluice_client::ClientConfig::new(
                    self.advertised.clone(),
                    sluice_client::TlsConfig::CaFile(ca),
                );
                config.client_id = format!("sluice-broker-{}", self.node_id);
                // Brokers that require client certificates take this one's server certificate
                // (the dev one is issued for client authentication too).
                if self.config.client_auth != config::ClientAuth::None {
                    let tls_dir = self.config.data_dir.join("tls");
                    config.identity = Some(sluice_client::ClientIdentity {
                        cert: self
                            .config
                            .tls
                            .cert
                            .clone()
                            .unwrap_or_else(|| tls_dir.join("server.pem")),
                        key: self
                            .config
                            .tls
                            .key
                            .clone()
                            .unwrap_or_else(|| tls_dir.join("server.key")),
                    });
                }
                sluice_client::Client::connect(config).await.map_err(|e| {
                    sluice_proto::WireError::new(
                        sluice_proto::ErrorCode::LeaderNotAvailable,
                        format!("this broker cannot reach the cluster as a client: {e}"),
                    )
                })
            })
            .await
    }
}

/// A data dir belongs to one node of one cluster: it records both on first start, and a start
/// with another node id, or into another cluster, is refused rather than mixing two nodes' data.
fn check_identity(
    config: &BrokerConfig,
    store: &Store,
    cluster_id: &str,
) -> Result<(), BrokerError> {
    let dir = config.data_dir.display();
    if let Some(wanted) = &config.cluster_id
        && wanted != cluster_id
    {
        return Err(BrokerError::Config(format!(
            "data dir {dir} belongs to cluster {cluster_id}, but this node is configured for \
             cluster {wanted}; use that cluster id, or another data dir"
        )));
    }
    match store.meta_get("node_id")? {
        Some(recorded) => {
            let recorded = String::from_utf8_lossy(&recorded).into_owned();
            if recorded != config.node_id.to_string() {
                return Err(BrokerError::Config(format!(
                    "data dir {dir} belongs to node {recorded}, but this node is configured as \
                     node {}; start it with node_id = {recorded}, or give it another data dir",
                    config.node_id
                )));
            }
        }
        None => store
            .meta_put("node_id", config.node_id.to_string().as_bytes())
            .map_err(|e| BrokerError::Disk(format!("data dir {dir}: storing the node id: {e}")))?,
    }
    Ok(())
}

fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; two of them give 128 random bits.
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(a);
    format!("{:016x}{:016x}", a, h.finish())
}

/// Counts a request as in flight until dropped, so shutdown can wait for it.
struct InFlight(Arc<Broker>);

impl InFlight {
    fn new(broker: &Arc<Broker>) -> Self {
        broker.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(broker.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
