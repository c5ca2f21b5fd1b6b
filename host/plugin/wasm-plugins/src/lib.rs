//! The components of `plugins/`, built for wasm32-wasip2 by this crate's build script from
//! this checkout: embedded in the `sluice` binary (the built-ins, deployed by name), and on
//! disk for tests and benchmarks (host/plugin's tests, the `tests/` crate).
//!
//! ```ignore
//! let wasm = sluice_wasm_plugins::read("json-filter");
//! ```

use std::path::{Path, PathBuf};

macro_rules! embed {
    ($name:literal, $file:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("SLUICE_WASM_PLUGINS_DIR"),
                "/",
                $file,
                ".wasm"
            )),
        )
    };
}

/// Directory holding the built `.wasm` components.
pub const DIR: &str = env!("SLUICE_WASM_PLUGINS_DIR");

/// The built-in plugins (package names in `plugins/`).
pub const BUILTINS: &[&str] = &[
    "json-filter",
    "regex-mask",
    "split-lines",
    "window-count",
    "json-partitioner",
    "file-source",
    "file-sink",
    "generator",
    "crossover",
    "http-sink",
    "http-source",
];

/// The built-in plugins' components, embedded at build time, by package name: what
/// `sluice plugin deploy NAME --builtin PACKAGE` deploys. `identity-map` (records unchanged)
/// is the pipeline benchmark's default.
pub const EMBEDDED: &[(&str, &[u8])] = &[
    embed!("json-filter", "json_filter"),
    embed!("regex-mask", "regex_mask"),
    embed!("split-lines", "split_lines"),
    embed!("window-count", "window_count"),
    embed!("json-partitioner", "json_partitioner"),
    embed!("identity-map", "identity_map"),
    embed!("file-source", "file_source"),
    embed!("file-sink", "file_sink"),
    embed!("generator", "generator"),
    embed!("crossover", "crossover"),
    embed!("http-sink", "http_sink"),
    embed!("http-source", "http_source"),
];

/// The embedded component of the built-in plugin `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Test fixtures that misbehave on purpose (package names in `plugins/hostile/`).
pub const HOSTILE: &[&str] = &[
    "hostile-infinite-loop",
    "hostile-memory-bomb",
    "hostile-trap",
    "hostile-huge-output",
    "hostile-wrong-world",
    "hostile-bad-partition",
    "hostile-escape",
    "hostile-picky-sink",
    "hostile-escape-source",
];

/// Path of the component built from the package `name` (e.g. `"json-filter"`,
/// `"identity-map"`, `"hostile-trap"`).
///
/// # Panics
/// If there is no such component: `name` is not a package of `plugins/`.
pub fn path(name: &str) -> PathBuf {
    let p = Path::new(DIR).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        p.exists(),
        "no built plugin {name:?} at {}; the packages are in plugins/Cargo.toml",
        p.display()
    );
    p
}

/// The bytes of the component built from the package `name`; see [`path`].
pub fn read(name: &str) -> Vec<u8> {
    let p = path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}
