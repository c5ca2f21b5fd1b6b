//! Hostile clients against a real broker process (issue 7): crafted batches and admin requests,
//! slow and stalled streams, idle and surplus connections, floods that try to pin memory,
//! `acks=0` in every state, oversized deploys. After each, the broker answers a fresh client
//! and every earlier record is intact.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{Client, ClientError, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
use sluice_proto::batch::{BatchBuilder, Compression, Record};
use sluice_proto::frame::{decode_body, encode_frame, read_frame};
use sluice_proto::{
    Acks, CreateTopicRequest, ErrorCode, HelloRequest, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    ProduceRequest, Request, Response, ResponseBody, TopicConfig,
};
use sluice_tests::{BrokerProcess, TEST_CONFIG, raw_connection, read_values};

/// Every wait here is bounded by this; none needs to be short for the test to pass.
const LIMIT: Duration = Duration::from_secs(60);

/// A client of `broker` and the topic "good" (one partition) holding `n` records, whose values
/// it returns: what every test checks is still there at its end.
async fn good_topic(broker: &BrokerProcess, n: usize) -> (Client, Vec<String>) {
    let client = broker.client().await;
    client
        .admin()
        .create_topic("good", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    let kept: Vec<String> = (0..n).map(|i| format!("kept-{i}")).collect();
    for v in &kept {
        producer
            .send_and_wait(ProducerRecord::new("good", v.clone()))
            .await
            .unwrap();
    }
    (client, kept)
}

/// The broker still serves a new client, and `topic` still holds exactly `kept`.
async fn assert_serving_and_intact(broker: &BrokerProcess, topic: &str, kept: &[String]) {
    let fresh = broker.client().await;
    let topics = fresh.admin().list_topics().await.unwrap();
    assert!(topics.iter().any(|t| t.name == topic), "{topics:?}");
    assert_eq!(read_values(&fresh, topic, kept.len()).await, kept);
}

fn batch(compression: Compression, records: usize, value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for i in 0..records {
        b.push(&Record {
            value: Some(Bytes::from(vec![b'a' + (i % 26) as u8; value_len])),
            ..Default::default()
        });
    }
    b.finish(-1, -1, -1).unwrap()
}

/// Sets a batch's header record count and recomputes its CRC-32C, as a hostile client would.
fn with_record_count(mut batch: Vec<u8>, count: u32) -> Vec<u8> {
    batch[23..27].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// A zstd batch whose records section inflates to `inflated` bytes: one record holding zeros.
fn zstd_bomb(inflated: usize) -> Vec<u8> {
    let mut section = Vec::new();
    // record_len, ts delta 0, offset delta 0, key null, value of `inflated` bytes, 0 headers
    let value_len = inflated as u64;
    let mut body = vec![0u8, 0u8, 0u8];
    put_varint(&mut body, value_len + 1);
    let body_len = body.len() as u64 + value_len + 1;
    put_varint(&mut section, body_len);
    section.extend_from_slice(&body);
    section.resize(section.len() + inflated, 0);
    section.push(0);
    let payload = zstd::bulk::compress(&section, 3).unwrap();
    let mut out = batch(Compression::Zstd, 1, 1)[..57].to_vec();
    out.extend_from_slice(&payload);
    let len = out.len() as u32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A one-partition topic `name` holding `batches` batches of 256 KiB (4 records of 64 KiB).
async fn topic_of_quarter_mib_batches(client: &Client, name: &str, batches: usize) {
    client
        .admin()
        .create_topic(name, 1, TopicConfig::default())
        .await
        .unwrap();
    for _ in 0..batches {
        client
            .request(
                produce_request(name, Acks::Leader),
                Bytes::from(batch(Compression::None, 4, 64 * 1024)),
            )
            .await
            .unwrap();
    }
}

/// A fetch of partition 0 of `topic` from offset 0 asking for `max_bytes` (whole and per
/// partition), answered at once.
fn fetch_all(topic: &str, max_bytes: u32) -> Request {
    Request::Fetch(sluice_proto::FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes,
        partitions: vec![sluice_proto::FetchPartition {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_bytes,
            leader_epoch: None,
        }],
    })
}

fn produce_request(topic: &str, acks: Acks) -> Request {
    Request::Produce(ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks,
        timeout_ms: 10_000,
        leader_epoch: None,
    })
}

fn broker_error(result: Result<(ResponseBody, Bytes), ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Broker(e)) => (e.code, e.message),
        other => panic!("expected a broker error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_record_counts_and_bombs_are_refused_and_the_broker_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let (client, kept) = good_topic(&broker, 20).await;

    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        for count in [u32::MAX, 1 << 31, 1 << 28] {
            let raw = with_record_count(batch(compression, 3, 10), count);
            let (code, message) = broker_error(
                client
                    .request(produce_request("good", Acks::Leader), Bytes::from(raw))
                    .await,
            );
            assert_eq!(code, ErrorCode::InvalidRecord, "{compression:?} {count}");
            assert!(message.contains("record"), "{message}");
        }
    }
    // A zstd bomb: 200 MiB of zeros in a few KiB. Refused once it crosses the batch limit.
    let bomb = Bytes::from(zstd_bomb(200 << 20));
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let (code, message) = broker_error(
        client
            .request(produce_request("good", Acks::Leader), bomb.clone())
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidRecord);
    assert!(message.contains("limit"), "{message}");

    // Bombs in parallel, from another client, while a fresh client connects and lists topics:
    // decompression runs on the validation threads, not on the network tasks.
    let bomber = broker.client().await;
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (c, b) = (bomber.clone(), bomb.clone());
            tokio::spawn(async move {
                for _ in 0..4 {
                    let r = c
                        .request(produce_request("good", Acks::Leader), b.clone())
                        .await;
                    assert_eq!(broker_error(r).0, ErrorCode::InvalidRecord);
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let fresh = broker.client().await;
        fresh.admin().list_topics().await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    for f in flood {
        f.await.unwrap();
    }
    // A control message of 2 MiB (postcard that could decode to many times that) is refused
    // before it is decoded; the stream stays usable.
    let conn = hello_connection(&broker).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let control = 2u32 << 20;
    let mut frame = (control + 4).to_be_bytes().to_vec();
    frame.extend_from_slice(&control.to_be_bytes());
    frame.resize(frame.len() + control as usize, 0);
    frame.extend(encode_frame(&Request::ListTopics, &[]).unwrap());
    send.write_all(&frame).await.unwrap();
    let _ = send.finish();
    match all_responses(&mut recv).await.as_slice() {
        [Err(e), Ok(ResponseBody::Topics(_))] => {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.contains("control message"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    println!("connect + list while bombs were refused: slowest {slowest:?}");
    // Generous: the point is that the network tasks answer at all while bombs are decoded.
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    assert_serving_and_intact(&broker, "good", &kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_counts_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let (client, kept) = good_topic(&broker, 10).await;
    let admin = client.admin();
    for partitions in [u32::MAX, 10_001] {
        let (code, message) = broker_error(
            client
                .request(
                    Request::CreateTopic(CreateTopicRequest {
                        name: "huge".into(),
                        partitions,
                        config: TopicConfig::default(),
                    }),
                    Bytes::new(),
                )
                .await,
        );
        assert_eq!(code, ErrorCode::InvalidConfig);
        assert!(message.contains("at most 10000"), "{message}");
        let (code, message) = broker_error(
            client
                .request(
                    Request::AddPartitions {
                        name: "good".into(),
                        count: partitions,
                    },
                    Bytes::new(),
                )
                .await,
        );
        assert_eq!(code, ErrorCode::InvalidConfig);
        assert!(message.contains("at most 10000"), "{message}");
    }
    // The largest legal topic is created within the client's request timeout.
    let started = Instant::now();
    let t = admin
        .create_topic("widest", 10_000, TopicConfig::default())
        .await
        .unwrap();
    println!("created 10,000 partitions in {:?}", started.elapsed());
    assert_eq!(t.partitions.len(), 10_000);
    let producer = client.producer(ProducerConfig::default());
    let placed = producer
        .send_and_wait(ProducerRecord::new("widest", "last").with_partition(9_999))
        .await
        .unwrap();
    assert_eq!((placed.partition, placed.offset), (9_999, 0));
    assert_serving_and_intact(&broker, "good", &kept).await;
}

/// A raw connection that has said Hello.
async fn hello_connection(broker: &BrokerProcess) -> quinn::Connection {
    let conn = raw_connection(broker.addr, &broker.ca_path()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&hello(), &[]).unwrap())
        .await
        .unwrap();
    let _ = send.finish();
    let body = read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
    let (resp, _) = decode_body::<Response>(body).unwrap();
    assert!(matches!(resp, Ok(ResponseBody::Hello(_))), "{resp:?}");
    conn
}

fn hello() -> Request {
    Request::Hello(HelloRequest {
        client_id: "hostile".into(),
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
    })
}

/// Reads every response frame of a stream until the broker finishes it.
async fn all_responses(recv: &mut quinn::RecvStream) -> Vec<Response> {
    let mut out = Vec::new();
    while let Ok(Ok(Some(body))) = tokio::time::timeout(LIMIT, read_frame(recv, 1 << 24)).await {
        out.push(decode_body::<Response>(body).unwrap().0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_never_gets_a_frame_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let (_client, kept) = good_topic(&broker, 5).await;
    let good = Bytes::from(batch(Compression::None, 1, 8));
    let bad = with_record_count(batch(Compression::None, 2, 8), u32::MAX);

    // One stream, pipelined: acks=0 before Hello, Hello, acks=0 to an unknown topic, acks=0
    // with a crafted batch, acks=0 to a missing partition, then a request that is answered.
    let conn = raw_connection(broker.addr, &broker.ca_path()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut frames = Vec::new();
    frames.extend(encode_frame(&produce_request("good", Acks::None), &good).unwrap());
    frames.extend(encode_frame(&hello(), &[]).unwrap());
    frames.extend(encode_frame(&produce_request("missing", Acks::None), &good).unwrap());
    frames.extend(encode_frame(&produce_request("good", Acks::None), &bad).unwrap());
    let mut wrong_partition = produce_request("good", Acks::None);
    if let Request::Produce(p) = &mut wrong_partition {
        p.partition = 7;
    }
    frames.extend(encode_frame(&wrong_partition, &good).unwrap());
    frames.extend(encode_frame(&Request::ListTopics, &[]).unwrap());
    send.write_all(&frames).await.unwrap();
    let _ = send.finish();
    let responses = all_responses(&mut recv).await;
    assert_eq!(responses.len(), 2, "{responses:?}");
    assert!(
        matches!(responses[0], Ok(ResponseBody::Hello(_))),
        "{responses:?}"
    );
    assert!(
        matches!(&responses[1], Ok(ResponseBody::Topics(t)) if t.iter().any(|t| t.name == "good")),
        "{responses:?}"
    );
    assert_serving_and_intact(&broker, "good", &kept).await;
    // Refused acks=0 requests are logged with a count.
    let log = broker.log();
    assert!(log.contains("acks=0 produce refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_dripping_streams_are_reset_and_idle_connections_closed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &format!(
            "{TEST_CONFIG}frame_timeout_ms = 2000\nidle_timeout_ms = 3000\nmax_connections = 40\n"
        ),
    );
    let (_client, kept) = good_topic(&broker, 5).await;

    let conn = hello_connection(&broker).await;
    // Two bytes of a length prefix, then nothing.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let started = Instant::now();
    let responses = all_responses(&mut recv).await;
    println!("stalled prefix answered after {:?}", started.elapsed());
    match responses.as_slice() {
        [Err(e)] => assert!(e.message.contains("frame_timeout_ms"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // A 1 MiB frame dripping 100 bytes every 100 ms: reset although bytes keep coming.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    let drip = tokio::spawn(async move {
        for _ in 0..(LIMIT.as_millis() / 100) {
            if send.write_all(&[7; 100]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let responses = all_responses(&mut recv).await;
    match responses.as_slice() {
        [Err(e)] => assert!(e.message.contains("did not arrive"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert!(
        drip.await.unwrap(),
        "the broker stopped the dripping stream"
    );

    // Idle connections are closed by the broker although their keep-alives flow
    // (raw_connection's transport sends one every second).
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(hello_connection(&broker).await);
    }
    for c in &idle {
        let reason = tokio::time::timeout(LIMIT, c.closed())
            .await
            .expect("idle connection closed by the broker");
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, 2u32.into(), "{close:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    // max_connections = 40: with the 40 open, the 41st is refused; closing one frees a slot.
    let mut open = Vec::new();
    for _ in 0..40 {
        open.push(raw_connection(broker.addr, &broker.ca_path()).await);
    }
    let refused = tokio::time::timeout(LIMIT, try_connect(&broker))
        .await
        .unwrap();
    assert!(refused.is_err(), "41st connection accepted");
    open.pop().unwrap().close(0u32.into(), b"done");
    drop(open);
    // Slots are freed as the broker sees the closes: bounded retries.
    let started = Instant::now();
    loop {
        if try_connect(&broker).await.is_ok() {
            break;
        }
        assert!(started.elapsed() < LIMIT, "no slot freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_serving_and_intact(&broker, "good", &kept).await;
}

/// A raw connection, or why it failed (raw_connection panics on a refused handshake).
async fn try_connect(broker: &BrokerProcess) -> Result<quinn::Connection, String> {
    let addr = broker.addr;
    let ca = broker.ca_path();
    tokio::spawn(async move { raw_connection(addr, &ca).await })
        .await
        .map_err(|e| e.to_string())
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_pin_no_more_than_the_budget_and_memory_returns() {
    const MIB: u64 = 1 << 20;
    let request_memory = 64 * MIB;
    let window = MIB;
    let connections = 4u64;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &format!(
            "{TEST_CONFIG}request_memory_bytes = {request_memory}\n\
             connection_request_memory_bytes = {}\nconnection_window_bytes = {window}\n\
             frame_timeout_ms = 120000\n",
            32 * MIB
        ),
    );
    let (_client, kept) = good_topic(&broker, 5).await;
    let baseline = rss_bytes(broker.pid());

    // Each connection opens 8 streams that declare a 16 MiB frame, send all of it but its
    // last byte as fast as the broker lets them, and stall there.
    let streams = 8;
    let frame_len: u32 = 16 << 20;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut conns = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..connections {
        let conn = hello_connection(&broker).await;
        for _ in 0..streams {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let written = written.clone();
            writers.push(tokio::spawn(async move {
                let _keep = recv;
                let _ = send.write_all(&frame_len.to_be_bytes()).await;
                let chunk = vec![9u8; 64 * 1024];
                let mut left = frame_len as usize - 1;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if send.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    left -= n;
                }
                written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::pending::<()>().await;
            }));
        }
        conns.push(conn);
    }
    // Let the flood pin what it can: every stream has sent what it will send (frames that got
    // memory are held; the others were read and dropped).
    let started = Instant::now();
    let mut peak = 0;
    while written.load(std::sync::atomic::Ordering::SeqCst) < writers.len()
        && started.elapsed() < LIMIT
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes(broker.pid()));
    }
    println!(
        "{} of {} streams sent their frames in {:?}",
        written.load(std::sync::atomic::Ordering::SeqCst),
        writers.len(),
        started.elapsed()
    );
    // Meanwhile small requests are served: they draw on a reserve the flood cannot take.
    let fresh = broker.client().await;
    fresh.admin().list_topics().await.unwrap();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes(broker.pid()));
    }
    let bound = request_memory + connections * window + 48 * MIB;
    println!(
        "baseline {} MiB, peak {} MiB (+{} MiB), bound +{} MiB",
        baseline / MIB,
        peak / MIB,
        peak.saturating_sub(baseline) / MIB,
        bound / MIB
    );
    assert!(
        peak.saturating_sub(baseline) <= bound,
        "peak {peak} baseline {baseline}"
    );
    for w in &writers {
        w.abort();
    }
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    drop(conns);
    // Memory is returned once they are gone (bounded wait).
    let started = Instant::now();
    let after = loop {
        let now = rss_bytes(broker.pid());
        if now <= baseline + 32 * MIB || started.elapsed() > LIMIT {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("after close: {} MiB", after / MIB);
    assert!(
        after <= baseline + 32 * MIB,
        "after {after} baseline {baseline}"
    );
    assert_serving_and_intact(&broker, "good", &kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_above_the_frame_limit_names_the_limit_and_builtins_deploy_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; 20 << 20]).unwrap();
    let big = big.to_str().unwrap();
    broker.run_fails(&["plugin", "deploy", "big", big], "max_frame_bytes");
    broker.run_fails(
        &["plugin", "deploy", "x", "--builtin", "no-such"],
        "json-filter",
    );

    // Built-ins are embedded in the binary: no wasm build by hand.
    broker.run_ok(&["topic", "create", "orders"]);
    let out = broker.run_ok(&["plugin", "deploy", "only-tea", "--builtin", "json-filter"]);
    assert!(
        out.contains("deployed plugin only-tea (transform)"),
        "{out}"
    );
    broker.run_ok_in(
        &["produce", "orders"],
        b"{\"drink\":\"tea\"}\n{\"drink\":\"coffee\"}\n{\"drink\":\"tea\",\"n\":2}\n",
    );
    let out = broker.run_ok(&[
        "consume",
        "orders",
        "--from-beginning",
        "--transform",
        "only-tea",
        "--config",
        "field=drink",
        "--config",
        "op=eq",
        "--config",
        "value=tea",
        "--timeout-ms",
        "3000",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["{\"drink\":\"tea\"}", "{\"drink\":\"tea\",\"n\":2}"],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_asking_for_gigabytes_gets_at_most_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let frame = 1usize << 20;
    let broker = BrokerProcess::start(
        dir.path(),
        &format!(
            "{TEST_CONFIG}max_frame_bytes = {frame}\nmax_batch_bytes = {}\n\
             connection_request_memory_bytes = {}\nrequest_memory_bytes = {}\n",
            frame / 2,
            2 * frame,
            8 * frame
        ),
    );
    let client = broker.client().await;
    topic_of_quarter_mib_batches(&client, "big", 12).await;
    let (body, raw) = client
        .request(fetch_all("big", u32::MAX), Bytes::new())
        .await
        .unwrap();
    assert!(matches!(body, ResponseBody::Fetched(_)), "{body:?}");
    assert!(!raw.is_empty() && raw.len() <= frame, "{} bytes", raw.len());
    let kept = read_values(&client, "big", 48).await;
    assert_eq!(kept.len(), 48);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_carry_on_after_the_broker_closed_their_idle_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &format!("{TEST_CONFIG}idle_timeout_ms = 1000\n"),
    );
    let client = broker.client().await;
    client
        .admin()
        .create_topic("t", 2, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("t", &[0]).await.unwrap();
    consumer.seek("t", 0, SeekTo::Earliest).await.unwrap();
    let mut seen = Vec::new();
    for round in 0..3 {
        let placed = producer
            .send_and_wait(ProducerRecord::new("t", format!("r{round}")).with_partition(0))
            .await
            .unwrap();
        assert_eq!(placed.offset, round);
        let started = Instant::now();
        while seen.len() < round as usize + 1 && started.elapsed() < LIMIT {
            for r in consumer.poll().await.unwrap() {
                seen.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        // Idle for longer than idle_timeout_ms: the broker closes the connection.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    assert_eq!(seen, ["r0", "r1", "r2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_holds_at_most_its_share() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    topic_of_quarter_mib_batches(&client, "big", 32).await;
    let baseline = rss_bytes(broker.pid());
    // 4 streams × 100 pipelined fetches of the whole partition (8 MiB), answers never read.
    let fetch = encode_frame(&fetch_all("big", 16 << 20), &[]).unwrap();
    let conn = hello_connection(&broker).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        for _ in 0..100 {
            send.write_all(&fetch).await.unwrap();
        }
        streams.push((send, recv));
    }
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes(broker.pid()));
    }
    // The connection's share (32 MiB), what QUIC keeps unacknowledged (16 MiB), fetches being
    // read (at most 4 × cores of 8 MiB here), and a constant for the allocator.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let bound = 32 * MIB + 16 * MIB + 4 * cores * 8 * MIB + 48 * MIB;
    println!(
        "400 unread fetches of 8 MiB: baseline {} MiB, peak +{} MiB, bound +{} MiB",
        baseline / MIB,
        peak.saturating_sub(baseline) / MIB,
        bound / MIB
    );
    assert!(
        peak.saturating_sub(baseline) <= bound,
        "peak {peak} baseline {baseline}"
    );
    // Everyone else is served meanwhile.
    let fresh = broker.client().await;
    fresh.admin().list_topics().await.unwrap();
    drop(streams);
    conn.close(0u32.into(), b"done");
}
