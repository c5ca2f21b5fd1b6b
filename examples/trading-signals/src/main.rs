//! `trading-signals --dir DIR [--symbols N] [--ticks N] [--sluice PATH] [--broker ADDR]
//! [--tls-ca CA]`: writes ticks into DIR/ticks.csv, sets up source, pipeline and sink with the
//! `sluice` CLI, waits for the signals in DIR/signals.csv and checks them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use trading_signals::{Cli, expected_signals, setup, ticks, wait_signals};

fn usage() -> ExitCode {
    eprintln!(
        "usage: trading-signals --dir DIR [--symbols N] [--ticks N] [--sluice PATH] \
         [--broker ADDR] [--tls-ca CA]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut dir = None;
    let (mut symbols, mut count) = (4usize, 500u32);
    let mut cli = Cli {
        sluice: PathBuf::from("sluice"),
        flags: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--symbols" => match value.parse() {
                Ok(n) => symbols = n,
                Err(_) => return usage(),
            },
            "--ticks" => match value.parse() {
                Ok(n) => count = n,
                Err(_) => return usage(),
            },
            "--sluice" => cli.sluice = PathBuf::from(value),
            "--broker" | "--tls-ca" => cli.flags.extend([flag, value]),
            _ => return usage(),
        }
    }
    let Some(dir) = dir else {
        return usage();
    };
    let ticks = ticks(symbols, count);
    let expected = expected_signals(&ticks);
    let run = || -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ticks.csv"), &ticks)?;
        let signals = setup(&cli, &dir)?;
        Ok(wait_signals(
            &signals,
            expected.len(),
            Duration::from_secs(120),
        ))
    };
    match run() {
        Ok(got) if got == expected => {
            println!(
                "{} ticks, {} signals, all as computed independently",
                ticks.lines().count(),
                got.len()
            );
            for s in got.iter().take(5) {
                println!("  {s}");
            }
            ExitCode::SUCCESS
        }
        Ok(got) => {
            println!(
                "signals differ: {} written, {} expected",
                got.len(),
                expected.len()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("trading-signals: {e:#}");
            ExitCode::FAILURE
        }
    }
}
