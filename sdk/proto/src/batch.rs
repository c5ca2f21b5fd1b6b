//! The record batch: the unit that producers send, the broker stores and consumers receive.
//!
//! All integers in the header are big-endian. Layout (byte offsets):
//!
//! ```text
//!  0  base_offset      u64   set by the broker when it appends the batch
//!  8  batch_len        u32   length of the whole batch in bytes, header included
//! 12  leader_epoch     u32   set by the broker: the epoch of the leader that appended it
//! 16  magic            u8    format version, currently 1
//! 17  crc              u32   CRC-32C (Castagnoli) of bytes [21, batch_len)
//! 21  attributes       u16   bits 0-2: compression (0 none, 1 lz4, 2 zstd); others zero
//! 23  record_count     u32   number of records, at least 1
//! 27  first_timestamp  i64   ms since the Unix epoch, of the first record
//! 35  max_timestamp    i64   largest record timestamp in the batch
//! 43  producer_id      i64   -1 when the producer is not idempotent
//! 51  producer_epoch   i16
//! 53  base_sequence    i32   -1 when the producer is not idempotent
//! 57  records          (compressed as a whole when attributes say so)
//! ```
//!
//! The broker rewrites only `base_offset` and `leader_epoch`, which the CRC does not cover, so a
//! batch is stored and served exactly as the producer encoded it.
//!
//! Each record (varints are LEB128, signed ones zig-zag; a nullable byte string is a varint of
//! `len + 1` with 0 meaning null):
//!
//! ```text
//! record_len varint | timestamp_delta zigzag | offset_delta varint | key nullable
//! | value nullable | header_count varint | headers: (key string, value nullable)*
//! ```
//!
//! Every count and length read from a batch is checked against the bytes actually present
//! before anything is sized by it: a record takes at least [`MIN_RECORD_LEN`] bytes, so
//! `record_count` must fit the records section; a compressed section is decompressed only up
//! to a caller-given limit ([`validate_with_limit`], [`decode_records_with_limit`]).

use bytes::Bytes;

use crate::error::ProtoError;
use crate::varint;

pub const HEADER_LEN: usize = 57;
pub const MAGIC: u8 = 1;
/// The limit [`validate`] and [`decode_records`] put on a decompressed records section: 64 MiB,
/// eight times the broker's default largest batch. It keeps a decompression bomb from taking
/// more than that; callers that know a tighter bound (the broker: its largest batch) pass it to
/// [`validate_with_limit`] and [`decode_records_with_limit`] instead.
pub const MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// Fewest bytes one record takes in a records section: a one-byte length varint, then five
/// one-byte fields (timestamp delta, offset delta, null key, null value, zero header count).
/// A `record_count` larger than the section length divided by this is refused before any
/// memory is sized by it.
pub const MIN_RECORD_LEN: usize = 6;

/// Fewest bytes one record header takes: an empty key (one-byte length) and a null value.
const MIN_HEADER_LEN: usize = 2;

/// The most an lz4 block can expand: a match length grows by at most 255 per input byte.
const LZ4_MAX_RATIO: usize = 255;

const OFF_BASE_OFFSET: usize = 0;
const OFF_BATCH_LEN: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const CRC_START: usize = 21;

/// Batch-level compression of the records section.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn code(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u16) -> Result<Self, ProtoError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            _ => Err(ProtoError::Malformed("unknown compression code")),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}; expected none, lz4 or zstd"
            )),
        }
    }
}

