//! `sluice bench`: throughput and latency against a running broker.
//!
//! - `produce`: P producers send N records of S bytes; latency is send → acknowledgement.
//!   Paced three ways: a window of unacknowledged records (default), a closed loop of whole
//!   batches (`--in-flight N --batch-records M`, as iggy-bench and the OpenMessaging Benchmark
//!   run), or an open loop at a fixed `--rate` (latency from each record's scheduled time, or
//!   from the timer tick that released it when the 1 ms timer woke late).
//! - `consume`: fills the topic (untimed), then one consumer reads every record back.
//! - `e2e`: producers and a consumer run together; latency is send → received by the consumer.
//! - `pipeline`: the cost of a pipeline (`--plugin`, default `identity-map`, deployed
//!   beforehand): plain produce, then the same produce into a topic a pipeline runs on, until
//!   the pipeline has caught up (see `bench_pipeline`).
//! - `metadata`: topic creates and deletes per second (see `bench_metadata`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use sluice_client::{Client, ClientError, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
use sluice_proto::{Acks, Compression, ErrorCode, TopicConfig};

use crate::acks::{AckCollector, histogram};
use crate::cli::Cli;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    Produce,
    Consume,
    E2e,
    /// Consumer group: how long until the others own everything when a member leaves.
    Rebalance,
    /// Consumer group: offset commits per second and their latency.
    Commit,
    /// Throughput of produce with and without a pipeline running on the topic.
    Pipeline,
    /// Metadata changes per second: `--count` topic creates then deletes, `--producers` at a
    /// time (each one metadata log entry).
    Metadata,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    pub mode: BenchMode,
    /// Topic to use; created when missing.
    #[arg(long, default_value = "sluice-bench")]
    pub topic: String,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Records in all (split across producers).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Largest producer batch, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub batch_size: usize,
    /// How long a producer waits to fill a batch, ms.
    #[arg(long, default_value_t = 2)]
    pub linger_ms: u64,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Replicas of each partition when the bench creates its topic (a cluster).
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u16,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumers (consume, e2e), each with its own connection and its share of the
    /// partitions.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    #[arg(long, default_value = "all", value_parser = |s: &str| s.parse::<Acks>())]
    pub acks: Acks,
    #[arg(long, default_value = "none", value_parser = |s: &str| s.parse::<Compression>())]
    pub compression: Compression,
    /// Records with keys (spread by key hash) instead of sticky keyless partitioning.
    #[arg(long)]
    pub keyed: bool,
    /// Most unacknowledged records per producer; bounds queueing, and so latency.
    #[arg(long, default_value_t = 20_000)]
    pub window: usize,
    /// Open loop: send this many records per second in all (split across producers) on a
    /// fixed schedule, whatever the answers; latency counts from each record's scheduled
    /// time (or the later wake-up of the pacer's 1 ms timer that released it), so a stall
    /// shows in it (no coordinated omission). Unset: as fast as the window lets (closed loop).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Batches in flight per partition (the SDK's `max_in_flight_per_partition`; at most 5
    /// with idempotence). Unset: the SDK's default.
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Closed loop of whole batches, as iggy-bench and the OpenMessaging Benchmark run: each
    /// producer keeps `--in-flight` batches of this many records outstanding (sets the window
    /// to their product and the linger to 0, so a batch goes as soon as a slot frees).
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// Group members (rebalance).
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Rounds of leave-and-rejoin (rebalance).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// A deployed transform plugin (pipeline).
    #[arg(long, default_value = "identity-map")]
    pub plugin: String,
}

