//! The connection to a broker: one QUIC connection shared by everything made from a [`Client`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use sluice_proto::frame::{self, DEFAULT_MAX_FRAME};
use sluice_proto::{
    Acks, HelloRequest, HelloResponse, MIN_PROTOCOL_VERSION, MetadataResponse, PROTOCOL_VERSION,
    ProduceResponse, Request, Response, ResponseBody,
};
use tracing::{debug, info};

use crate::lane::Lane;
use crate::tls::rustls_client_config;
use crate::{Admin, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, TlsConfig};

/// How to reach and trust a broker.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of a broker; `[v6addr]:port` for IPv6 literals.
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
        }
    }
}

/// A connection to one broker. Cheap to clone: clones share the connection.
///
/// If the connection drops (the broker restarted, the network blipped), the next request opens
/// a new one, so a long-lived producer or consumer survives a broker restart.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    config: ClientConfig,
    quic: quinn::ClientConfig,
    host: String,
    port: u16,
    node_id: u32,
    cluster_id: String,
    /// Largest frame the broker accepts, from its Hello.
    broker_max_frame: usize,
    /// A `std` mutex: held only to clone or swap the handle, never across an await.
    live: Mutex<Live>,
    /// Serialises reconnects so that a burst of failing requests opens one connection, not many.
    reconnecting: tokio::sync::Mutex<()>,
    /// Set by [`Client::close`]: no reconnecting after that.
    closed: AtomicBool,
}