/// A record header: a string key and an optional byte value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as a producer builds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// A record read back out of a stored batch, with the offset the broker gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Accumulates records and encodes them into one batch.
///
/// Each record is encoded once, straight into the batch's buffer, behind room left for the
/// header; an uncompressed batch is that buffer with its header written in place (no copy of
/// the records section), a compressed one the header and the compressed section.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    /// `HEADER_LEN` bytes for the header, then the records section.
    buf: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            buf: vec![0; HEADER_LEN],
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Size of the batch so far, before compression.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Encoded size a record would add (before compression), for batching decisions.
    pub fn record_size_estimate(record: &Record) -> usize {
        let headers: usize = record
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 4)
            .sum();
        16 + record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len())
            + headers
    }

    pub fn push(&mut self, record: &Record) {
        if self.count == 0 {
            self.first_timestamp = record.timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        let delta = record.timestamp.wrapping_sub(self.first_timestamp);
        let index = u64::from(self.count);
        // The body's length comes first, so it is worked out before the body is written.
        let headers: usize = record
            .headers
            .iter()
            .map(|h| {
                varint::len_u64(h.key.len() as u64) + h.key.len() + nullable_len(h.value.as_deref())
            })
            .sum();
        let body_len = varint::len_i64(delta)
            + varint::len_u64(index)
            + nullable_len(record.key.as_deref())
            + nullable_len(record.value.as_deref())
            + varint::len_u64(record.headers.len() as u64)
            + headers;
        let out = &mut self.buf;
        out.reserve(varint::len_u64(body_len as u64) + body_len);
        varint::put_u64(out, body_len as u64);
        let start = out.len();
        varint::put_i64(out, delta);
        varint::put_u64(out, index);
        put_nullable(out, record.key.as_deref());
        put_nullable(out, record.value.as_deref());
        varint::put_u64(out, record.headers.len() as u64);
        for h in &record.headers {
            varint::put_u64(out, h.key.len() as u64);
            out.extend_from_slice(h.key.as_bytes());
            put_nullable(out, h.value.as_deref());
        }
        debug_assert_eq!(out.len() - start, body_len, "record body length worked out");
        self.count += 1;
    }

    /// Encodes the batch. `producer_id`/`base_sequence` of -1 mean "not idempotent".
    pub fn finish(
        self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Result<Vec<u8>, ProtoError> {
        if self.count == 0 {
            return Err(ProtoError::Malformed("a batch needs at least one record"));
        }
        let mut out = match self.compression {
            Compression::None => self.buf,
            compression => {
                let payload = compress(compression, &self.buf[HEADER_LEN..])?;
                let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
                out.resize(HEADER_LEN, 0);
                out.extend_from_slice(&payload);
                out
            }
        };
        let batch_len = u32::try_from(out.len())
            .map_err(|_| ProtoError::Malformed("batch longer than 4 GiB"))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&0u64.to_be_bytes());
        header.extend_from_slice(&batch_len.to_be_bytes());
        header.extend_from_slice(&0u32.to_be_bytes());
        header.push(MAGIC);
        header.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
        header.extend_from_slice(&self.compression.code().to_be_bytes());
        header.extend_from_slice(&self.count.to_be_bytes());
        header.extend_from_slice(&self.first_timestamp.to_be_bytes());
        header.extend_from_slice(&self.max_timestamp.to_be_bytes());
        header.extend_from_slice(&producer_id.to_be_bytes());
        header.extend_from_slice(&producer_epoch.to_be_bytes());
        header.extend_from_slice(&base_sequence.to_be_bytes());
        debug_assert_eq!(header.len(), HEADER_LEN);
        out[..HEADER_LEN].copy_from_slice(&header);
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

/// Bytes [`put_nullable`] writes for `v`.
fn nullable_len(v: Option<&[u8]>) -> usize {
    v.map_or(1, |b| varint::len_u64(b.len() as u64 + 1) + b.len())
}

fn put_nullable(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => varint::put_u64(out, 0),
        Some(b) => {
            varint::put_u64(out, b.len() as u64 + 1);
            out.extend_from_slice(b);
        }
    }
}

fn get_nullable<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, ProtoError> {
    let n = varint::get_u64(buf)?;
    if n == 0 {
        return Ok(None);
    }
    take(buf, n - 1, "byte string runs past the end of the record").map(Some)
}

/// Splits `len` bytes (a length read from the input) off the front of `buf`, checked against
/// what is there.
fn take<'a>(buf: &mut &'a [u8], len: u64, past_end: &'static str) -> Result<&'a [u8], ProtoError> {
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= buf.len())
        .ok_or(ProtoError::Malformed(past_end))?;
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn compress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, ProtoError> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => Ok(lz4_flex::block::compress_prepend_size(data)),
        Compression::Zstd => {
            zstd::bulk::compress(data, 3).map_err(|e| ProtoError::Compression(e.to_string()))
        }
    }
}

