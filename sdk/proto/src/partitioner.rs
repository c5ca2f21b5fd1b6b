//! The key-hash partitioner.
//!
//! A keyed record goes to `(murmur2(key) & 0x7fff_ffff) % partitions`, where `murmur2` is the
//! 32-bit MurmurHash2 with seed `0x9747b28c` — the same function and seed Kafka's default
//! partitioner uses, so a key lands on the same partition number in Sluice as in Kafka. The
//! function is part of the protocol contract: changing it would move keys between partitions.

// One implementation serves the broker, the SDK and plugin guests (which cannot link this
// crate): the dependency-free plugin ABI crate owns it.
pub use sluice_plugin_abi::{murmur2, partition_for_key};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_reference_values() {
        // Reference values of Kafka's Utils.murmur2 (as signed Java ints).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn spreads_keys() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for_key(format!("key-{i}").as_bytes(), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
