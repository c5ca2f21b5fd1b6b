//! TEST FIXTURE ONLY. A component of the `sink` world, offered where a transform is
//! expected: the host must refuse it (`PluginError::WrongWorld`). Written against the WIT
//! directly, since the SDK does not cover sinks yet.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "sluice:plugin/sink@0.1.0",
});

use exports::sluice::plugin::sink_handler::Guest;
use sluice::plugin::types::PluginError;

struct Discard;

impl Guest for Discard {
    fn open() -> Result<(), PluginError> {
        Ok(())
    }

    fn write(_batch: Vec<u8>) -> Result<(), PluginError> {
        Ok(())
    }

    fn flush() -> Result<(), PluginError> {
        Ok(())
    }
}

export!(Discard);
