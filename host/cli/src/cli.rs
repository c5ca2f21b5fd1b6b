//! Command-line syntax. The spellings here are a contract with users and scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_client::{Client, ClientConfig, TlsConfig};
use sluice_proto::{Acks, Compression, Durability};

use crate::{bench, client_cmds};

pub const DEFAULT_BROKER: &str = "127.0.0.1:9470";

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: event streaming over QUIC, with WebAssembly plugins"
)]
pub struct Cli {
    /// Broker(s) to bootstrap from, HOST:PORT[,HOST:PORT...]: the first that answers tells the
    /// client about the rest of the cluster.
    #[arg(long, global = true, env = "SLUICE_BROKER", default_value = DEFAULT_BROKER)]
    pub broker: String,
    /// CA certificate (PEM) that signed the broker's certificate. Default: the dev CA in
    /// ./sluice-data/tls/ca.pem when it exists, else the system's roots.
    #[arg(long, global = true, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Skip verifying the broker's certificate. Insecure: for debugging only.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Client certificate (PEM) to present to brokers that require mutual TLS; with --tls-key.
    #[arg(long, global = true, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// User to authenticate as with a password (SCRAM-SHA-256), for brokers with
    /// client_auth = "credentials". The password comes from SLUICE_PASSWORD or the profile.
    #[arg(long, global = true, env = "SLUICE_USER")]
    pub user: Option<String>,
    /// The password of --user. Prefer the environment variable or a profile: a command line
    /// is visible to every user of the machine (`ps`).
    #[arg(long, global = true, env = "SLUICE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// An API token (`sluice token create`) to authenticate with. Prefer the environment
    /// variable or a profile.
    #[arg(
        long,
        global = true,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    pub token: Option<String>,
    /// A profile file (TOML) with any of: broker, tls_ca, tls_cert, tls_key, user,
    /// password, token. Flags and environment variables win over it.
    #[arg(long, global = true, env = "SLUICE_PROFILE")]
    pub profile: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker node.
    Broker(BrokerArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of standard input.
    Produce(ProduceArgs),
    /// Print records of a topic.
    Consume(ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Deploy, list, describe and delete plugins; create a new plugin crate.
    #[command(subcommand)]
    Plugin(crate::plugin_cmds::PluginCommand),
    /// Create, list, describe, pause, resume and delete pipelines (plugins from topic to topic).
    #[command(subcommand)]
    Pipeline(crate::pipeline_cmds::PipelineCommand),
    /// Create, list, describe, pause, resume, restart and delete connectors (source and sink
    /// plugins between topics and the outside).
    #[command(subcommand)]
    Connector(crate::connector_cmds::ConnectorCommand),
    /// Measure throughput and latency against a running broker.
    Bench(bench::BenchArgs),
    /// The cluster: nodes, roles, liveness, the metadata leader.
    #[command(subcommand)]
    Cluster(crate::cluster_cmds::ClusterCommand),
    /// Development helpers: a local cluster in one command.
    #[command(subcommand)]
    Dev(crate::dev_cluster::DevCommand),
    /// Access control bindings: add, remove, list (docs/security.md).
    #[command(subcommand)]
    Acl(crate::acl_cmds::AclCommand),
    /// Client identities: issue a development client certificate, ask who the broker takes
    /// you for.
    #[command(subcommand)]
    Auth(crate::auth_cmds::AuthCommand),
    /// Users who authenticate with a password (SCRAM-SHA-256): create (or change the
    /// password), delete, list.
    #[command(subcommand)]
    User(crate::credential_cmds::UserCommand),
    /// API tokens: create, revoke, list.
    #[command(subcommand)]
    Token(crate::credential_cmds::TokenCommand),
    /// Per-principal quotas (produce and fetch bytes/s, requests/s, per broker): set,
    /// remove, list.
    #[command(subcommand)]
    Quota(crate::quota_cmds::QuotaCommand),
    /// A live view of brokers read from their metrics endpoints: per-topic rates, group lag,
    /// plugin stops, cluster health.
    Top(crate::top::TopArgs),
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Data directory (store, metadata log, dev TLS material). Default: ./sluice-data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// UDP address to listen on, HOST:PORT. Default: 127.0.0.1:9470.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// TOML configuration file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    pub node_id: Option<u32>,
    /// Serve Prometheus metrics (`/metrics`) and health (`/health/live`, `/health/ready`)
    /// over plain HTTP on this TCP address, HOST:PORT. Off unless set.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log line format on stderr: `text` (default) or `json` (one object per line, with the
    /// span fields: connection, stream, request type, topic, partition, group, plugin).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Replicas of each partition, on as many brokers (at most the live brokers).
        #[arg(long, default_value_t = 1)]
        replication_factor: u16,
        /// In-sync replicas acks=all needs (default: 2 with three or more replicas, else 1).
        #[arg(long)]
        min_insync_replicas: Option<u16>,
        /// Let an out-of-sync replica lead when no in-sync one is left (losing what it lacks).
        #[arg(long)]
        unclean_leader_election: bool,
        /// Delete batches older than this many milliseconds.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Keep at most this many bytes per partition.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// fsync (acknowledged means on disk) or interval:MS (fsync at least every MS ms).
        #[arg(long, default_value = "fsync", value_parser = parse_durability)]
        durability: Durability,
        /// Largest batch the topic accepts (default: the broker's limit).
        #[arg(long)]
        max_batch_bytes: Option<u32>,
        /// A deployed partitioner plugin that places records produced without a partition.
        #[arg(long)]
        partitioner: Option<String>,
        /// With --partitioner: plugin configuration, KEY=VALUE (repeatable).
        #[arg(long = "partitioner-config", value_parser = parse_kv, requires = "partitioner")]
        partitioner_config: Vec<(String, String)>,
    },
    /// Set or remove a topic's partitioner plugin.
    SetPartitioner {
        name: String,
        /// A deployed partitioner plugin.
        plugin: Option<String>,
        /// Remove the partitioner: records go by key hash again.
        #[arg(long, conflicts_with = "plugin")]
        none: bool,
        /// Plugin configuration, KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = parse_kv)]
        config: Vec<(String, String)>,
    },
    /// Change a topic's replication settings.
    Alter {
        name: String,
        /// In-sync replicas acks=all needs (1 to the replica count).
        #[arg(long)]
        min_insync_replicas: Option<u16>,
        /// Whether an out-of-sync replica may lead when no in-sync one is left (losing what it
        /// lacks); off by default.
        #[arg(long)]
        unclean_leader_election: Option<bool>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions: leader, log start, log end, size.
    Describe { name: String },
    /// Delete a topic, its data and the group offsets committed for it. Refused while a
    /// pipeline reads or writes the topic, unless --force.
    Delete {
        name: String,
        /// Stop and delete the pipelines that read or write the topic, then delete it.
        #[arg(long)]
        force: bool,
    },
    /// Add partitions to a topic.
    AddPartitions {
        name: String,
        /// How many partitions to add.
        #[arg(long)]
        count: u32,
    },
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first SEP: the text before it is the key.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Start at the earliest offset still stored.
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Start at this offset.
    #[arg(long, conflicts_with = "from_time")]
    pub offset: Option<u64>,
    /// Start at the first record at or after this time (RFC 3339).
    #[arg(long)]
    pub from_time: Option<String>,
    /// Exit after this many records.
    #[arg(short = 'n', long = "max-messages")]
    pub max_messages: Option<u64>,
    /// Exit after this many milliseconds without a record.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Output format: %k key, %v value, %p partition, %o offset, %t timestamp (ms), %% a
    /// percent sign; \n and \t escapes.
    #[arg(long, default_value = "%v\\n")]
    pub format: String,
    /// Join this consumer group: the group decides which partitions this consumer reads,
    /// and positions are committed (after printing) so a restart continues where it stopped.
    #[arg(long, conflicts_with_all = ["partition", "offset", "from_time"])]
    pub group: Option<String>,
    /// With --group: where to start partitions the group has no committed offset for.
    #[arg(long, default_value = "latest", value_parser = ["earliest", "latest", "error"], requires = "group")]
    pub reset: String,
    /// With --group: the session timeout in ms.
    #[arg(long, default_value_t = 10_000, requires = "group")]
    pub session_timeout_ms: u64,
    /// With --group: static membership id.
    #[arg(long, requires = "group")]
    pub instance_id: Option<String>,
    /// With --group: range, round-robin or sticky.
    #[arg(long, requires = "group")]
    pub assignor: Option<String>,
    /// Run this deployed transform plugin on the broker over what is fetched (a filter or
    /// map); only its output crosses the network.
    #[arg(long)]
    pub transform: Option<String>,
    /// With --transform: plugin configuration, KEY=VALUE (repeatable).
    #[arg(long = "config", value_parser = parse_kv, requires = "transform")]
    pub transform_config: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Members, assignment, and per partition the committed offset, log end and lag.
    Describe { group: String },
    /// Move an empty group's committed offsets for a topic.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, conflicts_with_all = ["to_latest", "to_offset", "to_time"])]
        to_earliest: bool,
        #[arg(long, conflicts_with_all = ["to_offset", "to_time"])]
        to_latest: bool,
        #[arg(long, conflicts_with = "to_time")]
        to_offset: Option<u64>,
        /// RFC 3339 time.
        #[arg(long)]
        to_time: Option<String>,
    },
    /// Delete an empty group and its committed offsets.
    Delete { group: String },
}

pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse()
}
fn parse_acks(s: &str) -> Result<Acks, String> {
    s.parse()
}
fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Broker(args) => run_broker(args).await,
        Command::Topic(cmd) => client_cmds::topic(&connect(&cli).await?, cmd).await,
        Command::Produce(args) => client_cmds::produce(&connect(&cli).await?, args).await,
        Command::Consume(args) => client_cmds::consume(&connect(&cli).await?, args).await,
        Command::Group(cmd) => client_cmds::group(&connect(&cli).await?, cmd).await,
        Command::Plugin(cmd) => crate::plugin_cmds::run(cmd, async || connect(&cli).await).await,
        Command::Pipeline(cmd) => crate::pipeline_cmds::run(&connect(&cli).await?, cmd).await,
        Command::Connector(cmd) => crate::connector_cmds::run(&connect(&cli).await?, cmd).await,
        Command::Bench(args) => bench::run(&cli, args).await,
        Command::Cluster(cmd) => crate::cluster_cmds::run(&connect(&cli).await?, cmd).await,
        Command::Dev(cmd) => crate::dev_cluster::run(cmd).await,
        Command::Top(args) => crate::top::run(args).await,
        Command::Auth(cmd) => crate::auth_cmds::run(&cli, cmd).await,
        Command::Acl(cmd) => crate::acl_cmds::run(&connect(&cli).await?, cmd).await,
        Command::User(cmd) => crate::credential_cmds::user(&connect(&cli).await?, cmd).await,
        Command::Token(cmd) => crate::credential_cmds::token(&connect(&cli).await?, cmd).await,
        Command::Quota(cmd) => crate::quota_cmds::run(&connect(&cli).await?, cmd).await,
    }
}

