//! `sluice connector`: create, list, describe, pause, resume, restart and delete connectors
//! (source and sink components run by the brokers; docs/connectors.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use serde::Deserialize;
use sluice_client::Client;
use sluice_proto::{ConnectorDescription, CreateConnectorRequest, Request, ResponseBody};

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Create a connector from a config file (topic or topics, [settings], [grants]); it
    /// starts at once on one of the brokers.
    Create {
        name: String,
        /// A deployed plugin of kind source or sink (`sluice plugin deploy`).
        #[arg(long)]
        plugin: String,
        /// The connector's config file (TOML; see docs/connectors.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// List connectors with their state.
    List,
    /// State, where it runs, records/s, failures and the last error, progress.
    Describe { name: String },
    /// Stop a connector's task; it stays paused across broker restarts.
    Pause { name: String },
    /// Start a paused connector again from its progress.
    Resume { name: String },
    /// Start a connector's task again now (after a failure, without waiting out the backoff).
    Restart { name: String },
    /// Stop and remove a connector (what it wrote stays).
    Delete { name: String },
}

/// The connector config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectorFile {
    /// A source's output topic.
    topic: Option<String>,
    /// A sink's input topics.
    topics: Option<Vec<String>>,
    #[serde(default)]
    transforms: Vec<String>,
    /// A source writes at most this many records per second.
    max_records_per_second: Option<u64>,
    /// Where a sink sends records it can never write.
    dead_letter_topic: Option<String>,
    #[serde(default)]
    settings: toml::Table,
    #[serde(default)]
    grants: Grants,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grants {
    #[serde(default)]
    dirs: Vec<String>,
    #[serde(default)]
    http_hosts: Vec<String>,
}

/// Reads a connector config file into a create request (every problem names the key).
pub fn read_config(name: &str, plugin: &str, path: &Path) -> Result<CreateConnectorRequest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the connector config {}", path.display()))?;
    let file: ConnectorFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    let topics = match (file.topic, file.topics) {
        (Some(t), None) => vec![t],
        (None, Some(ts)) if !ts.is_empty() => ts,
        (Some(_), Some(_)) => bail!(
            "{}: set `topic` (a source's output) or `topics` (a sink's inputs), not both",
            path.display()
        ),
        _ => bail!(
            "{}: missing `topic` (a source's output topic) or `topics` (a sink's input topics)",
            path.display()
        ),
    };
    let mut settings = Vec::new();
    for (k, v) in file.settings {
        let v = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "{}: settings.{k}: expected a string, number or boolean, got {}",
                path.display(),
                other.type_str()
            ),
        };
        settings.push((k, v));
    }
    Ok(CreateConnectorRequest {
        name: name.to_owned(),
        plugin: plugin.to_owned(),
        topics,
        settings,
        dirs: file.grants.dirs,
        http_hosts: file.grants.http_hosts,
        transforms: file.transforms,
        max_records_per_second: file.max_records_per_second,
        dead_letter_topic: file.dead_letter_topic,
    })
}

async fn request(client: &Client, request: Request) -> Result<ResponseBody> {
    Ok(client.request(request, Bytes::new()).await?.0)
}

fn one(body: ResponseBody) -> Result<ConnectorDescription> {
    match body {
        ResponseBody::Connector(c) => Ok(*c),
        other => bail!("unexpected answer from the broker: {other:?}"),
    }
}

pub async fn run(client: &Client, cmd: &ConnectorCommand) -> Result<ExitCode> {
    match cmd {
        ConnectorCommand::Create {
            name,
            plugin,
            config,
        } => {
            let req = read_config(name, plugin, config)?;
            let c = one(request(client, Request::CreateConnector(req)).await?)?;
            println!(
                "created {} connector {} ({}) {} {}",
                c.kind,
                c.name,
                c.plugin,
                if c.kind == "source" { "->" } else { "<-" },
                c.topics.join(",")
            );
        }
        ConnectorCommand::List => match request(client, Request::ListConnectors).await? {
            ResponseBody::Connectors(cs) => {
                for c in cs {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        c.name,
                        c.kind,
                        c.state,
                        c.topics.join(","),
                        c.node.map_or("-".to_owned(), |n| format!("node {n}"))
                    );
                }
            }
            other => bail!("unexpected answer from the broker: {other:?}"),
        },
        ConnectorCommand::Describe { name } => {
            let c = one(request(client, Request::DescribeConnector { name: name.clone() }).await?)?;
            print_description(&c);
        }
        ConnectorCommand::Pause { name } => {
            let c = one(request(client, Request::PauseConnector { name: name.clone() }).await?)?;
            println!("connector {} paused", c.name);
        }
        ConnectorCommand::Resume { name } => {
            let c = one(request(client, Request::ResumeConnector { name: name.clone() }).await?)?;
            println!("connector {} resumed", c.name);
        }
        ConnectorCommand::Restart { name } => {
            let c = one(request(client, Request::RestartConnector { name: name.clone() }).await?)?;
            println!("connector {} restarted", c.name);
        }
        ConnectorCommand::Delete { name } => {
            let c = one(request(client, Request::DeleteConnector { name: name.clone() }).await?)?;
            println!("deleted connector {}", c.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_description(c: &ConnectorDescription) {
    println!("connector {}", c.name);
    println!("kind: {}", c.kind);
    println!("plugin: {}", c.plugin);
    println!("state: {}", c.state);
    println!(
        "node: {}",
        c.node.map_or("none".to_owned(), |n| n.to_string())
    );
    println!("topics: {}", c.topics.join(","));
    let settings: Vec<String> = c.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("settings: {}", settings.join(" "));
    println!(
        "grants: dirs [{}] http_hosts [{}]",
        c.dirs.join(", "),
        c.http_hosts.join(", ")
    );
    if !c.transforms.is_empty() {
        println!("transforms: {}", c.transforms.join(" -> "));
    }
    println!(
        "records: {} ({} records/s)",
        c.records, c.records_per_second
    );
    println!("restarts: {} (tasks started: {})", c.failures, c.generation);
    match &c.last_error {
        Some((at, e)) => println!("last error: {e} (at {at} ms since the epoch)"),
        None => println!("last error: none"),
    }
    println!("checkpoint: {}", c.checkpoint);
}
