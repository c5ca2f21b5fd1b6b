//! The Jepsen-style harness: a cluster of real broker processes on loopback, idempotent
//! `acks=all` producers and consumers (assigned and group mode) running against a replicated
//! topic, faults injected while they run — `kill -9` of a partition leader or of the metadata
//! leader, SIGSTOP/SIGCONT of a leader or a follower, clean restarts — and at the end every
//! partition read back and the whole history handed to [`crate::checker`].
//!
//! Each fault waits for its effect (a new leader, a shrunk in-sync set) and, after healing, for
//! the cluster to be whole again (every partition led, every replica in sync), each wait
//! bounded, so the run does not depend on the machine's speed: a slow machine makes it longer,
//! not different.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{
    Acks, Client, ClientConfig, ConsumerConfig, GroupEvent, GroupOptions, OffsetReset,
    ProducerConfig, ProducerRecord, TlsConfig,
};
use sluice_proto::{MetadataResponse, Request, ResponseBody};

use crate::checker::{Ack, History, Read, Report, check};
use crate::{BrokerProcess, start_cluster_nodes};

/// Every wait for the cluster is bounded by this.
const LIMIT: Duration = Duration::from_secs(90);

/// A fault the harness can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` the leader of a partition (the next one in turn), then restart it.
    KillLeader,
    /// `kill -9` the metadata (Raft) leader, then restart it.
    KillController,
    /// SIGSTOP a partition's leader until another replaces it and the lag time has passed,
    /// then SIGCONT: the zombie leader must learn it was fenced.
    PauseLeader,
    /// SIGSTOP a follower until it leaves the in-sync set, then SIGCONT.
    PauseFollower,
    /// SIGTERM a node (a clean shutdown), then start it again.
    Restart,
    /// `kill -9` the consumer group's coordinator (the leader of its offsets partition), then
    /// restart it.
    KillCoordinator,
    /// Cut a partition's leader off from every other node (its clients still reach it) until
    /// another replaces it, then heal: a live zombie leader, still taking requests.
    IsolateLeader,
    /// Cut the link between a partition's leader and one follower (both still reach the
    /// third node) until one of them leaves the in-sync set, then heal.
    CutLink,
}

impl Fault {
    /// Every kind of fault.
    pub const ALL: [Fault; 8] = [
        Fault::KillLeader,
        Fault::PauseFollower,
        Fault::KillController,
        Fault::IsolateLeader,
        Fault::PauseLeader,
        Fault::Restart,
        Fault::CutLink,
        Fault::KillCoordinator,
    ];

    /// Whether the fault cuts links between nodes (the nodes' peer traffic then goes through
    /// proxies).
    fn cuts_links(self) -> bool {
        matches!(self, Fault::IsolateLeader | Fault::CutLink)
    }

    /// `count` faults, every kind in turn.
    pub fn mixed(count: usize) -> Vec<Fault> {
        (0..count)
            .map(|i| Fault::ALL[i % Fault::ALL.len()])
            .collect()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nodes: usize,
    pub partitions: u32,
    pub replication_factor: u16,
    pub producers: usize,
    /// Consumers that read every partition by assignment.
    pub assigned_consumers: usize,
    /// Members of one consumer group (committing after each poll).
    pub group_consumers: usize,
    /// Records each producer sends per second (paced, so that faults, not load, dominate).
    pub records_per_second: u32,
    /// Added to every node's `[cluster]` table (shorter sessions and lag times).
    pub cluster_extra: String,
    pub faults: Vec<Fault>,
    /// Load runs this long before the first fault and after each one.
    pub between_faults: Duration,
    /// Run a pipeline (the built-in identity map) from the topic to a second replicated
    /// topic, and check at the end that its output holds every input record exactly once.
    pub pipeline: bool,
}

impl Settings {
    /// Three nodes, RF=3, the faults given, with short sessions and lag times.
    pub fn three_nodes(faults: Vec<Fault>) -> Settings {
        Settings {
            nodes: 3,
            partitions: 3,
            replication_factor: 3,
            producers: 4,
            assigned_consumers: 1,
            group_consumers: 2,
            records_per_second: 200,
            cluster_extra: "session_timeout_ms = 3000\nheartbeat_interval_ms = 500\nreplica_lag_max_ms = 3000\n"
                .into(),
            faults,
            between_faults: Duration::from_secs(2),
            pipeline: true,
        }
    }
}

/// What a run saw.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// One line per injected fault: what, where, how long until the cluster was whole again.
    pub injected: Vec<String>,
    /// For each fault and producer, the longest time between two acknowledgements in the
    /// fault's window.
    pub gaps: Vec<Duration>,
    /// Committed group offsets that went backwards (a committed offset lost).
    pub lost_commits: usize,
    /// Input records missing from the pipeline's output, and output records that are not
    /// exactly one input record.
    pub pipeline_missing: usize,
    pub pipeline_extra: usize,
    /// Errors producers saw on deliveries (retries exhausted, etc.); not anomalies in
    /// themselves (an unacknowledged write may or may not be stored).
    pub failed_deliveries: u64,
    /// Ids of the topics whose replicas every node holds (the topic, the pipeline's output),
    /// for a comparison of the stores once the nodes stopped: every node's copy had the same
    /// log end as the others' when they were stopped.
    pub topic_ids: Vec<u64>,
}

