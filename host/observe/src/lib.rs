//! What an operator watches a broker through: its metrics in the Prometheus text format on
//! `GET /metrics`, and its health on `GET /health/live` and `GET /health/ready`, over plain
//! HTTP/1.1 on a port of its own (docs/metrics.md).
//!
//! The broker records through the `metrics` facade (`metrics::counter!` and friends); this
//! crate installs the process's recorder ([`recorder`]), which keeps the figures and renders
//! them in the exposition format. Until a recorder is installed the facade's calls do
//! nothing, so a broker without a metrics listener pays next to nothing for them.
//!
//! Gauges that describe state rather than count events (log offsets, consumer lag, store
//! size) are set by a collector the broker installs ([`Endpoint::set_collector`]), which runs
//! just before each scrape renders.
//!
//! The listener faces whoever can reach its port: requests are HTTP/1.1 parsed by hyper with
//! a bound on the header bytes and the time to send them, at most [`MAX_CONNECTIONS`] are
//! served at once, and no request body is ever read.

pub mod scrape;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Most HTTP connections served at once; more wait for a slot (the kernel's backlog holds
/// them), so a flood of connections costs a bounded number of tasks.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers once it has started (or once the previous
/// answer on a kept-alive connection went out).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of request head the server buffers.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest a scrape waits for the collector; past it, the scrape renders what is there.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A gauge not set for this long is left out of scrapes (see [`recorder`]): every gauge must
/// be set by the collector, which runs before each scrape.
pub const GAUGE_IDLE: Duration = Duration::from_secs(5);
/// How often the recorder's histograms are drained into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Latency buckets (seconds) of every `*_seconds` histogram: 50 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Buckets of counts per event (`*_batches`, `*_records` histograms): 1 to 4,096.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Buckets of sizes (`*_bytes` histograms): 64 KiB to 4 GiB, by fours.
pub const BYTES_BUCKETS: &[f64] = &[
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's Prometheus recorder, installed on the first call (every later call returns
/// the same one: brokers started in one process share it). An error when another recorder
/// was installed first.
pub fn recorder() -> Result<PrometheusHandle, String> {
    RECORDER
        .get_or_init(|| {
            // Gauges are state, set by the collector just before each scrape renders; one not
            // set for a while describes something gone (a partition led elsewhere now, a
            // deleted topic, a group emptied) and is dropped rather than shown stale.
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_batches".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_records".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)
                })
                .map_err(|e| format!("metrics buckets: {e}"))?;
            let handle = builder
                .install_recorder()
                .map_err(|e| format!("installing the metrics recorder: {e}"))?;
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("sluice-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| format!("starting the metrics upkeep thread: {e}"))?;
            Ok(handle)
        })
        .clone()
}

/// What a path on the listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Live,
    Ready,
    NotFound,
    MethodNotAllowed,
}

/// Routes a request by method and path (the query, if any, is ignored).
pub fn route(method: &Method, path: &str) -> Route {
    let known = match path {
        "/metrics" => Route::Metrics,
        "/health/live" => Route::Live,
        "/health/ready" => Route::Ready,
        _ => return Route::NotFound,
    };
    if method == Method::GET || method == Method::HEAD {
        known
    } else {
        Route::MethodNotAllowed
    }
}

type Collector =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

struct State {
    handle: PrometheusHandle,
    /// When set, `/metrics` needs `Authorization: Bearer <this>`; health stays open.
    bearer: Option<String>,
    ready: AtomicBool,
    /// Why the node is not ready yet, for the answer's body.
    not_ready: Mutex<String>,
    collector: OnceLock<Collector>,
}

