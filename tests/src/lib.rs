//! Harness for cluster-level tests: real `sluice` broker processes on loopback, real QUIC,
//! real redb in temporary directories, faults injected with signals.
//!
//! The tests in `tests/tests/` drive the brokers through the Rust SDK and through the `sluice`
//! binary itself, exactly as users do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_client::{Client, ClientConfig, TlsConfig};

pub mod checker;
pub mod jepsen;
pub mod scrape;

/// Path of the `sluice` binary built by this workspace. `cargo test --workspace` builds it
/// before any test runs (the `sluice-cli` package has integration tests). `SLUICE_BIN`
/// overrides it.
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/sluice
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it) or set SLUICE_BIN",
        bin.display()
    );
    bin
}

/// A broker process with its own data directory.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    config: String,
    /// `RUST_LOG` of the process: `SLUICE_TEST_LOG`, else info.
    log_filter: String,
}

/// Config used by tests unless they say otherwise: retention checked often.
pub const TEST_CONFIG: &str = "retention_check_interval_ms = 200\n";

impl BrokerProcess {
    /// Starts a broker on a free loopback port with `config` (TOML) and waits until it serves.
    pub fn start(data_dir: &Path, config: &str) -> BrokerProcess {
        Self::start_at(data_dir, config, "127.0.0.1:0".parse().expect("addr"))
    }

    /// Starts a broker listening on `listen` (port 0 picks a free one).
    pub fn start_at(data_dir: &Path, config: &str, listen: SocketAddr) -> BrokerProcess {
        let mut broker = Self::spawn_at(data_dir, config, listen);
        broker.wait_ready();
        broker
    }

    /// Starts a broker process without waiting for it to serve (nodes of a cluster, which
    /// wait for each other at start); [`BrokerProcess::wait_ready`] waits.
    pub fn spawn_at(data_dir: &Path, config: &str, listen: SocketAddr) -> BrokerProcess {
        let filter =
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
        Self::spawn_logging(data_dir, config, listen, &filter)
    }

    /// Starts a broker like [`BrokerProcess::start`] whose log (`broker.log`) has `filter`'s
    /// lines (a `RUST_LOG` value), kept across restarts.
    pub fn start_logging(data_dir: &Path, config: &str, filter: &str) -> BrokerProcess {
        let listen = "127.0.0.1:0".parse().expect("addr");
        let mut broker = Self::spawn_logging(data_dir, config, listen, filter);
        broker.wait_ready();
        broker
    }

    fn spawn_logging(
        data_dir: &Path,
        config: &str,
        listen: SocketAddr,
        filter: &str,
    ) -> BrokerProcess {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let config_path = data_dir.join("test-config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let _ = std::fs::remove_file(data_dir.join("broker.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("broker.log"))
            .expect("broker log");
        let child = Command::new(sluice_bin())
            .arg("broker")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice broker");
        BrokerProcess {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            addr: listen,
            config: config.to_owned(),
            log_filter: filter.to_owned(),
        }
    }