fn too_large(max_decompressed: usize) -> ProtoError {
    ProtoError::Compression(format!(
        "records section decompresses to more than the limit of {max_decompressed} bytes"
    ))
}

/// An lz4 records section: a little-endian u32 of the decompressed size, then one lz4 block.
fn decompress_lz4(data: &[u8], max_decompressed: usize) -> Result<Vec<u8>, ProtoError> {
    let Some((prefix, block)) = data.split_first_chunk::<4>() else {
        return Err(ProtoError::Malformed(
            "lz4 payload shorter than its size prefix",
        ));
    };
    // The block format needs its whole output buffer up front: allocate only a size that the
    // limit allows and that the input could really expand to.
    let size = u32::from_le_bytes(*prefix) as usize;
    if size > max_decompressed {
        return Err(too_large(max_decompressed));
    }
    if size > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(ProtoError::Malformed(
            "lz4 size prefix larger than the block can expand to",
        ));
    }
    lz4_flex::block::decompress(block, size).map_err(|e| ProtoError::Compression(e.to_string()))
}

/// A zstd records section: one or more zstd frames. Refused as soon as the output passes
/// `max_decompressed` bytes, into a buffer that grows with the output (never sized by the
/// limit up front).
fn decompress_zstd(data: &[u8], max_decompressed: usize) -> Result<Vec<u8>, ProtoError> {
    use std::io::Read;
    let codec = |e: std::io::Error| ProtoError::Compression(e.to_string());
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(codec)?;
    // zstd allocates the window a frame asks for (in C, outside Rust's allocator): no window
    // larger than the output may be.
    decoder
        .window_log_max(zstd_window_log_max(max_decompressed))
        .map_err(codec)?;
    let mut out = Vec::new();
    decoder
        .take((max_decompressed as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(codec)?;
    if out.len() > max_decompressed {
        return Err(too_large(max_decompressed));
    }
    Ok(out)
}

/// The largest zstd window (as a power of two) a frame may ask for when its output is limited
/// to `max_decompressed` bytes: the limit rounded up, within 2^20..=2^30 (at least 1 MiB, so
/// that ordinary encoder settings always pass whatever the limit).
fn zstd_window_log_max(max_decompressed: usize) -> u32 {
    let log = usize::BITS - max_decompressed.saturating_sub(1).leading_zeros();
    log.clamp(20, 30)
}

/// The parsed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_len: u32,
    pub leader_epoch: u32,
    pub crc: u32,
    pub compression: Compression,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("slice of 4"))
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("slice of 8"))
}

impl BatchHeader {
    /// Parses the header at the start of `bytes`. Checks the layout (magic, lengths, record
    /// count, compression code) but not the CRC: see [`BatchHeader::verify_crc`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() < HEADER_LEN {
            return Err(ProtoError::Malformed("batch shorter than its header"));
        }
        if bytes[OFF_MAGIC] != MAGIC {
            return Err(ProtoError::Malformed(
                "unknown batch format version (magic)",
            ));
        }
        let batch_len = be_u32(bytes, OFF_BATCH_LEN);
        if (batch_len as usize) < HEADER_LEN {
            return Err(ProtoError::Malformed(
                "batch length smaller than the header",
            ));
        }
        let attributes = u16::from_be_bytes([bytes[21], bytes[22]]);
        if attributes & !0x7 != 0 {
            return Err(ProtoError::Malformed("unknown batch attribute bits set"));
        }
        let record_count = be_u32(bytes, 23);
        if record_count == 0 {
            return Err(ProtoError::Malformed("batch with no records"));
        }
        // Every record's offset, and `next_offset`, must exist.
        let base_offset = be_u64(bytes, OFF_BASE_OFFSET);
        if base_offset.checked_add(u64::from(record_count)).is_none() {
            return Err(ProtoError::Malformed(
                "base offset plus record count passes the largest offset",
            ));
        }
        Ok(BatchHeader {
            base_offset,
            batch_len,
            leader_epoch: be_u32(bytes, OFF_LEADER_EPOCH),
            crc: be_u32(bytes, OFF_CRC),
            compression: Compression::from_code(attributes & 0x7)?,
            record_count,
            first_timestamp: be_u64(bytes, 27) as i64,
            max_timestamp: be_u64(bytes, 35) as i64,
            producer_id: be_u64(bytes, 43) as i64,
            producer_epoch: i16::from_be_bytes([bytes[51], bytes[52]]),
            base_sequence: be_u32(bytes, 53) as i32,
        })
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// Offset after the batch: where the next batch starts.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Checks the CRC-32C over `batch` (which must be exactly this batch's bytes).
    pub fn verify_crc(&self, batch: &[u8]) -> Result<(), ProtoError> {
        if batch.len() != self.batch_len as usize {
            return Err(ProtoError::Malformed(
                "batch length does not match its header",
            ));
        }
        let actual = crc32c::crc32c(&batch[CRC_START..]);
        if actual != self.crc {
            return Err(ProtoError::CrcMismatch {
                expected: self.crc,
                actual,
            });
        }
        Ok(())
    }
}