pub async fn run(cli: &Cli, args: &BenchArgs) -> Result<std::process::ExitCode> {
    if args.record_size < 8 {
        bail!(
            "--record-size must be at least 8 bytes (the bench stamps each record with its send time)"
        );
    }
    if args.count == 0 || args.producers == 0 || args.partitions == 0 {
        bail!("--count, --producers and --partitions must be positive");
    }
    let admin_client = crate::cli::connect(cli).await?;
    let created = if args.replication_factor > 1 {
        admin_client
            .admin()
            .create_topic_replicated(
                &args.topic,
                args.partitions,
                args.replication_factor,
                TopicConfig::default(),
            )
            .await
    } else {
        admin_client
            .admin()
            .create_topic(&args.topic, args.partitions, TopicConfig::default())
            .await
    };
    match created {
        Ok(_) => {}
        Err(ClientError::Broker(e)) if e.code == ErrorCode::TopicAlreadyExists => {}
        Err(e) => return Err(e).context("creating the bench topic"),
    }
    if args.rate == Some(0) || args.in_flight == Some(0) || args.batch_records == Some(0) {
        bail!("--rate, --in-flight and --batch-records must be positive");
    }
    if args.rate.is_some() && args.batch_records.is_some() {
        bail!("--rate (open loop) and --batch-records (closed loop) do not go together");
    }
    let pacing = match (args.rate, args.batch_records) {
        (Some(r), _) => format!("open loop at {r} records/s"),
        (None, Some(m)) => format!(
            "closed loop: {} batch(es) of {m} records in flight",
            args.in_flight
                .unwrap_or(ProducerConfig::default().max_in_flight_per_partition)
        ),
        (None, None) => format!("window {} records", args.window),
    };
    println!(
        "bench {:?}: {} records of {} B, {} producer(s), {} partition(s) × {} replica(s), acks={:?}, compression={:?}, batch {} B, linger {} ms, {pacing}",
        args.mode,
        args.count,
        args.record_size,
        args.producers,
        args.partitions,
        args.replication_factor,
        args.acks,
        args.compression,
        args.batch_size,
        args.linger_ms
    );
    match args.mode {
        BenchMode::Produce => {
            let report = produce(cli, args, true).await?;
            report.print("produce");
        }
        BenchMode::Consume => {
            let start = list_latest(&admin_client, &args.topic).await?;
            produce(cli, args, false).await?;
            let report = consume(cli, args, start, None).await?;
            report.print("consume");
        }
        BenchMode::E2e => {
            let start = list_latest(&admin_client, &args.topic).await?;
            let epoch = Instant::now();
            let (producing, consuming) = tokio::join!(
                produce_with_epoch(cli, args, false, epoch),
                consume(cli, args, start, Some(epoch))
            );
            producing?;
            consuming?.print("end-to-end");
        }
        BenchMode::Rebalance => crate::bench_groups::rebalance(cli, args).await?,
        BenchMode::Commit => crate::bench_groups::commits(cli, args).await?,
        BenchMode::Pipeline => crate::bench_pipeline::run(cli, args, &admin_client).await?,
        BenchMode::Metadata => crate::bench_metadata::run(&admin_client, args).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn list_latest(client: &Client, topic: &str) -> Result<Vec<u64>> {
    let t = client.admin().describe_topic(topic).await?;
    Ok(t.partitions.iter().map(|p| p.high_watermark).collect())
}

pub(crate) struct Report {
    pub(crate) records: u64,
    bytes: u64,
    pub(crate) elapsed: Duration,
    latency_us: Option<Histogram<u64>>,
}

impl Report {
    pub(crate) fn print(&self, what: &str) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{what}: {} records in {:.2} s: {:.0} records/s, {:.2} MB/s",
            self.records,
            secs,
            self.records as f64 / secs,
            self.bytes as f64 / secs / 1e6
        );
        if let Some(h) = &self.latency_us {
            let ms = |v: u64| v as f64 / 1000.0;
            println!(
                "{what} latency ms: p50 {:.3}, p99 {:.3}, p999 {:.3}, max {:.3}",
                ms(h.value_at_quantile(0.50)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max())
            );
        }
    }
}

fn progress(label: &'static str, done: Arc<AtomicU64>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "{label}: {n}/{total} records, {:.0} records/s",
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    })
}

pub(crate) async fn produce(cli: &Cli, args: &BenchArgs, measure: bool) -> Result<Report> {
    produce_with_epoch(cli, args, measure, Instant::now()).await
}

