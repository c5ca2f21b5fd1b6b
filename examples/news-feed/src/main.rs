//! `news-feed --broker HOST:PORT --ca CA.pem [--sources N] [--articles N]`: runs the news feed
//! against a Sluice broker (or cluster: a comma-separated list) and prints what each reader
//! received. Exits with status 1 when a reader missed an article or saw one out of order.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_client::{Client, ClientConfig, TlsConfig};

fn usage() -> ExitCode {
    eprintln!("usage: news-feed --broker HOST:PORT --ca CA.pem [--sources N] [--articles N]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut broker = None;
    let mut ca = None;
    let (mut sources, mut articles) = (3usize, 100u32);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--broker" => broker = Some(value),
            "--ca" => ca = Some(PathBuf::from(value)),
            "--sources" => match value.parse() {
                Ok(n) if (1..=8).contains(&n) => sources = n,
                _ => return usage(),
            },
            "--articles" => match value.parse() {
                Ok(n) => articles = n,
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let (Some(broker), Some(ca)) = (broker, ca) else {
        return usage();
    };
    let connect = || {
        Client::connect(ClientConfig::new(
            broker.clone(),
            TlsConfig::CaFile(ca.clone()),
        ))
    };
    match news_feed::run(connect, sources, articles).await {
        Ok(report) => {
            println!("published {} articles", report.published);
            for (group, seen) in &report.groups {
                let mut per_member = std::collections::BTreeMap::new();
                for s in seen {
                    *per_member.entry(s.member).or_insert(0usize) += 1;
                }
                println!(
                    "{group}: {} received, per member {per_member:?}",
                    seen.len()
                );
            }
            let problems = report.problems();
            for p in &problems {
                println!("PROBLEM: {p}");
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("news-feed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
