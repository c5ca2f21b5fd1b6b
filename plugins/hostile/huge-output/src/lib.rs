//! TEST FIXTURE ONLY. A transform that answers any batch with 100 MB of output records: the
//! host must refuse it (`PluginError::OutputTooLarge`, or `MemoryLimit` when the memory limit
//! is below 100 MB).

use sluice_plugin::{BatchBuilder, BatchReader, Config, Result, Transform};

struct Huge;

impl Transform for Huge {
    fn new(_: &Config) -> Result<Self> {
        Ok(Huge)
    }

    fn process(&mut self, _: BatchReader<'_>, output: &mut BatchBuilder) -> Result<()> {
        let value = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            output.push_parts(None, Some(&value), [], 0, sluice_plugin::PARTITION_UNSET, 0);
        }
        Ok(())
    }
}

sluice_plugin::export_transform!(Huge);
