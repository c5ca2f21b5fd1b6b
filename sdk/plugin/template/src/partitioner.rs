//! {{name}}: a Sluice partitioner. It picks a partition for each record produced without
//! one; this one hashes the record's key (or its value when it has no key).

use sluice_plugin::{Config, Partitioner, RecordRef, Result, partition_for_key};

struct Plugin;

impl Partitioner for Plugin {
    fn new(_config: &Config) -> Result<Self> {
        Ok(Plugin)
    }

    fn partition(&mut self, record: &RecordRef<'_>, partition_count: u32) -> Result<u32> {
        let bytes = record.key.unwrap_or(record.value_bytes());
        Ok(partition_for_key(bytes, partition_count))
    }
}

sluice_plugin::export_partitioner!(Plugin);
