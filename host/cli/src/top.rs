//! `sluice top`: a live view of brokers read from their metrics endpoints — per topic the
//! records and bytes in and out per second, per group its lag, per plugin its sandbox stops,
//! and the cluster's health. On a terminal it redraws in place; otherwise it prints one frame
//! per interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use sluice_observe::scrape::{self, Scrape};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Metrics endpoints of the brokers to watch (their `metrics_listen`), HOST:PORT[,...].
    #[arg(long, env = "SLUICE_METRICS", value_delimiter = ',', required = true)]
    pub metrics: Vec<SocketAddr>,
    /// Time between two frames.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many frames (default: until interrupted).
    #[arg(long)]
    pub iterations: Option<u64>,
    /// A file holding the brokers' metrics bearer token (their `metrics_bearer_token_file`).
    #[arg(long, env = "SLUICE_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<std::path::PathBuf>,
}

/// What one frame shows, summed over the brokers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    /// topic -> (records in, bytes in, records out, bytes out), counters.
    pub topics: BTreeMap<String, [f64; 4]>,
    /// group -> lag (records), over the partitions reported.
    pub lag: BTreeMap<String, f64>,
    /// plugin hash -> sandbox stops, counter.
    pub plugin_stops: BTreeMap<String, f64>,
    pub connections: f64,
    pub under_replicated: f64,
    pub metadata_leader: Option<f64>,
    /// Brokers that answered, of those asked.
    pub answered: usize,
    pub asked: usize,
}

impl Totals {
    pub fn add(&mut self, s: &Scrape) {
        self.answered += 1;
        for sample in &s.samples {
            let value = match &sample.value {
                scrape::Value::Counter(v) | scrape::Value::Gauge(v) | scrape::Value::Untyped(v) => {
                    *v
                }
                _ => continue,
            };
            let label = |k: &str| sample.labels.get(k).unwrap_or("").to_string();
            let column = match sample.metric.as_str() {
                "sluice_records_in_total" => Some(0),
                "sluice_bytes_in_total" => Some(1),
                "sluice_records_out_total" => Some(2),
                "sluice_bytes_out_total" => Some(3),
                _ => None,
            };
            if let Some(c) = column {
                self.topics.entry(label("topic")).or_default()[c] += value;
                continue;
            }
            match sample.metric.as_str() {
                "sluice_consumer_group_lag" => {
                    *self.lag.entry(label("group")).or_default() += value
                }
                "sluice_plugin_stops_total" => {
                    *self.plugin_stops.entry(label("plugin_hash")).or_default() += value
                }
                "sluice_connections_open" => self.connections += value,
                "sluice_partitions_under_replicated" => self.under_replicated += value,
                "sluice_raft_leader_id" if value >= 0.0 => self.metadata_leader = Some(value),
                _ => {}
            }
        }
    }
}

/// Renders one frame: rates from the counters' change since `before`, `secs` ago.
pub fn render(now: &Totals, before: Option<(&Totals, f64)>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluice top — {}/{} broker(s) answering, {} connection(s), metadata leader {}, {} partition(s) under-replicated",
        now.answered,
        now.asked,
        now.connections,
        now.metadata_leader
            .map_or("unknown".to_string(), |l| format!("node {l}")),
        now.under_replicated
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<32} {:>12} {:>12} {:>12} {:>12}",
        "TOPIC", "IN rec/s", "IN MB/s", "OUT rec/s", "OUT MB/s"
    );
    for (topic, counters) in &now.topics {
        let rate = |i: usize, scale: f64| match before {
            Some((b, secs)) if secs > 0.0 => {
                let was = b.topics.get(topic).map_or(0.0, |c| c[i]);
                // A restarted broker starts its counters at 0: never a negative rate.
                format!("{:.1}", ((counters[i] - was).max(0.0) / secs) / scale)
            }
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:>12} {:>12} {:>12} {:>12}",
            topic,
            rate(0, 1.0),
            rate(1, 1e6),
            rate(2, 1.0),
            rate(3, 1e6)
        );
    }
    if !now.lag.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<32} {:>12}", "GROUP", "LAG");
        for (group, lag) in &now.lag {
            let _ = writeln!(out, "{group:<32} {lag:>12}");
        }
    }
    if !now.plugin_stops.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<32} {:>12}", "PLUGIN (hash)", "STOPS");
        for (plugin, stops) in &now.plugin_stops {
            let _ = writeln!(out, "{plugin:<32} {stops:>12}");
        }
    }
    out
}

