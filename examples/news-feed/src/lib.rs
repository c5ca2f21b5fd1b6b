//! A news feed over Sluice: publishers keyed by source, reader applications in consumer groups
//! of their own (each receives every article), one group of three members sharing the load,
//! and a late reader replaying the history. See README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_client::{
    Client, ClientError, ConsumerConfig, GroupEvent, GroupOptions, ProducerConfig, ProducerRecord,
};
use sluice_proto::{ErrorCode, TopicConfig};

/// The topic the feed goes through.
pub const TOPIC: &str = "news";
/// How long the example waits for its readers before it gives up.
const PATIENCE: Duration = Duration::from_secs(120);

/// One article as a reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub member: usize,
    pub source: String,
    pub number: u32,
    pub partition: u32,
}

/// What each reader group received.
#[derive(Debug, Default)]
pub struct Report {
    pub published: usize,
    /// Articles seen per group, in the order its members saw them.
    pub groups: BTreeMap<String, Vec<Seen>>,
}

impl Report {
    /// Problems, if any: a group that missed an article, saw a source's articles out of
    /// order, or (for the shared group) left a member idle.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (group, seen) in &self.groups {
            let distinct: BTreeSet<(&str, u32)> =
                seen.iter().map(|s| (s.source.as_str(), s.number)).collect();
            if distinct.len() != self.published {
                problems.push(format!(
                    "{group} received {} of {} articles",
                    distinct.len(),
                    self.published
                ));
            }
            // A group of one member reads each source in order (in a shared group a rebalance
            // may hand a partition over and repeat what was not committed yet).
            let members: BTreeSet<usize> = seen.iter().map(|s| s.member).collect();
            if members.len() == 1 {
                let mut last: BTreeMap<&str, u32> = BTreeMap::new();
                for s in seen {
                    if let Some(prev) = last.insert(&s.source, s.number)
                        && s.number <= prev
                    {
                        problems.push(format!(
                            "{group}: {} #{} came after #{prev}",
                            s.source, s.number
                        ));
                    }
                }
            }
        }
        if let Some(shared) = self.groups.get("analytics") {
            let members: BTreeSet<usize> = shared.iter().map(|s| s.member).collect();
            if members.len() < 2 {
                problems.push(format!(
                    "analytics: the load was not shared (members that read: {members:?})"
                ));
            }
        }
        problems
    }
}

fn group_options() -> GroupOptions {
    GroupOptions {
        session_timeout: Duration::from_secs(6),
        auto_commit_interval: Some(Duration::from_millis(500)),
        ..GroupOptions::default()
    }
}

/// One member of `group`: reads articles into `seen` until `wanted` distinct articles are
/// in it (all members of the group together) or `stop` is set.
/// Partitions each reader (group, member) holds right now.
type Holdings = Arc<Mutex<BTreeMap<(String, usize), usize>>>;

async fn reader(
    client: Client,
    group: String,
    member: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    wanted: usize,
    holdings: Holdings,
) -> Result<()> {
    let mut consumer = client.consumer(ConsumerConfig::default());
    let mut held: BTreeSet<(String, u32)> = BTreeSet::new();
    consumer
        .subscribe(&group, &[TOPIC], group_options())
        .await
        .with_context(|| format!("{group}: subscribe"))?;
    let started = Instant::now();
    loop {
        let distinct = {
            let s = seen.lock().expect("seen lock");
            s.iter()
                .map(|x| (x.source.clone(), x.number))
                .collect::<BTreeSet<_>>()
                .len()
        };
        if distinct >= wanted {
            break;
        }
        if started.elapsed() > PATIENCE {
            bail!("{group} member {member}: only {distinct} of {wanted} articles in {PATIENCE:?}");
        }
        let records = match consumer.poll().await {
            Ok(r) => r,
            Err(e) if e.is_retriable() => continue,
            Err(e) => return Err(e).with_context(|| format!("{group}: poll")),
        };
        for event in consumer.take_events() {
            match event {
                GroupEvent::Assigned(ps) => held.extend(ps),
                GroupEvent::Revoked(ps) => {
                    for p in ps {
                        held.remove(&p);
                    }
                }
            }
        }
        holdings
            .lock()
            .expect("holdings lock")
            .insert((group.clone(), member), held.len());
        let mut s = seen.lock().expect("seen lock");
        for r in records {
            let text = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            // "SOURCE #N: headline"
            let Some((source, rest)) = text.split_once(" #") else {
                continue;
            };
            let Some(number) = rest.split(':').next().and_then(|n| n.parse().ok()) else {
                continue;
            };
            s.push(Seen {
                member,
                source: source.to_owned(),
                number,
                partition: r.partition,
            });
        }
    }
    let _ = consumer.close().await;
    Ok(())
}

/// Publishes `articles` articles from each of `sources` sources, keyed by source, and checks
/// what the readers received. `connect` makes a client of the cluster (one per reader).
pub async fn run<F, Fut>(connect: F, sources: usize, articles: u32) -> Result<Report>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Client, ClientError>>,
{
    let admin = connect().await?;
    match admin
        .admin()
        .create_topic(TOPIC, 3, TopicConfig::default())
        .await
    {
        Ok(_) => {}
        Err(ClientError::Broker(e)) if e.code == ErrorCode::TopicAlreadyExists => {}
        Err(e) => return Err(e).context("creating the topic"),
    }
    let published = sources * articles as usize;
    let holdings: Holdings = Arc::default();
    let mut report = Report {
        published,
        ..Report::default()
    };
    // The live readers: two applications with a group each, and one group of three.
    let mut seen: BTreeMap<String, Arc<Mutex<Vec<Seen>>>> = BTreeMap::new();
    let mut tasks = Vec::new();
    for (group, members) in [("web", 1), ("mobile", 1), ("analytics", 3)] {
        let s = seen.entry(group.to_owned()).or_default().clone();
        for member in 0..members {
            tasks.push(tokio::spawn(reader(
                connect().await?,
                group.to_owned(),
                member,
                s.clone(),
                published,
                holdings.clone(),
            )));
        }
    }
    // Every reader holds its partitions before the news starts: five readers, each holding
    // at least one (the shared group's three members one each or more).
    let started = Instant::now();
    loop {
        let ready = {
            let h = holdings.lock().expect("holdings lock");
            h.len() == 5 && h.values().all(|n| *n > 0)
        };
        if ready {
            break;
        }
        if started.elapsed() > PATIENCE {
            bail!("the readers did not get their partitions within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sources publish, keyed by source: one source's articles stay in order.
    let names = [
        "reuters", "ap", "afp", "dpa", "kyodo", "efe", "ansa", "tass",
    ];
    let producer = admin.producer(ProducerConfig::default());
    let mut pending = Vec::new();
    for n in 0..articles {
        for source in names.iter().cycle().take(sources) {
            let value = format!("{source} #{n}: headline {n} from {source}");
            pending.push(
                producer
                    .send(ProducerRecord::new(TOPIC, value).with_key(*source))
                    .await?,
            );
        }
    }
    for p in pending {
        p.await.context("an article was not acknowledged")?;
    }
    for t in tasks {
        t.await.context("a reader panicked")??;
    }
    // A late reader joins now and replays the whole history.
    let archive: Arc<Mutex<Vec<Seen>>> = Arc::default();
    reader(
        connect().await?,
        "archive".into(),
        0,
        archive.clone(),
        published,
        holdings,
    )
    .await?;
    seen.insert("archive".into(), archive);
    for (group, s) in seen {
        let s = s.lock().expect("seen lock").clone();
        report.groups.insert(group, s);
    }
    Ok(report)
}
