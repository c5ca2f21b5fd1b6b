//! TEST FIXTURE ONLY. A transform that panics (a wasm trap, since plugins build with
//! `panic = "abort"`): the host must report `PluginError::Trap`.

use sluice_plugin::{BatchBuilder, BatchReader, Config, Result, Transform};

struct Trap;

impl Transform for Trap {
    fn new(_: &Config) -> Result<Self> {
        Ok(Trap)
    }

    fn process(&mut self, input: BatchReader<'_>, _: &mut BatchBuilder) -> Result<()> {
        panic!("hostile trap fixture: {} records in", input.remaining());
    }
}

sluice_plugin::export_transform!(Trap);
