//! The protocol decoders under an allocator with a limit: no count or length read from the
//! input may size an allocation beyond what the input can hold. A decoder that tries aborts
//! this test process ("memory allocation of N bytes failed"), which fails `cargo test`.
//!
//! The limit is set once per process, [`HEADROOM`] above what was allocated then; the tests of
//! this file run in parallel and each stays well below it. Today's largest legitimate use is a
//! zstd section decompressed up to [`LIMIT`] (a growing `Vec`, so up to twice that).

use std::io::Write;
use std::sync::Once;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sluice_proto::batch::{
    self, BatchBuilder, BatchHeader, Compression, HEADER_LEN, MIN_RECORD_LEN, Record,
};
use sluice_proto::frame::decode_body;
use sluice_proto::{
    BrokerInfo, GroupOffset, MetadataResponse, OffsetCommitRequest, PartitionMetadata, ProtoError,
    Request, Response, ResponseBody, TopicMetadata, WireError,
};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const MIB: usize = 1024 * 1024;
/// What the broker passes as the decompression limit: its default largest batch.
const LIMIT: usize = 8 * MIB;
const HEADROOM: usize = 64 * MIB;

/// Record counts a hostile producer might claim.
const HUGE_COUNTS: [u32; 4] = [u32::MAX, 1 << 31, 1 << 28, 1 << 20];

fn cap_allocations() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        ALLOC
            .set_limit(ALLOC.allocated() + HEADROOM)
            .expect("limit above what is allocated");
        // The limit is in force: an allocation past it fails (and, when not fallible, aborts).
        // Checked once, here: `cap` takes a failing allocation's size off what remains before
        // it gives it back, so two such checks at once in parallel tests could let one pass.
        assert!(Vec::<u8>::new().try_reserve(ALLOC.limit()).is_err());
    });
}

/// Offset of `attributes`, the first byte the CRC covers, and of `record_count`.
const OFF_CRC: usize = 17;
const CRC_START: usize = 21;
const OFF_RECORD_COUNT: usize = 23;

fn batch_of(compression: Compression, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for i in 0..n {
        b.push(&Record {
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("the same value, number {i}"))),
            ..Default::default()
        });
    }
    b.finish(-1, -1, -1).unwrap()
}

/// Replaces the records section (compressed as it is), fixing the length and the CRC.
fn with_section(mut batch: Vec<u8>, section: &[u8]) -> Vec<u8> {
    batch.truncate(HEADER_LEN);
    batch.extend_from_slice(section);
    let len = u32::try_from(batch.len()).unwrap();
    batch[8..12].copy_from_slice(&len.to_be_bytes());
    fix_crc(batch)
}

fn with_count(mut batch: Vec<u8>, count: u32) -> Vec<u8> {
    batch[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    fix_crc(batch)
}

fn fix_crc(mut batch: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// Runs every batch decoder on `bytes` with the default and the broker's limit. Returns the
/// outcome of `validate_with_limit(bytes, LIMIT)`.
fn decode_all(bytes: &[u8]) -> Result<BatchHeader, ProtoError> {
    let _ = batch::validate(bytes);
    let _ = batch::split_batches(Bytes::copy_from_slice(bytes));
    if let Ok(header) = BatchHeader::parse(bytes)
        && header.batch_len as usize == bytes.len()
    {
        // Decode even with a wrong CRC, to reach the record decoder with any input.
        let owned = Bytes::copy_from_slice(bytes);
        let _ = batch::decode_records(&header, &owned);
        let _ = batch::decode_records_with_limit(&header, &owned, LIMIT);
    }
    batch::validate_with_limit(bytes, LIMIT)
}

fn assert_refused(bytes: &[u8], what: &str) -> ProtoError {
    let header = BatchHeader::parse(bytes).expect("the header itself is well formed");
    let owned = Bytes::copy_from_slice(bytes);
    assert!(batch::validate(bytes).is_err(), "{what}: validate");
    assert!(
        batch::decode_records(&header, &owned).is_err(),
        "{what}: decode_records"
    );
    assert!(
        batch::decode_records_with_limit(&header, &owned, LIMIT).is_err(),
        "{what}: decode_records_with_limit"
    );
    batch::validate_with_limit(bytes, LIMIT).expect_err(what)
}

#[test]
fn huge_record_counts_are_refused_before_allocating() {
    cap_allocations();
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let good = batch_of(compression, 3);
        assert_eq!(
            batch::validate_with_limit(&good, LIMIT)
                .unwrap()
                .record_count,
            3
        );
        for count in HUGE_COUNTS {
            let bad = with_count(good.clone(), count);
            assert_refused(
                &bad,
                &format!("{compression:?} batch claiming {count} records"),
            );
        }
    }
}

#[test]
fn lz4_size_prefixes_past_the_limit_or_the_input_are_refused() {
    cap_allocations();
    let good = batch_of(Compression::Lz4, 50);
    let block = &good[HEADER_LEN + 4..];
    for claim in [
        u32::MAX,
        1 << 28,
        LIMIT as u32 + 1,
        (block.len() * 255 + 1) as u32,
    ] {
        let mut section = claim.to_le_bytes().to_vec();
        section.extend_from_slice(block);
        let bad = with_section(good.clone(), &section);
        let err = assert_refused(&bad, &format!("lz4 section claiming {claim} bytes"));
        assert!(matches!(
            err,
            ProtoError::Compression(_) | ProtoError::Malformed(_)
        ));
    }
}

/// `n` bytes of zeros as one zstd frame, compressed as they stream (never all in memory).
fn zstd_zeros(n: usize) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let chunk = vec![0u8; MIB];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        enc.write_all(&chunk[..k]).unwrap();
        left -= k;
    }
    enc.finish().unwrap()
}

