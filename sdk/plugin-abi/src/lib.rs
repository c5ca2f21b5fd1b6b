//! The packed record-batch format that crosses the Sluice plugin boundary.
//!
//! Host and guest exchange batches of records as one `list<u8>` (see `wit/sluice-plugin.wit`
//! and `docs/plugins.md`): copying one byte list through the component model is ~50 times
//! cheaper than lifting a `list<record>` field by field. This crate is the one definition of
//! that format, shared by the host runtime (`sluice-plugin-host`) and the guest SDK
//! (`sluice-plugin`). It has no dependencies so it builds for the host and for
//! `wasm32-wasip2` alike.
//!
//! Data enters as `&[u8]` ([`decode_batch`], or the allocation-free [`BatchReader`]) and
//! leaves as `Vec<u8>` ([`encode_batch`], or [`BatchBuilder`] to append records one by one).
//! Decoding is bounds-checked everywhere and returns [`AbiError`] on any malformed input; it
//! never panics and never allocates more than the input can justify.
//!
//! # Format, version 1 (all integers little-endian)
//! ```text
//! batch   := version:u8 (= 1)  count:u32  record{count}
//! record  := len:u32  body            (len = byte length of body)
//! body    := timestamp:i64  partition:u32  offset:u64
//!            key:bytes?  value:bytes?
//!            header_count:u32  header{header_count}
//! header  := key_len:u32 key:utf8  value:bytes?
//! bytes?  := len:u32 (0xFFFF_FFFF = absent)  byte{len}
//! ```
//! On output from a transform, `partition` may name the target partition, or be
//! [`PARTITION_UNSET`] to let the host choose (key hash); `offset` is ignored.

use std::fmt;

/// The format version this crate reads and writes (first byte of every batch).
pub const FORMAT_VERSION: u8 = 1;

/// `partition` value meaning "not set": the host picks the partition (by key hash).
pub const PARTITION_UNSET: u32 = u32::MAX;

/// Length marker for an absent key, value or header value.
const ABSENT: u32 = u32::MAX;

/// Bytes of a batch header: version + record count.
const BATCH_HEADER_LEN: usize = 1 + 4;

/// Smallest possible record: length prefix + fixed fields + two absent byte strings + a
/// header count. Used to reject counts that the input cannot hold before allocating.
const MIN_RECORD_LEN: usize = 4 + 8 + 4 + 8 + 4 + 4 + 4;

/// One record, owned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginRecord {
    /// `None` when the producer gave no key.
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Header keys are UTF-8; values are optional bytes.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Input: the partition read from. Output: target partition or [`PARTITION_UNSET`].
    pub partition: u32,
    /// Input: the record's offset. Ignored on output.
    pub offset: u64,
}

impl PluginRecord {
    /// A record with only a key and a value; partition unset, offset and timestamp 0.
    pub fn new(key: Option<Vec<u8>>, value: Option<Vec<u8>>) -> Self {
        Self {
            key,
            value,
            headers: Vec::new(),
            timestamp: 0,
            partition: PARTITION_UNSET,
            offset: 0,
        }
    }

    /// The value, or an empty slice for a tombstone.
    pub fn value_bytes(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }

    /// The key, or an empty slice when there is none.
    pub fn key_bytes(&self) -> &[u8] {
        self.key.as_deref().unwrap_or_default()
    }

    /// The first header with this key, if any (its value may itself be absent).
    pub fn header(&self, key: &str) -> Option<Option<&[u8]>> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    /// The bytes this record takes in a packed batch (length prefix included).
    pub fn encoded_len(&self) -> usize {
        4 + 8
            + 4
            + 8
            + opt_len(self.key.as_deref())
            + opt_len(self.value.as_deref())
            + 4
            + self
                .headers
                .iter()
                .map(|(k, v)| 4 + k.len() + opt_len(v.as_deref()))
                .sum::<usize>()
    }
}

fn opt_len(b: Option<&[u8]>) -> usize {
    4 + b.map_or(0, <[u8]>::len)
}

/// A malformed packed batch. `at` is the byte position where decoding gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbiError {
    pub at: usize,
    pub reason: AbiErrorReason,
}

