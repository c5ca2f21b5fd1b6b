//! `sluice`: the one binary. `sluice broker` runs a node; every other subcommand is a client
//! of a running cluster (topics, produce, consume, bench, cluster status), over QUIC through the
//! Rust SDK; `sluice dev cluster` starts a local cluster of broker processes.

mod acks;
mod acl_cmds;
mod auth_cmds;
mod bench;
mod bench_groups;
mod bench_metadata;
mod bench_pipeline;
mod cli;
mod client_cmds;
mod cluster_cmds;
mod connector_cmds;
mod credential_cmds;
mod dev_cluster;
mod format;
mod pipeline_cmds;
mod plugin_cmds;
mod progress;
mod quota_cmds;
mod top;

use std::process::ExitCode;

use clap::Parser;

/// glibc's malloc moves its threshold for serving large allocations by mmap up to the size of
/// the largest one freed (up to 32 MiB), and keeps freed buffers below it in per-thread arenas.
/// The broker's request and fetch buffers of megabytes, freed on many threads, then stayed
/// resident after a burst (hundreds of MiB). A fixed threshold of 4 MiB serves the largest
/// buffers (frames and fetches up to 16 MiB) by mmap, so they go back to the OS when freed,
/// while smaller ones are reused from the arenas (their total is bounded by the broker's
/// request memory). 128 KiB returned more but cost 30% of produce throughput at 1 KiB records
/// (a page fault for every page of every batch).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_buffers_to_the_os() {
    const THRESHOLD: libc::c_int = 4 * 1024 * 1024;
    // SAFETY: mallopt only sets a tuning parameter of the process's allocator. It is called
    // first thing in main, before any other thread exists.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
    if ok != 1 {
        eprintln!(
            "warning: could not set glibc's mmap threshold; memory may stay high after bursts"
        );
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_to_the_os() {}

fn main() -> ExitCode {
    return_large_buffers_to_the_os();
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
    // The broker logs at info by default (openraft's own info lines narrate every election
    // and snapshot: warn for it); client commands keep stderr quiet unless asked.
    let default = if matches!(args.command, cli::Command::Broker(_)) {
        "info,openraft=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json =
        matches!(&args.command, cli::Command::Broker(b) if b.log_format == cli::LogFormat::Json);
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
