//! Authorisation: what each request needs of the ACLs (docs/security.md), checked before the
//! request does anything, with `authorization = true`. A refusal is `NotAuthorized` naming the
//! operation and the resource, and is logged with the principal.

use sluice_proto::acl::{Decision, Operation, ResourceType};
use sluice_proto::{ErrorCode, Request, ResponseBody, WireError};

use crate::Broker;
use crate::router::Reply;

/// One permission a request needs: an operation on a named resource.
type Need = (Operation, ResourceType, String);

/// The permissions `request` needs, all of which must be granted. Requests that need none:
/// `Hello`, `WhoAmI`, `Authenticate`, `InitProducerId`; the listings (`Metadata` of every
/// topic, `ListTopics`, `ListGroups`, `ListPlugins`, `ListPipelines`, `ListConnectors`) are
/// allowed and show what the principal may describe ([`filter`]); the token requests check
/// for themselves (a principal's own tokens need nothing, another's `alter cluster`).
pub(crate) fn needs(request: &Request) -> Vec<Need> {
    use Operation::*;
    use ResourceType::*;
    let one = |op, r, name: &str| vec![(op, r, name.to_owned())];
    let cluster = |op| vec![(op, Cluster, "*".to_owned())];
    match request {
        Request::Hello(_)
        | Request::WhoAmI
        | Request::Authenticate(_)
        | Request::CreateToken { .. }
        | Request::RevokeToken { .. }
        | Request::ListTokens
        | Request::InitProducerId
        | Request::Metadata { topics: None }
        | Request::ListTopics
        | Request::ListGroups
        | Request::ListPlugins
        | Request::ListPipelines
        | Request::ListConnectors => Vec::new(),
        // Naming topics: each must be describable, so a client told "not authorized" is not
        // told "unknown topic" instead (the full listing leaves refused ones out).
        Request::Metadata { topics: Some(t) } => {
            t.iter().map(|t| (Describe, Topic, t.clone())).collect()
        }
        Request::CreateTopic(t) => one(Create, Topic, &t.name),
        Request::CreateTopicReplicated { topic, .. } => one(Create, Topic, &topic.name),
        Request::DeleteTopic { name } | Request::DeleteTopicForced { name } => {
            one(Delete, Topic, name)
        }
        Request::DescribeTopic { name } => one(Describe, Topic, name),
        Request::DescribeTopicReplication { topic } => one(Describe, Topic, topic),
        Request::AddPartitions { name, .. } => one(Alter, Topic, name),
        Request::SetPartitioner { topic, .. } => one(Alter, Topic, topic),
        Request::AlterTopicReplication { topic, .. } => one(Alter, Topic, topic),
        Request::Produce(p) => one(Write, Topic, &p.topic),
        Request::Fetch(f) => reads(f.partitions.iter().map(|p| p.topic.as_str())),
        Request::FetchTransformed(f) => {
            let mut n = reads(f.fetch.partitions.iter().map(|p| p.topic.as_str()));
            n.push((Read, Plugin, f.plugin.clone()));
            n
        }
        Request::ListOffsets(l) => one(Describe, Topic, &l.topic),
        Request::GroupHeartbeat(h) => {
            let mut n = one(Read, Group, &h.group);
            for t in h.topics.iter().flatten() {
                n.push((Read, Topic, t.clone()));
            }
            n
        }
        Request::OffsetCommit(c) => {
            let mut n = one(Read, Group, &c.group);
            n.extend(reads(c.offsets.iter().map(|o| o.topic.as_str())));
            n
        }
        Request::OffsetFetch { group }
        | Request::DescribeGroup { group }
        | Request::FindCoordinator { group } => one(Describe, Group, group),
        Request::ResetOffsets(r) => {
            let mut n = one(Alter, Group, &r.group);
            n.push((Describe, Topic, r.topic.clone()));
            n
        }
        Request::DeleteGroup { group } => one(Delete, Group, group),
        Request::DeployPlugin { name } => one(Deploy, Plugin, name),
        Request::DescribePlugin { name } => one(Describe, Plugin, name),
        Request::DeletePlugin { name } => one(Delete, Plugin, name),
        Request::CreatePipeline(p) => {
            let mut n = one(Create, Pipeline, &p.name);
            n.push((Read, Topic, p.from.clone()));
            n.push((Write, Topic, p.to.clone()));
            for plugin in &p.plugins {
                n.push((Read, Plugin, plugin.clone()));
            }
            n
        }
        Request::DescribePipeline { name } => one(Describe, Pipeline, name),
        Request::PausePipeline { name } | Request::ResumePipeline { name } => {
            one(Alter, Pipeline, name)
        }
        Request::DeletePipeline { name } => one(Delete, Pipeline, name),
        Request::CreateConnector(c) => {
            let mut n = one(Create, Connector, &c.name);
            n.push((Read, Plugin, c.plugin.clone()));
            // A source writes its topics, a sink reads them: either way the creator must be
            // able to do both to them, or a connector would launder access.
            for t in &c.topics {
                n.push((Read, Topic, t.clone()));
                n.push((Write, Topic, t.clone()));
            }
            for t in &c.transforms {
                n.push((Read, Plugin, t.clone()));
            }
            if let Some(dlq) = &c.dead_letter_topic {
                n.push((Write, Topic, dlq.clone()));
            }
            n
        }
        Request::DescribeConnector { name } => one(Describe, Connector, name),
        Request::PauseConnector { name }
        | Request::ResumeConnector { name }
        | Request::RestartConnector { name } => one(Alter, Connector, name),
        Request::DeleteConnector { name } => one(Delete, Connector, name),
        Request::ClusterStatus | Request::ListAcls | Request::ListUsers | Request::ListQuotas => {
            cluster(Describe)
        }
        Request::UpsertUser { .. } | Request::DeleteUser { .. } | Request::SetQuota { .. } => {
            cluster(Alter)
        }
        Request::AddNode { .. }
        | Request::RemoveNode { .. }
        | Request::ElectLeaders { .. }
        | Request::CreateAcls { .. }
        | Request::DeleteAcls { .. } => cluster(Alter),
    }
}