#[test]
fn zstd_bombs_are_refused_at_the_limit() {
    cap_allocations();
    let good = batch_of(Compression::Zstd, 1);
    for size in [100 * MIB, LIMIT + 1] {
        let bomb = with_section(good.clone(), &zstd_zeros(size));
        assert!(
            bomb.len() < 64 * 1024,
            "a bomb is small: {} bytes",
            bomb.len()
        );
        let err = batch::validate_with_limit(&bomb, LIMIT).unwrap_err();
        assert!(
            err.to_string()
                .contains("more than the limit of 8388608 bytes"),
            "{size} bytes of zeros: {err}"
        );
        let header = BatchHeader::parse(&bomb).unwrap();
        // Decompressing all 100 MiB before refusing would pass the allocator's limit.
        assert!(batch::decode_records_with_limit(&header, &Bytes::from(bomb), LIMIT).is_err());
    }
}

#[test]
fn zstd_frames_asking_for_a_huge_window_are_refused() {
    cap_allocations();
    let good = batch_of(Compression::Zstd, 1);
    // A frame header: magic, a descriptor without content size or single-segment flag, then a
    // window descriptor of 2^27 (128 MiB), and one last raw block of one byte.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (27 - 10) << 3];
    frame.extend_from_slice(&[0x09, 0x00, 0x00, 0x00]);
    let bad = with_section(good, &frame);
    let err = batch::validate_with_limit(&bad, LIMIT).unwrap_err();
    assert!(matches!(err, ProtoError::Compression(_)), "{err}");
}

#[test]
fn a_count_that_exactly_fits_the_bytes_is_read_and_one_more_is_not() {
    cap_allocations();
    // Records of MIN_RECORD_LEN bytes each: no key, value or headers.
    let mut b = BatchBuilder::new(Compression::None);
    for _ in 0..100 {
        b.push(&Record::default());
    }
    let bytes = b.finish(-1, -1, -1).unwrap();
    assert_eq!(bytes.len() - HEADER_LEN, 100 * MIN_RECORD_LEN);
    let header = batch::validate_with_limit(&bytes, LIMIT).unwrap();
    assert_eq!(
        batch::decode_records(&header, &Bytes::from(bytes.clone()))
            .unwrap()
            .len(),
        100
    );
    let err = assert_refused(&with_count(bytes, 101), "one record too many");
    assert!(err.to_string().contains("can hold"), "{err}");
}

