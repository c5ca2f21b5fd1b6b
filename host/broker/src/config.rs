//! Broker configuration: a TOML file, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::BrokerError;

/// Port a broker listens on unless told otherwise (UDP, QUIC).
pub const DEFAULT_PORT: u16 = 9470;

/// Everything a broker needs to start. Every field has a default, so an empty file (or none)
/// runs a single-node dev broker on loopback.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// This node's id in the cluster.
    pub node_id: u32,
    /// The cluster this node belongs to. A new data dir takes it (a random one when unset); a
    /// data dir of another cluster is refused.
    pub cluster_id: Option<String>,
    /// Where the store, the metadata log and the dev TLS material live.
    pub data_dir: PathBuf,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Address clients are told to reach this node at; defaults to `listen`.
    pub advertised_addr: Option<String>,
    /// Where this node stands (a rack, a zone): replicas of a partition are placed on
    /// different racks while there are enough of them.
    pub rack: Option<String>,
    pub tls: TlsSettings,
    /// Other brokers of this node's cluster; none for a single node (its own cluster of one).
    pub cluster: Option<ClusterSettings>,
    /// Largest frame accepted from a client.
    pub max_frame_bytes: usize,
    /// Largest record batch accepted, unless a topic sets a smaller one.
    pub max_batch_bytes: u32,
    /// How often retention runs.
    pub retention_check_interval_ms: u64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout_ms: u64,
    /// Memory the store may use to cache pages.
    pub store_cache_bytes: usize,
    /// Most bytes appended to `interval:MS` topics without fsync before a durable commit.
    pub store_max_unsynced_bytes: usize,
    /// Most client connections open at once; more are refused at the handshake.
    pub max_connections: usize,
    /// Most request streams one connection may have open at once (QUIC stream credit).
    pub max_streams_per_connection: u32,
    /// Bytes a client may have in flight towards the broker on one connection before the
    /// broker reads them (the QUIC receive window, per connection and per stream). With
    /// `max_connections` it bounds what QUIC buffers for clients.
    pub connection_window_bytes: u32,
    /// Congestion controller of what this broker sends, to clients and to peers: `cubic`
    /// (default), `newreno` or `bbr` (docs/performance.md, "Transport settings").
    pub quic_congestion: sluice_client::QuicCongestion,
    /// Bytes of request frames (being read or being handled) all connections together may hold.
    /// A frame waits for its share before its body is read.
    pub request_memory_bytes: usize,
    /// The same, for one connection; at least `max_frame_bytes`.
    pub connection_request_memory_bytes: usize,
    /// How long a frame waits for its memory before it is read, dropped and refused with a
    /// retriable error (waiting longer would let its unread bytes block the connection).
    pub request_memory_wait_ms: u64,
    /// A frame must arrive whole within this many milliseconds of its first byte (of its
    /// body, once the memory for it is granted); a stream that stalls mid-frame is reset.
    pub frame_timeout_ms: u64,
    /// A connection with no request in flight and none received for this long is closed by
    /// the broker, keep-alives or not.
    pub idle_timeout_ms: u64,
    /// Threads that validate and decompress large or compressed batches, off the network
    /// tasks. 0 means one per core.
    pub validation_threads: usize,
    /// How clients of the client listener are authenticated: `none` (the default: every
    /// client is `ANONYMOUS`; the broker says so loudly at start) or `mtls` (a client
    /// certificate signed by `tls.client_ca` is required at the handshake; its subject's common
    /// name, else its first DNS name, is the principal) or `credentials` (a SCRAM password or
    /// an API token, or such a certificate). docs/security.md.
    pub client_auth: ClientAuth,
    /// Whether requests are checked against the ACLs (docs/security.md). Off by default:
    /// with it on, nothing is allowed that no binding allows, except to `super_users`.
    pub authorization: bool,
    /// Principals allowed everything when `authorization` is on (operators, and the brokers'
    /// own certificate names: brokers are clients of each other). With the dev certificates,
    /// their name `Sluice broker` is one implicitly.
    pub super_users: Vec<String>,
    /// TCP address of the metrics and health listener (plain HTTP: `/metrics` in the
    /// Prometheus text format, `/health/live`, `/health/ready`). Off unless set.
    pub metrics_listen: Option<SocketAddr>,
    /// A file holding a bearer token that `/metrics` then requires (`Authorization: Bearer
    /// …`; Prometheus's `bearer_token_file`). The health endpoints stay open for probes.
    pub metrics_bearer_token_file: Option<PathBuf>,
    /// Whether metrics carry per-partition series (log offsets, size, high watermark, group
    /// lag by partition). On by default; turn off where partitions number in the tens of
    /// thousands.
    pub metrics_per_partition: bool,
    /// Testing only: wait this many milliseconds before loading consumer group state at start
    /// (a start that takes long enough to watch `/health/ready` say no, then yes).
    pub group_load_delay_ms: u64,
    /// Testing only (fault injection): abort the process, as `kill -9` would, when the n-th
    /// pipeline step that wrote output has had that output acknowledged and before its
    /// checkpoint is written — the window that the pipelines' exactly-once replay covers.
    pub pipeline_fault_abort_before_checkpoint: Option<u64>,
    /// Testing only (fault injection): abort the process, as `kill -9` would, when a topic
    /// delete is durable in the metadata log and before the topic's group offsets and data are
    /// removed — the window that start-up's clean-up covers.
    pub topic_delete_fault_abort_after_metadata: bool,
}

