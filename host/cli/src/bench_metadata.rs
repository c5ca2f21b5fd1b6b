//! Metadata benchmark: how many metadata changes per second the quorum commits, measured as
//! topic creates (one `CreateTopic` entry each) and deletes (one `DeleteTopic` each) of
//! one-partition topics, `--producers` at a time, with the latency of each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use sluice_client::Client;
use sluice_proto::TopicConfig;

use crate::acks::histogram;
use crate::bench::BenchArgs;

/// Most topics one run creates.
const MAX_TOPICS: u64 = 100_000;

pub async fn run(client: &Client, args: &BenchArgs) -> Result<()> {
    if args.count > MAX_TOPICS {
        bail!(
            "--count {} is more topics than a metadata bench creates (at most {MAX_TOPICS})",
            args.count
        );
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("bench-meta-{}-{nanos}", std::process::id());
    let (created, create_latency) = phase(client, args, &prefix, true).await?;
    print("topic creates", args.count, created, &create_latency);
    let (deleted, delete_latency) = phase(client, args, &prefix, false).await?;
    print("topic deletes", args.count, deleted, &delete_latency);
    Ok(())
}

/// Creates (or deletes) topics `prefix-0..count`, `--producers` at a time.
async fn phase(
    client: &Client,
    args: &BenchArgs,
    prefix: &str,
    create: bool,
) -> Result<(Duration, Histogram<u64>)> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..args.producers.max(1)).map(|_| {
        let (client, next, prefix, count) =
            (client.clone(), next.clone(), prefix.to_owned(), args.count);
        tokio::spawn(async move {
            let mut latency = histogram();
            let admin = client.admin();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(latency);
                }
                let name = format!("{prefix}-{i}");
                let t0 = Instant::now();
                if create {
                    admin.create_topic(&name, 1, TopicConfig::default()).await?;
                } else {
                    admin.delete_topic(&name).await?;
                }
                let _ = latency.record(t0.elapsed().as_micros().max(1) as u64);
            }
        })
    });
    let mut total = histogram();
    for w in futures::future::join_all(workers).await {
        total.add(w??)?;
    }
    Ok((started.elapsed(), total))
}

fn print(what: &str, count: u64, elapsed: Duration, latency: &Histogram<u64>) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{what}: {count} in {secs:.2} s: {:.0}/s; latency ms p50 {:.3}, p99 {:.3}, max {:.3}",
        count as f64 / secs,
        ms(latency.value_at_quantile(0.50)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.max())
    );
}
