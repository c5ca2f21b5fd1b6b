//! TEST FIXTURE ONLY. A partitioner that answers `partition_count` (one past the last valid
//! partition) for every record: the host must refuse it (`PluginError::MalformedOutput`).

use sluice_plugin::{Config, Partitioner, RecordRef, Result};

struct OutOfRange;

impl Partitioner for OutOfRange {
    fn new(_: &Config) -> Result<Self> {
        Ok(OutOfRange)
    }

    fn partition(&mut self, _: &RecordRef<'_>, partition_count: u32) -> Result<u32> {
        Ok(partition_count)
    }
}

sluice_plugin::export_partitioner!(OutOfRange);
