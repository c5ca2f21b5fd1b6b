//! Access control lists, kept in the metadata state (so Raft replicates them and every broker
//! decides alike), and the decision rule: who may do what to which resource.
//!
//! A binding says: principal P (or `*`, anyone) is allowed, or denied, operation O on resources
//! of type T whose name is N (a literal name, `*` for every name, or a prefix). The rule:
//! - a super-user (broker setting) may do everything;
//! - any matching deny refuses, whatever allows match too (deny wins);
//! - otherwise a matching allow allows; nothing else is allowed.
//!
//! `All` as an operation matches every operation; `Describe` is implied by any of `Read`,
//! `Write`, `Delete`, `Alter` on the same resource (a client allowed to read a topic may see it
//! listed), as Kafka does. Everything here is pure: no I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use sluice_proto::acl::{
    AclBinding, Decision, MAX_ACL_TEXT, MAX_ACLS, Operation, PatternKind, Permission, ResourceType,
};

/// The bindings of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acls {
    bindings: BTreeSet<AclBinding>,
}

impl Acls {
    /// Adds a binding; `Ok(false)` when it was there already.
    pub fn add(&mut self, binding: AclBinding) -> Result<bool, String> {
        binding.validate()?;
        if !self.bindings.contains(&binding) && self.bindings.len() >= MAX_ACLS {
            return Err(format!(
                "the cluster holds {MAX_ACLS} ACL bindings, the most it takes"
            ));
        }
        Ok(self.bindings.insert(binding))
    }