impl Outcome {
    /// The table the harness prints: the checker's counts, the faults and the gaps.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "faults injected       {:>10}", self.injected.len());
        for f in &self.injected {
            let _ = writeln!(t, "  {f}");
        }
        let _ = write!(t, "{}", self.report);
        let _ = writeln!(t, "{:<22}{:>10}", "lost commits", self.lost_commits);
        let _ = writeln!(t, "{:<22}{:>10}", "pipeline missing", self.pipeline_missing);
        let _ = writeln!(t, "{:<22}{:>10}", "pipeline extra", self.pipeline_extra);
        let _ = writeln!(
            t,
            "{:<22}{:>10}",
            "failed deliveries", self.failed_deliveries
        );
        let mut gaps = self.gaps.clone();
        gaps.sort();
        if let (Some(median), Some(max)) = (gaps.get(gaps.len() / 2), gaps.last()) {
            let _ = writeln!(
                t,
                "producer gap after a fault: median {median:.1?}, max {max:.1?}"
            );
        }
        t
    }

    /// Whether every anomaly count is 0.
    pub fn is_clean(&self) -> bool {
        self.report.is_clean()
            && self.lost_commits == 0
            && self.pipeline_missing == 0
            && self.pipeline_extra == 0
    }
}

const TOPIC: &str = "jepsen";
const GROUP: &str = "jepsen-group";
const OUTPUT: &str = "jepsen-out";

/// The cluster, shared by the fault driver and the observers.
struct Cluster {
    nodes: Vec<BrokerProcess>,
    ca: PathBuf,
}

/// The links between the nodes, for faults that cut them: node `a` dials node `b` through a
/// proxy of its own (`cluster.peer_routes`), so the link `a`–`b` is the two proxies `a→b` and
/// `b→a` (each carries the connection its side dialled, both ways).
struct Links {
    proxies: HashMap<(u32, u32), crate::UdpProxy>,
}

impl Links {
    async fn start(peers: &[std::net::SocketAddr]) -> Links {
        let mut proxies = HashMap::new();
        for a in 1..=peers.len() as u32 {
            for b in 1..=peers.len() as u32 {
                if a != b {
                    let proxy = crate::UdpProxy::start(peers[b as usize - 1]).await;
                    proxies.insert((a, b), proxy);
                }
            }
        }
        Links { proxies }
    }

    /// Node `a`'s `cluster.peer_routes`: every other node through `a`'s proxy to it.
    fn routes_of(&self, a: u32) -> String {
        let mut routes: Vec<String> = self
            .proxies
            .iter()
            .filter(|((from, _), _)| *from == a)
            .map(|((_, to), p)| format!("\"{to}@{}\"", p.addr))
            .collect();
        routes.sort();
        format!("peer_routes = [{}]\n", routes.join(", "))
    }

    /// Cuts (or heals) the link between `a` and `b`.
    fn cut(&self, a: u32, b: u32, on: bool) {
        self.proxies[&(a, b)].cut(on);
        self.proxies[&(b, a)].cut(on);
    }
}

impl Cluster {
    fn addr(&self, node: u32) -> String {
        self.nodes[node as usize - 1].addr.to_string()
    }

    fn bootstrap(&self) -> String {
        crate::bootstrap_list(&self.nodes)
    }
}

/// A one-off client to `node` (a fresh connection: the node may have restarted), with short
/// timeouts.
async fn client_to(addr: &str, ca: &Path) -> Option<Client> {
    let mut config = ClientConfig::new(addr.to_string(), TlsConfig::CaFile(ca.to_owned()));
    config.request_timeout = Duration::from_secs(3);
    config.connect_timeout = Duration::from_secs(3);
    tokio::time::timeout(Duration::from_secs(5), Client::connect(config))
        .await
        .ok()?
        .ok()
}

