//! Running instances: the sandbox (store data, WASI context, limits), the host imports, and
//! the bounded calls into the guest.

use std::sync::Arc;

use sluice_plugin_abi::{BatchReader, PluginRecord, decode_batch, encode_batch};
use wasmtime::component::{ComponentType, Lift, Linker, Lower, ResourceTable, TypedFunc};
use wasmtime::{Engine, ResourceLimiter, Store, StoreContextMut, Trap};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::runtime::{EPOCH_TICK, Plugin};
use crate::state::PendingWrites;
use crate::{Limits, PluginError, StateStore};

const WIT_VERSION: &str = "0.1.0";

/// Log lines a guest may emit per call; the rest are dropped (with one warning), so a
/// chatty plugin cannot flood the broker's log.
const LOG_LINES_PER_CALL: u32 = 100;
/// Longest log message kept, in bytes.
const LOG_MESSAGE_MAX: usize = 4096;

/// The WIT `plugin-error` record.
#[derive(ComponentType, Lift, Lower, Debug)]
#[component(record)]
pub(crate) struct GuestError {
    pub(crate) message: String,
}

/// The WIT `level` enum.
// Values are made by the `Lift` derive from the guest's discriminant, never by name.
#[allow(dead_code)]
#[derive(ComponentType, Lift, Lower, Clone, Copy, Debug)]
#[component(enum)]
#[repr(u8)]
pub(crate) enum Level {
    #[component(name = "trace")]
    Trace,
    #[component(name = "debug")]
    Debug,
    #[component(name = "info")]
    Info,
    #[component(name = "warn")]
    Warn,
    #[component(name = "error")]
    Error,
}

/// Memory and table bounds for one store. Counts all memories of the instance together
/// (a component holds several core instances), and remembers that the memory limit was
/// hit so the resulting trap is reported as [`PluginError::MemoryLimit`].
#[derive(Debug)]
pub(crate) struct Sandbox {
    max_memory: usize,
    memory: usize,
    memory_limit_hit: bool,
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory - current.min(self.memory) + desired;
        if total > self.max_memory {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        self.memory = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        8
    }
}

