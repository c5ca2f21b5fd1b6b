//! Producer ids for idempotent producers, handed out from blocks this broker takes from the
//! metadata log (`AllocateProducerIdBlock`), so a producer's start costs no log entry of its
//! own. Ids come from the log, so none is handed out twice — not after a restart (the rest of a
//! block is simply never used), not by two brokers.

use std::sync::Mutex;

use sluice_metadata::MetadataCommand;
use sluice_proto::{ErrorCode, WireError};

use crate::Broker;
use crate::wire_error::propose_error;

/// Ids per block.
pub(crate) const PRODUCER_ID_BLOCK: u32 = 1_000;

/// The rest of this broker's current block: `next..end`.
#[derive(Debug, Default)]
pub(crate) struct ProducerIdBlock(Mutex<Option<(i64, i64)>>);

impl Broker {
    /// The next producer id from this broker's block, taking a new block when it is used up.
    /// Blocking: a new block waits for its log entry to commit.
    pub(crate) fn next_producer_id(&self) -> Result<i64, WireError> {
        let mut block = self
            .producer_ids
            .0
            .lock()
            .expect("producer id lock poisoned");
        if let Some((next, end)) = block.as_mut()
            && *next < *end
        {
            let id = *next;
            *next += 1;
            return Ok(id);
        }
        let cmd = MetadataCommand::AllocateProducerIdBlock {
            node_id: self.node_id,
            count: PRODUCER_ID_BLOCK,
        };
        let first = self
            .controller
            .propose_then(cmd, |s, index| s.producer_id_allocated_at(index))
            .map_err(propose_error)?
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::Internal,
                    "the allocated producer id block fell out of the metadata's memory; retry",
                )
            })?;
        tracing::debug!(first, count = PRODUCER_ID_BLOCK, "producer id block taken");
        *block = Some((first + 1, first + i64::from(PRODUCER_ID_BLOCK)));
        Ok(first)
    }
}
