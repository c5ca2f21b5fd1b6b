//! Consumer groups (issue 4, acceptance 1–5): exactly one owner per partition, commits after
//! processing, failover when a member dies, a member joining a busy group, state across a
//! broker crash, lag and offset resets — through real broker processes and the real SDK/CLI.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{
    Client, ConsumerConfig, GroupEvent, GroupOptions, OffsetReset, ProducerConfig, ProducerRecord,
};
use sluice_proto::TopicConfig;
use sluice_tests::{BrokerProcess, TEST_CONFIG, describe_output};

const TOPIC: &str = "work";
const PARTITIONS: u32 = 6;

/// (member, partition, start, end): when a member owned a partition, in ms since the test began.
type Intervals = Arc<Mutex<Vec<(usize, u32, u128, Option<u128>)>>>;

struct Tally {
    /// value -> how many times it was processed
    seen: Mutex<HashMap<String, u32>>,
    per_member: Mutex<BTreeMap<usize, Vec<(u128, u32)>>>,
}

async fn produce(client: &Client, from: usize, n: usize) {
    let producer = client.producer(ProducerConfig::default());
    let mut ds = Vec::new();
    for i in from..from + n {
        ds.push(
            producer
                .send(ProducerRecord::new(TOPIC, format!("r{i}")).with_key(format!("k{}", i % 97)))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for d in ds {
        d.await.unwrap();
    }
}

fn group_options() -> GroupOptions {
    GroupOptions {
        session_timeout: Duration::from_secs(3),
        auto_commit_interval: None,
        ..GroupOptions::default()
    }
}

/// A member that processes each record, then commits, until `stop`.
async fn member(
    id: usize,
    client: Client,
    group: &'static str,
    tally: Arc<Tally>,
    intervals: Intervals,
    epoch: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut consumer = client.consumer(ConsumerConfig {
        reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    consumer
        .subscribe(group, &[TOPIC], group_options())
        .await
        .unwrap_or_else(|e| panic!("member {id}: subscribe failed: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        // A partition revoked in this poll was last read by the previous one: its ownership
        // ends before this poll starts (the revocation, and the heartbeat that lets another
        // member have it, happen inside the poll, whose own fetch no longer includes it).
        let poll_started = epoch.elapsed().as_millis();
        let records = match consumer.poll().await {
            Ok(records) => records,
            // What an application retries: the next poll asks again.
            Err(e) if e.is_retriable() => {
                eprintln!("member {id}: poll: {e}; polling again");
                continue;
            }
            Err(e) => panic!("member {id}: poll failed: {e}"),
        };
        let now = epoch.elapsed().as_millis();
        for e in consumer.take_events() {
            let mut iv = intervals.lock().unwrap();
            match e {
                GroupEvent::Assigned(ps) => {
                    for (_, p) in ps {
                        iv.push((id, p, now, None));
                    }
                }
                GroupEvent::Revoked(ps) => {
                    for (_, p) in ps {
                        let open = iv
                            .iter_mut()
                            .find(|(m, q, _, end)| *m == id && *q == p && end.is_none())
                            .unwrap_or_else(|| {
                                panic!("member {id}: partition {p} revoked but never assigned")
                            });
                        open.3 = Some(poll_started);
                    }
                }
            }
        }
        {
            let mut seen = tally.seen.lock().unwrap();
            let mut pm = tally.per_member.lock().unwrap();
            for r in &records {
                *seen
                    .entry(String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
                    .or_default() += 1;
                pm.entry(id).or_default().push((now, r.partition));
            }
        }
        if !records.is_empty() {
            match consumer.commit().await {
                Ok(()) => {}
                // The positions stay; the next commit carries them.
                Err(e) if e.is_retriable() => eprintln!("member {id}: commit: {e}"),
                Err(e) => panic!("member {id}: commit failed: {e}"),
            }
        }
    }
    consumer
        .close()
        .await
        .unwrap_or_else(|e| panic!("member {id}: close failed: {e}"));
}

async fn member_partition_counts(admin: &Client, group: &str) -> Vec<usize> {
    let d = admin
        .request(
            sluice_proto::Request::DescribeGroup {
                group: group.into(),
            },
            Bytes::new(),
        )
        .await;
    match d {
        Ok((sluice_proto::ResponseBody::Group(g), _)) => g
            .members
            .iter()
            .map(|m| m.assignment.iter().map(|t| t.partitions.len()).sum())
            .collect(),
        _ => Vec::new(),
    }
}

fn check_no_overlap(intervals: &[(usize, u32, u128, Option<u128>)]) {
    for (i, a) in intervals.iter().enumerate() {
        for b in &intervals[i + 1..] {
            if a.1 != b.1 || a.0 == b.0 {
                continue;
            }
            let (a_end, b_end) = (a.3.unwrap_or(u128::MAX), b.3.unwrap_or(u128::MAX));
            // Intervals of one partition owned by different members must not overlap.
            assert!(
                a_end <= b.2 || b_end <= a.2,
                "partition {} owned by members {} and {} at once: {a:?} {b:?}",
                a.1,
                a.0,
                b.0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_process_every_record_once_and_a_joiner_never_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let admin = broker.client().await;
    admin
        .admin()
        .create_topic(TOPIC, PARTITIONS, TopicConfig::default())
        .await
        .unwrap();
    let epoch = Instant::now();
    let tally = Arc::new(Tally {
        seen: Mutex::new(HashMap::new()),
        per_member: Mutex::new(BTreeMap::new()),
    });
    let intervals: Intervals = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Two members start; records flow while they work.
    let mut tasks = Vec::new();
    for id in 0..2 {
        let c = broker.client().await;
        tasks.push(tokio::spawn(member(
            id,
            c,
            "g1",
            tally.clone(),
            intervals.clone(),
            epoch,
            stop.clone(),
        )));
    }
    produce(&admin, 0, 20_000).await;
    // Wait until the two share the partitions 3 and 3 — as the coordinator says, and as the
    // members themselves read them (each consumer has taken its partitions over), so that
    // what they hold at the join does not depend on how fast this machine is.
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let open: Vec<usize> = (0..2)
            .map(|m| {
                intervals
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(id, _, _, end)| *id == m && end.is_none())
                    .count()
            })
            .collect();
        if open == [3, 3] && member_partition_counts(&admin, "g1").await == vec![3, 3] {
            break;
        }
        assert!(
            Instant::now() < settle,
            "two members never settled: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A third member joins the group while records keep arriving; the second half of them
    // is produced after it joined, whatever the speed of this machine, so the members that
    // keep partitions through the join have records in them to go on with.
    let busy = {
        let admin = admin.clone();
        tokio::spawn(async move {
            for chunk in 0..4 {
                produce(&admin, 20_000 + chunk * 5_000, 5_000).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let joined_at = epoch.elapsed().as_millis();
    let c = broker.client().await;
    tasks.push(tokio::spawn(member(
        2,
        c,
        "g1",
        tally.clone(),
        intervals.clone(),
        epoch,
        stop.clone(),
    )));
    busy.await.unwrap();
    for chunk in 4..8 {
        produce(&admin, 20_000 + chunk * 5_000, 5_000).await;
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = tally.seen.lock().unwrap().len();
        if done >= 60_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of 60000 records processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Wait until the joiner owns partitions, so the final check sees a settled group.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let d = admin
            .request(
                sluice_proto::Request::DescribeGroup { group: "g1".into() },
                Bytes::new(),
            )
            .await
            .unwrap()
            .0;
        let sluice_proto::ResponseBody::Group(g) = d else {
            panic!("{d:?}")
        };
        let owned: Vec<usize> = g
            .members
            .iter()
            .map(|m| m.assignment.iter().map(|t| t.partitions.len()).sum())
            .collect();
        if owned.len() == 3 && owned.iter().all(|&n| n == 2) {
            let all: HashSet<(String, u32)> = g
                .members
                .iter()
                .flat_map(|m| {
                    m.assignment
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.clone(), *p)))
                })
                .collect();
            assert_eq!(
                all.len(),
                PARTITIONS as usize,
                "each partition has exactly one owner"
            );
            break;
        }
        assert!(
            Instant::now() < settle,
            "group never settled to 2 partitions per member: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Acceptance 1: every record processed exactly once (members commit after processing).
    let seen = tally.seen.lock().unwrap();
    assert_eq!(seen.len(), 60_000);
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} records processed twice, e.g. {:?}",
        dups.len(),
        dups.first()
    );

    // Acceptance 3: ownership intervals never overlap.
    let iv = intervals.lock().unwrap().clone();
    check_no_overlap(&iv);
    // Members 0 and 1 kept some partitions through the join (sticky), and those were never
    // revoked: they kept consuming them.
    for m in 0..2 {
        let kept: Vec<u32> = iv
            .iter()
            .filter(|(id, _, start, end)| *id == m && *start < joined_at && end.is_none())
            .map(|x| x.1)
            .collect();
        assert!(
            kept.len() >= 2,
            "member {m} kept {kept:?} through the join: {iv:?}"
        );
        let pm = tally.per_member.lock().unwrap();
        let after_join = pm.get(&m).map_or(0, |v| {
            v.iter()
                .filter(|(t, p)| *t > joined_at && kept.contains(p))
                .count()
        });
        assert!(
            after_join > 0,
            "member {m} stopped consuming its kept partitions after the join"
        );
    }
}

#[test]
fn killed_member_partitions_move_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = rt.block_on(broker.client());
    rt.block_on(
        admin
            .admin()
            .create_topic(TOPIC, PARTITIONS, TopicConfig::default()),
    )
    .unwrap();
    rt.block_on(produce(&admin, 0, 6_000));

    let spawn_member = |i: usize| {
        let out = std::fs::File::create(dir.path().join(format!("member{i}.out"))).unwrap();
        broker
            .cli()
            .args([
                "consume",
                TOPIC,
                "--group",
                "g2",
                "--reset",
                "earliest",
                "--session-timeout-ms",
                "3000",
                "--format",
                "%p %o %v\\n",
            ])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut members: Vec<std::process::Child> = (0..3).map(spawn_member).collect();
    let read_all = || -> Vec<String> {
        (0..3)
            .flat_map(|i| {
                std::fs::read_to_string(dir.path().join(format!("member{i}.out")))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let wait_for = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while read_all().len() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} lines",
                read_all().len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(6_000, "first batch");
    // Kill one member outright; produce more.
    members[0].kill().unwrap();
    members[0].wait().unwrap();
    let killed_at = Instant::now();
    rt.block_on(produce(&admin, 6_000, 6_000));
    // Within the session timeout plus a few seconds, the survivors own everything.
    let deadline = killed_at + Duration::from_secs(3 + 10);
    loop {
        let out = broker.run_cli(&["group", "describe", "g2"], b"");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let members_line = text.lines().filter(|l| l.starts_with("member ")).count();
        let owners: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with(TOPIC))
            .filter_map(|l| l.split('\t').nth(5))
            .collect();
        if members_line == 2 && !owners.contains("-") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions did not move within the session timeout: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let moved_after = killed_at.elapsed();
    wait_for(12_000, "after the kill");
    std::thread::sleep(Duration::from_millis(500));
    for m in members.iter_mut().skip(1) {
        let _ = m.kill();
        let _ = m.wait();
    }
    let lines = read_all();
    let mut count: HashMap<String, u32> = HashMap::new();
    for l in &lines {
        *count
            .entry(l.split(' ').nth(2).unwrap().to_owned())
            .or_default() += 1;
    }
    for i in 0..12_000 {
        assert!(
            count.contains_key(&format!("r{i}")),
            "record r{i} was never read"
        );
    }
    let reread: u32 = count.values().map(|n| n - 1).sum();
    eprintln!(
        "partitions moved {moved_after:?} after the kill; {reread} record(s) read twice (after the dead member's last commit)"
    );
}

#[test]
fn committed_offsets_survive_a_broker_crash_and_lag_and_reset_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    broker.run_ok(&["topic", "create", "lagged", "--partitions", "2"]);
    let input: String = (0..100).map(|i| format!("{i}\n")).collect();
    let out = broker.run_cli(&["produce", "lagged", "--partition", "0"], input.as_bytes());
    assert!(out.status.success());
    let out = broker.run_cli(&["produce", "lagged", "--partition", "1"], input.as_bytes());
    assert!(out.status.success());
    // Read 30 records as group g3 (commits what it printed), then stop.
    let read = broker.run_ok(&[
        "consume",
        "lagged",
        "--group",
        "g3",
        "--reset",
        "earliest",
        "-n",
        "30",
        "--timeout-ms",
        "10000",
        "--format",
        "%p:%o\\n",
    ]);
    assert_eq!(read.lines().count(), 30);
    let describe = broker.run_ok(&["group", "describe", "g3"]);
    let lag_of = |text: &str, p: u32| -> (String, u64, u64) {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("lagged\t{p}\t")))
            .unwrap_or_else(|| panic!("{text}"));
        let f: Vec<&str> = line.split('\t').collect();
        (
            f[2].to_owned(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        )
    };
    let (c0, end0, lag0) = lag_of(&describe, 0);
    let (c1, end1, lag1) = lag_of(&describe, 1);
    assert_eq!((end0, end1), (100, 100));
    let committed_total: u64 = [&c0, &c1]
        .iter()
        .map(|c| c.parse::<u64>().unwrap_or(0))
        .sum();
    assert_eq!(committed_total, 30, "{describe}");
    assert_eq!(lag0 + lag1, 170, "{describe}");

    // kill -9 the broker; committed offsets and the group survive.
    broker.kill9();
    broker.restart();
    let again = broker.run_ok(&["group", "describe", "g3"]);
    assert_eq!(lag_of(&again, 0), (c0.clone(), 100, lag0));
    assert_eq!(lag_of(&again, 1), (c1.clone(), 100, lag1));
    assert!(broker.run_ok(&["group", "list"]).contains("g3"));
    // The group continues where it stopped: the remaining 170 records, none of the first 30.
    let rest = broker.run_ok(&[
        "consume",
        "lagged",
        "--group",
        "g3",
        "--reset",
        "earliest",
        "-n",
        "170",
        "--timeout-ms",
        "10000",
        "--format",
        "%p:%o\\n",
    ]);
    let first: HashSet<&str> = read.lines().collect();
    assert_eq!(rest.lines().count(), 170);
    assert!(
        rest.lines().all(|l| !first.contains(l)),
        "re-read committed records"
    );

    // Reset: to the earliest, to an offset, to the latest.
    let out = broker.run_ok(&[
        "group",
        "reset-offsets",
        "g3",
        "--topic",
        "lagged",
        "--to-earliest",
    ]);
    assert!(
        out.contains("lagged\t0\t0") && out.contains("lagged\t1\t0"),
        "{out}"
    );
    assert_eq!(
        lag_of(&broker.run_ok(&["group", "describe", "g3"]), 0).2,
        100
    );
    broker.run_ok(&[
        "group",
        "reset-offsets",
        "g3",
        "--topic",
        "lagged",
        "--to-offset",
        "60",
    ]);
    let d = broker.run_ok(&["group", "describe", "g3"]);
    assert_eq!(lag_of(&d, 1), ("60".to_string(), 100, 40));
    let replay = broker.run_ok(&[
        "consume",
        "lagged",
        "--group",
        "g3",
        "-n",
        "80",
        "--timeout-ms",
        "10000",
        "--format",
        "%p:%o\\n",
    ]);
    assert!(
        replay
            .lines()
            .all(|l| l.split(':').nth(1).unwrap().parse::<u64>().unwrap() >= 60),
        "{replay}"
    );
    broker.run_ok(&[
        "group",
        "reset-offsets",
        "g3",
        "--topic",
        "lagged",
        "--to-latest",
    ]);
    assert_eq!(lag_of(&broker.run_ok(&["group", "describe", "g3"]), 0).2, 0);

    // Refused while the group has members.
    let mut member = broker
        .cli()
        .args([
            "consume",
            "lagged",
            "--group",
            "g3",
            "--timeout-ms",
            "20000",
            "--session-timeout-ms",
            "2000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = broker.run_ok(&["group", "describe", "g3"]);
        if d.contains("1 member(s)") {
            break;
        }
        assert!(Instant::now() < deadline, "member never joined: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = broker.run_cli(
        &[
            "group",
            "reset-offsets",
            "g3",
            "--topic",
            "lagged",
            "--to-earliest",
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("active member"),
        "{}",
        describe_output(&out)
    );
    let _ = member.kill();
    let _ = member.wait();
    // Delete once empty (after the killed member's session expires).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = broker.run_cli(&["group", "delete", "g3"], b"");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group never became deletable: {}",
            describe_output(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!broker.run_ok(&["group", "list"]).contains("g3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_subscription_follows_matching_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    let admin = client.admin();
    admin
        .create_topic("logs-a", 2, TopicConfig::default())
        .await
        .unwrap();
    admin
        .create_topic("logs-b", 1, TopicConfig::default())
        .await
        .unwrap();
    admin
        .create_topic("other", 3, TopicConfig::default())
        .await
        .unwrap();
    let mut consumer = client.consumer(ConsumerConfig {
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    });
    consumer
        .subscribe_pattern("gp", "logs-*", group_options())
        .await
        .unwrap();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        move |c: &sluice_client::Consumer| {
            let got = c.assignment();
            assert!(
                Instant::now() < deadline,
                "assignment never reached {n}: {got:?}"
            );
            got.len() == n
        }
    };
    let done = wait_for(3);
    while !done(&consumer) {
        consumer.poll().await.unwrap();
    }
    assert!(
        consumer
            .assignment()
            .iter()
            .all(|(t, _)| t.starts_with("logs-"))
    );
    // A new matching topic is picked up.
    admin
        .create_topic("logs-c", 1, TopicConfig::default())
        .await
        .unwrap();
    let done = wait_for(4);
    while !done(&consumer) {
        consumer.poll().await.unwrap();
    }
    assert!(consumer.assignment().contains(&("logs-c".to_string(), 0)));
    consumer.close().await.unwrap();
}

/// `__consumer_offsets` is kept compact: after many commits its old batches are dropped, and
/// the group's state still survives a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_topic_is_compacted_and_state_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let client = broker.client().await;
    client
        .admin()
        .create_topic("busy", 2, TopicConfig::default())
        .await
        .unwrap();
    let mut consumer = client.consumer(ConsumerConfig {
        max_wait: Duration::from_millis(20),
        ..ConsumerConfig::default()
    });
    consumer
        .subscribe("compact-me", &["busy"], group_options())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer.assignment().len() < 2 {
        assert!(Instant::now() < deadline, "never assigned");
        consumer.poll().await.unwrap();
    }
    for i in 0..1_200u64 {
        consumer
            .commit_offsets(&[("busy".into(), (i % 2) as u32, i)])
            .await
            .unwrap();
    }
    // Compaction runs in the background: the offsets partition's log start moves forward.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = client
            .admin()
            .describe_topic("__consumer_offsets")
            .await
            .unwrap();
        let (start, end): (u64, u64) = t
            .partitions
            .iter()
            .fold((0, 0), |a, p| (a.0 + p.log_start, a.1 + p.log_end));
        let kept: u64 = end - start;
        // 1,200 commits, compacted once past 1,000 batches: what stays is the snapshot and
        // the commits after it.
        if start > 0 && kept < 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "offsets topic not compacted: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(consumer.committed("busy", 0).await.unwrap(), Some(1_198));
    assert_eq!(consumer.committed("busy", 1).await.unwrap(), Some(1_199));
    drop(consumer);
    broker.kill9();
    broker.restart();
    let out = broker.run_cli(&["group", "describe", "compact-me"], b"");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("busy\t0\t1198\t") && text.contains("busy\t1\t1199\t"),
        "{text}"
    );
}
