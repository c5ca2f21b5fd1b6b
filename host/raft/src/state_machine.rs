//! The metadata state machine: applies committed entries to the shared [`MetadataState`] and
//! takes, persists and installs snapshots of it.
//!
//! The state itself lives in memory. What makes a restart cheap is the snapshot, persisted in
//! the raft file: a node starts from the latest one and replays only the log after it, and the
//! log before it is purged, so no node ever replays an unbounded log.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use sluice_metadata::MetadataState;

use crate::log_store::{
    RaftFile, SNAPSHOT, SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY, StorageOpenError, blocking, decode,
    encode,
};
use crate::{CommandResponse, NodeId, PeerNode, TypeConfig};

type Meta = SnapshotMeta<NodeId, PeerNode>;
type Membership = StoredMembership<NodeId, PeerNode>;

/// A snapshot's bytes: everything the state machine holds.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: MetadataState,
}

/// A snapshot as written before the state held access control bindings.
#[derive(Deserialize)]
struct SnapshotPayloadV4 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: sluice_metadata::MetadataStateV4,
}

/// A snapshot as written before the state held connectors.
#[derive(Deserialize)]
struct SnapshotPayloadV3 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: sluice_metadata::MetadataStateV3,
}

/// A snapshot as written before the state held topics' replication settings.
#[derive(Deserialize)]
struct SnapshotPayloadV2 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: sluice_metadata::MetadataStateV2,
}

/// A snapshot as written before the state held plugin components and pipeline checkpoints.
#[derive(Deserialize)]
struct SnapshotPayloadV1 {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: sluice_metadata::MetadataStateV1,
}

impl SnapshotPayload {
    /// The snapshot's bytes: the payload's fixed layout, then the state's named sections
    /// (`MetadataState::snapshot_sections`), which later additions join without a new layout.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = encode(self);
        bytes.extend_from_slice(&self.state.snapshot_sections());
        bytes
    }

    /// Decodes the current layout and its sections, or an older layout (postcard is not
    /// self-describing: an older layout fails the current decode where the new fields would
    /// start; layouts from before sections have none).
    fn decode(data: &[u8]) -> Result<Self, postcard::Error> {
        if let Ok((mut payload, sections)) = postcard::take_from_bytes::<SnapshotPayload>(data) {
            payload.state.restore_sections(sections).map_err(|e| {
                tracing::error!(cause = %e, "metadata snapshot sections do not decode");
                postcard::Error::DeserializeBadEncoding
            })?;
            return Ok(payload);
        }
        Self::decode_older(data)
    }

    /// The layouts from before sections.
    fn decode_older(data: &[u8]) -> Result<Self, postcard::Error> {
        let v4 = |data: &[u8]| {
            postcard::from_bytes::<SnapshotPayloadV4>(data).map(|v4| SnapshotPayload {
                last_applied: v4.last_applied,
                last_membership: v4.last_membership,
                state: v4.state.into(),
            })
        };
        postcard::from_bytes::<SnapshotPayload>(data).or_else(|e| {
            v4(data)
                .or_else(|_| Self::decode_before_connectors(data))
                .map_err(|_| e)
        })
    }

    /// The layouts from before connectors joined the state.
    fn decode_before_connectors(data: &[u8]) -> Result<Self, postcard::Error> {
        {
            postcard::from_bytes::<SnapshotPayloadV3>(data)
                .map(|v3| SnapshotPayload {
                    last_applied: v3.last_applied,
                    last_membership: v3.last_membership,
                    state: v3.state.into(),
                })
                .or_else(|_| {
                    postcard::from_bytes::<SnapshotPayloadV2>(data)
                        .map(|v2| SnapshotPayload {
                            last_applied: v2.last_applied,
                            last_membership: v2.last_membership,
                            state: v2.state.into(),
                        })
                        .or_else(|_| {
                            postcard::from_bytes::<SnapshotPayloadV1>(data).map(|v1| {
                                SnapshotPayload {
                                    last_applied: v1.last_applied,
                                    last_membership: v1.last_membership,
                                    state: v1.state.into(),
                                }
                            })
                        })
                })
        }
    }
}

/// The state machine openraft drives. The broker reads the same state through the handle
/// [`crate::MetadataRaft::state_handle`] gives out.
#[derive(Debug)]
pub struct StateMachineStore {
    db: Arc<RaftFile>,
    /// A `std::sync::RwLock`, not tokio's: no await happens while it is held, and the broker
    /// reads it from synchronous code.
    state: Arc<RwLock<MetadataState>>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    max_snapshot_bytes: u64,
    /// Snapshots received from a leader and installed since this process opened the file.
    installed: Arc<AtomicU64>,
}

