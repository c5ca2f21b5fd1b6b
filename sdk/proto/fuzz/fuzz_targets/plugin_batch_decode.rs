//! Any bytes as a plugin-ABI packed batch: decoding must return an error or records, never
//! panic or allocate more than the input can justify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_plugin_abi::{BatchReader, batch_len, decode_batch, encode_batch};

fuzz_target!(|data: &[u8]| {
    let _ = batch_len(data);
    // The borrowing reader, headers included, as a filter plugin uses it.
    if let Ok(reader) = BatchReader::new(data) {
        for r in reader.flatten() {
            let _ = r.headers().count();
        }
    }
    // What decodes encodes back to the same bytes: the format has one encoding per batch.
    if let Ok(records) = decode_batch(data) {
        assert_eq!(encode_batch(&records), data);
    }
});