fn reads<'a>(topics: impl Iterator<Item = &'a str>) -> Vec<Need> {
    let mut topics: Vec<&str> = topics.collect();
    topics.sort_unstable();
    topics.dedup();
    topics
        .into_iter()
        .map(|t| (Operation::Read, ResourceType::Topic, t.to_owned()))
        .collect()
}

/// Checks `request` against the ACLs for `principal`, when authorisation is on.
pub(crate) fn check(broker: &Broker, principal: &str, request: &Request) -> Result<(), WireError> {
    if !broker.config.authorization {
        return Ok(());
    }
    for (operation, resource, name) in needs(request) {
        require(broker, principal, operation, resource, &name).inspect_err(|_| {
            tracing::warn!(
                principal, %operation, %resource, name = %name, request = request.kind(),
                "not authorized"
            );
        })?;
    }
    Ok(())
}

/// Whether `principal` may do `operation` to a resource (always, with authorisation off);
/// the refusal names them, and the deny binding that decided, if one did.
pub(crate) fn require(
    broker: &Broker,
    principal: &str,
    operation: Operation,
    resource: ResourceType,
    name: &str,
) -> Result<(), WireError> {
    if !broker.config.authorization {
        return Ok(());
    }
    let decision = broker.controller.read(|s| {
        s.acls().authorize(
            principal,
            &broker.config.super_users,
            operation,
            resource,
            name,
        )
    });
    if decision.is_allowed() {
        return Ok(());
    }
    let why = match decision {
        Decision::Denied(b) => format!(" (denied by {b})"),
        _ => String::new(),
    };
    Err(WireError::new(
        ErrorCode::NotAuthorized,
        format!("{principal} may not {operation} {resource} {name:?}{why}"),
    ))
}

/// Leaves out of a listing what `principal` may not describe: nothing about a resource the
/// principal has no rights on leaks through `Metadata`, `ListTopics`, `ListGroups`,
/// `ListPlugins`, `ListPipelines` or `ListConnectors`.
pub(crate) fn filter(broker: &Broker, principal: &str, reply: &mut Reply) {
    if !broker.config.authorization {
        return;
    }
    let Reply::Frame(Ok(body), _) = reply else {
        return;
    };
    if !matches!(
        body,
        ResponseBody::Metadata(_)
            | ResponseBody::Topics(_)
            | ResponseBody::Groups(_)
            | ResponseBody::Plugins(_)
            | ResponseBody::Pipelines(_)
            | ResponseBody::Connectors(_)
    ) {
        return;
    }
    let super_users = &broker.config.super_users;
    broker.controller.read(|s| {
        let may = |resource, name: &str| {
            s.acls()
                .authorize(principal, super_users, Operation::Describe, resource, name)
                .is_allowed()
        };
        match body {
            ResponseBody::Metadata(m) => m.topics.retain(|t| may(ResourceType::Topic, &t.name)),
            ResponseBody::Topics(t) => t.retain(|t| may(ResourceType::Topic, &t.name)),
            ResponseBody::Groups(g) => g.retain(|g| may(ResourceType::Group, &g.group)),
            ResponseBody::Plugins(p) => p.retain(|p| may(ResourceType::Plugin, &p.name)),
            ResponseBody::Pipelines(p) => p.retain(|p| may(ResourceType::Pipeline, &p.name)),
            ResponseBody::Connectors(c) => c.retain(|c| may(ResourceType::Connector, &c.name)),
            _ => {}
        }
    });
}

