//! Serde for a command's outcome, `Result<(), MetadataError>`.
//!
//! openraft requires the response type to be serializable, and `sluice-metadata` keeps its
//! error free of serde. serde's remote derive mirrors the enum here: a variant added there and
//! not here fails to compile, so the two cannot drift apart silently.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sluice_metadata::{MetadataError, TopicUser};

#[derive(Serialize, Deserialize)]
#[serde(remote = "MetadataError")]
enum MetadataErrorDef {
    UnknownTopic(String),
    TopicExists(String),
    InvalidName(String),
    UnknownPartition {
        topic: String,
        partition: u32,
    },
    InvalidPartitions(String),
    InvalidConfig(String),
    UnknownBroker(u32),
    StaleBrokerEpoch {
        node_id: u32,
        epoch: u64,
        current: u64,
    },
    ProducerIdsExhausted,
    UnknownPlugin(String),
    PluginInUse {
        plugin: String,
        user: String,
    },
    UnknownPipeline(String),
    PipelineExists(String),
    TopicInUse {
        topic: String,
        #[serde(with = "topic_users")]
        users: Vec<TopicUser>,
    },
    // Appended: variants keep their wire index.
    StaleLeaderEpoch {
        topic: String,
        partition: u32,
        leader_epoch: u32,
        current: u32,
    },
    UnknownConnector(String),
    ConnectorExists(String),
    ConnectorTaskReplaced {
        name: String,
        generation: u64,
    },
    UnknownCredential(String),
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "TopicUser")]
enum TopicUserDef {
    Pipeline { name: String, reads: bool },
    // Appended: variants keep their wire index.
    Connector { name: String, reads: bool },
}

mod topic_users {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct User(#[serde(with = "TopicUserDef")] TopicUser);

    pub fn serialize<S: Serializer>(users: &[TopicUser], s: S) -> Result<S::Ok, S::Error> {
        let users: Vec<User> = users.iter().cloned().map(User).collect();
        users.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TopicUser>, D::Error> {
        let users = Vec::<User>::deserialize(d)?;
        Ok(users.into_iter().map(|u| u.0).collect())
    }
}

#[derive(Serialize, Deserialize)]
enum Outcome {
    Applied,
    Refused(#[serde(with = "MetadataErrorDef")] MetadataError),
}

pub fn serialize<S: Serializer>(
    outcome: &Result<(), MetadataError>,
    s: S,
) -> Result<S::Ok, S::Error> {
    // A clone, because responses are serialized rarely (openraft never sends them; only a
    // caller that forwards them does).
    match outcome {
        Ok(()) => Outcome::Applied,
        Err(e) => Outcome::Refused(e.clone()),
    }
    .serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Result<(), MetadataError>, D::Error> {
    Ok(match Outcome::deserialize(d)? {
        Outcome::Applied => Ok(()),
        Outcome::Refused(e) => Err(e),
    })
}

#[cfg(test)]
mod tests {
    use crate::CommandResponse;
    use sluice_metadata::{MetadataError, TopicUser};

    #[test]
    fn outcomes_survive_postcard() {
        let outcomes = [
            Ok(()),
            Err(MetadataError::TopicExists("t".into())),
            Err(MetadataError::UnknownPartition {
                topic: "t".into(),
                partition: 7,
            }),
            Err(MetadataError::ProducerIdsExhausted),
            Err(MetadataError::TopicInUse {
                topic: "a".into(),
                users: vec![TopicUser::Pipeline {
                    name: "p".into(),
                    reads: true,
                }],
            }),
        ];
        for outcome in outcomes {
            let response = CommandResponse { outcome };
            let bytes = postcard::to_allocvec(&response).unwrap();
            let back: CommandResponse = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, response);
        }
    }
}
