//! Issue 10, acceptance 5: the examples of `examples/` run end to end against a real broker
//! and their outputs are checked.

use sluice_client::Client;
use sluice_tests::{BrokerProcess, TEST_CONFIG};

/// The news feed: every reader group receives every article, single readers in each source's
/// order, the shared group spreads the partitions over its members, and the late reader
/// replays the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_news_feed_reaches_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    let config = broker.client_config();
    let report = news_feed::run(|| Client::connect(config.clone()), 8, 100)
        .await
        .unwrap();
    assert_eq!(report.published, 800);
    let problems = report.problems();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        report.groups.keys().collect::<Vec<_>>(),
        ["analytics", "archive", "mobile", "web"]
    );
    // The shared group: each partition read by one member at a time, so its members' reads
    // together are the feed, and more than one member took part.
    let analytics = &report.groups["analytics"];
    let members: std::collections::BTreeSet<usize> = analytics.iter().map(|s| s.member).collect();
    assert!(members.len() >= 2, "{members:?}");
    // Keyed by source: one source's articles all in one partition.
    for group in report.groups.values() {
        let mut partition_of = std::collections::BTreeMap::new();
        for s in group {
            assert_eq!(
                *partition_of.entry(s.source.clone()).or_insert(s.partition),
                s.partition,
                "{} in two partitions",
                s.source
            );
        }
    }
}

/// The trading-signal pipeline: ticks from a file source through the crossover plugin (state in
/// the plugin state store) to a file sink give exactly the signals computed independently
/// from the same ticks — also when the broker is killed with `kill -9` half way.
#[test]
fn trading_signals_match_an_independent_computation_across_kill_9() {
    use std::time::Duration;
    use trading_signals::{Cli, expected_signals, setup, ticks, wait_signals};

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("trading");
    std::fs::create_dir_all(&work).unwrap();
    let mut broker = BrokerProcess::start(&dir.path().join("data"), TEST_CONFIG);
    let cli = Cli {
        sluice: sluice_tests::sluice_bin(),
        flags: vec![
            "--broker".into(),
            broker.addr.to_string(),
            "--tls-ca".into(),
            broker.ca_path().display().to_string(),
        ],
    };
    let all = ticks(6, 3_000);
    let expected = expected_signals(&all);
    assert!(expected.len() > 200, "{} signals", expected.len());
    // The first half of the ticks, then the broker dies, then the rest arrives.
    let half = all.lines().count() / 2;
    let (first, rest): (Vec<&str>, Vec<&str>) = {
        let lines: Vec<&str> = all.lines().collect();
        (lines[..half].to_vec(), lines[half..].to_vec())
    };
    std::fs::write(work.join("ticks.csv"), first.join("\n") + "\n").unwrap();
    let signals = setup(&cli, &work).unwrap();
    let early = expected_signals(&(first.join("\n") + "\n")).len();
    let got = wait_signals(&signals, early / 2, Duration::from_secs(120));
    assert!(got.len() >= early / 2, "{} of {early} signals", got.len());
    broker.kill9();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(work.join("ticks.csv"))
            .unwrap();
        f.write_all((rest.join("\n") + "\n").as_bytes()).unwrap();
    }
    broker.restart();
    let got = wait_signals(&signals, expected.len(), Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    let got_after = trading_signals::read_signals(&signals);
    assert_eq!(got, got_after, "more signals came after the expected ones");
    assert_eq!(got.len(), expected.len(), "signal count");
    assert!(
        got == expected,
        "the signals differ from the independent computation"
    );
}