/// [`validate_with_limit`] with the default limit on decompression, [`MAX_DECOMPRESSED`].
pub fn validate(batch: &[u8]) -> Result<BatchHeader, ProtoError> {
    validate_with_limit(batch, MAX_DECOMPRESSED)
}

/// Parses and fully validates one batch that must span all of `batch`: header, CRC, and every
/// record (decompressing if needed, to at most `max_decompressed` bytes). This is what the
/// broker runs on produce. Records are walked, not collected: the only allocation is the
/// decompressed section.
pub fn validate_with_limit(
    batch: &[u8],
    max_decompressed: usize,
) -> Result<BatchHeader, ProtoError> {
    let header = BatchHeader::parse(batch)?;
    header.verify_crc(batch)?;
    let payload = &batch[HEADER_LEN..];
    let decompressed = decompressed_section(&header, payload, max_decompressed)?;
    for record in RecordWalk::new(&header, decompressed.as_deref().unwrap_or(payload))? {
        record?;
    }
    Ok(header)
}

/// Sets the broker-assigned fields of a batch in place. The CRC does not cover them.
pub fn assign_offset(batch: &mut [u8], base_offset: u64, leader_epoch: u32) {
    batch[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// [`decode_records_with_limit`] with the default limit on decompression, [`MAX_DECOMPRESSED`].
pub fn decode_records(
    header: &BatchHeader,
    batch: &Bytes,
) -> Result<Vec<StoredRecord>, ProtoError> {
    decode_records_with_limit(header, batch, MAX_DECOMPRESSED)
}

/// Decodes every record of one batch (`batch` is exactly the batch's bytes), decompressing
/// the records section to at most `max_decompressed` bytes. Keys, values and header values
/// share the section's buffer; nothing is copied but header keys.
pub fn decode_records_with_limit(
    header: &BatchHeader,
    batch: &Bytes,
    max_decompressed: usize,
) -> Result<Vec<StoredRecord>, ProtoError> {
    if batch.len() != header.batch_len as usize {
        return Err(ProtoError::Malformed(
            "batch length does not match its header",
        ));
    }
    let section = match decompressed_section(header, &batch[HEADER_LEN..], max_decompressed)? {
        Some(section) => Bytes::from(section),
        None => batch.slice(HEADER_LEN..),
    };
    let walk = RecordWalk::new(header, &section)?;
    // `RecordWalk::new` checked that the section can hold this many records.
    let mut out = Vec::with_capacity(header.record_count as usize);
    for record in walk {
        let r = record?;
        // The walk checked every header, so this is the exact count.
        let mut headers = Vec::with_capacity(r.headers.left);
        for h in r.headers {
            let (key, value) = h?;
            headers.push(Header {
                key: key.to_owned(),
                value: value.map(|v| section.slice_ref(v)),
            });
        }
        out.push(StoredRecord {
            offset: header.base_offset + r.offset_delta,
            timestamp: header.first_timestamp.wrapping_add(r.timestamp_delta),
            key: r.key.map(|k| section.slice_ref(k)),
            value: r.value.map(|v| section.slice_ref(v)),
            headers,
        });
    }
    Ok(out)
}

/// The records section decompressed, or `None` when the batch is not compressed (the section
/// is then the payload itself).
fn decompressed_section(
    header: &BatchHeader,
    payload: &[u8],
    max_decompressed: usize,
) -> Result<Option<Vec<u8>>, ProtoError> {
    // A count that no section within the limit could hold is refused before decompressing.
    if header.compression != Compression::None && !count_fits(header.record_count, max_decompressed)
    {
        return Err(ProtoError::Malformed(
            "record count larger than the decompression limit can hold",
        ));
    }
    match header.compression {
        Compression::None => Ok(None),
        Compression::Lz4 => decompress_lz4(payload, max_decompressed).map(Some),
        Compression::Zstd => decompress_zstd(payload, max_decompressed).map(Some),
    }
}

/// Whether `len` bytes can hold `record_count` records.
fn count_fits(record_count: u32, len: usize) -> bool {
    u64::from(record_count) * MIN_RECORD_LEN as u64 <= len as u64
}

/// One record where it lies in a records section: nothing copied or collected.
#[derive(Debug)]
struct RawRecord<'a> {
    timestamp_delta: i64,
    offset_delta: u64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: RawHeaders<'a>,
}

/// Walks the records of a section, checking each one fully (dense offset deltas, lengths,
/// UTF-8 header keys) and the count against the header, without allocating. The one record
/// parser, shared by [`validate_with_limit`] and [`decode_records_with_limit`].
#[derive(Debug)]
struct RecordWalk<'a> {
    rest: &'a [u8],
    record_count: u32,
    seen: u32,
    done: bool,
}