/// The topic's metadata as `node` sees it.
async fn metadata_of(addr: &str, ca: &Path) -> Option<MetadataResponse> {
    let client = client_to(addr, ca).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(
            Request::Metadata {
                topics: Some(vec![TOPIC.into(), OUTPUT.into()]),
            },
            Bytes::new(),
        ),
    )
    .await;
    client.close();
    match answer {
        Ok(Ok((ResponseBody::Metadata(m), _))) => Some(m),
        _ => None,
    }
}

/// The metadata leader as `node` sees it.
async fn controller_of(addr: &str, ca: &Path) -> Option<u32> {
    let client = client_to(addr, ca).await?;
    let status = tokio::time::timeout(Duration::from_secs(5), client.admin().cluster_status())
        .await
        .ok()?
        .ok();
    client.close();
    status?.controller
}

/// The consumer group's coordinator as `node` sees it.
async fn coordinator_of(addr: &str, ca: &Path) -> Option<u32> {
    let client = client_to(addr, ca).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(
            Request::FindCoordinator {
                group: GROUP.into(),
            },
            Bytes::new(),
        ),
    )
    .await;
    client.close();
    match answer {
        Ok(Ok((ResponseBody::Coordinator(info), _))) => Some(info.node_id),
        _ => None,
    }
}

/// (leader, replicas, in-sync) of each partition.
type Placement = Vec<(Option<u32>, Vec<u32>, Vec<u32>)>;

/// The placement of the topic's partitions, then of the pipeline output's and of the group
/// coordinator's offsets topic, where they exist.
fn placement(m: &MetadataResponse) -> Option<Placement> {
    let t = m.topics.iter().find(|t| t.name == TOPIC)?;
    let output = m
        .topics
        .iter()
        .filter(|t| t.name == OUTPUT || t.name == "__consumer_offsets");
    Some(
        t.partitions
            .iter()
            .chain(output.flat_map(|t| t.partitions.iter()))
            .map(|p| (p.leader, p.replicas.clone(), p.in_sync.clone()))
            .collect(),
    )
}

