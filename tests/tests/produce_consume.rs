//! Acceptance 1 and 6: concurrent keyed producers, a consumer reading everything back, and
//! compressed batches that round-trip and are stored compressed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
use sluice_proto::batch::split_batches;
use sluice_proto::{Compression, FetchPartition, FetchRequest, Request, ResponseBody, TopicConfig};
use sluice_tests::{BrokerProcess, TEST_CONFIG};

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 50_000;
const PARTITIONS: u32 = 8;
const KEYS_PER_PRODUCER: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_producers_keyed_records_all_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let admin = broker.client().await;
    admin
        .admin()
        .create_topic("orders", PARTITIONS, TopicConfig::default())
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let client = broker.client().await;
        tasks.push(tokio::spawn(async move {
            let producer = client.producer(ProducerConfig::default());
            let mut deliveries = Vec::with_capacity(PER_PRODUCER);
            for i in 0..PER_PRODUCER {
                let key = format!("p{p}-k{}", i % KEYS_PER_PRODUCER);
                let seq = i / KEYS_PER_PRODUCER;
                let value = format!("{key}#{seq}");
                let d = producer
                    .send(ProducerRecord::new("orders", value).with_key(key))
                    .await
                    .unwrap();
                deliveries.push(d);
            }
            producer.flush().await.unwrap();
            let mut acked = Vec::with_capacity(PER_PRODUCER);
            for d in deliveries {
                let m = tokio::time::timeout(Duration::from_secs(60), d)
                    .await
                    .expect("ack in time")
                    .unwrap();
                acked.push((m.partition, m.offset));
            }
            acked
        }));
    }
    let mut acked_offsets = Vec::new();
    for t in tasks {
        acked_offsets.extend(t.await.unwrap());
    }
    assert_eq!(acked_offsets.len(), PRODUCERS * PER_PRODUCER);

    let mut consumer = admin.consumer(ConsumerConfig::default());
    let partitions: Vec<u32> = (0..PARTITIONS).collect();
    consumer.assign("orders", &partitions).await.unwrap();
    for p in 0..PARTITIONS {
        consumer.seek("orders", p, SeekTo::Earliest).await.unwrap();
    }
    let total = PRODUCERS * PER_PRODUCER;
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut key_partition: HashMap<String, u32> = HashMap::new();
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(180);
    while seen < total {
        assert!(
            Instant::now() < deadline,
            "read only {seen} of {total} records in time"
        );
        for r in consumer.poll().await.unwrap() {
            seen += 1;
            per_partition.entry(r.partition).or_default().push(r.offset);
            let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            let (key, seq) = value.split_once('#').unwrap();
            assert_eq!(
                r.key.as_deref(),
                Some(key.as_bytes()),
                "key and value belong together"
            );
            let seq: i64 = seq.parse().unwrap();
            let prev = last_seq.insert(key.to_owned(), seq).unwrap_or(-1);
            assert_eq!(
                seq,
                prev + 1,
                "records of key {key} out of order or missing or duplicated"
            );
            let p = *key_partition.entry(key.to_owned()).or_insert(r.partition);
            assert_eq!(p, r.partition, "key {key} spread over partitions");
        }
    }
    assert_eq!(seen, total);
    assert_eq!(last_seq.len(), PRODUCERS * KEYS_PER_PRODUCER);
    for seq in last_seq.values() {
        assert_eq!(*seq as usize, PER_PRODUCER / KEYS_PER_PRODUCER - 1);
    }
    for (p, offsets) in &per_partition {
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            offsets, &dense,
            "offsets of partition {p} are not dense from 0"
        );
    }
    // Every acknowledged (partition, offset) exists exactly once.
    acked_offsets.sort_unstable();
    acked_offsets.dedup();
    assert_eq!(
        acked_offsets.len(),
        total,
        "two records were acknowledged with the same offset"
    );
    for (p, o) in &acked_offsets {
        assert!((*o as usize) < per_partition[p].len());
    }
    // Nothing more arrives.
    assert!(consumer.poll().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_and_zstd_batches_round_trip_and_are_stored_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    for (topic, compression) in [
        ("c-lz4", Compression::Lz4),
        ("c-zstd", Compression::Zstd),
        ("c-none", Compression::None),
    ] {
        client
            .admin()
            .create_topic(topic, 1, TopicConfig::default())
            .await
            .unwrap();
        let producer = client.producer(ProducerConfig {
            compression,
            ..ProducerConfig::default()
        });
        let mut ds = Vec::new();
        let mut sent = Vec::new();
        for i in 0..2000 {
            let value = format!(
                "{{\"service\":\"checkout\",\"level\":\"info\",\"msg\":\"order placed\",\"n\":{i}}}"
            );
            sent.push(value.clone());
            ds.push(
                producer
                    .send(
                        ProducerRecord::new(topic, value)
                            .with_header("h", Bytes::from_static(b"x")),
                    )
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        for d in ds {
            d.await.unwrap();
        }
        // What the broker stores: read the raw batches and look at their headers.
        let (body, raw) = client
            .request(
                Request::Fetch(FetchRequest {
                    max_wait_ms: 0,
                    min_bytes: 1,
                    max_bytes: 64 << 20,
                    partitions: vec![FetchPartition {
                        topic: topic.into(),
                        partition: 0,
                        offset: 0,
                        max_bytes: 64 << 20,
                        leader_epoch: None,
                    }],
                }),
                Bytes::new(),
            )
            .await
            .unwrap();
        assert!(matches!(body, ResponseBody::Fetched(_)));
        let batches = split_batches(raw.clone()).unwrap();
        assert!(!batches.is_empty());
        for (h, _) in &batches {
            assert_eq!(
                h.compression, compression,
                "{topic}: batch stored with another compression"
            );
        }
        let plain: usize = sent.iter().map(String::len).sum();
        if compression != Compression::None {
            assert!(
                raw.len() * 2 < plain,
                "{topic}: {} stored bytes for {plain} bytes of values",
                raw.len()
            );
        }
        let described = client.admin().describe_topic(topic).await.unwrap();
        assert_eq!(described.partitions[0].size_bytes, raw.len() as u64);
        assert_eq!(described.partitions[0].log_end, 2000);

        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer.assign(topic, &[0]).await.unwrap();
        consumer.seek(topic, 0, SeekTo::Earliest).await.unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < sent.len() && Instant::now() < deadline {
            for r in consumer.poll().await.unwrap() {
                assert_eq!(r.headers.len(), 1);
                assert_eq!(r.headers[0].value.as_deref(), Some(&b"x"[..]));
                got.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        assert_eq!(got, sent, "{topic}: records differ after the round trip");
    }
}

/// The consumer sends its next fetch as soon as a poll returns; a seek (or an assignment
/// change) before the next poll must win over what that fetch brings back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_between_polls_wins_over_the_fetch_already_sent() {
    const RECORDS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    client
        .admin()
        .create_topic("ahead", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        max_batch_bytes: 4096,
        ..ProducerConfig::default()
    });
    for i in 0..RECORDS {
        producer
            .send(ProducerRecord::new("ahead", format!("r{i:05}")).with_partition(0))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();

    // Small fetches: each poll returns a few batches and leaves the next fetch in flight.
    let mut consumer = client.consumer(ConsumerConfig {
        max_partition_bytes: 8192,
        max_bytes: 8192,
        ..ConsumerConfig::default()
    });
    consumer.assign("ahead", &[0]).await.unwrap();
    consumer.seek("ahead", 0, SeekTo::Offset(0)).await.unwrap();
    let first = consumer.poll().await.unwrap();
    assert_eq!(first.first().map(|r| r.offset), Some(0));
    let after_first = first.last().unwrap().offset + 1;
    assert!(
        after_first < RECORDS / 2,
        "a poll read {after_first} records"
    );

    // Back to an earlier offset, forward past the fetch in flight, then to where it was.
    for target in [5, 2500, after_first + 100] {
        consumer
            .seek("ahead", 0, SeekTo::Offset(target))
            .await
            .unwrap();
        let got = consumer.poll().await.unwrap();
        assert_eq!(
            got.first().map(|r| r.offset),
            Some(target),
            "first record after a seek to {target}"
        );
        assert_eq!(
            got[0].value.as_deref(),
            Some(format!("r{target:05}").as_bytes())
        );
    }

    // And reading on from there, with fetches running ahead, misses and repeats nothing.
    let mut next = consumer.position("ahead", 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < RECORDS {
        assert!(Instant::now() < deadline, "stuck at {next}");
        for r in consumer.poll().await.unwrap() {
            assert_eq!(r.offset, next);
            assert_eq!(r.value.as_deref(), Some(format!("r{next:05}").as_bytes()));
            next += 1;
        }
    }
}
