//! The indexer: a small HTTP server on loopback that the HTTP sink connector POSTs the error
//! records to (JSON lines), and that a user queries by service and time.
//!
//! - `POST /ingest`: the HTTP sink's batches, one JSON object per line:
//!   `{"topic", "partition", "offset", "timestamp", "key", "value"}`. The key is the service;
//!   the value is the service's log line, whose `ts` (milliseconds since the epoch) is the time
//!   it is indexed under (the record's timestamp when it has none). A record already indexed
//!   (same topic, partition and offset: the sink delivers at least once) is indexed once. A
//!   line that is not such an object is answered `400`, which the sink takes as permanent:
//!   the batch's records go to its dead-letter topic.
//! - `GET /search?service=S&from=MS&to=MS`: the log lines of service `S` (every service when
//!   absent) with `from <= ts < to` (either bound optional), oldest first, one per line.
//! - `GET /stats`: `{"service": count, ...}`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The largest request body taken (the sink's batches are far smaller).
const MAX_BODY: usize = 16 << 20;
/// The longest request or header line taken, and the most header lines.
const MAX_LINE: u64 = 8 << 10;
const MAX_HEADERS: usize = 64;

/// Where a record came from: its topic, partition and offset.
type Origin = (String, u32, u64);

/// What the indexer holds: the log lines per service, by time. No I/O: the server below feeds
/// it and asks it.
#[derive(Debug, Default)]
pub struct Index {
    seen: BTreeSet<Origin>,
    by_service: BTreeMap<String, BTreeMap<(i64, Origin), String>>,
}

