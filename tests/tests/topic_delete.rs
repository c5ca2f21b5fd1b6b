//! Deleting topics through a real broker process and the real CLI: a topic a pipeline reads or
//! writes is refused unless `--force` (which deletes those pipelines and stops their runners),
//! a deleted topic's committed group offsets do not carry over to a topic created again under
//! its name (not after a restart either), and a crash between the metadata delete and the data
//! removal heals at the next start-up.

use std::time::{Duration, Instant};

use sluice_tests::{BrokerProcess, TEST_CONFIG, describe_output};

/// Lines `{"amount":N}` for N in `from..to`.
fn orders(from: u32, to: u32) -> String {
    (from..to)
        .map(|n| format!("{{\"amount\":{n}}}\n"))
        .collect()
}

/// Sum of the log ends of a topic's partitions, from `topic describe`.
fn log_end(broker: &BrokerProcess, topic: &str) -> u64 {
    let text = broker.run_ok(&["topic", "describe", topic]);
    text.lines()
        .skip_while(|l| !l.starts_with("partition\t"))
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            f[6].parse::<u64>()
                .unwrap_or_else(|e| panic!("{e}: {text}"))
        })
        .sum()
}

fn topic_names(broker: &BrokerProcess) -> Vec<String> {
    let mut names: Vec<String> = broker
        .run_ok(&["topic", "list"])
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.starts_with("__"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

fn create_pipeline(broker: &BrokerProcess, name: &str, from: &str, to: &str) {
    broker.run_ok(&[
        "pipeline",
        "create",
        name,
        "--plugin",
        "json-filter",
        "--from",
        from,
        "--to",
        to,
        "--config",
        "field=amount",
        "--config",
        "op=gt",
        "--config",
        "value=6",
    ]);
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pipelines_topics_are_deleted_only_with_force_which_deletes_the_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    for (t, n) in [
        ("orders", "2"),
        ("big", "1"),
        ("archive", "1"),
        ("other", "1"),
    ] {
        broker.run_ok(&["topic", "create", t, "--partitions", n]);
    }
    let path = sluice_wasm_plugins::path("json-filter");
    broker.run_ok(&["plugin", "deploy", "json-filter", path.to_str().unwrap()]);
    create_pipeline(&broker, "teas", "orders", "big");
    create_pipeline(&broker, "relay", "big", "archive");
    broker.run_ok_in(
        &["produce", "orders", "--partition", "0"],
        orders(0, 10).as_bytes(),
    );
    broker.run_ok_in(&["produce", "other"], b"kept-1\nkept-2\n");
    // Both pipelines run: amounts 7, 8 and 9 pass both filters.
    wait_for("both pipelines to pass 3 records", || {
        log_end(&broker, "big") == 3 && log_end(&broker, "archive") == 3
    });

    // Refused, naming the pipelines, for an input, an output, and a topic that is both.
    broker.run_fails(
        &["topic", "delete", "orders"],
        r#"topic "orders" is read by pipeline "teas"; delete the pipeline first or use --force"#,
    );
    broker.run_fails(
        &["topic", "delete", "archive"],
        r#"topic "archive" is written by pipeline "relay"; delete the pipeline first or use --force"#,
    );
    broker.run_fails(
        &["topic", "delete", "big"],
        r#"topic "big" is read by pipeline "relay" and written by pipeline "teas"; delete them first or use --force"#,
    );
    assert_eq!(topic_names(&broker), ["archive", "big", "orders", "other"]);
    // The groups' internal topic is not the user's to delete, forced or not.
    for args in [
        &["topic", "delete", "__consumer_offsets"][..],
        &["topic", "delete", "__consumer_offsets", "--force"][..],
    ] {
        broker.run_fails(args, "is an internal topic");
    }
    let pipelines = broker.run_ok(&["pipeline", "list"]);
    assert!(
        pipelines.contains("teas\trunning") && pipelines.contains("relay\trunning"),
        "{pipelines}"
    );

    // Forced: both pipelines and the topic go.
    let out = broker.run_ok(&["topic", "delete", "big", "--force"]);
    assert!(
        out.contains("deleted pipeline relay")
            && out.contains("deleted pipeline teas")
            && out.contains("deleted topic big"),
        "{out}"
    );
    assert_eq!(broker.run_ok(&["pipeline", "list"]).trim(), "");
    assert_eq!(topic_names(&broker), ["archive", "orders", "other"]);
    broker.run_fails(&["pipeline", "describe", "teas"], "does not exist");

    // The runners stopped: a topic created again under the output's name gets nothing from
    // the deleted pipeline, however much its old input receives.
    broker.run_ok(&["topic", "create", "big"]);
    broker.run_ok_in(
        &["produce", "orders", "--partition", "1"],
        orders(10, 20).as_bytes(),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        log_end(&broker, "big"),
        0,
        "a deleted pipeline wrote output"
    );
    assert_eq!(log_end(&broker, "orders"), 20);

    // Nothing uses the input any more, so a plain delete works; the rest stays intact.
    assert!(
        broker
            .run_ok(&["topic", "delete", "orders"])
            .contains("deleted topic orders")
    );
    assert_eq!(topic_names(&broker), ["archive", "big", "other"]);
    assert_eq!(
        log_end(&broker, "archive"),
        3,
        "the pipeline's output stays"
    );
    let read = broker.run_ok(&[
        "consume",
        "other",
        "--from-beginning",
        "-n",
        "2",
        "--timeout-ms",
        "10000",
    ]);
    assert_eq!(read.lines().collect::<Vec<_>>(), ["kept-1", "kept-2"]);
    broker.run_fails(&["topic", "delete", "orders"], "does not exist");
}

/// The `committed` column of `group describe GROUP` for `topic`/0, if the line is there.
fn committed(broker: &BrokerProcess, group: &str, topic: &str) -> Option<String> {
    let text = broker.run_ok(&["group", "describe", group]);
    text.lines()
        .find(|l| l.starts_with(&format!("{topic}\t0\t")))
        .map(|l| l.split('\t').nth(2).unwrap().to_owned())
}

/// Reads `n` values of `topic` as `group` (from the earliest offset when it has none
/// committed), committing what it read.
fn consume_as_group(broker: &BrokerProcess, topic: &str, group: &str, n: usize) -> Vec<String> {
    let n = n.to_string();
    let out = broker.run_ok(&[
        "consume",
        topic,
        "--group",
        group,
        "--reset",
        "earliest",
        "-n",
        &n,
        "--timeout-ms",
        "10000",
    ]);
    out.lines().map(str::to_owned).collect()
}

fn produce_numbered(broker: &BrokerProcess, topic: &str, prefix: &str, n: usize) {
    let input: String = (0..n).map(|i| format!("{prefix}{i}\n")).collect();
    broker.run_ok_in(&["produce", topic, "--partition", "0"], input.as_bytes());
}

/// A group with offset 50 committed on the old `t`: 60 records, 50 read.
fn commit_50_of_60(broker: &BrokerProcess) {
    broker.run_ok(&["topic", "create", "t"]);
    produce_numbered(broker, "t", "old-", 60);
    assert_eq!(consume_as_group(broker, "t", "g", 50).len(), 50);
    assert_eq!(committed(broker, "g", "t").as_deref(), Some("50"));
}

/// After `t` was deleted and created again with 10 records: no stale offset shows, and the
/// group reads all 10 new records.
fn group_starts_over_on_the_new_topic(broker: &BrokerProcess) {
    // Without offsets and members for `t` the group does not list it; with the old offset
    // it would read `t 0 50 10 0`: committed past the log end, lag 0, nothing consumed.
    assert_eq!(
        committed(broker, "g", "t"),
        None,
        "stale offset of the deleted topic: {}",
        broker.run_ok(&["group", "describe", "g"])
    );
    let read = consume_as_group(broker, "t", "g", 10);
    let expected: Vec<String> = (0..10).map(|i| format!("new-{i}")).collect();
    assert_eq!(read, expected);
    assert_eq!(committed(broker, "g", "t").as_deref(), Some("10"));
}

#[test]
fn committed_offsets_of_a_deleted_topic_are_dropped_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    commit_50_of_60(&broker);
    broker.run_ok(&["topic", "delete", "t"]);
    broker.run_ok(&["topic", "create", "t"]);
    produce_numbered(&broker, "t", "new-", 10);
    // The tombstones are in `__consumer_offsets`: a crash and a replay do not bring 50 back.
    broker.kill9();
    broker.restart();
    group_starts_over_on_the_new_topic(&broker);
    broker.kill9();
    broker.restart();
    assert_eq!(committed(&broker, "g", "t").as_deref(), Some("10"));
}

#[test]
fn a_crash_between_the_metadata_delete_and_the_data_removal_heals_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = format!("{TEST_CONFIG}topic_delete_fault_abort_after_metadata = true\n");
    let mut broker = BrokerProcess::start(dir.path(), &faulty);
    commit_50_of_60(&broker);
    broker.run_ok(&["topic", "create", "kept"]);
    produce_numbered(&broker, "kept", "k-", 5);
    let t_id = broker
        .run_ok(&["topic", "describe", "t"])
        .split("(id ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_owned();

    // The broker aborts once the delete is in the metadata log, before offsets and data go.
    let out = broker.run_cli(&["topic", "delete", "t"], b"");
    assert!(!out.status.success(), "{}", describe_output(&out));
    wait_for("the broker to abort", || {
        broker
            .log()
            .contains("topic_delete_fault_abort_after_metadata: aborting")
    });
    let addr = broker.addr;
    broker.kill9();
    let broker = BrokerProcess::start_at(dir.path(), TEST_CONFIG, addr);

    // The delete stands; the replica watcher (as soon as the delete applied, or at start-up)
    // removed the data, and start-up the offsets it left behind.
    assert_eq!(topic_names(&broker), ["kept"]);
    let log = broker.log();
    let cleaned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("removing the data of a deleted topic"))
        .collect();
    assert!(
        !cleaned.is_empty()
            && cleaned
                .iter()
                .all(|l| l.contains(&format!("topic_id={t_id}"))),
        "no orphan clean-up (only) for topic id {t_id} in the log:\n{log}"
    );
    assert!(
        log.contains("dropped committed offsets of topics deleted before a crash"),
        "{log}"
    );
    broker.run_ok(&["topic", "create", "t"]);
    assert_eq!(log_end(&broker, "t"), 0);
    produce_numbered(&broker, "t", "new-", 10);
    group_starts_over_on_the_new_topic(&broker);
    assert_eq!(log_end(&broker, "kept"), 5, "other topics are intact");
}
