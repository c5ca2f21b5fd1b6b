//! Topic administration: thin typed wrappers over the admin requests.

use bytes::Bytes;
use sluice_proto::{
    CreateTopicRequest, ListOffsetsRequest, OffsetSpec, PartitionOffset, Request, ResponseBody,
    TopicConfig, TopicDescription,
};

use crate::client::unexpected;
use crate::{Client, ClientError};

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

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        self.topic(Request::DescribeTopic {
            name: name.to_string(),
        })
        .await
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

    /// Looks up offsets; each partition's entry carries its own result.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: Vec<(u32, OffsetSpec)>,
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let request = Request::ListOffsets(ListOffsetsRequest {
            topic: topic.to_string(),
            partitions,
        });
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::Offsets(o), _) => Ok(o),
            (other, _) => Err(unexpected("Offsets", &other)),
        }
    }

    async fn topic(&self, request: Request) -> Result<TopicDescription, ClientError> {
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::Topic(t), _) => Ok(t),
            (other, _) => Err(unexpected("Topic", &other)),
        }
    }
}
