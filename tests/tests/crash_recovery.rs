//! Acceptance 2: a broker killed with `kill -9` while producers run with `acks=all` restarts
//! with every acknowledged record, and continues at the next offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_client::{Acks, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
use sluice_proto::TopicConfig;
use sluice_tests::{BrokerProcess, TEST_CONFIG};

const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    client
        .admin()
        .create_topic("crash", PARTITIONS, TopicConfig::default())
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..2 {
        // Short request timeout: requests in flight when the broker dies fail fast.
        let config = sluice_client::ClientConfig {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            ..broker.client_config()
        };
        let client = broker.client_with(config).await;
        let (stop, acked_count) = (stop.clone(), acked_count.clone());
        tasks.push(tokio::spawn(async move {
            let producer = client.producer(ProducerConfig {
                acks: Acks::All,
                retries: 0,
                delivery_timeout: Duration::from_secs(5),
                request_timeout_ms: 2_000,
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            });
            // value -> (partition, offset) of every acknowledged record
            let mut acked: HashMap<String, (u32, u64)> = HashMap::new();
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                let value = format!("p{p}-{i}");
                i += 1;
                match producer
                    .send(ProducerRecord::new("crash", value.clone()).with_key(value.clone()))
                    .await
                {
                    Ok(d) => in_flight.push(async move { (value, d.await) }),
                    Err(_) => break,
                }
                while in_flight.len() > 2_000 {
                    use futures::StreamExt;
                    if let Some((v, Ok(m))) = in_flight.next().await {
                        acked.insert(v, (m.partition, m.offset));
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            use futures::StreamExt;
            let drain = async {
                while let Some((v, r)) = in_flight.next().await {
                    if let Ok(m) = r {
                        acked.insert(v, (m.partition, m.offset));
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
            acked
        }));
    }
    // Let the producers get going, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_count.load(Ordering::Relaxed) < 20_000 {
        assert!(
            Instant::now() < deadline,
            "producers made too little progress before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill9();
    let killed = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashMap<String, (u32, u64)> = HashMap::new();
    for t in tasks {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("producers stop")
                .unwrap(),
        );
    }
    assert!(acked.len() >= 20_000, "only {} acknowledged", acked.len());

    eprintln!("producers stopped {:?} after the kill", killed.elapsed());
    broker.restart();
    eprintln!("restarted {:?} after the kill", killed.elapsed());
    let client = broker.client().await;
    let described = client.admin().describe_topic("crash").await.unwrap();
    let ends: Vec<u64> = described.partitions.iter().map(|p| p.log_end).collect();

    // Read everything back.
    let mut consumer = client.consumer(ConsumerConfig::default());
    let partitions: Vec<u32> = (0..PARTITIONS).collect();
    consumer.assign("crash", &partitions).await.unwrap();
    for p in 0..PARTITIONS {
        consumer.seek("crash", p, SeekTo::Earliest).await.unwrap();
    }
    let total: u64 = ends.iter().sum();
    let mut stored: HashMap<String, (u32, u64)> = HashMap::new();
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut read = 0u64;
    while read < total {
        assert!(Instant::now() < deadline, "read {read} of {total} in time");
        for r in consumer.poll().await.unwrap() {
            read += 1;
            offsets.entry(r.partition).or_default().push(r.offset);
            let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            assert!(
                stored.insert(v, (r.partition, r.offset)).is_none(),
                "a record is stored twice"
            );
        }
    }
    for (p, o) in &offsets {
        let dense: Vec<u64> = (0..o.len() as u64).collect();
        assert_eq!(o, &dense, "partition {p}: offsets not dense");
    }
    let mut lost = 0;
    for (v, at) in &acked {
        match stored.get(v) {
            Some(s) => assert_eq!(s, at, "record {v} moved"),
            None => lost += 1,
        }
    }
    assert_eq!(lost, 0, "{lost} acknowledged records lost after kill -9");

    // The log continues at the next offset.
    let producer = client.producer(ProducerConfig::default());
    for p in 0..PARTITIONS {
        let m = producer
            .send_and_wait(ProducerRecord::new("crash", "after restart").with_partition(p))
            .await
            .unwrap();
        assert_eq!(
            m.offset, ends[p as usize],
            "partition {p} did not continue at its log end"
        );
    }
}