    /// Waits (up to 120 s) until the broker serves, and learns its address.
    pub fn wait_ready(&mut self) {
        let broker = self;
        let addr_file = broker.data_dir.join("broker.addr");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(addr) = std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                broker.addr = addr;
                break;
            }
            if let Some(status) = broker
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "broker exited with {status} before listening; log:\n{}",
                    broker.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "broker did not start within 120 s; log:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts a stopped broker on the same address and data.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart a broker only after it stopped"
        );
        let (dir, config, addr) = (self.data_dir.clone(), self.config.clone(), self.addr);
        let filter = self.log_filter.clone();
        *self = BrokerProcess::spawn_logging(&dir, &config, addr, &filter);
        self.wait_ready();
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("broker.log")).unwrap_or_default()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (`STOP`, `CONT`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded by `limit`) for the process to exit by itself; its status, or `None` if it
    /// still runs.
    pub fn exit_status_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SDK client settings for this broker: its address and its dev CA.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr.to_string(), TlsConfig::CaFile(self.ca_path()))
    }

    /// A connected SDK client that verifies the broker with its dev CA.
    pub async fn client(&self) -> Client {
        self.client_with(self.client_config()).await
    }

    /// A connected SDK client with `config`, retrying (bounded) while the broker starts.
    pub async fn client_with(&self, config: ClientConfig) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(config.clone()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect retry: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot connect to the broker: {e}; log:\n{}", self.log()),
            }
        }
    }

    /// The `sluice` CLI pointed at this broker.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(sluice_bin());
        c.arg("--broker")
            .arg(self.addr.to_string())
            .arg("--tls-ca")
            .arg(self.ca_path());
        for var in [
            "SLUICE_BROKER",
            "SLUICE_TLS_CA",
            "SLUICE_TLS_CERT",
            "SLUICE_TLS_KEY",
            "SLUICE_USER",
            "SLUICE_PASSWORD",
            "SLUICE_TOKEN",
            "SLUICE_PROFILE",
            "SLUICE_NEW_PASSWORD",
        ] {
            c.env_remove(var);
        }
        c
    }

    /// Runs the CLI with `args`, asserts that it succeeded, and returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        self.run_ok_in(args, b"")
    }

    /// [`BrokerProcess::run_ok`] with `stdin` as its input.
    pub fn run_ok_in(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run_cli(args, stdin);
        assert!(
            out.status.success(),
            "sluice {args:?} failed: {}",
            describe_output(&out)
        );
        String::from_utf8(out.stdout).expect("CLI output is UTF-8")
    }

    /// Runs the CLI with `args` and asserts that it failed with `needle` in its stderr.
    pub fn run_fails(&self, args: &[&str], needle: &str) {
        self.run_fails_in(args, b"", needle);
    }

    /// [`BrokerProcess::run_fails`] with `stdin` as its input.
    pub fn run_fails_in(&self, args: &[&str], stdin: &[u8], needle: &str) {
        let out = self.run_cli(args, stdin);
        assert!(
            !out.status.success(),
            "sluice {args:?} should fail: {}",
            describe_output(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "sluice {args:?}: stderr lacks {needle:?}: {}",
            describe_output(&out)
        );
    }

    /// Runs the CLI with `args` and `stdin`, bounded in time.
    pub fn run_cli(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_bounded(self.cli().args(args), stdin, Duration::from_secs(120))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command with `stdin`, killing it if it outlives `limit`.
/// A free UDP port on 127.0.0.1 (bound, then released: good enough on a test machine).
pub fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port")
}

/// Starts `n` broker processes on loopback as one cluster and waits until each serves: node i
/// (from 1) keeps its data in `dir/node-i`, all are voters of the metadata quorum, and they
/// share one dev cluster CA and one dev client CA in `dir/ca`. `extra` is added to every
/// node's config, before its `[cluster]` table.
pub fn start_cluster(dir: &Path, n: usize, extra: &str) -> Vec<BrokerProcess> {
    start_cluster_with(dir, n, extra, "")
}

/// [`start_cluster`], with `cluster_extra` added to every node's `[cluster]` table.
pub fn start_cluster_with(
    dir: &Path,
    n: usize,
    extra: &str,
    cluster_extra: &str,
) -> Vec<BrokerProcess> {
    let peers: Vec<SocketAddr> = (0..n).map(|_| free_udp_port()).collect();
    start_cluster_nodes(dir, &peers, 1..=n as u32, extra, &|_| {
        cluster_extra.to_owned()
    })
}

/// Starts nodes `ids` (of the cluster whose voters listen on `peers`, see [`cluster_config`])
/// together, in `dir/node-i` with the CAs in `dir/ca`, and waits until each serves.
/// `cluster_extra(id)` is added to node `id`'s `[cluster]` table.
pub fn start_cluster_nodes(
    dir: &Path,
    peers: &[SocketAddr],
    ids: impl IntoIterator<Item = u32>,
    extra: &str,
    cluster_extra: &dyn Fn(u32) -> String,
) -> Vec<BrokerProcess> {
    let mut nodes: Vec<BrokerProcess> = ids
        .into_iter()
        .map(|id| {
            BrokerProcess::spawn_at(
                &dir.join(format!("node-{id}")),
                &(cluster_config(id, peers, &dir.join("ca"), extra) + &cluster_extra(id)),
                "127.0.0.1:0".parse().expect("addr"),
            )
        })
        .collect();
    for node in &mut nodes {
        node.wait_ready();
    }
    nodes
}

/// The config of node `id` (from 1) of a test cluster whose voters listen on `peers` (node i
/// on `peers[i - 1]`), sharing the dev CAs in `ca_dir`; `extra` goes before `[cluster]`.
pub fn cluster_config(id: u32, peers: &[SocketAddr], ca_dir: &Path, extra: &str) -> String {
    let voters: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("\"{}@{a}\"", i + 1))
        .collect();
    format!(
        "{TEST_CONFIG}{extra}node_id = {id}\ncluster_id = \"test-cluster\"\n[cluster]\npeer_listen = \"{}\"\nvoters = [{}]\nca_dir = \"{}\"\n",
        peers[id as usize - 1],
        voters.join(", "),
        ca_dir.display()
    )
}

/// The leader of each partition of `topic`, from `sluice topic describe` on `node` (leaderless
/// partitions are left out).
pub fn partition_leaders(node: &BrokerProcess, topic: &str) -> Vec<u32> {
    node.run_ok(&["topic", "describe", topic])
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            f.next()?.parse::<u32>().ok()?;
            f.next()?.parse().ok()
        })
        .collect()
}