/// Waits (bounded) until `node` reports a placement for which `done` holds; the placement.
async fn wait_placement(
    addr: &str,
    ca: &Path,
    what: &str,
    done: impl Fn(&Placement) -> bool,
) -> Placement {
    let started = Instant::now();
    let mut last = None;
    loop {
        if let Some(p) = metadata_of(addr, ca).await.as_ref().and_then(placement) {
            if done(&p) {
                return p;
            }
            last = Some(p);
        }
        assert!(
            started.elapsed() < LIMIT,
            "{what}: not within {LIMIT:?}; last placement {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn whole(p: &Placement) -> bool {
    p.iter()
        .all(|(leader, replicas, in_sync)| leader.is_some() && in_sync.len() == replicas.len())
}

/// Runs the load and the faults; reads everything back; checks.
pub async fn run(dir: &Path, settings: Settings) -> Outcome {
    let peers: Vec<std::net::SocketAddr> = (0..settings.nodes)
        .map(|_| crate::free_udp_port())
        .collect();
    let links = match settings.faults.iter().any(|f| f.cuts_links()) {
        true => Some(Arc::new(Links::start(&peers).await)),
        false => None,
    };
    let nodes = tokio::task::block_in_place(|| {
        start_cluster_nodes(dir, &peers, 1..=settings.nodes as u32, "", &|id| {
            let routes = links.as_ref().map(|l| l.routes_of(id)).unwrap_or_default();
            format!("{}{routes}", settings.cluster_extra)
        })
    });
    let ca = nodes[0].ca_path();
    let cluster = Arc::new(Mutex::new(Cluster {
        nodes,
        ca: ca.clone(),
    }));
    let bootstrap = cluster.lock().unwrap().bootstrap();
    let admin = {
        let mut config = ClientConfig::new(bootstrap.clone(), TlsConfig::CaFile(ca.clone()));
        config.request_timeout = Duration::from_secs(10);
        Client::connect(config).await.expect("connect")
    };
    admin
        .admin()
        .create_topic_replicated(
            TOPIC,
            settings.partitions,
            settings.replication_factor,
            Default::default(),
        )
        .await
        .expect("create the topic");
    let first = cluster.lock().unwrap().addr(1);
    wait_placement(&first, &ca, "the topic is placed and in sync", whole).await;
    if settings.pipeline {
        admin
            .admin()
            .create_topic_replicated(
                OUTPUT,
                settings.partitions,
                settings.replication_factor,
                Default::default(),
            )
            .await
            .expect("create the pipeline's output topic");
        let c2 = cluster.clone();
        tokio::task::spawn_blocking(move || {
            let c = c2.lock().unwrap();
            c.nodes[0].run_ok(&["plugin", "deploy", "copy", "--builtin", "identity-map"]);
            // A node serves what it has applied: the pipeline is created once node 1 has.
            let started = Instant::now();
            while !c.nodes[0].run_ok(&["plugin", "list"]).contains("copy") {
                assert!(started.elapsed() < LIMIT, "the plugin never appeared");
                std::thread::sleep(Duration::from_millis(100));
            }
            c.nodes[0].run_ok(&[
                "pipeline", "create", "copy", "--plugin", "copy", "--from", TOPIC, "--to", OUTPUT,
            ]);
        })
        .await
        .unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(usize, Ack, Instant)>>> = Arc::default();
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let commits: Arc<Mutex<BTreeMap<u32, u64>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for producer in 0..settings.producers {
        let client = connect(&bootstrap, &ca).await;
        tasks.push(tokio::spawn(produce(
            producer,
            client,
            settings.records_per_second,
            stop.clone(),
            acks.clone(),
            failed.clone(),
        )));
    }
    for consumer in 0..settings.assigned_consumers {
        let client = connect(&bootstrap, &ca).await;
        tasks.push(tokio::spawn(consume_assigned(
            consumer,
            client,
            stop.clone(),
            reads.clone(),
        )));
    }
    for member in 0..settings.group_consumers {
        let client = connect(&bootstrap, &ca).await;
        tasks.push(tokio::spawn(consume_in_group(
            settings.assigned_consumers + member,
            client,
            stop.clone(),
            reads.clone(),
            commits.clone(),
        )));
    }

    // The faults, one after another, each healed before the next.
    let mut injected = Vec::new();
    let mut windows = Vec::new();
    tokio::time::sleep(settings.between_faults).await;
    for (i, fault) in settings.faults.iter().enumerate() {
        let started = Instant::now();
        let what = inject(
            &cluster,
            links.as_deref(),
            *fault,
            i as u32 % settings.partitions,
        )
        .await;
        injected.push(format!(
            "{:>3}. {what}; whole again after {:.1?}",
            i + 1,
            started.elapsed()
        ));
        tokio::time::sleep(settings.between_faults).await;
        windows.push((started, Instant::now()));
    }

    // Stop the load; every delivery has its outcome before the producers return.
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .expect("a client task stopped in time")
            .expect("a client task ended without panicking");
    }

    // Read every partition back from its leader, up to the high watermark.
    let final_log = read_back(&admin, TOPIC, settings.partitions, None).await;
    let (pipeline_missing, pipeline_extra) = if settings.pipeline {
        let inputs: usize = final_log.values().map(BTreeMap::len).sum();
        let output = read_back(&admin, OUTPUT, settings.partitions, Some(inputs)).await;
        let compared = compare_output(&final_log, &output);
        if compared != (0, 0) {
            let c2 = cluster.clone();
            let described = tokio::task::spawn_blocking(move || {
                c2.lock().unwrap().nodes[0].run_ok(&["pipeline", "describe", "copy"])
            })
            .await
            .unwrap();
            eprintln!("{described}");
        }
        compared
    } else {
        (0, 0)
    };
    let topic_ids = replicas_level(&cluster, &ca, settings.pipeline).await;
    let committed = commits.lock().unwrap().clone();
    let lost_commits = check_commits(&admin, &committed, &final_log).await;
    admin.close();

    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let gaps = gaps(&acks, &windows, settings.producers);
    let history = History {
        acks: acks.into_iter().map(|(_, a, _)| a).collect(),
        reads: std::mem::take(&mut *reads.lock().unwrap()),
        final_log,
    };
    let outcome = Outcome {
        report: check(&history),
        injected,
        gaps,
        lost_commits,
        pipeline_missing,
        pipeline_extra,
        topic_ids,
        failed_deliveries: failed.load(Ordering::Relaxed),
    };
    let mut cluster = Arc::try_unwrap(cluster)
        .ok()
        .expect("no one else holds the cluster")
        .into_inner()
        .unwrap();
    if !outcome.is_clean() {
        eprintln!("{}", crate::all_logs(&cluster.nodes));
    }
    for node in &mut cluster.nodes {
        node.terminate();
    }
    outcome
}

async fn connect(bootstrap: &str, ca: &Path) -> Client {
    let config = ClientConfig::new(bootstrap.to_string(), TlsConfig::CaFile(ca.to_owned()));
    let started = Instant::now();
    loop {
        match Client::connect(config.clone()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(started.elapsed() < LIMIT, "cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Injects one fault (on partition `partition` where it matters) and waits until the cluster
/// is whole again; a line saying what was done.
async fn inject(
    cluster: &Arc<Mutex<Cluster>>,
    links: Option<&Links>,
    fault: Fault,
    partition: u32,
) -> String {
    let (addrs, ca) = {
        let c = cluster.lock().unwrap();
        let addrs: Vec<String> = (1..=c.nodes.len() as u32).map(|n| c.addr(n)).collect();
        (addrs, c.ca.clone())
    };
    let addr_of = |node: u32| addrs[node as usize - 1].clone();
    let other_than = |node: u32| addr_of(if node == 1 { 2 } else { 1 });
    let now = wait_placement(&addr_of(1), &ca, "whole before a fault", whole).await;
    let (leader, replicas, _) = now[partition as usize].clone();
    let leader = leader.expect("whole means led");
    let what = match fault {
        Fault::KillLeader | Fault::Restart => {
            let victim = leader;
            let clean = fault == Fault::Restart;
            let c2 = cluster.clone();
            tokio::task::spawn_blocking(move || {
                let mut c = c2.lock().unwrap();
                let node = &mut c.nodes[victim as usize - 1];
                if clean {
                    node.terminate();
                } else {
                    node.kill9();
                }
            })
            .await
            .unwrap();
            let stopped = Instant::now();
            wait_placement(&other_than(victim), &ca, "another replica leads", |p| {
                p[partition as usize].0.is_some_and(|l| l != victim)
            })
            .await;
            let replaced = stopped.elapsed();
            restart(cluster, victim).await;
            if clean {
                format!(
                    "restart (SIGTERM) of node {victim}, leader of partition {partition} \
                     (replaced after {replaced:.1?})"
                )
            } else {
                format!(
                    "kill -9 of node {victim}, leader of partition {partition} (replaced after \
                     {replaced:.1?})"
                )
            }
        }
        Fault::KillController => {
            let controller = controller_of(&addr_of(1), &ca)
                .await
                .expect("a metadata leader is known");
            let c2 = cluster.clone();
            tokio::task::spawn_blocking(move || {
                c2.lock().unwrap().nodes[controller as usize - 1].kill9();
            })
            .await
            .unwrap();
            let started = Instant::now();
            loop {
                if let Some(c) = controller_of(&other_than(controller), &ca).await
                    && c != controller
                {
                    break;
                }
                assert!(
                    started.elapsed() < LIMIT,
                    "no new metadata leader after node {controller}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            restart(cluster, controller).await;
            format!("kill -9 of node {controller}, the metadata leader")
        }
        Fault::PauseLeader => {
            let victim = leader;
            signal(cluster, victim, "STOP").await;
            wait_placement(
                &other_than(victim),
                &ca,
                "another replica replaces the paused leader",
                |p| p[partition as usize].0.is_some_and(|l| l != victim),
            )
            .await;
            signal(cluster, victim, "CONT").await;
            format!("SIGSTOP of node {victim}, leader of partition {partition}, until replaced")
        }
        Fault::KillCoordinator => {
            let coordinator = coordinator_of(&addr_of(1), &ca)
                .await
                .expect("the group has a coordinator");
            let c2 = cluster.clone();
            tokio::task::spawn_blocking(move || {
                c2.lock().unwrap().nodes[coordinator as usize - 1].kill9();
            })
            .await
            .unwrap();
            let started = Instant::now();
            loop {
                if let Some(c) = coordinator_of(&other_than(coordinator), &ca).await
                    && c != coordinator
                {
                    break;
                }
                assert!(
                    started.elapsed() < LIMIT,
                    "no new coordinator after node {coordinator}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let replaced = started.elapsed();
            restart(cluster, coordinator).await;
            format!(
                "kill -9 of node {coordinator}, the group's coordinator (replaced after \
                 {replaced:.1?})"
            )
        }
        Fault::IsolateLeader => {
            let links = links.expect("links are proxied when the faults cut them");
            let victim = leader;
            let others: Vec<u32> = (1..=addrs.len() as u32).filter(|n| *n != victim).collect();
            for other in &others {
                links.cut(victim, *other, true);
            }
            let cut = Instant::now();
            wait_placement(
                &other_than(victim),
                &ca,
                "another replica replaces the isolated leader",
                |p| p[partition as usize].0.is_some_and(|l| l != victim),
            )
            .await;
            let replaced = cut.elapsed();
            for other in &others {
                links.cut(victim, *other, false);
            }
            format!(
                "network cut of node {victim}, leader of partition {partition}, from every \
                 other node until replaced (after {replaced:.1?})"
            )
        }
        Fault::CutLink => {
            let links = links.expect("links are proxied when the faults cut them");
            let follower = *replicas.iter().find(|r| **r != leader).expect("a follower");
            links.cut(leader, follower, true);
            // Whichever notices first: the follower leaves the in-sync set, or (when one of the
            // two is the metadata leader) the other is fenced and leadership moves.
            let third = (1..=addrs.len() as u32)
                .find(|n| *n != leader && *n != follower)
                .expect("three nodes");
            wait_placement(
                &addr_of(third),
                &ca,
                "the cut link costs one of its ends its place",
                |p| {
                    let (l, _, isr) = &p[partition as usize];
                    *l != Some(leader) || !isr.contains(&follower)
                },
            )
            .await;
            links.cut(leader, follower, false);
            format!(
                "network cut between node {leader}, leader of partition {partition}, and node \
                 {follower}, its follower, until one lost its place"
            )
        }
        Fault::PauseFollower => {
            let victim = *replicas.iter().find(|r| **r != leader).expect("a follower");
            signal(cluster, victim, "STOP").await;
            wait_placement(
                &addr_of(leader),
                &ca,
                "the paused follower leaves the in-sync set",
                |p| !p[partition as usize].2.contains(&victim),
            )
            .await;
            signal(cluster, victim, "CONT").await;
            format!(
                "SIGSTOP of node {victim}, follower of partition {partition}, until out of sync"
            )
        }
    };
    wait_placement(&addr_of(1), &ca, "whole after the fault", whole).await;
    what
}

async fn signal(cluster: &Arc<Mutex<Cluster>>, node: u32, name: &'static str) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.lock().unwrap().nodes[node as usize - 1].signal(name))
        .await
        .unwrap();
}

async fn restart(cluster: &Arc<Mutex<Cluster>>, node: u32) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.lock().unwrap().nodes[node as usize - 1].restart())
        .await
        .unwrap();
}

/// One producer: `p<i>-<seq>` values, keyed so that they spread over the partitions, paced,
/// with a window of deliveries outstanding; every acknowledgement recorded.
async fn produce(
    i: usize,
    client: Client,
    per_second: u32,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(usize, Ack, Instant)>>>,
    failed: Arc<AtomicU64>,
) {
    let producer = client.producer(ProducerConfig {
        acks: Acks::All,
        idempotence: true,
        retries: u32::MAX,
        delivery_timeout: Duration::from_secs(120),
        linger: Duration::from_millis(5),
        ..ProducerConfig::default()
    });
    let pace = Duration::from_secs(1) / per_second.max(1);
    let mut outstanding = VecDeque::new();
    let settle = |value: String, delivery| match delivery {
        Ok(meta) => {
            let meta: sluice_client::RecordMetadata = meta;
            acks.lock().unwrap().push((
                i,
                Ack {
                    value,
                    partition: meta.partition,
                    offset: meta.offset,
                },
                Instant::now(),
            ));
        }
        Err(e) => {
            eprintln!("producer {i}: {value} failed: {e}");
            failed.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut seq = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let value = format!("p{i}-{seq}");
        let record = ProducerRecord::new(TOPIC, value.clone()).with_key(format!("k{}", seq % 101));
        match producer.send(record).await {
            Ok(d) => outstanding.push_back((value, d)),
            Err(e) => panic!("producer {i}: send refused: {e}"),
        }
        seq += 1;
        while outstanding.len() > 64 {
            let (value, d) = outstanding.pop_front().expect("not empty");
            settle(value, d.await);
        }
        next += pace;
        tokio::time::sleep_until(next.into()).await;
    }
    let _ = producer.flush().await;
    while let Some((value, d)) = outstanding.pop_front() {
        settle(value, d.await);
    }
}

fn record_reads(
    consumer: usize,
    records: &[sluice_client::ConsumerRecord],
    fresh: &mut Vec<u32>,
    reads: &Mutex<Vec<Read>>,
) {
    let mut reads = reads.lock().unwrap();
    for r in records {
        let after_seek = if let Some(i) = fresh.iter().position(|p| *p == r.partition) {
            fresh.swap_remove(i);
            true
        } else {
            false
        };
        reads.push(Read {
            consumer,
            partition: r.partition,
            offset: r.offset,
            value: String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            after_seek,
        });
    }
}

/// A consumer reading every partition by assignment from the start.
async fn consume_assigned(
    id: usize,
    client: Client,
    stop: Arc<AtomicBool>,
    reads: Arc<Mutex<Vec<Read>>>,
) {
    let mut consumer = client.consumer(ConsumerConfig {
        reset: OffsetReset::Earliest,
        max_wait: Duration::from_millis(200),
        ..ConsumerConfig::default()
    });
    let started = Instant::now();
    loop {
        match consumer.assign_all(TOPIC).await {
            Ok(_) => break,
            Err(e) => {
                assert!(started.elapsed() < LIMIT, "consumer {id}: assign: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut fresh = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll().await {
            Ok(records) => record_reads(id, &records, &mut fresh, &reads),
            Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("consumer {id}: poll: {e}"),
        }
    }
}

/// A group member: polls, records, commits; the offsets it committed are remembered.
async fn consume_in_group(
    id: usize,
    client: Client,
    stop: Arc<AtomicBool>,
    reads: Arc<Mutex<Vec<Read>>>,
    commits: Arc<Mutex<BTreeMap<u32, u64>>>,
) {
    let mut consumer = client.consumer(ConsumerConfig {
        reset: OffsetReset::Earliest,
        max_wait: Duration::from_millis(200),
        ..ConsumerConfig::default()
    });
    let options = GroupOptions {
        session_timeout: Duration::from_secs(10),
        auto_commit_interval: None,
        ..GroupOptions::default()
    };
    let started = Instant::now();
    loop {
        match consumer.subscribe(GROUP, &[TOPIC], options.clone()).await {
            Ok(()) => break,
            Err(e) => {
                assert!(started.elapsed() < LIMIT, "member {id}: subscribe: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut fresh: Vec<u32> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let records = match consumer.poll().await {
            Ok(records) => records,
            Err(e) if e.is_retriable() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("member {id}: poll: {e}"),
        };
        for e in consumer.take_events() {
            if let GroupEvent::Assigned(ps) = e {
                fresh.extend(ps.into_iter().map(|(_, p)| p));
            }
        }
        record_reads(id, &records, &mut fresh, &reads);
        if records.is_empty() {
            continue;
        }
        let positions: Vec<(u32, u64)> = records
            .iter()
            .map(|r| r.partition)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|p| consumer.position(TOPIC, p).map(|o| (p, o)))
            .collect();
        match consumer.commit().await {
            Ok(()) => {
                let mut c = commits.lock().unwrap();
                for (p, o) in positions {
                    let e = c.entry(p).or_default();
                    *e = (*e).max(o);
                }
            }
            Err(e) if e.is_retriable() => {}
            // Fenced out of the group (a long fault): it rejoins at its next poll.
            Err(e) => eprintln!("member {id}: commit: {e}"),
        }
    }
    let _ = consumer.close().await;
}

/// Every partition of `topic`, read from its leader up to its high watermark once the
/// cluster has settled; with `at_least`, first waits (bounded) until the partitions hold
/// that many records in all.
async fn read_back(
    admin: &Client,
    topic: &str,
    partitions: u32,
    at_least: Option<usize>,
) -> BTreeMap<u32, BTreeMap<u64, String>> {
    let ends: Vec<u64> = {
        let started = Instant::now();
        loop {
            let asked = (0..partitions)
                .map(|p| (p, sluice_proto::OffsetSpec::Latest))
                .collect();
            let answer = admin
                .admin()
                .list_offsets(topic, asked)
                .await
                .and_then(|o| {
                    o.into_iter()
                        .map(|p| p.result.map_err(sluice_client::ClientError::Broker))
                        .collect::<Result<Vec<u64>, _>>()
                });
            match answer {
                Ok(ends)
                    if at_least.is_none_or(|n| ends.iter().sum::<u64>() as usize >= n)
                        || started.elapsed() > LIMIT =>
                {
                    break ends;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    assert!(started.elapsed() < LIMIT, "list offsets: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    let mut consumer = admin.consumer(ConsumerConfig {
        reset: OffsetReset::Earliest,
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    });
    consumer
        .assign(topic, &(0..partitions).collect::<Vec<_>>())
        .await
        .expect("assign for the read-back");
    let mut log: BTreeMap<u32, BTreeMap<u64, String>> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let done =
            (0..partitions).all(|p| consumer.position(topic, p).unwrap_or(0) >= ends[p as usize]);
        if done {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "read-back did not reach {ends:?}"
        );
        match consumer.poll().await {
            Ok(records) => {
                for r in records {
                    let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                        .into_owned();
                    log.entry(r.partition).or_default().insert(r.offset, value);
                }
            }
            Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("read-back: {e}"),
        }
    }
    log
}

/// Waits (bounded) until every node holds the same log end for every partition of the
/// topic (and of the pipeline's output), as each node itself reports; their ids.
async fn replicas_level(cluster: &Arc<Mutex<Cluster>>, ca: &Path, pipeline: bool) -> Vec<u64> {
    let addrs: Vec<String> = {
        let c = cluster.lock().unwrap();
        (1..=c.nodes.len() as u32).map(|n| c.addr(n)).collect()
    };
    let topics: Vec<&str> = if pipeline {
        vec![TOPIC, OUTPUT]
    } else {
        vec![TOPIC]
    };
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for addr in &addrs {
            let Some(client) = client_to(addr, ca).await else {
                break;
            };
            let mut view = Vec::new();
            for topic in &topics {
                let answer = client
                    .request(
                        Request::DescribeTopic {
                            name: (*topic).into(),
                        },
                        Bytes::new(),
                    )
                    .await;
                if let Ok((ResponseBody::Topic(t), _)) = answer {
                    view.push((
                        t.topic_id,
                        t.partitions.iter().map(|p| p.log_end).collect::<Vec<_>>(),
                    ));
                }
            }
            client.close();
            views.push(view);
        }
        if views.len() == addrs.len()
            && views[0].len() == topics.len()
            && views.iter().all(|v| *v == views[0])
        {
            return views[0].iter().map(|(id, _)| *id).collect();
        }
        assert!(
            started.elapsed() < LIMIT,
            "the replicas never reached the same log ends: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pipeline's output against its input: (input values missing from the output, output
/// records beyond one per input value).
fn compare_output(
    input: &BTreeMap<u32, BTreeMap<u64, String>>,
    output: &BTreeMap<u32, BTreeMap<u64, String>>,
) -> (usize, usize) {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for v in input.values().flat_map(|l| l.values()) {
        *counts.entry(v).or_default() += 1;
    }
    let mut extra = 0;
    for v in output.values().flat_map(|l| l.values()) {
        match counts.get_mut(v.as_str()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                if extra < 10 {
                    eprintln!("pipeline output {v:?} is not one input record");
                }
                extra += 1;
            }
        }
    }
    let missing = counts.values().filter(|n| **n > 0).count();
    if missing > 0 {
        // Where they are: a tail of a partition (the pipeline stalled) or holes (it skipped).
        for (p, log) in input {
            let gone: Vec<u64> = log
                .iter()
                .filter(|(_, v)| counts.get(v.as_str()).is_some_and(|n| *n > 0))
                .map(|(o, _)| *o)
                .collect();
            if let (Some(first), Some(last)) = (gone.first(), gone.last()) {
                eprintln!(
                    "input partition {p}: {} of {} records missing from the output, offsets \
                     {first}..={last}; its log ends at {}",
                    gone.len(),
                    log.len(),
                    log.keys().next_back().map_or(0, |o| o + 1)
                );
            }
        }
    }
    (missing, extra)
}

/// Committed offsets the group lost: any partition whose committed offset now is below the
/// highest one a member was told it committed.
async fn check_commits(
    admin: &Client,
    committed: &BTreeMap<u32, u64>,
    final_log: &BTreeMap<u32, BTreeMap<u64, String>>,
) -> usize {
    if committed.is_empty() {
        return 0;
    }
    let now: HashMap<u32, u64> = {
        let started = Instant::now();
        loop {
            match admin
                .request(
                    Request::OffsetFetch {
                        group: GROUP.into(),
                    },
                    Bytes::new(),
                )
                .await
            {
                Ok((ResponseBody::GroupOffsets(o), _)) => {
                    break o
                        .into_iter()
                        .filter(|o| o.topic == TOPIC)
                        .map(|o| (o.partition, o.offset))
                        .collect();
                }
                other => {
                    assert!(started.elapsed() < LIMIT, "offset fetch: {other:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    let mut lost = 0;
    for (p, o) in committed {
        let end = final_log
            .get(p)
            .and_then(|l| l.keys().next_back())
            .map_or(0, |o| o + 1);
        let have = now.get(p).copied().unwrap_or(0);
        if have < *o || have > end {
            eprintln!("partition {p}: committed {o}, the group now holds {have} (log end {end})");
            lost += 1;
        }
    }
    lost
}

/// For each fault window and producer, the longest time between consecutive acknowledgements
/// (including from the window's start to the first one).
fn gaps(
    acks: &[(usize, Ack, Instant)],
    windows: &[(Instant, Instant)],
    producers: usize,
) -> Vec<Duration> {
    let mut by_producer: Vec<Vec<Instant>> = vec![Vec::new(); producers];
    for (p, _, at) in acks {
        by_producer[*p].push(*at);
    }
    let mut gaps = Vec::new();
    for (start, end) in windows {
        for times in &mut by_producer {
            times.sort();
            let mut last = *start;
            let mut longest = None;
            for t in times.iter().filter(|t| **t > *start && **t <= *end) {
                longest = Some(longest.unwrap_or(Duration::ZERO).max(*t - last));
                last = *t;
            }
            // No acknowledgement in the whole window: the gap is the window.
            gaps.push(longest.unwrap_or(*end - *start));
        }
    }
    gaps
}
