//! Client subcommands: topic administration, produce from stdin, consume to stdout.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use std::collections::BTreeMap;

use sluice_client::{
    Client, Consumer, ConsumerConfig, FetchTransform, GroupOptions, OffsetReset, ProducerConfig,
    ProducerRecord, SeekTo,
};
use sluice_proto::{
    Request, ResetOffsetsRequest, ResetTo, ResponseBody, TopicConfig, TopicDescription,
};

use crate::acks::AckCollector;
use crate::cli::{ConsumeArgs, GroupCommand, ProduceArgs, TopicCommand};
use crate::format::Format;

pub async fn topic(client: &Client, cmd: &TopicCommand) -> Result<ExitCode> {
    let admin = client.admin();
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            min_insync_replicas,
            unclean_leader_election,
            retention_ms,
            retention_bytes,
            durability,
            max_batch_bytes,
            partitioner,
            partitioner_config,
        } => {
            let config = TopicConfig {
                retention_ms: *retention_ms,
                retention_bytes: *retention_bytes,
                durability: *durability,
                max_batch_bytes: *max_batch_bytes,
                partitioner: partitioner.clone(),
                partitioner_config: partitioner_config.clone(),
            };
            // Thousands of partitions take a while to place and create: say so meanwhile.
            let waiting = crate::progress::spinner(
                &format!("creating {name} with {partitions} partitions"),
                *partitions >= 1000,
            );
            let t = if *replication_factor == 1 {
                admin.create_topic(name, *partitions, config).await
            } else {
                admin
                    .create_topic_replicated(name, *partitions, *replication_factor, config)
                    .await
            };
            waiting.finish_and_clear();
            let t = t?;
            println!(
                "created topic {} with {} partition(s)",
                t.name,
                t.partitions.len()
            );
            if min_insync_replicas.is_some() || *unclean_leader_election {
                let r = admin
                    .alter_topic_replication(
                        name,
                        *min_insync_replicas,
                        unclean_leader_election.then_some(true),
                    )
                    .await?;
                print_replication(&r);
            }
        }
        TopicCommand::Alter {
            name,
            min_insync_replicas,
            unclean_leader_election,
        } => {
            if min_insync_replicas.is_none() && unclean_leader_election.is_none() {
                bail!(
                    "say what to change: --min-insync-replicas N, --unclean-leader-election true|false"
                );
            }
            let r = admin
                .alter_topic_replication(name, *min_insync_replicas, *unclean_leader_election)
                .await?;
            print_replication(&r);
        }
        TopicCommand::SetPartitioner {
            name,
            plugin,
            none,
            config,
        } => {
            if plugin.is_none() && !none {
                bail!("name a partitioner plugin, or --none to go back to the key hash");
            }
            let request = Request::SetPartitioner {
                topic: name.clone(),
                plugin: plugin.clone(),
                config: config.clone(),
            };
            match client.request(request, Bytes::new()).await? {
                (ResponseBody::Topic(t), _) => println!(
                    "topic {} partitioner: {}",
                    t.name,
                    t.config.partitioner.as_deref().unwrap_or("key hash")
                ),
                (other, _) => bail!("unexpected answer: {other:?}"),
            }
        }
        TopicCommand::List => {
            for t in admin.list_topics().await? {
                println!("{}\t{} partition(s)", t.name, t.partitions.len());
            }
        }
        TopicCommand::Describe { name } => {
            let described = admin.describe_topic(name).await?;
            let meta = client.metadata(Some(vec![name.clone()])).await?;
            let placement = meta
                .topics
                .into_iter()
                .find(|t| &t.name == name)
                .map(|t| t.partitions)
                .unwrap_or_default();
            // Brokers older than protocol version 5 do not know the settings.
            let replication = admin.describe_topic_replication(name).await.ok();
            print_description(&described, &placement, replication.as_ref());
        }
        TopicCommand::Delete { name, force: false } => {
            let t = admin.delete_topic(name).await?;
            println!("deleted topic {}", t.name);
        }
        TopicCommand::Delete { name, force: true } => {
            // Listed first only to say which pipelines went; the broker decides which to delete.
            let users: Vec<String> =
                match client.request(Request::ListPipelines, Bytes::new()).await? {
                    (ResponseBody::Pipelines(ps), _) => ps
                        .into_iter()
                        .filter(|p| &p.from == name || &p.to == name)
                        .map(|p| p.name)
                        .collect(),
                    (other, _) => bail!("unexpected answer from the broker: {other:?}"),
                };
            let connectors: Vec<String> =
                match client.request(Request::ListConnectors, Bytes::new()).await {
                    Ok((ResponseBody::Connectors(cs), _)) => cs
                        .into_iter()
                        .filter(|c| c.topics.contains(name))
                        .map(|c| c.name)
                        .collect(),
                    // A broker older than protocol version 6 has no connectors.
                    _ => Vec::new(),
                };
            let t = admin.delete_topic_forced(name).await?;
            for p in users {
                println!("deleted pipeline {p}");
            }
            for c in connectors {
                println!("deleted connector {c}");
            }
            println!("deleted topic {}", t.name);
        }
        TopicCommand::AddPartitions { name, count } => {
            let t = admin.add_partitions(name, *count).await?;
            println!(
                "topic {} now has {} partition(s)",
                t.name,
                t.partitions.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_replication(r: &sluice_proto::TopicReplication) {
    println!(
        "replication: {} replica(s), min.insync.replicas={}, unclean.leader.election={}",
        r.replication_factor,
        r.min_insync_replicas,
        if r.unclean_leader_election {
            "on"
        } else {
            "off"
        }
    );
}

fn print_description(
    t: &TopicDescription,
    placement: &[sluice_proto::PartitionMetadata],
    replication: Option<&sluice_proto::TopicReplication>,
) {
    let c = &t.config;
    let opt = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
    println!(
        "topic {} (id {}): {} partition(s), retention.ms={}, retention.bytes={}, durability={}, partitioner={}",
        t.name,
        t.topic_id,
        t.partitions.len(),
        opt(c.retention_ms),
        opt(c.retention_bytes),
        c.durability,
        c.partitioner.as_deref().unwrap_or("key-hash")
    );
    if let Some(r) = replication {
        print_replication(r);
    }
    println!("partition\tleader\tepoch\treplicas\tin_sync\tlog_start\tlog_end\tsize_bytes");
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    for p in &t.partitions {
        let leader = p.leader.map_or("none".to_string(), |l| l.to_string());
        let (replicas, in_sync) = placement
            .iter()
            .find(|m| m.partition == p.partition)
            .map_or(("-".into(), "-".into()), |m| {
                (list(&m.replicas), list(&m.in_sync))
            });
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.partition,
            leader,
            p.leader_epoch,
            replicas,
            in_sync,
            p.log_start,
            p.log_end,
            p.size_bytes
        );
    }
}

pub async fn produce(client: &Client, args: &ProduceArgs) -> Result<ExitCode> {
    // Fail early, with the broker's message, on an unknown topic or partition.
    let t = client.admin().describe_topic(&args.topic).await?;
    if let Some(p) = args.partition
        && p as usize >= t.partitions.len()
    {
        bail!(
            "topic {:?} has partitions 0..{}; there is no partition {p}",
            t.name,
            t.partitions.len()
        );
    }
    let producer = client.producer(ProducerConfig {
        acks: args.acks,
        compression: args.compression,
        ..ProducerConfig::default()
    });
    // A file on stdin has a size to show progress against; a pipe has not.
    let stdin_size = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| std::fs::File::from(fd).metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let progress =
        crate::progress::bytes_or_count(stdin_size, &format!("producing to {}", args.topic));
    // stdin is read on a blocking thread and handed over line by line.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1024);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut line = Vec::new();
            match lock.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let sep = args.key_separator.as_deref().map(str::as_bytes);
    let acks = AckCollector::new(100_000, || {});
    let mut sent = 0u64;
    while let Some(line) = rx.recv().await {
        let line = line.context("reading standard input")?;
        progress.inc(if stdin_size.is_some() {
            line.len() as u64 + 1
        } else {
            1
        });
        let mut record = match sep.and_then(|s| find(&line, s).map(|i| (i, s.len()))) {
            Some((i, n)) => {
                ProducerRecord::new(&args.topic, Bytes::copy_from_slice(&line[i + n..]))
                    .with_key(Bytes::copy_from_slice(&line[..i]))
            }
            None => ProducerRecord::new(&args.topic, Bytes::from(line)),
        };
        if let Some(p) = args.partition {
            record = record.with_partition(p);
        }
        acks.push(producer.send(record).await?, Instant::now())
            .await;
        sent += 1;
    }
    producer.flush().await?;
    progress.finish_and_clear();
    let tally = acks.finish().await;
    if let Some(e) = tally.first_error {
        bail!(
            "{} of {sent} record(s) were not acknowledged; first error: {e}",
            tally.failed
        );
    }
    eprintln!("produced {sent} record(s) to {}", args.topic);
    Ok(ExitCode::SUCCESS)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub async fn consume(client: &Client, args: &ConsumeArgs) -> Result<ExitCode> {
    let format: Format = args.format.parse().map_err(anyhow::Error::msg)?;
    let start = if args.from_beginning {
        SeekTo::Earliest
    } else if let Some(o) = args.offset {
        SeekTo::Offset(o)
    } else if let Some(t) = &args.from_time {
        let ts = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .with_context(|| {
                format!("--from-time {t:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z")
            })?;
        SeekTo::Timestamp((ts.unix_timestamp_nanos() / 1_000_000) as i64)
    } else {
        SeekTo::Latest
    };
    let t = client.admin().describe_topic(&args.topic).await?;
    if let Some(group) = &args.group {
        let reset = match args.reset.as_str() {
            "earliest" => OffsetReset::Earliest,
            "error" => OffsetReset::Error,
            _ => OffsetReset::Latest,
        };
        let reset = if args.from_beginning {
            OffsetReset::Earliest
        } else {
            reset
        };
        let mut consumer = client.consumer(ConsumerConfig {
            reset,
            transform: transform(args),
            ..ConsumerConfig::default()
        });
        let options = GroupOptions {
            session_timeout: Duration::from_millis(args.session_timeout_ms),
            assignor: args.assignor.clone(),
            instance_id: args.instance_id.clone(),
            // Offsets are committed right after the records are printed, below.
            auto_commit_interval: None,
            ..GroupOptions::default()
        };
        consumer.subscribe(group, &[&args.topic], options).await?;
        let result = print_records(&mut consumer, args, &format, true).await;
        consumer.close().await?;
        return result;
    }
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p as usize >= t.partitions.len() => {
            bail!(
                "topic {:?} has partitions 0..{}; there is no partition {p}",
                t.name,
                t.partitions.len()
            )
        }
        Some(p) => vec![p],
        None => (0..t.partitions.len() as u32).collect(),
    };
    // An explicit --offset below the log start is an error the user should see; otherwise a
    // position that retention overtakes moves to the earliest offset.
    let reset = if args.offset.is_some() {
        OffsetReset::Error
    } else {
        OffsetReset::Earliest
    };
    let mut consumer = client.consumer(ConsumerConfig {
        reset,
        transform: transform(args),
        ..ConsumerConfig::default()
    });
    consumer.assign(&args.topic, &partitions).await?;
    for &p in &partitions {
        consumer.seek(&args.topic, p, start).await?;
    }
    print_records(&mut consumer, args, &format, false).await
}

fn transform(args: &ConsumeArgs) -> Option<FetchTransform> {
    args.transform.as_ref().map(|plugin| FetchTransform {
        plugin: plugin.clone(),
        config: args.transform_config.clone(),
    })
}

/// The consume loop: polls, prints, and in a group commits what it printed.
async fn print_records(
    consumer: &mut Consumer,
    args: &ConsumeArgs,
    format: &Format,
    commit: bool,
) -> Result<ExitCode> {
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    // Consuming into a file or a pipe: a count of records on the terminal meanwhile.
    let progress = crate::progress::spinner(
        &format!("records of {} written", args.topic),
        !stdout.is_terminal(),
    );
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        if args.max_messages.is_some_and(|n| printed >= n) {
            break;
        }
        if idle.is_some_and(|d| last_record.elapsed() >= d) {
            break;
        }
        let poll = consumer.poll();
        let records = match idle {
            Some(d) => {
                match tokio::time::timeout(d.saturating_sub(last_record.elapsed()), poll).await {
                    Ok(r) => r?,
                    Err(_) => break,
                }
            }
            None => tokio::select! {
                r = poll => r?,
                _ = tokio::signal::ctrl_c() => break,
            },
        };
        if !records.is_empty() {
            last_record = Instant::now();
        }
        let mut next: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for r in &records {
            if args.max_messages.is_some_and(|n| printed >= n) {
                break;
            }
            format.write(r, &mut out);
            next.insert((r.topic.clone(), r.partition), r.offset + 1);
            printed += 1;
        }
        {
            let mut lock = stdout.lock();
            if let Err(e) = lock.write_all(&out).and_then(|_| lock.flush()) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(e).context("writing to standard output");
            }
        }
        out.clear();
        progress.set_position(printed);
        if commit && !next.is_empty() {
            let offsets: Vec<(String, u32, u64)> =
                next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
            consumer.commit_offsets(&offsets).await?;
        }
    }
    progress.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

