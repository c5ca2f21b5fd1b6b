//! Source connector: tails a text file, one record per complete line (the line without its
//! `\n` or `\r\n` as the value), and resumes by byte offset.
//!
//! Settings: `path` (the file; its directory must be granted, read-only is enough), `key`
//! (default none: the key of every record, e.g. the service whose log this is, so that a
//! keyed topic keeps one file's lines in one partition, in order),
//! `rotated_suffix` (default `.1`: where a rotated file is found, `PATH.1` after
//! `mv PATH PATH.1` and a new `PATH`), `max_poll_bytes` (default 4 MiB read per poll).
//!
//! The checkpoint is the byte offset after the last line returned, with a fingerprint of the
//! file's first line. A different first line in `path` means the file was rotated: the rest
//! of the old file is read from `PATH<rotated_suffix>` (found by its fingerprint), then the
//! new file from its start. Opened at a checkpoint and polled for `n` records, it returns the
//! same `n` lines it returned the first time (the file is only ever appended to), which is
//! what the host's exactly-once replay needs. A partial last line waits until its `\n`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use sluice_plugin::{BatchBuilder, Config, Error, PARTITION_UNSET, Result, Source};

/// Bytes of the first line that identify a file.
const FINGERPRINT_BYTES: usize = 256;
/// Bytes read from the file at a time.
const READ_CHUNK: usize = 64 << 10;

struct FileSource {
    path: String,
    key: Option<Vec<u8>>,
    rotated: String,
    max_poll_bytes: usize,
    /// Where the next line starts, in the file identified by `fingerprint`.
    offset: u64,
    /// Hash of the file's first line; `None` until it has a complete one.
    fingerprint: Option<u64>,
}

/// FNV-1a, enough to tell files apart.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fingerprint of the file at `path`: `Ok(None)` while it has no complete first line
/// (or does not exist).
fn fingerprint(path: &str) -> Result<Option<u64>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::msg(format!("cannot open {path}: {e}"))),
    };
    fingerprint_of(&mut file, path)
}

/// The fingerprint of an open file, read from its start.
fn fingerprint_of(file: &mut File, path: &str) -> Result<Option<u64>> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::msg(format!("cannot seek in {path}: {e}")))?;
    let mut head = vec![0u8; FINGERPRINT_BYTES];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(Error::msg(format!("cannot read {path}: {e}"))),
        }
    }
    let head = &head[..got];
    Ok(match head.iter().position(|b| *b == b'\n') {
        Some(end) => Some(hash(&head[..end])),
        // A first line longer than the prefix: the prefix identifies it.
        None if got == FINGERPRINT_BYTES => Some(hash(head)),
        None => None,
    })
}

fn encode(offset: u64, fingerprint: Option<u64>) -> Vec<u8> {
    let mut out = offset.to_le_bytes().to_vec();
    if let Some(f) = fingerprint {
        out.extend_from_slice(&f.to_le_bytes());
    }
    out
}

fn decode(checkpoint: &[u8]) -> Result<(u64, Option<u64>)> {
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    match checkpoint.len() {
        8 => Ok((word(checkpoint), None)),
        16 => Ok((word(&checkpoint[..8]), Some(word(&checkpoint[8..])))),
        n => Err(Error::msg(format!(
            "not a file source checkpoint ({n} bytes; expected 8 or 16)"
        ))),
    }
}

impl FileSource {
    /// The file holding the position: `path`, or the rotated file when `path` is a new one.
    /// `None`: the position's file is gone (rotated away twice), or `path` is not there yet.
    fn current_file(&self) -> Result<Option<(String, bool)>> {
        let Some(mine) = self.fingerprint else {
            return Ok(Some((self.path.clone(), false)));
        };
        if fingerprint(&self.path)? == Some(mine) {
            return Ok(Some((self.path.clone(), false)));
        }
        if fingerprint(&self.rotated)? == Some(mine) {
            return Ok(Some((self.rotated.clone(), true)));
        }
        Ok(None)
    }

