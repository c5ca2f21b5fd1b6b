//! The runtime with the real components of `plugins/` (built by `sluice-wasm-plugins`):
//! every built-in plugin on known input, every hostile fixture stopped within its limits,
//! worlds checked, the compiled-code cache reused.

use std::time::{Duration, Instant};

use sluice_plugin_abi::partition_for_key;
use sluice_plugin_host::{
    Limits, MemoryState, PARTITION_UNSET, Plugin, PluginError, PluginKind, PluginRecord,
    PluginRuntime, StateStore,
};

fn runtime() -> (PluginRuntime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (PluginRuntime::new(dir.path()).unwrap(), dir)
}

fn load(rt: &PluginRuntime, name: &str) -> Plugin {
    rt.load(&sluice_wasm_plugins::read(name)).unwrap()
}

fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rec(key: Option<&str>, value: Option<&str>, timestamp: i64, offset: u64) -> PluginRecord {
    PluginRecord {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: value.map(|v| v.as_bytes().to_vec()),
        headers: vec![("h".into(), Some(b"v".to_vec()))],
        timestamp,
        partition: 3,
        offset,
    }
}

fn values(out: &[PluginRecord]) -> Vec<String> {
    out.iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap_or_default()).unwrap())
        .collect()
}

fn transform(plugin: &Plugin, config: &[(&str, &str)]) -> sluice_plugin_host::TransformInstance {
    plugin
        .transform(cfg(config), Limits::default(), Box::new(MemoryState::new()))
        .unwrap()
}

/// A plugin that must keep working after a hostile one ran on the same runtime.
fn assert_runtime_still_serves(rt: &PluginRuntime) {
    let identity = load(rt, "identity-map");
    let mut t = transform(&identity, &[]);
    let input = vec![rec(Some("k"), Some("still here"), 7, 9)];
    let out = t.process(&input).unwrap();
    assert_eq!(values(&out), ["still here"]);
}

// ---------------------------------------------------------------------------------------
// Built-ins
// ---------------------------------------------------------------------------------------

