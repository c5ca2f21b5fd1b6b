//! Access control bindings: adding, removing and listing them (`CreateAcls`, `DeleteAcls`,
//! `ListAcls`). Each change is a metadata log entry, so every broker holds the same bindings.
//! Blocking: runs on the admin requests' blocking thread.

use sluice_metadata::MetadataCommand;
use sluice_proto::acl::AclBinding;
use sluice_proto::{ErrorCode, MAX_ACLS_PER_REQUEST, Request, ResponseBody, WireError};

use crate::Broker;
use crate::wire_error::propose_error;

pub(crate) fn admin(broker: &Broker, request: Request) -> Result<ResponseBody, WireError> {
    let (bindings, add) = match request {
        Request::CreateAcls { bindings } => (bindings, true),
        Request::DeleteAcls { bindings } => (bindings, false),
        Request::ListAcls => return Ok(ResponseBody::Acls(list(broker))),
        _ => {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "not an ACL request",
            ));
        }
    };
    if bindings.len() > MAX_ACLS_PER_REQUEST {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} bindings in one request; at most {MAX_ACLS_PER_REQUEST}",
                bindings.len()
            ),
        ));
    }
    // All are checked before any is proposed: a bad one leaves the bindings as they were.
    if add {
        for b in &bindings {
            b.validate().map_err(|e| {
                WireError::new(ErrorCode::InvalidConfig, format!("ACL binding {b}: {e}"))
            })?;
        }
    }
    for b in bindings {
        let command = if add {
            MetadataCommand::AddAcl(b)
        } else {
            MetadataCommand::RemoveAcl(b)
        };
        broker.controller.propose(command).map_err(propose_error)?;
    }
    Ok(ResponseBody::Acls(list(broker)))
}

fn list(broker: &Broker) -> Vec<AclBinding> {
    broker
        .controller
        .read(|s| s.acls().iter().cloned().collect())
}
