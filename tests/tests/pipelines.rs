//! Pipelines through real broker processes (issue 3, acceptances 1, 2, 3, 4, 7 and the pipeline
//! half of 8): a JSON filter from topic to topic, exactly once through `kill -9`, a windowed
//! count across a restart, hostile plugins stopped with clear errors while the broker keeps
//! serving, and pipelines resuming by themselves after a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{Client, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
use sluice_proto::{
    CreatePipelineRequest, PipelineDescription, PipelineStart, Request, ResponseBody, TopicConfig,
};
use sluice_tests::{BrokerProcess, TEST_CONFIG};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(180);

async fn deploy(client: &Client, name: &str, fixture: &str) {
    let wasm = sluice_wasm_plugins::read(fixture);
    client
        .request(
            Request::DeployPlugin { name: name.into() },
            Bytes::from(wasm),
        )
        .await
        .unwrap_or_else(|e| panic!("deploy {fixture}: {e}"));
}

fn pipeline_request(name: &str, plugin: &str, from: &str, to: &str) -> CreatePipelineRequest {
    CreatePipelineRequest {
        name: name.into(),
        plugins: vec![plugin.into()],
        from: from.into(),
        to: to.into(),
        config: vec![],
        start: PipelineStart::Earliest,
        max_call_ms: None,
        max_memory_bytes: None,
    }
}