/// Takes a snapshot of the state as it was when openraft asked for the builder.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<RaftFile>,
    state: MetadataState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
}

impl StateMachineStore {
    /// Opens the state machine from the latest persisted snapshot, if any.
    pub(crate) async fn open(
        db: Arc<RaftFile>,
        max_snapshot_bytes: u64,
    ) -> Result<Self, StorageOpenError> {
        let stored = read_snapshot(&db).await?;
        let (state, last_applied, last_membership) = match stored {
            None => (MetadataState::new(), None, Membership::default()),
            Some((_, data)) => {
                let payload = SnapshotPayload::decode(&data)
                    .map_err(|e| StorageOpenError::Corrupt(format!("snapshot: {e}")))?;
                (payload.state, payload.last_applied, payload.last_membership)
            }
        };
        Ok(StateMachineStore {
            db,
            state: Arc::new(RwLock::new(state)),
            last_applied,
            last_membership,
            max_snapshot_bytes,
            installed: Arc::new(AtomicU64::new(0)),
        })
    }

    pub(crate) fn state(&self) -> Arc<RwLock<MetadataState>> {
        self.state.clone()
    }

    pub(crate) fn installed_counter(&self) -> Arc<AtomicU64> {
        self.installed.clone()
    }
}

/// The latest snapshot in the file: its meta and its bytes.
async fn read_snapshot(db: &Arc<RaftFile>) -> Result<Option<(Meta, Vec<u8>)>, redb::Error> {
    blocking(db, |db| {
        let txn = db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let (Some(meta), Some(data)) =
            (table.get(SNAPSHOT_META_KEY)?, table.get(SNAPSHOT_DATA_KEY)?)
        else {
            return Ok(None);
        };
        Ok(Some((decode(meta.value())?, data.value().to_vec())))
    })
    .await
}

