//! `sluice dev cluster`: the README's "A local cluster" tour, run as written (its shell block,
//! with `sluice` on the PATH), checked for what it promises; then the foreground mode stops
//! every node on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{describe_output, run_bounded, sluice_bin};

/// The shell block under `heading` in the README.
fn readme_block(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split(&format!("## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in the section");
    block.to_owned()
}

/// The pids in `dir/node-*/broker.pid`.
fn node_pids(dir: &Path) -> Vec<u32> {
    (1..=3)
        .filter_map(|i| {
            std::fs::read_to_string(dir.join(format!("node-{i}/broker.pid")))
                .ok()
                .and_then(|p| p.trim().parse().ok())
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Stops whatever nodes are still running (a failed test must not leave processes behind).
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for pid in node_pids(self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn the_readme_cluster_tour_runs_and_the_foreground_mode_stops_every_node() {
    let work = tempfile::tempdir().unwrap();
    let cluster_dir = work.path().join("dev-cluster");
    let _cleanup = Cleanup(&cluster_dir);
    // `sluice` on the PATH is this build's binary.
    let bin_dir = work.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(sluice_bin(), bin_dir.join("sluice")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -eu\n{}", readme_block("A local cluster"));
    let out = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(work.path())
            .env("PATH", &path)
            .env_remove("SLUICE_BROKER")
            .env_remove("SLUICE_TLS_CA"),
        b"",
        Duration::from_secs(300),
    );
    let logs = || {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(cluster_dir.join(format!("node-{i}/broker.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert!(
        out.status.success(),
        "the tour failed: {}\n{}",
        describe_output(&out),
        logs()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);

    // Both status tables: three voters, one leader, all live at the end.
    let tables: Vec<&str> = stdout.split("cluster dev-").skip(1).collect();
    assert_eq!(tables.len(), 2, "two status outputs in:\n{stdout}");
    for table in &tables {
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.split('\t').nth(1).is_some_and(|r| r.starts_with("voter")))
            .collect();
        assert_eq!(rows.len(), 3, "three voters:\n{table}");
        assert_eq!(
            rows.iter().filter(|r| r.contains("(leader)")).count(),
            1,
            "one leader:\n{table}"
        );
    }
    let last = tables[1];
    let live = last
        .lines()
        .filter(|l| l.split('\t').nth(2) == Some("live"))
        .count();
    assert_eq!(live, 3, "all three live after the restart:\n{last}");
    // The topic spread 4/4/4.
    let mut leads = [0; 4];
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 8
            && f[0].parse::<u32>().is_ok()
            && let Ok(l) = f[1].parse::<usize>()
        {
            leads[l] += 1;
        }
    }
    assert_eq!(
        leads[1..],
        [4, 4, 4],
        "leaders of the 12 partitions:\n{stdout}"
    );
    // What was produced came back (three keys, each once).
    for kv in ["alice=1", "bob=2", "carol=3"] {
        assert_eq!(
            stdout.matches(kv).count(),
            1,
            "{kv} consumed once:\n{stdout}"
        );
    }
    // The bootstrap list and CA are where the README says.
    let bootstrap = std::fs::read_to_string(cluster_dir.join("bootstrap")).unwrap();
    assert_eq!(bootstrap.trim().split(',').count(), 3);
    assert!(cluster_dir.join("ca.pem").exists());

    // The foreground mode on the same directory: all nodes already run; SIGTERM stops them.
    let pids = node_pids(&cluster_dir);
    assert_eq!(pids.len(), 3);
    let mut fg = Command::new(sluice_bin())
        .args(["dev", "cluster", "--nodes", "3", "--data-dir"])
        .arg(&cluster_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped once it says it runs in the foreground; bounded.
    let stdout = fg.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120).saturating_sub(started.elapsed()))
            .expect("the foreground mode never said it was running");
        if line.contains("running in the foreground") {
            break;
        }
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(fg.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = fg.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "foreground mode did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = fg.wait_with_output().unwrap();
    assert!(status.success(), "{}", describe_output(&out));
    for pid in pids {
        assert!(!alive(pid), "node pid {pid} still running");
    }
}
