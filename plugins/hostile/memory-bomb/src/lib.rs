//! TEST FIXTURE ONLY. A transform that allocates without end: the host must stop it at its
//! memory limit (`PluginError::MemoryLimit`).

use sluice_plugin::{BatchBuilder, BatchReader, Config, Result, Transform};

struct Bomb(Vec<Vec<u8>>);

impl Transform for Bomb {
    fn new(_: &Config) -> Result<Self> {
        Ok(Bomb(Vec::new()))
    }

    fn process(&mut self, _: BatchReader<'_>, _: &mut BatchBuilder) -> Result<()> {
        loop {
            // Touch the pages so nothing can be optimised away.
            self.0.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

sluice_plugin::export_transform!(Bomb);
