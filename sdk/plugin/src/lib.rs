//! Guest SDK for Sluice plugins: write a transform or partitioner in a few lines of Rust and
//! build it as a WebAssembly component (`cargo build --release --target wasm32-wasip2`).
//!
//! Records arrive from the host as one packed batch (`sluice-plugin-abi`); this crate decodes
//! it, calls your code once per record (or once per batch for a [`Transform`]), encodes what
//! you return, and maps your [`Error`] to the WIT `plugin-error` the host shows to users.
//!
//! ```ignore
//! use sluice_plugin::{Config, Filter, RecordRef, Result};
//!
//! struct NonEmpty { min: usize }
//!
//! impl Filter for NonEmpty {
//!     fn new(config: &Config) -> Result<Self> {
//!         Ok(NonEmpty { min: config.parse_or("min_len", 1)? })
//!     }
//!     fn keep(&mut self, record: &RecordRef<'_>) -> Result<bool> {
//!         Ok(record.value_bytes().len() >= self.min)
//!     }
//! }
//!
//! sluice_plugin::export_filter!(NonEmpty);
//! ```
//!
//! Shapes: [`Filter`] (keep or drop), [`Map`] (one in, one out), [`FlatMap`] (one in, any
//! number out), [`Aggregate`] (one in, any number out, with the host's keyed [`state`]
//! store), [`Transform`] (a whole batch at a time) and [`Partitioner`]. Each has an
//! `export_*!` macro. Host services: [`config`], [`log`], [`state`].

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::thread::LocalKey;

pub use sluice_plugin_abi::{
    BatchBuilder, BatchReader, PARTITION_UNSET, PluginRecord as Record, RecordRef, murmur2,
    partition_for_key,
};

/// Generated bindings; used by the `export_*!` macros, not meant to be used directly.
#[doc(hidden)]
pub mod __bindings {
    pub mod transform_world {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "sluice:plugin/transform@0.1.0",
            pub_export_macro: true,
            export_macro_name: "export_transform_world",
            default_bindings_module: "$crate::__bindings::transform_world",
        });
    }
    pub mod partitioner_world {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "sluice:plugin/partitioner@0.1.0",
            pub_export_macro: true,
            export_macro_name: "export_partitioner_world",
            default_bindings_module: "$crate::__bindings::partitioner_world",
            with: {
                "sluice:plugin/types@0.1.0": super::transform_world::sluice::plugin::types,
                "sluice:plugin/log@0.1.0": super::transform_world::sluice::plugin::log,
                "sluice:plugin/config@0.1.0": super::transform_world::sluice::plugin::config,
            },
        });
    }
    pub mod source_world {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "sluice:plugin/source@0.1.0",
            pub_export_macro: true,
            export_macro_name: "export_source_world",
            default_bindings_module: "$crate::__bindings::source_world",
            with: {
                "sluice:plugin/types@0.1.0": super::transform_world::sluice::plugin::types,
                "sluice:plugin/log@0.1.0": super::transform_world::sluice::plugin::log,
                "sluice:plugin/config@0.1.0": super::transform_world::sluice::plugin::config,
            },
        });
    }
    pub mod sink_world {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "sluice:plugin/sink@0.1.0",
            pub_export_macro: true,
            export_macro_name: "export_sink_world",
            default_bindings_module: "$crate::__bindings::sink_world",
            with: {
                "sluice:plugin/types@0.1.0": super::transform_world::sluice::plugin::types,
                "sluice:plugin/log@0.1.0": super::transform_world::sluice::plugin::log,
                "sluice:plugin/config@0.1.0": super::transform_world::sluice::plugin::config,
            },
        });
    }
    pub use transform_world::sluice::plugin::types::PluginError;
}

use __bindings::transform_world::sluice::plugin as host;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// An error a plugin reports to the host. Its message is shown to users (for example in
/// `sluice pipeline describe`), so say what was wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: String,
}

/// How a [`Error::permanent`] error's message starts on the wire (the WIT `plugin-error`
/// carries only a message): the host's dead-letter handling looks for it.
pub const PERMANENT_ERROR_PREFIX: &str = "permanent: ";

