//! A data dir belongs to one node of one cluster: starting it as another node, or in another
//! cluster, is refused with a message saying which, and the data is left as it was.

use std::process::Command;
use std::time::Duration;

use sluice_tests::{BrokerProcess, TEST_CONFIG, run_bounded, sluice_bin};

/// Starts `sluice broker` on `dir` with `config` and returns its error line (it must fail).
fn refused_start(dir: &std::path::Path, config: &str) -> String {
    let config_path = dir.join("other-config.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = run_bounded(
        Command::new(sluice_bin())
            .arg("broker")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn"),
        b"",
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started: {stderr}");
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
        .to_owned()
}

#[test]
fn a_data_dir_refuses_another_node_id_or_cluster_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{TEST_CONFIG}cluster_id = \"blue\"\n");
    let mut broker = BrokerProcess::start(dir.path(), &config);
    broker.run_ok(&["topic", "create", "kept"]);
    assert!(broker.terminate(), "log:\n{}", broker.log());

    let error = refused_start(dir.path(), &format!("{config}node_id = 2\n"));
    assert!(
        error.contains("belongs to node 1") && error.contains("configured as node 2"),
        "{error}"
    );
    let error = refused_start(
        dir.path(),
        &format!("{TEST_CONFIG}cluster_id = \"green\"\n"),
    );
    assert!(
        error.contains("belongs to cluster blue") && error.contains("cluster green"),
        "{error}"
    );
    // Started as itself again, it has its data.
    broker.restart();
    let topics = broker.run_ok(&["topic", "list"]);
    assert!(topics.contains("kept"), "{topics}");
}