impl<'a> RecordWalk<'a> {
    /// Refuses a record count that the section is too short to hold.
    fn new(header: &BatchHeader, section: &'a [u8]) -> Result<Self, ProtoError> {
        if !count_fits(header.record_count, section.len()) {
            return Err(ProtoError::Malformed(
                "record count larger than the records section can hold",
            ));
        }
        Ok(RecordWalk {
            rest: section,
            record_count: header.record_count,
            seen: 0,
            done: false,
        })
    }

    fn read_record(&mut self) -> Result<RawRecord<'a>, ProtoError> {
        let len = varint::get_u64(&mut self.rest)?;
        let mut rec = take(&mut self.rest, len, "record runs past the end of the batch")?;
        let timestamp_delta = varint::get_i64(&mut rec)?;
        let offset_delta = varint::get_u64(&mut rec)?;
        if offset_delta != u64::from(self.seen) {
            return Err(ProtoError::Malformed("record offset deltas are not dense"));
        }
        let key = get_nullable(&mut rec)?;
        let value = get_nullable(&mut rec)?;
        let header_count = varint::get_u64(&mut rec)?;
        if header_count > (rec.len() / MIN_HEADER_LEN) as u64 {
            return Err(ProtoError::Malformed("header count larger than the record"));
        }
        let headers = RawHeaders {
            rest: rec,
            left: header_count as usize,
        };
        let mut check = headers.clone();
        for h in &mut check {
            h?;
        }
        if !check.rest.is_empty() {
            return Err(ProtoError::Malformed("trailing bytes inside a record"));
        }
        Ok(RawRecord {
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for RecordWalk<'a> {
    type Item = Result<RawRecord<'a>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = if self.rest.is_empty() {
            self.done = true;
            if self.seen == self.record_count {
                return None;
            }
            Err(ProtoError::Malformed(
                "fewer records than the header counts",
            ))
        } else if self.seen == self.record_count {
            Err(ProtoError::Malformed("more records than the header counts"))
        } else {
            self.read_record()
        };
        match &result {
            Ok(_) => self.seen += 1,
            Err(_) => self.done = true,
        }
        Some(result)
    }
}

/// A record's headers, still encoded: `(key, value)` pairs.
#[derive(Debug, Clone)]
struct RawHeaders<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for RawHeaders<'a> {
    type Item = Result<(&'a str, Option<&'a [u8]>), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(read_header(&mut self.rest))
    }
}

fn read_header<'a>(buf: &mut &'a [u8]) -> Result<(&'a str, Option<&'a [u8]>), ProtoError> {
    let klen = varint::get_u64(buf)?;
    let key = take(buf, klen, "header key runs past the end of the record")?;
    let key =
        std::str::from_utf8(key).map_err(|_| ProtoError::Malformed("header key is not UTF-8"))?;
    let value = get_nullable(buf)?;
    Ok((key, value))
}

