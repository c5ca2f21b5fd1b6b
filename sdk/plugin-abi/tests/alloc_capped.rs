//! The packed-batch decoder under an allocator with a limit: no count or length read from a
//! batch may size an allocation beyond what the batch can hold. A decoder that tries aborts
//! this test process ("memory allocation of N bytes failed"), which fails `cargo test`.
//!
//! The limit is set once per process, [`HEADROOM`] above what was allocated then; the tests
//! run in parallel and each stays far below it.

use std::sync::Once;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sluice_plugin_abi::{
    AbiErrorReason, BatchReader, PluginRecord, batch_len, decode_batch, encode_batch,
};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const HEADROOM: usize = 32 * 1024 * 1024;

/// Counts a hostile guest or host might claim.
const HUGE: [u32; 4] = [u32::MAX, u32::MAX - 1, 1 << 31, 1 << 28];

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

/// Every way to read a packed batch.
fn decode_all(bytes: &[u8]) {
    let _ = batch_len(bytes);
    let _ = decode_batch(bytes);
    if let Ok(reader) = BatchReader::new(bytes) {
        for r in reader {
            match r {
                Ok(r) => {
                    let _ = r.to_owned_record();
                    let _ = r.headers().count();
                }
                Err(_) => break,
            }
        }
    }
}

fn sample(headers: usize) -> PluginRecord {
    PluginRecord {
        key: Some(b"key".to_vec()),
        value: Some(b"value".to_vec()),
        headers: (0..headers)
            .map(|i| (format!("h{i}"), Some(vec![i as u8])))
            .collect(),
        timestamp: 7,
        partition: 1,
        offset: 2,
    }
}

#[test]
fn huge_record_counts_are_refused_before_allocating() {
    cap_allocations();
    let good = encode_batch(&[sample(1), sample(0), sample(2)]);
    assert_eq!(decode_batch(&good).unwrap().len(), 3);
    for count in HUGE {
        let mut bad = good.clone();
        bad[1..5].copy_from_slice(&count.to_le_bytes());
        assert_eq!(
            decode_batch(&bad).unwrap_err().reason,
            AbiErrorReason::CountTooLarge(count)
        );
        assert!(batch_len(&bad).is_err());
        decode_all(&bad);
    }
}

/// Byte offsets inside the first record of `encode_batch(&[sample(n)])`: the record length,
/// the key length, the value length and the header count.
const AT_RECORD_LEN: usize = 5;
const AT_KEY_LEN: usize = 9 + 8 + 4 + 8;
const AT_VALUE_LEN: usize = AT_KEY_LEN + 4 + 3;
const AT_HEADER_COUNT: usize = AT_VALUE_LEN + 4 + 5;

#[test]
fn huge_lengths_and_header_counts_are_refused() {
    cap_allocations();
    let good = encode_batch(&[sample(2)]);
    let header_key_len = AT_HEADER_COUNT + 4;
    for at in [
        AT_RECORD_LEN,
        AT_KEY_LEN,
        AT_VALUE_LEN,
        AT_HEADER_COUNT,
        header_key_len,
    ] {
        for v in HUGE {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&v.to_le_bytes());
            assert!(decode_batch(&bad).is_err(), "{v} at byte {at}");
            decode_all(&bad);
        }
    }
}

#[test]
fn arbitrary_bytes() {
    cap_allocations();
    let mut runner = TestRunner::new(Config::with_cases(3000));
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..400), |data| {
            decode_all(&data);
            // Behind a valid header claiming each huge count, and a plausible one.
            for count in HUGE.into_iter().chain([1, 3]) {
                let mut b = vec![1u8];
                b.extend_from_slice(&count.to_le_bytes());
                b.extend_from_slice(&data);
                decode_all(&b);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_batches() {
    cap_allocations();
    let strategy = (
        0usize..4,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 1..6),
    );
    let mut runner = TestRunner::new(Config::with_cases(3000));
    runner
        .run(&strategy, |(n, words)| {
            let mut bytes = encode_batch(&(0..n).map(sample).collect::<Vec<_>>());
            // Overwrite four-byte words anywhere, where counts and lengths live.
            for (at, v) in words {
                let i = at.index(bytes.len() - 3);
                bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            decode_all(&bytes);
            Ok(())
        })
        .unwrap();
}