pub async fn group(client: &Client, cmd: &GroupCommand) -> Result<ExitCode> {
    match cmd {
        GroupCommand::List => {
            let groups = match client.request(Request::ListGroups, Bytes::new()).await? {
                (ResponseBody::Groups(g), _) => g,
                (other, _) => bail!("unexpected answer to ListGroups: {other:?}"),
            };
            for g in groups {
                println!(
                    "{}\t{} member(s)\tepoch {}",
                    g.group,
                    g.members.len(),
                    g.epoch
                );
            }
        }
        GroupCommand::Describe { group } => {
            let g = match client
                .request(
                    Request::DescribeGroup {
                        group: group.clone(),
                    },
                    Bytes::new(),
                )
                .await?
            {
                (ResponseBody::Group(g), _) => g,
                (other, _) => bail!("unexpected answer to DescribeGroup: {other:?}"),
            };
            println!(
                "group {} (epoch {}, assignor {}): {} member(s)",
                g.group,
                g.epoch,
                g.assignor,
                g.members.len()
            );
            for m in &g.members {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(move |p| format!("{}/{p}", t.topic)))
                    .collect();
                println!(
                    "member {} client={} instance={} epoch={} partitions=[{}]",
                    m.member_id,
                    m.client_id,
                    m.instance_id.as_deref().unwrap_or("-"),
                    m.member_epoch,
                    parts.join(",")
                );
            }
            println!("topic\tpartition\tcommitted\tlog_end\tlag\towner");
            for p in &g.partitions {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    p.topic,
                    p.partition,
                    p.committed.map_or("-".to_string(), |o| o.to_string()),
                    p.log_end,
                    p.lag,
                    p.owner.as_deref().unwrap_or("-")
                );
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_time,
        } => {
            let to = if *to_earliest {
                ResetTo::Earliest
            } else if *to_latest {
                ResetTo::Latest
            } else if let Some(o) = to_offset {
                ResetTo::Offset(*o)
            } else if let Some(t) = to_time {
                let ts = time::OffsetDateTime::parse(
                    t,
                    &time::format_description::well_known::Rfc3339,
                )
                .with_context(|| {
                    format!("--to-time {t:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z")
                })?;
                ResetTo::Timestamp((ts.unix_timestamp_nanos() / 1_000_000) as i64)
            } else {
                bail!(
                    "say where to: --to-earliest, --to-latest, --to-offset N or --to-time RFC3339"
                );
            };
            let request = Request::ResetOffsets(ResetOffsetsRequest {
                group: group.clone(),
                topic: topic.clone(),
                to,
            });
            let offsets = match client.request(request, Bytes::new()).await? {
                (ResponseBody::GroupOffsets(o), _) => o,
                (other, _) => bail!("unexpected answer to ResetOffsets: {other:?}"),
            };
            for o in offsets {
                println!("{}\t{}\t{}", o.topic, o.partition, o.offset);
            }
        }
        GroupCommand::Delete { group } => {
            match client
                .request(
                    Request::DeleteGroup {
                        group: group.clone(),
                    },
                    Bytes::new(),
                )
                .await?
            {
                (ResponseBody::Group(g), _) => println!("deleted group {}", g.group),
                (other, _) => bail!("unexpected answer to DeleteGroup: {other:?}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
