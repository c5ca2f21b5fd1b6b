//! Source connector: synthetic records of a set shape, for demos and benchmarks. Record `n`
//! (from 0) has the value `PREFIX<n>` padded with `x` to `size` bytes (when longer than
//! that), the key `key-<n mod keys>` (no key when `keys` is 0), and every record up to
//! `count` is made (default: no end). The rate is the host's (`max_records_per_second` in the
//! connector's config). The checkpoint is the next `n`, so a replay from it makes the same
//! records.
//!
//! Settings: `count`, `size` (default 100), `keys` (default 0), `prefix` (default `record-`).

use sluice_plugin::{BatchBuilder, Config, Error, PARTITION_UNSET, Result, Source};

struct Generator {
    next: u64,
    count: u64,
    size: usize,
    keys: u64,
    prefix: String,
}

impl Source for Generator {
    fn open(config: &Config, checkpoint: Option<&[u8]>) -> Result<Self> {
        let next = match checkpoint {
            None => 0,
            Some(c) => u64::from_le_bytes(
                c.try_into()
                    .map_err(|_| Error::msg("not a generator checkpoint (8 bytes expected)"))?,
            ),
        };
        let size: usize = config.parse_or("size", 100)?;
        if size > 1 << 20 {
            return Err(Error::msg(format!("size {size}: at most 1 MiB per record")));
        }
        Ok(Generator {
            next,
            count: config.parse_or("count", u64::MAX)?,
            size,
            keys: config.parse_or("keys", 0)?,
            prefix: config.get("prefix").unwrap_or_else(|| "record-".into()),
        })
    }

    fn poll(&mut self, max_records: u32, output: &mut BatchBuilder) -> Result<()> {
        let end = self.count.min(self.next.saturating_add(u64::from(max_records)));
        let mut value = Vec::with_capacity(self.size);
        for n in self.next..end {
            value.clear();
            value.extend_from_slice(format!("{}{n}", self.prefix).as_bytes());
            if value.len() < self.size {
                value.resize(self.size, b'x');
            }
            let key = (self.keys > 0).then(|| format!("key-{}", n % self.keys));
            output.push_parts(
                key.as_deref().map(str::as_bytes),
                Some(&value),
                [],
                0,
                PARTITION_UNSET,
                0,
            );
        }
        self.next = end;
        Ok(())
    }

    fn checkpoint(&self) -> Result<Vec<u8>> {
        Ok(self.next.to_le_bytes().to_vec())
    }
}

sluice_plugin::export_source!(Generator);
