//! Deployed plugins, and fetch-time transforms.
//!
//! A deployed component is validated and compiled by the plugin runtime, then goes into the
//! metadata log with its bytes (`DeployPluginComponent`: name, kind, hash, bytes), so every
//! node of the cluster has it — through the log, or a snapshot for a node far behind. (Plugins
//! deployed before that kept their bytes in the deploying node's store, `plugin/<sha256>` in
//! its key/value table; those are still read from there.) Every node compiles a component once
//! — the runtime caches machine code on disk by hash — and keeps the loaded plugin in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sluice_metadata::{MetadataCommand, PluginRecord};
use sluice_plugin_host::{
    Limits, MemoryState, Plugin, PluginError, PluginRecord as AbiRecord, PluginRuntime,
};
use sluice_proto::batch::{decode_records, split_batches};
use sluice_proto::{
    ErrorCode, FetchTransformedRequest, FetchTransformedResponse, PluginDescription, PluginVersion,
    Request, ResponseBody, TransformedPartition, WireError,
};

use crate::retention::now_ms;
use crate::router::Reply;
use crate::wire_error::storage_error;
use crate::{Broker, BrokerError};

#[derive(Debug)]
pub(crate) struct PluginRegistry {
    runtime: PluginRuntime,
    /// Loaded plugins by content hash. A `std` mutex: held only for map lookups.
    loaded: Mutex<HashMap<String, Plugin>>,
}

impl PluginRegistry {
    pub(crate) fn new(cache_dir: &std::path::Path) -> Result<Self, BrokerError> {
        let runtime = PluginRuntime::new(cache_dir)
            .map_err(|e| BrokerError::Config(format!("plugin runtime: {e}")))?;
        Ok(PluginRegistry {
            runtime,
            loaded: Mutex::new(HashMap::new()),
        })
    }
}

fn unknown_plugin(name: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownPlugin,
        format!(
            "plugin {name:?} is not deployed; deploy it with `sluice plugin deploy {name} FILE.wasm`"
        ),
    )
}

/// How a plugin failure is reported to clients.
pub(crate) fn plugin_error(name: &str, e: PluginError) -> WireError {
    WireError::new(ErrorCode::InvalidPlugin, format!("plugin {name:?}: {e}"))
}

fn wasm_key(hash: &str) -> String {
    format!("plugin/{hash}")
}

fn describe(p: &PluginRecord) -> PluginDescription {
    PluginDescription {
        name: p.name.clone(),
        kind: p.kind.clone(),
        versions: p
            .versions
            .iter()
            .map(|v| PluginVersion {
                version: v.version,
                hash: v.hash.clone(),
                size_bytes: v.size_bytes,
                deployed_at_ms: v.deployed_at_ms,
            })
            .collect(),
    }
}

impl Broker {
    /// The latest version of deployed plugin `name`, compiled (once per node) and loaded.
    /// Blocking: may read the store and compile.
    pub(crate) fn plugin(&self, name: &str) -> Result<Plugin, WireError> {
        let (hash, component) = self
            .controller
            .read(|s| {
                s.plugin(name)
                    .and_then(|p| p.versions.last().map(|v| v.hash.clone()))
                    .map(|hash| {
                        let component = s.component(&hash).map(<[u8]>::to_vec);
                        (hash, component)
                    })
            })
            .ok_or_else(|| unknown_plugin(name))?;
        if let Some(p) = self
            .plugins
            .loaded
            .lock()
            .expect("plugins lock poisoned")
            .get(&hash)
        {
            return Ok(p.clone());
        }
        let wasm = match component {
            Some(bytes) => bytes,
            None => self
                .store
                .meta_get(&wasm_key(&hash))
                .map_err(storage_error)?
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::Internal,
                        format!(
                            "plugin {name:?}: component {hash} was deployed through another node \
                             before components were shared; deploy it again"
                        ),
                    )
                })?,
        };
        let plugin = self
            .plugins
            .runtime
            .load(&wasm)
            .map_err(|e| plugin_error(name, e))?;
        self.plugins
            .loaded
            .lock()
            .expect("plugins lock poisoned")
            .insert(hash, plugin.clone());
        Ok(plugin)
    }
}

