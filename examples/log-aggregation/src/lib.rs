//! Log aggregation over Sluice: services' log files tailed by file source connectors, other
//! services logging through the SDK, all into the topic `logs` keyed by service; a pipeline
//! keeps the errors (the built-in `json-filter`) in `errors`; the HTTP sink connector posts
//! them to a small indexer (`indexer`) that answers queries by service and time. See README.md.

pub mod indexer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_client::{Client, ProducerConfig, ProducerRecord};

/// Services that write log files (`DIR/<service>.log`), each tailed by a source connector.
pub const FILE_SERVICES: [&str; 3] = ["api", "auth", "billing"];
/// Services that log through the SDK's producer.
pub const SDK_SERVICES: [&str; 2] = ["checkout", "search"];
/// The time of every service's first log line (ms since the epoch); one line a second after.
pub const T0: i64 = 1_795_000_000_000;

/// Line `n` of `service`'s log: JSON with `ts`, `service`, `level` and `msg`. About one line
/// in ten is an error, the same ones every run.
pub fn log_line(service: &str, n: u32) -> String {
    let salt = service.bytes().map(u32::from).sum::<u32>();
    let (level, msg) = match (n.wrapping_mul(7) + salt) % 10 {
        0 => ("error", format!("request {n} failed: upstream timed out")),
        1 | 2 => ("warn", format!("request {n} slow: 870 ms")),
        _ => ("info", format!("request {n} served")),
    };
    format!(
        "{{\"ts\":{},\"service\":\"{service}\",\"level\":\"{level}\",\"msg\":\"{msg}\"}}",
        T0 + i64::from(n) * 1000
    )
}

/// The lines `lines` of `service` holds that are errors: what the indexer must answer.
pub fn expected_errors(service: &str, lines: std::ops::Range<u32>) -> Vec<String> {
    lines
        .map(|n| log_line(service, n))
        .filter(|l| l.contains("\"level\":\"error\""))
        .collect()
}

/// How to run the `sluice` CLI against the broker.
#[derive(Debug, Clone)]
pub struct Cli {
    pub sluice: PathBuf,
    /// Global flags passed on (`--broker ...`, `--tls-ca ...`).
    pub flags: Vec<String>,
}

impl Cli {
    /// Runs `sluice ARGS`; "already exists" is fine (a second run of the example).
    fn ensure(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.sluice)
            .args(&self.flags)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.sluice.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("already exists") {
            bail!("sluice {}: {}", args.join(" "), stderr.trim());
        }
        Ok(())
    }
}

/// Creates the topics, the errors pipeline and the HTTP sink into the indexer at `indexer`.
pub fn setup(cli: &Cli, dir: &Path, indexer: SocketAddr) -> Result<()> {
    cli.ensure(&["topic", "create", "logs", "--partitions", "3"])?;
    cli.ensure(&["topic", "create", "errors", "--partitions", "3"])?;
    cli.ensure(&[
        "plugin",
        "deploy",
        "service-logs",
        "--builtin",
        "file-source",
    ])?;
    cli.ensure(&[
        "plugin",
        "deploy",
        "errors-only",
        "--builtin",
        "json-filter",
    ])?;
    cli.ensure(&["plugin", "deploy", "to-indexer", "--builtin", "http-sink"])?;
    cli.ensure(&[
        "pipeline",
        "create",
        "errors",
        "--plugin",
        "errors-only",
        "--from",
        "logs",
        "--to",
        "errors",
        "--config",
        "field=level",
        "--config",
        "op=eq",
        "--config",
        "value=error",
    ])?;
    let sink = dir.join("indexer-sink.toml");
    std::fs::write(
        &sink,
        format!(
            "topics = [\"errors\"]\ndead_letter_topic = \"errors-refused\"\n\
             [settings]\nurl = \"http://{indexer}/ingest\"\n\
             [grants]\nhttp_hosts = [\"{indexer}\"]\n"
        ),
    )?;
    cli.ensure(&["topic", "create", "errors-refused", "--partitions", "1"])?;
    cli.ensure(&[
        "connector",
        "create",
        "indexer",
        "--plugin",
        "to-indexer",
        "--config",
        &sink.display().to_string(),
    ])
}

/// Tails `DIR/<service>.log` into `logs`, keyed by the service.
pub fn tail_service_log(cli: &Cli, dir: &Path, service: &str) -> Result<()> {
    let config = dir.join(format!("{service}-source.toml"));
    std::fs::write(
        &config,
        format!(
            "topic = \"logs\"\n[settings]\npath = \"{}\"\nkey = \"{service}\"\n\
             [grants]\ndirs = [\"{}:ro\"]\n",
            log_path(dir, service).display(),
            dir.display()
        ),
    )?;
    cli.ensure(&[
        "connector",
        "create",
        &format!("{service}-logs"),
        "--plugin",
        "service-logs",
        "--config",
        &config.display().to_string(),
    ])
}

