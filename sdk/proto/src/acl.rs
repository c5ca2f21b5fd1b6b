//! Access control bindings as they travel (the `CreateAcls`, `DeleteAcls` and `ListAcls`
//! requests) and as the metadata log stores them; the decision rule over them is the metadata
//! state's (`sluice_metadata::acl`). docs/security.md describes both.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most bindings the state holds: a guard against a runaway script.
pub const MAX_ACLS: usize = 100_000;
/// Longest principal or resource pattern accepted.
pub const MAX_ACL_TEXT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Plugin,
    Pipeline,
    Connector,
    /// The cluster itself (nodes, leadership); its name is always `*`.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    Deploy,
    /// Every operation.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternKind {
    /// The resource name itself; `*` matches every name.
    Literal,
    /// Every name that starts with the pattern.
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    /// A principal, or `*` for anyone (authenticated or not).
    pub principal: String,
    pub resource: ResourceType,
    pub pattern: String,
    pub kind: PatternKind,
    pub operation: Operation,
    pub permission: Permission,
}

/// What an ACL check decided, and why (for the refusal's message and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A super-user.
    SuperUser,
    /// This allow matched, and no deny did.
    Allowed(AclBinding),
    /// This deny matched.
    Denied(AclBinding),
    /// Nothing allows it.
    NoAllow,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::SuperUser | Decision::Allowed(_))
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Plugin => "plugin",
            ResourceType::Pipeline => "pipeline",
            ResourceType::Connector => "connector",
            ResourceType::Cluster => "cluster",
        })
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::Deploy => "deploy",
            Operation::All => "all",
        })
    }
}

impl AclBinding {
    /// Why the binding cannot be stored, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        for (what, text) in [("principal", &self.principal), ("pattern", &self.pattern)] {
            if text.is_empty() || text.len() > MAX_ACL_TEXT {
                return Err(format!("the {what} must be 1 to {MAX_ACL_TEXT} bytes"));
            }
            if text.chars().any(char::is_control) {
                return Err(format!("the {what} {text:?} holds a control character"));
            }
        }
        if self.resource == ResourceType::Cluster && self.pattern != "*" {
            return Err("a cluster binding names the cluster as `*`".into());
        }
        Ok(())
    }

    pub fn matches_principal(&self, principal: &str) -> bool {
        self.principal == "*" || self.principal == principal
    }

    pub fn matches_resource(&self, resource: ResourceType, name: &str) -> bool {
        self.resource == resource
            && match self.kind {
                PatternKind::Literal => self.pattern == "*" || self.pattern == name,
                PatternKind::Prefix => name.starts_with(&self.pattern),
            }
    }

    /// Whether this binding's operation covers `wanted` (`All` covers everything; an allow of
    /// read, write, delete or alter covers describe).
    pub fn covers(&self, wanted: Operation) -> bool {
        self.operation == Operation::All
            || self.operation == wanted
            || (wanted == Operation::Describe
                && self.permission == Permission::Allow
                && matches!(
                    self.operation,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
    }
}

impl ResourceType {
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Plugin,
        ResourceType::Pipeline,
        ResourceType::Connector,
        ResourceType::Cluster,
    ];
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::Deploy,
        Operation::All,
    ];
}

/// Parses a name as `Display` writes it, among `all`; the error lists the names.
fn parse_named<T: Copy + fmt::Display>(s: &str, all: &[T], what: &str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| v.to_string() == s)
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(ToString::to_string).collect();
            format!("{s:?} is not {what}: {}", names.join(", "))
        })
}

impl std::str::FromStr for ResourceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_named(s, &ResourceType::ALL, "a resource type")
    }
}

impl std::str::FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_named(s, &Operation::ALL, "an operation")
    }
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pattern = match self.kind {
            PatternKind::Literal => self.pattern.clone(),
            PatternKind::Prefix => format!("{}*", self.pattern),
        };
        let permission = match self.permission {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        };
        write!(
            f,
            "{}\t{}\t{} {}\t{}",
            self.principal, permission, self.resource, pattern, self.operation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for r in [
            "topic",
            "group",
            "plugin",
            "pipeline",
            "connector",
            "cluster",
        ] {
            assert_eq!(r.parse::<ResourceType>().unwrap().to_string(), r);
        }
        for o in [
            "read", "write", "create", "delete", "alter", "describe", "deploy", "all",
        ] {
            assert_eq!(o.parse::<Operation>().unwrap().to_string(), o);
        }
        assert!("table".parse::<ResourceType>().is_err());
        assert!("drop".parse::<Operation>().is_err());
    }
}