/// What was wrong with a packed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbiErrorReason {
    /// The input ended inside a field.
    Truncated,
    /// The first byte is not a format version this crate knows.
    UnsupportedVersion(u8),
    /// The record count cannot fit in the bytes that follow.
    CountTooLarge(u32),
    /// A record's declared length disagrees with its content.
    LengthMismatch { declared: usize, actual: usize },
    /// A header key is not UTF-8.
    HeaderKeyNotUtf8,
    /// Bytes left over after the last record.
    TrailingBytes(usize),
    /// A batch or field is larger than the format's u32 lengths allow.
    TooLarge,
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed record batch at byte {}: ", self.at)?;
        match &self.reason {
            AbiErrorReason::Truncated => write!(f, "input ends inside a field"),
            AbiErrorReason::UnsupportedVersion(v) => write!(
                f,
                "format version {v} is not supported (this build reads version {FORMAT_VERSION})"
            ),
            AbiErrorReason::CountTooLarge(n) => {
                write!(f, "record count {n} cannot fit in the remaining bytes")
            }
            AbiErrorReason::LengthMismatch { declared, actual } => write!(
                f,
                "record declares {declared} bytes but its fields take {actual}"
            ),
            AbiErrorReason::HeaderKeyNotUtf8 => write!(f, "a header key is not valid UTF-8"),
            AbiErrorReason::TrailingBytes(n) => {
                write!(f, "{n} bytes left over after the last record")
            }
            AbiErrorReason::TooLarge => write!(f, "a length exceeds 4 GiB - 2"),
        }
    }
}

impl std::error::Error for AbiError {}

// ---------------------------------------------------------------------------------------
// Key hash
// ---------------------------------------------------------------------------------------

/// 32-bit MurmurHash2 with Kafka's seed `0x9747b28c`: the key-hash partitioner's function.
///
/// The same function as `sluice_proto::partitioner::murmur2` (which the broker and client
/// use); it is repeated here because guests cannot link `sluice-proto` (tokio, zstd). The
/// reference values in the tests are Kafka's, so the two cannot drift apart unnoticed.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a key hashes to: `(murmur2(key) & 0x7fffffff) % partitions` (0 partitions
/// is treated as 1).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Builds a packed batch one record at a time.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// `bytes`: expected encoded size, to avoid reallocations.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(BATCH_HEADER_LEN));
        buf.push(FORMAT_VERSION);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self { buf, count: 0 }
    }

    /// Records so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes so far (header included).
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// Appends an owned record.
    pub fn push(&mut self, r: &PluginRecord) {
        self.push_parts(
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            r.timestamp,
            r.partition,
            r.offset,
        );
    }

    /// Appends a borrowed record, unchanged (the fast path for filters).
    pub fn push_ref(&mut self, r: &RecordRef<'_>) {
        self.push_parts(
            r.key,
            r.value,
            r.headers(),
            r.timestamp,
            r.partition,
            r.offset,
        );
    }

    /// Appends a record from its parts.
    ///
    /// # Panics
    /// If a single field is 4 GiB or longer (the format's limit); nothing that size can be
    /// in a record batch.
    pub fn push_parts<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
        timestamp: i64,
        partition: u32,
        offset: u64,
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes()); // length, patched below
        self.buf.extend_from_slice(&timestamp.to_le_bytes());
        self.buf.extend_from_slice(&partition.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        put_opt(&mut self.buf, key);
        put_opt(&mut self.buf, value);
        let count_at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        let mut n: u32 = 0;
        for (k, v) in headers {
            put_u32_len(&mut self.buf, k.len());
            self.buf.extend_from_slice(k.as_bytes());
            put_opt(&mut self.buf, v);
            n += 1;
        }
        self.buf[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
        let body = self.buf.len() - start - 4;
        let body = u32::try_from(body).expect("record larger than 4 GiB");
        self.buf[start..start + 4].copy_from_slice(&body.to_le_bytes());
        self.count += 1;
    }

    /// The finished batch.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[1..5].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

fn put_u32_len(buf: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l != ABSENT)
        .expect("field larger than 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
}

fn put_opt(buf: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => buf.extend_from_slice(&ABSENT.to_le_bytes()),
        Some(b) => {
            put_u32_len(buf, b.len());
            buf.extend_from_slice(b);
        }
    }
}

/// Encodes records as one packed batch.
pub fn encode_batch(records: &[PluginRecord]) -> Vec<u8> {
    let size = BATCH_HEADER_LEN + records.iter().map(PluginRecord::encoded_len).sum::<usize>();
    let mut b = BatchBuilder::with_capacity(size);
    for r in records {
        b.push(r);
    }
    b.finish()
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// A record borrowed from a packed batch: no copies, no allocation. Its headers were
/// validated when it was read, so iterating them cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp: i64,
    pub partition: u32,
    pub offset: u64,
    header_bytes: &'a [u8],
    header_count: u32,
}

