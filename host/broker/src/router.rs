//! The request router: which module handles each request, and what goes back for it.
//!
//! The server (`server.rs`) reads a request off a stream and validates produce batches in the
//! stream's order; everything else enters here and goes to its family's module: `produce`,
//! `fetch`, `admin` (topics, metadata, offsets, producer ids), `topic_delete`, `groups`,
//! `plugins`, `pipelines`.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use sluice_proto::{
    ErrorCode, HelloRequest, HelloResponse, Request, Response, ResponseBody, WireError,
};

use crate::Broker;
use crate::auth::Session;

/// What goes back on the stream for one request.
#[derive(Debug)]
pub(crate) enum Reply {
    Frame(Response, Bytes),
    /// Nothing: `acks=0` produce requests get no response.
    None,
}

impl Reply {
    pub(crate) fn error(e: WireError) -> Reply {
        let resp: Response = Err(e);
        Reply::Frame(resp, Bytes::new())
    }

    pub(crate) fn ok(body: ResponseBody) -> Reply {
        Reply::Frame(Ok(body), Bytes::new())
    }

    pub(crate) fn from(result: Result<ResponseBody, WireError>) -> Reply {
        Reply::Frame(result, Bytes::new())
    }
}

pub(crate) fn hello(broker: &Broker, session: &Session, hello: &HelloRequest) -> Reply {
    let version = sluice_proto::PROTOCOL_VERSION.min(hello.max_version);
    if version < hello.min_version || version < sluice_proto::MIN_PROTOCOL_VERSION {
        return Reply::error(WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol versions {}..={}, this broker {}..={}; upgrade the older side",
                hello.min_version,
                hello.max_version,
                sluice_proto::MIN_PROTOCOL_VERSION,
                sluice_proto::PROTOCOL_VERSION
            ),
        ));
    }
    let _ = session.version.set(version);
    tracing::debug!(client = %hello.client_id, version, "hello");
    Reply::ok(ResponseBody::Hello(HelloResponse {
        version,
        node_id: broker.node_id,
        cluster_id: broker.cluster_id.clone(),
        max_frame_bytes: broker.config.max_frame_bytes as u32,
    }))
}

/// Starts handling a request. Called in stream order: anything that must keep that order
/// (enqueueing a produce) happens before this returns; the rest runs in the returned future.
/// Runs a blocking handler (one that proposes to the metadata log and waits) on a blocking
/// thread.
pub(crate) fn blocking(
    broker: Arc<Broker>,
    f: impl FnOnce(&Broker) -> Result<ResponseBody, WireError> + Send + 'static,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        match tokio::task::spawn_blocking(move || f(&broker)).await {
            Ok(r) => Reply::from(r),
            Err(e) => Reply::error(WireError::new(
                ErrorCode::Internal,
                format!("handler failed: {e}"),
            )),
        }
    })
}

/// `principal`: who sent the request (pipelines and connectors act as their creator).
pub(crate) fn handle(
    broker: Arc<Broker>,
    request: Request,
    raw: Bytes,
    principal: String,
) -> BoxFuture<'static, Reply> {
    match request {
        // Produce requests are validated (and routed) in the stream's order by the server,
        // which calls `produce` or `plugins::produce_routed` itself.
        Request::Produce(_) => Box::pin(async {
            Reply::error(WireError::new(
                ErrorCode::InvalidRequest,
                "request routed to the wrong handler",
            ))
        }),
        Request::Fetch(f) => Box::pin(async move { crate::fetch::fetch(broker, f).await }),
        Request::GroupHeartbeat(_)
        | Request::OffsetCommit(_)
        | Request::OffsetFetch { .. }
        | Request::ListGroups
        | Request::DescribeGroup { .. }
        | Request::ResetOffsets(_)
        | Request::DeleteGroup { .. }
        | Request::FindCoordinator { .. } => {
            Box::pin(crate::groups::handle(broker, request, principal))
        }
        Request::ClusterStatus => Box::pin(crate::cluster::status(broker)),
        Request::AddNode { node_id, peer_addr } => {
            Box::pin(crate::cluster::add_node(broker, node_id, peer_addr))
        }
        Request::RemoveNode { node_id } => Box::pin(crate::cluster::remove_node(broker, node_id)),
        Request::ElectLeaders { topic } => Box::pin(crate::cluster::elect_leaders(broker, topic)),
        Request::AlterTopicReplication { .. } | Request::DescribeTopicReplication { .. } => {
            Box::pin(crate::cluster::topic_replication(broker, request))
        }
        Request::CreateConnector(_)
        | Request::ListConnectors
        | Request::DescribeConnector { .. }
        | Request::PauseConnector { .. }
        | Request::ResumeConnector { .. }
        | Request::RestartConnector { .. }
        | Request::DeleteConnector { .. } => {
            Box::pin(crate::connectors::handle(broker, request, principal))
        }
        Request::CreatePipeline(_)
        | Request::ListPipelines
        | Request::DescribePipeline { .. }
        | Request::PausePipeline { .. }
        | Request::ResumePipeline { .. }
        | Request::DeletePipeline { .. } => {
            Box::pin(crate::pipelines::handle(broker, request, principal))
        }
        Request::DeleteTopic { name } => Box::pin(crate::topic_delete::handle(broker, name, false)),
        Request::DeleteTopicForced { name } => {
            Box::pin(crate::topic_delete::handle(broker, name, true))
        }
        Request::FetchTransformed(req) => Box::pin(crate::plugins::fetch_transformed(broker, req)),
        Request::DeployPlugin { .. }
        | Request::ListPlugins
        | Request::DescribePlugin { .. }
        | Request::DeletePlugin { .. } => {
            blocking(broker, move |b| crate::plugins::admin(b, request, raw))
        }
        other => blocking(broker, move |b| crate::admin::admin(b, other)),
    }
}
