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
    /// Add a node, started with `cluster.join = true`, to the metadata quorum as a voter.
    AddNode {
        #[arg(long)]
        node_id: u32,
        /// The node's peer address (its `cluster.peer_listen` or `peer_advertised_addr`).
        #[arg(long)]
        peer_addr: String,
    },
    /// Remove a node from the cluster; refused while it holds partitions.
    RemoveNode {
        #[arg(long)]
        node_id: u32,
    },
    /// Give partitions back to their preferred replica (the first), where it is live and in
    /// sync but another leads (brokers also do this by themselves unless
    /// `cluster.auto_leader_balance = false`).
    ElectLeaders {
        /// Only this topic's partitions.
        #[arg(long)]
        topic: Option<String>,
    },
}

pub async fn run(client: &Client, cmd: &ClusterCommand) -> Result<ExitCode> {
    let s = match cmd {
        ClusterCommand::ElectLeaders { topic } => {
            let elected = client.admin().elect_leaders(topic.as_deref()).await?;
            if elected.is_empty() {
                println!("every partition is led by its preferred replica, or it cannot lead");
            }
            for e in elected {
                println!("{}/{}	now led by {}", e.topic, e.partition, e.leader);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ClusterCommand::Status => client.admin().cluster_status().await?,
        ClusterCommand::AddNode { node_id, peer_addr } => {
            let s = client.admin().add_node(*node_id, peer_addr).await?;
            println!("added node {node_id}");
            s
        }
        ClusterCommand::RemoveNode { node_id } => {
            let s = client.admin().remove_node(*node_id).await?;
            println!("removed node {node_id}");
            s
        }
    };
    print_status(&s);
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &sluice_proto::ClusterStatus) {
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