    /// Removes a binding; whether it was there.
    pub fn remove(&mut self, binding: &AclBinding) -> bool {
        self.bindings.remove(binding)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AclBinding> {
        self.bindings.iter()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// May `principal` do `operation` to the resource `resource`/`name`?
    pub fn authorize(
        &self,
        principal: &str,
        super_users: &[String],
        operation: Operation,
        resource: ResourceType,
        name: &str,
    ) -> Decision {
        if super_users.iter().any(|s| s == principal) {
            return Decision::SuperUser;
        }
        let mut allowed = None;
        for b in &self.bindings {
            if !(b.matches_principal(principal)
                && b.matches_resource(resource, name)
                && b.covers(operation))
            {
                continue;
            }
            match b.permission {
                Permission::Deny => return Decision::Denied(b.clone()),
                Permission::Allow => {
                    allowed.get_or_insert_with(|| b.clone());
                }
            }
        }
        allowed.map_or(Decision::NoAllow, Decision::Allowed)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn binding(
        principal: &str,
        resource: ResourceType,
        pattern: &str,
        kind: PatternKind,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            principal: principal.into(),
            resource,
            pattern: pattern.into(),
            kind,
            operation,
            permission,
        }
    }

    use Operation::*;
    use PatternKind::*;
    use Permission::*;
    use ResourceType::*;

    /// The example: A may write `orders` and read `reports`; B may read `orders`
    /// with group `billing` only.
    fn example() -> Acls {
        let mut acls = Acls::default();
        for b in [
            binding("A", Topic, "orders", Literal, Write, Allow),
            binding("A", Topic, "reports", Literal, Read, Allow),
            binding("B", Topic, "orders", Literal, Read, Allow),
            binding("B", Group, "billing", Literal, Read, Allow),
        ] {
            assert!(acls.add(b).unwrap());
        }
        acls
    }

    #[test]
    fn only_what_is_allowed_is_allowed() {
        let acls = example();
        let may = |p: &str, op, r, n: &str| acls.authorize(p, &[], op, r, n).is_allowed();
        assert!(may("A", Write, Topic, "orders"));
        assert!(may("A", Read, Topic, "reports"));
        assert!(may("B", Read, Topic, "orders"));
        assert!(may("B", Read, Group, "billing"));
        // Describe comes with read or write.
        assert!(may("A", Describe, Topic, "orders"));
        assert!(may("B", Describe, Topic, "orders"));
        // Everything else is refused.
        assert!(!may("A", Read, Topic, "orders"));
        assert!(!may("A", Write, Topic, "reports"));
        assert!(!may("B", Write, Topic, "orders"));
        assert!(!may("B", Read, Group, "other"));
        assert!(!may("A", Read, Group, "billing"));
        assert!(!may("B", Describe, Topic, "reports"));
        assert!(!may("A", Create, Topic, "orders"));
        assert!(!may("A", Delete, Topic, "orders"));
        assert!(!may("C", Read, Topic, "orders"));
        assert!(!may("A", Deploy, Plugin, "mask"));
        assert_eq!(
            acls.authorize("C", &[], Read, Topic, "orders"),
            Decision::NoAllow
        );
        // Super-users may do anything.
        assert_eq!(
            acls.authorize("admin", &["admin".into()], Delete, Cluster, "*"),
            Decision::SuperUser
        );
    }

    #[test]
    fn deny_wins_and_patterns_match_as_documented() {
        let mut acls = Acls::default();
        acls.add(binding("*", Topic, "logs-", Prefix, All, Allow))
            .unwrap();
        acls.add(binding("eve", Topic, "logs-secret", Literal, Read, Deny))
            .unwrap();
        acls.add(binding("ops", Topic, "*", Literal, Describe, Allow))
            .unwrap();
        let may = |p: &str, op, n: &str| acls.authorize(p, &[], op, Topic, n).is_allowed();
        assert!(may("anyone", Write, "logs-app"));
        assert!(may("eve", Read, "logs-app"));
        assert!(
            !may("eve", Read, "logs-secret"),
            "deny wins over the prefix allow"
        );
        assert!(
            may("eve", Write, "logs-secret"),
            "the deny is for read only"
        );
        assert!(!may("anyone", Read, "log"), "shorter than the prefix");
        assert!(may("ops", Describe, "anything"));
        assert!(!may("ops", Read, "anything"));
        // A denied describe is not implied by an allowed read.
        let mut more = acls.clone();
        more.add(binding("ops", Topic, "hidden", Literal, Describe, Deny))
            .unwrap();
        assert!(
            !more
                .authorize("ops", &[], Describe, Topic, "hidden")
                .is_allowed()
        );
    }

    #[test]
    fn bindings_are_validated_and_bounded() {
        let mut acls = Acls::default();
        let good = binding("A", Topic, "t", Literal, Read, Allow);
        assert!(acls.add(good.clone()).unwrap());
        assert!(!acls.add(good.clone()).unwrap(), "already there");
        assert!(acls.remove(&good));
        assert!(!acls.remove(&good));
        for bad in [
            binding("", Topic, "t", Literal, Read, Allow),
            binding("A", Topic, "", Literal, Read, Allow),
            binding("A\n", Topic, "t", Literal, Read, Allow),
            binding(
                &"x".repeat(MAX_ACL_TEXT + 1),
                Topic,
                "t",
                Literal,
                Read,
                Allow,
            ),
            binding("A", Cluster, "c1", Literal, Alter, Allow),
        ] {
            assert!(acls.add(bad).is_err());
        }
        assert!(acls.is_empty());
    }

    fn any_binding() -> impl Strategy<Value = AclBinding> {
        (
            prop::sample::select(vec!["*", "A", "B"]),
            prop::sample::select(vec![Topic, Group]),
            prop::sample::select(vec!["*", "o", "or", "orders", "reports"]),
            prop::sample::select(vec![Literal, Prefix]),
            prop::sample::select(vec![Read, Write, Describe, All]),
            prop::sample::select(vec![Allow, Deny]),
        )
            .prop_map(|(p, r, n, k, o, perm)| binding(p, r, n, k, o, perm))
    }

    proptest! {
        /// Adding a deny never allows more, adding an allow never allows less, and any
        /// matching deny refuses whatever else is bound.
        #[test]
        fn deny_only_narrows_and_allow_only_widens(
            bindings in prop::collection::vec(any_binding(), 0..12),
            extra in any_binding(),
            principal in prop::sample::select(vec!["A", "B", "C"]),
            op in prop::sample::select(vec![Read, Write, Describe, Create]),
            resource in prop::sample::select(vec![Topic, Group]),
            name in prop::sample::select(vec!["orders", "reports", "o"]),
        ) {
            let mut acls = Acls::default();
            for b in bindings {
                acls.add(b).unwrap();
            }
            let before = acls.authorize(principal, &[], op, resource, name).is_allowed();
            let mut more = acls.clone();
            more.add(extra.clone()).unwrap();
            let after = more.authorize(principal, &[], op, resource, name);
            match extra.permission {
                Deny => prop_assert!(!after.is_allowed() || before),
                Allow => prop_assert!(after.is_allowed() || !before),
            }
            if let Decision::Allowed(b) = &after {
                prop_assert!(more.iter().any(|x| x == b));
            }
        }
    }
}
