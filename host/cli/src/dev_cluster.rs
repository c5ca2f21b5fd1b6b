//! `sluice dev cluster`: a local cluster of `sluice broker` processes in one command.
//!
//! `DIR/node-i/` holds node i's data, its config (`broker.toml`, written on the first run and
//! reused after, so a node keeps its ports and identity), its log (`broker.log`) and its pid
//! (`broker.pid`). `DIR/ca/` holds the dev cluster CA and the shared client CA; `DIR/ca.pem` is
//! the client CA's certificate, what clients pass as `--tls-ca`; `DIR/bootstrap` is the client
//! bootstrap list. Run again on the same DIR, it starts the nodes that are not running.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sluice_client::{Client, ClientConfig, TlsConfig};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start (or complete) a local cluster of N brokers on 127.0.0.1.
    Cluster(DevClusterArgs),
}

#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// Number of broker nodes (all voters of the metadata quorum). Fixed by the first run.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Directory of the cluster: node data, CA, bootstrap list.
    #[arg(long, default_value = "sluice-dev-cluster")]
    pub data_dir: PathBuf,
    /// Return as soon as the cluster answers, leaving the nodes running (stop them with
    /// SIGTERM to the pids in DIR/node-*/broker.pid). Without it, stay in the foreground and
    /// stop every node cleanly on Ctrl-C.
    #[arg(long)]
    pub detach: bool,
}

/// How long the cluster has to answer after its nodes were started.
const READY_LIMIT: Duration = Duration::from_secs(120);

pub async fn run(cmd: &DevCommand) -> Result<ExitCode> {
    match cmd {
        DevCommand::Cluster(args) => cluster(args).await,
    }
}

struct Node {
    id: u32,
    dir: PathBuf,
    config: PathBuf,
    client_addr: SocketAddr,
}

