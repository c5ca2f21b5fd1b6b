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

use bytes::Bytes;

use crate::error::ProtoError;
use crate::varint;

pub const HEADER_LEN: usize = 57;
pub const MAGIC: u8 = 1;
/// Upper bound on a decompressed records section; protects consumers and the broker from
/// decompression bombs.
pub const MAX_DECOMPRESSED: usize = 256 * 1024 * 1024;

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
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    records: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    scratch: Vec<u8>,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            records: Vec::new(),
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
            scratch: Vec::new(),
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
        HEADER_LEN + self.records.len()
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
        let body = &mut self.scratch;
        body.clear();
        varint::put_i64(body, record.timestamp.wrapping_sub(self.first_timestamp));
        varint::put_u64(body, u64::from(self.count));
        put_nullable(body, record.key.as_deref());
        put_nullable(body, record.value.as_deref());
        varint::put_u64(body, record.headers.len() as u64);
        for h in &record.headers {
            varint::put_u64(body, h.key.len() as u64);
            body.extend_from_slice(h.key.as_bytes());
            put_nullable(body, h.value.as_deref());
        }
        varint::put_u64(&mut self.records, body.len() as u64);
        self.records.extend_from_slice(body);
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
        let payload = compress(self.compression, &self.records)?;
        let len = HEADER_LEN + payload.len();
        let batch_len =
            u32::try_from(len).map_err(|_| ProtoError::Malformed("batch longer than 4 GiB"))?;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&batch_len.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.push(MAGIC);
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
        out.extend_from_slice(&self.compression.code().to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.first_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&producer_id.to_be_bytes());
        out.extend_from_slice(&producer_epoch.to_be_bytes());
        out.extend_from_slice(&base_sequence.to_be_bytes());
        out.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
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

fn get_nullable(buf: &mut &[u8], src: &Bytes) -> Result<Option<Bytes>, ProtoError> {
    let n = varint::get_u64(buf)?;
    if n == 0 {
        return Ok(None);
    }
    let len = usize::try_from(n - 1).map_err(|_| ProtoError::Malformed("length overflow"))?;
    if len > buf.len() {
        return Err(ProtoError::Malformed(
            "byte string runs past the end of the record",
        ));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(Some(src.slice_ref(head)))
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

fn decompress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, ProtoError> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => {
            if data.len() < 4 {
                return Err(ProtoError::Malformed(
                    "lz4 payload shorter than its size prefix",
                ));
            }
            let size = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if size > MAX_DECOMPRESSED {
                return Err(ProtoError::Compression(format!(
                    "lz4 batch claims {size} bytes decompressed; the limit is {MAX_DECOMPRESSED}"
                )));
            }
            lz4_flex::block::decompress_size_prepended(data)
                .map_err(|e| ProtoError::Compression(e.to_string()))
        }
        Compression::Zstd => zstd::bulk::decompress(data, MAX_DECOMPRESSED)
            .map_err(|e| ProtoError::Compression(e.to_string())),
    }
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
        Ok(BatchHeader {
            base_offset: be_u64(bytes, OFF_BASE_OFFSET),
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

/// Parses and fully validates one batch that must span all of `batch`: header, CRC, and every
/// record (decompressing if needed). This is what the broker runs on produce.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, ProtoError> {
    let header = BatchHeader::parse(batch)?;
    header.verify_crc(batch)?;
    let records = decode_records(&header, &Bytes::copy_from_slice(batch))?;
    if records.len() != header.record_count as usize {
        return Err(ProtoError::Malformed(
            "record count does not match the header",
        ));
    }
    Ok(header)
}

/// Sets the broker-assigned fields of a batch in place. The CRC does not cover them.
pub fn assign_offset(batch: &mut [u8], base_offset: u64, leader_epoch: u32) {
    batch[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Decodes every record of one batch (`batch` is exactly the batch's bytes).
pub fn decode_records(
    header: &BatchHeader,
    batch: &Bytes,
) -> Result<Vec<StoredRecord>, ProtoError> {
    if batch.len() != header.batch_len as usize {
        return Err(ProtoError::Malformed(
            "batch length does not match its header",
        ));
    }
    let payload = &batch[HEADER_LEN..];
    let section = match header.compression {
        Compression::None => batch.slice(HEADER_LEN..),
        c => Bytes::from(decompress(c, payload)?),
    };
    let mut buf: &[u8] = &section;
    let mut out = Vec::with_capacity(header.record_count as usize);
    while !buf.is_empty() {
        if out.len() == header.record_count as usize {
            return Err(ProtoError::Malformed("more records than the header counts"));
        }
        let len = varint::get_u64(&mut buf)? as usize;
        if len > buf.len() {
            return Err(ProtoError::Malformed(
                "record runs past the end of the batch",
            ));
        }
        let (mut rec, rest) = buf.split_at(len);
        buf = rest;
        let ts_delta = varint::get_i64(&mut rec)?;
        let offset_delta = varint::get_u64(&mut rec)?;
        if offset_delta != out.len() as u64 {
            return Err(ProtoError::Malformed("record offset deltas are not dense"));
        }
        let key = get_nullable(&mut rec, &section)?;
        let value = get_nullable(&mut rec, &section)?;
        let n_headers = varint::get_u64(&mut rec)?;
        if n_headers > rec.len() as u64 {
            return Err(ProtoError::Malformed("header count larger than the record"));
        }
        let mut headers = Vec::with_capacity(n_headers as usize);
        for _ in 0..n_headers {
            let klen = varint::get_u64(&mut rec)? as usize;
            if klen > rec.len() {
                return Err(ProtoError::Malformed(
                    "header key runs past the end of the record",
                ));
            }
            let (k, rest) = rec.split_at(klen);
            rec = rest;
            let key = std::str::from_utf8(k)
                .map_err(|_| ProtoError::Malformed("header key is not UTF-8"))?
                .to_owned();
            let value = get_nullable(&mut rec, &section)?;
            headers.push(Header { key, value });
        }
        if !rec.is_empty() {
            return Err(ProtoError::Malformed("trailing bytes inside a record"));
        }
        out.push(StoredRecord {
            offset: header.base_offset + offset_delta,
            timestamp: header.first_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        });
    }
    if out.len() != header.record_count as usize {
        return Err(ProtoError::Malformed(
            "fewer records than the header counts",
        ));
    }
    Ok(out)
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
    fn empty_batch_is_refused() {
        assert!(
            BatchBuilder::new(Compression::None)
                .finish(-1, -1, -1)
                .is_err()
        );
    }
}
