//! {{name}}: a Sluice sink connector. It takes records from topics out.
//!
//! This one appends each record's value as a line to the file named by the `path` setting,
//! whose directory the connector must be granted read-write (`[grants] dirs = ["DIR:rw"]`).
//! The host commits the topic offsets only after `flush` succeeds, so after a failure the
//! records since the last flush come again (at least once); each record carries its
//! partition and offset, for a sink that wants to skip what it already wrote (see the
//! built-in file-sink for exactly once).

use std::fs::{File, OpenOptions};
use std::io::Write;

use sluice_plugin::{BatchReader, Config, Error, Result, Sink};

struct Plugin {
    path: String,
    file: File,
}

impl Sink for Plugin {
    fn open(config: &Config) -> Result<Self> {
        let path = config.require("path")?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::msg(format!("cannot open {path}: {e} (is its directory granted read-write?)")))?;
        Ok(Plugin { path, file })
    }

    fn write(&mut self, records: BatchReader<'_>) -> Result<()> {
        for r in records {
            let r = r.map_err(|e| Error::msg(format!("host sent a {e}")))?;
            let mut line = r.value_bytes().to_vec();
            line.push(b'\n');
            self.file
                .write_all(&line)
                .map_err(|e| Error::msg(format!("cannot write {}: {e}", self.path)))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::msg(format!("cannot sync {}: {e}", self.path)))
    }
}

sluice_plugin::export_sink!(Plugin);
