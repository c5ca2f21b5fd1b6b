//! The broker's request handling per request (docs/performance.md, "Criterion benches"): an
//! in-process broker on a temporary directory, its real QUIC listener on loopback, and raw
//! requests from the SDK's client, so each figure is one request's whole path — frame,
//! handler, store — and its answer, without the producer's or consumer's batching around it.
//! `cargo bench -p sluice-broker --bench handler`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_broker::config::BrokerConfig;
use sluice_client::{Client, ClientConfig, TlsConfig};
use sluice_proto::batch::{BatchBuilder, Compression, Record};
use sluice_proto::{
    Acks, Durability, FetchPartition, FetchRequest, ProduceRequest, Request, ResponseBody,
    TopicConfig,
};

const TOPIC: &str = "bench";

fn batch(count: usize, size: usize) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..count {
        builder.push(&Record {
            key: None,
            value: Some(Bytes::from(vec![(i % 251) as u8; size])),
            headers: Vec::new(),
            timestamp: 1_700_000_000_000,
        });
    }
    Bytes::from(builder.finish(-1, -1, -1).expect("non-empty batch"))
}

fn produce(partition: u32, acks: Acks) -> Request {
    Request::Produce(ProduceRequest {
        topic: TOPIC.into(),
        partition,
        acks,
        timeout_ms: 30_000,
        leader_epoch: None,
    })
}

fn handler(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("data");
    let (broker, client) = rt.block_on(async {
        let broker = sluice_broker::start(BrokerConfig {
            data_dir: data_dir.clone(),
            listen: "127.0.0.1:0".parse().expect("address"),
            ..BrokerConfig::default()
        })
        .await
        .expect("broker starts");
        let client = Client::connect(ClientConfig::new(
            broker.local_addr().to_string(),
            TlsConfig::CaFile(data_dir.join("tls").join("ca.pem")),
        ))
        .await
        .expect("client connects");
        // Partition 0 takes the produce benches, partition 1 holds what fetches read.
        client
            .admin()
            .create_topic(
                TOPIC,
                2,
                TopicConfig {
                    durability: Durability::IntervalMs(1000),
                    ..TopicConfig::default()
                },
            )
            .await
            .expect("topic created");
        (broker, client)
    });
    let call = |request: Request, raw: Bytes| {
        rt.block_on(client.request(request, raw))
            .expect("request answered")
    };

    let mut group = c.benchmark_group("handler");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("metadata", |b| {
        b.iter(|| {
            call(
                Request::Metadata {
                    topics: Some(vec![TOPIC.into()]),
                },
                Bytes::new(),
            )
        })
    });
    let one = batch(1, 100);
    group.bench_function("produce_1x100B_acks_leader", |b| {
        b.iter(|| call(produce(0, Acks::Leader), one.clone()))
    });
    // Just under 1 MiB with its page overhead, as the producer's batches are (a batch just over a
    // power of two takes a redb page twice its size: docs/performance.md).
    let big = batch(1000, 1000);
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("produce_1MB_acks_leader", |b| {
        b.iter(|| call(produce(0, Acks::Leader), big.clone()))
    });
    for _ in 0..8 {
        call(produce(1, Acks::Leader), big.clone());
    }
    let fetch = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 8 << 20,
        partitions: vec![FetchPartition {
            topic: TOPIC.into(),
            partition: 1,
            offset: 0,
            max_bytes: 1 << 20,
            leader_epoch: None,
        }],
    });
    group.bench_function("fetch_1MB", |b| {
        b.iter(|| {
            let (answer, raw) = call(fetch.clone(), Bytes::new());
            assert!(matches!(answer, ResponseBody::Fetched(_)));
            assert_eq!(raw.len(), big.len());
        })
    });
    group.finish();
    drop(client);
    rt.block_on(broker.shutdown()).expect("broker stops");
}

criterion_group!(benches, handler);
criterion_main!(benches);