/// How this node reaches the other brokers of its cluster (the metadata quorum today).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// UDP address of the peer listener (QUIC, ALPN `sluice-peer/1`, mutual TLS).
    pub peer_listen: SocketAddr,
    /// Address peers are told to reach this node at; defaults to `peer_listen`.
    pub peer_advertised_addr: Option<String>,
    /// The metadata quorum's voters, `id@host:port` (their peer addresses), the same list on
    /// every node. This node must be one of them (learners join later).
    pub voters: Vec<String>,
    /// `id@host:port`: this node dials peer `id` at that address instead of the one the peer
    /// advertises (a NAT, a tunnel, a proxy). Default: none.
    #[serde(default)]
    pub peer_routes: Vec<String>,
    /// Dev: a directory holding the cluster CA (`cluster-ca.pem`, `cluster-ca.key`), created by
    /// the first node that needs it; each node gets a certificate from it at start. Production
    /// sets `tls` instead.
    pub ca_dir: Option<PathBuf>,
    /// Production: the cluster CA certificate and this node's certificate and key.
    #[serde(default)]
    pub tls: crate::tls::PeerTlsSettings,
    /// This node joins a running cluster whose voters are `voters` (it is not one of them):
    /// it starts, waits to be added (`sluice cluster add-node`), then catches up and serves.
    #[serde(default)]
    pub join: bool,
    /// A metadata snapshot is taken every this many log entries (default 1,000); a tenth of
    /// it (at most 100) stays in the log behind the snapshot. A node further behind catches up
    /// by installing the snapshot.
    #[serde(default = "default_snapshot_entries")]
    pub snapshot_every_entries: u64,
    /// A follower not caught up with its leader for this long leaves the partition's in-sync
    /// set (`replica.lag.time.max.ms`, default 30 s).
    #[serde(default = "default_replica_lag_ms")]
    pub replica_lag_max_ms: u64,
    /// How often this node heartbeats to the metadata leader (default 500 ms).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// A broker that has not heartbeated for this long is fenced: it leads nothing until it
    /// registers again (default 6 s).
    #[serde(default = "default_session_ms")]
    pub session_timeout_ms: u64,
    /// Whether the metadata leader gives partitions back to their preferred replica (the
    /// first) once it is live and in sync again (default true; Kafka's
    /// `auto.leader.rebalance.enable`). `sluice cluster elect-leaders` does it on demand.
    #[serde(default = "default_true")]
    pub auto_leader_balance: bool,
    /// How often the metadata leader looks for partitions led by another than their
    /// preferred replica (default 5 s).
    #[serde(default = "default_leader_balance_ms")]
    pub leader_balance_interval_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_leader_balance_ms() -> u64 {
    5_000
}

fn default_snapshot_entries() -> u64 {
    1_000
}

fn default_replica_lag_ms() -> u64 {
    30_000
}

fn default_heartbeat_ms() -> u64 {
    500
}

fn default_session_ms() -> u64 {
    6_000
}

impl ClusterSettings {
    /// The voters as (node id, peer address), checked.
    pub fn voter_addrs(&self) -> Result<Vec<(u32, String)>, BrokerError> {
        node_addrs("cluster.voters", &self.voters)
    }

    /// `peer_routes` as (node id, address), checked.
    pub fn peer_route_addrs(&self) -> Result<Vec<(u32, String)>, BrokerError> {
        node_addrs("cluster.peer_routes", &self.peer_routes)
    }
}

/// `id@host:port` entries of the setting `what`, checked.
fn node_addrs(what: &str, entries: &[String]) -> Result<Vec<(u32, String)>, BrokerError> {
    entries
        .iter()
        .map(|v| {
            let (id, addr) = v.split_once('@').ok_or_else(|| {
                BrokerError::Config(format!("{what} entry {v:?} is not id@host:port"))
            })?;
            let id: u32 = id.parse().map_err(|_| {
                BrokerError::Config(format!("{what} entry {v:?}: {id:?} is not a node id"))
            })?;
            Ok((id, addr.to_owned()))
        })
        .collect()
}

