//! `sluice user` and `sluice token`: the credentials of clients without certificates
//! (docs/security.md). Passwords are read from standard input or the environment, never from
//! the command line; a token is printed once, when created.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sluice_client::Client;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user, or change its password. The password is read from SLUICE_NEW_PASSWORD,
    /// else from the first line of standard input; it never leaves this process (the broker
    /// gets a salted, iterated SCRAM-SHA-256 credential).
    Create { name: String },
    /// Delete a user: its connections stop working at their next request.
    Delete { name: String },
    /// List the users.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it (once: the broker keeps only a hash). For this
    /// connection's principal, or --principal (needs alter on the cluster).
    Create {
        #[arg(long)]
        principal: Option<String>,
        /// Free text shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime in seconds; without it the token works until revoked.
        #[arg(long)]
        expires_in_secs: Option<u64>,
    },
    /// Revoke a token by its id: its connections stop working at their next request.
    Revoke { id: String },
    /// List tokens (yours; everyone's if you may describe the cluster). Never the secrets.
    List,
}

/// The new password: SLUICE_NEW_PASSWORD, else standard input's first line.
fn new_password() -> Result<String> {
    if let Ok(p) = std::env::var("SLUICE_NEW_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password: set SLUICE_NEW_PASSWORD or write it on standard input");
    }
    Ok(password)
}

pub async fn user(client: &Client, cmd: &UserCommand) -> Result<ExitCode> {
    let admin = client.admin();
    match cmd {
        UserCommand::Create { name } => {
            let password = new_password()?;
            admin.upsert_user(name, &password).await?;
            println!("user {name} created (or its password changed)");
        }
        UserCommand::Delete { name } => {
            admin.delete_user(name).await?;
            println!("user {name} deleted");
        }
        UserCommand::List => {
            println!("USER\tMECHANISM\tITERATIONS");
            for u in admin.list_users().await? {
                println!("{}\t{}\t{}", u.name, u.mechanism, u.iterations);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn token(client: &Client, cmd: &TokenCommand) -> Result<ExitCode> {
    let admin = client.admin();
    match cmd {
        TokenCommand::Create {
            principal,
            description,
            expires_in_secs,
        } => {
            let created = admin
                .create_token(
                    principal.as_deref(),
                    description,
                    expires_in_secs.map(std::time::Duration::from_secs),
                )
                .await?;
            eprintln!(
                "token {} for {}: shown this once — keep it in a secret store or SLUICE_TOKEN",
                created.description.id, created.description.principal
            );
            println!("{}", created.token);
        }
        TokenCommand::Revoke { id } => {
            admin.revoke_token(id).await?;
            println!("token {id} revoked");
        }
        TokenCommand::List => {
            println!("ID\tPRINCIPAL\tCREATED_MS\tEXPIRES_MS\tDESCRIPTION");
            for t in admin.list_tokens().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.principal,
                    t.created_ms,
                    t.expires_ms.map_or("-".to_owned(), |e| e.to_string()),
                    t.description
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
