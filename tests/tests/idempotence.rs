//! Acceptance 6: the idempotent producer. A UDP proxy between the producer and a real broker
//! discards the broker's answers for a while: the broker stores a batch, the producer never
//! hears about it, times out and resends the same batch. With idempotence the log holds every
//! record once and the producer learns the batch's original offset; without it (the control
//! case, which shows the fault really causes a retry) the record is stored twice. Sequence
//! gaps are refused with a message naming the expected sequence, and an old batch resent after
//! a `kill -9` and restart is still recognised.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{
    Client, ClientConfig, ClientError, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo,
    TlsConfig,
};
use sluice_proto::{
    Acks, BatchBuilder, Compression, ErrorCode, ProduceRequest, Record, Request, ResponseBody,
    TopicConfig,
};
use sluice_tests::{BrokerProcess, TEST_CONFIG, UdpProxy};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);

/// Every record of partition 0, as `(offset, value)`, read over `client`.
async fn log_of(client: &Client, topic: &str) -> Vec<(u64, String)> {
    let end = client
        .admin()
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions[0]
        .log_end;
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign(topic, &[0]).await.unwrap();
    consumer.seek(topic, 0, SeekTo::Offset(0)).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while (out.len() as u64) < end {
        assert!(Instant::now() < deadline, "log of {topic} not read in time");
        for r in consumer.poll().await.unwrap() {
            let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            out.push((r.offset, value));
        }
    }
    out
}

async fn log_end(client: &Client, topic: &str) -> u64 {
    client
        .admin()
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions[0]
        .log_end
}

/// Creates `topic` (one partition) and a proxy in front of `broker`; a client through the
/// proxy that gives up on an answer after 1 s.
async fn client_through(
    broker: &BrokerProcess,
    direct: &Client,
    topic: &str,
) -> (UdpProxy, Client) {
    direct
        .admin()
        .create_topic(topic, 1, TopicConfig::default())
        .await
        .unwrap();
    let proxy = UdpProxy::start(broker.addr).await;
    let config = ClientConfig {
        request_timeout: Duration::from_secs(1),
        ..ClientConfig::new(proxy.addr.to_string(), TlsConfig::CaFile(broker.ca_path()))
    };
    let client = broker.client_with(config).await;
    (proxy, client)
}

/// A producer that times out an attempt after 1 s and retries 100 ms later, for a minute.
fn retrying(idempotence: bool) -> ProducerConfig {
    ProducerConfig {
        idempotence,
        acks: Acks::All,
        request_timeout_ms: 1_000,
        retry_backoff: Duration::from_millis(100),
        linger: Duration::ZERO,
        delivery_timeout: LIMIT,
        ..ProducerConfig::default()
    }
}