impl Error {
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// An error no retry can cure, about the records of this call (a sink's `write`: a
    /// record the outside refuses for good). The host finds which records cause it and sends
    /// them to the connector's dead-letter topic, with this message, instead of retrying.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            message: format!("{PERMANENT_ERROR_PREFIX}{message}"),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Self::msg(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for __bindings::PluginError {
    fn from(e: Error) -> Self {
        Self { message: e.message }
    }
}

// ---------------------------------------------------------------------------------------
// Host services
// ---------------------------------------------------------------------------------------

/// The key/value configuration given when the plugin was attached
/// (`--config field=price`).
pub mod config {
    use super::{Error, FromStr, Result, host};

    /// The configured value for `key`.
    pub fn get(key: &str) -> Option<String> {
        host::config::get(key)
    }

    /// Every configured pair, sorted by key.
    pub fn all() -> Vec<(String, String)> {
        host::config::all()
    }

    /// The value for `key`, or an error naming the missing key.
    pub fn require(key: &str) -> Result<String> {
        get(key)
            .ok_or_else(|| Error::msg(format!("missing config `{key}` (set --config {key}=...)")))
    }

    /// The value for `key` parsed as `T`; `None` when not configured; an error naming the
    /// key and the bad value when it does not parse.
    pub fn parse<T: FromStr>(key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<T>().map(Some).map_err(|e| {
                Error::msg(format!(
                    "config `{key}` = {v:?} is not a valid {}: {e}",
                    short_type_name::<T>()
                ))
            }),
        }
    }

    /// Like [`parse`], with a default when not configured.
    pub fn parse_or<T: FromStr>(key: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        parse(key).map(|v| v.unwrap_or(default))
    }

    /// Like [`parse`], but the key must be configured.
    pub fn parse_required<T: FromStr>(key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        parse(key)?
            .ok_or_else(|| Error::msg(format!("missing config `{key}` (set --config {key}=...)")))
    }

    fn short_type_name<T>() -> &'static str {
        let n = std::any::type_name::<T>();
        n.rsplit("::").next().unwrap_or(n)
    }
}

/// A handle on the configuration, passed to constructors so their signature says that
/// they read it. Same functions as the [`config`] module.
#[derive(Clone, Copy, Debug, Default)]
pub struct Config;

impl Config {
    pub fn get(&self, key: &str) -> Option<String> {
        config::get(key)
    }
    pub fn all(&self) -> Vec<(String, String)> {
        config::all()
    }
    pub fn require(&self, key: &str) -> Result<String> {
        config::require(key)
    }
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: fmt::Display,
    {
        config::parse(key)
    }
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        config::parse_or(key, default)
    }
    pub fn parse_required<T: FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        config::parse_required(key)
    }
}

/// Logging into the broker's log, tagged with this plugin.
pub mod log {
    use super::host::log::log;
    use super::host::types::Level;

    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// The transform's keyed state store, kept by the host and checkpointed with the input
/// offsets. Only transforms have one: a partitioner that calls these fails to instantiate.
pub mod state {
    use super::host::state;

    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }
    pub fn set(key: &[u8], value: &[u8]) {
        state::set(key, value)
    }
    pub fn delete(key: &[u8]) {
        state::delete(key)
    }
    /// Keys starting with `prefix`, ascending.
    pub fn keys(prefix: &[u8]) -> Vec<Vec<u8>> {
        state::keys(prefix)
    }
}

/// The state store as a value, handed to [`Aggregate::aggregate`].
#[derive(Debug)]
pub struct State {
    _private: (),
}

impl State {
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        state::set(key, value)
    }
    pub fn delete(&mut self, key: &[u8]) {
        state::delete(key)
    }
    pub fn keys(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        state::keys(prefix)
    }
    /// A `u64` stored as 8 little-endian bytes; `None` if absent or not 8 bytes.
    pub fn get_u64(&self, key: &[u8]) -> Option<u64> {
        self.get(key)
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes)
    }
    pub fn set_u64(&mut self, key: &[u8], value: u64) {
        self.set(key, &value.to_le_bytes())
    }
}

