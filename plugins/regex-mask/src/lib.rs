//! Built-in map: replaces every match of a regular expression in the record value.
//!
//! Config:
//! - `pattern` (required): a regular expression (Rust `regex` syntax), matched against the
//!   value's bytes (so non-UTF-8 values are masked too).
//! - `replacement` (default `****`): the text put in place of each match; `$1`, `${name}`
//!   refer to capture groups, `$$` is a literal `$`.
//!
//! Example, hiding card numbers: `pattern=\b(?:\d[ -]?){12}(\d{4})\b`,
//! `replacement=**** **** **** $1`.

use regex::bytes::Regex;
use sluice_plugin::{Config, Error, Map, Record, Result};

struct RegexMask {
    pattern: Regex,
    replacement: Vec<u8>,
}

impl Map for RegexMask {
    fn new(config: &Config) -> Result<Self> {
        let pattern = config.require("pattern")?;
        let pattern = Regex::new(&pattern)
            .map_err(|e| Error::msg(format!("config `pattern` is not a valid regex: {e}")))?;
        let replacement = config
            .get("replacement")
            .unwrap_or_else(|| "****".to_owned())
            .into_bytes();
        Ok(RegexMask {
            pattern,
            replacement,
        })
    }

    fn map(&mut self, mut record: Record) -> Result<Record> {
        if let Some(v) = record.value.as_mut() {
            let masked = self.pattern.replace_all(v, self.replacement.as_slice());
            if let std::borrow::Cow::Owned(m) = masked {
                *v = m;
            }
        }
        Ok(record)
    }
}

sluice_plugin::export_map!(RegexMask);
