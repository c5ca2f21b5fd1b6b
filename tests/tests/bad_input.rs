//! Acceptance 4: bad input gets a clear error; the broker keeps serving and loses nothing.

use std::time::Duration;

use bytes::Bytes;
use sluice_client::{Client, ClientConfig, ClientError, ProducerConfig, ProducerRecord, TlsConfig};
use sluice_proto::frame::encode_frame;
use sluice_proto::{
    Acks, ErrorCode, HelloRequest, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ProduceRequest, Request,
    ResponseBody, TopicConfig,
};
use sluice_tests::{
    BrokerProcess, TEST_CONFIG, describe_output, raw_connection, raw_exchange, read_values,
};

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.wire_code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &format!("{TEST_CONFIG}max_batch_bytes = 262144\n"),
    );
    let client = broker.client().await;
    let admin = client.admin();
    admin
        .create_topic("good", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    let before: Vec<String> = (0..50).map(|i| format!("kept-{i}")).collect();
    for v in &before {
        producer
            .send_and_wait(ProducerRecord::new("good", v.clone()))
            .await
            .unwrap();
    }

    // Unknown topic.
    let e = producer
        .send_and_wait(ProducerRecord::new("no-such-topic", "x"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownTopic), "{e}");
    assert!(e.to_string().contains("no-such-topic"), "{e}");
    let e = admin.describe_topic("no-such-topic").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::UnknownTopic));

    // Invalid topic name, duplicate create, nonsense partition count.
    let e = admin
        .create_topic("bad name!", 1, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::InvalidTopicName), "{e}");
    let e = admin
        .create_topic("good", 1, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::TopicAlreadyExists), "{e}");
    let e = admin
        .create_topic("zero", 0, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::InvalidConfig), "{e}");

    // A record above the maximum batch size (broker: 256 KiB).
    let e = producer
        .send_and_wait(ProducerRecord::new("good", Bytes::from(vec![7u8; 400_000])))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::RecordTooLarge), "{e}");
    // A topic with its own, smaller limit.
    admin
        .create_topic(
            "small",
            1,
            TopicConfig {
                max_batch_bytes: Some(2048),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    let e = producer
        .send_and_wait(ProducerRecord::new("small", Bytes::from(vec![1u8; 4096])))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::RecordTooLarge), "{e}");

    // A corrupt batch: the CRC does not match.
    let mut b = sluice_proto::BatchBuilder::new(sluice_proto::Compression::None);
    b.push(&sluice_proto::Record {
        value: Some(Bytes::from_static(b"evil")),
        ..Default::default()
    });
    let mut batch = b.finish(-1, -1, -1).unwrap();
    let last = batch.len() - 1;
    batch[last] ^= 0xff;
    let produce = Request::Produce(ProduceRequest {
        topic: "good".into(),
        partition: 0,
        acks: Acks::All,
        timeout_ms: 5000,
        leader_epoch: None,
    });
    let e = client
        .request(produce.clone(), Bytes::from(batch))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::InvalidRecord), "{e}");
    let e = client
        .request(produce, Bytes::from_static(b"not a batch"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::InvalidRecord), "{e}");

    // Raw frames: before Hello, malformed control, oversized.
    let conn = raw_connection(broker.addr, &broker.ca_path()).await;
    let resp = raw_exchange(&conn, &encode_frame(&Request::ListTopics, &[]).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.unwrap_err().code, ErrorCode::UnsupportedVersion);
    let hello = Request::Hello(HelloRequest {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client_id: "raw".into(),
    });
    let resp = raw_exchange(&conn, &encode_frame(&hello, &[]).unwrap())
        .await
        .unwrap();
    assert!(matches!(resp, Ok(ResponseBody::Hello(_))));
    let mut garbage = vec![0, 0, 0, 12, 0, 0, 0, 8];
    garbage.extend_from_slice(&[0xff; 8]);
    let resp = raw_exchange(&conn, &garbage).await.unwrap();
    assert_eq!(resp.unwrap_err().code, ErrorCode::InvalidRequest);
    let resp = raw_exchange(&conn, &[0, 0, 0, 2, 0]).await; // truncated: the stream ends mid-frame
    assert!(resp.is_none());
    let oversized = (1u32 << 30).to_be_bytes();
    let resp = raw_exchange(&conn, &oversized).await.unwrap();
    assert_eq!(resp.unwrap_err().code, ErrorCode::FrameTooLarge);
    // Unsupported version.
    let future = Request::Hello(HelloRequest {
        min_version: 999,
        max_version: 1000,
        client_id: "future".into(),
    });
    let conn2 = raw_connection(broker.addr, &broker.ca_path()).await;
    let resp = raw_exchange(&conn2, &encode_frame(&future, &[]).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.unwrap_err().code, ErrorCode::UnsupportedVersion);
    // The raw connection still works after all that.
    let resp = raw_exchange(&conn, &encode_frame(&Request::ListTopics, &[]).unwrap())
        .await
        .unwrap();
    assert!(matches!(resp, Ok(ResponseBody::Topics(_))));

    // A client that trusts the wrong CA is refused by TLS, with a clear error.
    let other_ca = dir.path().join("other-ca.pem");
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other_ca, params.self_signed(&kp).unwrap().pem()).unwrap();
    let wrong = Client::connect(ClientConfig::new(
        broker.addr.to_string(),
        TlsConfig::CaFile(other_ca.clone()),
    ))
    .await;
    match wrong {
        Err(ClientError::Tls(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    let out = broker.run_cli(
        &["--tls-ca", other_ca.to_str().unwrap(), "topic", "list"],
        b"",
    );
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("tls"),
        "{}",
        describe_output(&out)
    );

    // After all of it: the broker serves everyone, and nothing stored was lost.
    let fresh = broker.client().await;
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        read_values(&fresh, "good", before.len()),
    )
    .await
    .unwrap();
    assert_eq!(got, before);
    let m = fresh
        .producer(ProducerConfig::default())
        .send_and_wait(ProducerRecord::new("good", "after"))
        .await
        .unwrap();
    assert_eq!(m.offset, before.len() as u64);
}
