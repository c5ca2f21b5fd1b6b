//! The reading side: fetching a broker's `/metrics` over HTTP and parsing it, for `sluice top`
//! and tests. What comes back is bounded in size and time: the endpoint may not be a broker.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
pub use prometheus_parse::{Sample, Scrape, Value};

/// Largest `/metrics` answer read.
pub const MAX_SCRAPE_BYTES: usize = 64 * 1024 * 1024;

/// `GET http://ADDR/metrics` (with `bearer` as `Authorization: Bearer …` when given): the
/// body, within `timeout`.
pub async fn fetch(
    addr: SocketAddr,
    timeout: Duration,
    bearer: Option<&str>,
) -> Result<String, String> {
    tokio::time::timeout(timeout, fetch_unbounded(addr, bearer))
        .await
        .map_err(|_| format!("{addr}: no answer within {timeout:?}"))?
}

async fn fetch_unbounded(addr: SocketAddr, bearer: Option<&str>) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::get("/metrics").header(hyper::header::HOST, addr.to_string());
    if let Some(token) = bearer {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("{addr}: reading /metrics: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{addr}: /metrics answered {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("{addr}: /metrics is not UTF-8"))
}

/// Parses the Prometheus text format.
pub fn parse(text: &str) -> Result<Scrape, String> {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).map_err(|e| e.to_string())
}

/// The value of every sample named `name` whose labels include `labels`, summed (a histogram
/// counts its observations).
pub fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}
