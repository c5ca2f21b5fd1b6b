//! Connector instances: a source or sink component in its own store, with the directories
//! its connector was granted (WASI preopens) and nothing else.
//!
//! Unlike transforms, a connector instance does not start itself again after a failed call:
//! the source's position (or the sink's unflushed writes) lived in the instance, so the
//! runner restarts the connector from its checkpoint instead. After a failure every call
//! returns the failure.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::TypedFunc;

use crate::instance::{
    GuestError, HostState, arm, classify, new_store, sorted_config, validate_batch, wasi_ctx,
};
use crate::runtime::Plugin;
use crate::{Limits, PluginError};

/// What a connector may reach besides its `log` and `config` imports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host directories, each visible to the guest at the same path.
    pub dirs: Vec<DirGrant>,
    /// Hosts it may send HTTP requests to (`host` or `host:port`, as in a URL's authority).
    pub http_hosts: Vec<String>,
}

/// How long one outgoing HTTP request of a connector may take to connect and to answer: the
/// guest waits for it in the host, where its own time limit cannot stop it.
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The `wasi:http` hook of a store: a request goes out only to a granted host (else the guest
/// gets `HTTP-request-denied`), with connect and answer timeouts.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpGrant {
    hosts: Vec<String>,
}

impl HttpGrant {
    fn allows(&self, authority: &http::uri::Authority) -> bool {
        let with_port = authority.as_str();
        let host = authority.host();
        self.hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(with_port) || h.eq_ignore_ascii_case(host))
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for HttpGrant {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<
                            dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                                + Send,
                        >,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let allowed = request.uri().authority().is_some_and(|a| self.allows(a));
        if !allowed {
            tracing::warn!(uri = %request.uri(), "connector request to a host it was not granted refused");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let mut options = options.unwrap_or_default();
        options.connect_timeout = Some(
            options
                .connect_timeout
                .unwrap_or(HTTP_TIMEOUT)
                .min(HTTP_TIMEOUT),
        );
        options.first_byte_timeout = Some(
            options
                .first_byte_timeout
                .unwrap_or(HTTP_TIMEOUT)
                .min(HTTP_TIMEOUT),
        );
        options.between_bytes_timeout = Some(
            options
                .between_bytes_timeout
                .unwrap_or(HTTP_TIMEOUT)
                .min(HTTP_TIMEOUT),
        );
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io)
                    as Box<
                        dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                            + Send,
                    >,
            ))
        })
    }
}

/// One granted directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// An absolute host path; the guest sees it at the same path.
    pub path: PathBuf,
    /// Whether the guest may create, write and remove files in it (else read only).
    pub writable: bool,
}

impl DirGrant {
    /// Parses `PATH`, `PATH:ro` or `PATH:rw` (default read-only). The path must be absolute.
    pub fn parse(spec: &str) -> Result<DirGrant, String> {
        let (path, writable) = match spec.rsplit_once(':') {
            Some((p, "rw")) => (p, true),
            Some((p, "ro")) => (p, false),
            _ => (spec, false),
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!(
                "grants.dirs entry {spec:?}: the path must be absolute (PATH, PATH:ro or PATH:rw)"
            ));
        }
        Ok(DirGrant { path, writable })
    }
}

type Call<P, R> = TypedFunc<P, (Result<R, GuestError>,)>;

/// How the guest SDK's `Error::permanent` messages start.
const PERMANENT_ERROR_PREFIX: &str = "permanent: ";

/// Whether a connector call's error is the guest refusing its records for good
/// (`sluice_plugin::Error::permanent`): no retry can cure it, and the instance goes on (the
/// call left nothing of those records behind). A sink's host sends such records to the
/// dead-letter topic.
pub fn is_permanent(e: &PluginError) -> bool {
    matches!(e, PluginError::Guest(m) if m.starts_with(PERMANENT_ERROR_PREFIX))
}

/// One live component and what its calls share.
struct Connector {
    plugin: Plugin,
    limits: Limits,
    store: Store<HostState>,
    failed: Option<String>,
}

impl Connector {
    fn start(
        plugin: &Plugin,
        config: Vec<(String, String)>,
        limits: Limits,
        grants: &Grants,
    ) -> Result<(Connector, wasmtime::component::Instance), PluginError> {
        let wasi = wasi_ctx(&grants.dirs)?;
        let config: Arc<[(String, String)]> = sorted_config(config);
        let http = HttpGrant {
            hosts: grants.http_hosts.clone(),
        };
        let mut store = new_store(plugin, &config, &limits, None, wasi, http);
        let instance = plugin
            .inner
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store, &limits))?;
        Ok((
            Connector {
                plugin: plugin.clone(),
                limits,
                store,
                failed: None,
            },
            instance,
        ))
    }

    fn func<P, R>(
        &mut self,
        instance: &wasmtime::component::Instance,
        name: &str,
    ) -> Result<Call<P, R>, PluginError>
    where
        P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
        R: wasmtime::component::ComponentType + wasmtime::component::Lift,
        (Result<R, GuestError>,):
            wasmtime::component::ComponentNamedList + wasmtime::component::Lift,
    {
        let idx = self.plugin.inner.funcs.get(name)?;
        instance
            .get_typed_func(&mut self.store, idx)
            .map_err(|e| PluginError::Invalid(format!("`{name}` has the wrong signature: {e:#}")))
    }

    /// One bounded call; a failure is remembered and ends the instance.
    fn call<P, R>(&mut self, f: &Call<P, R>, params: P) -> Result<R, PluginError>
    where
        P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
        R: wasmtime::component::ComponentType + wasmtime::component::Lift,
        (Result<R, GuestError>,):
            wasmtime::component::ComponentNamedList + wasmtime::component::Lift,
    {
        if let Some(why) = &self.failed {
            return Err(PluginError::Runtime(format!(
                "the connector instance failed earlier ({why}); restart it"
            )));
        }
        // Counted and timed like every plugin call (docs/metrics.md).
        let label = self.plugin.label();
        let result = crate::instance::observed_call(&label, || {
            arm(&mut self.store, &self.limits);
            match f.call(&mut self.store, params) {
                Ok((Ok(r),)) => Ok(r),
                Ok((Err(g),)) => Err(PluginError::Guest(g.message)),
                Err(e) => Err(classify(e, &self.store, &self.limits)),
            }
        });
        match &result {
            // The guest refused these records for good and kept nothing of them: it goes on.
            Err(e) if is_permanent(e) => {}
            Err(e) => {
                tracing::warn!(plugin = %self.plugin.hash(), cause = %e, "connector call failed; the instance is ended");
                self.failed = Some(e.to_string());
            }
            Ok(_) => {}
        }
        result
    }

    fn fail(&mut self, e: PluginError) -> PluginError {
        self.failed = Some(e.to_string());
        e
    }
}