/// Splits a run of concatenated batches (as a fetch returns them) into
/// `(header, batch bytes)` pairs, checking each CRC.
pub fn split_batches(mut data: Bytes) -> Result<Vec<(BatchHeader, Bytes)>, ProtoError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let header = BatchHeader::parse(&data)?;
        let len = header.batch_len as usize;
        if len > data.len() {
            return Err(ProtoError::Malformed("batch runs past the end of the data"));
        }
        let batch = data.split_to(len);
        header.verify_crc(&batch)?;
        out.push((header, batch));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_bytes() -> impl Strategy<Value = Option<Bytes>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from))
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            arb_bytes(),
            arb_bytes(),
            proptest::collection::vec(("[a-z]{0,8}", arb_bytes()), 0..3),
            any::<i64>(),
        )
            .prop_map(|(key, value, headers, timestamp)| Record {
                key,
                value,
                headers: headers
                    .into_iter()
                    .map(|(key, value)| Header { key, value })
                    .collect(),
                timestamp,
            })
    }

    fn arb_compression() -> impl Strategy<Value = Compression> {
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Lz4),
            Just(Compression::Zstd)
        ]
    }

    proptest! {
        #[test]
        fn batch_roundtrip(records in proptest::collection::vec(arb_record(), 1..20),
                           compression in arb_compression(),
                           base in 0u64..1 << 40, epoch in any::<u32>(),
                           pid in any::<i64>(), seq in any::<i32>()) {
            let mut b = BatchBuilder::new(compression);
            for r in &records { b.push(r); }
            let mut bytes = b.finish(pid, 3, seq).unwrap();
            assign_offset(&mut bytes, base, epoch);
            let header = validate(&bytes).unwrap();
            prop_assert_eq!(header.base_offset, base);
            prop_assert_eq!(header.leader_epoch, epoch);
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(header.producer_id, pid);
            prop_assert_eq!(header.base_sequence, seq);
            prop_assert_eq!(header.compression, compression);
            prop_assert_eq!(header.max_timestamp, records.iter().map(|r| r.timestamp).max().unwrap());
            let decoded = decode_records(&header, &Bytes::from(bytes)).unwrap();
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(d.offset, base + i as u64);
                prop_assert_eq!(d.timestamp, r.timestamp);
                prop_assert_eq!(&d.key, &r.key);
                prop_assert_eq!(&d.value, &r.value);
                prop_assert_eq!(&d.headers, &r.headers);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate(&data);
            let _ = split_batches(Bytes::from(data));
        }

        #[test]
        fn any_flipped_bit_is_caught(records in proptest::collection::vec(arb_record(), 1..5),
                                     pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut b = BatchBuilder::new(Compression::None);
            for r in &records { b.push(r); }
            let mut bytes = b.finish(-1, -1, -1).unwrap();
            let i = CRC_START + pos.index(bytes.len() - CRC_START);
            bytes[i] ^= 1 << bit;
            prop_assert!(validate(&bytes).is_err());
        }
    }

    /// The bytes of a batch are what the broker stores and every client reads: the encoder
    /// may change how it works, never what it writes (these were written by the encoder of
    /// before records were encoded in place).
    #[test]
    fn encoding_is_stable() {
        let records = [
            Record {
                key: Some(Bytes::from_static(b"k1")),
                value: Some(Bytes::from_static(b"hello")),
                headers: vec![
                    Header {
                        key: "h".into(),
                        value: Some(Bytes::from_static(b"v")),
                    },
                    Header {
                        key: "n".into(),
                        value: None,
                    },
                ],
                timestamp: 1_700_000_000_000,
            },
            Record {
                key: None,
                value: Some(Bytes::from(vec![7u8; 300])),
                headers: vec![],
                timestamp: 1_699_999_999_000,
            },
            Record {
                key: None,
                value: None,
                headers: vec![],
                timestamp: 1_700_000_000_500,
            },
        ];
        let none = concat!(
            "00000000000000000000018900000000017fbcdf8b0000000000030000018bcfe568000000018bcf",
            "e569f4000000000000002a000300000011130000036b310668656c6c6f0201680276016e00b302cf",
            "0f0100ad020707070707070707070707070707070707070707070707070707070707070707070707",
            "07070707070707070707070707070707070707070707070707070707070707070707070707070707",
            "07070707070707070707070707070707070707070707070707070707070707070707070707070707",
            "07070707070707070707070707070707070707070707070707070707070707070707070707070707",
            "07070707070707070707070707070707070707070707070707070707070707070707070707070707",
            "07070707070707070707070707070707070707070707070707070707070707070707070707070707",
            "07070707070707070707070707070707070707070707070707070707070707070707070707070707",
            "070707070707070707070707070707070707070707070707070006e80702000000",
        );
        let lz4 = concat!(
            "00000000000000000000006900000000010d23b9620001000000030000018bcfe568000000018bcf",
            "e569f4000000000000002a00030000001150010000ff0e130000036b310668656c6c6f0201680276",
            "016e00b302cf0f0100ad02070100ff19800006e80702000000",
        );
        for (compression, want) in [(Compression::None, none), (Compression::Lz4, lz4)] {
            let mut b = BatchBuilder::new(compression);
            for r in &records {
                b.push(r);
            }
            let got: String = b
                .finish(42, 3, 17)
                .unwrap()
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect();
            assert_eq!(got, want, "{compression:?}");
        }
    }

    #[test]
    fn compression_shrinks_repetitive_data() {
        for c in [Compression::Lz4, Compression::Zstd] {
            let mut b = BatchBuilder::new(c);
            for i in 0..1000 {
                b.push(&Record {
                    value: Some(Bytes::from(format!("the same log line, number {i}"))),
                    ..Default::default()
                });
            }
            let raw = b.size_bytes();
            let bytes = b.finish(-1, -1, -1).unwrap();
            assert!(bytes.len() * 3 < raw, "{c:?}: {} vs {raw}", bytes.len());
            let h = validate(&bytes).unwrap();
            assert_eq!(h.compression, c);
        }
    }

    #[test]
    fn decompression_stops_at_the_limit_not_after() {
        let zeros = vec![0u8; 100_000];
        let lz4 = compress(Compression::Lz4, &zeros).unwrap();
        let zstd = compress(Compression::Zstd, &zeros).unwrap();
        assert_eq!(decompress_lz4(&lz4, zeros.len()).unwrap(), zeros);
        assert_eq!(decompress_zstd(&zstd, zeros.len()).unwrap(), zeros);
        assert_eq!(decompress_zstd(&zstd, usize::MAX).unwrap(), zeros);
        for err in [
            decompress_lz4(&lz4, zeros.len() - 1).unwrap_err(),
            decompress_zstd(&zstd, zeros.len() - 1).unwrap_err(),
        ] {
            assert!(
                err.to_string()
                    .contains("more than the limit of 99999 bytes"),
                "{err}"
            );
        }
        // An lz4 size prefix the block cannot expand to is refused whatever the limit.
        let mut lying = lz4.clone();
        let most = (lz4.len() - 4) * LZ4_MAX_RATIO;
        lying[..4].copy_from_slice(&(most as u32 + 1).to_le_bytes());
        assert!(decompress_lz4(&lying, usize::MAX).is_err());
    }

    #[test]
    fn zstd_window_follows_the_limit() {
        assert_eq!(zstd_window_log_max(8 << 20), 23);
        assert_eq!(zstd_window_log_max((8 << 20) + 1), 24);
        assert_eq!(zstd_window_log_max(0), 20);
        assert_eq!(zstd_window_log_max(1000), 20);
        assert_eq!(zstd_window_log_max(usize::MAX), 30);
    }

    #[test]
    fn offsets_past_the_largest_are_refused() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record::default());
        b.push(&Record::default());
        let mut bytes = b.finish(-1, -1, -1).unwrap();
        assign_offset(&mut bytes, u64::MAX - 2, 0);
        assert_eq!(validate(&bytes).unwrap().next_offset(), u64::MAX);
        assign_offset(&mut bytes, u64::MAX - 1, 0);
        assert!(BatchHeader::parse(&bytes).is_err());
    }

    #[test]
    fn empty_batch_is_refused() {
        assert!(
            BatchBuilder::new(Compression::None)
                .finish(-1, -1, -1)
                .is_err()
        );
    }
}
