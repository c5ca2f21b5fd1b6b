//! Consumer group benchmarks: rebalance time when a member leaves or joins, and commit
//! throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use sluice_client::{ConsumerConfig, GroupOptions};

use crate::acks::histogram;
use crate::bench::BenchArgs;
use crate::cli::Cli;

fn group_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{what}-{}-{nanos}", std::process::id())
}

fn consumer_config() -> ConsumerConfig {
    // Short long-polls: the bench watches assignments, not records.
    ConsumerConfig {
        max_wait: Duration::from_millis(10),
        ..ConsumerConfig::default()
    }
}

struct MemberHandle {
    owned: Arc<AtomicUsize>,
    leave: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

async fn start_member(cli: &Cli, group: &str, topic: &str) -> Result<MemberHandle> {
    let client = crate::cli::connect(cli).await?;
    let (owned, leave) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (o, l, group, topic) = (
        owned.clone(),
        leave.clone(),
        group.to_owned(),
        topic.to_owned(),
    );
    let task = tokio::spawn(async move {
        let mut consumer = client.consumer(consumer_config());
        let options = GroupOptions {
            auto_commit_interval: None,
            ..GroupOptions::default()
        };
        consumer.subscribe(&group, &[&topic], options).await?;
        while !l.load(Ordering::Relaxed) {
            consumer.poll().await?;
            o.store(consumer.assignment().len(), Ordering::Relaxed);
        }
        o.store(0, Ordering::Relaxed);
        consumer.close().await?;
        Ok(())
    });
    Ok(MemberHandle { owned, leave, task })
}

/// Waits until the members' partitions add up to `total` with every member owning some.
async fn settled(members: &[&MemberHandle], total: usize) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let counts: Vec<usize> = members
            .iter()
            .map(|m| m.owned.load(Ordering::Relaxed))
            .collect();
        if counts.iter().sum::<usize>() == total && counts.iter().all(|&c| c > 0) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the group did not settle within 60 s: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn rebalance(cli: &Cli, args: &BenchArgs) -> Result<()> {
    if args.members < 2 {
        bail!("--members must be at least 2");
    }
    let group = group_name("rebalance");
    let total = partition_count(cli, &args.topic).await?;
    let mut members = Vec::new();
    for _ in 0..args.members {
        members.push(start_member(cli, &group, &args.topic).await?);
    }
    let first = settled(&members.iter().collect::<Vec<_>>(), total).await?;
    println!(
        "rebalance: {} members own {total} partitions {:.1} ms after joining",
        args.members,
        ms(first)
    );
    let (mut leave_h, mut join_h) = (histogram(), histogram());
    for round in 0..args.rounds {
        // One member leaves: time until the rest own everything.
        let leaving = members.remove(0);
        let t0 = Instant::now();
        leaving.leave.store(true, Ordering::Relaxed);
        settled(&members.iter().collect::<Vec<_>>(), total).await?;
        let left = t0.elapsed();
        leaving.task.await??;
        // It comes back: time until it owns its share again.
        let t1 = Instant::now();
        members.push(start_member(cli, &group, &args.topic).await?);
        settled(&members.iter().collect::<Vec<_>>(), total).await?;
        let joined = t1.elapsed();
        eprintln!(
            "round {round}: leave {:.1} ms, join {:.1} ms",
            ms(left),
            ms(joined)
        );
        leave_h.saturating_record(left.as_micros() as u64);
        join_h.saturating_record(joined.as_micros() as u64);
    }
    for m in &members {
        m.leave.store(true, Ordering::Relaxed);
    }
    for m in members {
        m.task.await??;
    }
    let p = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "rebalance after a member leaves ({} members, {total} partitions, {} rounds): p50 {:.1} ms, max {:.1} ms",
        args.members,
        args.rounds,
        p(&leave_h, 0.5),
        leave_h.max() as f64 / 1000.0
    );
    println!(
        "rebalance after a member joins: p50 {:.1} ms, max {:.1} ms",
        p(&join_h, 0.5),
        join_h.max() as f64 / 1000.0
    );
    Ok(())
}

pub async fn commits(cli: &Cli, args: &BenchArgs) -> Result<()> {
    let client = crate::cli::connect(cli).await?;
    let mut consumer = client.consumer(consumer_config());
    let options = GroupOptions {
        auto_commit_interval: None,
        ..GroupOptions::default()
    };
    consumer
        .subscribe(&group_name("commit"), &[&args.topic], options)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let total = partition_count(cli, &args.topic).await?;
    while consumer.assignment().len() < total {
        if Instant::now() > deadline {
            bail!("the consumer was not assigned the topic's partitions within 30 s");
        }
        consumer.poll().await?;
    }
    let owned = consumer.assignment();
    let mut hist = histogram();
    let start = Instant::now();
    for i in 0..args.count {
        let (topic, partition) = &owned[i as usize % owned.len()];
        let t = Instant::now();
        consumer
            .commit_offsets(&[(topic.clone(), *partition, i)])
            .await?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "commit: {} synchronous commits in {secs:.2} s: {:.0} commits/s; latency ms p50 {:.3}, p99 {:.3}, max {:.3}",
        args.count,
        args.count as f64 / secs,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
    consumer.close().await?;
    Ok(())
}

async fn partition_count(cli: &Cli, topic: &str) -> Result<usize> {
    let client = crate::cli::connect(cli).await?;
    Ok(client.admin().describe_topic(topic).await?.partitions.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
