//! Credentials and quotas as they travel and as the metadata log stores them (protocol v8):
//! SCRAM-SHA-256 user credentials (only salted, iterated keys: never a password), API tokens
//! (only a hash of the secret), and per-principal quotas. The SCRAM arithmetic is the
//! client SDK's (`sluice_client::scram`); docs/security.md describes the exchanges.

use serde::{Deserialize, Serialize};

/// Longest user name; user names are also principals.
pub const MAX_USER_NAME: usize = 128;
/// Fewest PBKDF2 iterations a stored credential may have (RFC 7677's minimum).
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations accepted: each authentication costs the client this many HMACs.
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;
/// Longest SCRAM message accepted from either side.
pub const MAX_SCRAM_MESSAGE: usize = 1024;
/// Most users, tokens and quota entries each that the state holds.
pub const MAX_SECURITY_ENTRIES: usize = 100_000;
/// Longest token description.
pub const MAX_TOKEN_DESCRIPTION: usize = 256;
/// The principal a quota entry of this name applies to: everyone without an entry of their own.
pub const DEFAULT_QUOTA_PRINCIPAL: &str = "*";

/// Compares two secrets (hashes, signatures, tokens) in time independent of where they
/// differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `name` is a valid user name: 1 to 128 of `A-Z a-z 0-9 . _ @ -` (so SCRAM needs no
/// escaping and a name never looks like a token or a pattern).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// What the broker keeps of a user's password (RFC 5802): the salt and iteration count, and
/// the two keys derived from the salted password. Neither key gives the password, and the
/// stored key alone does not let anyone authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    #[serde(with = "serde_bytes")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    /// H(HMAC(SaltedPassword, "Client Key")).
    #[serde(with = "serde_bytes")]
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    #[serde(with = "serde_bytes")]
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// Checks the shape: a 16..=64-byte salt, iterations within bounds, 32-byte keys.
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=64).contains(&self.salt.len()) {
            return Err(format!("a salt of {} bytes (16 to 64)", self.salt.len()));
        }
        if !(MIN_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&self.iterations) {
            return Err(format!(
                "{} iterations ({MIN_SCRAM_ITERATIONS} to {MAX_SCRAM_ITERATIONS})",
                self.iterations
            ));
        }
        if self.stored_key.len() != 32 || self.server_key.len() != 32 {
            return Err("keys that are not 32 bytes (SHA-256)".into());
        }
        Ok(())
    }
}

/// One step of authenticating a connection (request `Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthStep {
    /// SCRAM-SHA-256 client-first-message, `n,,n=USER,r=CLIENT_NONCE`.
    ScramFirst { message: String },
    /// SCRAM-SHA-256 client-final-message, `c=biws,r=NONCE,p=PROOF`.
    ScramFinal { message: String },
    /// An API token, `sluice_<id>_<secret>`.
    Token { token: String },
}

/// The broker's answer to an [`AuthStep`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthReply {
    /// SCRAM server-first-message, `r=NONCE,s=SALT,i=ITERATIONS`: send `ScramFinal` next.
    ScramContinue { message: String },
    /// Authenticated: the connection acts as `principal` from now on. After SCRAM,
    /// `server_final` is the server-final-message (`v=SIGNATURE`), which proves the broker
    /// knows the credential too.
    Done {
        principal: String,
        mechanism: String,
        server_final: Option<String>,
    },
}

/// A user as listed (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDescription {
    pub name: String,
    pub mechanism: String,
    pub iterations: u32,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenDescription {
    pub id: String,
    pub principal: String,
    pub description: String,
    pub created_ms: i64,
    /// When it stops working, if it expires.
    pub expires_ms: Option<i64>,
}

/// The answer to `CreateToken`: the token itself, shown this once (the broker keeps a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub description: TokenDescription,
}

/// Limits on one principal's traffic, per broker. `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Record bytes produced per second.
    pub produce_bytes_per_sec: Option<u64>,
    /// Record bytes fetched per second.
    pub fetch_bytes_per_sec: Option<u64>,
    /// Requests per second, of any kind.
    pub requests_per_sec: Option<u32>,
}

impl Quota {
    /// Whether it limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.produce_bytes_per_sec.is_none()
            && self.fetch_bytes_per_sec.is_none()
            && self.requests_per_sec.is_none()
    }

    /// Checks each limit is above zero (zero would stop the principal for good; deny it with
    /// an ACL instead).
    pub fn validate(&self) -> Result<(), String> {
        if self.produce_bytes_per_sec == Some(0)
            || self.fetch_bytes_per_sec == Some(0)
            || self.requests_per_sec == Some(0)
        {
            return Err("a quota of 0 would stop the principal for good; use a deny ACL".into());
        }
        Ok(())
    }
}

/// A principal's quota as listed: `*` is the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaEntry {
    pub principal: String,
    pub quota: Quota,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_need_no_escaping() {
        assert!(valid_user_name("alice"));
        assert!(valid_user_name("svc.billing-1@example.com"));
        for bad in ["", "a,b", "a=b", "a b", "*", "a\n", &"x".repeat(129)] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn credentials_and_quotas_are_checked_for_shape() {
        let good = ScramCredential {
            salt: vec![1; 16],
            iterations: 4096,
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        };
        assert!(good.validate().is_ok());
        let mut bad = good.clone();
        bad.iterations = 1;
        assert!(bad.validate().is_err());
        let mut bad = good;
        bad.stored_key.pop();
        assert!(bad.validate().is_err());
        assert!(
            Quota {
                produce_bytes_per_sec: Some(0),
                ..Quota::default()
            }
            .validate()
            .is_err()
        );
        assert!(Quota::default().is_unlimited());
    }
}