#[test]
fn json_filter_ops() {
    let (rt, _dir) = runtime();
    let p = load(&rt, "json-filter");
    assert_eq!(p.kind(), PluginKind::Transform);
    assert_eq!(p.hash().len(), 64);
    let input = vec![
        rec(
            Some("k0"),
            Some(r#"{"user":{"name":"alice"},"price":10,"tags":["a","b"],"status":"active"}"#),
            100,
            0,
        ),
        rec(
            Some("k1"),
            Some(r#"{"user":{"name":"bob"},"price":25.5,"tags":["c"],"status":"inactive"}"#),
            101,
            1,
        ),
        rec(None, Some("not json"), 102, 2),
        rec(None, Some(r#"{"price":"25"}"#), 103, 3),
        rec(Some("k4"), None, 104, 4),
    ];
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u64]);
    let cases: &[Case] = &[
        (
            &[("field", "status"), ("op", "eq"), ("value", "active")],
            &[0],
        ),
        (
            &[("field", "status"), ("op", "eq"), ("value", "\"active\"")],
            &[0],
        ),
        (
            &[("field", "status"), ("op", "ne"), ("value", "active")],
            &[1, 2, 3, 4],
        ),
        (&[("field", "price"), ("op", "gt"), ("value", "20")], &[1]),
        (&[("field", "price"), ("op", "lt"), ("value", "20")], &[0]),
        (&[("field", "price"), ("op", "eq"), ("value", "10.0")], &[0]),
        (
            &[("field", "price"), ("op", "eq"), ("value", "\"25\"")],
            &[3],
        ),
        (
            &[("field", "user.name"), ("op", "contains"), ("value", "li")],
            &[0],
        ),
        (
            &[("field", "tags"), ("op", "contains"), ("value", "c")],
            &[1],
        ),
        (&[("field", "tags.1"), ("op", "eq"), ("value", "b")], &[0]),
        (&[("field", "/user/name"), ("op", "exists")], &[0, 1]),
        (&[("field", "price"), ("op", "exists")], &[0, 1, 3]),
    ];
    for (config, want) in cases {
        let mut t = transform(&p, config);
        let out = t.process(&input).unwrap();
        let got: Vec<u64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(&got, want, "config {config:?}");
        for r in &out {
            let orig = &input[r.offset as usize];
            assert_eq!(r.key, orig.key);
            assert_eq!(r.value, orig.value);
            assert_eq!(r.headers, orig.headers);
            assert_eq!(r.timestamp, orig.timestamp);
            assert_eq!(
                r.partition, PARTITION_UNSET,
                "filters leave routing to the key"
            );
        }
    }
    // An empty batch is fine.
    assert!(transform(&p, cases[0].0).process(&[]).unwrap().is_empty());

    let bad = |config: &[(&str, &str)]| match p.transform(
        cfg(config),
        Limits::default(),
        Box::new(MemoryState::new()),
    ) {
        Err(PluginError::Guest(m)) => m,
        other => panic!("expected a guest error for {config:?}, got {other:?}"),
    };
    assert!(bad(&[("field", "a"), ("op", "like"), ("value", "x")]).contains("`op`"));
    assert!(bad(&[("op", "eq"), ("value", "x")]).contains("missing config `field`"));
    assert!(bad(&[("field", "a"), ("op", "gt"), ("value", "true")]).contains("cannot be ordered"));
}

#[test]
fn regex_mask_hides_card_numbers() {
    let (rt, _dir) = runtime();
    let p = load(&rt, "regex-mask");
    let mut t = transform(
        &p,
        &[
            ("pattern", r"\b(?:\d[ -]?){12}(\d{4})\b"),
            ("replacement", "**** **** **** $1"),
        ],
    );
    let input = vec![
        rec(Some("a"), Some("paid with 4111 1111 1111 1234 today"), 1, 0),
        rec(Some("b"), Some("card 5500-0000-0000-0004, ref 12"), 2, 1),
        rec(Some("c"), Some("nothing here"), 3, 2),
        rec(Some("d"), None, 4, 3),
    ];
    let out = t.process(&input).unwrap();
    assert_eq!(
        values(&out),
        [
            "paid with **** **** **** 1234 today",
            "card **** **** **** 0004, ref 12",
            "nothing here",
            "",
        ]
    );
    assert_eq!(out[3].value, None, "a tombstone stays a tombstone");
    assert_eq!(out[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(out[0].headers, input[0].headers);

    let mut t = transform(&p, &[("pattern", r"\d+")]);
    let out = t.process(&[rec(None, Some("a1b22c"), 0, 0)]).unwrap();
    assert_eq!(values(&out), ["a****b****c"]);

    match p.transform(
        cfg(&[("pattern", "(")]),
        Limits::default(),
        Box::new(MemoryState::new()),
    ) {
        Err(PluginError::Guest(m)) => assert!(m.contains("not a valid regex"), "{m}"),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[test]
fn split_lines_flat_maps() {
    let (rt, _dir) = runtime();
    let p = load(&rt, "split-lines");
    let mut t = transform(&p, &[]);
    let input = vec![
        rec(Some("k"), Some("a\r\nb\n\nc\n"), 5, 0),
        rec(None, Some("single"), 6, 1),
        rec(Some("t"), None, 7, 2),
    ];
    let out = t.process(&input).unwrap();
    assert_eq!(values(&out), ["a", "b", "c", "single"]);
    for r in &out[..3] {
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.headers, input[0].headers);
        assert_eq!(r.timestamp, 5);
    }
    assert_eq!(out[3].key, None);

    let mut t = transform(&p, &[("skip_empty", "false")]);
    let out = t.process(&input[..1]).unwrap();
    assert_eq!(values(&out), ["a", "b", "", "c"]);

    match p.transform(
        cfg(&[("skip_empty", "maybe")]),
        Limits::default(),
        Box::new(MemoryState::new()),
    ) {
        Err(PluginError::Guest(m)) => assert!(m.contains("skip_empty"), "{m}"),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

/// (key, count, window end) of window-count's output.
fn counts(out: &[PluginRecord]) -> Vec<(Option<String>, String, i64)> {
    out.iter()
        .map(|r| {
            assert_eq!(
                r.headers,
                vec![
                    (
                        "window_start".to_string(),
                        Some((r.timestamp - 10).to_string().into_bytes())
                    ),
                    (
                        "window_end".to_string(),
                        Some(r.timestamp.to_string().into_bytes())
                    ),
                ]
            );
            (
                r.key.clone().map(|k| String::from_utf8(k).unwrap()),
                String::from_utf8(r.value.clone().unwrap()).unwrap(),
                r.timestamp,
            )
        })
        .collect()
}

#[test]
fn window_count_across_windows_and_a_restart() {
    let (rt, _dir) = runtime();
    let p = load(&rt, "window-count");
    let config = [("window_ms", "10")];
    let input = vec![
        rec(Some("a"), Some(""), 1, 0),
        rec(Some("b"), Some(""), 2, 1),
        rec(Some("a"), Some(""), 9, 2),
        rec(None, Some(""), 5, 3),
        // Event time reaches 10: [0, 10) closes.
        rec(Some("a"), Some(""), 12, 4),
        rec(Some("b"), Some(""), 15, 5),
        // Late: [0, 10) is closed. Dropped.
        rec(Some("a"), Some(""), 3, 6),
        // 31 closes [10, 20) (and nothing was in [20, 30)).
        rec(Some("b"), Some(""), 31, 7),
        rec(Some("a"), Some(""), 39, 8),
    ];
    let s = |x: &str| Some(x.to_string());
    let want = vec![
        (None, s("1"), 10),
        (s("a"), s("2"), 10),
        (s("b"), s("1"), 10),
        (s("a"), s("1"), 20),
        (s("b"), s("1"), 20),
    ];
    let want: Vec<_> = want
        .into_iter()
        .map(|(k, c, t)| (k, c.unwrap(), t))
        .collect();

    // One instance, one batch.
    let mut t = transform(&p, &config);
    assert_eq!(counts(&t.process(&input).unwrap()), want);
    // The open window [30, 40) is in the state: a: 1, b: 1, plus the watermark.
    assert_eq!(t.state().keys(b"w").len(), 2);

    // Record by record, with the state snapshotted to bytes and restored into a fresh
    // instance after every record (what the broker does across restarts).
    let mut snapshot = MemoryState::new().to_bytes();
    let mut got = Vec::new();
    for r in &input {
        let state = MemoryState::from_bytes(&snapshot).unwrap();
        let mut t = p
            .transform(cfg(&config), Limits::default(), Box::new(state))
            .unwrap();
        got.extend(counts(&t.process(std::slice::from_ref(r)).unwrap()));
        snapshot = MemoryState::copy_of(t.state()).to_bytes();
        // take_state hands back the same contents.
        assert_eq!(MemoryState::copy_of(&*t.take_state()).to_bytes(), snapshot);
    }
    assert_eq!(got, want);

    match p.transform(
        cfg(&[("window_ms", "0")]),
        Limits::default(),
        Box::new(MemoryState::new()),
    ) {
        Err(PluginError::Guest(m)) => assert!(m.contains("window_ms"), "{m}"),
        other => panic!("expected a guest error, got {other:?}"),
    }
    match p.transform(cfg(&[]), Limits::default(), Box::new(MemoryState::new())) {
        Err(PluginError::Guest(m)) => assert!(m.contains("missing config `window_ms`"), "{m}"),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[test]
fn json_partitioner_hashes_the_field() {
    let (rt, _dir) = runtime();
    let p = load(&rt, "json-partitioner");
    assert_eq!(p.kind(), PluginKind::Partitioner);
    let mut part = p
        .partitioner(cfg(&[("field", "user.id")]), Limits::default())
        .unwrap();
    let input = vec![
        rec(None, Some(r#"{"user":{"id":"alice"}}"#), 0, 0),
        rec(None, Some(r#"{"user":{"id":"bob"}}"#), 0, 1),
        rec(None, Some(r#"{"user":{"id":42}}"#), 0, 2),
        rec(Some("fallback-key"), Some("not json"), 0, 3),
        rec(None, Some("{}"), 0, 4),
    ];
    for n in [1u32, 3, 8, 64] {
        let got = part.partition(&input, n).unwrap();
        let want = vec![
            partition_for_key(b"alice", n),
            partition_for_key(b"bob", n),
            partition_for_key(b"42", n),
            partition_for_key(b"fallback-key", n),
            0,
        ];
        assert_eq!(got, want, "{n} partitions");
    }
    // Kafka's murmur2 of "alice" is fixed: the hash is part of the contract.
    assert_eq!(
        part.partition(&input[..1], 1000).unwrap(),
        [partition_for_key(b"alice", 1000)]
    );
    assert!(part.partition(&[], 4).unwrap().is_empty());
    assert!(matches!(
        p.partitioner(cfg(&[]), Limits::default()),
        Err(PluginError::Guest(m)) if m.contains("missing config `field`")
    ));
}

// ---------------------------------------------------------------------------------------
// Hostile plugins and refusals
// ---------------------------------------------------------------------------------------

/// Small memory and output limits. The time limit is generous, so that however busy the
/// machine, a test expecting another limit never meets this one first.
fn tight() -> Limits {
    Limits {
        max_call_ms: 60_000,
        max_memory_bytes: 32 << 20,
        max_output_bytes: 1 << 20,
    }
}

/// [`tight`] with a short time limit, for the plugin that never returns.
fn short_deadline() -> Limits {
    Limits {
        max_call_ms: 200,
        ..tight()
    }
}

fn hostile_call(rt: &PluginRuntime, name: &str, limits: Limits) -> (PluginError, Duration) {
    let p = load(rt, name);
    let mut t = p
        .transform(Vec::new(), limits, Box::new(MemoryState::new()))
        .unwrap();
    let start = Instant::now();
    let err = t.process(&[rec(Some("k"), Some("v"), 0, 0)]).unwrap_err();
    let took = start.elapsed();
    assert!(t.is_poisoned(), "{name}: a failed instance is discarded");
    assert_eq!(t.last_error(), Some(err.to_string().as_str()));
    (err, took)
}

#[test]
fn infinite_loop_is_stopped_by_its_deadline() {
    let (rt, _dir) = runtime();
    let (err, took) = hostile_call(&rt, "hostile-infinite-loop", short_deadline());
    assert!(
        matches!(err, PluginError::Timeout { limit_ms: 200 }),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(190),
        "stopped too early: {took:?}"
    );
    // It would never return by itself; a bound this loose holds on any machine.
    assert!(took < Duration::from_secs(60), "stopped too late: {took:?}");
    assert!(err.to_string().contains("time limit of 200 ms"));

    // The next call re-instantiates and is bounded again.
    let p = load(&rt, "hostile-infinite-loop");
    let mut t = p
        .transform(Vec::new(), short_deadline(), Box::new(MemoryState::new()))
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(t.process(&[]), Err(PluginError::Timeout { .. })));
    }
    assert_runtime_still_serves(&rt);
}

#[test]
fn memory_bomb_is_stopped_at_its_limit() {
    let (rt, _dir) = runtime();
    let (err, _) = hostile_call(&rt, "hostile-memory-bomb", tight());
    assert!(
        matches!(err, PluginError::MemoryLimit { limit_bytes } if limit_bytes == 32 << 20),
        "{err:?}"
    );
    assert_runtime_still_serves(&rt);
}

#[test]
fn trap_is_reported() {
    let (rt, _dir) = runtime();
    let (err, _) = hostile_call(&rt, "hostile-trap", tight());
    assert!(matches!(err, PluginError::Trap(_)), "{err:?}");
    assert_runtime_still_serves(&rt);
}

#[test]
fn huge_output_is_refused() {
    let (rt, _dir) = runtime();
    // Enough memory to build the 100 MB answer: the output limit stops it.
    let roomy = Limits {
        // However busy the machine, building the 100 MB must not hit the time limit first.
        max_call_ms: 120_000,
        max_memory_bytes: 512 << 20,
        ..tight()
    };
    let (err, _) = hostile_call(&rt, "hostile-huge-output", roomy);
    match err {
        PluginError::OutputTooLarge { size, limit } => {
            assert!(size > 100 << 20, "{size}");
            assert_eq!(limit, 1 << 20);
        }
        other => panic!("expected OutputTooLarge, got {other:?}"),
    }
    // With the default memory limit it cannot even build it.
    let default_memory = Limits {
        max_call_ms: 120_000,
        ..Limits::default()
    };
    let (err, _) = hostile_call(&rt, "hostile-huge-output", default_memory);
    assert!(matches!(err, PluginError::MemoryLimit { .. }), "{err:?}");
    assert_runtime_still_serves(&rt);
}

#[test]
fn out_of_range_partition_is_refused() {
    let (rt, _dir) = runtime();
    let p = load(&rt, "hostile-bad-partition");
    let mut part = p.partitioner(Vec::new(), tight()).unwrap();
    let err = part
        .partition(&[rec(None, Some("x"), 0, 0), rec(None, Some("y"), 0, 1)], 4)
        .unwrap_err();
    match &err {
        PluginError::MalformedOutput(m) => {
            assert!(m.contains("partition 4 for record 0"), "{m}");
            assert!(m.contains("4 partitions"), "{m}");
        }
        other => panic!("expected MalformedOutput, got {other:?}"),
    }
    assert!(part.is_poisoned());
    assert!(matches!(part.partition(&[], 0), Err(PluginError::Input(_))));
    assert_runtime_still_serves(&rt);
}

#[test]
fn wrong_world_is_refused() {
    let (rt, _dir) = runtime();
    let sink = load(&rt, "hostile-wrong-world");
    assert_eq!(sink.kind(), PluginKind::Sink);
    match sink.transform(Vec::new(), tight(), Box::new(MemoryState::new())) {
        Err(PluginError::WrongWorld { expected, found }) => {
            assert_eq!(expected, PluginKind::Transform);
            assert_eq!(found, "sink");
        }
        other => panic!("expected WrongWorld, got {other:?}"),
    }
    let partitioner = load(&rt, "json-partitioner");
    let err = partitioner
        .transform(
            cfg(&[("field", "a")]),
            tight(),
            Box::new(MemoryState::new()),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "plugin is a partitioner, not a transform");
    let filter = load(&rt, "json-filter");
    assert!(matches!(
        filter.partitioner(Vec::new(), tight()),
        Err(PluginError::WrongWorld {
            expected: PluginKind::Partitioner,
            ..
        })
    ));
    assert_runtime_still_serves(&rt);
}

#[test]
fn non_components_are_refused() {
    let (rt, _dir) = runtime();
    for (bytes, what) in [
        (&b"hello, not wasm"[..], "no \\0asm header"),
        (&b""[..], "no \\0asm header"),
        // A core module, not a component.
        (&b"\0asm\x01\0\0\0"[..], "not a valid WebAssembly component"),
        // A truncated component.
        (
            &b"\0asm\x0d\0\x01\0\x01"[..],
            "not a valid WebAssembly component",
        ),
    ] {
        match rt.load(bytes) {
            Err(PluginError::Invalid(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(rt.compile_count(), 0);
    assert_runtime_still_serves(&rt);
}

#[test]
fn compiled_code_is_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = sluice_wasm_plugins::read("split-lines");
    let rt = PluginRuntime::new(dir.path()).unwrap();
    let first = rt.load(&wasm).unwrap();
    assert_eq!(rt.compile_count(), 1);
    let cached = rt.cache_dir().join(format!("{}.cwasm", first.hash()));
    assert!(cached.exists(), "{}", cached.display());
    let again = rt.load(&wasm).unwrap();
    assert_eq!(rt.compile_count(), 1, "the second load reads the cache");
    assert_eq!(again.hash(), first.hash());

    // Another runtime on the same directory (a restarted node) compiles nothing.
    let rt2 = PluginRuntime::new(dir.path()).unwrap();
    let p = rt2.load(&wasm).unwrap();
    assert_eq!(rt2.compile_count(), 0);
    let out = transform(&p, &[])
        .process(&[rec(None, Some("x\ny"), 0, 0)])
        .unwrap();
    assert_eq!(values(&out), ["x", "y"]);

    // A damaged cache file is replaced, not trusted.
    std::fs::write(&cached, b"garbage").unwrap();
    let rt3 = PluginRuntime::new(dir.path()).unwrap();
    rt3.load(&wasm).unwrap();
    assert_eq!(rt3.compile_count(), 1);
}

#[test]
fn state_store_trait_object_is_usable() {
    // MemoryState::copy_of works through the trait, as the broker will use it.
    let mut m = MemoryState::new();
    m.set(b"x", b"1");
    let boxed: Box<dyn StateStore> = Box::new(m.clone());
    assert_eq!(MemoryState::copy_of(&*boxed), m);
}

/// A plugin that tries the file system, the environment, the network and the clock gets
/// nothing: no preopened directories, no variables or arguments, no sockets, a frozen clock.
#[test]
fn sandbox_grants_no_files_env_network_or_clock() {
    let (rt, _dir) = runtime();
    let plugin = load(&rt, "hostile-escape");
    let mut t = transform(&plugin, &[]);
    let out = t.process(&[rec(None, Some("x"), 0, 0)]).unwrap();
    assert_eq!(
        values(&out),
        vec!["fs=denied file=denied env=0 args=0 net=denied clock=0".to_string()]
    );
    assert_runtime_still_serves(&rt);
}