/// TLS material. With neither `cert` nor `key` set, the broker creates a dev CA and a server
/// certificate under `DATA_DIR/tls/` on first start and reuses them afterwards.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain for the server.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the dev certificate.
    pub extra_names: Vec<String>,
    /// The CA that signed the other brokers' client-listener certificates, which this broker
    /// trusts when it is a client of theirs (a pipeline writing to a partition another broker
    /// leads). Default: this node's dev CA (`DATA_DIR/tls/ca.pem`, shared by a dev cluster).
    pub ca: Option<PathBuf>,
    /// With `client_auth = "mtls"`: the CA(s) whose client certificates are accepted (PEM).
    /// Default: the dev CA (`DATA_DIR/tls/ca.pem`), which `sluice auth issue-cert` signs with.
    pub client_ca: Option<PathBuf>,
}

/// How the client listener authenticates clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Nobody is authenticated: every client is `ANONYMOUS`.
    #[default]
    None,
    /// Mutual TLS: a client certificate from `tls.client_ca` is required.
    Mtls,
    /// A client authenticates with a SCRAM-SHA-256 password or an API token on its connection
    /// before anything else, unless it presented a certificate from `tls.client_ca` (as
    /// brokers do, being clients of each other): passwords, tokens and certificates alike.
    Credentials,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Mtls => "mtls",
            ClientAuth::Credentials => "credentials",
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            cluster_id: None,
            data_dir: PathBuf::from("sluice-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            advertised_addr: None,
            rack: None,
            tls: TlsSettings::default(),
            cluster: None,
            max_frame_bytes: sluice_proto::frame::DEFAULT_MAX_FRAME,
            max_batch_bytes: 8 * 1024 * 1024,
            retention_check_interval_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            store_cache_bytes: 256 * 1024 * 1024,
            store_max_unsynced_bytes: 8 * 1024 * 1024,
            max_connections: 1024,
            max_streams_per_connection: 1024,
            connection_window_bytes: 1024 * 1024,
            quic_congestion: sluice_client::QuicCongestion::default(),
            request_memory_bytes: 256 * 1024 * 1024,
            connection_request_memory_bytes: 2 * sluice_proto::frame::DEFAULT_MAX_FRAME,
            request_memory_wait_ms: 1_000,
            frame_timeout_ms: 30_000,
            idle_timeout_ms: 600_000,
            validation_threads: 0,
            client_auth: ClientAuth::None,
            authorization: false,
            super_users: Vec::new(),
            metrics_listen: None,
            metrics_bearer_token_file: None,
            metrics_per_partition: true,
            group_load_delay_ms: 0,
            pipeline_fault_abort_before_checkpoint: None,
            topic_delete_fault_abort_after_metadata: false,
        }
    }
}

