//! A full data disk, on a real broker process over a small tmpfs: produce fails saying the disk
//! is full and where, reads keep working, writes resume by themselves once space is freed with
//! every acknowledged record intact; and a broker started on a full disk names the data dir,
//! not the network.
//!
//! Needs root (to mount the tmpfs), as CI has.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_client::{Acks, Client, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};
use sluice_proto::OffsetSpec;
use sluice_proto::TopicConfig;
use sluice_tests::{BrokerProcess, TEST_CONFIG, run_bounded, sluice_bin};

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (this test runs as root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open (a broker being killed) does not keep the mount.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `path` until the disk refuses more (or `limit` bytes); returns the bytes written.
fn fill(path: &Path, limit: usize) -> usize {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0;
    // Big chunks, then page-sized ones, so that not one page is left free.
    for chunk in [64 * 1024, 4096] {
        let zeros = vec![0u8; chunk];
        while written < limit {
            match file.write_all(&zeros) {
                Ok(()) => written += chunk,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = file.sync_all();
    written
}

fn record(i: usize) -> ProducerRecord {
    // 32 KiB a record: the tmpfs fills within a few hundred.
    let value = format!("r{i:05}-{}", "x".repeat(32 * 1024));
    ProducerRecord::new("full", value)
}

/// The `r00042` ids of every record in partition 0 of `full`, in offset order, checking that
/// offsets are dense from 0.
async fn stored_ids(client: &Client) -> Vec<String> {
    let end = client
        .admin()
        .list_offsets("full", vec![(0, OffsetSpec::Latest)])
        .await
        .unwrap()[0]
        .result
        .clone()
        .unwrap() as usize;
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("full", &[0]).await.unwrap();
    consumer.seek("full", 0, SeekTo::Earliest).await.unwrap();
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.len() < end && Instant::now() < deadline {
        for r in consumer.poll().await.unwrap() {
            assert_eq!(r.offset, ids.len() as u64, "offsets are dense");
            let value = r.value.unwrap();
            ids.push(String::from_utf8_lossy(&value[..6]).into_owned());
        }
    }
    assert_eq!(ids.len(), end, "the records up to the log end within 20 s");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_produce_naming_it_and_writes_resume_once_space_is_freed() {
    let tmpfs = Tmpfs::mount("16m");
    let data_dir = tmpfs.path().to_owned();
    // Room to free later, taken before the broker fills the rest.
    let filler = data_dir.join("filler");
    assert_eq!(fill(&filler, 4 * 1024 * 1024), 4 * 1024 * 1024);
    let broker = BrokerProcess::start(&data_dir, TEST_CONFIG);
    let client = broker.client().await;
    client
        .admin()
        .create_topic("full", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        acks: Acks::All,
        retries: 0,
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    });

    // Produce until the disk is full (16 MiB hold at most ~500 such records).
    let mut acked = Vec::new();
    let mut next = 0;
    let err = loop {
        assert!(
            next < 2_000,
            "the disk never filled; log:\n{}",
            broker.log()
        );
        match producer.send_and_wait(record(next)).await {
            Ok(m) => {
                assert_eq!(m.offset, acked.len() as u64);
                acked.push(format!("r{next:05}"));
            }
            Err(e) => break e.to_string(),
        }
        next += 1;
    };
    let redb_file = data_dir.join("sluice.redb");
    for text in [
        err,
        // Refused at once while the disk stays full, in the same words.
        producer
            .send_and_wait(record(next + 1))
            .await
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            text.contains("disk full: No space left on device")
                && text.contains(&redb_file.display().to_string())
                && text.contains("writes resume by themselves once space is freed"),
            "the error does not say the disk is full and where: {text}"
        );
    }
    assert!(acked.len() > 50, "only {} records fit", acked.len());
    // Reads keep working.
    assert_eq!(stored_ids(&client).await, acked);
    // Admin writes fail while the disk is full (a topic's partitions go into the store).
    let admin = client.admin();
    let mut metadata_refused = None;
    for i in 0..20 {
        // A topic of 64 partitions at a time, until the metadata log finds no room either.
        if let Err(e) = admin
            .create_topic(&format!("meta-{i}"), 64, TopicConfig::default())
            .await
        {
            metadata_refused = Some(e.to_string());
            break;
        }
    }
    let metadata_refused = metadata_refused.expect("a metadata write failed on the full disk");
    assert!(
        metadata_refused.contains("disk full"),
        "the error does not say the disk is full: {metadata_refused}"
    );

    std::fs::remove_file(&filler).unwrap();
    // Writes resume by themselves (the store reopens about every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    next += 2;
    loop {
        match producer.send_and_wait(record(next)).await {
            Ok(m) => {
                assert_eq!(
                    m.offset,
                    acked.len() as u64,
                    "offsets continue without a gap"
                );
                acked.push(format!("r{next:05}"));
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "writes did not resume within 30 s after space was freed: {e}; log:\n{}",
                broker.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        next += 1;
        producer.send_and_wait(record(next)).await.unwrap();
        acked.push(format!("r{next:05}"));
    }
    // Every acknowledged record, in order, and none of the refused ones.
    assert_eq!(stored_ids(&client).await, acked);
    // Admin writes resume too: bounded retries.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin
            .create_topic("after-full", 1, TopicConfig::default())
            .await
        {
            Ok(t) => {
                assert_eq!(t.partitions.len(), 1);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "metadata writes did not resume within 30 s: {e}; log:
{}",
                broker.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let topics = admin.list_topics().await.unwrap();
    assert!(topics.iter().any(|t| t.name == "after-full"), "{topics:?}");
}

#[test]
fn a_broker_started_on_a_full_disk_names_the_data_dir() {
    let tmpfs = Tmpfs::mount("16m");
    let data_dir: PathBuf = tmpfs.path().to_owned();
    {
        // A first run leaves its certificates, config and store there, as a restart finds them.
        let mut broker = BrokerProcess::start(&data_dir, TEST_CONFIG);
        assert!(broker.terminate(), "log:\n{}", broker.log());
    }
    fill(&data_dir.join("filler"), usize::MAX);
    // Run directly, not through the harness: its log file would be on the full disk.
    let out = run_bounded(
        Command::new(sluice_bin())
            .arg("broker")
            .arg("--config")
            .arg(data_dir.join("test-config.toml"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn"),
        b"",
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the broker started on a full disk: {stderr}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains(&format!("data dir {}", data_dir.display()))
            && error.contains("No space left on device")
            && !error.contains("network"),
        "the start-up error does not name the full data dir: {error}"
    );
}
