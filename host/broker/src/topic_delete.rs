//! Deleting a topic: the metadata first, then what hangs off it.
//!
//! 1. The delete goes into the metadata log (refused there while a pipeline reads or writes
//!    the topic, unless forced, in which case the same command deletes those pipelines).
//! 2. The runners of pipelines the command deleted stop.
//! 3. Every group's committed offsets for the topic are tombstoned in `__consumer_offsets`,
//!    so a topic created again under the name starts from each group's reset policy.
//! 4. The partitions and their data leave the store.
//!
//! Once step 1 is durable the topic is gone; a crash after it leaves only leftovers that the
//! next start-up removes: stored partitions of unknown topic ids (`remove_orphaned_topics` in
//! the crate root) and offsets of topics that do not exist (`groups::drop_deleted_offsets`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use sluice_metadata::MetadataCommand;
use sluice_proto::{ErrorCode, ResponseBody, TopicDescription, WireError};

use crate::Broker;
use crate::admin::describe;
use crate::router::Reply;
use crate::wire_error::{propose_error, storage_error, unknown_topic};

/// Handles `DeleteTopic` (`force` false) and `DeleteTopicForced`.
pub(crate) async fn handle(broker: Arc<Broker>, name: String, force: bool) -> Reply {
    let result = delete(&broker, name, force).await;
    Reply::Frame(result.map(ResponseBody::Topic), Bytes::new())
}

async fn delete(
    broker: &Arc<Broker>,
    name: String,
    force: bool,
) -> Result<TopicDescription, WireError> {
    if name.starts_with("__") {
        return Err(WireError::new(
            ErrorCode::InvalidConfig,
            format!(
                "{name:?} is an internal topic (consumer group state); it cannot be deleted — \
                 delete groups with `sluice group delete`"
            ),
        ));
    }
    let (b, n) = (broker.clone(), name.clone());
    let (description, topic_id) = blocking(move || delete_from_metadata(&b, &n, force)).await?;
    if broker.config.topic_delete_fault_abort_after_metadata {
        tracing::error!(topic = %name, "topic_delete_fault_abort_after_metadata: aborting (testing only)");
        std::process::abort();
    }
    let dropped = crate::groups::drop_offsets(broker, |t| t == name).await?;
    let b = broker.clone();
    blocking(move || {
        b.store.delete_topic(topic_id).map_err(storage_error)?;
        b.forget_topic(topic_id);
        Ok(())
    })
    .await?;
    tracing::info!(topic = %name, topic_id, force, group_offsets_dropped = dropped, "topic deleted");
    Ok(description)
}

/// Steps 1 and 2. Blocking: the proposal waits for the metadata log's commit.
fn delete_from_metadata(
    broker: &Broker,
    name: &str,
    force: bool,
) -> Result<(TopicDescription, u64), WireError> {
    let t = broker
        .controller
        .read(|s| s.topic(name).cloned())
        .ok_or_else(|| unknown_topic(name))?;
    let description = describe(broker, &t);
    let cmd = if force {
        MetadataCommand::DeleteTopicForced { name: name.into() }
    } else {
        MetadataCommand::DeleteTopic { name: name.into() }
    };
    // What the command left, read before any later proposal applies: the runners to stop are
    // those of pipelines created before it that it removed.
    let (index, live) = broker
        .controller
        .propose_then(cmd, |s, index| {
            let live: HashMap<String, u64> = s
                .pipelines()
                .map(|p| (p.spec.name.clone(), p.created_index))
                .collect();
            (index, live)
        })
        .map_err(propose_error)?;
    broker.pipelines.stop_removed(index, &live);
    Ok((description, t.topic_id))
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, WireError> + Send + 'static,
) -> Result<R, WireError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        WireError::new(
            ErrorCode::Internal,
            format!("topic delete task failed: {e}"),
        )
    })?
}
