//! The client against a tiny in-process broker over real QUIC on 127.0.0.1: the connection,
//! TLS verification, pipelined produce lanes, retries, acks=0 and fetch decoding. The real
//! broker's end-to-end tests live in the workspace's `tests/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use sluice_client::proto::batch::{self, BatchHeader};
use sluice_client::proto::frame;
use sluice_client::proto::{
    FetchResponse, FetchedPartition, HelloResponse, MetadataResponse, PartitionMetadata,
    ProduceResponse, Request, Response, ResponseBody, TopicMetadata,
};
use sluice_client::*;

const TOPIC: &str = "t";
const PARTITIONS: u32 = 3;
/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct State {
    /// Stored batches per partition, with offsets assigned.
    logs: HashMap<u32, Vec<Bytes>>,
    next_offset: HashMap<u32, u64>,
    produce_requests: usize,
    /// Streams on which at least one Produce arrived.
    produce_streams: usize,
    /// Answer this many Produce requests with NotLeader first.
    fail_produces: u32,
    connections: Vec<quinn::Connection>,
    /// Producer ids handed out so far (`InitProducerId`).
    producer_ids: i64,
    /// `(partition, producer_id, epoch, base_sequence, record_count)` of every Produce.
    stamps: Vec<(u32, i64, i16, i32, u32)>,
}

struct FakeBroker {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    state: Arc<Mutex<State>>,
    _endpoint: quinn::Endpoint,
}

fn self_signed() -> (
    CertificateDer<'static>,
    PrivatePkcs8KeyDer<'static>,
    Vec<u8>,
) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (
        ck.cert.der().clone(),
        PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        ck.cert.pem().into_bytes(),
    )
}