#[derive(Debug, Clone)]
struct Live {
    /// Kept beside its connection: dropping the endpoint would close the connection.
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl Client {
    /// Resolves the broker's address, opens a QUIC connection verified against `config.tls`,
    /// and negotiates the protocol version.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (host, port) = split_host_port(&config.broker)?;
        let rustls = rustls_client_config(&config.tls)?;
        let crypto = QuicClientConfig::try_from(rustls)
            .map_err(|e| ClientError::InvalidConfig(format!("TLS for QUIC: {e}")))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        quic.transport_config(Arc::new(transport_config()));
        let (live, hello) = establish(&config, &quic, &host, port).await?;
        info!(
            broker = %config.broker,
            node_id = hello.node_id,
            cluster_id = %hello.cluster_id,
            version = hello.version,
            "connected"
        );
        Ok(Client {
            inner: Arc::new(ClientInner {
                host,
                port,
                node_id: hello.node_id,
                cluster_id: hello.cluster_id,
                broker_max_frame: hello.max_frame_bytes as usize,
                quic,
                config,
                live: Mutex::new(live),
                reconnecting: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Sends one request on a new stream and waits (up to `request_timeout`) for its answer.
    /// A broker error comes back as [`ClientError::Broker`].
    ///
    /// `Produce` with [`Acks::None`] gets no answer from the broker: this returns as soon as
    /// the frame is written, with a `ProduceResponse` whose `base_offset` is `u64::MAX`.
    pub async fn request(
        &self,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        let timeout = self.inner.config.request_timeout;
        tokio::time::timeout(timeout, self.request_inner(request, raw))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn request_inner(
        &self,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        let max = self.inner.broker_max_frame;
        // Only a large raw part can push a frame past the limit; control messages are small.
        if raw.len() + 64 * 1024 > max {
            let size = frame::encode_frame(&request, &[])
                .map_err(ClientError::from_proto)?
                .len()
                - 4
                + raw.len();
            if size > max {
                return Err(ClientError::RequestTooLarge { size, max });
            }
        }
        let connection = self.connection().await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(connection_error)?;
        frame::write_frame(&mut send, &request, &raw)
            .await
            .map_err(ClientError::from_proto)?;
        // Telling the broker no more requests follow lets it close its side when done.
        let _ = send.finish();
        if let Request::Produce(p) = &request
            && p.acks == Acks::None
        {
            return Ok((
                ResponseBody::Produced(ProduceResponse {
                    base_offset: u64::MAX,
                    log_start: 0,
                    append_time: 0,
                }),
                Bytes::new(),
            ));
        }
        read_response(&mut recv, self.inner.config.max_frame_bytes).await
    }

    /// Brokers, topics, partitions and leaders; `None` asks about every topic.
    pub async fn metadata(
        &self,
        topics: Option<Vec<String>>,
    ) -> Result<MetadataResponse, ClientError> {
        match self
            .request(Request::Metadata { topics }, Bytes::new())
            .await?
        {
            (ResponseBody::Metadata(m), _) => Ok(m),
            (other, _) => Err(unexpected("Metadata", &other)),
        }
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

    /// Node id of the broker, from its Hello.
    pub fn node_id(&self) -> u32 {
        self.inner.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Largest frame the broker accepts, from its Hello.
    pub fn broker_max_frame_bytes(&self) -> usize {
        self.inner.broker_max_frame
    }

    /// Closes the connection for every clone; outstanding requests fail with a connection
    /// error and later ones with [`ClientError::Closed`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let live = self.inner.live.lock().unwrap().clone();
        live.connection.close(0u32.into(), b"client closed");
    }

    /// A long-lived pipelined stream (see [`Lane`]).
    pub(crate) fn lane(&self) -> Lane {
        Lane::spawn(self.clone(), self.inner.config.max_frame_bytes)
    }

    /// The live connection, reconnecting (with a fresh Hello) if the last one has closed.
    pub(crate) async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        if let Some(c) = self.current_if_open() {
            return Ok(c);
        }
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(ClientError::Closed);
        }
        let _guard = self.inner.reconnecting.lock().await;
        if let Some(c) = self.current_if_open() {
            return Ok(c);
        }
        let inner = &self.inner;
        debug!(broker = %inner.config.broker, "connection closed; reconnecting");
        let (live, hello) = establish(&inner.config, &inner.quic, &inner.host, inner.port).await?;
        if hello.cluster_id != inner.cluster_id {
            return Err(ClientError::UnexpectedResponse(format!(
                "reconnected to {} but it now belongs to cluster {:?}, not {:?}",
                inner.config.broker, hello.cluster_id, inner.cluster_id
            )));
        }
        let connection = live.connection.clone();
        *inner.live.lock().unwrap() = live;
        Ok(connection)
    }

    fn current_if_open(&self) -> Option<quinn::Connection> {
        let live = self.inner.live.lock().unwrap();
        live.connection
            .close_reason()
            .is_none()
            .then(|| live.connection.clone())
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Keep idle connections (a producer between bursts) from hitting the idle timeout.
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    // Room for a whole fetch response (8 MiB by default) in flight on one stream.
    t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    t
}

/// Splits `host:port`, accepting `[v6]:port`.
pub(crate) fn split_host_port(addr: &str) -> Result<(String, u16), ClientError> {
    let bad = |why: &str| {
        ClientError::InvalidConfig(format!(
            "broker address {addr:?} {why}; expected host:port, e.g. localhost:9092"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains(':') && !addr.starts_with('[') {
        return Err(bad("is an IPv6 address without brackets"));
    }
    let port = port.parse::<u16>().map_err(|_| bad("has a bad port"))?;
    Ok((host.to_string(), port))
}

/// Resolves, connects and says Hello. Tries IPv4 addresses first: a dev broker commonly binds
/// 0.0.0.0, and UDP sent to an unbound `::1` is met with silence until the connect timeout.
async fn establish(
    config: &ClientConfig,
    quic: &quinn::ClientConfig,
    host: &str,
    port: u16,
) -> Result<(Live, HelloResponse), ClientError> {
    let target = &config.broker;
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            ClientError::Connect(format!(
                "could not reach broker at {target}: cannot resolve {host:?}: {e}"
            ))
        })?
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.dedup();
    let mut last_err = ClientError::Connect(format!(
        "could not reach broker at {target}: {host:?} resolved to no address"
    ));
    for addr in addrs {
        match tokio::time::timeout(
            config.connect_timeout,
            connect_one(config, quic, host, addr),
        )
        .await
        {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e @ ClientError::Tls(_))) => return Err(e),
            Ok(Err(e @ ClientError::Broker(_))) => return Err(e),
            Ok(Err(e @ ClientError::UnexpectedResponse(_))) => return Err(e),
            Ok(Err(e)) => last_err = e,
            Err(_) => {
                last_err = ClientError::Connect(format!(
                    "could not reach broker at {target} ({addr}): no answer within {:?}",
                    config.connect_timeout
                ))
            }
        }
    }
    Err(last_err)
}

async fn connect_one(
    config: &ClientConfig,
    quic: &quinn::ClientConfig,
    host: &str,
    addr: SocketAddr,
) -> Result<(Live, HelloResponse), ClientError> {
    let target = &config.broker;
    let bind: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| {
        ClientError::Connect(format!(
            "could not reach broker at {target}: cannot open a UDP socket: {e}"
        ))
    })?;
    let connecting = endpoint
        .connect_with(quic.clone(), addr, host)
        .map_err(|e| ClientError::Connect(format!("could not reach broker at {target}: {e}")))?;
    let connection = connecting
        .await
        .map_err(|e| handshake_error(target, addr, e))?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(connection_error)?;
    let hello = Request::Hello(HelloRequest {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client_id: config.client_id.clone(),
    });
    frame::write_frame(&mut send, &hello, &[])
        .await
        .map_err(ClientError::from_proto)?;
    let _ = send.finish();
    let hello = match read_response(&mut recv, config.max_frame_bytes).await? {
        (ResponseBody::Hello(h), _) => h,
        (other, _) => return Err(unexpected("Hello", &other)),
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        return Err(ClientError::UnexpectedResponse(format!(
            "broker chose protocol version {}, but this client speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
            hello.version
        )));
    }
    Ok((
        Live {
            _endpoint: endpoint,
            connection,
        },
        hello,
    ))
}

/// Reads one response frame and turns a broker error into [`ClientError::Broker`].
pub(crate) async fn read_response(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
) -> Result<(ResponseBody, Bytes), ClientError> {
    let body = frame::read_frame(recv, max_frame)
        .await
        .map_err(ClientError::from_proto)?
        .ok_or_else(|| {
            ClientError::ConnectionLost("the broker closed the stream without answering".into())
        })?;
    decode_response(body)
}

pub(crate) fn decode_response(body: Bytes) -> Result<(ResponseBody, Bytes), ClientError> {
    let (response, raw): (Response, Bytes) =
        frame::decode_body(body).map_err(ClientError::Protocol)?;
    match response {
        Ok(body) => Ok((body, raw)),
        Err(e) => Err(ClientError::Broker(e)),
    }
}

pub(crate) fn unexpected(wanted: &str, got: &ResponseBody) -> ClientError {
    // The variant's name: its Debug text up to the first delimiter.
    let debug = format!("{got:?}");
    let name = debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("unknown");
    ClientError::UnexpectedResponse(format!("expected a {wanted} response, got {name}"))
}

/// TLS alerts travel as QUIC transport error codes 0x100..=0x1ff (RFC 9001 §4.8), whichever
/// side raised them; that is how a certificate problem is told apart from an unreachable host.
fn is_tls_code(code: quinn::TransportErrorCode) -> bool {
    u64::from(code) & !0xff == 0x100
}

fn handshake_error(target: &str, addr: SocketAddr, e: quinn::ConnectionError) -> ClientError {
    match &e {
        quinn::ConnectionError::TransportError(t) if is_tls_code(t.code) => ClientError::Tls(
            format!("TLS handshake with broker at {target} ({addr}) failed: {t}"),
        ),
        quinn::ConnectionError::ConnectionClosed(c) if is_tls_code(c.error_code) => {
            ClientError::Tls(format!(
                "TLS handshake with broker at {target} ({addr}) failed: the broker refused it: {c}"
            ))
        }
        _ => ClientError::Connect(format!("could not reach broker at {target} ({addr}): {e}")),
    }
}

pub(crate) fn connection_error(e: quinn::ConnectionError) -> ClientError {
    ClientError::ConnectionLost(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            split_host_port("localhost:9092").unwrap(),
            ("localhost".into(), 9092)
        );
        assert_eq!(split_host_port("[::1]:9092").unwrap(), ("::1".into(), 9092));
        assert!(split_host_port("localhost").is_err());
        assert!(split_host_port("::1:9092").is_err());
        assert!(split_host_port(":9092").is_err());
        assert!(split_host_port("h:99999").is_err());
    }

    #[test]
    fn tls_alert_codes() {
        assert!(is_tls_code(quinn::TransportErrorCode::crypto(42)));
        assert!(!is_tls_code(quinn::TransportErrorCode::PROTOCOL_VIOLATION));
    }
}