/// The client bootstrap list of `nodes`: `host:port,host:port,...`.
pub fn bootstrap_list(nodes: &[BrokerProcess]) -> String {
    nodes
        .iter()
        .map(|n| n.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A connected SDK client of the cluster `nodes`: their bootstrap list, their shared dev CA.
pub async fn cluster_client(nodes: &[BrokerProcess]) -> Client {
    nodes[0]
        .client_with(ClientConfig::new(
            bootstrap_list(nodes),
            TlsConfig::CaFile(nodes[0].ca_path()),
        ))
        .await
}

/// Every node's log, for a failure message.
pub fn all_logs(nodes: &[BrokerProcess]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("---- node {} ----\n{}", i + 1, n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn run_bounded(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().expect("wait for command");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let _ = writer.join();
    out
}

/// Text of a command's stdout and stderr, for assertion messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads partition 0 of `topic` from its start until `n` records are there, or 60 s passed;
/// returns the values as text.
pub async fn read_values(client: &Client, topic: &str, n: usize) -> Vec<String> {
    let mut consumer = client.consumer(sluice_client::ConsumerConfig::default());
    consumer.assign(topic, &[0]).await.expect("assign");
    consumer
        .seek(topic, 0, sluice_client::SeekTo::Earliest)
        .await
        .expect("seek");
    let mut out = Vec::new();
    let started = Instant::now();
    while out.len() < n && started.elapsed() < Duration::from_secs(60) {
        for r in consumer.poll().await.expect("poll") {
            let value = r.value.map(|v| v.to_vec()).unwrap_or_default();
            out.push(String::from_utf8_lossy(&value).into_owned());
        }
    }
    out
}

/// A raw QUIC connection to the broker, for tests that send hand-made (and malformed) frames.
/// It sends a keep-alive every second, as a client that holds a connection open would.
pub async fn raw_connection(addr: SocketAddr, ca_pem: &Path) -> quinn::Connection {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).expect("read CA");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![sluice_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    config.transport_config(std::sync::Arc::new(transport));
    endpoint.set_default_client_config(config);
    endpoint
        .connect(addr, "127.0.0.1")
        .expect("connect")
        .await
        .expect("handshake")
}

/// Sends one frame on a new stream of `conn` and reads one response frame back.
pub async fn raw_exchange(
    conn: &quinn::Connection,
    frame: &[u8],
) -> Option<sluice_proto::Response> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    send.write_all(frame).await.expect("write frame");
    let _ = send.finish();
    let body = sluice_proto::frame::read_frame(&mut recv, 1 << 24)
        .await
        .ok()??;
    let (resp, _raw) = sluice_proto::frame::decode_body::<sluice_proto::Response>(body).ok()?;
    Some(resp)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A UDP proxy on 127.0.0.1 between QUIC clients and one broker (or one broker and a peer),
/// to inject network faults the endpoints cannot tell from real ones. While
/// [`UdpProxy::drop_to_clients`] is set, every broker→client datagram is discarded (requests
/// still arrive; their answers are lost, and QUIC retransmits them only once the drop ends);
/// while [`UdpProxy::cut`] is set, every datagram either way is.
#[derive(Debug)]
pub struct UdpProxy {
    pub addr: SocketAddr,
    drop_to_clients: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpProxy {
    /// Starts forwarding between a fresh port on 127.0.0.1 and `upstream`. Each client address
    /// gets its own upstream socket, so the broker sees one peer per client.
    pub async fn start(upstream: SocketAddr) -> UdpProxy {
        use std::collections::HashMap;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use tokio::net::UdpSocket;

        let front = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind proxy socket"),
        );
        let addr = front.local_addr().expect("proxy address");
        let drop_to_clients = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (drop_flag, drop_count) = (drop_to_clients.clone(), dropped.clone());
        let cut_flag = cut.clone();
        let task = tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let back = match backs.get(&client) {
                    Some(b) => b.clone(),
                    None => {
                        let back = Arc::new(
                            UdpSocket::bind("127.0.0.1:0")
                                .await
                                .expect("bind upstream socket"),
                        );
                        back.connect(upstream).await.expect("connect upstream");
                        let (front, back2) = (front.clone(), back.clone());
                        let (drop_flag, drop_count) = (drop_flag.clone(), drop_count.clone());
                        let cut_flag = cut_flag.clone();
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            loop {
                                // An upstream that died (a killed broker) makes the connected
                                // socket report the ICMP "port unreachable" once; it keeps
                                // forwarding for the process that takes the port next.
                                let n = match back2.recv(&mut buf).await {
                                    Ok(n) => n,
                                    Err(_) => {
                                        tokio::time::sleep(Duration::from_millis(1)).await;
                                        continue;
                                    }
                                };
                                if drop_flag.load(Ordering::Relaxed)
                                    || cut_flag.load(Ordering::Relaxed)
                                {
                                    drop_count.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                let _ = front.send_to(&buf[..n], client).await;
                            }
                        });
                        backs.insert(client, back.clone());
                        back
                    }
                };
                if cut_flag.load(Ordering::Relaxed) {
                    continue;
                }
                let _ = back.send(&buf[..n]).await;
            }
        });
        UdpProxy {
            addr,
            drop_to_clients,
            cut,
            dropped,
            task,
        }
    }

    /// Starts or stops discarding broker→client datagrams.
    pub fn drop_to_clients(&self, on: bool) {
        self.drop_to_clients
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts or stops discarding every datagram, both ways: the link is cut.
    pub fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Broker→client datagrams discarded so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