// ---------------------------------------------------------------------------------------
// Plugin shapes
// ---------------------------------------------------------------------------------------

/// Keeps or drops each record. The cheapest shape: kept records are copied through
/// unchanged, without being decoded into owned values.
pub trait Filter: Sized + 'static {
    fn new(config: &Config) -> Result<Self>;
    fn keep(&mut self, record: &RecordRef<'_>) -> Result<bool>;
}

/// One record in, one record out.
pub trait Map: Sized + 'static {
    fn new(config: &Config) -> Result<Self>;
    fn map(&mut self, record: Record) -> Result<Record>;
}

/// One record in, any number out (pushed onto `out`).
pub trait FlatMap: Sized + 'static {
    fn new(config: &Config) -> Result<Self>;
    fn flat_map(&mut self, record: Record, out: &mut Vec<Record>) -> Result<()>;
}

/// One record in, any number out, with the keyed state store. Called record by record in
/// input order, so results never depend on how the host cut the input into batches. There
/// are no timers: emit when the event time you see passes a window's end.
pub trait Aggregate: Sized + 'static {
    fn new(config: &Config) -> Result<Self>;
    fn aggregate(&mut self, record: Record, state: &mut State, out: &mut Vec<Record>)
    -> Result<()>;
}

/// A whole batch at a time: the most general shape (the others are built on it).
pub trait Transform: Sized + 'static {
    fn new(config: &Config) -> Result<Self>;
    fn process(&mut self, input: BatchReader<'_>, output: &mut BatchBuilder) -> Result<()>;
}

/// Chooses a partition for each record produced without one.
pub trait Partitioner: Sized + 'static {
    fn new(config: &Config) -> Result<Self>;
    /// A partition in `0..partition_count`.
    fn partition(&mut self, record: &RecordRef<'_>, partition_count: u32) -> Result<u32>;
}