/// A running metrics and health listener. Dropping it stops accepting connections.
pub struct Endpoint {
    state: Arc<State>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `addr` (TCP) and serves from now on; the node is live at once and not ready
    /// until [`Endpoint::set_ready`]. With `bearer`, `/metrics` answers only requests that
    /// carry it (`Authorization: Bearer …`); the health endpoints stay open for probes.
    pub async fn start(addr: SocketAddr, bearer: Option<String>) -> Result<Endpoint, String> {
        let handle = recorder()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("metrics listener on {addr}: {e}"))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("metrics listener on {addr}: {e}"))?;
        let state = Arc::new(State {
            handle,
            bearer,
            ready: AtomicBool::new(false),
            not_ready: Mutex::new("starting".into()),
            collector: OnceLock::new(),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        tracing::info!(addr = %local_addr, "metrics and health listening (HTTP: /metrics, /health/live, /health/ready)");
        Ok(Endpoint {
            state,
            local_addr,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Says what the node is waiting for while it is not ready.
    pub fn set_not_ready(&self, why: &str) {
        *self
            .state
            .not_ready
            .lock()
            .expect("readiness lock poisoned") = why.to_string();
        self.state.ready.store(false, Ordering::Release);
    }

    /// The node serves: `/health/ready` answers 200 from now on.
    pub fn set_ready(&self) {
        self.state.ready.store(true, Ordering::Release);
    }

    /// Installs what sets the state gauges before each scrape (only the first call counts).
    /// It may wait (for the Raft node's figures), bounded by [`COLLECT_TIMEOUT`].
    pub fn set_collector<F>(&self, collector: impl Fn() -> F + Send + Sync + 'static)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let _ = self
            .state
            .collector
            .set(Box::new(move || Box::pin(collector())));
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.local_addr)
            .field("ready", &self.state.ready.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(cause = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let scrape = route(request.method(), request.uri().path()) == Route::Metrics
                        && authorized(&state, &request);
                    if scrape && let Some(collect) = state.collector.get() {
                        let _ = tokio::time::timeout(COLLECT_TIMEOUT, collect()).await;
                    }
                    Ok::<_, Infallible>(answer(&state, request))
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, cause = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Whether `request` carries the bearer token `/metrics` needs (always, without one).
fn authorized(state: &State, request: &Request<Incoming>) -> bool {
    let Some(want) = &state.bearer else {
        return true;
    };
    let given = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    sluice_proto::auth::constant_time_eq(given, want.as_bytes())
}

fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match route(request.method(), request.uri().path()) {
        Route::Metrics if !authorized(state, &request) => {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "/metrics needs the bearer token (metrics_bearer_token_file)\n".into(),
            );
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            response
        }
        Route::Metrics => {
            let mut response = text(StatusCode::OK, state.handle.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Route::Live => text(StatusCode::OK, "live\n".into()),
        Route::Ready if state.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "ready\n".into())
        }
        Route::Ready => {
            let why = state
                .not_ready
                .lock()
                .expect("readiness lock poisoned")
                .clone();
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
        }
        Route::NotFound => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /health/live or /health/ready\n".into(),
        ),
        Route::MethodNotAllowed => text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/health/live"), Route::Live);
        assert_eq!(route(&Method::GET, "/health/ready"), Route::Ready);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::GET, "/"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/metrics/x"), Route::NotFound);
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn get_with(addr: SocketAddr, path: &str, header: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\n{header}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_bearer_token_guards_metrics_but_not_health() {
        let endpoint = Endpoint::start("127.0.0.1:0".parse().unwrap(), Some("s3cret".into()))
            .await
            .unwrap();
        let addr = endpoint.local_addr();
        let refused = get(addr, "/metrics").await;
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
        assert!(
            refused.to_lowercase().contains("www-authenticate: bearer"),
            "{refused}"
        );
        for wrong in ["Bearer s3cre", "Bearer s3cretX", "Basic s3cret", "Bearer "] {
            let answer = get_with(addr, "/metrics", &format!("authorization: {wrong}\r\n")).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{wrong}: {answer}");
        }
        let served = get_with(addr, "/metrics", "authorization: Bearer s3cret\r\n").await;
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        assert!(get(addr, "/health/live").await.starts_with("HTTP/1.1 200"));
        // The reading side sends it.
        assert!(
            scrape::fetch(addr, Duration::from_secs(10), Some("s3cret"))
                .await
                .is_ok()
        );
        let e = scrape::fetch(addr, Duration::from_secs(10), None)
            .await
            .unwrap_err();
        assert!(e.contains("401"), "{e}");
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_survives_garbage() {
        let endpoint = Endpoint::start("127.0.0.1:0".parse().unwrap(), None)
            .await
            .unwrap();
        let addr = endpoint.local_addr();
        metrics::counter!("sluice_observe_test_total", "kind" => "a").increment(3);
        endpoint.set_collector(|| async { metrics::gauge!("sluice_observe_test_gauge").set(7.0) });

        assert!(get(addr, "/health/live").await.starts_with("HTTP/1.1 200"));
        let ready = get(addr, "/health/ready").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.ends_with("not ready: starting\n"), "{ready}");
        endpoint.set_ready();
        assert!(get(addr, "/health/ready").await.starts_with("HTTP/1.1 200"));

        let scraped = get(addr, "/metrics").await;
        assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
        assert!(scraped.contains("text/plain; version=0.0.4"), "{scraped}");
        assert!(
            scraped.contains("sluice_observe_test_total{kind=\"a\"} 3"),
            "{scraped}"
        );
        assert!(scraped.contains("sluice_observe_test_gauge 7"), "{scraped}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        // Garbage, an oversized head and a client that says nothing: each gets an error or
        // is dropped, and the listener serves on.
        let mut junk = tokio::net::TcpStream::connect(addr).await.unwrap();
        junk.write_all(b"\x00\x01\x02 not http at all\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = junk.read_to_end(&mut out).await;
        let mut huge = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = b"GET /metrics HTTP/1.1\r\nx: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES * 2));
        let _ = huge.write_all(&head).await;
        let mut out = Vec::new();
        let _ = huge.read_to_end(&mut out).await;
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(get(addr, "/health/live").await.starts_with("HTTP/1.1 200"));
    }
}
