//! One QUIC connection to one broker: opened lazily, said Hello on, and opened again (with a
//! fresh Hello) when it drops. A [`Client`](crate::Client) keeps one per broker it talks to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::auth::{AuthReply, AuthStep};
use sluice_proto::frame;
use sluice_proto::{
    Acks, HelloRequest, HelloResponse, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ProduceResponse,
    Request, Response, ResponseBody, WireError,
};
use tracing::debug;

use crate::ClientError;
use crate::client::Shared;

/// A connection to the broker at one address.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) addr: String,
    host: String,
    port: u16,
    pub(crate) shared: Arc<Shared>,
    /// A `std` mutex: held only to clone or swap the handle, never across an await.
    live: Mutex<Option<Live>>,
    /// Serialises reconnects so that a burst of failing requests opens one connection, not many.
    reconnecting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// Kept beside its connection: dropping the endpoint would close the connection.
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl Conn {
    /// A connection to `addr`, opened on first use.
    pub(crate) fn lazy(addr: &str, shared: Arc<Shared>) -> Result<Conn, ClientError> {
        let (host, port) = split_host_port(addr)?;
        Ok(Conn {
            addr: addr.to_string(),
            host,
            port,
            shared,
            live: Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Opens the connection now and returns the broker's Hello.
    pub(crate) async fn open(&self) -> Result<HelloResponse, ClientError> {
        let _guard = self.reconnecting.lock().await;
        let (live, hello) = establish(&self.addr, &self.shared, &self.host, self.port).await?;
        *self.live.lock().unwrap() = Some(live);
        Ok(hello)
    }

    /// Sends one request on a new stream and waits (up to `request_timeout`) for its answer.
    pub(crate) async fn request(
        &self,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        let timeout = self.shared.config.request_timeout;
        tokio::time::timeout(timeout, self.request_inner(request, raw))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn request_inner(
        &self,
        request: Request,
        raw: Bytes,
    ) -> Result<(ResponseBody, Bytes), ClientError> {
        let connection = self.connection().await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(connection_error)?;
        send_frame(&mut send, &request, raw)
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
        read_response(
            &mut recv,
            self.shared.config.max_frame_bytes,
            &self.shared.throttle,
        )
        .await
    }

    /// The live connection, (re)connecting (with a fresh Hello) if there is none open.
    pub(crate) async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        if let Some(c) = self.current_if_open() {
            return Ok(c);
        }
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(ClientError::Closed);
        }
        let _guard = self.reconnecting.lock().await;
        if let Some(c) = self.current_if_open() {
            return Ok(c);
        }
        debug!(broker = %self.addr, "no open connection; connecting");
        let (live, hello) = establish(&self.addr, &self.shared, &self.host, self.port).await?;
        if hello.cluster_id != self.shared.cluster_id() {
            return Err(ClientError::UnexpectedResponse(format!(
                "the broker at {} belongs to cluster {:?}, not {:?}",
                self.addr,
                hello.cluster_id,
                self.shared.cluster_id()
            )));
        }
        let connection = live.connection.clone();
        *self.live.lock().unwrap() = Some(live);
        Ok(connection)
    }

    fn current_if_open(&self) -> Option<quinn::Connection> {
        let live = self.live.lock().unwrap();
        live.as_ref()
            .filter(|l| l.connection.close_reason().is_none())
            .map(|l| l.connection.clone())
    }

    /// Closes the connection, if open.
    pub(crate) fn close(&self) {
        if let Some(live) = self.live.lock().unwrap().as_ref() {
            live.connection.close(0u32.into(), b"client closed");
        }
    }
}

/// The congestion controller of a QUIC connection's sending side (docs/performance.md,
/// "Transport settings": on loopback Cubic and NewReno measured alike and BBR's pacing held a
/// consumer to two thirds of their rate; Cubic, quinn's default, is the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuicCongestion {
    #[default]
    Cubic,
    NewReno,
    Bbr,
}

impl QuicCongestion {
    /// Sets this controller on `transport`.
    pub fn apply(self, transport: &mut quinn::TransportConfig) {
        use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
        match self {
            QuicCongestion::Cubic => {
                transport.congestion_controller_factory(Arc::new(CubicConfig::default()))
            }
            QuicCongestion::NewReno => {
                transport.congestion_controller_factory(Arc::new(NewRenoConfig::default()))
            }
            QuicCongestion::Bbr => {
                transport.congestion_controller_factory(Arc::new(BbrConfig::default()))
            }
        };
    }
}

pub(crate) fn transport_config(congestion: QuicCongestion) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    congestion.apply(&mut t);
    // Keep idle connections (a producer between bursts) from hitting the idle timeout, and
    // notice a broker that died without a word within 15 s rather than quinn's 30.
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(15)).expect("15 s fits a QUIC varint"),
    ));
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
    target: &str,
    shared: &Shared,
    host: &str,
    port: u16,
) -> Result<(Live, HelloResponse), ClientError> {
    let config = &shared.config;
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
            connect_one(target, shared, host, addr),
        )
        .await
        {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e @ ClientError::Tls(_))) => return Err(e),
            Ok(Err(e @ ClientError::Broker(_))) => return Err(e),
            Ok(Err(e @ ClientError::Authentication(_))) => return Err(e),
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
    target: &str,
    shared: &Shared,
    host: &str,
    addr: SocketAddr,
) -> Result<(Live, HelloResponse), ClientError> {
    let (config, quic) = (&shared.config, &shared.quic);
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
    let exchange = async {
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
        read_response(&mut recv, config.max_frame_bytes, &shared.throttle).await
    };
    let hello = match exchange.await {
        Ok((ResponseBody::Hello(h), _)) => h,
        Ok((other, _)) => return Err(unexpected("Hello", &other)),
        // TLS 1.3 checks the client's certificate after the client has finished its side of
        // the handshake: a refusal closes the connection under the first request. Its reason
        // says more than the stream's error.
        Err(e) => return Err(connection.close_reason().map_or(e, connection_error)),
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        return Err(ClientError::UnexpectedResponse(format!(
            "broker chose protocol version {}, but this client speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
            hello.version
        )));
    }
    if let Some(credentials) = &config.credentials {
        authenticate(&connection, shared, credentials)
            .await
            .map_err(|e| match e {
                ClientError::Broker(w) => ClientError::Broker(WireError::new(
                    w.code,
                    format!("broker at {target}: {}", w.message),
                )),
                other => other,
            })?;
    }
    Ok((
        Live {
            _endpoint: endpoint,
            connection,
        },
        hello,
    ))
}

