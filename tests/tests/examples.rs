//! Issue 10, acceptance 5: the examples of `examples/` run end to end against a real broker
//! and their outputs are checked.

use sluice_client::Client;
use sluice_tests::{BrokerProcess, TEST_CONFIG};

/// The global flags that point the `sluice` CLI at `broker`.
fn cli_flags(broker: &BrokerProcess) -> Vec<String> {
    vec![
        "--broker".into(),
        broker.addr.to_string(),
        "--tls-ca".into(),
        broker.ca_path().display().to_string(),
    ]
}

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
        flags: cli_flags(&broker),
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

/// Log aggregation: services' log files (rotated half way) tailed by source connectors and
/// SDK producers into `logs` keyed by service, the errors kept by a json-filter pipeline and
/// posted by the HTTP sink to the example's indexer, which answers queries by service and
/// time with exactly the errors the services logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_aggregation_indexes_every_error_by_service_and_time() {
    use log_aggregation::{FILE_SERVICES, SDK_SERVICES, T0, expected_errors, indexer};

    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), TEST_CONFIG);
    let cli = log_aggregation::Cli {
        sluice: sluice_tests::sluice_bin(),
        flags: cli_flags(&broker),
    };
    let client = Client::connect(broker.client_config()).await.unwrap();
    let indexer = indexer::Indexer::start("127.0.0.1:0").unwrap();
    let work = dir.path().join("logs");
    let lines = 400;
    let problems = log_aggregation::run(&cli, &client, &work, indexer.addr, lines)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    // The test's own questions, over HTTP.
    let addr = indexer.addr;
    let ask =
        move |path: String| tokio::task::spawn_blocking(move || indexer::get(addr, &path).unwrap());
    for service in FILE_SERVICES.iter().chain(&SDK_SERVICES) {
        let body = ask(format!("/search?service={service}")).await.unwrap();
        let got: Vec<&str> = body.lines().collect();
        let expected = expected_errors(service, 0..lines);
        assert_eq!(got, expected, "{service}");
        assert!(
            expected.len() >= lines as usize / 20,
            "{service}: {}",
            expected.len()
        );
    }
    // By time, across services: the errors of the first minute, oldest first.
    let body = ask(format!("/search?from={T0}&to={}", T0 + 60_000))
        .await
        .unwrap();
    let mut expected: Vec<String> = FILE_SERVICES
        .iter()
        .chain(&SDK_SERVICES)
        .flat_map(|s| expected_errors(s, 0..60))
        .collect();
    expected.sort_by_key(|l| l.split(',').next().unwrap().to_owned());
    let got: Vec<&str> = body.lines().collect();
    assert_eq!(got.len(), expected.len());
    for line in &got {
        assert!(expected.contains(&line.to_string()), "{line}");
        assert!(line.contains("\"level\":\"error\""), "{line}");
    }
    let times: Vec<&str> = got.iter().map(|l| l.split(',').next().unwrap()).collect();
    assert!(times.is_sorted(), "oldest first");
    // The files were rotated while being tailed, and nothing was refused.
    assert!(work.join("api.log.1").exists());
    let sluice = |args: &[&str]| {
        let out = std::process::Command::new(sluice_tests::sluice_bin())
            .args(&cli.flags)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Every line in `logs` once, keyed by its service (file sources and SDK alike).
    let logs = sluice(&[
        "consume",
        "logs",
        "--from-beginning",
        "--format",
        "%k %v\n",
        "--timeout-ms",
        "2000",
    ]);
    let mut keyed: std::collections::BTreeMap<String, usize> = Default::default();
    for line in logs.lines() {
        let (key, value) = line.split_once(' ').unwrap();
        assert!(value.contains(&format!("\"service\":\"{key}\"")), "{line}");
        *keyed.entry(key.to_owned()).or_default() += 1;
    }
    assert_eq!(keyed.len(), 5, "{keyed:?}");
    assert!(keyed.values().all(|n| *n == lines as usize), "{keyed:?}");
    let text = sluice(&["topic", "describe", "errors-refused"]);
    assert!(text.contains("\n0\t1\t"), "{text}");
    let row = text.lines().last().unwrap();
    assert!(row.ends_with("\t0\t0\t0"), "dead letters: {row}");
}
