//! {{name}}: a Sluice transform.
//!
//! This one is a map (one record in, one out). The SDK has other shapes: `Filter`
//! (keep/drop), `FlatMap` (one in, many out), `Aggregate` (with a state store), `Transform`
//! (a whole batch). Configuration comes from `--config key=value` at attach time.

use sluice_plugin::{Config, Map, Record, Result};

struct Plugin {
    prefix: String,
}

impl Map for Plugin {
    /// Called once per instance: read and check the configuration here, so that a bad one
    /// is reported when the pipeline is created.
    fn new(config: &Config) -> Result<Self> {
        Ok(Plugin {
            prefix: config.get("prefix").unwrap_or_default(),
        })
    }

    fn map(&mut self, mut record: Record) -> Result<Record> {
        if let Some(value) = record.value.as_mut() {
            value.splice(0..0, self.prefix.bytes());
        }
        Ok(record)
    }
}

sluice_plugin::export_map!(Plugin);