/// Plugin administration. Blocking: runs on a blocking thread.
pub(crate) fn admin(
    broker: &Broker,
    request: Request,
    raw: Bytes,
) -> Result<ResponseBody, WireError> {
    match request {
        Request::DeployPlugin { name } => {
            if raw.is_empty() {
                return Err(WireError::new(
                    ErrorCode::InvalidPlugin,
                    "no component bytes were sent",
                ));
            }
            // Validates (a component of a Sluice world) and compiles before anything is stored.
            let plugin = broker
                .plugins
                .runtime
                .load(&raw)
                .map_err(|e| plugin_error(&name, e))?;
            let hash = plugin.hash().to_owned();
            broker
                .controller
                .propose(MetadataCommand::DeployPluginComponent {
                    name: name.clone(),
                    kind: plugin.kind().as_str().to_owned(),
                    hash: hash.clone(),
                    deployed_at_ms: now_ms(),
                    wasm: raw.to_vec(),
                })
                .map_err(crate::wire_error::propose_error)?;
            broker
                .plugins
                .loaded
                .lock()
                .expect("plugins lock poisoned")
                .insert(hash.clone(), plugin.clone());
            tracing::info!(plugin = %name, kind = %plugin.kind(), %hash, "plugin deployed");
            let p = broker
                .controller
                .read(|s| s.plugin(&name).cloned())
                .ok_or_else(|| unknown_plugin(&name))?;
            Ok(ResponseBody::Plugin(describe(&p)))
        }
        Request::ListPlugins => Ok(ResponseBody::Plugins(
            broker
                .controller
                .read(|s| s.plugins().map(describe).collect()),
        )),
        Request::DescribePlugin { name } => broker
            .controller
            .read(|s| s.plugin(&name).map(describe))
            .map(ResponseBody::Plugin)
            .ok_or_else(|| unknown_plugin(&name)),
        Request::DeletePlugin { name } => {
            let p = broker
                .controller
                .read(|s| s.plugin(&name).cloned())
                .ok_or_else(|| unknown_plugin(&name))?;
            broker
                .controller
                .propose(MetadataCommand::DeletePlugin { name: name.clone() })
                .map_err(crate::wire_error::propose_error)?;
            tracing::info!(plugin = %name, "plugin deleted");
            Ok(ResponseBody::Plugin(describe(&p)))
        }
        _ => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "not a plugin request",
        )),
    }
}

/// A fetch whose records pass through a transform on the broker. Each partition's records
/// (from the requested offset) are handed to one instance of the plugin in one call; what it
/// returns is sent in the plugin ABI's packed format, and `next_offset` moves past every
/// record the plugin saw, so filtered records are not fetched again.
pub(crate) async fn fetch_transformed(broker: Arc<Broker>, req: FetchTransformedRequest) -> Reply {
    let (resp, raw) = match crate::fetch::fetch_batches(broker.clone(), req.fetch.clone()).await {
        Ok(x) => x,
        Err(e) => return Reply::error(e),
    };
    let b = broker.clone();
    match tokio::task::spawn_blocking(move || transform_fetched(&b, &req, resp, raw)).await {
        Ok(Ok((resp, raw))) => Reply::Frame(Ok(ResponseBody::FetchedTransformed(resp)), raw),
        Ok(Err(e)) => Reply::error(e),
        Err(e) => Reply::error(WireError::new(
            ErrorCode::Internal,
            format!("transform task: {e}"),
        )),
    }
}

