//! The broker's metrics: what it counts as it works, and the state gauges it sets just before
//! each scrape (docs/metrics.md lists them all). Recorded through the `metrics` facade; with no
//! metrics listener configured no recorder is installed and every call here is a no-op.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use sluice_proto::batch::BatchHeader;
use sluice_proto::{Acks, Request};

use crate::Broker;
use crate::router::Reply;

/// What a request is, for its counters: its kind, and for a produce its acks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestKind {
    kind: &'static str,
    acks: Option<&'static str>,
}

impl RequestKind {
    pub(crate) fn of(request: &Request) -> Self {
        RequestKind {
            kind: request.kind(),
            acks: match request {
                Request::Produce(p) => Some(acks_label(p.acks)),
                _ => None,
            },
        }
    }

    /// Counts a handled request by outcome (`ok` or its error code) and records its latency.
    /// An `acks=0` produce is counted as `ok` once stored: it has no answer.
    pub(crate) fn done(self, reply: &Reply, took: Duration) {
        let outcome = match reply {
            Reply::Frame(Err(e), _) => error_label(e.code),
            Reply::Frame(Ok(_), _) | Reply::None => "ok".into(),
        };
        counter!("sluice_requests_total", "type" => self.kind, "outcome" => outcome).increment(1);
        histogram!("sluice_request_duration_seconds", "type" => self.kind)
            .record(took.as_secs_f64());
        if let Some(acks) = self.acks {
            histogram!("sluice_produce_duration_seconds", "acks" => acks)
                .record(took.as_secs_f64());
        }
    }
}

fn acks_label(acks: Acks) -> &'static str {
    match acks {
        Acks::None => "0",
        Acks::Leader => "1",
        Acks::All => "all",
    }
}

/// An error code as a label: its name in snake case (`not_leader`).
fn error_label(code: sluice_proto::ErrorCode) -> String {
    let name = format!("{code:?}");
    let mut label = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                label.push('_');
            }
            label.push(c.to_ascii_lowercase());
        } else {
            label.push(c);
        }
    }
    label
}

/// A batch of `records` records and `bytes` bytes was stored for a client (not a duplicate).
pub(crate) fn records_in(topic: &str, records: u64, bytes: usize) {
    let topic = topic.to_owned();
    counter!("sluice_records_in_total", "topic" => topic.clone()).increment(records);
    counter!("sluice_bytes_in_total", "topic" => topic).increment(bytes as u64);
}

/// Batches were sent to a consumer: `bytes` bytes of whole batches.
pub(crate) fn records_out(topic: &str, batches: &[u8]) {
    let topic = topic.to_owned();
    counter!("sluice_records_out_total", "topic" => topic.clone())
        .increment(count_records(batches));
    counter!("sluice_bytes_out_total", "topic" => topic).increment(batches.len() as u64);
}

/// Records in whole, validated batches (their headers are read, nothing else).
fn count_records(mut batches: &[u8]) -> u64 {
    let mut records = 0;
    while let Ok(h) = BatchHeader::parse(batches) {
        let len = h.batch_len as usize;
        if len == 0 || len > batches.len() {
            break;
        }
        records += u64::from(h.record_count);
        batches = &batches[len..];
    }
    records
}

/// A client connection opened (`+1`) or closed (`-1`).
pub(crate) fn connections(delta: f64) {
    if delta > 0.0 {
        counter!("sluice_connections_total").increment(1);
    }
    gauge!("sluice_connections_open").increment(delta);
}

/// Sets the gauges that describe state, just before a scrape renders them.
pub(crate) fn collect(broker: &Broker) {
    let per_partition = broker.config.metrics_per_partition;
    let mut stored_bytes = 0u64;
    let mut led = 0u64;
    for id in broker.store.partitions() {
        let Some(state) = broker.store.partition_state(id) else {
            continue;
        };
        stored_bytes += state.size_bytes;
        let Some(topic) = broker
            .controller
            .read(|s| s.topic_by_id(id.topic_id).map(|t| t.name.clone()))
        else {
            continue;
        };
        let leads = broker.led_partition(&topic, id.partition).is_ok();
        led += u64::from(leads);
        if per_partition {
            let labels = [
                ("topic", topic.clone()),
                ("partition", id.partition.to_string()),
            ];
            gauge!("sluice_partition_log_start_offset", &labels).set(state.log_start as f64);
            gauge!("sluice_partition_log_end_offset", &labels).set(state.log_end as f64);
            gauge!("sluice_partition_size_bytes", &labels).set(state.size_bytes as f64);
            if leads {
                gauge!("sluice_partition_high_watermark", &labels)
                    .set(broker.high_watermark(id) as f64);
            }
        }
    }
    gauge!("sluice_store_partition_bytes").set(stored_bytes as f64);
    gauge!("sluice_partitions_led").set(led as f64);
    collect_groups(broker);
}

/// Consumer lag per group and partition, where this broker coordinates the group and leads
/// the partition (in a cluster, each broker exports the pairs it holds both ends of).
fn collect_groups(broker: &Broker) {
    let summaries = broker.groups.summaries();
    gauge!("sluice_consumer_groups").set(summaries.len() as f64);
    for summary in summaries {
        gauge!("sluice_consumer_group_members", "group" => summary.group.clone())
            .set(summary.members.len() as f64);
        for ((topic, partition), committed) in &summary.offsets {
            let Ok(led) = broker.led_partition(topic, *partition) else {
                continue;
            };
            let log_start = broker
                .store
                .partition_state(led.id)
                .map_or(0, |s| s.log_start);
            let hw = broker.high_watermark(led.id);
            let lag = hw.saturating_sub((*committed).max(log_start));
            let labels = [
                ("group", summary.group.clone()),
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            gauge!("sluice_consumer_group_lag", &labels).set(lag as f64);
            gauge!("sluice_consumer_group_committed_offset", &labels).set(*committed as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_become_snake_case_labels() {
        assert_eq!(
            error_label(sluice_proto::ErrorCode::NotLeader),
            "not_leader"
        );
        assert_eq!(
            error_label(sluice_proto::ErrorCode::UnknownTopic),
            "unknown_topic"
        );
    }

    #[test]
    fn records_are_counted_from_batch_headers() {
        let mut b = sluice_proto::batch::BatchBuilder::new(sluice_proto::Compression::None);
        for i in 0..5u8 {
            b.push(&sluice_proto::batch::Record {
                key: None,
                value: Some(bytes::Bytes::from(vec![i])),
                headers: Vec::new(),
                timestamp: 0,
            });
        }
        let one = b.finish(-1, 0, -1).unwrap();
        let mut two = one.to_vec();
        two.extend_from_slice(&one);
        assert_eq!(count_records(&one), 5);
        assert_eq!(count_records(&two), 10);
        assert_eq!(count_records(&two[..two.len() - 1]), 5);
        assert_eq!(count_records(b"junk"), 0);
    }
}
