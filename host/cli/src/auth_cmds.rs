//! `sluice auth`: development client certificates and `whoami`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::cli::Cli;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Issue a client certificate for NAME (its principal under mTLS) from a dev CA: a
    /// broker's (DATA_DIR/tls/ca.pem and ca.key) or a dev cluster's shared client CA
    /// (--ca-dir). Writes NAME.pem and NAME.key (mode 0600) into --out-dir.
    IssueCert {
        name: String,
        /// Data directory of the broker whose dev CA signs.
        #[arg(long, default_value = "sluice-data", conflicts_with = "ca_dir")]
        data_dir: PathBuf,
        /// A dev cluster's CA directory (`client-ca.pem`, `client-ca.key`), e.g.
        /// sluice-dev-cluster/ca.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Where to write NAME.pem and NAME.key.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Print the principal the broker takes this client for, and how it was established.
    Whoami,
}

pub async fn run(cli: &Cli, cmd: &AuthCommand) -> Result<ExitCode> {
    match cmd {
        AuthCommand::IssueCert {
            name,
            data_dir,
            ca_dir,
            out_dir,
        } => {
            let (ca_pem, ca_key) = match ca_dir {
                Some(dir) => (
                    dir.join(sluice_broker::tls::CLIENT_CA_CERT_FILE),
                    dir.join(sluice_broker::tls::CLIENT_CA_KEY_FILE),
                ),
                None => (
                    sluice_broker::tls::dev_ca_path(data_dir),
                    data_dir.join("tls").join("ca.key"),
                ),
            };
            let (cert, key) = sluice_broker::tls::issue_client_certificate(&ca_pem, &ca_key, name)?;
            std::fs::create_dir_all(out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let (cert_path, key_path) = (
                out_dir.join(format!("{name}.pem")),
                out_dir.join(format!("{name}.key")),
            );
            if name.contains(['/', '\\']) || name.starts_with('.') {
                bail!("{name:?} cannot name a file: no slashes, no leading dot");
            }
            std::fs::write(&cert_path, cert)
                .with_context(|| format!("writing {}", cert_path.display()))?;
            write_private(&key_path, key.as_bytes())
                .with_context(|| format!("writing {}", key_path.display()))?;
            println!(
                "issued a client certificate for {name}: {} and {} (signed by {})",
                cert_path.display(),
                key_path.display(),
                ca_pem.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuthCommand::Whoami => {
            let client = crate::cli::connect(cli).await?;
            let (principal, mechanism) = client.who_am_i().await?;
            println!("{principal} (authenticated by {mechanism})");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
