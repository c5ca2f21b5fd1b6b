//! The broker's metrics: what it counts as it works, and the state gauges it sets just before
//! each scrape (docs/metrics.md lists them all). Recorded through the `metrics` facade; with no
//! metrics listener configured no recorder is installed and every call here is a no-op.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use sluice_proto::batch::BatchHeader;
use sluice_proto::{Acks, Request};

use crate::Broker;
use crate::router::Reply;

/// Gives every metric its `# HELP` text and unit (once per process; the recorder keeps them).
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "sluice_quota_throttle_seconds",
        Unit::Seconds,
        "How long answers were held back by their principal's quota (throttled answers only)"
    );
    describe_counter!(
        "sluice_authentication_failures_total",
        Unit::Count,
        "Failed authentication steps (wrong password, unknown or revoked token)"
    );
    describe_counter!(
        "sluice_requests_total",
        Unit::Count,
        "Client requests handled, by type and outcome (ok or the error code)"
    );
    describe_histogram!(
        "sluice_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its answer, by type"
    );
    describe_histogram!(
        "sluice_produce_duration_seconds",
        Unit::Seconds,
        "Time from a produce request's arrival to its answer, by acks"
    );
    describe_counter!(
        "sluice_records_in_total",
        Unit::Count,
        "Records stored for producers, by topic (an idempotent retry's duplicate not counted)"
    );
    describe_counter!(
        "sluice_bytes_in_total",
        Unit::Bytes,
        "Batch bytes stored for producers, by topic"
    );
    describe_counter!(
        "sluice_records_out_total",
        Unit::Count,
        "Records sent to consumers, by topic"
    );
    describe_counter!(
        "sluice_bytes_out_total",
        Unit::Bytes,
        "Batch bytes sent to consumers, by topic"
    );
    describe_counter!(
        "sluice_connections_total",
        Unit::Count,
        "Client connections accepted (handshake done)"
    );
    describe_gauge!(
        "sluice_connections_open",
        Unit::Count,
        "Client connections open"
    );
    describe_histogram!(
        "sluice_store_commit_duration_seconds",
        Unit::Seconds,
        "Time of one group commit of the store's writer, by whether it was durable (fsync)"
    );
    describe_histogram!(
        "sluice_store_commit_batches",
        Unit::Count,
        "Appends in one group commit (batches per commit, so per fsync when durable)"
    );
    describe_gauge!(
        "sluice_store_partition_bytes",
        Unit::Bytes,
        "Batch bytes stored, over all partitions on this node"
    );
    describe_gauge!(
        "sluice_store_file_bytes",
        Unit::Bytes,
        "Size of the store's file (sluice.redb) on disk: batches, indexes, free pages"
    );
    describe_gauge!(
        "sluice_partitions_led",
        Unit::Count,
        "Partitions this node leads"
    );
    describe_gauge!(
        "sluice_partition_log_start_offset",
        Unit::Count,
        "First offset stored, by topic and partition (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_partition_log_end_offset",
        Unit::Count,
        "Offset the next record will get, by topic and partition (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_partition_size_bytes",
        Unit::Bytes,
        "Batch bytes stored, by topic and partition (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_partition_high_watermark",
        Unit::Count,
        "Offset below which records are committed and readable, by topic and partition, on the leader (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_consumer_groups",
        Unit::Count,
        "Consumer groups coordinated by this node"
    );
    describe_gauge!(
        "sluice_consumer_group_members",
        Unit::Count,
        "Members of a consumer group, by group"
    );
    describe_gauge!(
        "sluice_consumer_group_lag",
        Unit::Count,
        "Records between a group's committed offset and the high watermark, by group, topic and partition, where this node coordinates the group and leads the partition"
    );
    describe_gauge!(
        "sluice_consumer_group_committed_offset",
        Unit::Count,
        "A group's committed offset, by group, topic and partition (same scope as the lag)"
    );
    describe_counter!(
        "sluice_partition_leader_elections_total",
        Unit::Count,
        "Times this node became the leader of a replicated partition"
    );
    describe_gauge!(
        "sluice_partitions_under_replicated",
        Unit::Count,
        "Partitions led here whose in-sync set is smaller than their replica set"
    );
    describe_gauge!(
        "sluice_partitions_under_min_insync",
        Unit::Count,
        "Partitions led here whose in-sync set is below min.insync.replicas (acks=all produce is refused)"
    );
    describe_gauge!(
        "sluice_partition_in_sync_replicas",
        Unit::Count,
        "In-sync set size of a replicated partition led here, by topic and partition (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_partition_replicas",
        Unit::Count,
        "Replica count of a replicated partition led here, by topic and partition (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_replica_follower_lag",
        Unit::Count,
        "Records a follower is behind the leader's log end, as the leader last learnt, by topic, partition and follower (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_raft_term",
        Unit::Count,
        "The metadata quorum's current Raft term as this node knows it (each election raises it)"
    );
    describe_gauge!(
        "sluice_raft_commit_index",
        Unit::Count,
        "Index of the last metadata log entry known committed"
    );
    describe_gauge!(
        "sluice_raft_applied_index",
        Unit::Count,
        "Index of the last metadata log entry applied on this node"
    );
    describe_gauge!(
        "sluice_raft_last_log_index",
        Unit::Count,
        "Index of the last entry in this node's metadata log"
    );
    describe_gauge!(
        "sluice_raft_is_leader",
        Unit::Count,
        "1 when this node leads the metadata quorum"
    );
    describe_gauge!(
        "sluice_raft_leader_id",
        Unit::Count,
        "Node id of the metadata leader, -1 when none is known"
    );
    describe_gauge!(
        "sluice_raft_voters",
        Unit::Count,
        "Voters of the metadata quorum"
    );
    describe_gauge!(
        "sluice_request_memory_bytes",
        Unit::Bytes,
        "Bytes of the request memory budget (request_memory_bytes) held by requests being read or handled and answers being written"
    );
    describe_counter!(
        "sluice_acks0_refused_total",
        Unit::Count,
        "acks=0 produce requests refused (they get no answer, so they are counted here)"
    );
    describe_gauge!(
        "sluice_pipeline_lag",
        Unit::Count,
        "Records of a pipeline's input partition not yet processed (high watermark - checkpoint), by pipeline and partition, on the node running it (metrics_per_partition)"
    );
    describe_gauge!(
        "sluice_pipeline_partitions",
        Unit::Count,
        "Pipeline runners on this node, by pipeline and state (running, failed)"
    );
    describe_counter!(
        "sluice_group_rebalances_total",
        Unit::Count,
        "Consumer group epochs started (a member joined or left, or the subscriptions changed), by group"
    );
    describe_gauge!(
        "sluice_streams_open",
        Unit::Count,
        "Client request streams open"
    );
    describe_counter!(
        "sluice_plugin_calls_total",
        Unit::Count,
        "Calls of transform and partitioner plugins, by plugin (content hash) and outcome"
    );
    describe_histogram!(
        "sluice_plugin_call_duration_seconds",
        Unit::Seconds,
        "Duration of one plugin call, by plugin (content hash)"
    );
    describe_histogram!(
        "sluice_plugin_instance_memory_bytes",
        Unit::Bytes,
        "A plugin instance's linear memory after a call, by plugin (content hash)"
    );
    describe_counter!(
        "sluice_plugin_stops_total",
        Unit::Count,
        "Plugin calls stopped by the sandbox, by plugin (content hash) and reason: time_limit, memory_limit, trap"
    );
}

