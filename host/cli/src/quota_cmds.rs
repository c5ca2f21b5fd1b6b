//! `sluice quota set|remove|list`: per-principal quotas, enforced on each broker by holding
//! answers back (docs/security.md).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use sluice_client::Client;
use sluice_proto::auth::Quota;

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set PRINCIPAL's quota (`*`: the default for principals without one of their own).
    /// Limits not given are unlimited.
    Set {
        principal: String,
        #[arg(long)]
        produce_bytes_per_sec: Option<u64>,
        #[arg(long)]
        fetch_bytes_per_sec: Option<u64>,
        #[arg(long)]
        requests_per_sec: Option<u32>,
        /// No limits at all: exempts PRINCIPAL from the default quota.
        #[arg(long, conflicts_with_all = ["produce_bytes_per_sec", "fetch_bytes_per_sec", "requests_per_sec"])]
        unlimited: bool,
    },
    /// Remove PRINCIPAL's quota (the default then applies to it).
    Remove { principal: String },
    /// List the quotas.
    List,
}

fn limit(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

pub async fn run(client: &Client, cmd: &QuotaCommand) -> Result<ExitCode> {
    let admin = client.admin();
    let quotas = match cmd {
        QuotaCommand::Set {
            principal,
            produce_bytes_per_sec,
            fetch_bytes_per_sec,
            requests_per_sec,
            unlimited,
        } => {
            let quota = Quota {
                produce_bytes_per_sec: *produce_bytes_per_sec,
                fetch_bytes_per_sec: *fetch_bytes_per_sec,
                requests_per_sec: *requests_per_sec,
            };
            if quota.is_unlimited() && !unlimited {
                bail!(
                    "name at least one limit (--produce-bytes-per-sec, --fetch-bytes-per-sec, --requests-per-sec), or --unlimited, or use `quota remove`"
                );
            }
            admin.set_quota(principal, Some(quota)).await?
        }
        QuotaCommand::Remove { principal } => admin.set_quota(principal, None).await?,
        QuotaCommand::List => admin.list_quotas().await?,
    };
    println!("PRINCIPAL\tPRODUCE_BYTES_PER_SEC\tFETCH_BYTES_PER_SEC\tREQUESTS_PER_SEC");
    for q in quotas {
        println!(
            "{}\t{}\t{}\t{}",
            q.principal,
            limit(q.quota.produce_bytes_per_sec),
            limit(q.quota.fetch_bytes_per_sec),
            limit(q.quota.requests_per_sec.map(u64::from))
        );
    }
    Ok(ExitCode::SUCCESS)
}
