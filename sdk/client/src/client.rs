//! The client's view of a cluster: a bootstrap connection for requests any broker answers,
//! one connection per broker it needs, and a cache of each partition's leader, so that every
//! produce and fetch goes to the broker that leads its partition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use sluice_proto::frame::{self, DEFAULT_MAX_FRAME};
use sluice_proto::{ErrorCode, MetadataResponse, Request, ResponseBody, WireError};
use tracing::{debug, info};

pub(crate) use crate::conn::unexpected;
use crate::conn::{Conn, QuicCongestion, split_host_port, transport_config};
use crate::lane::Lane;
use crate::tls::rustls_client_config;
use crate::{Admin, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, TlsConfig};

/// How to reach and trust a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bootstrap brokers: one `host:port` (`[v6addr]:port` for IPv6 literals) or several,
    /// comma-separated. The client connects to the first that answers and learns the rest of
    /// the cluster from it.
    pub broker: String,
    pub tls: TlsConfig,
    /// Free text naming this client in the broker's logs.
    pub client_id: String,
    /// Longest wait for the answer to one request (default 30 s).
    pub request_timeout: Duration,
    /// Largest frame accepted from the broker (default the protocol's 16 MiB).
    pub max_frame_bytes: usize,
    /// Longest wait for the QUIC and TLS handshake with the broker (default 10 s). UDP gives no
    /// "connection refused", so this is how long it takes to notice a broker that is not there.
    pub connect_timeout: Duration,
    /// Congestion controller for what this client sends (default Cubic).
    pub congestion: QuicCongestion,
    /// The client certificate to present, for brokers that require mutual TLS (default none).
    pub identity: Option<crate::tls::ClientIdentity>,
    /// A password or token to authenticate with on every connection, for brokers with
    /// `client_auth = "credentials"` (default none).
    pub credentials: Option<Credentials>,
}

/// What a client authenticates with on a connection (docs/security.md). Its `Debug` never
/// shows the password or token.
#[derive(Clone)]
pub enum Credentials {
    /// SCRAM-SHA-256: the password never leaves the client.
    Password { user: String, password: String },
    /// An API token from `sluice token create`.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => {
                write!(f, "Password {{ user: {user:?}, password: <hidden> }}")
            }
            Credentials::Token(_) => write!(f, "Token(<hidden>)"),
        }
    }
}

/// How much the brokers' quotas have held this client's answers back.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    answers: AtomicU64,
    millis: AtomicU64,
}

impl Throttle {
    pub(crate) fn record(&self, ms: u32) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        self.millis.fetch_add(u64::from(ms), Ordering::Relaxed);
    }
}

/// Answers held back by a quota, and for how long in all ([`Client::throttled`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    pub answers: u64,
    pub total: Duration,
}

impl ClientConfig {
    pub fn new(broker: impl Into<String>, tls: TlsConfig) -> Self {
        ClientConfig {
            broker: broker.into(),
            tls,
            client_id: format!("sluice-client/{}", env!("CARGO_PKG_VERSION")),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(10),
            congestion: QuicCongestion::default(),
            identity: None,
            credentials: None,
        }
    }
}

/// A client of one cluster. Cheap to clone: clones share the connections and the metadata cache.
///
/// Requests that any broker answers (topic administration, groups, metadata) go to the
/// bootstrap broker — the first of the configured list that answered, or the next reachable one
/// when it stops answering. Produce and fetch go to each partition's leader, from a cache that
/// is refreshed when a broker says it does not lead (or no longer knows the epoch) and when an
/// entry is older than the caller's maximum age. A dropped connection is opened again by the
/// next request, so a long-lived producer or consumer survives a broker restart.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

/// What every connection of a client shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    pub(crate) quic: quinn::ClientConfig,
    /// Set by [`Client::close`]: no reconnecting after that.
    pub(crate) closed: AtomicBool,
    /// The cluster of the first broker that answered; every other must belong to it.
    cluster_id: OnceLock<String>,
    pub(crate) throttle: Throttle,
}

impl Shared {
    pub(crate) fn cluster_id(&self) -> &str {
        self.cluster_id.get().map_or("", String::as_str)
    }
}