impl<'a> RecordRef<'a> {
    /// The headers, in order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            cur: Cursor {
                buf: self.header_bytes,
                pos: 0,
                base: 0,
            },
            left: self.header_count,
        }
    }

    /// The same record with another `partition` (e.g. [`PARTITION_UNSET`] on output).
    pub fn with_partition(self, partition: u32) -> Self {
        Self { partition, ..self }
    }

    pub fn header_count(&self) -> usize {
        self.header_count as usize
    }

    /// The value, or an empty slice for a tombstone.
    pub fn value_bytes(&self) -> &'a [u8] {
        self.value.unwrap_or_default()
    }

    /// A copy that owns its bytes.
    pub fn to_owned_record(&self) -> PluginRecord {
        PluginRecord {
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: self.timestamp,
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Iterates a [`RecordRef`]'s headers as `(key, value)`.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    cur: Cursor<'a>,
    left: u32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated when the record was read; a failure here would be a bug in this crate,
        // and ending the iteration is the non-panicking answer.
        let k = self.cur.bytes().ok()?;
        let k = std::str::from_utf8(k).ok()?;
        let v = self.cur.opt_bytes().ok()?;
        Some((k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// Reads records out of a packed batch without copying them.
#[derive(Clone, Debug)]
pub struct BatchReader<'a> {
    cur: Cursor<'a>,
    left: u32,
    failed: bool,
}

impl<'a> BatchReader<'a> {
    /// Checks the batch header. Records are checked as they are read.
    pub fn new(batch: &'a [u8]) -> Result<Self, AbiError> {
        let mut cur = Cursor {
            buf: batch,
            pos: 0,
            base: 0,
        };
        let version = cur.u8()?;
        if version != FORMAT_VERSION {
            return Err(AbiError {
                at: 0,
                reason: AbiErrorReason::UnsupportedVersion(version),
            });
        }
        let count = cur.u32()?;
        if (count as usize).saturating_mul(MIN_RECORD_LEN) > cur.remaining() {
            return Err(AbiError {
                at: 1,
                reason: AbiErrorReason::CountTooLarge(count),
            });
        }
        Ok(Self {
            cur,
            left: count,
            failed: false,
        })
    }

    /// Records not yet read, as the header declared.
    pub fn remaining(&self) -> usize {
        self.left as usize
    }

    fn read_record(&mut self) -> Result<RecordRef<'a>, AbiError> {
        let len_at = self.cur.pos;
        let len = self.cur.u32()? as usize;
        let body_start = self.cur.pos;
        let body = self.cur.take(len)?;
        let mut c = Cursor {
            buf: body,
            pos: 0,
            base: self.cur.base + body_start,
        };
        let timestamp = c.i64()?;
        let partition = c.u32()?;
        let offset = c.u64()?;
        let key = c.opt_bytes()?;
        let value = c.opt_bytes()?;
        let header_count = c.u32()?;
        let headers_start = c.pos;
        for _ in 0..header_count {
            let at = c.abs();
            let k = c.bytes()?;
            if std::str::from_utf8(k).is_err() {
                return Err(AbiError {
                    at,
                    reason: AbiErrorReason::HeaderKeyNotUtf8,
                });
            }
            c.opt_bytes()?;
        }
        if c.pos != len {
            return Err(AbiError {
                at: len_at + self.cur.base,
                reason: AbiErrorReason::LengthMismatch {
                    declared: len,
                    actual: c.pos,
                },
            });
        }
        Ok(RecordRef {
            key,
            value,
            timestamp,
            partition,
            offset,
            header_bytes: &body[headers_start..],
            header_count,
        })
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<RecordRef<'a>, AbiError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if self.cur.remaining() != 0 {
                self.failed = true;
                return Some(Err(AbiError {
                    at: self.cur.abs(),
                    reason: AbiErrorReason::TrailingBytes(self.cur.remaining()),
                }));
            }
            return None;
        }
        self.left -= 1;
        let r = self.read_record();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// Decodes a whole packed batch into owned records.
pub fn decode_batch(batch: &[u8]) -> Result<Vec<PluginRecord>, AbiError> {
    let reader = BatchReader::new(batch)?;
    let mut out = Vec::with_capacity(reader.remaining());
    for r in reader {
        out.push(r?.to_owned_record());
    }
    Ok(out)
}

/// The number of records a batch header declares, after checking the header.
pub fn batch_len(batch: &[u8]) -> Result<usize, AbiError> {
    BatchReader::new(batch).map(|r| r.remaining())
}

#[derive(Clone, Debug)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Position of `buf[0]` in the whole batch, for error messages.
    base: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn abs(&self) -> usize {
        self.base + self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AbiError> {
        if n > self.remaining() {
            return Err(AbiError {
                at: self.abs(),
                reason: AbiErrorReason::Truncated,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AbiError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, AbiError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, AbiError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, AbiError> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, AbiError> {
        self.array().map(i64::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], AbiError> {
        let at = self.abs();
        let n = self.u32()?;
        if n == ABSENT {
            return Err(AbiError {
                at,
                reason: AbiErrorReason::TooLarge,
            });
        }
        self.take(n as usize)
    }

    fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, AbiError> {
        let n = self.u32()?;
        if n == ABSENT {
            return Ok(None);
        }
        self.take(n as usize).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PluginRecord {
        PluginRecord {
            key: Some(b"k".to_vec()),
            value: Some(b"hello".to_vec()),
            headers: vec![("h".into(), None), ("ct".into(), Some(b"json".to_vec()))],
            timestamp: -5,
            partition: 3,
            offset: 42,
        }
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Reference values of Kafka's Utils.murmur2 (as signed Java ints).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
        assert_eq!(
            partition_for_key(b"foobar", 0),
            partition_for_key(b"foobar", 1)
        );
    }

    #[test]
    fn layout_is_as_documented() {
        let r = PluginRecord::new(None, Some(vec![7]));
        let b = encode_batch(std::slice::from_ref(&r));
        let mut want = vec![1u8, 1, 0, 0, 0];
        let body_len: u32 = 8 + 4 + 8 + 4 + (4 + 1) + 4;
        want.extend_from_slice(&body_len.to_le_bytes());
        want.extend_from_slice(&0i64.to_le_bytes());
        want.extend_from_slice(&u32::MAX.to_le_bytes());
        want.extend_from_slice(&0u64.to_le_bytes());
        want.extend_from_slice(&u32::MAX.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.push(7);
        want.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(b, want);
        assert_eq!(b.len(), BATCH_HEADER_LEN + r.encoded_len());
    }

    #[test]
    fn reader_borrows_and_push_ref_copies_exactly() {
        let recs = vec![sample(), PluginRecord::default(), sample()];
        let bytes = encode_batch(&recs);
        let mut b = BatchBuilder::new();
        for r in BatchReader::new(&bytes).unwrap() {
            b.push_ref(&r.unwrap());
        }
        assert_eq!(b.finish(), bytes);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            decode_batch(&[2, 0, 0, 0, 0]).unwrap_err().reason,
            AbiErrorReason::UnsupportedVersion(2)
        );
        assert_eq!(
            decode_batch(&[1, 0xff, 0xff, 0xff, 0xff])
                .unwrap_err()
                .reason,
            AbiErrorReason::CountTooLarge(u32::MAX)
        );
        let mut b = encode_batch(&[sample()]);
        b.push(0);
        assert_eq!(
            decode_batch(&b).unwrap_err().reason,
            AbiErrorReason::TrailingBytes(1)
        );
        let b = encode_batch(&[sample()]);
        assert_eq!(
            decode_batch(&b[..b.len() - 1]).unwrap_err().reason,
            AbiErrorReason::Truncated
        );
        assert!(decode_batch(&[]).is_err());
        assert!(
            decode_batch(&[2, 0, 0, 0, 0])
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
    }

    fn arb_opt_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
    }

    fn arb_record() -> impl Strategy<Value = PluginRecord> {
        (
            arb_opt_bytes(),
            arb_opt_bytes(),
            proptest::collection::vec((".{0,8}", arb_opt_bytes()), 0..4),
            any::<i64>(),
            any::<u32>(),
            any::<u64>(),
        )
            .prop_map(
                |(key, value, headers, timestamp, partition, offset)| PluginRecord {
                    key,
                    value,
                    headers,
                    timestamp,
                    partition,
                    offset,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(recs in proptest::collection::vec(arb_record(), 0..20)) {
            let bytes = encode_batch(&recs);
            prop_assert_eq!(batch_len(&bytes).unwrap(), recs.len());
            prop_assert_eq!(
                bytes.len(),
                BATCH_HEADER_LEN + recs.iter().map(PluginRecord::encoded_len).sum::<usize>()
            );
            prop_assert_eq!(decode_batch(&bytes).unwrap(), recs);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_batch(&bytes);
            // Also garbage behind a valid header, which reaches the record parser.
            let mut b = vec![1u8, 3, 0, 0, 0];
            b.extend_from_slice(&bytes);
            let _ = decode_batch(&b);
        }

        #[test]
        fn corrupted_batches_never_panic(
            recs in proptest::collection::vec(arb_record(), 1..5),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut bytes = encode_batch(&recs);
            for (i, v) in flips {
                let n = bytes.len();
                bytes[i % n] = v;
            }
            let _ = decode_batch(&bytes);
            let n = bytes.len();
            let _ = decode_batch(&bytes[..cut % n]);
        }
    }
}