/// What a store holds: the sandbox's WASI context, limits, and the plugin's services.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// `wasi:http`: its context, and the hook that lets only granted hosts be reached.
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_hosts: crate::connector::HttpGrant,
    sandbox: Sandbox,
    /// Sorted by key.
    config: Arc<[(String, String)]>,
    state: Option<Box<dyn StateStore>>,
    pending: PendingWrites,
    plugin: Arc<str>,
    log_budget: u32,
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hosts,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Clocks frozen at 0: the sandbox grants no clock (a plugin gets time from record
/// timestamps).
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The sandbox's WASI context: nothing but stderr — no environment, no arguments, no
/// stdin/stdout, no sockets, no name lookup, frozen clocks — and the directories `dirs`
/// grants (connectors only; each at its own path, read-only unless granted writable).
pub(crate) fn wasi_ctx(dirs: &[crate::connector::DirGrant]) -> Result<WasiCtx, PluginError> {
    use wasmtime_wasi::FsPerms;
    let mut b = WasiCtxBuilder::new();
    b.inherit_stderr()
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    for d in dirs {
        let perms = if d.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        let guest = d.path.to_string_lossy().into_owned();
        b.preopened_dir(&d.path, &guest, perms)
            .map_err(|e| PluginError::Input(format!("cannot grant {}: {e:#}", d.path.display())))?;
    }
    Ok(b.build())
}

fn iface(name: &str) -> String {
    format!("sluice:plugin/{name}@{WIT_VERSION}")
}

/// The linker every store of this engine uses: WASI (sync) with sleeping disabled, and the
/// sluice:plugin imports (`state` only when `with_state`).
pub(crate) fn linker(engine: &Engine, with_state: bool) -> Result<Linker<HostState>, PluginError> {
    let err = |e: wasmtime::Error| PluginError::Runtime(format!("building the linker: {e:#}"));
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(err)?;
    if !with_state {
        // Connectors (and partitioners) may import wasi:http; a request reaches only the
        // hosts the connector was granted (none for a partitioner).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker).map_err(err)?;
    }

    // A blocking sleep in a host call cannot be interrupted by the epoch deadline, so the
    // sandbox refuses to sleep at all: the guest traps instead of holding a broker thread.
    linker.allow_shadowing(true);
    {
        let mut clock = linker
            .instance("wasi:clocks/monotonic-clock@0.2.12")
            .map_err(err)?;
        type Pollable = wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>;
        clock
            .func_wrap(
                "subscribe-duration",
                |_: StoreContextMut<'_, HostState>,
                 (_,): (u64,)|
                 -> wasmtime::Result<(Pollable,)> {
                    Err(wasmtime::format_err!("plugins may not sleep"))
                },
            )
            .map_err(err)?;
        clock
            .func_wrap(
                "subscribe-instant",
                |_: StoreContextMut<'_, HostState>,
                 (_,): (u64,)|
                 -> wasmtime::Result<(Pollable,)> {
                    Err(wasmtime::format_err!("plugins may not sleep"))
                },
            )
            .map_err(err)?;
    }
    linker.allow_shadowing(false);

    linker.instance(&iface("types")).map_err(err)?;
    linker
        .instance(&iface("log"))
        .map_err(err)?
        .func_wrap(
            "log",
            |mut cx: StoreContextMut<'_, HostState>, (level, message): (Level, String)| {
                guest_log(cx.data_mut(), level, message);
                Ok(())
            },
        )
        .map_err(err)?;
    let mut config = linker.instance(&iface("config")).map_err(err)?;
    config
        .func_wrap(
            "get",
            |cx: StoreContextMut<'_, HostState>, (key,): (String,)| {
                let c = &cx.data().config;
                let v = c
                    .binary_search_by(|(k, _)| k.as_str().cmp(&key))
                    .ok()
                    .map(|i| c[i].1.clone());
                Ok((v,))
            },
        )
        .map_err(err)?;
    config
        .func_wrap("all", |cx: StoreContextMut<'_, HostState>, (): ()| {
            Ok((cx.data().config.to_vec(),))
        })
        .map_err(err)?;
    if with_state {
        let mut state = linker.instance(&iface("state")).map_err(err)?;
        state
            .func_wrap(
                "get",
                |cx: StoreContextMut<'_, HostState>, (key,): (Vec<u8>,)| {
                    let d = cx.data();
                    Ok((d.state.as_deref().and_then(|s| d.pending.get(s, &key)),))
                },
            )
            .map_err(err)?;
        state
            .func_wrap(
                "set",
                |mut cx: StoreContextMut<'_, HostState>, (key, value): (Vec<u8>, Vec<u8>)| {
                    cx.data_mut().pending.set(key, value);
                    Ok(())
                },
            )
            .map_err(err)?;
        state
            .func_wrap(
                "delete",
                |mut cx: StoreContextMut<'_, HostState>, (key,): (Vec<u8>,)| {
                    cx.data_mut().pending.delete(key);
                    Ok(())
                },
            )
            .map_err(err)?;
        state
            .func_wrap(
                "keys",
                |cx: StoreContextMut<'_, HostState>, (prefix,): (Vec<u8>,)| {
                    let d = cx.data();
                    let keys = match d.state.as_deref() {
                        Some(s) => d.pending.keys(s, &prefix),
                        None => Vec::new(),
                    };
                    Ok((keys,))
                },
            )
            .map_err(err)?;
    }
    Ok(linker)
}

