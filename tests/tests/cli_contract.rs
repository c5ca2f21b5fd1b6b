//! Acceptance 5 and 7: the CLI contract through the real binary, and `sluice bench`.

use sluice_tests::{BrokerProcess, TEST_CONFIG, describe_output, run_bounded, sluice_bin};
use std::time::Duration;

#[test]
fn cli_contract_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);

    // Topics.
    let out = broker.run_ok_in(
        &[
            "topic",
            "create",
            "events",
            "--partitions",
            "3",
            "--retention-ms",
            "86400000",
            "--retention-bytes",
            "1000000000",
            "--durability",
            "interval:50",
        ],
        b"",
    );
    assert!(out.contains("events"), "{out}");
    broker.run_ok_in(&["topic", "create", "logs"], b"");
    let list = broker.run_ok_in(&["topic", "list"], b"");
    assert!(
        list.contains("events\t3 partition(s)") && list.contains("logs\t1 partition(s)"),
        "{list}"
    );
    let d = broker.run_ok_in(&["topic", "describe", "events"], b"");
    assert!(
        d.contains("retention.ms=86400000") && d.contains("durability=interval:50"),
        "{d}"
    );
    assert_eq!(
        d.lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .count(),
        3,
        "{d}"
    );
    let out = broker.run_ok_in(&["topic", "add-partitions", "logs", "--count", "2"], b"");
    assert!(out.contains("3 partition(s)"), "{out}");

    // Produce with keys; consume with every format directive.
    broker.run_ok_in(
        &["produce", "events", "--key-separator", ":", "--acks", "all"],
        b"user1:login\nuser2:logout\nuser1:click\n",
    );
    let out = broker.run_ok_in(
        &[
            "consume",
            "events",
            "--from-beginning",
            "-n",
            "3",
            "--timeout-ms",
            "5000",
            "--format",
            "%k=%v|%p|%o|%t\\n",
        ],
        b"",
    );
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    lines.sort();
    assert!(
        lines[0].starts_with("user1=") && lines[2].starts_with("user2=logout|"),
        "{out}"
    );
    // Same key, same partition, in order.
    let user1: Vec<&str> = out.lines().filter(|l| l.starts_with("user1=")).collect();
    assert_eq!(user1.len(), 2);
    assert!(
        user1[0].starts_with("user1=login|") && user1[1].starts_with("user1=click|"),
        "{out}"
    );
    assert_eq!(user1[0].split('|').nth(1), user1[1].split('|').nth(1));

    // Explicit partition, acks 0 and 1, compression; --offset and --partition.
    broker.run_ok_in(
        &[
            "produce",
            "logs",
            "--partition",
            "2",
            "--acks",
            "1",
            "--compression",
            "lz4",
        ],
        b"a\nb\nc\n",
    );
    broker.run_ok_in(
        &[
            "produce",
            "logs",
            "--partition",
            "2",
            "--acks",
            "0",
            "--compression",
            "zstd",
        ],
        b"d\n",
    );
    let mut out = String::new();
    for _ in 0..50 {
        out = broker.run_ok_in(
            &[
                "consume",
                "logs",
                "--partition",
                "2",
                "--offset",
                "1",
                "--timeout-ms",
                "1000",
                "--format",
                "%o:%v ",
            ],
            b"",
        );
        if out.contains("3:d") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        out, "1:b 2:c 3:d ",
        "acks=0 record never arrived or offsets wrong"
    );
    let out = broker.run_ok_in(
        &[
            "consume",
            "logs",
            "--partition",
            "0",
            "--from-beginning",
            "--timeout-ms",
            "500",
        ],
        b"",
    );
    assert_eq!(out, "", "nothing was produced to partition 0");

    // --from-time: a time in the future gives nothing, one in the past everything.
    let out = broker.run_ok_in(
        &[
            "consume",
            "logs",
            "--partition",
            "2",
            "--from-time",
            "2000-01-01T00:00:00Z",
            "--timeout-ms",
            "1000",
        ],
        b"",
    );
    assert_eq!(out, "a\nb\nc\nd\n");
    let out = broker.run_ok_in(
        &[
            "consume",
            "logs",
            "--partition",
            "2",
            "--from-time",
            "2999-01-01T00:00:00Z",
            "--timeout-ms",
            "500",
        ],
        b"",
    );
    assert_eq!(out, "");

    // Errors: unknown topic, bad flag values, bad times, out-of-range partition, unreachable broker.
    broker.run_fails_in(&["produce", "nope"], b"x\n", "does not exist");
    broker.run_fails_in(
        &["consume", "nope", "--timeout-ms", "100"],
        b"",
        "does not exist",
    );
    broker.run_fails_in(&["produce", "events", "--acks", "2"], b"x\n", "acks");
    broker.run_fails_in(
        &["produce", "events", "--compression", "gzip"],
        b"x\n",
        "compression",
    );
    broker.run_fails_in(
        &["topic", "create", "x", "--durability", "sometimes"],
        b"",
        "durability",
    );
    broker.run_fails_in(
        &["consume", "events", "--from-time", "yesterday"],
        b"",
        "RFC 3339",
    );
    broker.run_fails_in(
        &["produce", "events", "--partition", "9"],
        b"x\n",
        "no partition 9",
    );
    broker.run_fails_in(&["topic", "create", "events"], b"", "already exists");
    broker.run_fails_in(&["topic", "create", "bad/name"], b"", "topic name");
    let out = run_bounded(
        std::process::Command::new(sluice_bin())
            .args(["--broker", "127.0.0.1:1", "--tls-ca"])
            .arg(broker.ca_path())
            .args(["topic", "list"]),
        b"",
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        describe_output(&out)
    );

    // Delete.
    broker.run_ok_in(&["topic", "delete", "logs"], b"");
    let list = broker.run_ok_in(&["topic", "list"], b"");
    assert!(!list.contains("logs"), "{list}");
    broker.run_fails_in(&["topic", "describe", "logs"], b"", "does not exist");
}