/// A one-record uncompressed batch whose record body is `body` (after the length varint).
fn one_record(body: &[u8]) -> Vec<u8> {
    let mut section = Vec::new();
    put_varint(&mut section, body.len() as u64);
    section.extend_from_slice(body);
    with_section(batch_of(Compression::None, 1), &section)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The largest varint: ten bytes, all 64 bits set.
const MAX_VARINT: [u8; 10] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

#[test]
fn lengths_past_the_end_and_maximal_varints_are_refused() {
    cap_allocations();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // The record length itself.
    let mut section = MAX_VARINT.to_vec();
    section.extend_from_slice(&[0; 8]);
    cases.push((
        "record length",
        with_section(batch_of(Compression::None, 1), &section),
    ));
    for big in [u64::MAX, u64::from(u32::MAX), 1 << 28, 100] {
        let mut v = Vec::new();
        put_varint(&mut v, big);
        // timestamp delta 0, offset delta 0, then a key of `big - 1` bytes.
        let mut body = vec![0, 0];
        body.extend_from_slice(&v);
        body.extend_from_slice(b"short");
        cases.push(("key length", one_record(&body)));
        // Null key and value, then `big` headers.
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(&v);
        body.extend_from_slice(&[0, 0, 0, 0]);
        cases.push(("header count", one_record(&body)));
        // One header whose key is `big` bytes long.
        let mut body = vec![0, 0, 0, 0, 1];
        body.extend_from_slice(&v);
        body.extend_from_slice(b"k");
        cases.push(("header key length", one_record(&body)));
    }
    // Varints longer than ten bytes, in every field position.
    for at in 0..5 {
        let mut body = vec![0u8; 5];
        body.splice(at..=at, [0xff; 11]);
        cases.push(("over-long varint", one_record(&body)));
    }
    for (what, bytes) in cases {
        assert_refused(&bytes, what);
    }
    // split_batches: a batch length past the end of the data.
    let mut bytes = batch_of(Compression::None, 1);
    bytes[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(batch::split_batches(Bytes::from(bytes)).is_err());
}

#[test]
fn arbitrary_bytes_as_batches() {
    cap_allocations();
    let mut runner = TestRunner::new(Config::with_cases(2000));
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..400), |data| {
            let _ = decode_all(&data);
            // The same bytes as the records section of a well-formed header, each compression.
            for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
                let _ = decode_all(&with_section(batch_of(compression, 1), &data));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_batches_with_fixed_crcs() {
    cap_allocations();
    let strategy = (
        0usize..3,
        1usize..20,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    );
    let mut runner = TestRunner::new(Config::with_cases(2000));
    runner
        .run(&strategy, |(c, n, flips)| {
            let compression = [Compression::None, Compression::Lz4, Compression::Zstd][c];
            let mut bytes = batch_of(compression, n);
            for (at, v) in flips {
                // Past the CRC: the header fields it covers and the section.
                let i = CRC_START + at.index(bytes.len() - CRC_START);
                bytes[i] = v;
            }
            let _ = decode_all(&fix_crc(bytes));
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Frames: postcard control messages
// ---------------------------------------------------------------------------------------

fn body_of(control: &[u8]) -> Bytes {
    let mut body = (control.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(control);
    Bytes::from(body)
}

fn decode_frames(control: &[u8]) {
    let _ = decode_body::<Request>(body_of(control));
    let _ = decode_body::<Response>(body_of(control));
}

fn sample_controls() -> Vec<Vec<u8>> {
    let binding = sluice_proto::acl::AclBinding {
        principal: "alice".into(),
        resource: sluice_proto::acl::ResourceType::Topic,
        pattern: "orders".into(),
        kind: sluice_proto::acl::PatternKind::Prefix,
        operation: sluice_proto::acl::Operation::Write,
        permission: sluice_proto::acl::Permission::Deny,
    };
    let requests = [
        Request::CreateAcls {
            bindings: vec![binding.clone(), binding.clone()],
        },
        Request::WhoAmI,
        Request::Authenticate(sluice_proto::auth::AuthStep::ScramFirst {
            message: "n,,n=alice,r=abc".into(),
        }),
        Request::UpsertUser {
            name: "alice".into(),
            credential: sluice_proto::auth::ScramCredential {
                salt: vec![1; 16],
                iterations: 4096,
                stored_key: vec![2; 32],
                server_key: vec![3; 32],
            },
        },
        Request::CreateToken {
            principal: Some("bob".into()),
            description: "ci".into(),
            expires_in_ms: Some(1000),
        },
        Request::SetQuota {
            principal: "*".into(),
            quota: Some(sluice_proto::auth::Quota {
                produce_bytes_per_sec: Some(1),
                fetch_bytes_per_sec: None,
                requests_per_sec: Some(2),
            }),
        },
        Request::Metadata {
            topics: Some(vec!["orders".into(), "payments".into()]),
        },
        Request::OffsetCommit(OffsetCommitRequest {
            group: "g".into(),
            member_id: Some("m".into()),
            member_epoch: 3,
            offsets: vec![GroupOffset {
                topic: "t".into(),
                partition: 1,
                offset: 9,
            }],
        }),
    ];
    let token = sluice_proto::auth::TokenDescription {
        id: "abc".into(),
        principal: "bob".into(),
        description: "ci".into(),
        created_ms: 1,
        expires_ms: Some(2),
    };
    let responses: [Response; 7] = [
        Ok(ResponseBody::Acls(vec![binding])),
        Ok(ResponseBody::Authenticated(
            sluice_proto::auth::AuthReply::Done {
                principal: "alice".into(),
                mechanism: "scram-sha-256".into(),
                server_final: Some("v=xyz".into()),
            },
        )),
        Ok(ResponseBody::Tokens(vec![token.clone(), token])),
        Ok(ResponseBody::Throttled {
            throttle_ms: 7,
            body: Box::new(ResponseBody::Users(vec![
                sluice_proto::auth::UserDescription {
                    name: "alice".into(),
                    mechanism: "scram-sha-256".into(),
                    iterations: 4096,
                },
            ])),
        }),
        Ok(ResponseBody::WhoAmI {
            principal: "alice".into(),
            mechanism: "mtls".into(),
        }),
        Ok(ResponseBody::Metadata(MetadataResponse {
            cluster_id: "c".into(),
            controller: Some(1),
            brokers: vec![BrokerInfo {
                node_id: 1,
                addr: "a:1".into(),
            }],
            topics: vec![TopicMetadata {
                name: "t".into(),
                topic_id: 1,
                partitioner: None,
                partitions: vec![PartitionMetadata {
                    partition: 0,
                    leader: Some(1),
                    leader_epoch: 2,
                    replicas: vec![1, 2, 3],
                    in_sync: vec![1, 2],
                }],
            }],
        })),
        Err(WireError::new(sluice_proto::ErrorCode::Internal, "boom")),
    ];
    let mut out: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| postcard::to_allocvec(r).unwrap())
        .collect();
    out.extend(responses.iter().map(|r| postcard::to_allocvec(r).unwrap()));
    out
}

#[test]
fn frames_with_huge_lengths_in_every_position() {
    cap_allocations();
    let mut huge = vec![MAX_VARINT.to_vec()];
    for n in [u64::from(u32::MAX), 1 << 31, 1 << 28] {
        let mut v = Vec::new();
        put_varint(&mut v, n);
        huge.push(v);
    }
    for control in sample_controls() {
        // The samples decode as they are, so the mutations below reach every field.
        assert!(
            decode_body::<Request>(body_of(&control)).is_ok()
                || decode_body::<Response>(body_of(&control)).is_ok()
        );
        for at in 0..control.len() {
            for v in &huge {
                let mut bad = control.clone();
                bad.splice(at..=at, v.iter().copied());
                decode_frames(&bad);
                // Inserted rather than replacing, too.
                let mut bad = control.clone();
                bad.splice(at..at, v.iter().copied());
                decode_frames(&bad);
            }
        }
    }
    // A Metadata request claiming u32::MAX topic names, with none present.
    let mut control = vec![1, 1];
    put_varint(&mut control, u64::from(u32::MAX));
    assert!(decode_body::<Request>(body_of(&control)).is_err());
}

#[test]
fn arbitrary_bytes_as_frames() {
    cap_allocations();
    let mut runner = TestRunner::new(Config::with_cases(3000));
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..300), |data| {
            let _ = decode_body::<Request>(Bytes::from(data.clone()));
            let _ = decode_body::<Response>(Bytes::from(data.clone()));
            decode_frames(&data);
            Ok(())
        })
        .unwrap();
}