/// Stores `meta` and `data` as the latest snapshot, unless the file already holds a newer one
/// (a snapshot installed from the leader while this one was being built). Returns whether it
/// was stored.
async fn write_snapshot(
    db: &Arc<RaftFile>,
    meta: &Meta,
    data: Vec<u8>,
) -> Result<bool, redb::Error> {
    let meta_bytes = encode(meta);
    let index = meta.last_log_id.map(|id| id.index);
    blocking(db, move |db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            if let Some(stored) = table.get(SNAPSHOT_META_KEY)? {
                let stored: Meta = decode(stored.value())?;
                if stored.last_log_id.map(|id| id.index) > index {
                    return Ok(false);
                }
            }
            table.insert(SNAPSHOT_META_KEY, meta_bytes.as_slice())?;
            table.insert(SNAPSHOT_DATA_KEY, data.as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    })
    .await
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let payload = SnapshotPayload {
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            state: std::mem::take(&mut self.state),
        };
        let data = payload.encode();
        // Unique per build: the index, and the build time to tell two builds at one index
        // apart (a leader may build again after an install at the same point).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}-{nanos}", id.leader_id, id.index, data.len()),
            None => format!("empty-{nanos}"),
        };
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: payload.last_membership,
            snapshot_id,
        };
        write_snapshot(&self.db, &meta, data.clone())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::debug!(index = ?meta.last_log_id, bytes = data.len(), "metadata snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut state = self.state.write().expect("metadata state lock poisoned");
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(()),
                EntryPayload::Normal(cmd) => {
                    let outcome = state.apply(entry.log_id.index, &cmd);
                    if let Err(refused) = &outcome {
                        tracing::debug!(index = entry.log_id.index, %refused, "metadata command refused");
                    }
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(())
                }
            };
            responses.push(CommandResponse { outcome });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The clone is taken now, under the lock, so it matches `last_applied` even though
        // entries keep being applied while the builder runs.
        SnapshotBuilder {
            db: self.db.clone(),
            state: self
                .state
                .read()
                .expect("metadata state lock poisoned")
                .clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        // The transport refuses chunks past the limit before they are buffered
        // (`MetadataRaft::handle_rpc`); this is the last line.
        if data.len() as u64 > self.max_snapshot_bytes {
            let e = std::io::Error::other(format!(
                "snapshot of {} bytes is over the limit of {}",
                data.len(),
                self.max_snapshot_bytes
            ));
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into());
        }
        let payload = SnapshotPayload::decode(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // On disk first: if this fails the state in memory is still the old, consistent one.
        write_snapshot(&self.db, meta, data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.state.write().expect("metadata state lock poisoned") = payload.state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(index = ?meta.last_log_id, "metadata snapshot installed from the leader");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = read_snapshot(&self.db)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use sluice_metadata::MetadataCommand;

    use super::*;

    #[test]
    fn users_tokens_and_quotas_travel_as_a_snapshot_section() {
        let mut state = MetadataState::new();
        let credential = sluice_proto::auth::ScramCredential {
            salt: vec![7; 16],
            iterations: 4096,
            stored_key: vec![1; 32],
            server_key: vec![2; 32],
        };
        let commands = [
            MetadataCommand::UpsertUser {
                name: "alice".into(),
                credential: credential.clone(),
            },
            MetadataCommand::CreateToken {
                id: "abc".into(),
                token: sluice_metadata::security::TokenRecord {
                    principal: "alice".into(),
                    hash: vec![9; 32],
                    description: "ci".into(),
                    created_ms: 1,
                    expires_ms: None,
                },
            },
            MetadataCommand::SetQuota {
                principal: "*".into(),
                quota: Some(sluice_proto::auth::Quota {
                    produce_bytes_per_sec: Some(1000),
                    ..Default::default()
                }),
            },
        ];
        for (i, c) in commands.iter().enumerate() {
            state.apply(i as u64 + 1, c).unwrap();
        }
        let payload = SnapshotPayload {
            last_applied: None,
            last_membership: Membership::default(),
            state: state.clone(),
        };
        let bytes = payload.encode();
        let back = SnapshotPayload::decode(&bytes).unwrap().state;
        assert_eq!(back, state);
        assert_eq!(back.security().user("alice"), Some(&credential));
        assert_eq!(
            back.security()
                .quota_for("bob")
                .unwrap()
                .produce_bytes_per_sec,
            Some(1000)
        );
        // Without sections (an older build's snapshot): an empty security state.
        let plain = encode(&payload);
        let back = SnapshotPayload::decode(&plain).unwrap().state;
        assert!(back.security().user("alice").is_none());
        // A section this build does not know is refused, not skipped.
        let mut unknown = plain.clone();
        unknown.extend(postcard::to_allocvec(&vec![("future".to_string(), vec![1u8])]).unwrap());
        assert!(SnapshotPayload::decode(&unknown).is_err());
    }

    #[test]
    fn snapshots_carry_components_and_older_snapshots_still_decode() {
        let mut state = MetadataState::new();
        state
            .apply(
                1,
                &MetadataCommand::DeployPluginComponent {
                    name: "p".into(),
                    kind: "transform".into(),
                    hash: "h".into(),
                    deployed_at_ms: 0,
                    wasm: vec![1, 2, 3],
                },
            )
            .unwrap();
        let payload = SnapshotPayload {
            last_applied: None,
            last_membership: Membership::default(),
            state: state.clone(),
        };
        let bytes = postcard::to_allocvec(&payload).unwrap();
        let back = SnapshotPayload::decode(&bytes).unwrap().state;
        assert_eq!(back.component("h"), Some(&[1u8, 2, 3][..]));
        assert_eq!(back, state);

        // Written by a build whose state lacked components and checkpoints: the same fields
        // without the state's last five (components, checkpoints, replication settings,
        // connectors, access control bindings), all empty in `without`, each encoded as one
        // byte (length 0).
        let full = postcard::to_allocvec(&state).unwrap();
        let mut without = state.clone();
        without
            .apply(2, &MetadataCommand::DeletePlugin { name: "p".into() })
            .unwrap();
        let old_layout = |state: &MetadataState, dropped: usize| {
            let mut bytes = postcard::to_allocvec(state).unwrap();
            bytes.truncate(bytes.len() - dropped);
            let mut old =
                postcard::to_allocvec(&(None::<LogId<NodeId>>, Membership::default())).unwrap();
            old.extend_from_slice(&bytes);
            old
        };
        let v1 = old_layout(&without, 5);
        assert!(full.len() > v1.len());
        let back = SnapshotPayload::decode(&v1).unwrap().state;
        assert!(back.plugin("p").is_none());
        assert_eq!(back.applied_index(), without.applied_index());
        assert!(back.component("h").is_none());

        // Written by a build whose state lacked topics' replication settings (and what came
        // after), then by one whose state lacked connectors (and ACLs), then by one whose
        // state lacked ACLs: the current layout without its last three, two or one (empty)
        // collections.
        for dropped in [3, 2, 1] {
            let back = SnapshotPayload::decode(&old_layout(&state, dropped))
                .unwrap()
                .state;
            assert_eq!(back, state);
            assert_eq!(back.component("h"), Some(&[1u8, 2, 3][..]));
        }
    }
}
