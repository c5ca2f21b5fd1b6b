//! Built-in flat-map: one output record per line of the input value.
//!
//! Lines end at `\n`; a `\r` before it is dropped too. Each output record keeps the input's
//! key, headers and timestamp. Config:
//! - `skip_empty` (bool, default `true`): drop empty lines (a value ending in a newline does
//!   not produce a trailing empty record either way).
//!
//! A tombstone (no value) produces nothing.

use sluice_plugin::{Config, FlatMap, Record, Result};

struct SplitLines {
    skip_empty: bool,
}

impl FlatMap for SplitLines {
    fn new(config: &Config) -> Result<Self> {
        Ok(SplitLines {
            skip_empty: config.parse_or("skip_empty", true)?,
        })
    }

    fn flat_map(&mut self, record: Record, out: &mut Vec<Record>) -> Result<()> {
        let Some(value) = record.value.as_deref() else {
            return Ok(());
        };
        let mut lines: Vec<&[u8]> = value.split(|b| *b == b'\n').collect();
        if value.ends_with(b"\n") {
            lines.pop();
        }
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if self.skip_empty && line.is_empty() {
                continue;
            }
            out.push(Record {
                key: record.key.clone(),
                value: Some(line.to_vec()),
                headers: record.headers.clone(),
                timestamp: record.timestamp,
                partition: record.partition,
                offset: record.offset,
            });
        }
        Ok(())
    }
}

sluice_plugin::export_flat_map!(SplitLines);