/// A running source connector. Calls block; run them on a blocking thread.
pub struct SourceInstance {
    connector: Connector,
    poll: Call<(u32,), Vec<u8>>,
    checkpoint: Call<(), Vec<u8>>,
    commit: Call<(Vec<u8>,), ()>,
}

impl std::fmt::Debug for SourceInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceInstance")
            .field("plugin", &self.connector.plugin)
            .field("failed", &self.connector.failed)
            .finish_non_exhaustive()
    }
}

impl SourceInstance {
    pub(crate) fn start(
        plugin: Plugin,
        config: Vec<(String, String)>,
        limits: Limits,
        grants: &Grants,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<Self, PluginError> {
        let (mut c, instance) = Connector::start(&plugin, config, limits, grants)?;
        let open: Call<(Option<Vec<u8>>,), ()> = c.func(&instance, "open")?;
        let source = SourceInstance {
            poll: c.func(&instance, "poll")?,
            checkpoint: c.func(&instance, "checkpoint")?,
            commit: c.func(&instance, "commit")?,
            connector: c,
        };
        let mut source = source;
        source.connector.call(&open, (checkpoint,))?;
        Ok(source)
    }

    /// Up to `max_records` new records, packed (`sluice-plugin-abi`), checked to be a
    /// well-formed batch within `Limits::max_output_bytes`; empty when none are ready.
    pub fn poll(&mut self, max_records: u32) -> Result<Vec<u8>, PluginError> {
        let poll = self.poll;
        let out = self.connector.call(&poll, (max_records,))?;
        let limit = self.connector.limits.max_output_bytes;
        if out.len() > limit {
            return Err(self.connector.fail(PluginError::OutputTooLarge {
                size: out.len(),
                limit,
            }));
        }
        if let Err(e) = validate_batch(&out) {
            return Err(self.connector.fail(PluginError::MalformedOutput(e)));
        }
        let count = sluice_plugin_abi::BatchReader::new(&out).map_or(0, |r| r.remaining());
        if count > max_records as usize {
            return Err(self.connector.fail(PluginError::MalformedOutput(format!(
                "asked for at most {max_records} records, the source returned {count}"
            ))));
        }
        Ok(out)
    }

    /// The position after every record polled so far.
    pub fn checkpoint(&mut self) -> Result<Vec<u8>, PluginError> {
        let f = self.checkpoint;
        self.connector.call(&f, ())
    }

    /// Tells the source the records up to `checkpoint` are stored.
    pub fn commit(&mut self, checkpoint: Vec<u8>) -> Result<(), PluginError> {
        let f = self.commit;
        self.connector.call(&f, (checkpoint,))
    }

    /// Why the instance failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.connector.failed.as_deref()
    }
}

/// A running sink connector. Calls block; run them on a blocking thread.
pub struct SinkInstance {
    connector: Connector,
    write: Call<(Vec<u8>,), ()>,
    flush: Call<(), ()>,
}

impl std::fmt::Debug for SinkInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkInstance")
            .field("plugin", &self.connector.plugin)
            .field("failed", &self.connector.failed)
            .finish_non_exhaustive()
    }
}

impl SinkInstance {
    pub(crate) fn start(
        plugin: Plugin,
        config: Vec<(String, String)>,
        limits: Limits,
        grants: &Grants,
    ) -> Result<Self, PluginError> {
        let (mut c, instance) = Connector::start(&plugin, config, limits, grants)?;
        let open: Call<(), ()> = c.func(&instance, "open")?;
        let mut sink = SinkInstance {
            write: c.func(&instance, "write")?,
            flush: c.func(&instance, "flush")?,
            connector: c,
        };
        sink.connector.call(&open, ())?;
        Ok(sink)
    }

    /// Hands the sink a packed batch of records (each with its partition and offset).
    pub fn write(&mut self, batch: Vec<u8>) -> Result<(), PluginError> {
        let f = self.write;
        self.connector.call(&f, (batch,))
    }

    /// Makes everything written so far durable outside.
    pub fn flush(&mut self) -> Result<(), PluginError> {
        let f = self.flush;
        self.connector.call(&f, ())
    }

    /// Why the instance failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.connector.failed.as_deref()
    }
}
