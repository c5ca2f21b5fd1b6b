//! A stream pipeline over Sluice: ticks from a file source, a moving-average crossover plugin
//! with its state in the plugin state store, signals to a file sink. See README.md.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The moving averages compared: the last `SHORT` ticks against the last `LONG`.
pub const SHORT: usize = 3;
pub const LONG: usize = 8;

/// `ticks` ticks of each of `symbols` symbols, interleaved, as `SYMBOL,SEQ,PRICE` lines:
/// a pseudo-random walk of prices in cents from a fixed seed (the same every run).
pub fn ticks(symbols: usize, ticks: u32) -> String {
    let mut state: u64 = 0x005e_ed0f_7e57;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut prices: Vec<i64> = (0..symbols).map(|i| 10_000 + 1_000 * i as i64).collect();
    let mut out = String::new();
    for seq in 0..ticks {
        for (i, price) in prices.iter_mut().enumerate() {
            *price = (*price + (next() % 201) as i64 - 100).max(100);
            out.push_str(&format!("SYM{i},{seq},{price}\n"));
        }
    }
    out
}

/// The signals the pipeline must produce for `ticks`, computed here on their own terms: per
/// symbol, a signal when the sign of (short average - long average) flips.
pub fn expected_signals(ticks: &str) -> Vec<String> {
    let mut windows: BTreeMap<&str, VecDeque<f64>> = BTreeMap::new();
    let mut sides: BTreeMap<&str, bool> = BTreeMap::new();
    let mut out = Vec::new();
    for line in ticks.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let [symbol, seq, price] = f[..] else {
            continue;
        };
        let Ok(price) = price.parse::<f64>() else {
            continue;
        };
        let w = windows.entry(symbol).or_default();
        w.push_back(price);
        if w.len() > LONG {
            w.pop_front();
        }
        if w.len() < LONG {
            continue;
        }
        let long = w.iter().sum::<f64>() / LONG as f64;
        let short = w.iter().skip(LONG - SHORT).sum::<f64>() / SHORT as f64;
        // Prices are whole cents: a difference this small is equality.
        if (short - long).abs() < 1e-9 {
            continue;
        }
        let above = short > long;
        if let Some(before) = sides.insert(symbol, above)
            && before != above
        {
            let signal = if above { "BUY" } else { "SELL" };
            out.push(format!("{symbol},{seq},{signal}"));
        }
    }
    out
}

/// How to run the `sluice` CLI against the broker.
#[derive(Debug, Clone)]
pub struct Cli {
    pub sluice: PathBuf,
    /// Global flags passed on (`--broker ...`, `--tls-ca ...`).
    pub flags: Vec<String>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.sluice)
            .args(&self.flags)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.sluice.display()))?;
        if !out.status.success() {
            bail!(
                "sluice {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like `run`, where "already exists" is fine (a second run of the example).
    fn ensure(&self, args: &[&str]) -> Result<()> {
        match self.run(args) {
            Err(e) if e.to_string().contains("already exists") => Ok(()),
            r => r.map(drop),
        }
    }
}

/// Writes the config files and creates everything: topics, plugins, the source, the
/// pipeline, the sink. `dir` holds `ticks.csv` (tailed) and receives `signals.csv`.
pub fn setup(cli: &Cli, dir: &Path) -> Result<PathBuf> {
    let dir = dir.canonicalize().context("the example's directory")?;
    let signals = dir.join("signals.csv");
    cli.ensure(&["topic", "create", "ticks", "--partitions", "1"])?;
    cli.ensure(&["topic", "create", "signals", "--partitions", "1"])?;
    cli.ensure(&["plugin", "deploy", "ticks-in", "--builtin", "file-source"])?;
    cli.ensure(&["plugin", "deploy", "crossover", "--builtin", "crossover"])?;
    cli.ensure(&["plugin", "deploy", "signals-out", "--builtin", "file-sink"])?;
    let source = dir.join("ticks-source.toml");
    std::fs::write(
        &source,
        format!(
            "topic = \"ticks\"\n[settings]\npath = \"{}\"\n[grants]\ndirs = [\"{}:ro\"]\n",
            dir.join("ticks.csv").display(),
            dir.display()
        ),
    )?;
    let sink = dir.join("signals-sink.toml");
    std::fs::write(
        &sink,
        format!(
            "topics = [\"signals\"]\n[settings]\npath = \"{}\"\n[grants]\ndirs = [\"{}:rw\"]\n",
            signals.display(),
            dir.display()
        ),
    )?;
    let (source, sink) = (source.display().to_string(), sink.display().to_string());
    cli.ensure(&[
        "connector",
        "create",
        "ticks",
        "--plugin",
        "ticks-in",
        "--config",
        &source,
    ])?;
    cli.ensure(&[
        "pipeline",
        "create",
        "signals",
        "--plugin",
        "crossover",
        "--from",
        "ticks",
        "--to",
        "signals",
        "--config",
        &format!("short={SHORT}"),
        "--config",
        &format!("long={LONG}"),
    ])?;
    cli.ensure(&[
        "connector",
        "create",
        "signals",
        "--plugin",
        "signals-out",
        "--config",
        &sink,
    ])?;
    Ok(signals)
}

/// The signals written so far.
pub fn read_signals(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (at most `limit`) until `path` holds `n` signals; what it holds then.
pub fn wait_signals(path: &Path, n: usize, limit: Duration) -> Vec<String> {
    let started = Instant::now();
    loop {
        let got = read_signals(path);
        if got.len() >= n || started.elapsed() > limit {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
