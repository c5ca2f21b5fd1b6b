//! The replication messages' decoder under an allocator with a limit: no length read from the
//! bytes may size an allocation beyond what the bytes hold. A decoder that tries aborts this
//! test process ("memory allocation of N bytes failed"), which fails `cargo test`.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sluice_replication::wire::{ReplicaAnswer, ReplicaFetch, decode, encode};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Maximal varints (the largest lengths and counts postcard can read) at `at`.
fn with_huge_length(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    out.extend_from_slice(&bytes[at..]);
    out
}

/// One test, so the limit set at its start holds for everything the process allocates.
#[test]
fn hostile_replication_messages_are_refused_without_allocating_for_them() {
    const HEADROOM: usize = 32 * 1024 * 1024;
    ALLOC.set_limit(ALLOC.allocated() + HEADROOM).unwrap();
    assert!(Vec::<u8>::new().try_reserve(ALLOC.limit()).is_err());

    let samples = vec![
        encode(&ReplicaFetch {
            topic_id: 1,
            partition: 2,
            follower: 3,
            leader_epoch: 4,
            fetch_offset: 5,
            last_fetched_epoch: Some(6),
            max_bytes: 7,
        })
        .unwrap(),
        encode(&ReplicaAnswer::Batches { high_watermark: 9 }).unwrap(),
        encode(&ReplicaAnswer::Refused("not the leader".into())).unwrap(),
        encode(&ReplicaAnswer::Diverging {
            epoch: 3,
            end_offset: 4,
        })
        .unwrap(),
    ];
    // A huge length spliced over, and in front of, every byte: every field is hit.
    for bytes in &samples {
        for at in 0..=bytes.len() {
            let spliced = with_huge_length(bytes, at);
            let _ = decode::<ReplicaFetch>(&spliced);
            let _ = decode::<ReplicaAnswer>(&spliced);
            let mut over = bytes.clone();
            let end = (at + 10).min(over.len());
            over.splice(at..end, [0xff; 9].into_iter().chain([0x0f]));
            let _ = decode::<ReplicaFetch>(&over);
            let _ = decode::<ReplicaAnswer>(&over);
        }
    }
    // Arbitrary bytes.
    let mut runner = TestRunner::new(Config {
        cases: 4096,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            let _ = decode::<ReplicaFetch>(&bytes);
            let _ = decode::<ReplicaAnswer>(&bytes);
            Ok(())
        })
        .unwrap();
}