#[derive(Debug)]
struct ClientInner {
    shared: Arc<Shared>,
    /// The bootstrap broker's node id, from its Hello.
    node_id: u32,
    /// Largest frame the brokers accept, from the bootstrap broker's Hello.
    broker_max_frame: usize,
    /// The configured bootstrap addresses.
    bootstrap: Vec<String>,
    /// Where requests that any broker answers go. A `std` mutex: never held across an await.
    home: Mutex<Arc<Conn>>,
    /// Connections by node id (the bootstrap broker's among them).
    nodes: Mutex<HashMap<u32, Arc<Conn>>>,
    routes: Mutex<Routes>,
    /// The coordinator of each consumer group this client has asked about.
    coordinators: Mutex<HashMap<String, u32>>,
    /// Serialises metadata refreshes, so a burst of "not the leader" answers makes one.
    refreshing: tokio::sync::Mutex<()>,
}

/// The metadata cache.
#[derive(Debug, Default)]
struct Routes {
    /// Client address of each broker, by node id.
    brokers: HashMap<u32, String>,
    topics: HashMap<String, Arc<TopicRoute>>,
}

/// A topic's partitions and their leaders, as one metadata answer gave them.
#[derive(Debug)]
pub(crate) struct TopicRoute {
    pub(crate) name: Arc<str>,
    pub(crate) partitions: Vec<PartitionRoute>,
    /// Whether a partitioner plugin places records the producer did not place itself.
    pub(crate) partitioner: bool,
    fetched: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionRoute {
    pub(crate) leader: Option<u32>,
    pub(crate) leader_epoch: u32,
}

impl Client {
    /// Connects to the first bootstrap broker that answers (a QUIC connection verified
    /// against `config.tls`, and a protocol version negotiated). A TLS failure is reported at
    /// once: trying the next broker would hide it.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let bootstrap: Vec<String> = config
            .broker
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if bootstrap.is_empty() {
            return Err(ClientError::InvalidConfig(
                "no broker address given; expected host:port[,host:port...]".into(),
            ));
        }
        for addr in &bootstrap {
            split_host_port(addr)?;
        }
        let rustls = rustls_client_config(&config.tls, config.identity.as_ref())?;
        let crypto = QuicClientConfig::try_from(rustls)
            .map_err(|e| ClientError::InvalidConfig(format!("TLS for QUIC: {e}")))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        quic.transport_config(Arc::new(transport_config(config.congestion)));
        let shared = Arc::new(Shared {
            config,
            quic,
            closed: AtomicBool::new(false),
            cluster_id: OnceLock::new(),
            throttle: Throttle::default(),
        });
        let mut last_err = None;
        for addr in &bootstrap {
            let conn = Arc::new(Conn::lazy(addr, shared.clone())?);
            let hello = match conn.open().await {
                Ok(hello) => hello,
                Err(e @ (ClientError::Connect(_) | ClientError::Timeout)) => {
                    debug!(broker = %addr, cause = %e, "bootstrap broker did not answer");
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let _ = shared.cluster_id.set(hello.cluster_id.clone());
            info!(
                broker = %addr,
                node_id = hello.node_id,
                cluster_id = %hello.cluster_id,
                version = hello.version,
                "connected"
            );
            return Ok(Client {
                inner: Arc::new(ClientInner {
                    shared,
                    node_id: hello.node_id,
                    broker_max_frame: hello.max_frame_bytes as usize,
                    bootstrap,
                    home: Mutex::new(conn.clone()),
                    nodes: Mutex::new(HashMap::from([(hello.node_id, conn)])),
                    routes: Mutex::new(Routes::default()),
                    coordinators: Mutex::new(HashMap::new()),
                    refreshing: tokio::sync::Mutex::new(()),
                }),
            });
        }
        Err(last_err.expect("at least one bootstrap address was tried"))
    }

    /// Sends one request where the cluster answers it and waits (up to `request_timeout`) for
    /// the answer. A broker error comes back as [`ClientError::Broker`].
    ///
    /// - A request about one consumer group goes to the group's coordinator (found with
    ///   `FindCoordinator` and remembered; asked again after `NotCoordinator` or a lost
    ///   connection).
    /// - `ListGroups` goes to every broker (each lists the groups it coordinates), and the
    ///   answers are joined.
    /// - Everything else goes to the bootstrap broker (or, when it cannot be reached, the next
    ///   reachable broker of the cluster). Produce and fetch work there only for partitions it
    ///   leads; the producer and consumer route those themselves.
    ///
    /// `Produce` with [`Acks::None`](sluice_proto::Acks::None) gets no answer from the broker:
    /// this returns as soon as the frame is written, with a `ProduceResponse` whose
    /// `base_offset` is `u64::MAX`.
    pub async fn request(
        &self,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        self.check_size(&request, &raw)?;
        if let Some(group) = request.group() {
            let group = group.to_owned();
            return self.to_coordinator(&group, request, raw).await;
        }
        if matches!(request, Request::ListGroups) {
            return self.list_groups_everywhere().await;
        }
        self.to_home(request, raw).await
    }

    /// The principal the (bootstrap) broker takes this client for, and the mechanism that
    /// established it (`none`: `ANONYMOUS`; `mtls`: the certificate's name).
    pub async fn who_am_i(&self) -> Result<(String, String), ClientError> {
        match self.request(Request::WhoAmI, Bytes::new()).await? {
            (
                ResponseBody::WhoAmI {
                    principal,
                    mechanism,
                },
                _,
            ) => Ok((principal, mechanism)),
            (other, _) => Err(ClientError::UnexpectedResponse(format!(
                "expected WhoAmI, got {other:?}"
            ))),
        }
    }

    async fn to_home(
        &self,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        let home = self.home();
        match home.request(request.clone(), raw.clone()).await {
            // No answer: the broker may be gone without a word (a crash sends nothing over
            // UDP). Dropping the connection makes the next request dial again, and fail over
            // to another broker if this one does not answer the handshake.
            Err(e @ (ClientError::Timeout | ClientError::ConnectionLost(_))) => {
                debug!(broker = %home.addr, cause = %e, "no answer; dropping the connection");
                home.close();
                Err(e)
            }
            // Nothing was sent: another broker can take it.
            Err(e @ ClientError::Connect(_)) => {
                let Some(other) = self.reachable_other_than(&home.addr).await else {
                    return Err(e);
                };
                other.request(request, raw).await
            }
            done => done,
        }
    }

    /// Sends a group request to the group's coordinator. A `NotCoordinator` answer (the
    /// coordinator moved) is retried once at the one the cluster names now.
    async fn to_coordinator(
        &self,
        group: &str,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        let mut looked_up = false;
        loop {
            let cached = self.inner.coordinators.lock().unwrap().get(group).copied();
            let node = match cached {
                Some(node) => node,
                None => {
                    looked_up = true;
                    self.find_coordinator(group).await?
                }
            };
            let result = match self.conn_to(node).await {
                Ok(conn) => conn.request(request.clone(), raw.clone()).await,
                Err(e) => Err(e),
            };
            let moved =
                matches!(&result, Err(e) if e.wire_code() == Some(ErrorCode::NotCoordinator));
            let lost = matches!(
                &result,
                Err(ClientError::Connect(_)
                    | ClientError::ConnectionLost(_)
                    | ClientError::Timeout)
            );
            if moved || lost {
                self.inner.coordinators.lock().unwrap().remove(group);
            }
            if moved && !looked_up {
                continue;
            }
            return result;
        }
    }

    /// Asks any broker which node coordinates `group`, and remembers it.
    pub async fn find_coordinator(&self, group: &str) -> Result<u32, ClientError> {
        let request = Request::FindCoordinator {
            group: group.to_owned(),
        };
        let info = match self.to_home(request, Bytes::new()).await? {
            (ResponseBody::Coordinator(info), _) => info,
            (other, _) => return Err(unexpected("Coordinator", &other)),
        };
        self.learn_broker(info.node_id, &info.addr);
        self.inner
            .coordinators
            .lock()
            .unwrap()
            .insert(group.to_owned(), info.node_id);
        Ok(info.node_id)
    }

    /// Asks every broker of the cluster for the groups it coordinates.
    async fn list_groups_everywhere(&self) -> Result<(ResponseBody, Bytes), ClientError> {
        let meta = self.metadata(Some(Vec::new())).await?;
        let mut nodes: Vec<u32> = meta.brokers.iter().map(|b| b.node_id).collect();
        if nodes.is_empty() {
            nodes.push(self.inner.node_id);
        }
        let asks = nodes.into_iter().map(|node| async move {
            self.conn_to(node)
                .await?
                .request(Request::ListGroups, Bytes::new())
                .await
        });
        let mut groups = Vec::new();
        for answer in futures::future::join_all(asks).await {
            match answer? {
                (ResponseBody::Groups(g), _) => groups.extend(g),
                (other, _) => return Err(unexpected("Groups", &other)),
            }
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok((ResponseBody::Groups(groups), Bytes::new()))
    }

    /// Sends one request to broker `node` and waits for its answer.
    pub async fn request_to(
        &self,
        node: u32,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        self.check_size(&request, &raw)?;
        self.conn_to(node).await?.request(request, raw).await
    }

    fn check_size(&self, request: &Request, raw: &Bytes) -> Result<(), ClientError> {
        let max = self.inner.broker_max_frame;
        // Only a large raw part can push a frame past the limit; control messages are small.
        if raw.len() + 64 * 1024 > max {
            let size = frame::encode_frame(request, &[])
                .map_err(ClientError::from_proto)?
                .len()
                - 4
                + raw.len();
            if size > max {
                return Err(ClientError::RequestTooLarge { size, max });
            }
        }
        Ok(())
    }

    fn home(&self) -> Arc<Conn> {
        self.inner.home.lock().unwrap().clone()
    }

    /// Finds a broker other than `failed` that answers, makes it the one requests go to, and
    /// returns it: known brokers first, then the bootstrap list.
    async fn reachable_other_than(&self, failed: &str) -> Option<Arc<Conn>> {
        let mut candidates: Vec<String> = {
            let routes = self.inner.routes.lock().unwrap();
            routes.brokers.values().cloned().collect()
        };
        candidates.sort();
        candidates.extend(self.inner.bootstrap.iter().cloned());
        candidates.dedup();
        for addr in candidates.into_iter().filter(|a| a != failed) {
            let Ok(conn) = Conn::lazy(&addr, self.inner.shared.clone()) else {
                continue;
            };
            let conn = Arc::new(conn);
            if conn.connection().await.is_ok() {
                debug!(from = %failed, to = %addr, "bootstrap broker unreachable; using another");
                *self.inner.home.lock().unwrap() = conn.clone();
                return Some(conn);
            }
        }
        None
    }

    /// The connection to broker `node`, made (not yet opened) if there is none; its address
    /// comes from the metadata, refreshed once if the node is not in it.
    pub(crate) async fn conn_to(&self, node: u32) -> Result<Arc<Conn>, ClientError> {
        if let Some(c) = self.known_conn(node)? {
            return Ok(c);
        }
        self.metadata(Some(Vec::new())).await?;
        self.known_conn(node)?.ok_or_else(|| {
            ClientError::Broker(WireError::new(
                ErrorCode::LeaderNotAvailable,
                format!("broker {node} is not in the cluster's metadata; retry shortly"),
            ))
        })
    }

    fn known_conn(&self, node: u32) -> Result<Option<Arc<Conn>>, ClientError> {
        if let Some(c) = self.inner.nodes.lock().unwrap().get(&node) {
            return Ok(Some(c.clone()));
        }
        let addr = self
            .inner
            .routes
            .lock()
            .unwrap()
            .brokers
            .get(&node)
            .cloned();
        let Some(addr) = addr else { return Ok(None) };
        let conn = Arc::new(Conn::lazy(&addr, self.inner.shared.clone())?);
        let mut nodes = self.inner.nodes.lock().unwrap();
        Ok(Some(nodes.entry(node).or_insert(conn).clone()))
    }

    /// Brokers, topics, partitions and leaders; `None` asks about every topic. The answer
    /// refreshes the client's cache of leaders.
    pub async fn metadata(
        &self,
        topics: Option<Vec<String>>,
    ) -> Result<MetadataResponse, ClientError> {
        let asked = topics.clone();
        let meta = match self
            .to_home(Request::Metadata { topics }, Bytes::new())
            .await?
        {
            (ResponseBody::Metadata(m), _) => m,
            (other, _) => return Err(unexpected("Metadata", &other)),
        };
        self.learn(&meta, asked.as_deref());
        Ok(meta)
    }

    /// Records a broker's address; a connection to its old address, if it moved, is dropped.
    fn learn_broker(&self, node: u32, addr: &str) {
        let moved = {
            let mut routes = self.inner.routes.lock().unwrap();
            routes
                .brokers
                .insert(node, addr.to_owned())
                .is_some_and(|old| old != addr)
        };
        if moved {
            self.inner.nodes.lock().unwrap().remove(&node);
        }
    }

    /// Takes a metadata answer into the cache. Topics asked about and absent are dropped.
    fn learn(&self, meta: &MetadataResponse, asked: Option<&[String]>) {
        let now = Instant::now();
        for b in &meta.brokers {
            self.learn_broker(b.node_id, &b.addr);
        }
        {
            let mut routes = self.inner.routes.lock().unwrap();
            if let Some(asked) = asked {
                for t in asked {
                    routes.topics.remove(t);
                }
            }
            for t in &meta.topics {
                let route = TopicRoute {
                    name: Arc::from(t.name.as_str()),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| PartitionRoute {
                            leader: p.leader,
                            leader_epoch: p.leader_epoch,
                        })
                        .collect(),
                    partitioner: t.partitioner.is_some(),
                    fetched: now,
                };
                routes.topics.insert(t.name.clone(), Arc::new(route));
            }
        }
    }

    /// The topic's partitions and leaders, from the cache if no older than `max_age`, else
    /// from the cluster. An unknown topic is [`ErrorCode::UnknownTopic`].
    pub(crate) async fn topic_route(
        &self,
        topic: &str,
        max_age: Duration,
    ) -> Result<Arc<TopicRoute>, ClientError> {
        if let Some(r) = self.cached_route(topic, max_age) {
            return Ok(r);
        }
        self.refresh_topic(topic).await?;
        self.cached_route(topic, Duration::MAX)
            .ok_or_else(|| crate::producer::unknown_topic(topic))
    }

    fn cached_route(&self, topic: &str, max_age: Duration) -> Option<Arc<TopicRoute>> {
        let routes = self.inner.routes.lock().unwrap();
        routes
            .topics
            .get(topic)
            .filter(|r| r.fetched.elapsed() < max_age)
            .cloned()
    }

    /// Asks the cluster about `topic` again, unless another caller did while this one waited.
    pub(crate) async fn refresh_topic(&self, topic: &str) -> Result<(), ClientError> {
        let asked_at = Instant::now();
        let _one = self.inner.refreshing.lock().await;
        if self
            .cached_route(topic, Duration::MAX)
            .is_some_and(|r| r.fetched >= asked_at)
        {
            return Ok(());
        }
        self.metadata(Some(vec![topic.to_string()]))
            .await
            .map(|_| ())
    }

    /// The cached leader and leader epoch of a partition; `None` when the cache has no entry
    /// for the topic or the partition has no leader.
    pub(crate) fn cached_leader(&self, topic: &str, partition: u32) -> Option<(u32, u32)> {
        let routes = self.inner.routes.lock().unwrap();
        let p = routes
            .topics
            .get(topic)?
            .partitions
            .get(partition as usize)?;
        Some((p.leader?, p.leader_epoch))
    }

    /// Forgets what the cache says about `topic`: the next use asks the cluster.
    pub(crate) fn invalidate(&self, topic: &str) {
        self.inner.routes.lock().unwrap().topics.remove(topic);
    }

    /// Whether an error means the cache's leaders for the topic are out of date.
    pub(crate) fn means_stale_route(e: &ClientError) -> bool {
        matches!(
            e.wire_code(),
            Some(
                ErrorCode::NotLeader
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::FencedLeaderEpoch
                    | ErrorCode::UnknownLeaderEpoch
                    | ErrorCode::UnknownPartition
                    | ErrorCode::UnknownTopic
            )
        ) || matches!(
            e,
            ClientError::Connect(_) | ClientError::ConnectionLost(_) | ClientError::Timeout
        )
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// Starts a producer; its background task lives until every clone of it is dropped and
    /// what it holds is delivered.
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::new(self.clone(), config)
    }

    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::new(self.clone(), config)
    }