#[test]
fn bench_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    const SMALL: [&str; 6] = [
        "--count",
        "3000",
        "--record-size",
        "100",
        "--partitions",
        "2",
    ];
    for mode in ["produce", "consume", "e2e"] {
        let args = [&["bench", mode][..], &SMALL, &["--producers", "2"]].concat();
        let out = broker.run_ok_in(&args, b"");
        assert!(
            out.contains("3000 records in") && out.contains("records/s") && out.contains("MB/s"),
            "{mode}: {out}"
        );
        if mode != "consume" {
            assert!(
                out.contains("p50") && out.contains("p99") && out.contains("p999"),
                "{mode}: {out}"
            );
        }
    }
    // The other pacings, and consumers sharing the partitions: every record counted once.
    for extra in [
        &["produce", "--rate", "20000"][..],
        &["produce", "--in-flight", "1", "--batch-records", "100"][..],
        &["e2e", "--consumers", "2"][..],
        &["consume", "--consumers", "3"][..],
    ] {
        let args = [&["bench"][..], extra, &SMALL].concat();
        let out = broker.run_ok_in(&args, b"");
        assert!(out.contains("3000 records in"), "{extra:?}: {out}");
    }
    broker.run_fails_in(
        &["bench", "produce", "--rate", "100", "--batch-records", "10"],
        b"",
        "do not go together",
    );
    let out = broker.run_ok(&["bench", "metadata", "--count", "40", "--producers", "4"]);
    assert!(
        out.contains("topic creates: 40 in") && out.contains("topic deletes: 40 in"),
        "{out}"
    );
    let topics = broker.run_ok(&["topic", "list"]);
    assert!(
        !topics.contains("bench-meta"),
        "the bench deletes its topics: {topics}"
    );
}

#[test]
fn broker_stops_cleanly_on_sigterm_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    broker.run_ok_in(&["topic", "create", "t"], b"");
    broker.run_ok_in(&["produce", "t"], b"one\ntwo\n");
    assert!(
        broker.terminate(),
        "broker did not exit cleanly on SIGTERM:\n{}",
        broker.log()
    );
    assert!(
        broker.log().contains("store closed cleanly"),
        "{}",
        broker.log()
    );
    broker.restart();
    let out = broker.run_ok_in(
        &[
            "consume",
            "t",
            "--from-beginning",
            "-n",
            "2",
            "--timeout-ms",
            "5000",
        ],
        b"",
    );
    assert_eq!(out, "one\ntwo\n");
}

#[test]
fn client_finds_broker_and_ca_from_env_and_default_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sluice-data");
    let broker = BrokerProcess::start(&data, TEST_CONFIG);
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |cwd: &std::path::Path, envs: &[(&str, String)], args: &[&str]| {
        let mut cmd = std::process::Command::new(sluice_bin());
        cmd.current_dir(cwd)
            .env_remove("SLUICE_BROKER")
            .env_remove("SLUICE_TLS_CA");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        run_bounded(cmd.args(args), b"", Duration::from_secs(60))
    };
    let addr = ("SLUICE_BROKER", broker.addr.to_string());

    // In the broker's directory, the dev CA of ./sluice-data is found without flags.
    let out = run(
        dir.path(),
        std::slice::from_ref(&addr),
        &["topic", "create", "env-topic"],
    );
    assert!(out.status.success(), "{}", describe_output(&out));

    // Elsewhere, SLUICE_TLS_CA names the CA.
    let ca = ("SLUICE_TLS_CA", broker.ca_path().display().to_string());
    let out = run(elsewhere.path(), &[addr.clone(), ca], &["topic", "list"]);
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("env-topic"));

    // Elsewhere without a CA, the system roots do not trust the dev CA: a clear TLS error.
    let out = run(
        elsewhere.path(),
        std::slice::from_ref(&addr),
        &["topic", "list"],
    );
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-ca"),
        "{}",
        describe_output(&out)
    );

    // --insecure connects, and says loudly that it did not verify.
    let out = run(
        elsewhere.path(),
        std::slice::from_ref(&addr),
        &["--insecure", "topic", "list"],
    );
    assert!(out.status.success(), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("insecure"),
        "{}",
        describe_output(&out)
    );
}