fn transform_fetched(
    broker: &Broker,
    req: &FetchTransformedRequest,
    fetched: sluice_proto::FetchResponse,
    mut raw: Bytes,
) -> Result<(FetchTransformedResponse, Bytes), WireError> {
    let plugin = broker.plugin(&req.plugin)?;
    let mut instance = plugin
        .transform(
            req.config.clone(),
            Limits::default(),
            Box::new(MemoryState::new()),
        )
        .map_err(|e| plugin_error(&req.plugin, e))?;
    let mut out = BytesMut::new();
    let mut partitions = Vec::with_capacity(fetched.partitions.len());
    for (fp, asked) in fetched.partitions.iter().zip(&req.fetch.partitions) {
        let data = raw.split_to((fp.bytes as usize).min(raw.len()));
        let mut entry = TransformedPartition {
            topic: fp.topic.clone(),
            partition: fp.partition,
            error: fp.error.clone(),
            high_watermark: fp.high_watermark,
            log_start: fp.log_start,
            next_offset: asked.offset,
            bytes: 0,
        };
        if entry.error.is_some() || data.is_empty() {
            partitions.push(entry);
            continue;
        }
        let mut input = Vec::new();
        let batches = split_batches(data)
            .map_err(|e| WireError::new(ErrorCode::CorruptData, format!("stored batch: {e}")))?;
        for (header, batch) in batches {
            for r in decode_records(&header, &batch)
                .map_err(|e| WireError::new(ErrorCode::CorruptData, format!("stored batch: {e}")))?
            {
                if r.offset < asked.offset {
                    continue;
                }
                entry.next_offset = r.offset + 1;
                input.push(crate::pipelines::to_plugin_record(r, fp.partition));
            }
        }
        if !input.is_empty() {
            let output = instance
                .process(&input)
                .map_err(|e| plugin_error(&req.plugin, e))?;
            let packed = sluice_plugin_abi::encode_batch(&output);
            entry.bytes = packed.len() as u32;
            out.extend_from_slice(&packed);
        }
        partitions.push(entry);
    }
    Ok((FetchTransformedResponse { partitions }, out.freeze()))
}

/// A produce whose records the topic's partitioner plugin places. The batch is checked like
/// any other, its records handed to the partitioner in one call, and re-encoded into one batch
/// per chosen partition (same compression; no producer id: routed batches are not
/// idempotent), appended in the batch's order. The answer lists each record's partition and
/// offset.
///
/// [`route`] runs first, in the stream's order (it enqueues the appends); this awaits them.
pub(crate) async fn produce_routed(
    broker: Arc<Broker>,
    acks: sluice_proto::Acks,
    routed: Result<Vec<RoutedAppend>, WireError>,
) -> Reply {
    let appends = match routed {
        Ok(appends) => appends,
        Err(e) => {
            tracing::debug!(cause = %e, "routed produce refused");
            return Reply::error(e);
        }
    };
    let mut placed: Vec<Option<sluice_proto::RoutedRecord>> =
        vec![None; appends.iter().map(|a| a.indexes.len()).sum()];
    for a in appends {
        let base_offset = match a.target {
            Target::Local(append) => match append.await {
                Ok(appended) => {
                    broker.leader_appended(a.id, appended.log_end);
                    if acks == sluice_proto::Acks::All
                        && let Err(e) = broker
                            .committed(a.id, &appended, ROUTED_COMMIT_TIMEOUT)
                            .await
                    {
                        return Reply::error(e);
                    }
                    appended.base_offset
                }
                Err(e) => return Reply::error(storage_error(e)),
            },
            Target::Remote { topic, bytes } => {
                match crate::produce::produce_at_leader(&broker, &topic, a.id.partition, bytes)
                    .await
                {
                    Ok(r) => r.base_offset,
                    Err(e) => return Reply::error(e),
                }
            }
        };
        for (i, &index) in a.indexes.iter().enumerate() {
            placed[index] = Some(sluice_proto::RoutedRecord {
                partition: a.id.partition,
                offset: base_offset + i as u64,
            });
        }
    }
    if acks == sluice_proto::Acks::None {
        return Reply::None;
    }
    Reply::Frame(
        Ok(ResponseBody::ProducedRouted(
            placed.into_iter().flatten().collect(),
        )),
        Bytes::new(),
    )
}

