//! Records per second through the plugin boundary with the trivial `identity-map` plugin:
//! host encodes a batch, the guest decodes it, maps every record, encodes the result, the
//! host checks and decodes it. 100 B values, batches of 10,000, one core.
//!
//! `cargo run --release -p sluice-plugin-host --example boundary_bench`

use std::time::{Duration, Instant};

use sluice_plugin_abi::encode_batch;
use sluice_plugin_host::{Limits, MemoryState, PluginRecord, PluginRuntime};

const BATCH: usize = 10_000;
const VALUE: usize = 100;

fn main() {
    let dir = std::env::temp_dir().join(format!("sluice-boundary-bench-{}", std::process::id()));
    let rt = PluginRuntime::new(&dir).expect("runtime");
    let plugin = rt
        .load(&sluice_wasm_plugins::read("identity-map"))
        .expect("load identity-map");
    let mut t = plugin
        .transform(Vec::new(), Limits::default(), Box::new(MemoryState::new()))
        .expect("instantiate");

    let records: Vec<PluginRecord> = (0..BATCH)
        .map(|i| PluginRecord {
            key: Some(format!("key-{i:06}").into_bytes()),
            value: Some(vec![b'x'; VALUE]),
            headers: Vec::new(),
            timestamp: 1_700_000_000_000 + i as i64,
            partition: 0,
            offset: i as u64,
        })
        .collect();

    // Warm up, and check the plugin really returns what it got.
    let out = t.process(&records).expect("process");
    assert_eq!(out.len(), BATCH);
    assert_eq!(out[17].value, records[17].value);

    let run = |label: &str, f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < Duration::from_secs(3) {
            f();
            n += BATCH;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label:<48} {:>12.0} records/s  ({:.0} MB/s of values)",
            n as f64 / secs,
            (n * VALUE) as f64 / secs / 1e6
        );
    };
    run(
        "typed: process(&[PluginRecord]) -> Vec<PluginRecord>",
        &mut || {
            std::hint::black_box(t.process(&records).unwrap());
        },
    );
    let packed = encode_batch(&records);
    run("packed: process_packed(Vec<u8>) -> Vec<u8>", &mut || {
        std::hint::black_box(t.process_packed(packed.clone()).unwrap());
    });
    let _ = std::fs::remove_dir_all(&dir);
}