/// One request on its own stream, before the connection is handed out (Hello's way).
async fn exchange(
    connection: &quinn::Connection,
    shared: &Shared,
    request: &Request,
) -> Result<ResponseBody, ClientError> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(connection_error)?;
    frame::write_frame(&mut send, request, &[])
        .await
        .map_err(ClientError::from_proto)?;
    let _ = send.finish();
    let (body, _) =
        read_response(&mut recv, shared.config.max_frame_bytes, &shared.throttle).await?;
    Ok(body)
}

/// Authenticates a fresh connection with a password (SCRAM-SHA-256: the password never
/// leaves this process) or a token, and checks a SCRAM broker's proof that it holds the
/// credential too.
async fn authenticate(
    connection: &quinn::Connection,
    shared: &Shared,
    credentials: &crate::Credentials,
) -> Result<(), ClientError> {
    let step = |s| Request::Authenticate(s);
    let refused = |what: &str| {
        ClientError::Authentication(format!("the broker answered {what} unexpectedly"))
    };
    match credentials {
        crate::Credentials::Token(token) => {
            match exchange(
                connection,
                shared,
                &step(AuthStep::Token {
                    token: token.clone(),
                }),
            )
            .await?
            {
                ResponseBody::Authenticated(AuthReply::Done { principal, .. }) => {
                    debug!(%principal, "authenticated with a token");
                    Ok(())
                }
                _ => Err(refused("a token")),
            }
        }
        crate::Credentials::Password { user, password } => {
            let (client, first) = crate::scram::ClientFirst::new(user)
                .map_err(|e| ClientError::Authentication(e.to_string()))?;
            let server_first = match exchange(
                connection,
                shared,
                &step(AuthStep::ScramFirst { message: first }),
            )
            .await?
            {
                ResponseBody::Authenticated(AuthReply::ScramContinue { message }) => message,
                _ => return Err(refused("SCRAM's first message")),
            };
            let (check, last) = client
                .finish(password, &server_first)
                .map_err(|e| ClientError::Authentication(e.to_string()))?;
            match exchange(
                connection,
                shared,
                &step(AuthStep::ScramFinal { message: last }),
            )
            .await?
            {
                ResponseBody::Authenticated(AuthReply::Done {
                    principal,
                    server_final: Some(server_final),
                    ..
                }) => {
                    check
                        .verify(&server_final)
                        .map_err(|e| ClientError::Authentication(e.to_string()))?;
                    debug!(%principal, "authenticated with SCRAM-SHA-256");
                    Ok(())
                }
                _ => Err(refused("SCRAM's final message")),
            }
        }
    }
}

