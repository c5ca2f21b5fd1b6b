//! Benchmark fixture: a [`Map`] that returns each record unchanged. Measures the cost of the
//! plugin boundary and of the SDK's decode/encode (`host/plugin/examples/boundary_bench.rs`).

use sluice_plugin::{Config, Map, Record, Result};

struct Identity;

impl Map for Identity {
    fn new(_: &Config) -> Result<Self> {
        Ok(Identity)
    }

    fn map(&mut self, record: Record) -> Result<Record> {
        Ok(record)
    }
}

sluice_plugin::export_map!(Identity);
