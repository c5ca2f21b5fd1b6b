//! TEST FIXTURE ONLY. A transform that never returns: the host must stop it by its epoch
//! deadline (`PluginError::Timeout`).

use sluice_plugin::{BatchBuilder, BatchReader, Config, Result, Transform};

struct Spin;

impl Transform for Spin {
    fn new(_: &Config) -> Result<Self> {
        Ok(Spin)
    }

    fn process(&mut self, input: BatchReader<'_>, _: &mut BatchBuilder) -> Result<()> {
        let mut n: u64 = input.remaining() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

sluice_plugin::export_transform!(Spin);
