//! Any bytes as a frame body: decoding must return an error or a value, never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_proto::frame::decode_body;
use sluice_proto::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = decode_body::<Request>(Bytes::copy_from_slice(data));
    let _ = decode_body::<Response>(Bytes::copy_from_slice(data));
});