/// Where a file service writes its log.
pub fn log_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.log"))
}

/// A file service writes its lines `lines`, appending to its log.
pub fn write_log(dir: &Path, service: &str, lines: std::ops::Range<u32>) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, service))?;
    let mut text = String::new();
    for n in lines {
        text.push_str(&log_line(service, n));
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Rotates a file service's log as logrotate does: `<service>.log` becomes
/// `<service>.log.1`, and the service goes on in a new `<service>.log`.
pub fn rotate_log(dir: &Path, service: &str) -> Result<()> {
    let path = log_path(dir, service);
    std::fs::rename(&path, path.with_extension("log.1")).context("rotating the log")
}

/// The SDK services log their lines `lines` straight into `logs`, keyed by service.
pub async fn produce_logs(client: &Client, lines: std::ops::Range<u32>) -> Result<()> {
    let producer = client.producer(ProducerConfig::default());
    let mut pending = Vec::new();
    for n in lines {
        for service in SDK_SERVICES {
            let record = ProducerRecord::new("logs", log_line(service, n)).with_key(service);
            pending.push(producer.send(record).await?);
        }
    }
    for p in pending {
        p.await.context("a log line was not acknowledged")?;
    }
    Ok(())
}

/// Waits (at most `limit`) until the indexer holds `n` lines of `service`; how many it holds.
pub fn wait_indexed(indexer: SocketAddr, service: &str, n: usize, limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let held = indexer::search(indexer, service, i64::MIN, i64::MAX)
            .map(|l| l.len())
            .unwrap_or(0);
        if held >= n || started.elapsed() > limit {
            return held;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks the indexer, over HTTP, for each service's errors and for a window of time of each,
/// and compares the answers with the errors its `lines` log lines hold. The differences, if any.
pub fn check(indexer: SocketAddr, lines: u32) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let window = (
        T0 + i64::from(lines / 4) * 1000,
        T0 + i64::from(lines / 2) * 1000,
    );
    for service in FILE_SERVICES.iter().chain(&SDK_SERVICES) {
        let all = indexer::search(indexer, service, i64::MIN, i64::MAX)?;
        let expected = expected_errors(service, 0..lines);
        if all != expected {
            problems.push(format!(
                "{service}: the indexer holds {} errors, {} expected{}",
                all.len(),
                expected.len(),
                if all.len() == expected.len() {
                    " (different ones, or in another order)"
                } else {
                    ""
                }
            ));
        }
        let within = indexer::search(indexer, service, window.0, window.1)?;
        if within != expected_errors(service, lines / 4..lines / 2) {
            problems.push(format!(
                "{service}: {} errors between {} and {}, not the expected ones",
                within.len(),
                window.0,
                window.1
            ));
        }
    }
    Ok(problems)
}

/// The whole example: sets up the topics, pipeline and connectors, has the file services
/// write half their logs, the SDK services theirs, rotates the files, writes the other half,
/// waits for the indexer to hold every error and checks what it answers. `lines` is per service.
pub async fn run(
    cli: &Cli,
    client: &Client,
    dir: &Path,
    indexer: SocketAddr,
    lines: u32,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize().context("the example's directory")?;
    let half = lines / 2;
    {
        let (cli, dir) = (cli.clone(), dir.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            setup(&cli, &dir, indexer)?;
            for service in FILE_SERVICES {
                write_log(&dir, service, 0..half)?;
                tail_service_log(&cli, &dir, service)?;
            }
            Ok(())
        })
        .await??;
    }
    produce_logs(client, 0..lines).await?;
    let dir2 = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let dir = dir2;
        // Each file's first errors are in: its source has started on it, so it follows the
        // file through the rotation (a source started after it would begin at the new file).
        for service in FILE_SERVICES {
            if wait_indexed(indexer, service, 1, PATIENCE) == 0 {
                bail!("no error of {service} reached the indexer in {PATIENCE:?}");
            }
            rotate_log(&dir, service)?;
            write_log(&dir, service, half..lines)?;
        }
        for service in FILE_SERVICES.iter().chain(&SDK_SERVICES) {
            let want = expected_errors(service, 0..lines).len();
            wait_indexed(indexer, service, want, PATIENCE);
        }
        check(indexer, lines)
    })
    .await?
}

/// How long the example waits for its records before it gives up.
const PATIENCE: Duration = Duration::from_secs(120);