fn guest_log(d: &mut HostState, level: Level, mut message: String) {
    if d.log_budget == 0 {
        return;
    }
    d.log_budget -= 1;
    if message.len() > LOG_MESSAGE_MAX {
        let mut cut = LOG_MESSAGE_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    let plugin = &*d.plugin;
    match level {
        Level::Trace => tracing::trace!(plugin, "{message}"),
        Level::Debug => tracing::debug!(plugin, "{message}"),
        Level::Info => tracing::info!(plugin, "{message}"),
        Level::Warn => tracing::warn!(plugin, "{message}"),
        Level::Error => tracing::error!(plugin, "{message}"),
    }
    if d.log_budget == 0 {
        tracing::warn!(
            plugin,
            "plugin logged {LOG_LINES_PER_CALL} lines in one call; dropping the rest of this call's"
        );
    }
}

/// One instantiated component in its own store.
struct Live<F> {
    store: Store<HostState>,
    call: F,
}

type ProcessFn = TypedFunc<(Vec<u8>,), (Result<Vec<u8>, GuestError>,)>;
type PartitionFn = TypedFunc<(Vec<u8>, u32), (Result<Vec<u32>, GuestError>,)>;
type InitFn = TypedFunc<(), (Result<(), GuestError>,)>;

fn epoch_ticks(limits: &Limits) -> u64 {
    // +1: the current tick may be about to end, so n ticks can be as short as n-1 periods.
    limits.max_call_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

/// Runs one call of `plugin` (its label, [`Plugin::label`]) in a `plugin_call` span, and
/// counts it by outcome with its duration (docs/metrics.md).
pub(crate) fn observed_call<T>(
    plugin: &str,
    call: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    let _span = tracing::debug_span!("plugin_call", plugin = plugin).entered();
    let started = std::time::Instant::now();
    let result = call();
    metrics::histogram!("sluice_plugin_call_duration_seconds", "plugin_hash" => plugin.to_owned())
        .record(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(
        "sluice_plugin_calls_total",
        "plugin_hash" => plugin.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
    result
}

/// Records the linear memory of a live instance after a call (none once a failed call
/// dropped it).
fn record_memory(plugin: &str, store: Option<&Store<HostState>>) {
    if let Some(store) = store {
        metrics::histogram!("sluice_plugin_instance_memory_bytes", "plugin_hash" => plugin.to_owned())
            .record(store.data().sandbox.memory as f64);
    }
}

/// Maps a failed call to the error users see.
pub(crate) fn classify(
    err: wasmtime::Error,
    store: &Store<HostState>,
    limits: &Limits,
) -> PluginError {
    let (error, reason) = if store.data().sandbox.memory_limit_hit {
        let limit_bytes = limits.max_memory_bytes;
        (PluginError::MemoryLimit { limit_bytes }, "memory_limit")
    } else {
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                let limit_ms = limits.max_call_ms;
                (PluginError::Timeout { limit_ms }, "time_limit")
            }
            Some(trap) => {
                tracing::debug!(plugin = %store.data().plugin, cause = ?err, "plugin trapped");
                (PluginError::Trap(trap.to_string()), "trap")
            }
            // A host function's own error (e.g. the guest tried to sleep) also stops the guest.
            None => (PluginError::Trap(format!("{err:#}")), "trap"),
        }
    };
    metrics::counter!(
        "sluice_plugin_stops_total",
        "plugin_hash" => store.data().plugin.to_string(),
        "reason" => reason
    )
    .increment(1);
    error
}

/// A store for one instance of `plugin`, with its limits and epoch deadline set.
pub(crate) fn new_store(
    plugin: &Plugin,
    config: &Arc<[(String, String)]>,
    limits: &Limits,
    state: Option<Box<dyn StateStore>>,
    wasi: WasiCtx,
    http_hosts: crate::connector::HttpGrant,
) -> Store<HostState> {
    let p = &plugin.inner;
    let mut store = Store::new(
        &p.engine,
        HostState {
            wasi,
            table: ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hosts,
            sandbox: Sandbox {
                max_memory: limits.max_memory_bytes,
                memory: 0,
                memory_limit_hit: false,
            },
            config: config.clone(),
            state,
            pending: PendingWrites::default(),
            plugin: Arc::from(plugin.label()),
            log_budget: LOG_LINES_PER_CALL,
        },
    );
    store.limiter(|d| &mut d.sandbox);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(epoch_ticks(limits));
    store
}

/// Readies `store` for one call into the guest: a fresh log budget and time limit.
pub(crate) fn arm(store: &mut Store<HostState>, limits: &Limits) {
    store.data_mut().log_budget = LOG_LINES_PER_CALL;
    store.set_epoch_deadline(epoch_ticks(limits));
}

/// A failed instantiation hands the state store back.
type InstantiateError = (PluginError, Option<Box<dyn StateStore>>);

/// Creates a store and instance for `plugin` and runs `init`. `state` is `None` for
/// partitioners.
fn instantiate<F: Copy>(
    plugin: &Plugin,
    config: &Arc<[(String, String)]>,
    limits: &Limits,
    state: Option<Box<dyn StateStore>>,
    typed: impl FnOnce(&mut Store<HostState>, &wasmtime::component::Instance) -> wasmtime::Result<F>,
) -> Result<Live<F>, InstantiateError> {
    let p = &plugin.inner;
    let wasi = wasi_ctx(&[]).map_err(|e| (e, None))?;
    let mut store = new_store(
        plugin,
        config,
        limits,
        state,
        wasi,
        crate::connector::HttpGrant::default(),
    );
    let fail = |e: PluginError, mut store: Store<HostState>| (e, store.data_mut().state.take());
    let instance = match p.pre.instantiate(&mut store) {
        Ok(i) => i,
        Err(e) => {
            let e = classify(e, &store, limits);
            return Err(fail(e, store));
        }
    };
    let init_idx = match p.funcs.get("init") {
        Ok(i) => i,
        Err(e) => return Err(fail(e, store)),
    };
    let init: InitFn = match instance.get_typed_func(&mut store, init_idx) {
        Ok(f) => f,
        Err(e) => {
            let e = PluginError::Invalid(format!("`init` has the wrong signature: {e:#}"));
            return Err(fail(e, store));
        }
    };
    let call = match typed(&mut store, &instance) {
        Ok(f) => f,
        Err(e) => {
            let e = PluginError::Invalid(format!("the handler has the wrong signature: {e:#}"));
            return Err(fail(e, store));
        }
    };
    store.set_epoch_deadline(epoch_ticks(limits));
    match init.call(&mut store, ()) {
        Ok((Ok(()),)) => {}
        Ok((Err(g),)) => {
            store.data_mut().pending.discard();
            return Err(fail(PluginError::Guest(g.message), store));
        }
        Err(e) => {
            let e = classify(e, &store, limits);
            return Err(fail(e, store));
        }
    }
    // `init` may not write state (nothing checkpoints it); drop any writes it made.
    store.data_mut().pending.discard();
    Ok(Live { store, call })
}

pub(crate) fn sorted_config(mut config: Vec<(String, String)>) -> Arc<[(String, String)]> {
    config.sort();
    // Last one wins for repeated keys, as on a command line.
    config.reverse();
    config.dedup_by(|a, b| a.0 == b.0);
    config.reverse();
    config.into()
}

/// A running transform. Not `Sync`: one thread calls it at a time.
///
/// After any failed call the instance is discarded; the next [`TransformInstance::process`]
/// starts a fresh one from the plugin's `InstancePre` (running `init` again) with the state
/// store as the last successful call left it.
pub struct TransformInstance {
    plugin: Plugin,
    config: Arc<[(String, String)]>,
    limits: Limits,
    live: Option<Live<ProcessFn>>,
    /// The state store while no instance is live.
    parked: Option<Box<dyn StateStore>>,
    last_error: Option<String>,
}

impl std::fmt::Debug for TransformInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformInstance")
            .field("plugin", &self.plugin)
            .field("limits", &self.limits)
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl TransformInstance {
    pub(crate) fn start(
        plugin: Plugin,
        config: Vec<(String, String)>,
        limits: Limits,
        state: Box<dyn StateStore>,
    ) -> Result<Self, PluginError> {
        let mut t = Self {
            plugin,
            config: sorted_config(config),
            limits,
            live: None,
            parked: Some(state),
            last_error: None,
        };
        t.ensure_live()?;
        Ok(t)
    }

    fn ensure_live(&mut self) -> Result<&mut Live<ProcessFn>, PluginError> {
        if self.live.is_none() {
            let state = self.parked.take();
            let plugin = self.plugin.clone();
            let live = instantiate(&self.plugin, &self.config, &self.limits, state, |s, i| {
                let idx = plugin.inner.funcs.get("process")?;
                i.get_typed_func::<(Vec<u8>,), (Result<Vec<u8>, GuestError>,)>(s, idx)
            });
            match live {
                Ok(l) => self.live = Some(l),
                Err((e, state)) => {
                    self.parked = state;
                    return Err(e);
                }
            }
        }
        Ok(self.live.as_mut().expect("just made live"))
    }

    /// Whether the last call failed, so the next one starts a fresh instance.
    pub fn is_poisoned(&self) -> bool {
        self.live.is_none()
    }

    /// The last failure's message, for `pipeline describe`.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Runs the transform on one batch. On error nothing of this call is kept (output or
    /// state writes).
    pub fn process(&mut self, records: &[PluginRecord]) -> Result<Vec<PluginRecord>, PluginError> {
        let out = self.process_packed(encode_batch(records))?;
        decode_batch(&out).map_err(|e| self.fail(PluginError::MalformedOutput(e.to_string())))
    }

    /// Like [`TransformInstance::process`] on packed batches (`sluice-plugin-abi`), for
    /// callers that build or consume the packed form directly. The output has been checked
    /// to be a well-formed packed batch within `max_output_bytes`.
    pub fn process_packed(&mut self, batch: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        let plugin = self.plugin.label();
        let result = observed_call(&plugin, || self.process_packed_unobserved(batch));
        record_memory(&plugin, self.live.as_ref().map(|l| &l.store));
        result
    }

    fn process_packed_unobserved(&mut self, batch: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        let limits = self.limits;
        let live = self.ensure_live()?;
        arm(&mut live.store, &limits);
        let result = live.call.call(&mut live.store, (batch,));
        let out = match result {
            Ok((Ok(out),)) => out,
            Ok((Err(g),)) => return Err(self.fail(PluginError::Guest(g.message))),
            Err(e) => {
                let e = classify(e, &live.store, &limits);
                return Err(self.fail(e));
            }
        };
        if out.len() > limits.max_output_bytes {
            return Err(self.fail(PluginError::OutputTooLarge {
                size: out.len(),
                limit: limits.max_output_bytes,
            }));
        }
        if let Err(e) = validate_batch(&out) {
            return Err(self.fail(PluginError::MalformedOutput(e)));
        }
        let d = live.store.data_mut();
        if let Some(s) = d.state.as_deref_mut() {
            d.pending.commit(s);
        }
        self.last_error = None;
        Ok(out)
    }

    /// Discards the live instance (and this call's state writes), keeps the state store.
    fn fail(&mut self, e: PluginError) -> PluginError {
        tracing::warn!(plugin = %self.plugin.hash(), cause = %e, "transform call failed; instance discarded");
        if let Some(mut live) = self.live.take() {
            live.store.data_mut().pending.discard();
            self.parked = live.store.data_mut().state.take();
        }
        self.last_error = Some(e.to_string());
        e
    }

    /// The state store, as the last successful call left it.
    pub fn state(&self) -> &dyn StateStore {
        match &self.live {
            Some(l) => l.store.data().state.as_deref(),
            None => self.parked.as_deref(),
        }
        .expect("a transform always holds its state store")
    }

    /// Ends the instance and hands back its state store.
    pub fn take_state(mut self) -> Box<dyn StateStore> {
        match self.live.take() {
            Some(mut l) => l.store.data_mut().state.take(),
            None => self.parked.take(),
        }
        .expect("a transform always holds its state store")
    }
}

/// Checks that `out` is a well-formed packed batch without allocating.
pub(crate) fn validate_batch(out: &[u8]) -> Result<(), String> {
    let reader = BatchReader::new(out).map_err(|e| e.to_string())?;
    for r in reader {
        r.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A running partitioner. After a failed call the next call starts a fresh instance.
pub struct PartitionerInstance {
    plugin: Plugin,
    config: Arc<[(String, String)]>,
    limits: Limits,
    live: Option<Live<PartitionFn>>,
    last_error: Option<String>,
}

impl std::fmt::Debug for PartitionerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionerInstance")
            .field("plugin", &self.plugin)
            .field("limits", &self.limits)
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl PartitionerInstance {
    pub(crate) fn start(
        plugin: Plugin,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<Self, PluginError> {
        let mut p = Self {
            plugin,
            config: sorted_config(config),
            limits,
            live: None,
            last_error: None,
        };
        p.ensure_live()?;
        Ok(p)
    }

    fn ensure_live(&mut self) -> Result<&mut Live<PartitionFn>, PluginError> {
        if self.live.is_none() {
            let plugin = self.plugin.clone();
            let live = instantiate(&self.plugin, &self.config, &self.limits, None, |s, i| {
                let idx = plugin.inner.funcs.get("partition")?;
                i.get_typed_func::<(Vec<u8>, u32), (Result<Vec<u32>, GuestError>,)>(s, idx)
            })
            .map_err(|(e, _)| e)?;
            self.live = Some(live);
        }
        Ok(self.live.as_mut().expect("just made live"))
    }

    pub fn is_poisoned(&self) -> bool {
        self.live.is_none()
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// One partition in `0..partitions` per record, in order.
    pub fn partition(
        &mut self,
        records: &[PluginRecord],
        partitions: u32,
    ) -> Result<Vec<u32>, PluginError> {
        self.partition_packed(encode_batch(records), records.len(), partitions)
    }

    /// Like [`PartitionerInstance::partition`] on a packed batch of `count` records.
    pub fn partition_packed(
        &mut self,
        batch: Vec<u8>,
        count: usize,
        partitions: u32,
    ) -> Result<Vec<u32>, PluginError> {
        let plugin = self.plugin.label();
        let result = observed_call(&plugin, || {
            self.partition_packed_unobserved(batch, count, partitions)
        });
        record_memory(&plugin, self.live.as_ref().map(|l| &l.store));
        result
    }

    fn partition_packed_unobserved(
        &mut self,
        batch: Vec<u8>,
        count: usize,
        partitions: u32,
    ) -> Result<Vec<u32>, PluginError> {
        if partitions == 0 {
            return Err(PluginError::Input("the topic has no partitions".into()));
        }
        let limits = self.limits;
        let live = self.ensure_live()?;
        arm(&mut live.store, &limits);
        let out = match live.call.call(&mut live.store, (batch, partitions)) {
            Ok((Ok(out),)) => out,
            Ok((Err(g),)) => return Err(self.fail(PluginError::Guest(g.message))),
            Err(e) => {
                let e = classify(e, &live.store, &limits);
                return Err(self.fail(e));
            }
        };
        if out.len() != count {
            return Err(self.fail(PluginError::MalformedOutput(format!(
                "the partitioner returned {} partitions for {count} records",
                out.len()
            ))));
        }
        if let Some((i, p)) = out.iter().enumerate().find(|(_, p)| **p >= partitions) {
            return Err(self.fail(PluginError::MalformedOutput(format!(
                "the partitioner chose partition {p} for record {i}, but the topic has \
                 {partitions} partitions (0..={})",
                partitions - 1
            ))));
        }
        self.last_error = None;
        Ok(out)
    }

    fn fail(&mut self, e: PluginError) -> PluginError {
        tracing::warn!(plugin = %self.plugin.hash(), cause = %e, "partitioner call failed; instance discarded");
        self.live = None;
        self.last_error = Some(e.to_string());
        e
    }
}
