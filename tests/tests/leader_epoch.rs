//! Produce and fetch requests carry the leader epoch the client believes in (protocol version
//! 2); a broker answers a mismatch with a retriable error instead of acting on stale metadata.
//! A version 1 client is told to upgrade at Hello.

use bytes::Bytes;
use sluice_client::ClientError;
use sluice_proto::batch::{BatchBuilder, Compression, Record};
use sluice_proto::frame::encode_frame;
use sluice_proto::{
    Acks, ErrorCode, FetchPartition, FetchRequest, HelloRequest, ProduceRequest, Request,
    ResponseBody, TopicConfig,
};
use sluice_tests::{BrokerProcess, TEST_CONFIG, raw_connection, raw_exchange};

fn one_record() -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        value: Some(Bytes::from_static(b"v")),
        ..Default::default()
    });
    Bytes::from(b.finish(-1, -1, -1).unwrap())
}

fn produce(leader_epoch: Option<u32>) -> Request {
    Request::Produce(ProduceRequest {
        topic: "t".into(),
        partition: 0,
        acks: Acks::Leader,
        timeout_ms: 10_000,
        leader_epoch,
    })
}

fn fetch(leader_epoch: Option<u32>) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        partitions: vec![FetchPartition {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            leader_epoch,
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_leader_epoch_is_refused_retriably() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    let t = client
        .admin()
        .create_topic("t", 1, TopicConfig::default())
        .await
        .unwrap();
    let current = t.partitions[0].leader_epoch;

    // The current epoch, or none, is served.
    for epoch in [Some(current), None] {
        let (body, _) = client.request(produce(epoch), one_record()).await.unwrap();
        assert!(matches!(body, ResponseBody::Produced(_)), "{body:?}");
    }
    // A newer epoch than the broker knows: UnknownLeaderEpoch, nothing stored.
    match client
        .request(produce(Some(current + 5)), one_record())
        .await
    {
        Err(ClientError::Broker(e)) => {
            assert_eq!(e.code, ErrorCode::UnknownLeaderEpoch);
            assert!(e.code.is_retriable());
            assert!(
                e.message.contains(&format!("epoch {}", current + 5)),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The same for a fetch: the partition's error says so, and no bytes come back.
    let (body, raw) = client
        .request(fetch(Some(current + 5)), Bytes::new())
        .await
        .unwrap();
    match body {
        ResponseBody::Fetched(f) => {
            let e = f.partitions[0].error.as_ref().expect("an error");
            assert_eq!(e.code, ErrorCode::UnknownLeaderEpoch);
            assert!(raw.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let (body, raw) = client
        .request(fetch(Some(current)), Bytes::new())
        .await
        .unwrap();
    assert!(matches!(&body, ResponseBody::Fetched(f) if f.partitions[0].error.is_none()));
    let batches = sluice_proto::batch::split_batches(raw).unwrap();
    let records: u32 = batches.iter().map(|(h, _)| h.record_count).sum();
    assert_eq!(records, 2, "the two accepted produces, not the refused one");

    // A version 1 client is told to upgrade.
    let conn = raw_connection(broker.addr, &broker.ca_path()).await;
    let hello = Request::Hello(HelloRequest {
        client_id: "old".into(),
        min_version: 1,
        max_version: 1,
    });
    let resp = raw_exchange(&conn, &encode_frame(&hello, &[]).unwrap())
        .await
        .unwrap();
    let e = resp.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    assert!(e.message.contains("upgrade"), "{e:?}");
}
