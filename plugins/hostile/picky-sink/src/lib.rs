//! TEST FIXTURE ONLY: a sink that appends each record's value as a line to the file `path`
//! (its directory granted read-write), except records whose value contains `poison`, which it
//! refuses for good (`Error::permanent`): they must end in the dead-letter topic.

use std::fs::{File, OpenOptions};
use std::io::Write;

use sluice_plugin::{BatchReader, Config, Error, Result, Sink};

struct Picky {
    file: File,
    pending: Vec<u8>,
}

impl Sink for Picky {
    fn open(config: &Config) -> Result<Self> {
        let path = config.require("path")?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::msg(format!("cannot open {path}: {e}")))?;
        Ok(Picky {
            file,
            pending: Vec::new(),
        })
    }

    fn write(&mut self, records: BatchReader<'_>) -> Result<()> {
        let mut lines = Vec::new();
        for r in records {
            let r = r.map_err(|e| Error::msg(format!("host sent a {e}")))?;
            let value = r.value_bytes();
            if value.windows(6).any(|w| w == b"poison") {
                return Err(Error::permanent(format!(
                    "refused the record at offset {}: it is poison",
                    r.offset
                )));
            }
            lines.extend_from_slice(value);
            lines.push(b'\n');
        }
        self.pending.extend_from_slice(&lines);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::msg(format!("cannot write: {e}")))?;
        self.pending.clear();
        Ok(())
    }
}

sluice_plugin::export_sink!(Picky);