impl BrokerConfig {
    /// Reads a TOML config file. Unknown keys are refused so typos do not pass silently.
    pub fn load(path: &Path) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Config(format!("cannot read {}: {e}", path.display())))?;
        let config: BrokerConfig = toml::from_str(&text)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |m: String| Err(BrokerError::Config(m));
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key must be given together".into());
        }
        if self.max_frame_bytes < 64 * 1024 {
            return bad(format!(
                "max_frame_bytes = {} is below the minimum of 65536",
                self.max_frame_bytes
            ));
        }
        if self.max_batch_bytes as usize + 64 * 1024 > self.max_frame_bytes {
            return bad(format!(
                "max_batch_bytes = {} does not fit in max_frame_bytes = {} (leave 64 KiB for the control message)",
                self.max_batch_bytes, self.max_frame_bytes
            ));
        }
        if self.connection_request_memory_bytes < self.max_frame_bytes {
            return bad(format!(
                "connection_request_memory_bytes = {} is below max_frame_bytes = {}: a largest frame could never be read",
                self.connection_request_memory_bytes, self.max_frame_bytes
            ));
        }
        // One eighth of request_memory_bytes is the small-frame reserve, which must hold one
        // connection's share of it; the rest must hold a largest frame.
        let reserve = self.request_memory_bytes / crate::server::SMALL_FRAME_RESERVE_SHARE;
        if self.request_memory_bytes < self.connection_request_memory_bytes
            || reserve < crate::server::CONNECTION_SMALL_BYTES
            || self.request_memory_bytes - reserve < self.max_frame_bytes
        {
            return bad(format!(
                "request_memory_bytes = {} must be at least connection_request_memory_bytes = {}, \
                 8 MiB, and max_frame_bytes = {} plus an eighth",
                self.request_memory_bytes,
                self.connection_request_memory_bytes,
                self.max_frame_bytes
            ));
        }
        if self.max_connections == 0 || self.max_streams_per_connection == 0 {
            return bad("max_connections and max_streams_per_connection must be positive".into());
        }
        if self.connection_window_bytes < 64 * 1024 {
            return bad(format!(
                "connection_window_bytes = {} is below the minimum of 65536",
                self.connection_window_bytes
            ));
        }
        if self.frame_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return bad("frame_timeout_ms and idle_timeout_ms must be positive".into());
        }
        if let Some(cluster) = &self.cluster {
            if self.cluster_id.is_none() {
                return bad(
                    "a node of a cluster needs cluster_id, the same on every node (e.g. from \
                     `uuidgen`)"
                        .into(),
                );
            }
            let voters = cluster.voter_addrs()?;
            let listed = voters.iter().any(|(id, _)| *id == self.node_id);
            if !listed && !cluster.join {
                return bad(format!(
                    "node {} is not among cluster.voters {:?}; to add it to a running cluster, \
                     set cluster.join = true and run `sluice cluster add-node`",
                    self.node_id, cluster.voters
                ));
            }
            if listed && cluster.join {
                return bad(format!(
                    "node {} is among cluster.voters and has cluster.join = true: a voter \
                     forms the cluster, a joining node is added to it; choose one",
                    self.node_id
                ));
            }
            let mut ids: Vec<u32> = voters.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != voters.len() {
                return bad(format!(
                    "cluster.voters names a node twice: {:?}",
                    cluster.voters
                ));
            }
            let production = [&cluster.tls.ca, &cluster.tls.cert, &cluster.tls.key];
            let given = production.iter().filter(|p| p.is_some()).count();
            if given != 0 && given != 3 {
                return bad("cluster.tls needs ca, cert and key together".into());
            }
            if given == 0 && cluster.ca_dir.is_none() {
                return bad("cluster needs tls (ca, cert, key) or a dev ca_dir".into());
            }
            if cluster.snapshot_every_entries == 0 {
                return bad("cluster.snapshot_every_entries must be positive".into());
            }
            if cluster.heartbeat_interval_ms == 0
                || cluster.session_timeout_ms < 2 * cluster.heartbeat_interval_ms
            {
                return bad(format!(
                    "cluster.session_timeout_ms = {} must be at least twice \
                     cluster.heartbeat_interval_ms = {} (which must be positive)",
                    cluster.session_timeout_ms, cluster.heartbeat_interval_ms
                ));
            }
        }
        if self.retention_check_interval_ms == 0 {
            return bad("retention_check_interval_ms must be positive".into());
        }
        Ok(())
    }

    pub fn advertised(&self, bound: SocketAddr) -> String {
        self.advertised_addr
            .clone()
            .unwrap_or_else(|| bound.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c: BrokerConfig = toml::from_str("").unwrap();
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.node_id, 1);
        c.validate().unwrap();
    }

    #[test]
    fn typos_and_nonsense_are_refused() {
        assert!(toml::from_str::<BrokerConfig>("lisen = \"127.0.0.1:1\"").is_err());
        let c: BrokerConfig = toml::from_str("max_batch_bytes = 99999999").unwrap();
        assert!(c.validate().is_err());
        let c: BrokerConfig = toml::from_str("[tls]\ncert = \"a.pem\"").unwrap();
        assert!(c.validate().is_err());
    }
    #[test]
    fn client_auth_is_none_unless_set_to_mtls() {
        assert_eq!(BrokerConfig::default().client_auth, ClientAuth::None);
        let c: BrokerConfig =
            toml::from_str("client_auth = \"mtls\"\n[tls]\nclient_ca = \"/ca.pem\"").unwrap();
        assert_eq!(c.client_auth, ClientAuth::Mtls);
        assert_eq!(
            c.tls.client_ca.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert!(toml::from_str::<BrokerConfig>("client_auth = \"password\"").is_err());
        let c: BrokerConfig = toml::from_str("client_auth = \"credentials\"").unwrap();
        assert_eq!(c.client_auth, ClientAuth::Credentials);
    }

    #[test]
    fn congestion_controller_is_named_in_lowercase() {
        let c: BrokerConfig = toml::from_str("").unwrap();
        assert_eq!(c.quic_congestion, sluice_client::QuicCongestion::Cubic);
        let c: BrokerConfig = toml::from_str("quic_congestion = \"newreno\"").unwrap();
        assert_eq!(c.quic_congestion, sluice_client::QuicCongestion::NewReno);
        let c: BrokerConfig = toml::from_str("quic_congestion = \"bbr\"").unwrap();
        assert_eq!(c.quic_congestion, sluice_client::QuicCongestion::Bbr);
        let e = toml::from_str::<BrokerConfig>("quic_congestion = \"vegas\"").unwrap_err();
        assert!(e.to_string().contains("vegas"), "{e}");
    }
}