    /// How much the brokers' quotas have held this client's answers back so far (each held
    /// answer says for how long; a producer or consumer over its quota runs at it).
    pub fn throttled(&self) -> ThrottleStats {
        let t = &self.inner.shared.throttle;
        ThrottleStats {
            answers: t.answers.load(Ordering::Relaxed),
            total: Duration::from_millis(t.millis.load(Ordering::Relaxed)),
        }
    }

    /// Node id of the bootstrap broker, from its Hello.
    pub fn node_id(&self) -> u32 {
        self.inner.node_id
    }

    pub fn cluster_id(&self) -> &str {
        self.inner.shared.cluster_id()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.shared.config
    }

    /// Largest frame the broker accepts, from its Hello.
    pub fn broker_max_frame_bytes(&self) -> usize {
        self.inner.broker_max_frame
    }

    /// Closes every connection for every clone; outstanding requests fail with a connection
    /// error and later ones with [`ClientError::Closed`].
    pub fn close(&self) {
        self.inner.shared.closed.store(true, Ordering::Relaxed);
        self.home().close();
        for conn in self.inner.nodes.lock().unwrap().values() {
            conn.close();
        }
    }

    /// A lane to broker `node` if its address is known, without waiting.
    pub(crate) fn lane_to_known(&self, node: u32) -> Result<Option<Lane>, ClientError> {
        Ok(self
            .known_conn(node)?
            .map(|conn| Lane::spawn(conn, self.inner.shared.config.max_frame_bytes)))
    }

    /// A lane to wherever requests any broker answers go.
    pub(crate) fn home_lane(&self) -> Lane {
        Lane::spawn(self.home(), self.inner.shared.config.max_frame_bytes)
    }
}