/// A source connector: brings records from outside into a topic. The host calls
/// [`Source::poll`] for batches, stores what it returns, and keeps [`Source::checkpoint`]
/// with them; after a restart it opens the source at that checkpoint again. For exactly-once
/// delivery, a source opened at a checkpoint and polled for `n` records must return the same
/// `n` records it returned the first time (docs/connectors.md).
pub trait Source: Sized + 'static {
    /// Opens the source at `checkpoint` (`None`: the first start).
    fn open(config: &Config, checkpoint: Option<&[u8]>) -> Result<Self>;
    /// Appends up to `max_records` new records to `output` (none when nothing is ready).
    /// A record's partition set to [`PARTITION_UNSET`] goes where the host places it.
    fn poll(&mut self, max_records: u32, output: &mut BatchBuilder) -> Result<()>;
    /// The position after every record returned so far.
    fn checkpoint(&self) -> Result<Vec<u8>>;
    /// The records up to `checkpoint` are stored; acknowledge them upstream if needed.
    fn commit(&mut self, _checkpoint: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// A sink connector: takes records from a topic out. The host hands it batches with
/// [`Sink::write`] and commits the topic offsets only after [`Sink::flush`] succeeded, so
/// after a failure records from the last flush on come again (each carries its partition and
/// offset, for a sink that makes itself exactly-once).
pub trait Sink: Sized + 'static {
    fn open(config: &Config) -> Result<Self>;
    /// Takes the records (or buffers them for `flush`). An [`Error::permanent`] says a record
    /// of these can never be written: the call must then keep none of them, and the host
    /// hands them over again one by one to find it (and sends it to the dead-letter topic).
    /// Any other error ends the instance; the host starts it again from its last commit.
    fn write(&mut self, records: BatchReader<'_>) -> Result<()>;
    /// Makes everything written so far durable outside.
    fn flush(&mut self) -> Result<()>;
}

/// Adapters from the per-record shapes to [`Transform`]; named by the `export_*!` macros.
#[doc(hidden)]
pub mod adapt {
    use super::*;

    /// The per-record shapes see `partition` = [`PARTITION_UNSET`], so a record returned as
    /// it came goes where its key hashes in the output topic; set it to route explicitly.
    fn owned(r: &RecordRef<'_>) -> Record {
        let mut r = r.to_owned_record();
        r.partition = PARTITION_UNSET;
        r
    }

    fn bad_input(e: sluice_plugin_abi::AbiError) -> Error {
        Error::msg(format!("host sent a {e}"))
    }

    #[derive(Debug)]
    pub struct AsFilter<T>(T);
    impl<T: Filter> Transform for AsFilter<T> {
        fn new(config: &Config) -> Result<Self> {
            T::new(config).map(AsFilter)
        }
        fn process(&mut self, input: BatchReader<'_>, output: &mut BatchBuilder) -> Result<()> {
            for r in input {
                let r = r.map_err(bad_input)?;
                if self.0.keep(&r)? {
                    output.push_ref(&r.with_partition(PARTITION_UNSET));
                }
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    pub struct AsMap<T>(T);
    impl<T: Map> Transform for AsMap<T> {
        fn new(config: &Config) -> Result<Self> {
            T::new(config).map(AsMap)
        }
        fn process(&mut self, input: BatchReader<'_>, output: &mut BatchBuilder) -> Result<()> {
            for r in input {
                let r = r.map_err(bad_input)?;
                output.push(&self.0.map(owned(&r))?);
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    pub struct AsFlatMap<T>(T, Vec<Record>);
    impl<T: FlatMap> Transform for AsFlatMap<T> {
        fn new(config: &Config) -> Result<Self> {
            T::new(config).map(|t| AsFlatMap(t, Vec::new()))
        }
        fn process(&mut self, input: BatchReader<'_>, output: &mut BatchBuilder) -> Result<()> {
            for r in input {
                let r = r.map_err(bad_input)?;
                self.0.flat_map(owned(&r), &mut self.1)?;
                for o in self.1.drain(..) {
                    output.push(&o);
                }
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    pub struct AsAggregate<T>(T, Vec<Record>);
    impl<T: Aggregate> Transform for AsAggregate<T> {
        fn new(config: &Config) -> Result<Self> {
            T::new(config).map(|t| AsAggregate(t, Vec::new()))
        }
        fn process(&mut self, input: BatchReader<'_>, output: &mut BatchBuilder) -> Result<()> {
            let mut state = State { _private: () };
            for r in input {
                let r = r.map_err(bad_input)?;
                self.0.aggregate(owned(&r), &mut state, &mut self.1)?;
                for o in self.1.drain(..) {
                    output.push(&o);
                }
            }
            Ok(())
        }
    }
}

/// What the `export_*!` macros call; not meant to be used directly.
#[doc(hidden)]
pub mod __private {
    use super::*;
    pub use __bindings::PluginError;

    pub type Slot<T> = RefCell<Option<T>>;

    const NOT_INITIALISED: &str = "the host called the plugin before init";

    pub fn init<T: Transform>(slot: &'static LocalKey<Slot<T>>) -> Result<(), PluginError> {
        let t = T::new(&Config)?;
        slot.with(|s| *s.borrow_mut() = Some(t));
        Ok(())
    }

    pub fn process<T: Transform>(
        slot: &'static LocalKey<Slot<T>>,
        batch: Vec<u8>,
    ) -> Result<Vec<u8>, PluginError> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let t = s.as_mut().ok_or_else(|| Error::msg(NOT_INITIALISED))?;
            let input =
                BatchReader::new(&batch).map_err(|e| Error::msg(format!("host sent a {e}")))?;
            // Most transforms emit about what they read.
            let mut output = BatchBuilder::with_capacity(batch.len());
            t.process(input, &mut output)?;
            Ok(output.finish())
        })
    }

    pub fn source_open<T: Source>(
        slot: &'static LocalKey<Slot<T>>,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), PluginError> {
        let t = T::open(&Config, checkpoint.as_deref())?;
        slot.with(|s| *s.borrow_mut() = Some(t));
        Ok(())
    }

    fn with_plugin<T, R>(
        slot: &'static LocalKey<Slot<T>>,
        f: impl FnOnce(&mut T) -> Result<R>,
    ) -> Result<R, PluginError> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let t = s
                .as_mut()
                .ok_or_else(|| Error::msg("the host called the connector before open"))?;
            Ok(f(t)?)
        })
    }

    pub fn source_poll<T: Source>(
        slot: &'static LocalKey<Slot<T>>,
        max_records: u32,
    ) -> Result<Vec<u8>, PluginError> {
        with_plugin(slot, |t| {
            let mut output = BatchBuilder::new();
            t.poll(max_records, &mut output)?;
            Ok(output.finish())
        })
    }

    pub fn source_checkpoint<T: Source>(
        slot: &'static LocalKey<Slot<T>>,
    ) -> Result<Vec<u8>, PluginError> {
        with_plugin(slot, |t| t.checkpoint())
    }

    pub fn source_commit<T: Source>(
        slot: &'static LocalKey<Slot<T>>,
        checkpoint: Vec<u8>,
    ) -> Result<(), PluginError> {
        with_plugin(slot, |t| t.commit(&checkpoint))
    }

    pub fn sink_open<T: Sink>(slot: &'static LocalKey<Slot<T>>) -> Result<(), PluginError> {
        let t = T::open(&Config)?;
        slot.with(|s| *s.borrow_mut() = Some(t));
        Ok(())
    }

    pub fn sink_write<T: Sink>(
        slot: &'static LocalKey<Slot<T>>,
        batch: Vec<u8>,
    ) -> Result<(), PluginError> {
        with_plugin(slot, |t| {
            let input =
                BatchReader::new(&batch).map_err(|e| Error::msg(format!("host sent a {e}")))?;
            t.write(input)
        })
    }

    pub fn sink_flush<T: Sink>(slot: &'static LocalKey<Slot<T>>) -> Result<(), PluginError> {
        with_plugin(slot, |t| t.flush())
    }

    pub fn init_partitioner<T: Partitioner>(
        slot: &'static LocalKey<Slot<T>>,
    ) -> Result<(), PluginError> {
        let t = T::new(&Config)?;
        slot.with(|s| *s.borrow_mut() = Some(t));
        Ok(())
    }

    pub fn partition<T: Partitioner>(
        slot: &'static LocalKey<Slot<T>>,
        batch: Vec<u8>,
        partition_count: u32,
    ) -> Result<Vec<u32>, PluginError> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let t = s.as_mut().ok_or_else(|| Error::msg(NOT_INITIALISED))?;
            let input =
                BatchReader::new(&batch).map_err(|e| Error::msg(format!("host sent a {e}")))?;
            let mut out = Vec::with_capacity(input.remaining());
            for r in input {
                let r = r.map_err(|e| Error::msg(format!("host sent a {e}")))?;
                out.push(t.partition(&r, partition_count)?);
            }
            Ok(out)
        })
    }
}

/// Exports a [`Transform`] as this component's `transform-handler`.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        const _: () = {
            ::std::thread_local! {
                static SLUICE_PLUGIN: $crate::__private::Slot<$t> =
                    const { ::std::cell::RefCell::new(None) };
            }
            struct SluiceExport;
            impl $crate::__bindings::transform_world::exports::sluice::plugin::transform_handler::Guest
                for SluiceExport
            {
                fn init() -> ::std::result::Result<(), $crate::__private::PluginError> {
                    $crate::__private::init::<$t>(&SLUICE_PLUGIN)
                }
                fn process(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::__private::PluginError> {
                    $crate::__private::process::<$t>(&SLUICE_PLUGIN, batch)
                }
            }
            $crate::__bindings::transform_world::export_transform_world!(
                SluiceExport with_types_in $crate::__bindings::transform_world
            );
        };
    };
}

