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
    fn spreads_keys() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for_key(format!("key-{i}").as_bytes(), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
