//! Who may connect and how much they may send: SCRAM users (salted keys only), API tokens
//! (hashes only), per-principal quotas, and the principal each pipeline and connector acts
//! as. Part of the metadata state, so Raft replicates it and every broker decides alike.
//!
//! Snapshots carry it as a named section after the state's fixed layout
//! ([`encode_sections`]), so adding to it never needs another copy of the older layouts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_proto::acl::ResourceType;
use sluice_proto::auth::{
    DEFAULT_QUOTA_PRINCIPAL, MAX_SECURITY_ENTRIES, MAX_TOKEN_DESCRIPTION, Quota, QuotaEntry,
    ScramCredential, TokenDescription, UserDescription, valid_user_name,
};

/// An API token as kept: the SHA-256 of the token, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub principal: String,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    pub description: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

impl TokenRecord {
    /// Whether it still works at `now_ms`.
    pub fn is_current(&self, now_ms: i64) -> bool {
        self.expires_ms.is_none_or(|at| now_ms < at)
    }

    pub fn describe(&self, id: &str) -> TokenDescription {
        TokenDescription {
            id: id.to_owned(),
            principal: self.principal.clone(),
            description: self.description.clone(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
        }
    }
}

/// The principal a pipeline or connector acts as, with the log index that created the
/// resource (an entry for a resource deleted and created again since does not apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub created_index: u64,
    pub principal: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    users: BTreeMap<String, ScramCredential>,
    tokens: BTreeMap<String, TokenRecord>,
    quotas: BTreeMap<String, Quota>,
    owners: BTreeMap<(ResourceType, String), Owner>,
    /// A random secret of the cluster, set once: the decoy SCRAM credentials of unknown users
    /// derive from it, so every broker, across restarts, answers an unknown name alike.
    #[serde(with = "serde_bytes")]
    decoy_secret: Vec<u8>,
}

impl Security {
    pub fn user(&self, name: &str) -> Option<&ScramCredential> {
        self.users.get(name)
    }

    pub fn users(&self) -> Vec<UserDescription> {
        self.users
            .iter()
            .map(|(name, c)| UserDescription {
                name: name.clone(),
                mechanism: "scram-sha-256".into(),
                iterations: c.iterations,
            })
            .collect()
    }

    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    pub fn tokens(&self) -> impl Iterator<Item = (&String, &TokenRecord)> {
        self.tokens.iter()
    }

    /// The quota that applies to `principal`: its own, else the default (`*`), else none
    /// (an unlimited quota is none).
    pub fn quota_for(&self, principal: &str) -> Option<Quota> {
        self.quotas
            .get(principal)
            .or_else(|| self.quotas.get(DEFAULT_QUOTA_PRINCIPAL))
            .copied()
            .filter(|q| !q.is_unlimited())
    }

    pub fn quotas(&self) -> Vec<QuotaEntry> {
        self.quotas
            .iter()
            .map(|(principal, quota)| QuotaEntry {
                principal: principal.clone(),
                quota: *quota,
            })
            .collect()
    }

    /// The principal a pipeline or connector created at `created_index` acts as; `None` for
    /// one created before owners were recorded.
    pub fn owner(&self, kind: ResourceType, name: &str, created_index: u64) -> Option<&str> {
        self.owners
            .get(&(kind, name.to_owned()))
            .filter(|o| o.created_index == created_index)
            .map(|o| o.principal.as_str())
    }

    pub(crate) fn validate_user(
        &self,
        name: &str,
        credential: &ScramCredential,
    ) -> Result<(), String> {
        if !valid_user_name(name) {
            return Err(format!(
                "{name:?} is not a valid user name (1 to 128 of A-Z a-z 0-9 . _ @ -)"
            ));
        }
        credential
            .validate()
            .map_err(|e| format!("a credential with {e}"))?;
        if !self.users.contains_key(name) && self.users.len() >= MAX_SECURITY_ENTRIES {
            return Err(format!("the cluster holds {MAX_SECURITY_ENTRIES} users"));
        }
        Ok(())
    }