/// Whether the principal pipeline `spec` acts as (its creator) may still do what it does:
/// read its input and its plugins, write its output. Checked when a runner starts and before
/// each step, so a creator who loses a right stops the pipeline with this error.
pub(crate) fn pipeline_rights(
    broker: &Broker,
    spec: &sluice_metadata::PipelineSpec,
) -> Result<(), String> {
    let owner = broker
        .controller
        .read(|s| s.pipeline_principal(&spec.name).map(str::to_owned));
    let mut needs = vec![
        (Operation::Read, ResourceType::Topic, spec.from.as_str()),
        (Operation::Write, ResourceType::Topic, spec.to.as_str()),
    ];
    needs.extend(plugin_reads(&spec.plugins));
    creator_rights(broker, owner, &needs, "pipeline")
}

/// The same for a connector: a source writes its topics, a sink reads them; both read their
/// plugin and transforms. Checked when its task starts and before each batch.
pub(crate) fn connector_rights(
    broker: &Broker,
    spec: &sluice_metadata::ConnectorSpec,
) -> Result<(), String> {
    let owner = broker
        .controller
        .read(|s| s.connector_principal(&spec.name).map(str::to_owned));
    let op = match spec.kind {
        sluice_metadata::ConnectorKind::Source => Operation::Write,
        sluice_metadata::ConnectorKind::Sink => Operation::Read,
    };
    let mut needs: Vec<_> = spec
        .topics
        .iter()
        .map(|t| (op, ResourceType::Topic, t.as_str()))
        .collect();
    if let Some(dlq) = &spec.dead_letter_topic {
        needs.push((Operation::Write, ResourceType::Topic, dlq.as_str()));
    }
    needs.extend(plugin_reads(std::slice::from_ref(&spec.plugin)));
    needs.extend(plugin_reads(&spec.transforms));
    creator_rights(broker, owner, &needs, "connector")
}

fn plugin_reads(plugins: &[String]) -> impl Iterator<Item = (Operation, ResourceType, &str)> {
    plugins
        .iter()
        .map(|p| (Operation::Read, ResourceType::Plugin, p.as_str()))
}

/// Checks `needs` for `owner`, the principal a pipeline or connector acts as (`None`: made
/// before owners were recorded, and not checked).
fn creator_rights(
    broker: &Broker,
    owner: Option<String>,
    needs: &[(Operation, ResourceType, &str)],
    what: &str,
) -> Result<(), String> {
    let Some(owner) = owner.filter(|_| broker.config.authorization) else {
        return Ok(());
    };
    for (operation, resource, name) in needs {
        require(broker, &owner, *operation, *resource, name).map_err(|e| {
            format!(
                "the {what} acts as its creator, who is no longer authorized: {}; \
                 resume it once the rights are back",
                e.message
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice_proto::{CreatePipelineRequest, PipelineStart, ProduceRequest};

    use super::*;

    #[test]
    fn each_request_needs_what_it_touches() {
        let produce = Request::Produce(ProduceRequest {
            topic: "orders".into(),
            partition: 0,
            acks: sluice_proto::Acks::All,
            timeout_ms: 1,
            leader_epoch: None,
        });
        assert_eq!(
            needs(&produce),
            vec![(Operation::Write, ResourceType::Topic, "orders".into())]
        );
        let pipeline = Request::CreatePipeline(CreatePipelineRequest {
            name: "p".into(),
            plugins: vec!["mask".into()],
            from: "in".into(),
            to: "out".into(),
            config: vec![],
            start: PipelineStart::Earliest,
            max_call_ms: None,
            max_memory_bytes: None,
        });
        let n = needs(&pipeline);
        assert!(n.contains(&(Operation::Create, ResourceType::Pipeline, "p".into())));
        assert!(n.contains(&(Operation::Read, ResourceType::Topic, "in".into())));
        assert!(n.contains(&(Operation::Write, ResourceType::Topic, "out".into())));
        assert!(n.contains(&(Operation::Read, ResourceType::Plugin, "mask".into())));
        assert!(needs(&Request::WhoAmI).is_empty());
        assert_eq!(
            needs(&Request::ListAcls),
            vec![(Operation::Describe, ResourceType::Cluster, "*".into())]
        );
    }
}
