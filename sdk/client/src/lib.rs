//! The Sluice client SDK: produce, consume and administer topics on a Sluice broker.
//!
//! Everything starts from a [`Client`]: one QUIC connection (TLS 1.3, ALPN `sluice/1`) to one
//! broker, verified against the CA the caller names in [`TlsConfig`]. From it come:
//!
//! - [`Producer`] — data enters here. [`Producer::send`] queues a record; a background task
//!   gathers records into one record batch per partition (key hash, explicit or sticky
//!   partition choice), sends full or lingered batches on long-lived pipelined streams, retries
//!   what a retry can cure, and resolves each record's [`DeliveryFuture`] with its offset.
//! - [`Consumer`] — data leaves here. [`Consumer::poll`] sends one long-polling fetch for the
//!   assigned partitions, splits the returned batches, decodes (and decompresses) the records,
//!   and advances each partition's position past what it returned.
//! - [`Admin`] — create, delete, describe topics; look up offsets.
//!
//! Every request is a frame on a QUIC bidirectional stream, answered in order on the same
//! stream (see `sluice_proto::frame`). Broker errors keep their code and message in
//! [`ClientError::Broker`]; [`ClientError::is_retriable`] says whether trying again can help.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_client::ClientError> {
//! use sluice_client::*;
//! let client = Client::connect(ClientConfig::new("localhost:9092", TlsConfig::CaFile("ca.pem".into()))).await?;
//! let producer = client.producer(ProducerConfig::default());
//! let meta = producer.send_and_wait(ProducerRecord::new("orders", "hello").with_key("k1")).await?;
//! let mut consumer = client.consumer(ConsumerConfig::default());
//! consumer.assign("orders", &[meta.partition]).await?;
//! consumer.seek("orders", meta.partition, SeekTo::Offset(meta.offset)).await?;
//! let records = consumer.poll().await?;
//! # Ok(()) }
//! ```

mod admin;
mod client;
mod conn;
mod consumer;
mod error;
mod group;
mod lane;
mod producer;
mod profile;
pub mod scram;
mod tls;

pub use admin::Admin;
pub use client::{Client, ClientConfig, Credentials, ThrottleStats};
pub use conn::{QuicCongestion, send_frame};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, FetchTransform, OffsetReset, SeekTo};
pub use error::ClientError;
pub use group::{GroupEvent, GroupOptions};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use profile::Profile;
pub use tls::{ClientIdentity, TlsConfig};

/// The protocol types callers need alongside this crate.
pub use sluice_proto::{
    self as proto, Acks, Compression, ErrorCode, Header, OffsetSpec, PartitionOffset, TopicConfig,
    TopicDescription, WireError,
};
