//! {{name}}: a Sluice source connector. It brings records from outside into a topic.
//!
//! This one counts: records `PREFIX0`, `PREFIX1`, ... up to the `count` setting (default
//! 1000), with `prefix` from the connector's `[settings]`. Its checkpoint is the next number,
//! so after a restart it goes on where it stopped; opened at a checkpoint and polled for `n`
//! records, it returns the same `n` records it returned the first time — what the host's
//! exactly-once delivery needs (docs/connectors.md). A real source reads a file of a granted
//! directory (`[grants] dirs`), or an endpoint, from the position its checkpoint names.

use sluice_plugin::{BatchBuilder, Config, Error, PARTITION_UNSET, Result, Source};

struct Plugin {
    prefix: String,
    count: u64,
    next: u64,
}

impl Source for Plugin {
    fn open(config: &Config, checkpoint: Option<&[u8]>) -> Result<Self> {
        let next = match checkpoint {
            None => 0,
            Some(c) => u64::from_le_bytes(
                c.try_into()
                    .map_err(|_| Error::msg("not a checkpoint of this source"))?,
            ),
        };
        Ok(Plugin {
            prefix: config.get("prefix").unwrap_or_default(),
            count: config.parse_or("count", 1000)?,
            next,
        })
    }

    fn poll(&mut self, max_records: u32, output: &mut BatchBuilder) -> Result<()> {
        let end = self.count.min(self.next + u64::from(max_records));
        for n in self.next..end {
            let value = format!("{}{n}", self.prefix);
            output.push_parts(None, Some(value.as_bytes()), [], 0, PARTITION_UNSET, 0);
        }
        self.next = end;
        Ok(())
    }

    fn checkpoint(&self) -> Result<Vec<u8>> {
        Ok(self.next.to_le_bytes().to_vec())
    }
}

sluice_plugin::export_source!(Plugin);
