//! The file source and file sink components on real files, in directories granted to them
//! (and only those): lines in, lines out, rotation, checkpoints that replay the same records,
//! a sink that survives a crash between its writes and its commits without repeating a line.

use sluice_plugin_abi::{BatchReader, PluginRecord, encode_batch};
use sluice_plugin_host::{
    DirGrant, Grants, Limits, Plugin, PluginError, PluginRuntime, SinkInstance, SourceInstance,
};

fn runtime() -> (PluginRuntime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (PluginRuntime::new(dir.path()).unwrap(), dir)
}

fn load(rt: &PluginRuntime, name: &str) -> Plugin {
    rt.load(&sluice_wasm_plugins::read(name)).unwrap()
}

fn grant(dir: &std::path::Path, writable: bool) -> Grants {
    Grants {
        dirs: vec![DirGrant {
            path: dir.to_owned(),
            writable,
        }],
        http_hosts: Vec::new(),
    }
}

fn cfg(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn lines(batch: &[u8]) -> Vec<String> {
    BatchReader::new(batch)
        .unwrap()
        .map(|r| String::from_utf8(r.unwrap().value_bytes().to_vec()).unwrap())
        .collect()
}

fn source(plugin: &Plugin, file: &std::path::Path, checkpoint: Option<Vec<u8>>) -> SourceInstance {
    let dir = file.parent().unwrap();
    plugin
        .source(
            cfg(&[("path", file.display().to_string())]),
            Limits::default(),
            &grant(dir, false),
            checkpoint,
        )
        .unwrap()
}

fn append(file: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn the_file_source_reads_whole_lines_and_replays_from_a_checkpoint() {
    let (rt, _cache) = runtime();
    let plugin = load(&rt, "file-source");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    append(&file, "one\ntwo\r\nthree\nfour\nfive (no newline yet)");

    let mut s = source(&plugin, &file, None);
    let start = s.checkpoint().unwrap();
    assert_eq!(lines(&s.poll(2).unwrap()), ["one", "two"]);
    let after_two = s.checkpoint().unwrap();
    assert_eq!(
        lines(&s.poll(100).unwrap()),
        ["three", "four"],
        "a partial line waits"
    );
    assert!(lines(&s.poll(100).unwrap()).is_empty());
    append(&file, "\nsix\n");
    assert_eq!(
        lines(&s.poll(100).unwrap()),
        ["five (no newline yet)", "six"]
    );

    // Opened at a checkpoint and polled for as many records as then, the same records.
    let mut again = source(&plugin, &file, Some(after_two));
    assert_eq!(lines(&again.poll(2).unwrap()), ["three", "four"]);
    let mut from_start = source(&plugin, &file, Some(start));
    assert_eq!(lines(&from_start.poll(2).unwrap()), ["one", "two"]);
}

#[test]
fn the_file_source_finishes_a_rotated_file_then_reads_the_new_one() {
    let (rt, _cache) = runtime();
    let plugin = load(&rt, "file-source");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    append(&file, "old-1\nold-2\n");
    let mut s = source(&plugin, &file, None);
    assert_eq!(lines(&s.poll(1).unwrap()), ["old-1"]);
    let mid_old = s.checkpoint().unwrap();
    // Written just before the rotation, then rotated: mv app.log app.log.1, a new app.log.
    append(&file, "old-3\n");
    std::fs::rename(&file, dir.path().join("app.log.1")).unwrap();
    append(&file, "new-1\nnew-2\n");
    assert_eq!(lines(&s.poll(100).unwrap()), ["old-2", "old-3"]);
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.extend(lines(&s.poll(100).unwrap()));
    }
    assert_eq!(rest, ["new-1", "new-2"]);
    // A restart from the middle of the old file finds it under its new name.
    let mut again = source(&plugin, &file, Some(mid_old));
    assert_eq!(lines(&again.poll(2).unwrap()), ["old-2", "old-3"]);
}

#[test]
fn a_connector_reaches_only_what_it_was_granted() {
    let (rt, _cache) = runtime();
    let plugin = load(&rt, "file-source");
    let granted = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let secret = other.path().join("secret.txt");
    append(&secret, "do not read\n");
    // Configured to read a file outside its grant: it cannot, and says so when it opens.
    let opened = plugin.source(
        cfg(&[("path", secret.display().to_string())]),
        Limits::default(),
        &grant(granted.path(), false),
        None,
    );
    match opened {
        Err(PluginError::Guest(m)) => {
            assert!(m.contains("secret.txt") && m.contains("granted"), "{m}")
        }
        other => panic!("expected the guest's own error, got {other:?}"),
    }
    // A sink granted a directory read-only cannot create its file there.
    let sink = load(&rt, "file-sink").sink(
        cfg(&[("path", granted.path().join("out.txt").display().to_string())]),
        Limits::default(),
        &grant(granted.path(), false),
    );
    match sink {
        Err(PluginError::Guest(m)) => assert!(m.contains("cannot open"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!granted.path().join("out.txt").exists());
    // Relative grants are refused before anything runs.
    assert!(DirGrant::parse("data:rw").is_err());
    assert_eq!(
        DirGrant::parse("/data:rw").unwrap(),
        DirGrant {
            path: "/data".into(),
            writable: true
        }
    );
}

fn record(partition: u32, offset: u64, value: &str) -> PluginRecord {
    PluginRecord {
        key: Some(format!("k{offset}").into_bytes()),
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
        timestamp: 1_000 + offset as i64,
        partition,
        offset,
    }
}

fn sink(plugin: &Plugin, file: &std::path::Path, format: &str) -> SinkInstance {
    plugin
        .sink(
            cfg(&[
                ("path", file.display().to_string()),
                ("format", format.to_owned()),
            ]),
            Limits::default(),
            &grant(file.parent().unwrap(), true),
        )
        .unwrap()
}

#[test]
fn the_file_sink_writes_each_record_once_across_a_crash() {
    let (rt, _cache) = runtime();
    let plugin = load(&rt, "file-sink");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.txt");

    let mut s = sink(&plugin, &file, "{partition}:{offset} {key}={value}");
    s.write(encode_batch(&[record(0, 0, "a"), record(1, 0, "b")]))
        .unwrap();
    s.flush().unwrap();
    // Written but not flushed when the "crash" comes: the bytes may even have reached the
    // file (here they are appended by hand, as a partial write would leave them).
    s.write(encode_batch(&[record(0, 1, "c")])).unwrap();
    drop(s);
    append(&file, "0:1 k1=c\n0:2 k2=d (half");

    // The host sends again from its last commit: offsets 0 (flushed, commit lost) and 1, 2.
    let mut s = sink(&plugin, &file, "{partition}:{offset} {key}={value}");
    s.write(encode_batch(&[
        record(0, 0, "a"),
        record(0, 1, "c"),
        record(0, 2, "d"),
        record(1, 0, "b"),
    ]))
    .unwrap();
    s.flush().unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "0:0 k0=a\n1:0 k0=b\n0:1 k1=c\n0:2 k2=d\n"
    );
    // An unknown template field is refused at open, naming it.
    let bad = plugin.sink(
        cfg(&[
            ("path", file.display().to_string()),
            ("format", "{valeu}".to_owned()),
        ]),
        Limits::default(),
        &grant(dir.path(), true),
    );
    match bad {
        Err(PluginError::Guest(m)) => assert!(m.contains("{valeu}"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_generator_makes_records_of_a_set_shape_and_replays_them() {
    let (rt, _cache) = runtime();
    let plugin = load(&rt, "generator");
    let settings = cfg(&[
        ("count", "5".to_owned()),
        ("size", "12".to_owned()),
        ("keys", "2".to_owned()),
        ("prefix", "g".to_owned()),
    ]);
    let mut g = plugin
        .source(
            settings.clone(),
            Limits::default(),
            &Grants::default(),
            None,
        )
        .unwrap();
    let first = g.poll(3).unwrap();
    let after_three = g.checkpoint().unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> = BatchReader::new(&first)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.key.unwrap().to_vec(), r.value_bytes().to_vec())
        })
        .collect();
    assert_eq!(
        records,
        [
            (b"key-0".to_vec(), b"g0xxxxxxxxxx".to_vec()),
            (b"key-1".to_vec(), b"g1xxxxxxxxxx".to_vec()),
            (b"key-0".to_vec(), b"g2xxxxxxxxxx".to_vec()),
        ]
    );
    assert_eq!(lines(&g.poll(100).unwrap()).len(), 2, "five in all");
    assert!(lines(&g.poll(100).unwrap()).is_empty());
    let mut again = plugin
        .source(
            settings,
            Limits::default(),
            &Grants::default(),
            Some(after_three),
        )
        .unwrap();
    assert_eq!(
        lines(&again.poll(2).unwrap()),
        ["g3xxxxxxxxxx", "g4xxxxxxxxxx"]
    );
}