/// Exports a [`Filter`] as a transform.
#[macro_export]
macro_rules! export_filter {
    ($t:ty) => {
        $crate::export_transform!($crate::adapt::AsFilter<$t>);
    };
}

/// Exports a [`Map`] as a transform.
#[macro_export]
macro_rules! export_map {
    ($t:ty) => {
        $crate::export_transform!($crate::adapt::AsMap<$t>);
    };
}

/// Exports a [`FlatMap`] as a transform.
#[macro_export]
macro_rules! export_flat_map {
    ($t:ty) => {
        $crate::export_transform!($crate::adapt::AsFlatMap<$t>);
    };
}

/// Exports an [`Aggregate`] as a transform.
#[macro_export]
macro_rules! export_aggregate {
    ($t:ty) => {
        $crate::export_transform!($crate::adapt::AsAggregate<$t>);
    };
}

/// Exports a [`Partitioner`] as this component's `partition-handler`.
#[macro_export]
macro_rules! export_partitioner {
    ($t:ty) => {
        const _: () = {
            ::std::thread_local! {
                static SLUICE_PLUGIN: $crate::__private::Slot<$t> =
                    const { ::std::cell::RefCell::new(None) };
            }
            struct SluiceExport;
            impl $crate::__bindings::partitioner_world::exports::sluice::plugin::partition_handler::Guest
                for SluiceExport
            {
                fn init() -> ::std::result::Result<(), $crate::__private::PluginError> {
                    $crate::__private::init_partitioner::<$t>(&SLUICE_PLUGIN)
                }
                fn partition(
                    batch: ::std::vec::Vec<u8>,
                    partition_count: u32,
                ) -> ::std::result::Result<::std::vec::Vec<u32>, $crate::__private::PluginError> {
                    $crate::__private::partition::<$t>(&SLUICE_PLUGIN, batch, partition_count)
                }
            }
            $crate::__bindings::partitioner_world::export_partitioner_world!(
                SluiceExport with_types_in $crate::__bindings::partitioner_world
            );
        };
    };
}