/// What a request is, for its counters: its kind, and for a produce its acks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestKind {
    kind: &'static str,
    acks: Option<&'static str>,
}

impl RequestKind {
    pub(crate) fn name(self) -> &'static str {
        self.kind
    }

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

/// A client connection was accepted (its handshake done).
pub(crate) fn throttled(wait: std::time::Duration) {
    histogram!("sluice_quota_throttle_seconds").record(wait.as_secs_f64());
}

pub(crate) fn authentication_failed() {
    counter!("sluice_authentication_failures_total").increment(1);
}

pub(crate) fn connection_accepted() {
    counter!("sluice_connections_total").increment(1);
}

/// A consumer group started a new epoch.
pub(crate) fn group_rebalanced(group: &str) {
    counter!("sluice_group_rebalances_total", "group" => group.to_owned()).increment(1);
}

/// This node became the leader of a replicated partition (an election it won).
pub(crate) fn leadership_started() {
    counter!("sluice_partition_leader_elections_total").increment(1);
}

/// Sets the gauges that describe state, just before a scrape renders them.
pub(crate) async fn collect(broker: &Broker) {
    // Topic names by id, read once: the per-partition series are labelled by name.
    let names: std::collections::HashMap<u64, String> = broker
        .controller
        .read(|s| s.topics().map(|t| (t.topic_id, t.name.clone())).collect());
    collect_local(broker, &names);
    collect_groups(broker);
    collect_replication(broker, &names);
    collect_pipelines(broker);
    if let Ok(status) = broker.controller.status().await {
        gauge!("sluice_raft_term").set(status.term as f64);
        gauge!("sluice_raft_commit_index").set(status.committed.unwrap_or(0) as f64);
        gauge!("sluice_raft_applied_index").set(status.last_applied.unwrap_or(0) as f64);
        gauge!("sluice_raft_last_log_index").set(status.last_log_index.unwrap_or(0) as f64);
        let leads = status.leader == Some(status.id);
        gauge!("sluice_raft_is_leader").set(if leads { 1.0 } else { 0.0 });
        gauge!("sluice_raft_leader_id").set(status.leader.map_or(-1.0, |l| l as f64));
        gauge!("sluice_raft_voters").set(status.voters.len() as f64);
    }
}

