//! Connectors as the metadata holds them: what was created, where each runs, and how far it
//! got — a source's last intent and sequences, a sink's committed offsets. See
//! docs/connectors.md for the exactly-once argument these records carry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which way a connector moves records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectorKind {
    /// From outside into one topic.
    Source,
    /// From topics to outside.
    Sink,
}

impl ConnectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Source => "source",
            ConnectorKind::Sink => "sink",
        }
    }
}

/// What a user asks for when creating a connector (`connector create`, its config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorSpec {
    pub name: String,
    /// The deployed plugin (of kind `source` or `sink`) that runs it.
    pub plugin: String,
    pub kind: ConnectorKind,
    /// A source's output topic (exactly one), or a sink's input topics.
    pub topics: Vec<String>,
    /// The connector's own settings, handed to it as its config.
    pub settings: Vec<(String, String)>,
    /// Granted directories, `PATH`, `PATH:ro` or `PATH:rw`.
    pub dirs: Vec<String>,
    /// Hosts it may reach over HTTP (`host` or `host:port`).
    pub http_hosts: Vec<String>,
    /// Deployed transforms applied on the way, in order.
    pub transforms: Vec<String>,
    /// A source writes at most this many records per second (`None`: as fast as it can).
    pub max_records_per_second: Option<u64>,
    /// Where a sink sends records it can never write (`None`: such a record fails the task).
    pub dead_letter_topic: Option<String>,
}

/// A batch a source polled, recorded before it is written: what a restarted task replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIntent {
    /// The source's checkpoint before the batch (`None`: its first start).
    pub before: Option<Vec<u8>>,
    /// Records polled.
    pub count: u32,
    /// The source's checkpoint after the batch.
    pub after: Vec<u8>,
    /// Per output partition the batch writes to: (partition, base sequence, records).
    pub parts: Vec<(u32, i32, u32)>,
}

/// A connector as the metadata holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorRecord {
    pub spec: ConnectorSpec,
    /// Metadata log index of the creating command: a connector deleted and created again
    /// under the same name never takes the old one's progress.
    pub created_index: u64,
    /// A source's idempotent producer id (epoch 0), fixed at creation.
    pub producer_id: i64,
    pub paused: bool,
    /// Bumped every time a task starts; progress from an older task is refused, so a task
    /// that outlived its broker's turn (a paused process) cannot move it.
    pub generation: u64,
    /// The node the latest task started on.
    pub owner: Option<u32>,
    /// A source's last intent; every batch before it is written.
    pub intent: Option<SourceIntent>,
    /// A source's next sequence per output partition, after its last intent.
    pub sequences: BTreeMap<u32, i32>,
    /// A sink's next offset to read per (topic, partition), committed after a flush.
    pub offsets: BTreeMap<(String, u32), u64>,
    /// Task failures so far, and the latest (time in ms since the epoch, message).
    pub failures: u64,
    pub last_error: Option<(i64, String)>,
}

impl ConnectorRecord {
    pub fn new(spec: ConnectorSpec, created_index: u64, producer_id: i64) -> Self {
        ConnectorRecord {
            spec,
            created_index,
            producer_id,
            paused: false,
            generation: 0,
            owner: None,
            intent: None,
            sequences: BTreeMap::new(),
            offsets: BTreeMap::new(),
            failures: 0,
            last_error: None,
        }
    }

    /// Whether the connector reads or writes topic `name` (its dead letters included).
    pub fn uses_topic(&self, name: &str) -> bool {
        self.spec.topics.iter().any(|t| t == name)
            || self.spec.dead_letter_topic.as_deref() == Some(name)
    }

    /// Records an intent: it becomes the last one, and the sequences move past it.
    pub fn record_intent(&mut self, intent: &SourceIntent) {
        for &(p, base, n) in &intent.parts {
            let next = (i64::from(base) + i64::from(n)) % (i64::from(i32::MAX) + 1);
            self.sequences.insert(p, next as i32);
        }
        self.intent = Some(intent.clone());
    }
}

/// The live broker a connector runs on: the highest rendezvous hash of its name and each
/// live node id, so a connector moves only when its node leaves (or a node it prefers
/// comes), and every node computes the same answer from the same metadata.
pub fn owner_of(name: &str, live: impl IntoIterator<Item = u32>) -> Option<u32> {
    live.into_iter().max_by_key(|node| rendezvous(name, *node))
}

fn rendezvous(name: &str, node: u32) -> u64 {
    // FNV-1a over the name and the node id: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes().iter().chain(&node.to_le_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix, so names differing in the last byte spread over nodes too.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_move_only_when_their_node_leaves() {
        let names: Vec<String> = (0..300).map(|i| format!("connector-{i}")).collect();
        let before: Vec<u32> = names
            .iter()
            .map(|n| owner_of(n, [1, 2, 3]).unwrap())
            .collect();
        for node in [1, 2, 3] {
            let count = before.iter().filter(|o| **o == node).count();
            assert!(
                (60..=140).contains(&count),
                "node {node} owns {count} of 300"
            );
        }
        let after: Vec<u32> = names.iter().map(|n| owner_of(n, [1, 3]).unwrap()).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(a, b, "only node 2's connectors move");
            }
        }
        assert_eq!(owner_of("x", []), None);
    }

    #[test]
    fn an_intent_moves_the_sequences_past_it() {
        let spec = ConnectorSpec {
            name: "c".into(),
            plugin: "p".into(),
            kind: ConnectorKind::Source,
            topics: vec!["t".into()],
            settings: vec![],
            dirs: vec![],
            http_hosts: vec![],
            transforms: vec![],
            max_records_per_second: None,
            dead_letter_topic: None,
        };
        let mut r = ConnectorRecord::new(spec, 7, 42);
        r.record_intent(&SourceIntent {
            before: None,
            count: 5,
            after: vec![1],
            parts: vec![(0, 0, 3), (2, i32::MAX, 2)],
        });
        assert_eq!(r.sequences, BTreeMap::from([(0, 3), (2, 1)]));
    }
}