/// Exports a [`Source`] as this component's `source-handler`.
#[macro_export]
macro_rules! export_source {
    ($t:ty) => {
        const _: () = {
            ::std::thread_local! {
                static SLUICE_PLUGIN: $crate::__private::Slot<$t> =
                    const { ::std::cell::RefCell::new(None) };
            }
            struct SluiceExport;
            impl $crate::__bindings::source_world::exports::sluice::plugin::source_handler::Guest
                for SluiceExport
            {
                fn open(
                    checkpoint: ::std::option::Option<::std::vec::Vec<u8>>,
                ) -> ::std::result::Result<(), $crate::__private::PluginError> {
                    $crate::__private::source_open::<$t>(&SLUICE_PLUGIN, checkpoint)
                }
                fn poll(
                    max_records: u32,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::__private::PluginError>
                {
                    $crate::__private::source_poll::<$t>(&SLUICE_PLUGIN, max_records)
                }
                fn checkpoint()
                -> ::std::result::Result<::std::vec::Vec<u8>, $crate::__private::PluginError>
                {
                    $crate::__private::source_checkpoint::<$t>(&SLUICE_PLUGIN)
                }
                fn commit(
                    checkpoint: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), $crate::__private::PluginError> {
                    $crate::__private::source_commit::<$t>(&SLUICE_PLUGIN, checkpoint)
                }
            }
            $crate::__bindings::source_world::export_source_world!(
                SluiceExport with_types_in $crate::__bindings::source_world
            );
        };
    };
}

/// Exports a [`Sink`] as this component's `sink-handler`.
#[macro_export]
macro_rules! export_sink {
    ($t:ty) => {
        const _: () = {
            ::std::thread_local! {
                static SLUICE_PLUGIN: $crate::__private::Slot<$t> =
                    const { ::std::cell::RefCell::new(None) };
            }
            struct SluiceExport;
            impl $crate::__bindings::sink_world::exports::sluice::plugin::sink_handler::Guest
                for SluiceExport
            {
                fn open() -> ::std::result::Result<(), $crate::__private::PluginError> {
                    $crate::__private::sink_open::<$t>(&SLUICE_PLUGIN)
                }
                fn write(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), $crate::__private::PluginError> {
                    $crate::__private::sink_write::<$t>(&SLUICE_PLUGIN, batch)
                }
                fn flush() -> ::std::result::Result<(), $crate::__private::PluginError> {
                    $crate::__private::sink_flush::<$t>(&SLUICE_PLUGIN)
                }
            }
            $crate::__bindings::sink_world::export_sink_world!(
                SluiceExport with_types_in $crate::__bindings::sink_world
            );
        };
    };
}