/// Reads one response frame and turns a broker error into [`ClientError::Broker`].
pub(crate) async fn read_response(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
    throttle: &crate::client::Throttle,
) -> Result<(ResponseBody, Bytes), ClientError> {
    let body = frame::read_frame(recv, max_frame)
        .await
        .map_err(ClientError::from_proto)?
        .ok_or_else(|| {
            ClientError::ConnectionLost("the broker closed the stream without answering".into())
        })?;
    decode_response(body, throttle)
}

/// Decodes a response frame; an answer a quota held back is counted in `throttle` and
/// unwrapped.
pub(crate) fn decode_response(
    body: Bytes,
    throttle: &crate::client::Throttle,
) -> Result<(ResponseBody, Bytes), ClientError> {
    let (response, raw): (Response, Bytes) =
        frame::decode_body(body).map_err(ClientError::Protocol)?;
    match response {
        Ok(ResponseBody::Throttled { throttle_ms, body }) => {
            throttle.record(throttle_ms);
            debug!(throttle_ms, "answer held back by the broker's quota");
            if matches!(*body, ResponseBody::Throttled { .. }) {
                return Err(ClientError::UnexpectedResponse(
                    "a throttled answer inside another".into(),
                ));
            }
            Ok((*body, raw))
        }
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
                "TLS handshake with broker at {target} ({addr}) failed: the broker refused it: {c}{}",
                client_certificate_hint(c.error_code)
            ))
        }
        _ => ClientError::Connect(format!("could not reach broker at {target} ({addr}): {e}")),
    }
}

/// What to do about a TLS alert the broker closed the connection with, when it is about the
/// client's own certificate (TLS 1.3 checks it after the client thinks the handshake is done,
/// so the refusal can arrive with the first request).
fn client_certificate_hint(code: quinn::TransportErrorCode) -> &'static str {
    // 0x100 + the TLS alert: certificate_required (116), bad_certificate (42),
    // unsupported_certificate (43), certificate_expired (45), certificate_unknown (46),
    // unknown_ca (48), access_denied (49), decrypt_error (51: signed by another key).
    match u64::from(code) {
        0x174 => {
            " — the broker requires a client certificate (mTLS): pass one with --tls-cert and --tls-key (sluice auth issue-cert makes one for development)"
        }
        0x12a | 0x12b | 0x12d | 0x12e | 0x130 | 0x131 | 0x133 => {
            " — the broker did not accept this client certificate: it must be signed by the broker's client CA, current, and for client authentication"
        }
        _ => "",
    }
}

pub(crate) fn connection_error(e: quinn::ConnectionError) -> ClientError {
    match &e {
        quinn::ConnectionError::ConnectionClosed(c) if is_tls_code(c.error_code) => {
            ClientError::Tls(format!(
                "the broker closed the connection: {c}{}",
                client_certificate_hint(c.error_code)
            ))
        }
        _ => ClientError::ConnectionLost(e.to_string()),
    }
}

/// Writes one frame on a QUIC stream, handing quinn the raw bytes as they are (a `Bytes`
/// chunk it keeps until acknowledged) rather than a slice it would copy.
pub async fn send_frame<T: serde::Serialize>(
    send: &mut quinn::SendStream,
    control: &T,
    raw: Bytes,
) -> Result<(), sluice_proto::ProtoError> {
    let head = Bytes::from(frame::encode_head(control, raw.len())?);
    let written = if raw.is_empty() {
        send.write_all_chunks(&mut [head]).await
    } else {
        send.write_all_chunks(&mut [head, raw]).await
    };
    written.map_err(|e| sluice_proto::ProtoError::from(std::io::Error::from(e)))
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
