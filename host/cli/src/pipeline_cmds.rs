//! `sluice pipeline`: create, list, describe, pause, resume and delete pipelines (transform
//! plugins run by the broker from one topic to another).

use std::process::ExitCode;

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use sluice_client::Client;
use sluice_proto::{
    CreatePipelineRequest, PipelineDescription, PipelineStart, Request, ResponseBody,
};

use crate::cli::parse_kv;

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Create a pipeline: every committed record of --from goes through the plugins, in order,
    /// and what they return is written to --to. Starts running at once.
    Create {
        name: String,
        /// A deployed transform plugin (repeat for a chain, applied in the order given).
        #[arg(long = "plugin", required = true)]
        plugins: Vec<String>,
        /// Input topic.
        #[arg(long)]
        from: String,
        /// Output topic.
        #[arg(long)]
        to: String,
        /// Plugin configuration, KEY=VALUE (repeatable); every plugin of the chain gets it.
        #[arg(long = "config", value_parser = parse_kv)]
        config: Vec<(String, String)>,
        /// earliest: every record still stored; latest: only records produced from now on.
        #[arg(long, default_value = "earliest", value_parser = ["earliest", "latest"])]
        start: String,
        /// Time limit of one plugin call, in ms (default 2000).
        #[arg(long)]
        max_call_ms: Option<u64>,
        /// Memory limit of one plugin instance, in bytes (default 64 MiB).
        #[arg(long)]
        max_memory_bytes: Option<u64>,
    },
    /// List pipelines with their status.
    List,
    /// Status, last error, and checkpoint, high watermark and lag per input partition.
    Describe { name: String },
    /// Stop a pipeline's runners; it stays paused across broker restarts.
    Pause { name: String },
    /// Restart a paused or failed pipeline from its checkpoints.
    Resume { name: String },
    /// Stop and remove a pipeline (its output stays in the output topic).
    Delete { name: String },
}

async fn request(client: &Client, request: Request) -> Result<ResponseBody> {
    Ok(client.request(request, Bytes::new()).await?.0)
}

fn one(body: ResponseBody) -> Result<PipelineDescription> {
    match body {
        ResponseBody::Pipeline(p) => Ok(*p),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

pub async fn run(client: &Client, cmd: &PipelineCommand) -> Result<ExitCode> {
    match cmd {
        PipelineCommand::Create {
            name,
            plugins,
            from,
            to,
            config,
            start,
            max_call_ms,
            max_memory_bytes,
        } => {
            let req = CreatePipelineRequest {
                name: name.clone(),
                plugins: plugins.clone(),
                from: from.clone(),
                to: to.clone(),
                config: config.clone(),
                start: if start == "latest" {
                    PipelineStart::Latest
                } else {
                    PipelineStart::Earliest
                },
                max_call_ms: *max_call_ms,
                max_memory_bytes: *max_memory_bytes,
            };
            let p = one(request(client, Request::CreatePipeline(req)).await?)?;
            println!(
                "created pipeline {}: {} -> [{}] -> {}",
                p.name,
                p.from,
                p.plugins.join(" -> "),
                p.to
            );
        }
        PipelineCommand::List => match request(client, Request::ListPipelines).await? {
            ResponseBody::Pipelines(ps) => {
                for p in ps {
                    let lag: u64 = p.partitions.iter().map(|x| x.lag).sum();
                    println!(
                        "{}\t{}\t{} -> [{}] -> {}\tlag {}",
                        p.name,
                        p.status,
                        p.from,
                        p.plugins.join(" -> "),
                        p.to,
                        lag
                    );
                }
            }
            other => bail!("unexpected answer from the broker: {other:?}"),
        },
        PipelineCommand::Describe { name } => {
            print_description(&one(request(
                client,
                Request::DescribePipeline { name: name.clone() },
            )
            .await?)?);
        }
        PipelineCommand::Pause { name } => {
            let p = one(request(client, Request::PausePipeline { name: name.clone() }).await?)?;
            println!("pipeline {} paused", p.name);
        }
        PipelineCommand::Resume { name } => {
            let p = one(request(client, Request::ResumePipeline { name: name.clone() }).await?)?;
            println!("pipeline {} resumed", p.name);
        }
        PipelineCommand::Delete { name } => {
            let p = one(request(client, Request::DeletePipeline { name: name.clone() }).await?)?;
            println!("deleted pipeline {}", p.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_description(p: &PipelineDescription) {
    println!("pipeline {}", p.name);
    println!("status: {}", p.status);
    println!("from: {}", p.from);
    println!("to: {}", p.to);
    println!("plugins: {}", p.plugins.join(" -> "));
    let config: Vec<String> = p.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("config: {}", config.join(" "));
    println!("error: {}", p.error.as_deref().unwrap_or("none"));
    println!("partition\tstatus\tcheckpoint\thigh_watermark\tlag\tduplicates_dropped\terror");
    for x in &p.partitions {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            x.partition,
            x.status,
            x.checkpoint,
            x.high_watermark,
            x.lag,
            x.duplicates_dropped,
            x.error.as_deref().unwrap_or("-")
        );
    }
}