    pub(crate) fn validate_token(&self, id: &str, token: &TokenRecord) -> Result<(), String> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("a token id is 1 to 64 letters and digits".into());
        }
        if self.tokens.contains_key(id) {
            return Err(format!("token {id} exists"));
        }
        if token.hash.len() != 32 {
            return Err("a token hash is 32 bytes (SHA-256)".into());
        }
        if token.principal.is_empty() || token.principal.len() > sluice_proto::acl::MAX_ACL_TEXT {
            return Err("a token's principal is 1 to 256 bytes".into());
        }
        if token.description.len() > MAX_TOKEN_DESCRIPTION
            || token.description.chars().any(char::is_control)
        {
            return Err(format!(
                "a token description is at most {MAX_TOKEN_DESCRIPTION} bytes, no control characters"
            ));
        }
        if self.tokens.len() >= MAX_SECURITY_ENTRIES {
            return Err(format!("the cluster holds {MAX_SECURITY_ENTRIES} tokens"));
        }
        Ok(())
    }

    pub(crate) fn validate_quota(&self, principal: &str, quota: &Quota) -> Result<(), String> {
        if principal.is_empty()
            || principal.len() > sluice_proto::acl::MAX_ACL_TEXT
            || principal.chars().any(char::is_control)
        {
            return Err("a quota's principal is 1 to 256 bytes, no control characters".into());
        }
        quota.validate()?;
        if !self.quotas.contains_key(principal) && self.quotas.len() >= MAX_SECURITY_ENTRIES {
            return Err(format!("the cluster holds {MAX_SECURITY_ENTRIES} quotas"));
        }
        Ok(())
    }

    pub(crate) fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    pub(crate) fn has_token(&self, id: &str) -> bool {
        self.tokens.contains_key(id)
    }

    pub(crate) fn upsert_user(&mut self, name: &str, credential: &ScramCredential) {
        self.users.insert(name.to_owned(), credential.clone());
    }

    /// Deletes a user and every token made for it: nothing it made outlives it.
    pub(crate) fn delete_user(&mut self, name: &str) {
        self.users.remove(name);
        self.tokens.retain(|_, t| t.principal != name);
    }

    /// Adds a token, and forgets the tokens that had expired by its creation time (the
    /// command's own time, so every node forgets the same ones).
    pub(crate) fn add_token(&mut self, id: &str, token: &TokenRecord) {
        self.tokens.retain(|_, t| t.is_current(token.created_ms));
        self.tokens.insert(id.to_owned(), token.clone());
    }

    /// The cluster's decoy secret; empty until set.
    pub fn decoy_secret(&self) -> &[u8] {
        &self.decoy_secret
    }

    /// Sets the decoy secret unless it is set already (the first proposal wins).
    pub(crate) fn init_decoy_secret(&mut self, secret: &[u8]) {
        if self.decoy_secret.is_empty() {
            self.decoy_secret = secret.to_vec();
        }
    }

    pub(crate) fn revoke_token(&mut self, id: &str) {
        self.tokens.remove(id);
    }

    /// Sets a principal's quota; an unlimited one is kept (it exempts the principal from the
    /// default), `None` removes it.
    pub(crate) fn set_quota(&mut self, principal: &str, quota: Option<&Quota>) {
        match quota {
            Some(q) => self.quotas.insert(principal.to_owned(), *q),
            None => self.quotas.remove(principal),
        };
    }

    pub(crate) fn set_owner(
        &mut self,
        kind: ResourceType,
        name: &str,
        created_index: u64,
        principal: &str,
    ) {
        self.owners.insert(
            (kind, name.to_owned()),
            Owner {
                created_index,
                principal: principal.to_owned(),
            },
        );
    }

    /// Forgets the owners of resources `exists` no longer finds.
    pub(crate) fn retain_owners(&mut self, exists: impl Fn(ResourceType, &str, u64) -> bool) {
        self.owners
            .retain(|(kind, name), o| exists(*kind, name, o.created_index));
    }
}

/// The snapshot sections after the state's fixed layout: `(name, postcard bytes)` pairs.
#[derive(Serialize, Deserialize)]
struct Sections(Vec<(String, serde_bytes::ByteBuf)>);

const SECURITY_SECTION: &str = "security";

/// Encodes the parts of the state that travel as snapshot sections.
pub(crate) fn encode_sections(security: &Security) -> Vec<u8> {
    let mut sections = Vec::new();
    if *security != Security::default() {
        let bytes = postcard::to_allocvec(security).expect("the security state always encodes");
        sections.push((
            SECURITY_SECTION.to_owned(),
            serde_bytes::ByteBuf::from(bytes),
        ));
    }
    postcard::to_allocvec(&Sections(sections)).expect("sections always encode")
}