impl Index {
    /// Indexes a body of JSON lines from the HTTP sink; how many records were new. Nothing is
    /// indexed when a line is not a record (the error says which and why).
    pub fn ingest(&mut self, body: &str) -> Result<usize, String> {
        let mut records = Vec::new();
        for (n, line) in body
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            records.push(parse_record(line).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
        let mut new = 0;
        for (origin, service, ts, line) in records {
            if self.seen.insert(origin.clone()) {
                self.by_service
                    .entry(service)
                    .or_default()
                    .insert((ts, origin), line);
                new += 1;
            }
        }
        Ok(new)
    }

    /// The lines of `service` (all when `None`) with `from <= ts < to`, oldest first.
    pub fn search(&self, service: Option<&str>, from: i64, to: i64) -> Vec<String> {
        let mut hits: Vec<(&(i64, Origin), &String)> = self
            .by_service
            .iter()
            .filter(|(s, _)| service.is_none_or(|want| want == s.as_str()))
            .flat_map(|(_, lines)| {
                lines
                    .range((from, origin_min())..)
                    .take_while(|((ts, _), _)| *ts < to)
            })
            .collect();
        hits.sort();
        hits.into_iter().map(|(_, line)| line.clone()).collect()
    }

    /// Lines held per service.
    pub fn stats(&self) -> BTreeMap<String, usize> {
        self.by_service
            .iter()
            .map(|(s, lines)| (s.clone(), lines.len()))
            .collect()
    }
}

fn origin_min() -> Origin {
    (String::new(), 0, 0)
}

/// One line of the HTTP sink: where the record came from, its service, its time, its line.
fn parse_record(line: &str) -> Result<(Origin, String, i64, String), String> {
    let record: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let topic = record["topic"].as_str().ok_or("no \"topic\"")?;
    let partition = record["partition"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or("no \"partition\"")?;
    let offset = record["offset"].as_u64().ok_or("no \"offset\"")?;
    let text = record["value"].as_str().ok_or("no \"value\"")?;
    let log: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let ts = log["ts"]
        .as_i64()
        .or_else(|| record["timestamp"].as_i64())
        .ok_or("neither the log line's \"ts\" nor the record's \"timestamp\"")?;
    let service = record["key"]
        .as_str()
        .or_else(|| log["service"].as_str())
        .unwrap_or("unknown");
    Ok((
        (topic.to_owned(), partition, offset),
        service.to_owned(),
        ts,
        text.to_owned(),
    ))
}

/// The indexer's HTTP server, answering on its own thread until dropped.
#[derive(Debug)]
pub struct Indexer {
    pub addr: SocketAddr,
    pub index: Arc<Mutex<Index>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Indexer {
    /// Serves on `addr` (`127.0.0.1:0` for any free port).
    pub fn start(addr: &str) -> Result<Indexer> {
        let listener = TcpListener::bind(addr).with_context(|| format!("indexer: bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let index: Arc<Mutex<Index>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let thread = {
            let (index, stop) = (index.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let index = index.clone();
                            std::thread::spawn(move || {
                                let _ = serve(stream, &index);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Indexer {
            addr,
            index,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one line of at most `MAX_LINE` bytes.
fn read_line(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    reader.by_ref().take(MAX_LINE).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Answers one request on `stream`.
fn serve(stream: TcpStream, index: &Mutex<Index>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    let request = read_line(&mut reader)?;
    let mut length = 0usize;
    for _ in 0..MAX_HEADERS {
        let header = read_line(&mut reader)?.to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(usize::MAX);
        }
    }
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = match (method, path) {
        _ if length > MAX_BODY => ("413 Content Too Large", "body too large\n".to_owned()),
        ("POST", "/ingest") => {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body)?;
            let result = match std::str::from_utf8(&body) {
                Ok(text) => index.lock().expect("index lock").ingest(text),
                Err(_) => Err("the body is not UTF-8".to_owned()),
            };
            match result {
                Ok(n) => ("200 OK", format!("{{\"indexed\":{n}}}\n")),
                Err(e) => ("400 Bad Request", format!("{e}\n")),
            }
        }
        ("GET", "/search") => match search_params(query) {
            Ok((service, from, to)) => {
                let lines = index
                    .lock()
                    .expect("index lock")
                    .search(service.as_deref(), from, to);
                let mut out = lines.join("\n");
                if !out.is_empty() {
                    out.push('\n');
                }
                ("200 OK", out)
            }
            Err(e) => ("400 Bad Request", format!("{e}\n")),
        },
        ("GET", "/stats") => {
            let stats = index.lock().expect("index lock").stats();
            (
                "200 OK",
                serde_json::to_string(&stats).unwrap_or_default() + "\n",
            )
        }
        _ => (
            "404 Not Found",
            "POST /ingest, GET /search, GET /stats\n".to_owned(),
        ),
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// `service=S&from=MS&to=MS`, each optional.
fn search_params(query: &str) -> Result<(Option<String>, i64, i64), String> {
    let (mut service, mut from, mut to) = (None, i64::MIN, i64::MAX);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let number = || {
            v.parse::<i64>()
                .map_err(|_| format!("{k}={v}: not a number"))
        };
        match k {
            "service" => service = Some(v.clone()),
            "from" => from = number()?,
            "to" => to = number()?,
            _ => return Err(format!("unknown parameter {k:?} (service, from, to)")),
        }
    }
    Ok((service, from, to))
}

/// `%XX` and `+` decoded (lossily).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET path` from the indexer at `addr`: the body of a `200` answer.
pub fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("indexer at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        bail!("GET {path}: {status}: {}", body.trim());
    }
    Ok(body.to_owned())
}

/// The lines of `service` with `from <= ts < to`, asked of the indexer at `addr` over HTTP.
pub fn search(addr: SocketAddr, service: &str, from: i64, to: i64) -> Result<Vec<String>> {
    let body = get(
        addr,
        &format!("/search?service={service}&from={from}&to={to}"),
    )?;
    Ok(body.lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(offset: u64, key: &str, ts: i64) -> String {
        let value = format!("{{\"ts\":{ts},\"service\":\"{key}\",\"level\":\"error\"}}");
        serde_json::json!({
            "topic": "errors", "partition": 0, "offset": offset,
            "timestamp": 1, "key": key, "value": value,
        })
        .to_string()
    }

    #[test]
    fn indexes_once_and_searches_by_service_and_time() {
        let mut index = Index::default();
        let body = [line(0, "api", 30), line(1, "auth", 10), line(2, "api", 10)].join("\n");
        assert_eq!(index.ingest(&body), Ok(3));
        // Delivered again (at least once): nothing new.
        assert_eq!(index.ingest(&body), Ok(0));
        let api = index.search(Some("api"), i64::MIN, i64::MAX);
        assert_eq!(api.len(), 2);
        assert!(api[0].contains("\"ts\":10") && api[1].contains("\"ts\":30"));
        assert_eq!(index.search(Some("api"), 11, 31).len(), 1);
        assert_eq!(index.search(Some("api"), 10, 30).len(), 1);
        assert_eq!(index.search(None, 0, 20).len(), 2);
        assert_eq!(index.stats()["api"], 2);
    }

    #[test]
    fn refuses_a_batch_with_a_line_that_is_not_a_record() {
        let mut index = Index::default();
        let body = format!("{}\nnot json\n", line(0, "api", 1));
        let e = index.ingest(&body).unwrap_err();
        assert!(e.starts_with("line 2: not JSON"), "{e}");
        assert!(
            index.stats().is_empty(),
            "nothing of a refused batch is indexed"
        );
    }

    #[test]
    fn query_parameters() {
        assert_eq!(
            search_params("service=a%20b&from=5&to=9"),
            Ok((Some("a b".into()), 5, 9))
        );
        assert_eq!(search_params(""), Ok((None, i64::MIN, i64::MAX)));
        assert!(search_params("from=x").is_err());
        assert!(search_params("level=error").is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
