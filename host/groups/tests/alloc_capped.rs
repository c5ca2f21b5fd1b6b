//! `__consumer_offsets` keys and values read back from the log, under an allocator with a
//! limit: a corrupt or hostile record claiming huge lengths must be refused without an
//! allocation sized by the claim. A decoder that tries aborts this test process.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sluice_groups::Assignor;
use sluice_groups::records::{
    GroupRecord, MemberRecord, RecordKey, RecordValue, decode_key, decode_value, encode_key,
    encode_value,
};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// The largest postcard varint (ten bytes, every bit set), and lengths a hostile record might
/// claim.
fn huge_lengths() -> Vec<Vec<u8>> {
    [u64::MAX, u64::from(u32::MAX), 1 << 31, 1 << 28]
        .into_iter()
        .map(|mut v| {
            let mut out = Vec::new();
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            out
        })
        .collect()
}

/// Encoded samples of keys and of values; each decodes as what it is.
fn samples() -> Vec<Vec<u8>> {
    let keys = [
        RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        },
        RecordKey::Member {
            group: "g".into(),
            member_id: "m-1".into(),
        },
    ];
    let values = [
        RecordValue::Member(MemberRecord {
            instance_id: Some("i".into()),
            client_id: "c".into(),
            subscribed: BTreeSet::from(["a".to_string(), "b".to_string()]),
            assigned: BTreeSet::from([("a".to_string(), 0), ("b".to_string(), 1)]),
            member_epoch: 4,
            session_timeout_ms: 45_000,
        }),
        RecordValue::Group(GroupRecord {
            epoch: 2,
            assignor: Assignor::default(),
            next_member: 9,
        }),
    ];
    for k in &keys {
        assert_eq!(&decode_key(&encode_key(k)).unwrap(), k);
    }
    for v in &values {
        assert_eq!(&decode_value(&encode_value(v)).unwrap(), v);
    }
    keys.iter()
        .map(encode_key)
        .chain(values.iter().map(encode_value))
        .collect()
}

/// Both decoders, whatever the bytes were meant to be.
fn decode_both(bytes: &[u8]) {
    let _ = decode_key(bytes);
    let _ = decode_value(bytes);
}

/// One test, so the limit set at its start holds for everything the process allocates.
#[test]
fn stored_group_records_with_huge_lengths_and_arbitrary_bytes() {
    const HEADROOM: usize = 32 * 1024 * 1024;
    ALLOC.set_limit(ALLOC.allocated() + HEADROOM).unwrap();
    // The limit is in force: an allocation past it fails (and, when not fallible, aborts).
    // (Tests run in parallel threads: what is free varies, but nothing above the whole limit
    // can ever be had.)
    assert!(Vec::<u8>::new().try_reserve(ALLOC.limit()).is_err());
    let huge = huge_lengths();
    for bytes in samples() {
        // A huge length spliced over, and in front of, every byte: every field is hit.
        for at in 0..bytes.len() {
            for v in &huge {
                let mut bad = bytes.clone();
                bad.splice(at..=at, v.iter().copied());
                decode_both(&bad);
                let mut bad = bytes.clone();
                bad.splice(at..at, v.iter().copied());
                decode_both(&bad);
            }
        }
    }
    let mut runner = TestRunner::new(Config::with_cases(5000));
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..300), |data| {
            decode_both(&data);
            Ok(())
        })
        .unwrap();
}
