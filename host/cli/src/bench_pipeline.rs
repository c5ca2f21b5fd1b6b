//! `sluice bench pipeline`: what a pipeline costs the producers.
//!
//! 1. Plain produce of `--count` records into `TOPIC-plain` (no pipeline).
//! 2. A pipeline `TOPIC -> [--plugin] -> TOPIC-out` is created (start: latest), and the same
//!    produce runs into `TOPIC`; measured until the producers are acknowledged, and until the
//!    pipeline has processed every record (lag 0).
//! 3. The pipeline is deleted.
//!
//! The plugin must be deployed first (`sluice plugin deploy identity-map identity_map.wasm`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use sluice_client::{Client, ClientError};
use sluice_proto::{
    CreatePipelineRequest, ErrorCode, PipelineDescription, PipelineStart, Request, ResponseBody,
    TopicConfig,
};

use crate::bench::{BenchArgs, produce};
use crate::cli::Cli;

async fn create_topic(client: &Client, name: &str, partitions: u32) -> Result<()> {
    match client
        .admin()
        .create_topic(name, partitions, TopicConfig::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Broker(e)) if e.code == ErrorCode::TopicAlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating topic {name}")),
    }
}

async fn describe(client: &Client, name: &str) -> Result<PipelineDescription> {
    match client
        .request(
            Request::DescribePipeline {
                name: name.to_owned(),
            },
            Bytes::new(),
        )
        .await?
        .0
    {
        ResponseBody::Pipeline(p) => Ok(*p),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

pub async fn run(cli: &Cli, args: &BenchArgs, admin: &Client) -> Result<()> {
    let plain_topic = format!("{}-plain", args.topic);
    let out_topic = format!("{}-out", args.topic);
    create_topic(admin, &plain_topic, args.partitions).await?;
    create_topic(admin, &out_topic, args.partitions).await?;

    let plain_args = BenchArgs {
        topic: plain_topic,
        plugin: args.plugin.clone(),
        ..*args
    };
    let plain = produce(cli, &plain_args, true).await?;
    plain.print("plain produce");

    let name = format!("bench-{}", std::process::id());
    let req = CreatePipelineRequest {
        name: name.clone(),
        plugins: vec![args.plugin.clone()],
        from: args.topic.clone(),
        to: out_topic,
        config: vec![],
        start: PipelineStart::Latest,
        max_call_ms: None,
        max_memory_bytes: None,
    };
    admin
        .request(Request::CreatePipeline(req), Bytes::new())
        .await
        .with_context(|| {
            format!(
                "creating the pipeline (is plugin {:?} deployed?)",
                args.plugin
            )
        })?;
    let before: u64 = describe(admin, &name)
        .await?
        .partitions
        .iter()
        .map(|p| p.checkpoint)
        .sum();
    let start = Instant::now();
    let with = produce(cli, args, true).await;
    let result = match with {
        Ok(with) => {
            with.print("produce with a pipeline running");
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let d = describe(admin, &name).await?;
                if d.status == "failed" {
                    bail!("the pipeline failed: {}", d.error.unwrap_or_default());
                }
                let done: u64 = d.partitions.iter().map(|p| p.checkpoint).sum();
                if done >= before + args.count && d.partitions.iter().all(|p| p.lag == 0) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the pipeline did not catch up within 10 minutes");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let caught_up = start.elapsed();
            let rate = |d: Duration| args.count as f64 / d.as_secs_f64().max(1e-9);
            let plain_rate = rate(plain.elapsed);
            println!(
                "pipeline ({}) caught up: {} records in {:.2} s: {:.0} records/s end to end",
                args.plugin,
                args.count,
                caught_up.as_secs_f64(),
                rate(caught_up)
            );
            println!(
                "cost versus plain produce: producers {:+.1}%, end to end {:+.1}%",
                (rate(with.elapsed) / plain_rate - 1.0) * 100.0,
                (rate(caught_up) / plain_rate - 1.0) * 100.0
            );
            Ok(())
        }
        Err(e) => Err(e),
    };
    admin
        .request(Request::DeletePipeline { name }, Bytes::new())
        .await
        .context("deleting the bench pipeline")?;
    result
}