impl FakeBroker {
    fn start() -> FakeBroker {
        let (cert, key, ca_pem) = self_signed();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key.into())
            .unwrap();
        tls.alpn_protocols = vec![proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (ep, st) = (endpoint.clone(), state.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    st.lock().unwrap().connections.push(conn.clone());
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve_stream(send, recv, st.clone()));
                    }
                });
            }
        });
        FakeBroker {
            addr,
            ca_pem,
            state,
            _endpoint: endpoint,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(
            format!("127.0.0.1:{}", self.addr.port()),
            TlsConfig::CaPem(self.ca_pem.clone()),
        );
        c.connect_timeout = Duration::from_secs(5);
        c
    }

    /// Drops every client connection, as a broker restart would.
    fn kick_clients(&self) {
        for c in self.state.lock().unwrap().connections.drain(..) {
            c.close(1u32.into(), b"restarting");
        }
    }

    async fn client(&self) -> Client {
        timeout(Client::connect(self.config())).await.unwrap()
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: Arc<Mutex<State>>,
) {
    let mut counted = false;
    while let Ok(Some(body)) = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
        let (request, raw): (Request, Bytes) = frame::decode_body(body).unwrap();
        let (response, raw): (Response, Bytes) = match request {
            Request::Hello(_) => (
                Ok(ResponseBody::Hello(HelloResponse {
                    version: sluice_proto::PROTOCOL_VERSION,
                    node_id: 7,
                    cluster_id: "test-cluster".into(),
                    max_frame_bytes: frame::DEFAULT_MAX_FRAME as u32,
                })),
                Bytes::new(),
            ),
            Request::Metadata { topics } => {
                let known = topics.is_none_or(|t| t.iter().any(|t| t == TOPIC));
                let topics = if known {
                    vec![TopicMetadata {
                        name: TOPIC.into(),
                        topic_id: 1,
                        partitioner: None,
                        partitions: (0..PARTITIONS)
                            .map(|partition| PartitionMetadata {
                                partition,
                                leader: Some(7),
                                leader_epoch: 0,
                                replicas: vec![7],
                                in_sync: vec![7],
                            })
                            .collect(),
                    }]
                } else {
                    vec![]
                };
                (
                    Ok(ResponseBody::Metadata(MetadataResponse {
                        cluster_id: "test-cluster".into(),
                        controller: Some(7),
                        brokers: vec![],
                        topics,
                    })),
                    Bytes::new(),
                )
            }
            Request::Produce(p) => {
                let mut st = state.lock().unwrap();
                st.produce_requests += 1;
                if let Ok(h) = BatchHeader::parse(&raw) {
                    st.stamps.push((
                        p.partition,
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence,
                        h.record_count,
                    ));
                }
                if !counted {
                    counted = true;
                    st.produce_streams += 1;
                }
                let response = if st.fail_produces > 0 {
                    st.fail_produces -= 1;
                    Err(WireError::new(ErrorCode::NotLeader, "leader moving"))
                } else {
                    let mut bytes = raw.to_vec();
                    let header = batch::validate(&bytes).unwrap();
                    let base = *st.next_offset.get(&p.partition).unwrap_or(&0);
                    batch::assign_offset(&mut bytes, base, 0);
                    st.next_offset
                        .insert(p.partition, base + u64::from(header.record_count));
                    st.logs
                        .entry(p.partition)
                        .or_default()
                        .push(Bytes::from(bytes));
                    Ok(ResponseBody::Produced(ProduceResponse {
                        base_offset: base,
                        log_start: 0,
                        append_time: 0,
                    }))
                };
                if p.acks == Acks::None {
                    continue;
                }
                (response, Bytes::new())
            }
            Request::Fetch(f) => {
                let st = state.lock().unwrap();
                let mut raw = Vec::new();
                let mut partitions = Vec::new();
                for fp in f.partitions {
                    let end = *st.next_offset.get(&fp.partition).unwrap_or(&0);
                    let mut entry = FetchedPartition {
                        topic: fp.topic,
                        partition: fp.partition,
                        error: None,
                        high_watermark: end,
                        log_start: 0,
                        bytes: 0,
                    };
                    if fp.offset > end {
                        entry.error = Some(
                            WireError::new(ErrorCode::OffsetOutOfRange, "beyond the log end")
                                .with_offset(0),
                        );
                    } else {
                        // Whole batches, from the one holding the offset: the client skips
                        // the records before it.
                        for b in st.logs.get(&fp.partition).into_iter().flatten() {
                            let h = BatchHeader::parse(b).unwrap();
                            if h.next_offset() > fp.offset {
                                raw.extend_from_slice(b);
                                entry.bytes += b.len() as u32;
                            }
                        }
                    }
                    partitions.push(entry);
                }
                (
                    Ok(ResponseBody::Fetched(FetchResponse { partitions })),
                    Bytes::from(raw),
                )
            }
            Request::ListOffsets(l) => {
                let st = state.lock().unwrap();
                let offsets = l
                    .partitions
                    .into_iter()
                    .map(|(partition, spec)| PartitionOffset {
                        partition,
                        result: Ok(match spec {
                            OffsetSpec::Latest => *st.next_offset.get(&partition).unwrap_or(&0),
                            _ => 0,
                        }),
                    })
                    .collect();
                (Ok(ResponseBody::Offsets(offsets)), Bytes::new())
            }
            Request::InitProducerId => {
                let mut st = state.lock().unwrap();
                let producer_id = st.producer_ids;
                st.producer_ids += 1;
                (
                    Ok(ResponseBody::ProducerId {
                        producer_id,
                        epoch: 0,
                    }),
                    Bytes::new(),
                )
            }
            _ => (
                Err(WireError::new(ErrorCode::InvalidRequest, "not in the fake")),
                Bytes::new(),
            ),
        };
        if frame::write_frame(&mut send, &response, &raw)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = send.finish();
}

async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

#[tokio::test]
async fn connects_and_says_hello() {
    let broker = FakeBroker::start();
    let client = broker.client().await;
    assert_eq!(client.node_id(), 7);
    assert_eq!(client.cluster_id(), "test-cluster");
    let meta = timeout(client.metadata(None)).await.unwrap();
    assert_eq!(meta.topics[0].partitions.len(), PARTITIONS as usize);
    // Broker errors keep code and message.
    let err = timeout(client.admin().describe_topic("x"))
        .await
        .unwrap_err();
    match err {
        ClientError::Broker(e) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert_eq!(e.message, "not in the fake");
        }
        other => panic!("expected a broker error, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_ca_fails_with_a_tls_error() {
    let broker = FakeBroker::start();
    let (_, _, other_ca) = self_signed();
    let mut config = broker.config();
    config.tls = TlsConfig::CaPem(other_ca);
    let err = timeout(Client::connect(config)).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("--tls-ca"), "{err}");
    assert!(!err.is_retriable());
}

#[tokio::test]
async fn insecure_skip_verify_connects_anyway() {
    let broker = FakeBroker::start();
    let mut config = broker.config();
    config.tls = TlsConfig::InsecureSkipVerify;
    let client = timeout(Client::connect(config)).await.unwrap();
    assert_eq!(client.node_id(), 7);
}