/// The TLS trust the client uses: `--tls-ca`, else the dev CA of the default data dir, else the
/// system roots. Verification is skipped only with `--insecure`.
pub fn tls_config(cli: &Cli) -> TlsConfig {
    if cli.insecure {
        eprintln!(
            "warning: --insecure: the broker's certificate is NOT verified; anyone on the path can read and change traffic"
        );
        return TlsConfig::InsecureSkipVerify;
    }
    if let Some(ca) = &cli.tls_ca {
        return TlsConfig::CaFile(ca.clone());
    }
    let dev_ca = sluice_broker::tls::dev_ca_path(std::path::Path::new("sluice-data"));
    if dev_ca.exists() {
        return TlsConfig::CaFile(dev_ca);
    }
    TlsConfig::SystemRoots
}

/// The client configuration from flags, environment variables and the profile, in that
/// order of precedence.
pub fn client_config(cli: &Cli) -> Result<ClientConfig> {
    let profile = match &cli.profile {
        Some(path) => sluice_client::Profile::load(path)?,
        None => sluice_client::Profile::default(),
    };
    // `--broker` always has a value (its default); the profile's counts when it was not given.
    let broker_given = cli.broker != DEFAULT_BROKER;
    let broker = match (&profile.broker, broker_given) {
        (Some(b), false) => b.clone(),
        _ => cli.broker.clone(),
    };
    let tls = match (&cli.tls_ca, &profile.tls_ca) {
        (None, Some(ca)) if !cli.insecure => TlsConfig::CaFile(ca.clone()),
        _ => tls_config(cli),
    };
    let mut config = ClientConfig::new(broker, tls);
    config.identity = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(sluice_client::ClientIdentity {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => profile.identity(),
    };
    // Whichever of user and token the flags or the environment name wins over the profile's.
    config.credentials = if cli.user.is_some() || cli.token.is_some() {
        sluice_client::Credentials::choose(
            cli.user.clone(),
            cli.password.clone().or(profile.password),
            cli.token.clone(),
        )?
    } else {
        profile.credentials()?
    };
    Ok(config)
}

pub async fn connect(cli: &Cli) -> Result<Client> {
    Client::connect(client_config(cli)?)
        .await
        .map_err(anyhow::Error::from)
}

async fn run_broker(args: &BrokerArgs) -> Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => sluice_broker::BrokerConfig::load(path)?,
        None => sluice_broker::BrokerConfig::default(),
    };
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(n) = args.node_id {
        config.node_id = n;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    // Listening for signals from before the start: one that arrives while the broker starts
    // (a test that stops it as soon as it serves) shuts it down cleanly once it has started.
    let stop = stop_signal();
    let handle = sluice_broker::start(config)
        .await
        .context("broker failed to start")?;
    stop.await;
    handle.shutdown().await.context("broker shutdown")?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM, from the moment this is called (the handlers are installed at once).
pub(crate) fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => tracing::info!("SIGINT received"),
                        _ = term.recv() => tracing::info!("SIGTERM received"),
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