async fn create(client: &Client, req: CreatePipelineRequest) -> PipelineDescription {
    match client
        .request(Request::CreatePipeline(req), Bytes::new())
        .await
        .unwrap()
        .0
    {
        ResponseBody::Pipeline(p) => *p,
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn describe(client: &Client, name: &str) -> PipelineDescription {
    match client
        .request(
            Request::DescribePipeline { name: name.into() },
            Bytes::new(),
        )
        .await
        .unwrap()
        .0
    {
        ResponseBody::Pipeline(p) => *p,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Waits until the pipeline has processed its whole input (every partition's lag is 0 and its
/// checkpoint is at least `min_checkpoint_total` in sum).
async fn wait_drained(client: &Client, name: &str, input_total: u64) -> PipelineDescription {
    let deadline = Instant::now() + LIMIT;
    loop {
        let d = describe(client, name).await;
        assert_ne!(d.status, "failed", "pipeline failed: {d:?}");
        let done: u64 = d.partitions.iter().map(|p| p.checkpoint).sum();
        if done >= input_total && d.partitions.iter().all(|p| p.lag == 0) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline not drained in time: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces `(partition, key, value, timestamp)` records, waiting for every ack.
async fn produce(client: &Client, topic: &str, records: Vec<(u32, Option<String>, String, i64)>) {
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::with_capacity(records.len());
    for (p, key, value, ts) in records {
        let mut r = ProducerRecord::new(topic, value)
            .with_partition(p)
            .with_timestamp(ts);
        if let Some(k) = key {
            r = r.with_key(k);
        }
        deliveries.push(producer.send(r).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        tokio::time::timeout(LIMIT, d).await.unwrap().unwrap();
    }
}

/// `(key, value, headers)` of a record read back.
type ReadRecord = (Option<String>, String, HashMap<String, String>);

/// Every record of a topic, per partition.
type TopicContents = BTreeMap<u32, Vec<ReadRecord>>;

/// Every record of `topic`, per partition.
async fn read_all(client: &Client, topic: &str) -> TopicContents {
    let t = client.admin().describe_topic(topic).await.unwrap();
    let mut consumer = client.consumer(ConsumerConfig::default());
    let partitions: Vec<u32> = (0..t.partitions.len() as u32).collect();
    consumer.assign(topic, &partitions).await.unwrap();
    for p in &partitions {
        consumer.seek(topic, *p, SeekTo::Earliest).await.unwrap();
    }
    let total: u64 = t.partitions.iter().map(|p| p.log_end).sum();
    let mut out: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    let mut seen = 0u64;
    let deadline = Instant::now() + LIMIT;
    while seen < total {
        assert!(
            Instant::now() < deadline,
            "read {seen} of {total} records of {topic}"
        );
        for r in consumer.poll().await.unwrap() {
            let s = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
            let headers = r
                .headers
                .iter()
                .map(|h| (h.key.clone(), s(h.value.clone()).unwrap_or_default()))
                .collect();
            out.entry(r.partition)
                .or_default()
                .push((s(r.key), s(r.value).unwrap(), headers));
            seen += 1;
        }
    }
    out
}

fn order_value(seq: u64, src: u32, amount: u64) -> String {
    format!(r#"{{"seq":{seq},"src":{src},"amount":{amount},"pad":"xxxxxxxxxxxxxxxxxxxx"}}"#)
}

/// `(src, seq)` of a value written by [`order_value`].
fn parse_order(v: &str) -> (u32, u64) {
    let num = |field: &str| -> u64 {
        let at = v.find(&format!("\"{field}\":")).unwrap() + field.len() + 3;
        v[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("src") as u32, num("seq"))
}

const IN_PARTITIONS: u32 = 4;
const OUT_PARTITIONS: u32 = 3;

/// 100,000 orders over 4 partitions; `amount` cycles 0..10, so `amount > 6` keeps 30%.
fn orders(n: u64) -> Vec<(u32, Option<String>, String, i64)> {
    (0..n)
        .map(|i| {
            let src = (i % u64::from(IN_PARTITIONS)) as u32;
            let seq = i / u64::from(IN_PARTITIONS);
            let key = format!("customer-{}", i % 97);
            (
                src,
                Some(key),
                order_value(seq, src, i % 10),
                1_000 + i as i64,
            )
        })
        .collect()
}

fn matching(n: u64) -> HashSet<(u32, u64)> {
    (0..n)
        .filter(|i| i % 10 > 6)
        .map(|i| {
            (
                (i % u64::from(IN_PARTITIONS)) as u32,
                i / u64::from(IN_PARTITIONS),
            )
        })
        .collect()
}

async fn filter_setup(broker: &BrokerProcess, client: &Client) {
    let admin = client.admin();
    admin
        .create_topic("orders", IN_PARTITIONS, TopicConfig::default())
        .await
        .unwrap();
    admin
        .create_topic("big-orders", OUT_PARTITIONS, TopicConfig::default())
        .await
        .unwrap();
    // Deployed through the real CLI.
    let path = sluice_wasm_plugins::path("json-filter");
    let out = broker.run_cli(
        &["plugin", "deploy", "json-filter", path.to_str().unwrap()],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        sluice_tests::describe_output(&out)
    );
}

fn filter_request() -> CreatePipelineRequest {
    CreatePipelineRequest {
        config: vec![
            ("field".into(), "amount".into()),
            ("op".into(), "gt".into()),
            ("value".into(), "6".into()),
        ],
        ..pipeline_request("big", "json-filter", "orders", "big-orders")
    }
}

/// Checks the output against the expected matches: returns (missing, duplicates) and asserts
/// that per output partition each source partition's records come in input order.
fn check_output(out: &TopicContents, expected: &HashSet<(u32, u64)>) -> (usize, usize) {
    let mut seen: HashMap<(u32, u64), usize> = HashMap::new();
    for (p, records) in out {
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (_, v, _) in records {
            let (src, seq) = parse_order(v);
            assert!(
                expected.contains(&(src, seq)),
                "record {v} does not match the filter"
            );
            if let Some(prev) = last.insert(src, seq) {
                assert!(
                    prev < seq || seen.contains_key(&(src, seq)),
                    "output partition {p}: input partition {src} out of order ({prev} then {seq})"
                );
            }
            *seen.entry((src, seq)).or_default() += 1;
        }
    }
    let missing = expected.iter().filter(|k| !seen.contains_key(k)).count();
    let duplicates = seen.values().map(|n| n - 1).sum();
    (missing, duplicates)
}

#[tokio::test(flavor = "multi_thread")]
async fn json_filter_pipeline_keeps_exactly_the_matching_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    filter_setup(&broker, &client).await;
    const N: u64 = 100_000;
    produce(&client, "orders", orders(N)).await;
    let started = Instant::now();
    create(&client, filter_request()).await;
    let d = wait_drained(&client, "big", N).await;
    println!(
        "json-filter pipeline drained {N} records in {:?}",
        started.elapsed()
    );
    assert_eq!(d.status, "running");
    let out = read_all(&client, "big-orders").await;
    let expected = matching(N);
    let (missing, duplicates) = check_output(&out, &expected);
    assert_eq!((missing, duplicates), (0, 0));
    let total: usize = out.values().map(Vec::len).sum();
    assert_eq!(total, expected.len());
    // Keyed output goes where the key hashes.
    for (p, records) in &out {
        for (k, _, _) in records {
            let k = k.as_ref().expect("keys are kept");
            assert_eq!(
                sluice_proto::partitioner::partition_for_key(k.as_bytes(), OUT_PARTITIONS),
                *p
            );
        }
    }
    // The CLI shows it.
    let out = broker.run_cli(&["pipeline", "describe", "big"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("status: running"),
        "{text}"
    );
    let out = broker.run_cli(&["pipeline", "list"], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("big\trunning"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_pipeline_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let mut client = broker.client().await;
    filter_setup(&broker, &client).await;
    const N: u64 = 100_000;
    produce(&client, "orders", orders(N)).await;
    create(&client, filter_request()).await;
    // Up to three kills at different points of the run (a fast build may finish the input
    // before the later ones), each once the pipeline is under way.
    let mut kills = Vec::new();
    let mut dropped = 0;
    for fifth in [1, 2, 3] {
        let deadline = Instant::now() + LIMIT;
        let (at_kill, d) = loop {
            let d = describe(&client, "big").await;
            let done: u64 = d.partitions.iter().map(|p| p.checkpoint).sum();
            if done >= N * fifth / 5 {
                break (done, d);
            }
            assert!(
                Instant::now() < deadline,
                "pipeline made no progress: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Replayed batches the runners recognised since the last restart.
        dropped += d
            .partitions
            .iter()
            .map(|p| p.duplicates_dropped)
            .sum::<u64>();
        if at_kill == N {
            break;
        }
        broker.kill9();
        client.close();
        kills.push(at_kill);
        broker.restart();
        client = broker.client().await;
    }
    assert!(
        !kills.is_empty(),
        "the pipeline finished before the first kill"
    );
    wait_drained(&client, "big", N).await;
    let out = read_all(&client, "big-orders").await;
    let (missing, duplicates) = check_output(&out, &matching(N));
    println!(
        "kill -9 after {kills:?} of {N} input records: {missing} matching records \
         missing, {duplicates} duplicates in the output; {dropped} replayed output batches \
         recognised and dropped by the broker"
    );
    assert_eq!(missing, 0, "matching records missing after the restarts");
    assert_eq!(duplicates, 0, "duplicates in the output after the restarts");
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The crash lands exactly in the window the replay must cover: a step's output acknowledged
/// (durable: the topic fsyncs), its checkpoint not yet written. The broker aborts there (a
/// testing-only fault-injection setting); after the restart the replayed batches must be
/// recognised as duplicates, so the output holds every match exactly once. Without the
/// idempotent replay this test sees duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn crash_between_output_and_checkpoint_is_replayed_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = format!("{TEST_CONFIG}pipeline_fault_abort_before_checkpoint = 3\n");
    let mut broker = BrokerProcess::start(dir.path(), &faulty);
    let client = broker.client().await;
    filter_setup(&broker, &client).await;
    const N: u64 = 100_000;
    produce(&client, "orders", orders(N)).await;
    create(&client, filter_request()).await;
    let pid = broker.pid();
    let deadline = Instant::now() + LIMIT;
    while !exited(pid) {
        assert!(Instant::now() < deadline, "the fault did not fire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.close();
    broker.kill9(); // reaps it
    let addr = broker.addr;
    drop(broker);
    let broker = BrokerProcess::start_at(dir.path(), TEST_CONFIG, addr);
    let client = broker.client().await;
    let d = wait_drained(&client, "big", N).await;
    let dropped: u64 = d.partitions.iter().map(|p| p.duplicates_dropped).sum();
    let out = read_all(&client, "big-orders").await;
    let (missing, duplicates) = check_output(&out, &matching(N));
    println!(
        "abort between output and checkpoint: {missing} missing, {duplicates} duplicates; \
         {dropped} replayed output batches recognised and dropped"
    );
    assert_eq!((missing, duplicates), (0, 0));
    assert!(
        dropped >= 1,
        "the replay wrote nothing twice because it met no written batch"
    );
}

/// `(key, window_start) -> count` of what window-count emitted.
fn window_counts(out: &TopicContents) -> BTreeMap<(String, i64), u64> {
    let mut counts = BTreeMap::new();
    for records in out.values() {
        for (k, v, h) in records {
            let start: i64 = h["window_start"].parse().unwrap();
            let prev = counts.insert((k.clone().unwrap(), start), v.parse().unwrap());
            assert!(prev.is_none(), "window ({k:?}, {start}) emitted twice");
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn window_count_is_correct_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    let admin = client.admin();
    admin
        .create_topic("clicks", 1, TopicConfig::default())
        .await
        .unwrap();
    admin
        .create_topic("clicks-per-second", 2, TopicConfig::default())
        .await
        .unwrap();
    deploy(&client, "window-count", "window-count").await;
    create(
        &client,
        CreatePipelineRequest {
            config: vec![("window_ms".into(), "1000".into())],
            ..pipeline_request("cps", "window-count", "clicks", "clicks-per-second")
        },
    )
    .await;
    // Key k{j} gets j+1 clicks in every 1-second window, 10 windows; the half-way cut falls
    // inside window 4, so that window's counts straddle the kill.
    let mut input = Vec::new();
    for w in 0..10i64 {
        for j in 0..3 {
            for c in 0..=j {
                input.push((
                    0,
                    Some(format!("k{j}")),
                    "click".to_string(),
                    w * 1000 + 10 * (c + 1) as i64 + j as i64,
                ));
            }
        }
    }
    input.sort_by_key(|r| r.3);
    // A last click far ahead closes window 9.
    input.push((0, Some("k0".into()), "click".into(), 20_000));
    let half = input.len() / 2 - 1;
    let second = input.split_off(half);
    let first_len = input.len() as u64;
    produce(&client, "clicks", input).await;
    wait_drained(&client, "cps", first_len).await;
    broker.kill9();
    client.close();
    broker.restart();
    let client = broker.client().await;
    let total = first_len + second.len() as u64;
    produce(&client, "clicks", second).await;
    wait_drained(&client, "cps", total).await;
    let counts = window_counts(&read_all(&client, "clicks-per-second").await);
    let mut expected = BTreeMap::new();
    for w in 0..10i64 {
        for j in 0..3u64 {
            expected.insert((format!("k{j}"), w * 1000), j + 1);
        }
    }
    assert_eq!(counts, expected);
}

/// Produces one record to `topic` and reads it back; returns how long the round trip took.
async fn round_trip(client: &Client, topic: &str, i: u64) -> Duration {
    let started = Instant::now();
    let producer = client.producer(ProducerConfig::default());
    let d = producer
        .send(ProducerRecord::new(topic, format!("r{i}")).with_partition(0))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let offset = tokio::time::timeout(LIMIT, d)
        .await
        .unwrap()
        .unwrap()
        .offset;
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign(topic, &[0]).await.unwrap();
    consumer
        .seek(topic, 0, SeekTo::Offset(offset))
        .await
        .unwrap();
    loop {
        let got = consumer.poll().await.unwrap();
        if let Some(r) = got.first() {
            assert_eq!(r.value.as_deref(), Some(format!("r{i}").as_bytes()));
            return started.elapsed();
        }
        assert!(started.elapsed() < LIMIT);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_are_stopped_with_clear_errors_while_the_broker_serves() {
    use sluice_tests::scrape::{METRICS, metrics_addr, scrape, sum};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &format!("{TEST_CONFIG}{METRICS}"));
    let metrics = metrics_addr(dir.path());
    let stops = |reason: &'static str| {
        move |s: &prometheus_parse::Scrape| {
            sum(s, "sluice_plugin_stops_total", &[("reason", reason)])
        }
    };
    let before = scrape(metrics).await;
    for reason in ["time_limit", "memory_limit", "trap"] {
        assert_eq!(stops(reason)(&before), 0.0);
    }
    let client = broker.client().await;
    let admin = client.admin();
    for t in ["h-in", "h-out", "other"] {
        admin
            .create_topic(t, 1, TopicConfig::default())
            .await
            .unwrap();
    }
    produce(
        &client,
        "h-in",
        (0..10).map(|i| (0, None, format!("v{i}"), 1)).collect(),
    )
    .await;
    let cases = [
        ("hostile-infinite-loop", "time limit"),
        ("hostile-memory-bomb", "memory limit"),
        ("hostile-trap", "trapped"),
        // With room for its 100 MB in memory, it is stopped by the output limit.
        ("hostile-huge-output", "output of"),
    ];
    let mut round_trips = 0u64;
    let mut slowest = Duration::ZERO;
    for (fixture, expected) in cases {
        deploy(&client, fixture, fixture).await;
        let started = Instant::now();
        let mut req = pipeline_request(fixture, fixture, "h-in", "h-out");
        if fixture == "hostile-memory-bomb" {
            // Time enough, however busy the machine, for the memory limit to stop it first.
            req.max_call_ms = Some(LIMIT.as_millis() as u64);
        }
        if fixture == "hostile-huge-output" {
            // Room in memory and in time to build its 100 MB, however busy the machine: the
            // output limit must be what stops it.
            req.max_memory_bytes = Some(512 << 20);
            req.max_call_ms = Some(LIMIT.as_millis() as u64);
        }
        create(&client, req).await;
        let d = loop {
            // The broker keeps serving another topic while the plugin misbehaves.
            slowest = slowest.max(round_trip(&client, "other", round_trips).await);
            round_trips += 1;
            let d = describe(&client, fixture).await;
            if d.status == "failed" {
                break d;
            }
            assert!(started.elapsed() < LIMIT, "{fixture} not stopped: {d:?}");
        };
        let error = d.error.clone().unwrap_or_default();
        println!("{fixture}: failed after {:?}: {error}", started.elapsed());
        assert!(error.contains(expected), "{fixture}: {error}");
        assert_eq!(
            d.partitions[0].checkpoint, 0,
            "nothing of the failed batch is kept"
        );
        // The CLI shows the status and the error.
        let out = broker.run_cli(&["pipeline", "describe", fixture], b"");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("status: failed") && text.contains(expected),
            "{text}"
        );
    }
    // Each stop by the sandbox is counted, by its reason.
    let after = scrape(metrics).await;
    for reason in ["time_limit", "memory_limit", "trap"] {
        assert!(stops(reason)(&after) >= 1.0, "no {reason} stop counted");
    }
    println!(
        "{round_trips} produce+fetch round trips on another topic meanwhile, slowest {slowest:?}"
    );
    // Generous, so a busy machine passes: a broker stalled by a plugin would not answer at all.
    assert!(
        slowest < Duration::from_secs(10),
        "slowest round trip {slowest:?}"
    );
    assert_eq!(
        admin.describe_topic("h-out").await.unwrap().partitions[0].log_end,
        0,
        "hostile pipelines wrote nothing"
    );

    // The wrong world is refused when the pipeline is created.
    for (fixture, kind) in [
        ("hostile-wrong-world", "sink"),
        ("json-partitioner", "partitioner"),
    ] {
        deploy(&client, fixture, fixture).await;
        let err = client
            .request(
                Request::CreatePipeline(pipeline_request("wrong", fixture, "h-in", "h-out")),
                Bytes::new(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a transform") && err.contains(kind),
            "{fixture}: {err}"
        );
    }
    // A resumed failed pipeline runs again and fails again the same way.
    let out = broker.run_cli(&["pipeline", "resume", "hostile-trap"], b"");
    assert!(
        out.status.success(),
        "{}",
        sluice_tests::describe_output(&out)
    );
    let deadline = Instant::now() + LIMIT;
    loop {
        let d = describe(&client, "hostile-trap").await;
        if d.status == "failed" {
            assert!(d.error.unwrap().contains("trapped"));
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_resume_by_themselves_after_a_restart_and_pause_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    let admin = client.admin();
    for t in ["a", "b", "c"] {
        admin
            .create_topic(t, 2, TopicConfig::default())
            .await
            .unwrap();
    }
    let path = sluice_wasm_plugins::path("split-lines");
    fn cli(broker: &BrokerProcess, args: &[&str]) -> String {
        let out = broker.run_cli(args, b"");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            sluice_tests::describe_output(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    cli(
        &broker,
        &["plugin", "deploy", "split-lines", path.to_str().unwrap()],
    );
    cli(
        &broker,
        &[
            "pipeline",
            "create",
            "lines",
            "--plugin",
            "split-lines",
            "--from",
            "a",
            "--to",
            "b",
        ],
    );
    cli(
        &broker,
        &[
            "pipeline",
            "create",
            "held",
            "--plugin",
            "split-lines",
            "--from",
            "a",
            "--to",
            "c",
            "--start",
            "latest",
        ],
    );
    cli(&broker, &["pipeline", "pause", "held"]);
    produce(
        &client,
        "a",
        vec![
            (0, None, "one\ntwo".into(), 1),
            (1, None, "three".into(), 1),
        ],
    )
    .await;
    wait_drained(&client, "lines", 2).await;
    client.close();
    assert!(broker.terminate(), "clean shutdown");
    broker.restart();
    let client = broker.client().await;
    produce(&client, "a", vec![(0, None, "four\nfive\nsix".into(), 2)]).await;
    wait_drained(&client, "lines", 3).await;
    let mut values: Vec<String> = read_all(&client, "b")
        .await
        .into_values()
        .flatten()
        .map(|(_, v, _)| v)
        .collect();
    values.sort();
    assert_eq!(values, ["five", "four", "one", "six", "three", "two"]);
    let held = describe(&client, "held").await;
    assert_eq!(held.status, "paused");
    assert_eq!(
        client
            .admin()
            .describe_topic("c")
            .await
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.log_end)
            .sum::<u64>(),
        0
    );
    // Resumed, it starts from where it was created (latest at the time): all three records.
    cli(&broker, &["pipeline", "resume", "held"]);
    wait_drained(&client, "held", 3).await;
    let n: usize = read_all(&client, "c").await.values().map(Vec::len).sum();
    assert_eq!(n, 6);
    cli(&broker, &["pipeline", "delete", "held"]);
    let err = client
        .request(
            Request::DescribePipeline {
                name: "held".into(),
            },
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Acceptance 8, pipeline half. Run in release:
/// `cargo test --release -p sluice-tests --test pipelines -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: prints figures; run in release"]
async fn bench_identity_map_pipeline_versus_plain_produce() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    let admin = client.admin();
    const N: u64 = 400_000;
    const P: u32 = 4;
    const ROUNDS: usize = 4;
    deploy(&client, "identity-map", "identity-map").await;
    let value = "x".repeat(100);
    let records = || -> Vec<(u32, Option<String>, String, i64)> {
        (0..N)
            .map(|i| ((i % u64::from(P)) as u32, None, value.clone(), 1))
            .collect()
    };
    let rate = |d: Duration| N as f64 / d.as_secs_f64();
    let (mut plain, mut produced, mut caught_up, mut drain) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (p, i, o, o2) = (
            format!("plain{round}"),
            format!("in{round}"),
            format!("out{round}"),
            format!("again{round}"),
        );
        for t in [&p, &i, &o, &o2] {
            admin
                .create_topic(t, P, TopicConfig::default())
                .await
                .unwrap();
        }
        let map = format!("map{round}");
        create(&client, pipeline_request(&map, "identity-map", &i, &o)).await;
        // Which of the two goes first alternates between rounds.
        for plain_turn in [round % 2 == 0, round % 2 == 1] {
            if plain_turn {
                let started = Instant::now();
                produce(&client, &p, records()).await;
                plain.push(rate(started.elapsed()));
            } else {
                // The same produce with an identity-map pipeline running on the topic.
                let started = Instant::now();
                produce(&client, &i, records()).await;
                produced.push(rate(started.elapsed()));
                wait_drained(&client, &map, N).await;
                caught_up.push(rate(started.elapsed()));
            }
        }
        // A second pipeline over the stored input: how fast a pipeline drains a backlog.
        let again = format!("again-map{round}");
        let started = Instant::now();
        create(&client, pipeline_request(&again, "identity-map", &i, &o2)).await;
        wait_drained(&client, &again, N).await;
        drain.push(rate(started.elapsed()));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain, produced, caught_up, drain) = (
        median(&mut plain),
        median(&mut produced),
        median(&mut caught_up),
        median(&mut drain),
    );
    println!(
        "{N} records of 100 B over {P} partitions, median of {ROUNDS} rounds: plain produce \
         {plain:.0} records/s; with an identity-map pipeline on the topic: producer {produced:.0} \
         records/s ({:+.1}%), until the pipeline caught up {caught_up:.0} records/s ({:+.1}%); \
         a pipeline draining a stored backlog {drain:.0} records/s",
        (produced / plain - 1.0) * 100.0,
        (caught_up / plain - 1.0) * 100.0,
    );
}
