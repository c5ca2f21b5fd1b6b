//! `sluice cluster ...`: the cluster's status.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use sluice_client::Client;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, roles (voter, learner), liveness, broker epochs, the metadata leader, its term
    /// and commit index.
    Status,
}

pub async fn run(client: &Client, cmd: &ClusterCommand) -> Result<ExitCode> {
    match cmd {
        ClusterCommand::Status => {
            let s = client.admin().cluster_status().await?;
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            println!("cluster {}", s.cluster_id);
            println!(
                "controller {}\tterm {}\tcommitted {}\tapplied {}\t(as seen by node {})",
                s.controller.map_or("none".to_string(), |c| c.to_string()),
                s.term,
                opt(s.committed),
                opt(s.applied),
                s.answered_by
            );
            println!("node\trole\tstate\tbroker_epoch\tleads\taddr\tpeer_addr\track");
            for n in &s.nodes {
                let state = if n.fenced {
                    "fenced"
                } else if n.live {
                    "live"
                } else {
                    "down"
                };
                let role = if Some(n.node_id) == s.controller {
                    format!("{} (leader)", n.role)
                } else {
                    n.role.clone()
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    n.node_id,
                    role,
                    state,
                    n.broker_epoch,
                    n.leader_of,
                    if n.addr.is_empty() { "-" } else { &n.addr },
                    n.peer_addr.as_deref().unwrap_or("-"),
                    n.rack.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
