//! Topic administration: thin typed wrappers over the admin requests.

use sluice_proto::auth::{CreatedToken, Quota, QuotaEntry, TokenDescription, UserDescription};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::{
    ClusterStatus, CreateTopicRequest, ErrorCode, ListOffsetsRequest, OffsetSpec, PartitionOffset,
    Request, ResponseBody, TopicConfig, TopicDescription, WireError,
};

use crate::client::unexpected;
use crate::{Client, ClientError};

/// How old a cached leader may be for an offset lookup before it is looked up again.
const ROUTE_MAX_AGE: Duration = Duration::from_secs(60);

/// Creates, deletes and describes topics. Made by [`Client::admin`].
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub(crate) fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// Creates a topic. The broker validates the name, partition count and config, and its
    /// error (code and message) comes back as [`ClientError::Broker`].
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription, ClientError> {
        self.topic(Request::CreateTopic(CreateTopicRequest {
            name: name.to_string(),
            partitions,
            config,
        }))
        .await
    }

    /// Creates a topic whose partitions have `replication_factor` replicas each, on as many
    /// brokers; more than the cluster's live brokers is refused (`InvalidConfig`).
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        config: TopicConfig,
    ) -> Result<TopicDescription, ClientError> {
        self.topic(Request::CreateTopicReplicated {
            topic: CreateTopicRequest {
                name: name.to_string(),
                partitions,
                config,
            },
            replication_factor,
        })
        .await
    }

    /// Deletes a topic, its data and the group offsets committed for it; returns the topic as
    /// it was. Refused (an `InvalidConfig` broker error naming them) while a pipeline reads or
    /// writes the topic: delete those first, or use [`Admin::delete_topic_forced`].
    pub async fn delete_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        self.topic(Request::DeleteTopic {
            name: name.to_string(),
        })
        .await
    }

    /// Like [`Admin::delete_topic`], but first stops and deletes every pipeline that reads or
    /// writes the topic (`sluice topic delete --force`).
    pub async fn delete_topic_forced(&self, name: &str) -> Result<TopicDescription, ClientError> {
        self.topic(Request::DeleteTopicForced {
            name: name.to_string(),
        })
        .await
    }

    /// Adds access control bindings (docs/security.md); the bindings now in force.
    pub async fn create_acls(
        &self,
        bindings: Vec<sluice_proto::acl::AclBinding>,
    ) -> Result<Vec<sluice_proto::acl::AclBinding>, ClientError> {
        self.acls(Request::CreateAcls { bindings }).await
    }

    /// Removes access control bindings; the bindings now in force.
    pub async fn delete_acls(
        &self,
        bindings: Vec<sluice_proto::acl::AclBinding>,
    ) -> Result<Vec<sluice_proto::acl::AclBinding>, ClientError> {
        self.acls(Request::DeleteAcls { bindings }).await
    }

    /// Every access control binding.
    pub async fn list_acls(&self) -> Result<Vec<sluice_proto::acl::AclBinding>, ClientError> {
        self.acls(Request::ListAcls).await
    }

    async fn acls(
        &self,
        request: Request,
    ) -> Result<Vec<sluice_proto::acl::AclBinding>, ClientError> {
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::Acls(a), _) => Ok(a),
            (other, _) => Err(unexpected("Acls", &other)),
        }
    }

    /// Creates a user or changes its password. The SCRAM credential is derived here: the
    /// password never leaves this process. The users now known.
    pub async fn upsert_user(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Vec<UserDescription>, ClientError> {
        if password.is_empty() {
            return Err(ClientError::InvalidConfig("the password is empty".into()));
        }
        let credential = crate::scram::credential(password);
        self.users(Request::UpsertUser {
            name: name.to_owned(),
            credential,
        })
        .await
    }

    /// Deletes a user; the connections it authenticated stop working at their next request.
    pub async fn delete_user(&self, name: &str) -> Result<Vec<UserDescription>, ClientError> {
        self.users(Request::DeleteUser {
            name: name.to_owned(),
        })
        .await
    }

    pub async fn list_users(&self) -> Result<Vec<UserDescription>, ClientError> {
        self.users(Request::ListUsers).await
    }

    async fn users(&self, request: Request) -> Result<Vec<UserDescription>, ClientError> {
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::Users(u), _) => Ok(u),
            (other, _) => Err(unexpected("Users", &other)),
        }
    }

    /// Creates an API token for `principal` (this connection's own when `None`); the token
    /// is in the answer only — the broker keeps a hash.
    pub async fn create_token(
        &self,
        principal: Option<&str>,
        description: &str,
        expires_in: Option<std::time::Duration>,
    ) -> Result<CreatedToken, ClientError> {
        let request = Request::CreateToken {
            principal: principal.map(str::to_owned),
            description: description.to_owned(),
            expires_in_ms: expires_in.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
        };
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::TokenCreated(t), _) => Ok(t),
            (other, _) => Err(unexpected("TokenCreated", &other)),
        }
    }

    /// Revokes a token; the connections it authenticated stop working at their next request.
    pub async fn revoke_token(&self, id: &str) -> Result<Vec<TokenDescription>, ClientError> {
        self.tokens(Request::RevokeToken { id: id.to_owned() })
            .await
    }

    /// This principal's tokens (everyone's, for one that may describe the cluster).
    pub async fn list_tokens(&self) -> Result<Vec<TokenDescription>, ClientError> {
        self.tokens(Request::ListTokens).await
    }

    async fn tokens(&self, request: Request) -> Result<Vec<TokenDescription>, ClientError> {
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::Tokens(t), _) => Ok(t),
            (other, _) => Err(unexpected("Tokens", &other)),
        }
    }

    /// Sets (`Some`) or removes (`None`) a principal's quota (`*`: the default); the quotas.
    pub async fn set_quota(
        &self,
        principal: &str,
        quota: Option<Quota>,
    ) -> Result<Vec<QuotaEntry>, ClientError> {
        self.quotas(Request::SetQuota {
            principal: principal.to_owned(),
            quota,
        })
        .await
    }

    pub async fn list_quotas(&self) -> Result<Vec<QuotaEntry>, ClientError> {
        self.quotas(Request::ListQuotas).await
    }

    async fn quotas(&self, request: Request) -> Result<Vec<QuotaEntry>, ClientError> {
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::Quotas(q), _) => Ok(q),
            (other, _) => Err(unexpected("Quotas", &other)),
        }
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>, ClientError> {
        match self
            .client
            .request(Request::ListTopics, Bytes::new())
            .await?
        {
            (ResponseBody::Topics(t), _) => Ok(t),
            (other, _) => Err(unexpected("Topics", &other)),
        }
    }

    /// The topic's configuration and, per partition, its leader, leader epoch, log start, log
    /// end, high watermark and size — each partition's figures from the broker that leads it
    /// (in a cluster, one request per leader).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let request = || Request::DescribeTopic {
            name: name.to_string(),
        };
        let mut described = self.topic(request()).await?;
        let leaders: BTreeSet<u32> = described
            .partitions
            .iter()
            .filter_map(|p| p.leader)
            .filter(|l| *l != self.client.node_id())
            .collect();
        let asks = leaders.into_iter().map(|node| async move {
            let answer = self.client.request_to(node, request(), Bytes::new()).await;
            (node, answer)
        });
        for (node, answer) in futures::future::join_all(asks).await {
            let theirs = match answer {
                Ok((ResponseBody::Topic(t), _)) => t,
                Ok((other, _)) => return Err(unexpected("Topic", &other)),
                // Their partitions keep the figures the first broker had (none): the rest of
                // the description is still worth showing.
                Err(e) if e.is_retriable() => continue,
                Err(e) => return Err(e),
            };
            for p in theirs
                .partitions
                .into_iter()
                .filter(|p| p.leader == Some(node))
            {
                if let Some(slot) = described.partitions.get_mut(p.partition as usize) {
                    *slot = p;
                }
            }
        }
        Ok(described)
    }

    /// Adds `count` partitions (the number to add, not the new total).
    pub async fn add_partitions(
        &self,
        name: &str,
        count: u32,
    ) -> Result<TopicDescription, ClientError> {
        self.topic(Request::AddPartitions {
            name: name.to_string(),
            count,
        })
        .await
    }

    /// Looks up offsets at each partition's leader; each partition's entry carries its own
    /// result. A partition whose leader moved is asked again (twice at most) after a metadata
    /// refresh.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: Vec<(u32, OffsetSpec)>,
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let specs: BTreeMap<u32, OffsetSpec> = partitions.iter().copied().collect();
        let mut answers: BTreeMap<u32, PartitionOffset> = BTreeMap::new();
        let mut pending = partitions;
        for round in 0..3 {
            if round > 0 {
                self.client.invalidate(topic);
            }
            let route = self.client.topic_route(topic, ROUTE_MAX_AGE).await?;
            // Partitions the topic lacks go to any broker, which says so.
            let mut by_leader: BTreeMap<Option<u32>, Vec<(u32, OffsetSpec)>> = BTreeMap::new();
            for (partition, spec) in pending.drain(..) {
                let leader = match route.partitions.get(partition as usize) {
                    Some(p) => match p.leader {
                        Some(l) => Some(l),
                        None => {
                            answers.insert(
                                partition,
                                PartitionOffset {
                                    partition,
                                    result: Err(WireError::new(
                                        ErrorCode::LeaderNotAvailable,
                                        format!(
                                            "{topic}/{partition} has no leader right now; retry shortly"
                                        ),
                                    )),
                                },
                            );
                            continue;
                        }
                    },
                    None => None,
                };
                by_leader.entry(leader).or_default().push((partition, spec));
            }
            let asks = by_leader.into_iter().map(|(leader, partitions)| {
                let request = Request::ListOffsets(ListOffsetsRequest {
                    topic: topic.to_string(),
                    partitions,
                });
                async move {
                    match leader {
                        Some(node) => self.client.request_to(node, request, Bytes::new()).await,
                        None => self.client.request(request, Bytes::new()).await,
                    }
                }
            });
            for answer in futures::future::join_all(asks).await {
                match answer? {
                    (ResponseBody::Offsets(offsets), _) => {
                        for o in offsets {
                            answers.insert(o.partition, o);
                        }
                    }
                    (other, _) => return Err(unexpected("Offsets", &other)),
                }
            }
            pending = answers
                .values()
                .filter(|o| {
                    o.result.as_ref().is_err_and(|e| {
                        Client::means_stale_route(&ClientError::Broker(e.clone()))
                            && e.code != ErrorCode::UnknownTopic
                            && e.code != ErrorCode::UnknownPartition
                    })
                })
                .map(|o| o.partition)
                .filter_map(|p| specs.get(&p).map(|s| (p, *s)))
                .collect();
            if pending.is_empty() {
                break;
            }
        }
        Ok(answers.into_values().collect())
    }

    /// The cluster's nodes, roles, broker epochs and liveness, and the metadata leader's term
    /// and commit index — as the metadata leader sees it when it can be reached (only it knows
    /// which sessions are current), else as the bootstrap broker does.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let ask = |answer: Result<(ResponseBody, Bytes), ClientError>| match answer? {
            (ResponseBody::ClusterStatus(s), _) => Ok(s),
            (other, _) => Err(unexpected("ClusterStatus", &other)),
        };
        let first = ask(self
            .client
            .request(Request::ClusterStatus, Bytes::new())
            .await)?;
        match first.controller {
            Some(leader) if leader != first.answered_by => ask(self
                .client
                .request_to(leader, Request::ClusterStatus, Bytes::new())
                .await)
            .or(Ok(first)),
            _ => Ok(first),
        }
    }

    /// Adds node `node_id` (started with `cluster.join = true`, reachable by peers at
    /// `peer_addr`) to the metadata quorum as a voter; returns the cluster's status after.
    pub async fn add_node(
        &self,
        node_id: u32,
        peer_addr: &str,
    ) -> Result<ClusterStatus, ClientError> {
        self.at_metadata_leader(Request::AddNode {
            node_id,
            peer_addr: peer_addr.to_owned(),
        })
        .await
    }

    /// Removes node `node_id` from the cluster (refused while it holds partitions); returns
    /// the cluster's status after.
    pub async fn remove_node(&self, node_id: u32) -> Result<ClusterStatus, ClientError> {
        self.at_metadata_leader(Request::RemoveNode { node_id })
            .await
    }

    /// Gives partitions (of `topic`, or of every topic) back to their preferred replica where
    /// it is live and in sync but does not lead; the partitions that moved.
    pub async fn elect_leaders(
        &self,
        topic: Option<&str>,
    ) -> Result<Vec<sluice_proto::ElectedLeader>, ClientError> {
        let request = Request::ElectLeaders {
            topic: topic.map(str::to_owned),
        };
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::ElectedLeaders(e), _) => Ok(e),
            (other, _) => Err(unexpected("ElectedLeaders", &other)),
        }
    }

    /// Sets a topic's replication settings (`None` leaves one as it is); the settings in
    /// effect after.
    pub async fn alter_topic_replication(
        &self,
        topic: &str,
        min_insync_replicas: Option<u16>,
        unclean_leader_election: Option<bool>,
    ) -> Result<sluice_proto::TopicReplication, ClientError> {
        self.topic_replication(Request::AlterTopicReplication {
            topic: topic.to_owned(),
            min_insync_replicas,
            unclean_leader_election,
        })
        .await
    }

    /// A topic's replication settings in effect.
    pub async fn describe_topic_replication(
        &self,
        topic: &str,
    ) -> Result<sluice_proto::TopicReplication, ClientError> {
        self.topic_replication(Request::DescribeTopicReplication {
            topic: topic.to_owned(),
        })
        .await
    }

    async fn topic_replication(
        &self,
        request: Request,
    ) -> Result<sluice_proto::TopicReplication, ClientError> {
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::TopicReplication(r), _) => Ok(r),
            (other, _) => Err(unexpected("TopicReplication", &other)),
        }
    }

    /// Sends a membership request to the metadata leader: to the bootstrap broker first, then to
    /// the leader it names.
    async fn at_metadata_leader(&self, request: Request) -> Result<ClusterStatus, ClientError> {
        let answer = match self.client.request(request.clone(), Bytes::new()).await {
            Err(ClientError::Broker(e)) if e.code == ErrorCode::NotLeader && e.leader.is_some() => {
                let leader = e.leader.expect("checked");
                self.client
                    .request_to(leader, request, Bytes::new())
                    .await?
            }
            other => other?,
        };
        match answer {
            (ResponseBody::ClusterStatus(s), _) => Ok(s),
            (other, _) => Err(unexpected("ClusterStatus", &other)),
        }
    }

    async fn topic(&self, request: Request) -> Result<TopicDescription, ClientError> {
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::Topic(t), _) => Ok(t),
            (other, _) => Err(unexpected("Topic", &other)),
        }
    }
}
