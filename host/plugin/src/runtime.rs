//! The node-wide runtime: engine, epoch ticker, linkers, compiled-code cache, loading.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker};
use wasmtime::{Config, Engine};

use crate::connector::{Grants, SinkInstance, SourceInstance};
use crate::instance::{self, HostState};
use crate::{Limits, PartitionerInstance, PluginError, PluginKind, StateStore, TransformInstance};

/// How often the ticker bumps the engine's epoch: the granularity of call time limits.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The WIT package major.minor a component must target. A 0.1.x component runs on any
/// 0.1.y host (see the versioning rule in docs/plugins.md).
const PACKAGE: &str = "sluice:plugin/";
const PACKAGE_VERSION_PREFIX: &str = "0.1.";

/// One per node: compiles, caches and loads plugins. Cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    /// Transforms get `state` on top of what every plugin gets.
    transform_linker: Linker<HostState>,
    plugin_linker: Linker<HostState>,
    cache_dir: PathBuf,
    compiles: AtomicU64,
}

impl fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("cache_dir", &self.inner.cache_dir)
            .field("compiles", &self.compile_count())
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// A runtime caching compiled components under `cache_dir` (created if missing). Starts
    /// the epoch ticker thread, which ends when the last clone of the runtime is dropped.
    pub fn new(cache_dir: &Path) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;

        // Compiled code is only valid for this wasmtime build and engine configuration, so
        // the cache is split by the engine's compatibility hash: an upgrade recompiles.
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let cache_dir = cache_dir.join(format!("{:016x}", h.finish()));
        std::fs::create_dir_all(&cache_dir).map_err(|e| {
            PluginError::Cache(format!("cannot create {}: {e}", cache_dir.display()))
        })?;

        let transform_linker = instance::linker(&engine, true)?;
        let plugin_linker = instance::linker(&engine, false)?;
        let inner = Arc::new(RuntimeInner {
            engine,
            transform_linker,
            plugin_linker,
            cache_dir,
            compiles: AtomicU64::new(0),
        });
        spawn_ticker(Arc::downgrade(&inner))?;
        Ok(Self { inner })
    }

    /// How many components this runtime compiled (rather than loaded from the disk cache).
    pub fn compile_count(&self) -> u64 {
        self.inner.compiles.load(Ordering::Relaxed)
    }

    /// Where compiled components are cached (a subdirectory of the `cache_dir` given to
    /// [`PluginRuntime::new`], named by the engine's compatibility hash).
    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    /// Validates a component, compiles it (or loads its machine code from the disk cache),
    /// detects its world and pre-instantiates it.
    pub fn load(&self, wasm: &[u8]) -> Result<Plugin, PluginError> {
        let hash = hex(&Sha256::digest(wasm));
        let component = self.compile_cached(wasm, &hash)?;
        let (kind, export) = detect_world(&self.inner.engine, &component)?;
        let linker = match kind {
            PluginKind::Transform => &self.inner.transform_linker,
            _ => &self.inner.plugin_linker,
        };
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            PluginError::Invalid(format!(
                "the component needs imports this sandbox does not provide \
                 (only the sluice:plugin {kind} imports and WASI stderr are available): {e:#}"
            ))
        })?;
        let funcs = export_funcs(&component, &export, kind)?;
        tracing::debug!(plugin = %hash, %kind, "plugin loaded");
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                kind,
                hash,
                pre,
                funcs,
                engine: self.inner.engine.clone(),
            }),
        })
    }

    fn compile_cached(&self, wasm: &[u8], hash: &str) -> Result<Component, PluginError> {
        let engine = &self.inner.engine;
        let path = self.inner.cache_dir.join(format!("{hash}.cwasm"));
        // Read into memory rather than `deserialize_file` (which maps the file): a mapped
        // file truncated by anyone while in use would kill the broker with SIGBUS.
        if let Ok(code) = std::fs::read(&path) {
            // SAFETY: `deserialize` trusts its input to be machine code that wasmtime
            // produced. Files in this directory are written only by this function, from
            // `Component::serialize` of a component this process compiled from bytes whose
            // SHA-256 is the file name, under a temporary name and then renamed into place,
            // so a crash cannot leave a partial file under the final name. The directory is
            // the node's private cache: whoever can write there can already replace the
            // broker binary. Wasmtime also checks the header against this engine's version
            // and configuration and refuses a mismatch (then we recompile).
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize(engine, &code) };
            match loaded {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(plugin = %hash, cause = %e, "cached plugin code unusable; recompiling");
                }
            }
        }
        if !wasm.starts_with(b"\0asm") {
            return Err(PluginError::Invalid(
                "not a WebAssembly component (no \\0asm header); build the plugin with \
                 `cargo build --release --target wasm32-wasip2`"
                    .into(),
            ));
        }
        let component = Component::new(engine, wasm).map_err(|e| {
            PluginError::Invalid(format!("not a valid WebAssembly component: {e:#}"))
        })?;
        self.inner.compiles.fetch_add(1, Ordering::Relaxed);
        let code = component
            .serialize()
            .map_err(|e| PluginError::Cache(format!("cannot serialise compiled code: {e:#}")))?;
        let tmp = self.inner.cache_dir.join(format!(
            ".{hash}.{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ));
        let write = std::fs::write(&tmp, &code).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = write {
            let _ = std::fs::remove_file(&tmp);
            return Err(PluginError::Cache(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
        Ok(component)
    }
}

fn spawn_ticker(runtime: Weak<RuntimeInner>) -> Result<(), PluginError> {
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match runtime.upgrade() {
                    Some(r) => r.engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
        .map_err(|e| PluginError::Runtime(format!("cannot start the epoch ticker: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Which handler interface the component exports, and that export's full name.
fn detect_world(
    engine: &Engine,
    component: &Component,
) -> Result<(PluginKind, String), PluginError> {
    let mut found = Vec::new();
    let mut names = Vec::new();
    for (name, _) in component.component_type().exports(engine) {
        names.push(name.to_owned());
        let Some(rest) = name.strip_prefix(PACKAGE) else {
            continue;
        };
        let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let kind = match iface {
            "transform-handler" => PluginKind::Transform,
            "partition-handler" => PluginKind::Partitioner,
            "source-handler" => PluginKind::Source,
            "sink-handler" => PluginKind::Sink,
            _ => continue,
        };
        if !version.starts_with(PACKAGE_VERSION_PREFIX) {
            return Err(PluginError::Invalid(format!(
                "the component targets {name}, but this broker runs sluice:plugin@0.1.x; \
                 rebuild it against the 0.1 SDK"
            )));
        }
        found.push((kind, name.to_owned()));
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(PluginError::WrongWorld {
            expected: PluginKind::Transform,
            found: format!(
                "component that exports no sluice:plugin@0.1 world (its exports: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        }),
        _ => Err(PluginError::Invalid(format!(
            "the component exports several Sluice handlers ({}); a plugin implements one world",
            found
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Indices of the handler's functions, looked up once per component.
#[derive(Clone, Debug)]
pub(crate) struct ExportFuncs(Vec<(&'static str, ComponentExportIndex)>);

impl ExportFuncs {
    /// The function `name` of the handler (checked present at load).
    pub(crate) fn get(&self, name: &str) -> Result<&ComponentExportIndex, PluginError> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, i)| i)
            .ok_or_else(|| PluginError::Invalid(format!("the handler has no `{name}`")))
    }
}

fn export_funcs(
    component: &Component,
    export: &str,
    kind: PluginKind,
) -> Result<ExportFuncs, PluginError> {
    let iface = component.get_export_index(None, export).ok_or_else(|| {
        PluginError::Invalid(format!("export {export} disappeared while loading"))
    })?;
    let func = |name: &str| {
        component
            .get_export_index(Some(&iface), name)
            .ok_or_else(|| PluginError::Invalid(format!("{export} does not export `{name}`")))
    };
    let names: &[&'static str] = match kind {
        PluginKind::Transform => &["init", "process"],
        PluginKind::Partitioner => &["init", "partition"],
        PluginKind::Source => &["open", "poll", "checkpoint", "commit"],
        PluginKind::Sink => &["open", "write", "flush"],
    };
    let funcs = names
        .iter()
        .map(|n| func(n).map(|i| (*n, i)))
        .collect::<Result<_, _>>()?;
    Ok(ExportFuncs(funcs))
}

/// A loaded, validated, pre-instantiated component. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub(crate) kind: PluginKind,
    pub(crate) hash: String,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) funcs: ExportFuncs,
    pub(crate) engine: Engine,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("kind", &self.inner.kind)
            .field("hash", &self.inner.hash)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// How logs and metrics name the plugin: the first 12 hex digits of its content hash.
    pub fn label(&self) -> String {
        self.inner.hash.chars().take(12).collect()
    }

    /// The world the component implements.
    pub fn kind(&self) -> PluginKind {
        self.inner.kind
    }

    /// Hex SHA-256 of the component's bytes.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    fn expect(&self, expected: PluginKind) -> Result<(), PluginError> {
        if self.inner.kind == expected {
            Ok(())
        } else {
            Err(PluginError::WrongWorld {
                expected,
                found: self.inner.kind.to_string(),
            })
        }
    }

    /// Starts a transform instance and runs its `init` (which checks the configuration: a
    /// bad one is reported here as [`PluginError::Guest`]).
    pub fn transform(
        &self,
        config: Vec<(String, String)>,
        limits: Limits,
        state: Box<dyn StateStore>,
    ) -> Result<TransformInstance, PluginError> {
        self.expect(PluginKind::Transform)?;
        TransformInstance::start(self.clone(), config, limits, state)
    }

    /// Starts a source connector, opened at `checkpoint`, with access to what `grants` names.
    pub fn source(
        &self,
        config: Vec<(String, String)>,
        limits: Limits,
        grants: &Grants,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<SourceInstance, PluginError> {
        self.expect(PluginKind::Source)?;
        SourceInstance::start(self.clone(), config, limits, grants, checkpoint)
    }

    /// Starts a sink connector, opened, with access to what `grants` names.
    pub fn sink(
        &self,
        config: Vec<(String, String)>,
        limits: Limits,
        grants: &Grants,
    ) -> Result<SinkInstance, PluginError> {
        self.expect(PluginKind::Sink)?;
        SinkInstance::start(self.clone(), config, limits, grants)
    }

    /// Starts a partitioner instance and runs its `init`.
    pub fn partitioner(
        &self,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<PartitionerInstance, PluginError> {
        self.expect(PluginKind::Partitioner)?;
        PartitionerInstance::start(self.clone(), config, limits)
    }
}
