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
