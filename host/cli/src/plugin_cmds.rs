//! `sluice plugin`: deploy, list, describe, delete, and `new` (a buildable plugin crate).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use sluice_client::Client;
use sluice_proto::{PluginDescription, Request, ResponseBody};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Deploy a WebAssembly component as plugin NAME (a new version if it exists): from FILE,
    /// or one of the built-ins embedded in this binary with --builtin.
    Deploy {
        name: String,
        /// The component (.wasm) to deploy.
        #[arg(required_unless_present = "builtin", conflicts_with = "builtin")]
        file: Option<PathBuf>,
        /// A built-in plugin: json-filter, regex-mask, split-lines, window-count,
        /// json-partitioner or identity-map.
        #[arg(long, value_parser = builtin_name)]
        builtin: Option<String>,
    },
    /// List deployed plugins.
    List,
    /// Show a plugin's kind and versions.
    Describe { name: String },
    /// Delete a plugin and all its versions.
    Delete { name: String },
    /// Create a buildable plugin crate NAME in the current directory (or --dir).
    New {
        name: String,
        #[arg(long, value_enum, default_value = "transform")]
        kind: PluginKindArg,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path to the plugin SDK (`sdk/plugin` of a Sluice checkout); default: the one this
        /// binary was built from.
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PluginKindArg {
    Transform,
    Partitioner,
    Source,
    Sink,
}

const TEMPLATE_CARGO: &str = include_str!("../../../sdk/plugin/template/Cargo.toml");
const TEMPLATE_CONFIG: &str = include_str!("../../../sdk/plugin/template/.cargo/config.toml");
const TEMPLATE_TRANSFORM: &str = include_str!("../../../sdk/plugin/template/src/transform.rs");
const TEMPLATE_PARTITIONER: &str = include_str!("../../../sdk/plugin/template/src/partitioner.rs");
const TEMPLATE_SOURCE: &str = include_str!("../../../sdk/plugin/template/src/source.rs");
const TEMPLATE_SINK: &str = include_str!("../../../sdk/plugin/template/src/sink.rs");

pub async fn run(
    cmd: &PluginCommand,
    connect: impl AsyncFnOnce() -> Result<Client>,
) -> Result<ExitCode> {
    if let PluginCommand::New {
        name,
        kind,
        dir,
        sdk_path,
    } = cmd
    {
        return new_plugin(name, *kind, dir.as_deref(), sdk_path.as_deref());
    }
    let client = connect().await?;
    let (request, raw) = match cmd {
        PluginCommand::Deploy {
            name,
            file,
            builtin,
        } => {
            let wasm = match (file, builtin) {
                (_, Some(b)) => sluice_wasm_plugins::builtin(b)
                    .expect("checked by the argument parser")
                    .to_vec(),
                (Some(file), None) => std::fs::read(file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
                (None, None) => unreachable!("the argument parser requires one"),
            };
            (
                Request::DeployPlugin { name: name.clone() },
                Bytes::from(wasm),
            )
        }
        PluginCommand::List => (Request::ListPlugins, Bytes::new()),
        PluginCommand::Describe { name } => {
            (Request::DescribePlugin { name: name.clone() }, Bytes::new())
        }
        PluginCommand::Delete { name } => {
            (Request::DeletePlugin { name: name.clone() }, Bytes::new())
        }
        PluginCommand::New { .. } => unreachable!("handled above"),
    };
    match (cmd, client.request(request, raw).await?) {
        (PluginCommand::List, (ResponseBody::Plugins(ps), _)) => {
            for p in ps {
                let latest = p.versions.last().map_or(0, |v| v.version);
                println!("{}\t{}\tversion {latest}", p.name, p.kind);
            }
        }
        (PluginCommand::Deploy { .. }, (ResponseBody::Plugin(p), _)) => {
            let v = p.versions.last();
            println!(
                "deployed plugin {} ({}) version {} ({} bytes, sha256 {})",
                p.name,
                p.kind,
                v.map_or(0, |v| v.version),
                v.map_or(0, |v| v.size_bytes),
                v.map_or("", |v| v.hash.as_str())
            );
        }
        (PluginCommand::Delete { .. }, (ResponseBody::Plugin(p), _)) => {
            println!("deleted plugin {}", p.name)
        }
        (PluginCommand::Describe { .. }, (ResponseBody::Plugin(p), _)) => print_description(&p),
        (_, (other, _)) => bail!("unexpected answer: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn builtin_name(name: &str) -> Result<String, String> {
    match sluice_wasm_plugins::builtin(name) {
        Some(_) => Ok(name.to_owned()),
        None => Err(format!(
            "no built-in plugin {name:?}; the built-ins are {}",
            sluice_wasm_plugins::EMBEDDED
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn print_description(p: &PluginDescription) {
    println!(
        "plugin {} ({}): {} version(s)",
        p.name,
        p.kind,
        p.versions.len()
    );
    println!("version\tsize_bytes\tdeployed_at_ms\tsha256");
    for v in &p.versions {
        println!(
            "{}\t{}\t{}\t{}",
            v.version, v.size_bytes, v.deployed_at_ms, v.hash
        );
    }
}

fn new_plugin(
    name: &str,
    kind: PluginKindArg,
    dir: Option<&Path>,
    sdk_path: Option<&Path>,
) -> Result<ExitCode> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("plugin name {name:?}: use letters, digits, '-' and '_'");
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or --dir",
            dir.display()
        );
    }
    let sdk = match sdk_path {
        Some(p) => p.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/plugin"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the plugin SDK is not at {}; pass --sdk-path to sdk/plugin of a Sluice checkout",
            sdk.display()
        )
    })?;
    let render = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate_name}}", &name.replace('-', "_"))
            .replace("{{sdk_path}}", &sdk.display().to_string())
    };
    let lib = match kind {
        PluginKindArg::Transform => TEMPLATE_TRANSFORM,
        PluginKindArg::Partitioner => TEMPLATE_PARTITIONER,
        PluginKindArg::Source => TEMPLATE_SOURCE,
        PluginKindArg::Sink => TEMPLATE_SINK,
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(dir.join("Cargo.toml"), render(TEMPLATE_CARGO))?;
    std::fs::write(dir.join(".cargo/config.toml"), render(TEMPLATE_CONFIG))?;
    std::fs::write(dir.join("src/lib.rs"), render(lib))?;
    println!(
        "created {} ({:?}); build it with `cd {} && cargo build --release`, then deploy target/wasm32-wasip2/release/{}.wasm",
        dir.display(),
        kind,
        dir.display(),
        name.replace('-', "_")
    );
    Ok(ExitCode::SUCCESS)
}
