//! Observability (issue 12): a real broker's `/metrics` read as Prometheus reads it, during
//! produce and consume, and its `/health/ready` across a restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_client::{ConsumerConfig, GroupOptions, OffsetReset, ProducerConfig, ProducerRecord};
use sluice_proto::TopicConfig;
use sluice_tests::scrape::{METRICS, get, metrics_addr, scrape, sum};
use sluice_tests::{BrokerProcess, TEST_CONFIG};

/// A broker with its metrics listener on, its listener's address, a client, and `topic`.
async fn broker_with_metrics(
    dir: &std::path::Path,
    topic: &str,
    partitions: u32,
) -> (BrokerProcess, std::net::SocketAddr, sluice_client::Client) {
    let broker = BrokerProcess::start(dir, &format!("{TEST_CONFIG}{METRICS}"));
    let addr = metrics_addr(dir);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(topic, partitions, TopicConfig::default())
        .await
        .unwrap();
    (broker, addr, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_produce_consume_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, addr, client) = broker_with_metrics(dir.path(), "m", 2).await;

    // Nothing produced yet.
    let before = scrape(addr).await;
    assert_eq!(
        sum(&before, "sluice_records_in_total", &[("topic", "m")]),
        0.0
    );

    const N: usize = 600;
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..N {
        let record = ProducerRecord::new("m", format!("value-{i}")).with_key(format!("k{i}"));
        deliveries.push(producer.send(record).await.unwrap());
        if i % 50 == 49 {
            // Many small batches, so a small fetch reads part of a partition.
            producer.flush().await.unwrap();
        }
    }
    producer.flush().await.unwrap();
    let mut per_partition: HashMap<u32, u64> = HashMap::new();
    for d in deliveries {
        *per_partition.entry(d.await.unwrap().partition).or_default() += 1;
    }

    let after = scrape(addr).await;
    // Every metric has its HELP and TYPE.
    for name in [
        "sluice_requests_total",
        "sluice_records_in_total",
        "sluice_request_duration_seconds",
        "sluice_partition_log_end_offset",
    ] {
        assert!(after.docs.contains_key(name), "no HELP for {name}");
    }
    assert_eq!(
        sum(&after, "sluice_records_in_total", &[("topic", "m")]),
        N as f64,
        "records in = records produced"
    );
    assert!(sum(&after, "sluice_bytes_in_total", &[("topic", "m")]) > (N * 7) as f64);
    assert!(
        sum(
            &after,
            "sluice_requests_total",
            &[("type", "produce"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        sum(
            &after,
            "sluice_request_duration_seconds",
            &[("type", "produce")]
        ) >= 1.0,
        "the produce latency histogram has observations"
    );
    for (partition, count) in &per_partition {
        let p = partition.to_string();
        assert_eq!(
            sum(
                &after,
                "sluice_partition_log_end_offset",
                &[("topic", "m"), ("partition", &p)]
            ),
            *count as f64
        );
    }
    assert!(sum(&after, "sluice_store_commit_batches", &[]) >= 1.0);
    assert!(
        sum(&after, "sluice_store_file_bytes", &[])
            >= sum(&after, "sluice_store_partition_bytes", &[])
    );
    assert!(sum(&after, "sluice_connections_open", &[]) >= 1.0);

    // A group reads some records and commits: its lag is what it has not committed. Then it
    // reads the rest and commits again: the lag falls to 0.
    let mut consumer = client.consumer(ConsumerConfig {
        reset: OffsetReset::Earliest,
        max_partition_bytes: 2048,
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    });
    consumer
        .subscribe(
            "mg",
            &["m"],
            GroupOptions {
                auto_commit_interval: None,
                ..GroupOptions::default()
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut read = 0usize;
    while read == 0 {
        read += consumer.poll().await.unwrap().len();
        assert!(Instant::now() < deadline, "the group never read a record");
    }
    assert!(read < N, "a small fetch reads part of the topic first");
    consumer.commit().await.unwrap();
    let partway = scrape(addr).await;
    assert_eq!(
        sum(&partway, "sluice_consumer_group_lag", &[("group", "mg")]),
        (N - read) as f64,
        "lag = produced - committed"
    );
    while read < N {
        read += consumer.poll().await.unwrap().len();
        assert!(Instant::now() < deadline, "read {read} of {N} within 60 s");
    }
    consumer.commit().await.unwrap();
    let caught_up = scrape(addr).await;
    assert_eq!(
        sum(&caught_up, "sluice_consumer_group_lag", &[("group", "mg")]),
        0.0
    );
    assert!(
        sum(
            &caught_up,
            "sluice_group_rebalances_total",
            &[("group", "mg")]
        ) >= 1.0
    );
    assert_eq!(
        sum(
            &caught_up,
            "sluice_consumer_group_members",
            &[("group", "mg")]
        ),
        1.0
    );
    assert!(sum(&caught_up, "sluice_streams_open", &[]) >= 1.0);
    assert_eq!(
        sum(&caught_up, "sluice_records_out_total", &[("topic", "m")]),
        N as f64,
        "records out = records consumed"
    );
    consumer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_group_state_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the checks right after a start land inside the delay however busy the
    // machine is; the waits below end as soon as the broker is ready.
    let config = format!("{TEST_CONFIG}{METRICS}group_load_delay_ms = 8000\n");
    let mut broker = BrokerProcess::spawn_at(dir.path(), &config, "127.0.0.1:0".parse().unwrap());
    let addr = metrics_addr(dir.path());
    // Live at once; not ready while the start waits to load group state.
    assert_eq!(get(addr, "/health/live").await.0, 200);
    let (status, body) = get(addr, "/health/ready").await;
    assert_eq!(status, 503, "{body}");
    let started = Instant::now();
    let mut said_why = body.contains("not ready");
    loop {
        let (status, body) = get(addr, "/health/ready").await;
        if status == 200 {
            break;
        }
        said_why |= body.contains("loading consumer group state");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready within 60 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said_why, "the 503 says what the node waits for");
    broker.wait_ready();
    // Ready means serving: a client gets its answer at once.
    let client = broker.client().await;
    client
        .admin()
        .create_topic("r", 1, TopicConfig::default())
        .await
        .unwrap();
    let _ = std::fs::remove_file(dir.path().join("metrics.addr"));
    drop(client);

    // A restart: not ready again until it has loaded the groups.
    assert!(broker.terminate(), "clean stop");
    broker.restart();
    let addr = metrics_addr(dir.path());
    let (status, body) = get(addr, "/health/ready").await;
    assert_eq!(status, 503, "right after a restart: {body}");
    let restarted = Instant::now();
    while get(addr, "/health/ready").await.0 != 200 {
        assert!(restarted.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the scrape of one of `addrs` satisfies `done`.
async fn scrape_until(
    addrs: &[std::net::SocketAddr],
    what: &str,
    done: impl Fn(&[prometheus_parse::Scrape]) -> bool,
) -> Vec<prometheus_parse::Scrape> {
    let started = Instant::now();
    loop {
        let mut scrapes = Vec::new();
        for a in addrs {
            scrapes.push(scrape(*a).await);
        }
        if done(&scrapes) {
            return scrapes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{what}: not within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_figures_follow_replication_and_a_lost_follower() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes =
        sluice_tests::start_cluster_with(dir.path(), 3, METRICS, "replica_lag_max_ms = 2000\n");
    let addrs: Vec<_> = (1..=3)
        .map(|i| metrics_addr(&dir.path().join(format!("node-{i}"))))
        .collect();
    let client = sluice_tests::cluster_client(&nodes).await;
    client
        .admin()
        .create_topic_replicated("rm", 1, 3, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    for i in 0..200 {
        producer
            .send(ProducerRecord::new("rm", format!("v{i}")))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();

    // One metadata leader; the partition's leader sees three in sync, none behind.
    let total = |s: &[prometheus_parse::Scrape], name: &str, labels: &[(&str, &str)]| {
        s.iter().map(|x| sum(x, name, labels)).sum::<f64>()
    };
    let rm = [("topic", "rm")];
    let scrapes = scrape_until(&addrs, "replicated and in sync", |s| {
        total(s, "sluice_partition_in_sync_replicas", &rm) == 3.0
            && total(s, "sluice_replica_follower_lag", &rm) == 0.0
            && s.iter()
                .filter(|x| sum(x, "sluice_replica_follower_lag", &rm) == 0.0)
                .count()
                == 3
    })
    .await;
    assert_eq!(total(&scrapes, "sluice_raft_is_leader", &[]), 1.0);
    assert!(total(&scrapes, "sluice_raft_term", &[]) >= 3.0);
    assert_eq!(
        total(&scrapes, "sluice_partitions_under_replicated", &[]),
        0.0
    );
    assert!(total(&scrapes, "sluice_partition_leader_elections_total", &[]) >= 1.0);
    assert_eq!(total(&scrapes, "sluice_records_in_total", &rm), 200.0);
    let leader_index = scrapes
        .iter()
        .position(|s| sum(s, "sluice_partition_in_sync_replicas", &rm) == 3.0)
        .expect("the partition's leader exports its in-sync set");

    // A follower is killed: the leader reports the partition under-replicated once the
    // follower has lagged past replica_lag_max_ms and left the in-sync set.
    let victim = (0..3).find(|i| *i != leader_index).unwrap();
    nodes[victim].kill9();
    let alive: Vec<_> = (0..3).filter(|i| *i != victim).map(|i| addrs[i]).collect();
    scrape_until(&alive, "under-replicated after a follower died", |s| {
        total(s, "sluice_partitions_under_replicated", &[]) >= 1.0
            && total(s, "sluice_partition_in_sync_replicas", &rm) == 2.0
    })
    .await;
    // Back: in sync again, nothing under-replicated.
    let _ = std::fs::remove_file(dir.path().join(format!("node-{}/metrics.addr", victim + 1)));
    nodes[victim].restart();
    scrape_until(&alive, "in sync again after the restart", |s| {
        total(s, "sluice_partitions_under_replicated", &[]) == 0.0
            && total(s, "sluice_partition_in_sync_replicas", &rm) == 3.0
    })
    .await;
}

/// A pseudo-terminal: (controller, the terminal end a child writes to).
fn pty() -> (std::fs::File, std::fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("posix_openpt");
    grantpt(&controller).expect("grantpt");
    unlockpt(&controller).expect("unlockpt");
    let name = ptsname(&controller, Vec::new()).expect("ptsname");
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().expect("a UTF-8 path"))
        .expect("open the terminal end");
    (std::fs::File::from(controller), terminal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_topic_being_written_on_a_terminal() {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let (_broker, addr, client) = broker_with_metrics(dir.path(), "topwatch", 1).await;
    // Records keep arriving while `sluice top` watches.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, producer) = (stop.clone(), client.producer(ProducerConfig::default()));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                producer
                    .send_and_wait(ProducerRecord::new("topwatch", format!("v{i}")))
                    .await
                    .unwrap();
                i += 1;
            }
            i
        })
    };

    let (mut controller, terminal) = pty();
    let mut top = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["top", "--metrics", &addr.to_string()])
        .args(["--interval-ms", "300", "--iterations", "8"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(terminal.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(terminal))
        .spawn()
        .expect("spawn sluice top");
    // Read what it draws until the terminal closes (the read fails once top has exited).
    let screen = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = controller.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = tokio::task::spawn_blocking(move || top.wait().unwrap())
        .await
        .unwrap();
    let screen = tokio::time::timeout(Duration::from_secs(30), screen)
        .await
        .expect("the terminal closes when top exits")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(status.success(), "{status}: {screen}");

    // On a terminal it redraws in place, frame after frame.
    let frames: Vec<&str> = screen
        .split("\x1b[H\x1b[2J")
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(frames.len(), 8, "{screen}");
    assert!(frames[0].contains("IN rec/s"), "{}", frames[0]);
    // The topic being written shows, with records coming in.
    let rates: Vec<f64> = frames
        .iter()
        .filter_map(|f| f.lines().find(|l| l.starts_with("topwatch")))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert!(
        rates.iter().any(|r| *r > 0.0),
        "no frame shows topwatch being written ({written} records sent): {screen}"
    );
}

#[test]
fn json_log_lines_carry_the_spans_of_connection_stream_and_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
    let mut broker = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["broker", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info,sluice_broker=debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn broker");
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(data.join("broker.addr")) {
            break a;
        }
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["--broker", &addr, "--tls-ca"])
        .arg(data.join("tls/ca.pem"))
        .args(["topic", "create", "logged"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _ = std::process::Command::new("kill")
        .arg(broker.id().to_string())
        .status();
    let _ = broker.wait();

    let text = std::fs::read_to_string(dir.path().join("broker.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["fields"].is_object())
    );
    let handled = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "request handled" && l["span"]["type"] == "create_topic"
        })
        .unwrap_or_else(|| panic!("no create_topic request line: {text}"));
    let spans: Vec<&str> = handled["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(spans, ["conn", "stream", "request"], "{handled}");
    assert!(handled["spans"][0]["id"].is_number(), "{handled}");
}

/// The Grafana dashboard reads only metrics that exist: every `sluice_*` name in its queries
/// is one docs/metrics.md lists (histograms by their `_bucket`, `_sum` or `_count` series).
#[test]
fn the_dashboard_queries_documented_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/grafana/sluice-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("sluice_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.push(name);
            }
        }
    }
    assert!(names.len() > 20, "{names:?}");
    for name in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            docs.contains(&format!("`{base}`")),
            "the dashboard queries {name}, which docs/metrics.md does not list"
        );
    }
}

/// With `metrics_bearer_token_file`, `/metrics` answers only a scrape that carries the token
/// (as Prometheus's `bearer_token_file` sends it); health stays open for probes; `sluice top`
/// sends it from `--metrics-token-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_can_require_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, "t0ken-for-prometheus\n").unwrap();
    let data = dir.path().join("b");
    let broker = BrokerProcess::start(
        &data,
        &format!(
            "{TEST_CONFIG}{METRICS}metrics_bearer_token_file = \"{}\"\n",
            token_file.display()
        ),
    );
    let addr = metrics_addr(&data);
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("sluice_"), "{body}");
    assert_eq!(get(addr, "/health/live").await.0, 200);
    let wait = Duration::from_secs(20);
    let text = sluice_observe::scrape::fetch(addr, wait, Some("t0ken-for-prometheus"))
        .await
        .unwrap();
    assert!(
        text.contains("sluice_requests_total") || text.contains("# HELP"),
        "{text}"
    );
    assert!(
        sluice_observe::scrape::fetch(addr, wait, Some("wrong"))
            .await
            .unwrap_err()
            .contains("401")
    );
    let top = |with_token: bool| {
        let mut args = vec![
            "top".to_string(),
            "--metrics".into(),
            addr.to_string(),
            "--iterations".into(),
            "1".into(),
        ];
        if with_token {
            args.push("--metrics-token-file".into());
            args.push(token_file.display().to_string());
        }
        broker.run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), b"")
    };
    assert!(top(true).status.success());
    let refused = top(false);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}