    /// Reads complete lines from `file` at `self.offset` into `output`, at most `max`.
    fn read_lines(&mut self, file: &str, max: u32, output: &mut BatchBuilder) -> Result<u32> {
        let mut f = match File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::msg(format!("cannot open {file}: {e}"))),
        };
        // The file opened must be the one the position is in: `file` may have been rotated
        // (and a new one created under its name) since `current_file` looked, and reading the
        // new file at the old file's offset would cut a line in two. The next poll sees the
        // rotation.
        if self.fingerprint.is_some() && fingerprint_of(&mut f, file)? != self.fingerprint {
            return Ok(0);
        }
        let len = f
            .metadata()
            .map_err(|e| Error::msg(format!("cannot stat {file}: {e}")))?
            .len();
        if len <= self.offset {
            return Ok(0);
        }
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| Error::msg(format!("cannot seek in {file}: {e}")))?;
        // Read in chunks until `max` lines are complete (or `max_poll_bytes`): a poll of a
        // few lines does not read megabytes.
        let limit = ((len - self.offset) as usize).min(self.max_poll_bytes);
        let mut buf: Vec<u8> = Vec::with_capacity(limit.min(READ_CHUNK));
        let mut count = 0;
        let mut start = 0;
        let mut scanned = 0;
        loop {
            while count < max {
                let Some(nl) = buf[scanned..].iter().position(|b| *b == b'\n') else {
                    scanned = buf.len();
                    break;
                };
                let end = scanned + nl;
                let mut line = &buf[start..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                output.push_parts(self.key.as_deref(), Some(line), [], 0, PARTITION_UNSET, 0);
                start = end + 1;
                scanned = start;
                count += 1;
            }
            if count >= max || buf.len() >= limit {
                break;
            }
            let want = (limit - buf.len()).min(READ_CHUNK);
            let at = buf.len();
            buf.resize(at + want, 0);
            let n = f
                .read(&mut buf[at..])
                .map_err(|e| Error::msg(format!("cannot read {file}: {e}")))?;
            buf.truncate(at + n);
            if n == 0 {
                break;
            }
        }
        if count == 0 && start == 0 && buf.len() >= self.max_poll_bytes {
            return Err(Error::msg(format!(
                "{file} has a line longer than max_poll_bytes ({}) at byte {}",
                self.max_poll_bytes, self.offset
            )));
        }
        self.offset += start as u64;
        Ok(count)
    }
}

impl Source for FileSource {
    fn open(config: &Config, checkpoint: Option<&[u8]>) -> Result<Self> {
        let path = config.require("path")?;
        let suffix = config.get("rotated_suffix").unwrap_or_else(|| ".1".into());
        let (offset, fingerprint) = match checkpoint {
            Some(c) => decode(c)?,
            None => (0, None),
        };
        let source = FileSource {
            rotated: format!("{path}{suffix}"),
            path,
            key: config.get("key").map(String::into_bytes),
            max_poll_bytes: config.parse_or("max_poll_bytes", 4 << 20)?,
            offset,
            fingerprint,
        };
        // The directory must be reachable (granted): else every poll would find no file and
        // the connector would wait for ever without saying why.
        let dir = std::path::Path::new(&source.path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if let Err(e) = std::fs::read_dir(dir) {
            return Err(Error::msg(format!(
                "cannot read the directory {} of {}: {e} (is it granted to the connector?)",
                dir.display(),
                source.path
            )));
        }
        if source.current_file()?.is_none() {
            return Err(Error::msg(format!(
                "the file this source was reading is gone: neither {} nor {} starts with the \
                 line it had (rotated more than once while the connector was stopped?)",
                source.path, source.rotated
            )));
        }
        Ok(source)
    }

    fn poll(&mut self, max_records: u32, output: &mut BatchBuilder) -> Result<()> {
        if self.fingerprint.is_none() {
            self.fingerprint = fingerprint(&self.path)?;
            if self.fingerprint.is_none() {
                return Ok(()); // no complete line yet
            }
        }
        let Some((file, rotated)) = self.current_file()? else {
            return Err(Error::msg(format!(
                "{} was rotated again before this source finished the previous file",
                self.path
            )));
        };
        let read = self.read_lines(&file, max_records, output)?;
        if read == 0 && rotated {
            // The old file is drained: the new one from its start. A poll never spans the two,
            // so a replay from any checkpoint reads the same lines.
            self.offset = 0;
            self.fingerprint = fingerprint(&self.path)?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Vec<u8>> {
        Ok(encode(self.offset, self.fingerprint))
    }
}

sluice_plugin::export_source!(FileSource);