#[tokio::test]
async fn silent_address_fails_with_a_connect_error() {
    // A bound UDP socket that never answers: what a host without a broker looks like.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = ClientConfig::new(
        format!("127.0.0.1:{}", silent.local_addr().unwrap().port()),
        TlsConfig::InsecureSkipVerify,
    );
    config.connect_timeout = Duration::from_millis(500);
    let err = timeout(Client::connect(config)).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    assert!(err.to_string().contains("sluice broker"), "{err}");
}

#[tokio::test]
async fn produces_on_few_streams_and_consumes_in_order() {
    let broker = FakeBroker::start();
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(2),
        max_batch_bytes: 500,
        ..ProducerConfig::default()
    });
    let mut deliveries = Vec::new();
    for i in 0..600u32 {
        let mut r = ProducerRecord::new(TOPIC, format!("v{i}")).with_header("i", i.to_string());
        if i % 2 == 0 {
            r = r.with_key(format!("key-{}", i % 10));
        }
        deliveries.push((i, timeout(producer.send(r)).await.unwrap()));
    }
    timeout(producer.flush()).await.unwrap();
    let mut by_partition: HashMap<u32, Vec<(u64, u32)>> = HashMap::new();
    for (i, d) in deliveries {
        let meta = timeout(d).await.unwrap();
        assert_eq!(&*meta.topic, TOPIC);
        if i % 2 == 0 {
            let key = format!("key-{}", i % 10);
            assert_eq!(
                meta.partition,
                proto::partitioner::partition_for_key(key.as_bytes(), PARTITIONS)
            );
        }
        by_partition
            .entry(meta.partition)
            .or_default()
            .push((meta.offset, i));
    }
    {
        let st = broker.state.lock().unwrap();
        assert!(
            st.produce_requests > 10,
            "{} requests: batches should be small",
            st.produce_requests
        );
        assert!(
            st.produce_streams <= ProducerConfig::default().sender_lanes,
            "{} streams for {} produce requests: lanes should be reused",
            st.produce_streams,
            st.produce_requests
        );
    }
    // Offsets within a partition are dense and in send order.
    for list in by_partition.values() {
        let offsets: Vec<u64> = list.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..list.len() as u64).collect::<Vec<_>>());
    }

    let mut consumer = client.consumer(ConsumerConfig::default());
    let assigned = timeout(consumer.assign_all(TOPIC)).await.unwrap();
    assert_eq!(assigned, vec![0, 1, 2]);
    let mut got: HashMap<u32, Vec<(u64, u32)>> = HashMap::new();
    let mut total = 0;
    while total < 600 {
        for r in timeout(consumer.poll()).await.unwrap() {
            let i: u32 = std::str::from_utf8(r.value.as_ref().unwrap()).unwrap()[1..]
                .parse()
                .unwrap();
            assert_eq!(
                r.headers[0].value.as_deref(),
                Some(i.to_string().as_bytes())
            );
            got.entry(r.partition).or_default().push((r.offset, i));
            total += 1;
        }
    }
    assert_eq!(got, by_partition);
    for (p, list) in &got {
        assert_eq!(consumer.position(TOPIC, *p), Some(list.len() as u64));
    }
    // Seeking back mid-batch returns from exactly that offset.
    let p = *got.keys().next().unwrap();
    assert_eq!(
        timeout(consumer.seek(TOPIC, p, SeekTo::Offset(3)))
            .await
            .unwrap(),
        3
    );
    consumer.assign(TOPIC, &[p]).await.unwrap();
    let again = timeout(consumer.poll()).await.unwrap();
    assert_eq!(again.first().map(|r| r.offset), Some(3));
    assert_eq!(again.len(), got[&p].len() - 3);
}