/// Runs the producers. Each record's first 8 bytes carry its send time in µs since `epoch`,
/// so an end-to-end consumer can measure latency.
async fn produce_with_epoch(
    cli: &Cli,
    args: &BenchArgs,
    measure: bool,
    epoch: Instant,
) -> Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress("produce", done.clone(), args.count);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.producers {
        let client = crate::cli::connect(cli).await?;
        let n = args.count / u64::from(args.producers)
            + u64::from(u64::from(i) < args.count % u64::from(args.producers));
        let (topic, size, keyed, done) = (
            args.topic.clone(),
            args.record_size,
            args.keyed,
            done.clone(),
        );
        let defaults = ProducerConfig::default();
        let in_flight = args
            .in_flight
            .unwrap_or(defaults.max_in_flight_per_partition);
        let (window, linger) = match args.batch_records {
            Some(m) => (m.max(1) * in_flight, Duration::ZERO),
            None => (args.window, Duration::from_millis(args.linger_ms)),
        };
        let producer = client.producer(ProducerConfig {
            acks: args.acks,
            compression: args.compression,
            max_batch_bytes: args.batch_size,
            linger,
            max_in_flight_per_partition: in_flight,
            ..defaults
        });
        // Open loop: record `seq` of this producer is due at `start + seq / rate`.
        let interval = args
            .rate
            .map(|r| Duration::from_secs_f64(f64::from(args.producers) / r.max(1) as f64));
        tasks.push(tokio::spawn(async move {
            let client = client;
            let acks = AckCollector::new(window, move || {
                done.fetch_add(1, Ordering::Relaxed);
            });
            // Incompressible-ish filler so compression figures are honest.
            let filler: Vec<u8> = (0..size)
                .map(|j| (j as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
                .collect();
            let t0 = Instant::now();
            // When the pacer's timer last released records. Tokio's timer has a resolution of
            // 1 ms: a sleep until a record is due ends up to a millisecond late, and the
            // records due meanwhile go with it. That lateness is the bench's, not the system's,
            // so a record's latency counts from when it was due or from the tick that released
            // it, whichever is later. A producer held back by the system (send waiting for
            // buffer room) does not sleep, and its records count from when they were due.
            let mut released = t0;
            for seq in 0..n {
                let due = match interval {
                    Some(every) => {
                        let due = t0 + every.mul_f64(seq as f64);
                        if due > Instant::now() {
                            tokio::time::sleep_until(due.into()).await;
                            released = Instant::now();
                        }
                        due.max(released)
                    }
                    None => Instant::now(),
                };
                let mut value = filler.clone();
                let sent_us = due.saturating_duration_since(epoch).as_micros() as u64;
                value[..8].copy_from_slice(&sent_us.to_le_bytes());
                let mut record = ProducerRecord::new(&topic, Bytes::from(value));
                if keyed {
                    record = record.with_key(Bytes::from(format!("key-{i}-{}", seq % 10_000)));
                }
                acks.push(producer.send(record).await?, due).await;
            }
            producer.flush().await?;
            let held = client.throttled();
            if held.answers > 0 {
                eprintln!(
                    "producer {i}: {} answers held back by the broker's quota, {:.1} s in all",
                    held.answers,
                    held.total.as_secs_f64()
                );
            }
            let tally = acks.finish().await;
            match tally.first_error {
                Some(e) => Err(e),
                None => Ok(tally.latency_us),
            }
        }));
    }
    let mut hist = histogram();
    for t in tasks {
        hist.add(t.await.context("producer task")??)
            .expect("same histogram bounds");
    }
    let elapsed = start.elapsed();
    ticker.abort();
    Ok(Report {
        records: args.count,
        bytes: args.count * args.record_size as u64,
        elapsed,
        latency_us: measure.then_some(hist),
    })
}

/// Reads `args.count` records from `start_at` (a start offset per partition) with
/// `args.consumers` consumers, each on its own connection and with its share of the
/// partitions; with `epoch`, latency from the send time stamped in each record.
async fn consume(
    cli: &Cli,
    args: &BenchArgs,
    start_at: Vec<u64>,
    epoch: Option<Instant>,
) -> Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress("consume", done.clone(), args.count);
    let consumers = args.consumers.max(1) as usize;
    let mut tasks = Vec::new();
    for k in 0..consumers {
        let mine: Vec<(u32, u64)> = start_at
            .iter()
            .enumerate()
            .filter(|(p, _)| p % consumers == k)
            .map(|(p, &o)| (p as u32, o))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let client = crate::cli::connect(cli).await?;
        let (topic, count, done) = (args.topic.clone(), args.count, done.clone());
        tasks.push(tokio::spawn(async move {
            consume_share(&client, &topic, mine, count, done, epoch).await
        }));
    }
    let (mut hist, mut bytes, mut first) = (histogram(), 0u64, None::<Instant>);
    for t in tasks {
        let share = t.await.context("consumer task")??;
        hist.add(share.latency_us).expect("same histogram bounds");
        bytes += share.bytes;
        first = match (first, share.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    ticker.abort();
    Ok(Report {
        records: done.load(Ordering::Relaxed),
        bytes,
        elapsed: first.map_or(Duration::ZERO, |s| s.elapsed()),
        latency_us: epoch.map(|_| hist),
    })
}

/// What one consumer of [`consume`] read.
struct Share {
    latency_us: Histogram<u64>,
    bytes: u64,
    /// When its first records arrived.
    first: Option<Instant>,
}

/// One consumer's part: its partitions from their start offsets, until all consumers together
/// (`done`) have read `count` records.
async fn consume_share(
    client: &Client,
    topic: &str,
    partitions: Vec<(u32, u64)>,
    count: u64,
    done: Arc<AtomicU64>,
    epoch: Option<Instant>,
) -> Result<Share> {
    let mut consumer = client.consumer(ConsumerConfig::default());
    let ids: Vec<u32> = partitions.iter().map(|(p, _)| *p).collect();
    consumer.assign(topic, &ids).await?;
    for (p, o) in &partitions {
        consumer.seek(topic, *p, SeekTo::Offset(*o)).await?;
    }
    let mut share = Share {
        latency_us: histogram(),
        bytes: 0,
        first: None,
    };
    let mut last_progress = Instant::now();
    while done.load(Ordering::Relaxed) < count {
        // Bounded, so a consumer whose partitions are drained notices the others finished.
        let records = match tokio::time::timeout(Duration::from_millis(200), consumer.poll()).await
        {
            Ok(r) => r?,
            Err(_) => Vec::new(),
        };
        if records.is_empty() {
            if last_progress.elapsed() > Duration::from_secs(30) {
                bail!(
                    "consumer saw no records for 30 s after {} of {count}",
                    done.load(Ordering::Relaxed)
                );
            }
            continue;
        }
        last_progress = Instant::now();
        share.first.get_or_insert_with(Instant::now);
        for r in &records {
            let v = r.value.as_deref().unwrap_or_default();
            share.bytes += v.len() as u64;
            if let (Some(epoch), Some(stamp)) = (epoch, v.get(..8)) {
                let sent = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                share.latency_us.saturating_record(
                    (epoch.elapsed().as_micros() as u64)
                        .saturating_sub(sent)
                        .max(1),
                );
            }
        }
        done.fetch_add(records.len() as u64, Ordering::Relaxed);
    }
    Ok(share)
}
