//! `log-aggregation --broker ADDR --tls-ca CA --dir DIR [--lines N] [--sluice PATH]
//! [--listen ADDR] [--serve]`: starts the indexer, sets up the topics, pipeline and connectors
//! with the `sluice` CLI, has the services log, and checks what the indexer answers.

use std::path::PathBuf;
use std::process::ExitCode;

use log_aggregation::{Cli, FILE_SERVICES, SDK_SERVICES, T0, indexer};
use sluice_client::{Client, ClientConfig, TlsConfig};

fn usage() -> ExitCode {
    eprintln!(
        "usage: log-aggregation --broker ADDR --tls-ca CA --dir DIR [--lines N] \
         [--sluice PATH] [--listen ADDR] [--serve]"
    );
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let (mut broker, mut ca, mut dir) = (None, None, None);
    let (mut lines, mut listen, mut serve) = (400u32, "127.0.0.1:0".to_owned(), false);
    let mut sluice = PathBuf::from("sluice");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--serve" {
            serve = true;
            continue;
        }
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--broker" => broker = Some(value),
            "--tls-ca" => ca = Some(PathBuf::from(value)),
            "--dir" => dir = Some(PathBuf::from(value)),
            "--lines" => match value.parse() {
                Ok(n) => lines = n,
                Err(_) => return usage(),
            },
            "--sluice" => sluice = PathBuf::from(value),
            "--listen" => listen = value,
            _ => return usage(),
        }
    }
    let (Some(broker), Some(ca), Some(dir)) = (broker, ca, dir) else {
        return usage();
    };
    let cli = Cli {
        sluice,
        flags: vec![
            "--broker".into(),
            broker.clone(),
            "--tls-ca".into(),
            ca.display().to_string(),
        ],
    };
    let run = async {
        let indexer = indexer::Indexer::start(&listen)?;
        println!("indexer on http://{}", indexer.addr);
        let client = Client::connect(ClientConfig::new(broker, TlsConfig::CaFile(ca))).await?;
        let problems = log_aggregation::run(&cli, &client, &dir, indexer.addr, lines).await?;
        anyhow::Ok((indexer, problems))
    };
    match run.await {
        Ok((indexer, problems)) => {
            let stats = indexer.index.lock().expect("index lock").stats();
            println!(
                "{} services ({} from log files, {} through the SDK), {lines} lines each; \
                 errors indexed per service: {stats:?}",
                FILE_SERVICES.len() + SDK_SERVICES.len(),
                FILE_SERVICES.len(),
                SDK_SERVICES.len()
            );
            for p in &problems {
                println!("PROBLEM: {p}");
            }
            let addr = indexer.addr;
            println!(
                "ask it: curl 'http://{addr}/search?service=api&from={}&to={}'",
                T0,
                T0 + 60_000
            );
            if serve {
                println!("serving until Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("log-aggregation: {e:#}");
            ExitCode::FAILURE
        }
    }
}