#[tokio::test]
async fn retriable_errors_are_retried_in_order() {
    let broker = FakeBroker::start();
    broker.state.lock().unwrap().fail_produces = 2;
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig {
        retry_backoff: Duration::from_millis(10),
        ..ProducerConfig::default()
    });
    let first = timeout(producer.send(ProducerRecord::new(TOPIC, "a").with_partition(1)))
        .await
        .unwrap();
    let second = timeout(producer.send(ProducerRecord::new(TOPIC, "b").with_partition(1)))
        .await
        .unwrap();
    let (a, b) = (
        timeout(first).await.unwrap(),
        timeout(second).await.unwrap(),
    );
    assert_eq!((a.offset, b.offset), (0, 1), "order kept across retries");
    // Two NotLeader answers, then one batch holding both records or two batches.
    let requests = broker.state.lock().unwrap().produce_requests;
    assert!(
        requests == 3 || requests == 4,
        "{requests} produce requests"
    );

    // Out of retries: the broker's error reaches the caller.
    broker.state.lock().unwrap().fail_produces = 100;
    let producer = client.producer(ProducerConfig {
        retries: 2,
        retry_backoff: Duration::from_millis(1),
        ..ProducerConfig::default()
    });
    let err = timeout(producer.send_and_wait(ProducerRecord::new(TOPIC, "c")))
        .await
        .unwrap_err();
    assert_eq!(err.wire_code(), Some(ErrorCode::NotLeader), "{err:?}");
    assert!(timeout(producer.flush()).await.is_ok());
}

