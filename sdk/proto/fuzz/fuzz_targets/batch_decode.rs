//! Any bytes as record batches: parsing, CRC checks and record decoding (with decompression)
//! must return an error or records, never panic or allocate without bound. The broker's limit
//! (its default largest batch) and the default limit are both exercised; run with
//! `-rss_limit_mb` / `-malloc_limit_mb` to catch an allocation sized by a hostile count.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_proto::batch::{
    BatchHeader, decode_records, decode_records_with_limit, split_batches, validate,
    validate_with_limit,
};

/// What the broker passes: its default `max_batch_bytes`.
const BROKER_LIMIT: usize = 8 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let _ = validate(data);
    let checked = validate_with_limit(data, BROKER_LIMIT);
    if let Ok(header) = BatchHeader::parse(data) {
        if header.batch_len as usize == data.len() {
            // Decode even when the CRC is wrong, to reach the record decoder with any input.
            let batch = Bytes::copy_from_slice(data);
            let _ = decode_records(&header, &batch);
            let decoded = decode_records_with_limit(&header, &batch, BROKER_LIMIT);
            // Validation and decoding share one record walk: they agree on every batch.
            if let Ok(valid) = &checked {
                let records = decoded.expect("a valid batch decodes");
                assert_eq!(records.len(), valid.record_count as usize);
            }
        }
    }
    let _ = split_batches(Bytes::copy_from_slice(data));
});
