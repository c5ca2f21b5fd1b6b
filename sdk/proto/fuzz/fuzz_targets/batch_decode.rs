//! Any bytes as record batches: parsing, CRC checks and record decoding (with decompression)
//! must return an error or records, never panic or allocate without bound.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_proto::batch::{decode_records, split_batches, validate, BatchHeader};

fuzz_target!(|data: &[u8]| {
    let _ = validate(data);
    if let Ok(header) = BatchHeader::parse(data) {
        if header.batch_len as usize == data.len() {
            // Decode even when the CRC is wrong, to reach the record decoder with any input.
            let _ = decode_records(&header, &Bytes::copy_from_slice(data));
        }
    }
    let _ = split_batches(Bytes::copy_from_slice(data));
});
