//! Sink connector: appends each record to a file as one line made from a template, exactly
//! once across restarts.
//!
//! Settings: `path` (the file; its directory must be granted read-write), `format` (default
//! `{value}`; also `{key}`, `{partition}`, `{offset}`, `{timestamp}`, `{topic}`; a missing
//! key or value is empty, bytes that are not UTF-8 are replaced).
//!
//! Each flush writes the buffered lines, syncs the file, and then replaces the sidecar
//! `PATH.sluice-sink` (written to a temporary name, synced, renamed) holding the file's
//! length and the last offset written per (topic, partition). Opening cuts the file back to
//! the recorded length, dropping whatever a crash left after the last flush, and skips
//! records at or below the recorded offsets, which the host sends again when their commit
//! was lost. So every record is in the file once, whatever the crash.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;

use sluice_plugin::{BatchReader, Config, Error, RecordRef, Result, Sink};

/// The header naming a record's topic, when the host reads several.
const TOPIC_HEADER: &str = "sluice.topic";

struct FileSink {
    path: String,
    sidecar: String,
    format: Vec<Part>,
    file: File,
    /// The file's length after the last flush.
    length: u64,
    /// The last offset written per (topic, partition), flushed or not.
    written: Written,
    pending: Vec<u8>,
}

enum Part {
    Text(String),
    Value,
    Key,
    Partition,
    Offset,
    Timestamp,
    Topic,
}

fn parse_format(format: &str) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| Error::msg(format!("format {format:?}: a `{{` is not closed")))?;
        let name = &rest[open + 1..open + close];
        parts.push(match name {
            "value" => Part::Value,
            "key" => Part::Key,
            "partition" => Part::Partition,
            "offset" => Part::Offset,
            "timestamp" => Part::Timestamp,
            "topic" => Part::Topic,
            other => {
                return Err(Error::msg(format!(
                    "format {format:?}: unknown field {{{other}}} (known: value, key, \
                     partition, offset, timestamp, topic)"
                )));
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn topic_of(r: &RecordRef<'_>) -> String {
    r.headers()
        .find(|(k, _)| *k == TOPIC_HEADER)
        .and_then(|(_, v)| v)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_default()
}

/// The last offset written per (topic, partition).
type Written = BTreeMap<(String, u32), u64>;

/// The sidecar: the length line, then one `partition offset topic` line per partition.
fn read_sidecar(path: &str) -> Result<Option<(u64, Written)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::msg(format!("cannot read {path}: {e}"))),
    };
    let bad = || {
        Error::msg(format!(
            "{path} is not a file sink sidecar; remove it to start over"
        ))
    };
    let mut lines = text.lines();
    let length: u64 = lines.next().and_then(|l| l.parse().ok()).ok_or_else(bad)?;
    let mut written = BTreeMap::new();
    for line in lines {
        let mut f = line.splitn(3, ' ');
        let partition: u32 = f.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let offset: u64 = f.next().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
        let topic = f.next().unwrap_or("").to_owned();
        written.insert((topic, partition), offset);
    }
    Ok(Some((length, written)))
}

impl FileSink {
    fn line(&self, r: &RecordRef<'_>, out: &mut Vec<u8>) {
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        for part in &self.format {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Value => out.extend_from_slice(text(r.value).as_bytes()),
                Part::Key => out.extend_from_slice(text(r.key).as_bytes()),
                Part::Partition => out.extend_from_slice(r.partition.to_string().as_bytes()),
                Part::Offset => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Part::Timestamp => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
                Part::Topic => out.extend_from_slice(topic_of(r).as_bytes()),
            }
        }
        out.push(b'\n');
    }

    fn write_sidecar(&self) -> Result<()> {
        let mut text = format!("{}\n", self.length);
        for ((topic, partition), offset) in &self.written {
            text.push_str(&format!("{partition} {offset} {topic}\n"));
        }
        let tmp = format!("{}.tmp", self.sidecar);
        let fail = |what: &str, e: std::io::Error| Error::msg(format!("{what} {tmp}: {e}"));
        let mut f = File::create(&tmp).map_err(|e| fail("cannot create", e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| fail("cannot write", e))?;
        f.sync_all().map_err(|e| fail("cannot sync", e))?;
        std::fs::rename(&tmp, &self.sidecar)
            .map_err(|e| Error::msg(format!("cannot rename {tmp} to {}: {e}", self.sidecar)))
    }
}

impl Sink for FileSink {
    fn open(config: &Config) -> Result<Self> {
        let path = config.require("path")?;
        let format = parse_format(&config.get("format").unwrap_or_else(|| "{value}".into()))?;
        let sidecar = format!("{path}.sluice-sink");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::msg(format!("cannot open {path} for appending: {e}")))?;
        let on_disk = file
            .metadata()
            .map_err(|e| Error::msg(format!("cannot stat {path}: {e}")))?
            .len();
        let (length, written) = match read_sidecar(&sidecar)? {
            Some((length, written)) if length <= on_disk => {
                // What a crash left after the last flush goes; it is sent again.
                file.set_len(length)
                    .map_err(|e| Error::msg(format!("cannot cut {path} back: {e}")))?;
                (length, written)
            }
            Some((length, _)) => {
                return Err(Error::msg(format!(
                    "{path} is shorter ({on_disk} bytes) than this sink last flushed ({length}): \
                     it was changed by someone else; move it away (and {sidecar}) to start over"
                )));
            }
            // A new sink: it appends to whatever the file holds.
            None => (on_disk, BTreeMap::new()),
        };
        Ok(FileSink {
            path,
            sidecar,
            format,
            file,
            length,
            written,
            pending: Vec::new(),
        })
    }

    fn write(&mut self, records: BatchReader<'_>) -> Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        for r in records {
            let r = r.map_err(|e| Error::msg(format!("host sent a {e}")))?;
            let at = (topic_of(&r), r.partition);
            if self.written.get(&at).is_some_and(|last| r.offset <= *last) {
                continue; // written before a restart; its commit was lost
            }
            self.line(&r, &mut pending);
            self.written.insert(at, r.offset);
        }
        self.pending = pending;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(|e| Error::msg(format!("cannot write {}: {e}", self.path)))?;
            self.length += self.pending.len() as u64;
            self.pending.clear();
        }
        self.file
            .sync_all()
            .map_err(|e| Error::msg(format!("cannot sync {}: {e}", self.path)))?;
        self.write_sidecar()
    }
}

sluice_plugin::export_sink!(FileSink);
