//! Reading a broker's metrics and health endpoints as Prometheus and an orchestrator would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_observe::scrape::Scrape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Config lines that turn the metrics listener on, on a free port.
pub const METRICS: &str = "metrics_listen = \"127.0.0.1:0\"\n";

/// The metrics listener's address, from the file the broker writes once it listens.
pub fn metrics_addr(data_dir: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(addr) = std::fs::read_to_string(data_dir.join("metrics.addr"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return addr;
        }
        assert!(Instant::now() < deadline, "no metrics.addr within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP/1.1 GET: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut out))
        .await
        .expect("answer within 20 s")
        .expect("read answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// Scrapes `/metrics` and parses it with a Prometheus text-format parser.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    sluice_observe::scrape::parse(&body).expect("Prometheus text format")
}

pub use sluice_observe::scrape::sum;
