//! Fetch: batches from partitions this node leads, below the high watermark, within the
//! request's and the broker's size limits, long-polling for `min_bytes`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_proto::batch::BatchHeader;
use sluice_proto::{
    ErrorCode, FetchRequest, FetchResponse, FetchedPartition, ResponseBody, WireError,
};
use sluice_storage::StorageError;

use crate::Broker;
use crate::router::Reply;
use crate::wire_error::storage_error;

/// Longest long-poll a fetch may ask for.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);

/// Trims a run of batches to those starting below the high watermark.
pub(crate) fn below_high_watermark(mut bytes: Bytes, hw: u64) -> Bytes {
    let mut keep = 0;
    let mut rest: &[u8] = &bytes;
    while let Ok(h) = BatchHeader::parse(rest) {
        if h.base_offset >= hw || h.batch_len as usize > rest.len() {
            break;
        }
        keep += h.batch_len as usize;
        rest = &rest[h.batch_len as usize..];
    }
    bytes.truncate(keep);
    bytes
}

pub(crate) async fn fetch(broker: Arc<Broker>, req: FetchRequest) -> Reply {
    match fetch_batches(broker, req).await {
        Ok((resp, raw)) => Reply::Frame(Ok(ResponseBody::Fetched(resp)), raw),
        Err(e) => Reply::error(e),
    }
}

/// Reads batches for a fetch, long-polling until `min_bytes` are there, the wait is over, a
/// partition has an error, or the broker shuts down.
pub(crate) async fn fetch_batches(
    broker: Arc<Broker>,
    req: FetchRequest,
) -> Result<(FetchResponse, Bytes), WireError> {
    let deadline =
        Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_FETCH_WAIT);
    let req = Arc::new(req);
    loop {
        // Subscribe before reading so an append between the read and the wait still wakes us.
        let mut watches: Vec<_> = req
            .partitions
            .iter()
            .filter_map(|p| broker.led_partition(&p.topic, p.partition).ok())
            .map(|led| broker.runtime(led.id).high_watermark.subscribe())
            .collect();
        let (b, r) = (broker.clone(), req.clone());
        let reading = broker
            .limits
            .fetch_reads
            .acquire()
            .await
            .expect("fetch reads are never closed");
        let (resp, raw) = tokio::task::spawn_blocking(move || fetch_once(&b, &r))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("fetch failed: {e}")))?;
        drop(reading);
        let has_error = resp.partitions.iter().any(|p| p.error.is_some());
        if raw.len() >= req.min_bytes.max(1) as usize
            || has_error
            || Instant::now() >= deadline
            || watches.is_empty()
        {
            return Ok((resp, raw));
        }
        // A long-poll ends early when data arrives or the broker begins shutting down.
        let mut stop = broker.shutdown.subscribe();
        if *stop.borrow_and_update() {
            return Ok((resp, raw));
        }
        let changed =
            futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = tokio::time::timeout_at(deadline.into(), changed) => {}
            _ = stop.changed() => {}
        }
    }
}

fn fetch_once(broker: &Broker, req: &FetchRequest) -> (FetchResponse, Bytes) {
    // The partitions' batches as the store returned them; joined only when there are several.
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let mut partitions = Vec::with_capacity(req.partitions.len());
    // The sizes come from the request: the answer must also fit in one frame, so neither asks
    // the store for more than that (room is left for the control message).
    let cap = broker
        .config
        .max_frame_bytes
        .saturating_sub(64 * 1024)
        .max(1);
    let max_total = (req.max_bytes.max(1) as usize).min(cap);
    for p in &req.partitions {
        let mut entry = FetchedPartition {
            topic: p.topic.clone(),
            partition: p.partition,
            error: None,
            high_watermark: 0,
            log_start: 0,
            bytes: 0,
        };
        let led = match broker.led_partition_in(&p.topic, p.partition, p.leader_epoch) {
            Ok(led) => led,
            Err(e) => {
                entry.error = Some(e);
                partitions.push(entry);
                continue;
            }
        };
        let hw = broker.high_watermark(led.id);
        entry.high_watermark = hw;
        let room = max_total.saturating_sub(len);
        if room == 0 && len > 0 {
            entry.log_start = broker
                .store
                .partition_state(led.id)
                .map_or(0, |s| s.log_start);
            partitions.push(entry);
            continue;
        }
        // At least one batch overall, even when it alone exceeds the limits.
        let budget = if len == 0 {
            p.max_bytes.clamp(1, max_total as u32)
        } else {
            (room as u32).min(p.max_bytes).max(1)
        };
        match broker.store.read(led.id, p.offset, budget) {
            Ok(read) => {
                entry.log_start = read.log_start;
                let bytes = below_high_watermark(read.bytes, hw);
                if len > 0 && len + bytes.len() > max_total {
                    // This partition's first batch would overflow the response; it gets its
                    // turn in the next fetch.
                } else {
                    crate::metrics::records_out(&p.topic, &bytes);
                    entry.bytes = bytes.len() as u32;
                    len += bytes.len();
                    parts.push(bytes);
                }
            }
            Err(e) => {
                if let StorageError::Corrupt { .. } = &e {
                    tracing::error!(topic = %p.topic, partition = p.partition, cause = %e, "corrupt batch on disk; not served");
                }
                entry.error = Some(storage_error(e));
            }
        }
        partitions.push(entry);
    }
    let raw = match parts.len() {
        0 => Bytes::new(),
        1 => parts.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            for part in &parts {
                joined.extend_from_slice(part);
            }
            joined.freeze()
        }
    };
    (FetchResponse { partitions }, raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{BatchBuilder, Compression, Record, batch};

    fn batch_at(base: u64, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..n {
            b.push(&Record {
                value: Some(Bytes::from_static(b"v")),
                ..Default::default()
            });
        }
        let mut bytes = b.finish(-1, -1, -1).unwrap();
        batch::assign_offset(&mut bytes, base, 0);
        bytes
    }

    #[test]
    fn trims_batches_at_or_above_the_high_watermark() {
        let mut all = batch_at(0, 3);
        all.extend(batch_at(3, 2));
        all.extend(batch_at(5, 4));
        let all = Bytes::from(all);
        let one = batch_at(0, 3).len();
        let two = one + batch_at(3, 2).len();
        assert_eq!(below_high_watermark(all.clone(), 9).len(), all.len());
        assert_eq!(below_high_watermark(all.clone(), 5).len(), two);
        assert_eq!(
            below_high_watermark(all.clone(), 4).len(),
            two,
            "a batch straddling the mark is whole"
        );
        assert_eq!(below_high_watermark(all.clone(), 1).len(), one);
        assert_eq!(below_high_watermark(all, 0).len(), 0);
    }
}
