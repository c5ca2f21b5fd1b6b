//! Acceptance 3: retention by size and by time; a fetch below the log start gets
//! `OffsetOutOfRange` with the earliest offset; `consume --from-beginning` still works.

use std::time::{Duration, Instant};

use sluice_client::{
    ClientError, ConsumerConfig, OffsetReset, ProducerConfig, ProducerRecord, SeekTo,
};
use sluice_proto::{ErrorCode, TopicConfig};
use sluice_tests::{BrokerProcess, TEST_CONFIG, describe_output, now_ms};

/// Waits (bounded) until retention has moved the log start past `above` and the partition
/// holds at most `max_size` bytes.
async fn wait_for_retention(
    client: &sluice_client::Client,
    topic: &str,
    above: u64,
    max_size: u64,
) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = &client
            .admin()
            .describe_topic(topic)
            .await
            .unwrap()
            .partitions[0];
        if p.log_start > above && p.size_bytes <= max_size {
            return (p.log_start, p.size_bytes);
        }
        assert!(
            Instant::now() < deadline,
            "retention did not run on {topic} in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    let admin = client.admin();
    let producer = client.producer(ProducerConfig::default());

    // By size: 100 batches of ~1 KiB, keep at most 10 KiB.
    let limit = 10 * 1024;
    admin
        .create_topic(
            "by-size",
            1,
            TopicConfig {
                retention_bytes: Some(limit),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    for i in 0..100 {
        // send_and_wait: one record per batch, so retention has batches to drop.
        producer
            .send_and_wait(ProducerRecord::new(
                "by-size",
                format!("{i:04}-{}", "x".repeat(1000)),
            ))
            .await
            .unwrap();
    }
    let (log_start, size) = wait_for_retention(&client, "by-size", 0, limit).await;
    assert!(size <= limit, "{size} bytes kept, limit {limit}");
    assert!(log_start >= 85, "log start {log_start}: too little removed");
    let described = admin.describe_topic("by-size").await.unwrap();
    assert_eq!(
        described.partitions[0].log_end, 100,
        "retention never moves the log end"
    );

    // A fetch below the log start: OffsetOutOfRange with the earliest offset.
    let mut consumer = client.consumer(ConsumerConfig {
        reset: OffsetReset::Error,
        ..ConsumerConfig::default()
    });
    consumer.assign("by-size", &[0]).await.unwrap();
    consumer
        .seek("by-size", 0, SeekTo::Offset(0))
        .await
        .unwrap();
    match consumer.poll().await {
        Err(ClientError::OffsetOutOfRange { earliest, .. }) => assert_eq!(earliest, log_start),
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    // The same through the raw protocol error.
    let offsets = admin
        .list_offsets("by-size", vec![(0, sluice_proto::OffsetSpec::Earliest)])
        .await
        .unwrap();
    assert_eq!(offsets[0].result.as_ref().unwrap(), &log_start);

    // `consume --from-beginning` starts at the log start.
    let out = broker.run_cli(
        &[
            "consume",
            "by-size",
            "--from-beginning",
            "--format",
            "%o %v\\n",
            "--timeout-ms",
            "2000",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, 100 - log_start, "{text}");
    assert!(
        lines[0].starts_with(&format!("{log_start} {log_start:04}-")),
        "first line {:?}",
        lines[0]
    );

    // By time: records stamped an hour ago go; fresh ones stay.
    admin
        .create_topic(
            "by-time",
            1,
            TopicConfig {
                retention_ms: Some(60_000),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    let old = now_ms() - 3_600_000;
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("by-time", format!("old-{i}")).with_timestamp(old))
            .await
            .unwrap();
    }
    for i in 0..5 {
        producer
            .send_and_wait(ProducerRecord::new("by-time", format!("new-{i}")))
            .await
            .unwrap();
    }
    // Retention runs every 200 ms, possibly between two of the old batches: wait until all
    // ten are gone (a pass that removed some of them is not the end).
    let (log_start, _) = wait_for_retention(&client, "by-time", 9, u64::MAX).await;
    assert_eq!(log_start, 10, "exactly the old batches are removed");
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("by-time", &[0]).await.unwrap();
    consumer.seek("by-time", 0, SeekTo::Earliest).await.unwrap();
    let records = consumer.poll().await.unwrap();
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..5).map(|i| format!("new-{i}")).collect::<Vec<_>>()
    );
    // Raw wire error code for a fetch below the log start.
    let mut consumer = client.consumer(ConsumerConfig {
        reset: OffsetReset::Error,
        ..ConsumerConfig::default()
    });
    consumer.assign("by-time", &[0]).await.unwrap();
    consumer
        .seek("by-time", 0, SeekTo::Offset(3))
        .await
        .unwrap();
    let err = consumer.poll().await.unwrap_err();
    assert!(
        matches!(err, ClientError::OffsetOutOfRange { earliest: 10, .. })
            || err.wire_code() == Some(ErrorCode::OffsetOutOfRange),
        "{err:?}"
    );
}
