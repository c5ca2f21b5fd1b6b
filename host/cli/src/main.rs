//! `sluice`: the one binary. `sluice broker` runs a node; every other subcommand is a client
//! of a running broker (topics, produce, consume, bench), over QUIC through the Rust SDK.

mod acks;
mod bench;
mod bench_groups;
mod bench_pipeline;
mod cli;
mod client_cmds;
mod format;
mod pipeline_cmds;
mod plugin_cmds;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_tracing(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(args: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    // The broker logs at info by default; client commands keep stderr quiet unless asked.
    let default = if matches!(args.command, cli::Command::Broker(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
