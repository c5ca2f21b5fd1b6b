//! The Sluice plugin runtime: runs transforms and partitioners as sandboxed WebAssembly
//! components (wasmtime, component model, WIT package `sluice:plugin@0.1.0` in `wit/`).
//!
//! Data path: the broker hands a batch of [`PluginRecord`]s to a [`TransformInstance`] or
//! [`PartitionerInstance`]; the instance packs it into one byte list (`sluice-plugin-abi`),
//! calls the guest's export once for the whole batch, checks what comes back (size, format,
//! partition range) and returns typed records or partitions.
//!
//! - [`PluginRuntime`]: one per node. One wasmtime `Engine` with epoch interruption and a
//!   ticker thread; compiles each component once and caches the machine code on disk by the
//!   SHA-256 of its bytes.
//! - [`Plugin`]: a loaded component: its world ([`PluginKind`]), its hash, and an
//!   `InstancePre` from which instances start cheaply.
//! - [`TransformInstance`] / [`PartitionerInstance`]: one running instance with its
//!   configuration, [`Limits`] and (transforms) [`StateStore`]. Calls are blocking; run them
//!   on a blocking thread.
//!
//! Sandbox: a guest sees only the WIT imports (`log`, `config`, `state` for transforms) and
//! a WASI context that grants nothing but writing to stderr: no files, no environment, no
//! arguments, no network, clocks frozen at 0, and sleeping traps. Every call has a time
//! limit (epoch deadline), every store a memory limit, every result a size limit.
//!
//! All calls are bounded; any failed call discards the instance (the next call starts a
//! fresh one) and discards the state writes of that call, so the state store always holds
//! the result of the last successful call — what the broker checkpoints with its offsets.

mod connector;
mod instance;
mod runtime;
mod state;

use std::fmt;

pub use connector::{DirGrant, Grants, SinkInstance, SourceInstance, is_permanent};
pub use instance::{PartitionerInstance, TransformInstance};
pub use runtime::{Plugin, PluginRuntime};
pub use sluice_plugin_abi::{PARTITION_UNSET, PluginRecord};
pub use state::{MemoryState, StateStore};

/// The world a component implements, detected from its exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// Exports `sluice:plugin/transform-handler`.
    Transform,
    /// Exports `sluice:plugin/partition-handler`.
    Partitioner,
    /// Exports `sluice:plugin/source-handler` (a source connector).
    Source,
    /// Exports `sluice:plugin/sink-handler` (a sink connector).
    Sink,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Transform => "transform",
            PluginKind::Partitioner => "partitioner",
            PluginKind::Source => "source",
            PluginKind::Sink => "sink",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounds on one plugin instance. Defaults are safe for a shared broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one call may run (measured in 10 ms epoch ticks, so a call is
    /// stopped between `max_call_ms` and `max_call_ms + 10` ms). Default 2000.
    pub max_call_ms: u64,
    /// Linear memory (all memories of the instance together). Default 64 MiB.
    pub max_memory_bytes: usize,
    /// Size of one call's packed output. Default 16 MiB.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_call_ms: 2000,
            max_memory_bytes: 64 << 20,
            max_output_bytes: 16 << 20,
        }
    }
}

/// Everything that can go wrong loading or running a plugin. Messages are meant for users
/// (`sluice pipeline describe`); retrying the same input cannot help unless noted.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a valid WebAssembly component, or do not compile, or import
    /// something the sandbox does not provide.
    #[error("invalid plugin: {0}")]
    Invalid(String),
    /// The component implements another world than the one asked for (a partitioner used
    /// as a transform, or no Sluice world at all).
    #[error("plugin is a {found}, not a {expected}")]
    WrongWorld { expected: PluginKind, found: String },
    /// A call ran longer than `Limits::max_call_ms` and was stopped.
    #[error("plugin call exceeded its time limit of {limit_ms} ms and was stopped")]
    Timeout { limit_ms: u64 },
    /// The instance tried to grow its memory past `Limits::max_memory_bytes` and was
    /// stopped.
    #[error("plugin exceeded its memory limit of {limit_bytes} bytes and was stopped")]
    MemoryLimit { limit_bytes: usize },
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin returned its own error (the WIT `plugin-error`), e.g. a bad config value.
    #[error("plugin error: {0}")]
    Guest(String),
    /// One call's output is larger than `Limits::max_output_bytes`.
    #[error("plugin output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge { size: usize, limit: usize },
    /// The output is not what the ABI allows (not a valid packed batch, a partition out of
    /// range, the wrong number of partitions).
    #[error("plugin returned malformed output: {0}")]
    MalformedOutput(String),
    /// The compiled-code cache directory could not be used.
    #[error("plugin cache: {0}")]
    Cache(String),
    /// The input batch cannot be passed to a plugin (larger than the packed format allows).
    #[error("input batch cannot be passed to the plugin: {0}")]
    Input(String),
    /// A wasmtime failure that is none of the above (a bug or resource exhaustion on the
    /// host).
    #[error("plugin runtime: {0}")]
    Runtime(String),
}
