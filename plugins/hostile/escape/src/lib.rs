//! TEST FIXTURE ONLY. A transform that tries to step outside the sandbox — read the file
//! system, read the environment, open a network connection, read the clock — and reports what
//! it got as one output record, so the host's tests can check that each attempt was refused.

use sluice_plugin::{BatchBuilder, BatchReader, Config, Result, Transform};

struct Escape;

impl Transform for Escape {
    fn new(_: &Config) -> Result<Self> {
        Ok(Escape)
    }

    fn process(&mut self, _: BatchReader<'_>, output: &mut BatchBuilder) -> Result<()> {
        let fs = match std::fs::read_dir("/") {
            Ok(entries) => format!("open:{}", entries.count()),
            Err(_) => "denied".to_string(),
        };
        let file = match std::fs::read("/etc/passwd") {
            Ok(bytes) => format!("read:{}", bytes.len()),
            Err(_) => "denied".to_string(),
        };
        let env = std::env::vars().count();
        let args = std::env::args().count();
        let net = match std::net::TcpStream::connect("127.0.0.1:1") {
            Ok(_) => "connected".to_string(),
            Err(_) => "denied".to_string(),
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let report = format!("fs={fs} file={file} env={env} args={args} net={net} clock={clock}");
        output.push_parts(
            None,
            Some(report.as_bytes()),
            [],
            0,
            sluice_plugin::PARTITION_UNSET,
            0,
        );
        Ok(())
    }
}

sluice_plugin::export_transform!(Escape);