/// Pipeline runners on this node: how many run or failed per pipeline, and each one's lag.
fn collect_pipelines(broker: &Broker) {
    let mut states: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
    for (pipeline, partition, state, lag) in crate::pipelines::local_runners(broker) {
        *states.entry((pipeline.clone(), state)).or_default() += 1;
        if broker.config.metrics_per_partition {
            let labels = [("pipeline", pipeline), ("partition", partition.to_string())];
            gauge!("sluice_pipeline_lag", &labels).set(lag as f64);
        }
    }
    for ((pipeline, state), n) in states {
        gauge!("sluice_pipeline_partitions", "pipeline" => pipeline, "state" => state)
            .set(n as f64);
    }
}

/// Replicated partitions this node leads: how many lack in-sync replicas, each one's in-sync
/// set size, and each follower's lag.
fn collect_replication(broker: &Broker, names: &std::collections::HashMap<u64, String>) {
    let per_partition = broker.config.metrics_per_partition;
    let node = broker.node_id;
    let (under, under_min) = broker.controller.read(|s| {
        let (mut under, mut under_min) = (0u64, 0u64);
        for t in s.topics() {
            for (i, p) in t.partitions.iter().enumerate() {
                if p.leader != Some(node) {
                    continue;
                }
                let min = s.replication_settings(&t.name).min_insync(p.replicas.len());
                under += u64::from(p.in_sync.len() < p.replicas.len());
                under_min += u64::from(p.in_sync.len() < min);
                if per_partition && p.replicas.len() > 1 {
                    let labels = [("topic", t.name.clone()), ("partition", i.to_string())];
                    gauge!("sluice_partition_in_sync_replicas", &labels)
                        .set(p.in_sync.len() as f64);
                    gauge!("sluice_partition_replicas", &labels).set(p.replicas.len() as f64);
                }
            }
        }
        (under, under_min)
    });
    gauge!("sluice_partitions_under_replicated").set(under as f64);
    gauge!("sluice_partitions_under_min_insync").set(under_min as f64);
    if !per_partition {
        return;
    }
    for (id, follower, lag) in broker.leaders.follower_lags() {
        let Some(topic) = names.get(&id.topic_id) else {
            continue;
        };
        let labels = [
            ("topic", topic.clone()),
            ("partition", id.partition.to_string()),
            ("follower", follower.to_string()),
        ];
        gauge!("sluice_replica_follower_lag", &labels).set(lag as f64);
    }
}

/// Partitions stored here: offsets, sizes, high watermarks.
fn collect_local(broker: &Broker, names: &std::collections::HashMap<u64, String>) {
    let per_partition = broker.config.metrics_per_partition;
    let mut stored_bytes = 0u64;
    let mut led = 0u64;
    for id in broker.store.partitions() {
        let Some(state) = broker.store.partition_state(id) else {
            continue;
        };
        stored_bytes += state.size_bytes;
        let Some(topic) = names.get(&id.topic_id) else {
            continue;
        };
        let leads = broker.led_partition(topic, id.partition).is_ok();
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
    let limits = &broker.limits;
    gauge!("sluice_connections_open").set(limits.open_connections() as f64);
    gauge!("sluice_streams_open")
        .set(limits.streams.load(std::sync::atomic::Ordering::Relaxed) as f64);
    gauge!("sluice_request_memory_bytes").set(limits.request_memory_in_use(&broker.config) as f64);
    counter!("sluice_acks0_refused_total").absolute(
        limits
            .acks0_refused
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    gauge!("sluice_store_partition_bytes").set(stored_bytes as f64);
    if let Ok(file) = std::fs::metadata(broker.config.data_dir.join("sluice.redb")) {
        gauge!("sluice_store_file_bytes").set(file.len() as f64);
    }
    gauge!("sluice_partitions_led").set(led as f64);
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