async fn cluster(args: &DevClusterArgs) -> Result<ExitCode> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    // Listening from the start: a signal while the nodes start still stops them cleanly.
    let signalled = crate::cli::stop_signal();
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let nodes = layout(&dir, args.nodes)?;
    // The processes started now, by node id: whether one exited is asked of its handle (its
    // /proc entry shows this program's command line until it has exec'd).
    let mut started = std::collections::HashMap::new();
    for node in &nodes {
        if let Some(pid) = running_pid(&node.dir) {
            println!("node {} is running (pid {pid})", node.id);
            continue;
        }
        let child = spawn(node, args.detach)?;
        println!("node {} started (pid {})", node.id, child.id());
        started.insert(node.id, child);
    }
    let bootstrap: Vec<String> = nodes.iter().map(|n| n.client_addr.to_string()).collect();
    let bootstrap = bootstrap.join(",");
    write_file(&dir.join("bootstrap"), format!("{bootstrap}\n").as_bytes())?;
    let ca_pem = dir.join("ca.pem");
    wait_ready(&dir, &nodes, &mut started, &bootstrap, &ca_pem).await?;
    println!(
        "cluster of {} nodes ready\n  bootstrap: {bootstrap}  (in {})\n  CA:        {}\n  try:       sluice --broker {bootstrap} --tls-ca {} cluster status",
        nodes.len(),
        dir.join("bootstrap").display(),
        ca_pem.display(),
        ca_pem.display()
    );
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    println!("running in the foreground; Ctrl-C stops every node");
    signalled.await;
    let mut clean = true;
    for node in &nodes {
        clean &= stop(node);
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The nodes' directories and configs: read back from an earlier run, or written now with
/// free ports, a new cluster id and every node a voter.
fn layout(dir: &Path, count: u32) -> Result<Vec<Node>> {
    let existing: Vec<u32> = (1..=64)
        .filter(|i| node_dir(dir, *i).join("broker.toml").exists())
        .collect();
    if !existing.is_empty() && existing.len() != count as usize {
        bail!(
            "{} holds a cluster of {} nodes; run with --nodes {} (or use another --data-dir)",
            dir.display(),
            existing.len(),
            existing.len()
        );
    }
    if existing.is_empty() {
        let cluster_id = format!("dev-{}", random_hex());
        let client: Vec<SocketAddr> = (0..count).map(|_| free_port()).collect::<Result<_>>()?;
        let peer: Vec<SocketAddr> = (0..count).map(|_| free_port()).collect::<Result<_>>()?;
        let voters: Vec<String> = peer
            .iter()
            .enumerate()
            .map(|(i, a)| format!("\"{}@{a}\"", i + 1))
            .collect();
        for i in 0..count as usize {
            let ndir = node_dir(dir, i as u32 + 1);
            std::fs::create_dir_all(&ndir)
                .with_context(|| format!("cannot create {}", ndir.display()))?;
            let config = format!(
                "# Written by `sluice dev cluster`; reused by every later run.\n\
                 node_id = {}\ncluster_id = \"{cluster_id}\"\ndata_dir = \"{}\"\nlisten = \"{}\"\n\n\
                 [cluster]\npeer_listen = \"{}\"\nvoters = [{}]\nca_dir = \"{}\"\n",
                i + 1,
                ndir.display(),
                client[i],
                peer[i],
                voters.join(", "),
                dir.join("ca").display()
            );
            write_file(&ndir.join("broker.toml"), config.as_bytes())?;
        }
    }
    (1..=count)
        .map(|id| {
            let ndir = node_dir(dir, id);
            let config = ndir.join("broker.toml");
            let parsed = sluice_broker::BrokerConfig::load(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            Ok(Node {
                id,
                dir: ndir,
                config,
                client_addr: parsed.listen,
            })
        })
        .collect()
}

fn node_dir(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node-{id}"))
}

fn free_port() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The pid in `dir/broker.pid` if that process is alive and is a `sluice broker`.
fn running_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("broker.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_broker = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == b"broker".as_slice());
    // A zombie (exited, not yet reaped) still has its cmdline on some kernels: check state.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (is_broker && !zombie).then_some(pid)
}

/// Starts one node's broker process, its log appended to `broker.log`, and records its pid.
fn spawn(node: &Node, detach: bool) -> Result<std::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.dir.join("broker.log"))
        .with_context(|| format!("cannot open {}", node.dir.join("broker.log").display()))?;
    let _ = std::fs::remove_file(node.dir.join("broker.addr"));
    let exe = std::env::current_exe().context("cannot find the sluice binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("broker")
        .arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if detach {
        // Its own process group: a later Ctrl-C in this terminal does not reach it.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().context("cannot start a broker process")?;
    write_file(
        &node.dir.join("broker.pid"),
        format!("{}\n", child.id()).as_bytes(),
    )?;
    Ok(child)
}

/// Waits (bounded) until every node serves and the cluster has a metadata leader with every
/// node registered; then puts the client CA at `ca_pem`.
async fn wait_ready(
    dir: &Path,
    nodes: &[Node],
    children: &mut std::collections::HashMap<u32, std::process::Child>,
    bootstrap: &str,
    ca_pem: &Path,
) -> Result<()> {
    let started = Instant::now();
    let failed = |why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "the cluster did not come up within {READY_LIMIT:?}: {why}; see {}/node-*/broker.log",
            dir.display()
        )
    };
    for node in nodes {
        while !node.dir.join("broker.addr").exists() {
            let exited = match children.get_mut(&node.id) {
                Some(child) => child.try_wait().ok().flatten().is_some(),
                None => running_pid(&node.dir).is_none(),
            };
            if exited {
                return Err(failed(format!("node {} exited", node.id)));
            }
            if started.elapsed() > READY_LIMIT {
                return Err(failed(format!("node {} is not serving", node.id)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let client_ca = dir.join("ca").join(sluice_broker::tls::CLIENT_CA_CERT_FILE);
    std::fs::copy(&client_ca, ca_pem).with_context(|| {
        format!(
            "cannot copy {} to {}",
            client_ca.display(),
            ca_pem.display()
        )
    })?;
    let mut config = ClientConfig::new(bootstrap, TlsConfig::CaFile(ca_pem.to_owned()));
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(5);
    loop {
        let why = match status_complete(&config, nodes.len()).await {
            Ok(()) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > READY_LIMIT {
            return Err(failed(why));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the cluster has a metadata leader and every node registered, live and not fenced
/// (a node fenced during its start is live again before it has registered again).
async fn status_complete(config: &ClientConfig, nodes: usize) -> Result<()> {
    let client = Client::connect(config.clone()).await?;
    let status = client.admin().cluster_status().await;
    client.close();
    let status = status?;
    if status.controller.is_none() {
        bail!("no metadata leader yet");
    }
    let live = status.nodes.iter().filter(|n| n.live && !n.fenced).count();
    if live < nodes {
        bail!("{live} of {nodes} nodes live");
    }
    Ok(())
}

/// SIGTERM to a node and a bounded wait for it to exit; whether it did.
fn stop(node: &Node) -> bool {
    let Some(pid) = running_pid(&node.dir) else {
        return true;
    };
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_pid(&node.dir).is_some() {
        if Instant::now() > deadline {
            eprintln!("node {} (pid {pid}) did not stop within 30 s", node.id);
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(node.dir.join("broker.pid"));
    println!("node {} stopped", node.id);
    true
}