/// Produces "a" normally, then "b" while the proxy discards the broker's answers long enough
/// for the producer's request to time out, so it resends "b". Returns the offset the producer
/// reported for "b", how long delivering it took, and the log.
async fn lose_an_answer(
    broker: &BrokerProcess,
    direct: &Client,
    topic: &str,
    idempotence: bool,
) -> (u64, Duration, Vec<(u64, String)>) {
    let (proxy, client) = client_through(broker, direct, topic).await;
    let producer = client.producer(retrying(idempotence));
    let a = tokio::time::timeout(
        LIMIT,
        producer.send_and_wait(ProducerRecord::new(topic, "a").with_partition(0)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(a.offset, 0);

    proxy.drop_to_clients(true);
    let started = Instant::now();
    let b = producer
        .send(ProducerRecord::new(topic, "b").with_partition(0))
        .await
        .unwrap();
    // The request gets through and the broker stores "b"; only the answer is lost.
    while log_end(direct, topic).await < 2 {
        assert!(started.elapsed() < LIMIT, "the broker never stored b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The producer gives an attempt max(request_timeout_ms, request_timeout) + 5 s = 6 s, then
    // resends after 100 ms. Keep answers away until well past that.
    tokio::time::sleep(Duration::from_millis(7_500).saturating_sub(started.elapsed())).await;
    assert!(proxy.dropped() > 0, "the proxy discarded nothing");
    proxy.drop_to_clients(false);
    let b = tokio::time::timeout(LIMIT, b).await.unwrap().unwrap();
    let took = started.elapsed();
    (b.offset, took, log_of(direct, topic).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_retried_after_its_answer_was_lost_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let direct = broker.client().await;

    let (offset, took, log) = lose_an_answer(&broker, &direct, "idem", true).await;
    assert!(
        took >= Duration::from_secs(6),
        "b was acknowledged after {took:?}: its first answer was not lost"
    );
    assert_eq!(
        log,
        vec![(0, "a".to_string()), (1, "b".to_string())],
        "each record exactly once, offsets dense"
    );
    assert_eq!(
        offset, 1,
        "the retry is acknowledged with the original offset"
    );

    // Control: the same fault without idempotence stores the retried batch a second time,
    // which shows the fault really made the producer resend.
    let (offset, _, log) = lose_an_answer(&broker, &direct, "plain", false).await;
    let values: Vec<&str> = log.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, vec!["a", "b", "b"], "{log:?}");
    assert_eq!(offset, 2, "without idempotence the retry is a new append");
}

/// A hand-made batch of `n` records, stamped with a producer id, epoch and base sequence.
fn batch(tag: &str, n: u32, producer_id: i64, epoch: i16, seq: i32) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..n {
        b.push(&Record {
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            timestamp: sluice_tests::now_ms(),
            ..Default::default()
        });
    }
    Bytes::from(b.finish(producer_id, epoch, seq).unwrap())
}

async fn produce(client: &Client, topic: &str, raw: Bytes) -> Result<u64, ClientError> {
    let request = Request::Produce(ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks: Acks::All,
        timeout_ms: 10_000,
        leader_epoch: None,
    });
    match client.request(request, raw).await? {
        (ResponseBody::Produced(p), _) => Ok(p.base_offset),
        (other, _) => panic!("expected Produced, got {other:?}"),
    }
}

async fn init_producer_id(client: &Client) -> (i64, i16) {
    match client
        .request(Request::InitProducerId, Bytes::new())
        .await
        .unwrap()
    {
        (ResponseBody::ProducerId { producer_id, epoch }, _) => (producer_id, epoch),
        (other, _) => panic!("expected ProducerId, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_refused_and_old_batches_are_recognised_after_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    client
        .admin()
        .create_topic("seq", 1, TopicConfig::default())
        .await
        .unwrap();
    let (pid, epoch) = init_producer_id(&client).await;
    let first = batch("first", 3, pid, epoch, 0);
    let second = batch("second", 2, pid, epoch, 3);
    assert_eq!(produce(&client, "seq", first.clone()).await.unwrap(), 0);
    assert_eq!(produce(&client, "seq", second.clone()).await.unwrap(), 3);

    // Sequence 5 is next; 7 leaves a gap.
    let err = produce(&client, "seq", batch("gap", 1, pid, epoch, 7))
        .await
        .unwrap_err();
    match &err {
        ClientError::Broker(e) => {
            assert_eq!(e.code, ErrorCode::OutOfOrderSequence);
            assert!(!e.code.is_retriable());
            assert!(
                e.message.contains("expected sequence 5") && e.message.contains("sequence 7"),
                "{}",
                e.message
            );
        }
        other => panic!("expected OutOfOrderSequence, got {other:?}"),
    }
    // A stale epoch is fenced once a newer one wrote.
    assert_eq!(
        produce(&client, "seq", batch("e1", 1, pid, epoch + 1, 0))
            .await
            .unwrap(),
        5
    );
    let err = produce(&client, "seq", batch("old", 1, pid, epoch, 5))
        .await
        .unwrap_err();
    assert_eq!(err.wire_code(), Some(ErrorCode::ProducerFenced), "{err}");
    // Batches without a producer id are never checked.
    let plain = batch("plain", 1, -1, -1, -1);
    assert_eq!(produce(&client, "seq", plain.clone()).await.unwrap(), 6);
    assert_eq!(produce(&client, "seq", plain).await.unwrap(), 7);
    assert_eq!(log_end(&client, "seq").await, 8);
    drop(client);

    // kill -9 after the acknowledgements; the producer state comes back from the log.
    broker.kill9();
    broker.restart();
    let client = broker.client().await;
    let (second_pid, _) = init_producer_id(&client).await;
    assert!(
        second_pid > pid,
        "producer ids are never reused across restarts ({second_pid} after {pid})"
    );
    let e1 = batch("e1", 1, pid, epoch + 1, 0);
    assert_eq!(
        produce(&client, "seq", e1).await.unwrap(),
        5,
        "a retry after the restart gets its original offset"
    );
    let err = produce(&client, "seq", first).await.unwrap_err();
    assert_eq!(
        err.wire_code(),
        Some(ErrorCode::ProducerFenced),
        "the old epoch is still fenced after the restart: {err}"
    );
    let err = produce(&client, "seq", batch("gap", 1, pid, epoch + 1, 3))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("expected sequence 1"),
        "gaps still refused after the restart: {err}"
    );
    assert_eq!(log_end(&client, "seq").await, 8, "nothing stored twice");
    let log = log_of(&client, "seq").await;
    let offsets: Vec<u64> = log.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());
}

/// Issue 11: five batches in flight per partition (the default) under lost answers. A producer
/// sends 4,000 records to one partition in small batches, five of them outstanding at a
/// time, through a proxy that twice discards every answer of the broker for 7.5 s: the broker
/// stores the batches, the producer hears nothing, times out and resends all that were in
/// flight. Every record is acknowledged at the offset it holds, and the log holds each record
/// once, in the order sent. The control without idempotence shows the fault made the
/// producer resend (the log then holds copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_batches_in_flight_keep_order_and_are_stored_once_across_lost_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let direct = broker.client().await;
    let sent = 4_000u32;
    for (topic, idempotence) in [("five", true), ("five-plain", false)] {
        let (proxy, client) = client_through(&broker, &direct, topic).await;
        let producer = client.producer(ProducerConfig {
            linger: Duration::from_millis(1),
            // ~20 records a batch: many batches, five in flight.
            max_batch_bytes: 512,
            max_in_flight_per_partition: 5,
            ..retrying(idempotence)
        });
        assert_eq!(ProducerConfig::default().max_in_flight_per_partition, 5);
        let sender = {
            let producer = producer.clone();
            let topic = topic.to_owned();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                for i in 0..sent {
                    let record = ProducerRecord::new(&topic, format!("r{i:05}")).with_partition(0);
                    pending.push(producer.send(record).await.unwrap());
                    if i % 50 == 49 {
                        // Spread over the faults below.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let mut offsets = Vec::new();
                for p in pending {
                    offsets.push(tokio::time::timeout(LIMIT, p).await.unwrap());
                }
                offsets
            })
        };
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.drop_to_clients(true);
            tokio::time::sleep(Duration::from_millis(7_500)).await;
            proxy.drop_to_clients(false);
        }
        let acks = tokio::time::timeout(LIMIT, sender).await.unwrap().unwrap();
        assert!(proxy.dropped() > 0, "the proxy discarded nothing");
        let log = log_of(&direct, topic).await;
        let values: Vec<&str> = log.iter().map(|(_, v)| v.as_str()).collect();
        if !idempotence {
            assert!(
                log.len() > sent as usize,
                "control: no batch was stored twice ({} records), so nothing was resent",
                log.len()
            );
            continue;
        }
        let expected: Vec<String> = (0..sent).map(|i| format!("r{i:05}")).collect();
        assert_eq!(values, expected, "each record once, in the order sent");
        for (i, ack) in acks.into_iter().enumerate() {
            let ack = ack.unwrap_or_else(|e| panic!("record {i} failed: {e}"));
            assert_eq!(
                ack.offset, i as u64,
                "record {i} acknowledged at another offset"
            );
        }
    }
}
