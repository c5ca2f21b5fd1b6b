//! `sluice acl add|remove|list`: access control bindings (docs/security.md).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use sluice_client::Client;
use sluice_proto::acl::{AclBinding, Operation, PatternKind, Permission, ResourceType};

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add a binding: allow (or --deny) PRINCIPAL the operation on the resource.
    Add(BindingArgs),
    /// Remove a binding (named exactly as it was added).
    Remove(BindingArgs),
    /// List every binding: principal, allow/deny, resource (a trailing `*` marks a prefix),
    /// operation.
    List,
}

#[derive(Debug, Args)]
pub struct BindingArgs {
    /// The principal (a certificate's name under mTLS), or `*` for anyone.
    #[arg(long)]
    pub principal: String,
    /// Resource type: topic, group, plugin, pipeline, connector or cluster.
    #[arg(long)]
    pub resource: ResourceType,
    /// Resource name, `*` for every name (the cluster's is `*`). Default `*`.
    #[arg(long, default_value = "*")]
    pub name: String,
    /// The name is a prefix: every resource whose name starts with it.
    #[arg(long)]
    pub prefix: bool,
    /// read, write, create, delete, alter, describe, deploy or all.
    #[arg(long)]
    pub operation: Operation,
    /// A deny binding (deny wins over any allow).
    #[arg(long)]
    pub deny: bool,
}

impl BindingArgs {
    fn binding(&self) -> AclBinding {
        AclBinding {
            principal: self.principal.clone(),
            resource: self.resource,
            pattern: self.name.clone(),
            kind: if self.prefix {
                PatternKind::Prefix
            } else {
                PatternKind::Literal
            },
            operation: self.operation,
            permission: if self.deny {
                Permission::Deny
            } else {
                Permission::Allow
            },
        }
    }
}

pub async fn run(client: &Client, cmd: &AclCommand) -> Result<ExitCode> {
    let admin = client.admin();
    match cmd {
        AclCommand::Add(args) => {
            let binding = args.binding();
            if let Err(e) = binding.validate() {
                bail!("{e}");
            }
            admin.create_acls(vec![binding.clone()]).await?;
            println!("added: {binding}");
        }
        AclCommand::Remove(args) => {
            let binding = args.binding();
            let now = admin.delete_acls(vec![binding.clone()]).await?;
            debug_assert!(!now.contains(&binding));
            println!("removed: {binding}");
        }
        AclCommand::List => {
            println!("PRINCIPAL\tPERMISSION\tRESOURCE\tOPERATION");
            for b in admin.list_acls().await? {
                println!("{b}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