/// Decodes snapshot sections; empty bytes (a snapshot from before sections) hold none. A
/// section this build does not know is refused: the snapshot is from a newer version.
pub(crate) fn decode_sections(bytes: &[u8]) -> Result<Security, String> {
    if bytes.is_empty() {
        return Ok(Security::default());
    }
    let (Sections(sections), rest) = postcard::take_from_bytes::<Sections>(bytes)
        .map_err(|e| format!("snapshot sections: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes after the snapshot's sections",
            rest.len()
        ));
    }
    let mut security = Security::default();
    for (name, bytes) in sections {
        match name.as_str() {
            SECURITY_SECTION => {
                security = postcard::from_bytes(&bytes)
                    .map_err(|e| format!("snapshot section {name:?}: {e}"))?;
            }
            other => {
                return Err(format!(
                    "snapshot section {other:?} is unknown to this version; upgrade this node"
                ));
            }
        }
    }
    Ok(security)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MetadataCommand, MetadataState};

    fn credential() -> ScramCredential {
        ScramCredential {
            salt: vec![1; 16],
            iterations: 4096,
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        }
    }

    fn token(principal: &str, created_ms: i64, expires_ms: Option<i64>) -> TokenRecord {
        TokenRecord {
            principal: principal.into(),
            hash: vec![9; 32],
            description: String::new(),
            created_ms,
            expires_ms,
        }
    }

    #[test]
    fn a_deleted_user_takes_its_tokens_and_expired_tokens_are_forgotten() {
        let mut s = MetadataState::new();
        let cmds = [
            MetadataCommand::UpsertUser {
                name: "alice".into(),
                credential: credential(),
            },
            MetadataCommand::CreateToken {
                id: "a1".into(),
                token: token("alice", 10, None),
            },
            MetadataCommand::CreateToken {
                id: "b1".into(),
                token: token("bob", 10, Some(20)),
            },
            MetadataCommand::CreateToken {
                id: "b2".into(),
                token: token("bob", 30, None),
            },
        ];
        for (i, c) in cmds.iter().enumerate() {
            s.apply(i as u64 + 1, c).unwrap();
        }
        // b1 expired at 20, before b2 was made at 30.
        assert!(s.security().token("b1").is_none());
        assert!(s.security().token("b2").is_some());
        s.apply(
            9,
            &MetadataCommand::DeleteUser {
                name: "alice".into(),
            },
        )
        .unwrap();
        assert!(s.security().user("alice").is_none());
        assert!(
            s.security().token("a1").is_none(),
            "alice's token went with her"
        );
        assert!(s.security().token("b2").is_some());
        // Deleting or revoking what is not there is refused (and changes nothing).
        assert!(
            s.apply(10, &MetadataCommand::RevokeToken { id: "a1".into() })
                .is_err()
        );
    }

    #[test]
    fn an_unlimited_quota_exempts_from_the_default_and_the_first_decoy_secret_stays() {
        let mut s = MetadataState::new();
        let limited = Quota {
            produce_bytes_per_sec: Some(100),
            ..Quota::default()
        };
        let cmds = [
            MetadataCommand::SetQuota {
                principal: "*".into(),
                quota: Some(limited),
            },
            MetadataCommand::SetQuota {
                principal: "etl".into(),
                quota: Some(Quota::default()),
            },
            MetadataCommand::InitDecoySecret {
                secret: vec![1; 32],
            },
            MetadataCommand::InitDecoySecret {
                secret: vec![2; 32],
            },
        ];
        for (i, c) in cmds.iter().enumerate() {
            s.apply(i as u64 + 1, c).unwrap();
        }
        assert_eq!(s.security().quota_for("anyone"), Some(limited));
        assert_eq!(s.security().quota_for("etl"), None);
        assert_eq!(s.security().decoy_secret(), &[1; 32][..]);
        s.apply(
            9,
            &MetadataCommand::SetQuota {
                principal: "etl".into(),
                quota: None,
            },
        )
        .unwrap();
        assert_eq!(s.security().quota_for("etl"), Some(limited));
        assert!(
            s.apply(10, &MetadataCommand::InitDecoySecret { secret: vec![1; 3] })
                .is_err()
        );
    }
}