/// One partition's share of a routed batch, its append enqueued.
pub(crate) struct RoutedAppend {
    id: sluice_storage::PartitionId,
    /// Positions in the produced batch of the records in this append, in order.
    indexes: Vec<usize>,
    target: Target,
}

/// How long a routed `acks=all` produce waits for the in-sync replicas of each partition.
const ROUTED_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a routed append goes.
enum Target {
    /// A partition this broker leads: queued in the store.
    Local(
        std::pin::Pin<
            Box<
                dyn Future<Output = Result<sluice_storage::Appended, sluice_storage::StorageError>>
                    + Send,
            >,
        >,
    ),
    /// A partition another broker leads: produced there.
    Remote { topic: String, bytes: Bytes },
}

/// Validates a routed batch, runs the topic's partitioner on its records and enqueues one
/// append per chosen partition. Blocking (the plugin call): run it on the validation threads.
pub(crate) fn route(
    broker: &Broker,
    req: &sluice_proto::ProduceRequest,
    raw: &Bytes,
) -> Result<Vec<RoutedAppend>, WireError> {
    let (topic_id, config, leaders) = broker
        .controller
        .read(|s| {
            s.topic(&req.topic).map(|t| {
                (
                    t.topic_id,
                    t.config.clone(),
                    t.partitions
                        .iter()
                        .map(|p| (p.leader, p.leader_epoch))
                        .collect::<Vec<_>>(),
                )
            })
        })
        .ok_or_else(|| crate::wire_error::unknown_topic(&req.topic))?;
    let Some(name) = config.partitioner.clone() else {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "topic {:?} has no partitioner plugin; name a partition for each record",
                req.topic
            ),
        ));
    };
    broker.check_batch_size(&req.topic, &config, raw.len())?;
    let header = crate::produce::validate_batch(raw, broker.config.max_batch_bytes as usize)?;
    let records = decode_records(&header, raw).map_err(|e| {
        WireError::new(
            ErrorCode::InvalidRecord,
            format!("invalid record batch: {e}"),
        )
    })?;
    let input: Vec<AbiRecord> = records
        .iter()
        .map(|r| AbiRecord {
            key: r.key.as_ref().map(|k| k.to_vec()),
            value: r.value.as_ref().map(|v| v.to_vec()),
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.as_ref().map(|v| v.to_vec())))
                .collect(),
            timestamp: r.timestamp,
            partition: sluice_plugin_abi::PARTITION_UNSET,
            offset: 0,
        })
        .collect();
    let plugin = broker.plugin(&name)?;
    let mut instance = plugin
        .partitioner(config.partitioner_config.clone(), Limits::default())
        .map_err(|e| plugin_error(&name, e))?;
    let partitions = instance
        .partition(&input, leaders.len() as u32)
        .map_err(|e| plugin_error(&name, e))?;
    // Group record positions by partition, keeping their order.
    let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (i, p) in partitions.iter().enumerate() {
        by_partition.entry(*p).or_default().push(i);
    }
    let mut appends = Vec::with_capacity(by_partition.len());
    for (partition, indexes) in by_partition {
        let (leader, epoch) = leaders[partition as usize];
        let mut builder = sluice_proto::BatchBuilder::new(header.compression);
        for &i in &indexes {
            let r = &records[i];
            builder.push(&sluice_proto::Record {
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
                timestamp: r.timestamp,
            });
        }
        let bytes = builder.finish(-1, -1, -1).map_err(|e| {
            WireError::new(
                ErrorCode::Internal,
                format!("re-encoding routed records: {e}"),
            )
        })?;
        let id = sluice_storage::PartitionId {
            topic_id,
            partition,
        };
        // Records placed on a partition another broker leads are produced there.
        let target = if leader == Some(broker.node_id) {
            Target::Local(Box::pin(broker.store.append(
                id,
                bytes,
                epoch,
                config.durability,
            )))
        } else {
            Target::Remote {
                topic: req.topic.clone(),
                bytes: Bytes::from(bytes),
            }
        };
        appends.push(RoutedAppend {
            id,
            indexes,
            target,
        });
    }
    Ok(appends)
}
