//! Plugins through the real broker: deploy (validated, versioned, kept across a restart), and
//! fetch-time transforms (issue 3, acceptance 5).

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{ConsumerConfig, FetchTransform, ProducerConfig, ProducerRecord, SeekTo};
use sluice_proto::{ErrorCode, Request, TopicConfig};
use sluice_tests::{BrokerProcess, TEST_CONFIG, describe_output};

#[test]
fn deploy_validates_versions_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let filter = sluice_wasm_plugins::path("json-filter");
    let filter = filter.to_str().unwrap();
    let out = broker.run_ok(&["plugin", "deploy", "only-red", filter]);
    assert!(
        out.contains("deployed plugin only-red (transform) version 1"),
        "{out}"
    );
    let out = broker.run_ok(&["plugin", "deploy", "only-red", filter]);
    assert!(out.contains("version 2"), "{out}");
    let d = broker.run_ok(&["plugin", "describe", "only-red"]);
    assert!(d.contains("2 version(s)"), "{d}");

    // Not a component; not even wasm.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm this is not a component").unwrap();
    broker.run_fails(
        &["plugin", "deploy", "junk", junk.to_str().unwrap()],
        "invalid plugin",
    );
    // A new version must implement the same world.
    let partitioner = sluice_wasm_plugins::path("json-partitioner");
    broker.run_fails(
        &[
            "plugin",
            "deploy",
            "only-red",
            partitioner.to_str().unwrap(),
        ],
        "must be one too",
    );
    broker.run_fails(&["plugin", "describe", "nope"], "not deployed");

    // kill -9 and restart: the plugin is still there and still runs.
    broker.kill9();
    broker.restart();
    let list = broker.run_ok(&["plugin", "list"]);
    assert!(list.contains("only-red\ttransform\tversion 2"), "{list}");
    assert!(!list.contains("junk"), "{list}");
    broker.run_ok(&["topic", "create", "colors"]);
    let out = broker.run_cli(
        &["produce", "colors"],
        b"{\"c\":\"red\"}\n{\"c\":\"blue\"}\n",
    );
    assert!(out.status.success());
    let red = broker.run_ok(&[
        "consume",
        "colors",
        "--from-beginning",
        "--transform",
        "only-red",
        "--config",
        "field=c",
        "--config",
        "op=eq",
        "--config",
        "value=red",
        "--timeout-ms",
        "2000",
    ]);
    assert_eq!(red, "{\"c\":\"red\"}\n");
    broker.run_ok(&["plugin", "delete", "only-red"]);
    assert!(!broker.run_ok(&["plugin", "list"]).contains("only-red"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_time_filter_returns_only_matches_and_moves_past_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    client
        .admin()
        .create_topic("events", 2, TopicConfig::default())
        .await
        .unwrap();
    client
        .request(
            Request::DeployPlugin {
                name: "filter".into(),
            },
            Bytes::from(sluice_wasm_plugins::read("json-filter")),
        )
        .await
        .unwrap();
    // 1,000 records per partition; every third is an error; the last 50 of each are not.
    let producer = client.producer(ProducerConfig::default());
    let mut expected = vec![Vec::new(), Vec::new()];
    for p in 0..2u32 {
        for i in 0..1000u64 {
            let level = if i % 3 == 0 && i < 950 {
                "error"
            } else {
                "info"
            };
            let v = format!("{{\"level\":\"{level}\",\"i\":{i}}}");
            if level == "error" {
                expected[p as usize].push((i, v.clone()));
            }
            producer
                .send(ProducerRecord::new("events", v).with_partition(p))
                .await
                .unwrap();
        }
    }
    producer.flush().await.unwrap();

    let transform = FetchTransform {
        plugin: "filter".into(),
        config: vec![
            ("field".into(), "level".into()),
            ("op".into(), "eq".into()),
            ("value".into(), "error".into()),
        ],
    };
    let mut consumer = client.consumer(ConsumerConfig {
        transform: Some(transform),
        max_partition_bytes: 16 * 1024,
        ..ConsumerConfig::default()
    });
    consumer.assign("events", &[0, 1]).await.unwrap();
    for p in 0..2 {
        consumer.seek("events", p, SeekTo::Earliest).await.unwrap();
    }
    let mut got = vec![Vec::new(), Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while (consumer.position("events", 0) != Some(1000)
        || consumer.position("events", 1) != Some(1000))
        && Instant::now() < deadline
    {
        for r in consumer.poll().await.unwrap() {
            got[r.partition as usize].push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    assert_eq!(
        got, expected,
        "exactly the matching records, in order, with their offsets"
    );
    // The position moved past the filtered tail.
    assert_eq!(consumer.position("events", 0), Some(1000));
    assert_eq!(consumer.position("events", 1), Some(1000));
    assert!(consumer.poll().await.unwrap().is_empty());

    // A transform that is not deployed, or not a transform, is a clear error.
    let mut bad = client.consumer(ConsumerConfig {
        transform: Some(FetchTransform {
            plugin: "missing".into(),
            config: vec![],
        }),
        ..ConsumerConfig::default()
    });
    bad.assign("events", &[0]).await.unwrap();
    bad.seek("events", 0, SeekTo::Earliest).await.unwrap();
    let e = bad.poll().await.unwrap_err();
    assert_eq!(e.wire_code(), Some(ErrorCode::UnknownPlugin), "{e}");
    client
        .request(
            Request::DeployPlugin {
                name: "part".into(),
            },
            Bytes::from(sluice_wasm_plugins::read("json-partitioner")),
        )
        .await
        .unwrap();
    let mut wrong = client.consumer(ConsumerConfig {
        transform: Some(FetchTransform {
            plugin: "part".into(),
            config: vec![],
        }),
        ..ConsumerConfig::default()
    });
    wrong.assign("events", &[0]).await.unwrap();
    wrong.seek("events", 0, SeekTo::Earliest).await.unwrap();
    let e = wrong.poll().await.unwrap_err();
    assert_eq!(e.wire_code(), Some(ErrorCode::InvalidPlugin), "{e}");
    assert!(e.to_string().contains("not a transform"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioner_plugin_routes_records_and_bad_output_is_a_clear_error() {
    use sluice_proto::partitioner::partition_for_key;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    for (name, component) in [
        ("by-user", "json-partitioner"),
        ("bad", "hostile-bad-partition"),
    ] {
        client
            .request(
                Request::DeployPlugin { name: name.into() },
                Bytes::from(sluice_wasm_plugins::read(component)),
            )
            .await
            .unwrap();
    }
    let config = TopicConfig {
        partitioner: Some("by-user".into()),
        partitioner_config: vec![("field".into(), "user".into())],
        ..TopicConfig::default()
    };
    client
        .admin()
        .create_topic("users", 4, config)
        .await
        .unwrap();
    // A partitioner that is not a partitioner, or not deployed, is refused at create time.
    let wrong = TopicConfig {
        partitioner: Some("nope".into()),
        ..TopicConfig::default()
    };
    let e = client
        .admin()
        .create_topic("users-x", 2, wrong)
        .await
        .unwrap_err();
    assert_eq!(e.wire_code(), Some(ErrorCode::UnknownPlugin), "{e}");

    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..200u32 {
        let user = format!("u{}", i % 10);
        let record = ProducerRecord::new("users", format!("{{\"user\":\"{user}\",\"n\":{i}}}"));
        deliveries.push((user, producer.send(record).await.unwrap()));
    }
    // An explicit partition still wins.
    let pinned = producer
        .send_and_wait(ProducerRecord::new("users", "{\"user\":\"u1\",\"n\":-1}").with_partition(3))
        .await
        .unwrap();
    assert_eq!(pinned.partition, 3);
    producer.flush().await.unwrap();
    let mut per_partition = [0u64; 4];
    for (user, d) in deliveries {
        let m = d.await.unwrap();
        assert_eq!(
            m.partition,
            partition_for_key(user.as_bytes(), 4),
            "{user} routed to {}",
            m.partition
        );
        per_partition[m.partition as usize] += 1;
    }
    // What is stored agrees with what was acknowledged.
    let t = client.admin().describe_topic("users").await.unwrap();
    for p in &t.partitions {
        let pinned_here = u64::from(p.partition == 3);
        assert_eq!(
            p.log_end,
            per_partition[p.partition as usize] + pinned_here,
            "partition {}",
            p.partition
        );
    }

    // A partitioner answering with a partition the topic does not have: a clear error, and
    // the broker keeps serving.
    let out = broker.run_cli(&["topic", "set-partitioner", "users", "bad"], b"");
    assert!(out.status.success(), "{}", describe_output(&out));
    let fresh = broker.client().await;
    let e = fresh
        .producer(ProducerConfig::default())
        .send_and_wait(ProducerRecord::new("users", "{\"user\":\"u1\"}"))
        .await
        .unwrap_err();
    assert_eq!(e.wire_code(), Some(ErrorCode::InvalidPlugin), "{e}");
    assert!(e.to_string().contains("partition"), "{e}");
    let m = fresh
        .producer(ProducerConfig::default())
        .send_and_wait(ProducerRecord::new("users", "still served").with_partition(0))
        .await
        .unwrap();
    assert_eq!(m.partition, 0);

    // The CLI: create with a partitioner, produce lines, see where they went.
    let out = broker.run_cli(
        &[
            "topic",
            "create",
            "clicks",
            "--partitions",
            "3",
            "--partitioner",
            "by-user",
            "--partitioner-config",
            "field=user",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", describe_output(&out));
    let lines: String = (0..30)
        .map(|i| format!("{{\"user\":\"v{}\"}}\n", i % 5))
        .collect();
    let out = broker.run_cli(&["produce", "clicks"], lines.as_bytes());
    assert!(out.status.success(), "{}", describe_output(&out));
    let out = broker.run_cli(
        &[
            "consume",
            "clicks",
            "--from-beginning",
            "-n",
            "30",
            "--timeout-ms",
            "5000",
            "--format",
            "%p %v\\n",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 30);
    for line in text.lines() {
        let (p, v) = line.split_once(' ').unwrap();
        let user = v.trim_start_matches("{\"user\":\"").trim_end_matches("\"}");
        assert_eq!(
            p.parse::<u32>().unwrap(),
            partition_for_key(user.as_bytes(), 3),
            "{line}"
        );
    }
}

/// Builds a crate `sluice plugin new` rendered, the way its README says, in `target` (the
/// wasm plugins' target dir: a warm cache); the component's path.
fn build_plugin_crate(
    crate_dir: &std::path::Path,
    target: &std::path::Path,
    name: &str,
) -> std::path::PathBuf {
    let mut cargo =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(crate_dir).args(["build", "--release"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" {
            cargo.env_remove(&k);
        }
    }
    cargo.env("CARGO_TARGET_DIR", target);
    let out = sluice_tests::run_bounded(&mut cargo, b"", Duration::from_secs(600));
    assert!(
        out.status.success(),
        "the new plugin {name} does not build: {}",
        describe_output(&out)
    );
    target.join(format!("wasm32-wasip2/release/{name}.wasm"))
}

/// `sluice plugin new` renders a crate that builds into a component the broker runs.
#[test]
fn plugin_new_creates_a_buildable_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), TEST_CONFIG);
    let crate_dir = dir.path().join("shout");
    let out = broker.run_cli(
        &[
            "plugin",
            "new",
            "shout",
            "--kind",
            "transform",
            "--dir",
            crate_dir.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(crate_dir.join("src/lib.rs").exists() && crate_dir.join(".cargo/config.toml").exists());
    let out = broker.run_cli(
        &[
            "plugin",
            "new",
            "shout",
            "--dir",
            crate_dir.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        !out.status.success(),
        "an existing directory is not overwritten"
    );

    // Build it the way its README says, sharing the wasm plugins' target dir (warm cache).
    let target = sluice_wasm_plugins::path("identity-map")
        .ancestors()
        .nth(3)
        .expect("<target>/wasm32-wasip2/release/x.wasm")
        .to_path_buf();
    let wasm = build_plugin_crate(&crate_dir, &target, "shout");

    // Deploy it and run it as a fetch-time map.
    let out = broker.run_cli(&["plugin", "deploy", "shout", wasm.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", describe_output(&out));
    let out = broker.run_cli(&["topic", "create", "words"], b"");
    assert!(out.status.success());
    let out = broker.run_cli(&["produce", "words"], b"hello\n");
    assert!(out.status.success());
    let got = broker.run_ok(&[
        "consume",
        "words",
        "--from-beginning",
        "--transform",
        "shout",
        "--config",
        "prefix=>> ",
        "-n",
        "1",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(got, ">> hello\n");

    // A source connector from the template: built, deployed, run; it counts into a topic.
    let source_dir = dir.path().join("counter");
    broker.run_ok(&[
        "plugin",
        "new",
        "counter",
        "--kind",
        "source",
        "--dir",
        source_dir.to_str().unwrap(),
    ]);
    let wasm = build_plugin_crate(&source_dir, &target, "counter");
    broker.run_ok(&["plugin", "deploy", "counter", wasm.to_str().unwrap()]);
    broker.run_ok(&["topic", "create", "counted"]);
    let config = dir.path().join("counter.toml");
    std::fs::write(
        &config,
        "topic = \"counted\"\n[settings]\nprefix = \"n\"\ncount = 5\n",
    )
    .unwrap();
    broker.run_ok(&[
        "connector",
        "create",
        "count",
        "--plugin",
        "counter",
        "--config",
        config.to_str().unwrap(),
    ]);
    let got = broker.run_ok(&[
        "consume",
        "counted",
        "--from-beginning",
        "-n",
        "5",
        "--timeout-ms",
        "30000",
    ]);
    assert_eq!(got, "n0\nn1\nn2\nn3\nn4\n");
    // A sink renders too (built by the same SDK; the file connectors test the kind).
    let sink_dir = dir.path().join("keep");
    broker.run_ok(&[
        "plugin",
        "new",
        "keep",
        "--kind",
        "sink",
        "--dir",
        sink_dir.to_str().unwrap(),
    ]);
    let lib = std::fs::read_to_string(sink_dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("export_sink!"), "{lib}");
}

/// The two built-ins the other tests do not run through the broker: regex-mask in a pipeline,
/// split-lines as a fetch-time flat-map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_mask_pipeline_and_split_lines_fetch() {
    use sluice_tests::scrape::{METRICS, metrics_addr, scrape, sum};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &format!("{TEST_CONFIG}{METRICS}"));
    let metrics = metrics_addr(dir.path());
    let client = broker.client().await;
    for (name, component) in [("mask", "regex-mask"), ("lines", "split-lines")] {
        let path = sluice_wasm_plugins::path(component);
        broker.run_ok(&["plugin", "deploy", name, path.to_str().unwrap()]);
    }
    broker.run_ok(&["topic", "create", "payments"]);
    broker.run_ok(&["topic", "create", "payments-masked"]);
    broker.run_ok(&[
        "pipeline",
        "create",
        "hide-cards",
        "--plugin",
        "mask",
        "--from",
        "payments",
        "--to",
        "payments-masked",
        "--config",
        r"pattern=\b(?:\d[ -]?){12}(\d{4})\b",
        "--config",
        "replacement=**** **** **** $1",
    ]);
    let producer = client.producer(ProducerConfig::default());
    producer
        .send_and_wait(ProducerRecord::new(
            "payments",
            "card 4111 1111 1111 1234 paid",
        ))
        .await
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("payments", "no card here"))
        .await
        .unwrap();
    let out = broker.run_ok(&[
        "consume",
        "payments-masked",
        "--from-beginning",
        "-n",
        "2",
        "--timeout-ms",
        "20000",
    ]);
    assert_eq!(out, "card **** **** **** 1234 paid\nno card here\n");
    // The pipeline's figures: its runner runs, it has caught up, and its plugin was called.
    let pipeline = [("pipeline", "hide-cards")];
    let seen = scrape(metrics).await;
    assert_eq!(
        sum(
            &seen,
            "sluice_pipeline_partitions",
            &[("pipeline", "hide-cards"), ("state", "running")]
        ),
        1.0
    );
    assert_eq!(sum(&seen, "sluice_pipeline_lag", &pipeline), 0.0);
    assert!(sum(&seen, "sluice_plugin_calls_total", &[("outcome", "ok")]) >= 1.0);
    assert!(sum(&seen, "sluice_plugin_call_duration_seconds", &[]) >= 1.0);
    assert!(sum(&seen, "sluice_plugin_instance_memory_bytes", &[]) >= 1.0);

    // split-lines at fetch time: one stored record, three delivered, all at its offset.
    broker.run_ok(&["topic", "create", "blobs"]);
    producer
        .send_and_wait(ProducerRecord::new("blobs", "first"))
        .await
        .unwrap();
    let m = producer
        .send_and_wait(ProducerRecord::new("blobs", "a\nb\n\nc\n"))
        .await
        .unwrap();
    let mut consumer = client.consumer(ConsumerConfig {
        transform: Some(FetchTransform {
            plugin: "lines".into(),
            config: vec![],
        }),
        ..ConsumerConfig::default()
    });
    consumer.assign("blobs", &[0]).await.unwrap();
    consumer
        .seek("blobs", 0, SeekTo::Offset(m.offset))
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 3 && Instant::now() < deadline {
        for r in consumer.poll().await.unwrap() {
            got.push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    assert_eq!(
        got,
        vec![
            (m.offset, "a".into()),
            (m.offset, "b".into()),
            (m.offset, "c".into())
        ]
    );
    assert_eq!(consumer.position("blobs", 0), Some(m.offset + 1));
}