pub async fn run(args: &TopArgs) -> Result<ExitCode> {
    if args.interval_ms == 0 {
        bail!("--interval-ms must be at least 1");
    }
    let token = match &args.metrics_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let terminal = std::io::stdout().is_terminal();
    let mut before: Option<(Totals, Instant)> = None;
    let mut frames = 0u64;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut totals = Totals {
            asked: args.metrics.len(),
            ..Totals::default()
        };
        let mut errors = Vec::new();
        for addr in &args.metrics {
            match scrape::fetch(*addr, timeout, token.as_deref())
                .await
                .and_then(|t| scrape::parse(&t))
            {
                Ok(s) => totals.add(&s),
                Err(e) => errors.push(e),
            }
        }
        if totals.answered == 0 && frames == 0 {
            bail!("no metrics endpoint answered: {}", errors.join("; "));
        }
        let now = Instant::now();
        let mut frame = render(
            &totals,
            before
                .as_ref()
                .map(|(t, at)| (t, now.duration_since(*at).as_secs_f64())),
        );
        for e in &errors {
            let _ = writeln!(frame, "\nunreachable: {e}");
        }
        let mut stdout = std::io::stdout().lock();
        if terminal {
            // Home, clear, frame: redrawn in place.
            write!(stdout, "\x1b[H\x1b[2J{frame}").context("writing to the terminal")?;
        } else {
            writeln!(stdout, "{frame}").context("writing to stdout")?;
        }
        stdout.flush().context("writing to stdout")?;
        before = Some((totals, now));
        frames += 1;
        if args.iterations.is_some_and(|n| frames >= n) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape_of(text: &str) -> Scrape {
        scrape::parse(text).unwrap()
    }

    #[test]
    fn rates_come_from_the_change_over_the_interval_summed_over_brokers() {
        let first = "# TYPE sluice_records_in_total counter\n\
             sluice_records_in_total{topic=\"orders\"} 100\n\
             # TYPE sluice_bytes_in_total counter\n\
             sluice_bytes_in_total{topic=\"orders\"} 2000000\n";
        let second = "# TYPE sluice_records_in_total counter\n\
             sluice_records_in_total{topic=\"orders\"} 300\n\
             # TYPE sluice_bytes_in_total counter\n\
             sluice_bytes_in_total{topic=\"orders\"} 6000000\n\
             # TYPE sluice_consumer_group_lag gauge\n\
             sluice_consumer_group_lag{group=\"billing\",topic=\"orders\",partition=\"0\"} 7\n\
             sluice_consumer_group_lag{group=\"billing\",topic=\"orders\",partition=\"1\"} 5\n\
             # TYPE sluice_raft_leader_id gauge\n\
             sluice_raft_leader_id 2\n";
        let mut before = Totals::default();
        before.add(&scrape_of(first));
        let mut now = Totals::default();
        now.add(&scrape_of(second));
        now.add(&scrape_of(first)); // a second broker
        assert_eq!(now.topics["orders"][0], 400.0);
        assert_eq!(now.lag["billing"], 12.0);
        assert_eq!(now.metadata_leader, Some(2.0));
        let frame = render(&now, Some((&before, 2.0)));
        let line = frame.lines().find(|l| l.starts_with("orders")).unwrap();
        // (400 - 100) records over 2 s; (8 MB - 2 MB) over 2 s.
        assert!(line.contains("150.0"), "{line}");
        assert!(line.contains("3.0"), "{line}");
        assert!(frame.contains("billing"), "{frame}");
        // The first frame has no rates yet.
        assert!(
            render(&now, None)
                .lines()
                .any(|l| l.starts_with("orders") && l.contains('-'))
        );
    }
}