#[tokio::test]
async fn idempotent_batches_carry_sequences_and_retries_resend_them_unchanged() {
    let broker = FakeBroker::start();
    broker.state.lock().unwrap().fail_produces = 1;
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig {
        retry_backoff: Duration::from_millis(10),
        ..ProducerConfig::default()
    });
    assert!(producer.config().idempotence, "on by default");
    for value in ["a", "b"] {
        let r = ProducerRecord::new(TOPIC, value).with_partition(1);
        timeout(producer.send_and_wait(r)).await.unwrap();
    }
    let two = [
        ProducerRecord::new(TOPIC, "c").with_partition(1),
        ProducerRecord::new(TOPIC, "d").with_partition(1),
    ];
    let mut pending = Vec::new();
    for r in two {
        pending.push(timeout(producer.send(r)).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in pending {
        timeout(d).await.unwrap();
    }
    let r = ProducerRecord::new(TOPIC, "e").with_partition(2);
    timeout(producer.send_and_wait(r)).await.unwrap();
    let stamps = broker.state.lock().unwrap().stamps.clone();
    assert_eq!(
        stamps,
        vec![
            (1, 0, 0, 0, 1), // refused with NotLeader
            (1, 0, 0, 0, 1), // its retry: the same id and sequence
            (1, 0, 0, 1, 1),
            (1, 0, 0, 2, 2), // c and d in one batch: the next one starts at 4
            (2, 0, 0, 0, 1), // each partition counts on its own
        ]
    );

    // A batch that fails for good leaves a hole in its sequence: later batches get a new id.
    broker.state.lock().unwrap().fail_produces = 100;
    let producer = client.producer(ProducerConfig {
        retries: 1,
        retry_backoff: Duration::from_millis(1),
        ..ProducerConfig::default()
    });
    let err = timeout(producer.send_and_wait(ProducerRecord::new(TOPIC, "f").with_partition(0)))
        .await
        .unwrap_err();
    assert_eq!(err.wire_code(), Some(ErrorCode::NotLeader), "{err:?}");
    broker.state.lock().unwrap().fail_produces = 0;
    timeout(producer.send_and_wait(ProducerRecord::new(TOPIC, "g").with_partition(0)))
        .await
        .unwrap();
    let stamps = broker.state.lock().unwrap().stamps.clone();
    assert_eq!(
        &stamps[5..],
        &[(0, 1, 0, 0, 1), (0, 1, 0, 0, 1), (0, 2, 0, 0, 1)],
        "two attempts under id 1, then id 2 from sequence 0"
    );

    // Without idempotence (and always under acks=0) batches carry no id.
    let producer = client.producer(ProducerConfig {
        idempotence: false,
        ..ProducerConfig::default()
    });
    timeout(producer.send_and_wait(ProducerRecord::new(TOPIC, "h").with_partition(0)))
        .await
        .unwrap();
    assert_eq!(
        broker.state.lock().unwrap().stamps.last(),
        Some(&(0, -1, -1, -1, 1))
    );
}

#[tokio::test]
async fn bad_topic_and_partition_fail_at_send() {
    let broker = FakeBroker::start();
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig::default());
    let err = timeout(producer.send(ProducerRecord::new("nope", "x")))
        .await
        .unwrap_err();
    assert_eq!(err.wire_code(), Some(ErrorCode::UnknownTopic), "{err:?}");
    assert!(
        err.to_string().contains("sluice topics create nope"),
        "{err}"
    );
    let err = timeout(producer.send(ProducerRecord::new(TOPIC, "x").with_partition(9)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::UnknownPartition {
                partition: 9,
                partitions: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let mut consumer = client.consumer(ConsumerConfig::default());
    let err = timeout(consumer.assign(TOPIC, &[0, 5])).await.unwrap_err();
    assert!(
        matches!(err, ClientError::UnknownPartition { partition: 5, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn acks_none_writes_without_waiting_for_an_answer() {
    let broker = FakeBroker::start();
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig {
        acks: Acks::None,
        ..ProducerConfig::default()
    });
    let mut deliveries = Vec::new();
    for i in 0..20 {
        deliveries.push(
            timeout(producer.send(ProducerRecord::new(TOPIC, format!("{i}")).with_partition(0)))
                .await
                .unwrap(),
        );
    }
    timeout(producer.flush()).await.unwrap();
    for d in deliveries {
        assert_eq!(
            timeout(d).await.unwrap().offset,
            RecordMetadata::UNKNOWN_OFFSET
        );
    }
    // The broker got them although it never answered; a later acked send on the same lane
    // proves the lane did not wait for (or mismatch) answers that never come.
    let acked = client.producer(ProducerConfig::default());
    let meta = timeout(acked.send_and_wait(ProducerRecord::new(TOPIC, "x").with_partition(0)))
        .await
        .unwrap();
    assert_eq!(meta.offset, 20);
}

#[tokio::test]
async fn out_of_range_position_follows_the_reset_policy() {
    let broker = FakeBroker::start();
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig::default());
    timeout(producer.send_and_wait(ProducerRecord::new(TOPIC, "a").with_partition(2)))
        .await
        .unwrap();

    let mut strict = client.consumer(ConsumerConfig {
        reset: OffsetReset::Error,
        max_wait: Duration::from_millis(10),
        ..ConsumerConfig::default()
    });
    strict.assign(TOPIC, &[2]).await.unwrap();
    let err = timeout(strict.poll()).await.unwrap_err();
    assert!(matches!(err, ClientError::NoPosition { .. }), "{err:?}");
    strict.seek(TOPIC, 2, SeekTo::Offset(50)).await.unwrap();
    let err = timeout(strict.poll()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::OffsetOutOfRange { earliest: 0, .. }),
        "{err:?}"
    );
    assert_eq!(
        strict.position(TOPIC, 2),
        Some(50),
        "an error moves nothing"
    );

    let mut lenient = client.consumer(ConsumerConfig::default());
    lenient.assign(TOPIC, &[2]).await.unwrap();
    lenient.seek(TOPIC, 2, SeekTo::Offset(50)).await.unwrap();
    assert!(timeout(lenient.poll()).await.unwrap().is_empty());
    assert_eq!(lenient.position(TOPIC, 2), Some(0));
    let records = timeout(lenient.poll()).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"a"[..]));
    assert_eq!(
        timeout(lenient.seek(TOPIC, 2, SeekTo::Latest))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn reconnects_after_the_broker_drops_the_connection() {
    let broker = FakeBroker::start();
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig {
        retry_backoff: Duration::from_millis(10),
        ..ProducerConfig::default()
    });
    let a = timeout(producer.send_and_wait(ProducerRecord::new(TOPIC, "a").with_partition(0)))
        .await
        .unwrap();
    broker.kick_clients();
    // The producer's lane died with the connection: the batch is retried on a new one.
    let b = timeout(producer.send_and_wait(ProducerRecord::new(TOPIC, "b").with_partition(0)))
        .await
        .unwrap();
    assert_eq!((a.offset, b.offset), (0, 1));
    timeout(client.metadata(None)).await.unwrap();
    assert_eq!(broker.state.lock().unwrap().connections.len(), 1);

    client.close();
    let err = timeout(client.metadata(None)).await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
}

#[tokio::test]
async fn send_waits_for_buffer_room() {
    let broker = FakeBroker::start();
    broker.state.lock().unwrap().fail_produces = 3;
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig {
        // Room for one small record: the second waits until the first is delivered.
        buffer_memory: 30,
        retry_backoff: Duration::from_millis(200),
        ..ProducerConfig::default()
    });
    let first = timeout(producer.send(ProducerRecord::new(TOPIC, "a").with_partition(0)))
        .await
        .unwrap();
    let second = producer.send(ProducerRecord::new(TOPIC, "b").with_partition(0));
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(150), &mut second)
            .await
            .is_err(),
        "the buffer is full: send must wait"
    );
    let second = timeout(second).await.unwrap();
    assert_eq!(timeout(first).await.unwrap().offset, 0);
    assert_eq!(timeout(second).await.unwrap().offset, 1);
}
