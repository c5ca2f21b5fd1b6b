//! SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding: the arithmetic and the message
//! texts of both sides, with no I/O. The client proves it knows the password without sending
//! it; the broker proves it holds the credential; the broker stores only
//! [`ScramCredential`] (salt, iterations, stored key, server key), from which the password
//! cannot be recovered and with which nobody can log in.
//!
//! ```text
//! client-first  n,,n=USER,r=CNONCE
//! server-first  r=CNONCE SNONCE,s=base64(SALT),i=ITERATIONS
//! client-final  c=biws,r=CNONCE SNONCE,p=base64(ClientKey XOR HMAC(StoredKey, AuthMessage))
//! server-final  v=base64(HMAC(ServerKey, AuthMessage))
//! AuthMessage = client-first-bare "," server-first "," client-final-without-proof
//! ```

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use sluice_proto::auth::{MAX_SCRAM_MESSAGE, ScramCredential, constant_time_eq, valid_user_name};

/// The mechanism's name, as `WhoAmI` reports it.
pub const MECHANISM: &str = "scram-sha-256";
/// Iterations a new credential gets.
pub const DEFAULT_ITERATIONS: u32 = 8192;
/// The GS2 header without channel binding, and its base64 (`c=` of the client-final message).
const GS2_HEADER: &str = "n,,";
const GS2_HEADER_B64: &str = "biws";

/// Why a SCRAM exchange failed. Messages never include a password, proof or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SCRAM: {0}")]
pub struct ScramError(pub String);

fn fail<T>(why: impl Into<String>) -> Result<T, ScramError> {
    Err(ScramError(why.into()))
}

/// Random bytes from the operating system.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random source works");
    out
}

/// A fresh nonce: 24 random bytes as base64 (no `,`).
pub fn nonce() -> String {
    B64.encode(random_bytes(24))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    tag.as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0; 32];
    let iterations = NonZeroU32::new(iterations.max(1)).expect("at least one");
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// The credential a broker stores for `password`, with `salt` and `iterations`.
pub fn credential_with(password: &str, salt: &[u8], iterations: u32) -> ScramCredential {
    let salted = salted_password(password, salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    ScramCredential {
        salt: salt.to_vec(),
        iterations,
        stored_key: sha256(&client_key).to_vec(),
        server_key: hmac(&salted, b"Server Key").to_vec(),
    }
}

/// A new credential for `password`: a random 16-byte salt, [`DEFAULT_ITERATIONS`].
pub fn credential(password: &str) -> ScramCredential {
    credential_with(password, &random_bytes(16), DEFAULT_ITERATIONS)
}

/// Splits `k=value` attributes, each key once, in the order given.
fn attributes<'a>(message: &'a str, keys: &[char]) -> Result<Vec<&'a str>, ScramError> {
    if message.len() > MAX_SCRAM_MESSAGE {
        return fail(format!("a message over {MAX_SCRAM_MESSAGE} bytes"));
    }
    let parts: Vec<&str> = message.split(',').collect();
    if parts.len() != keys.len() {
        return fail(format!(
            "expected {} attributes, got {}",
            keys.len(),
            parts.len()
        ));
    }
    parts
        .iter()
        .zip(keys)
        .map(|(part, key)| {
            let mut chars = part.chars();
            match (chars.next(), chars.next()) {
                (Some(k), Some('=')) if k == *key => Ok(&part[2..]),
                _ => fail(format!("expected attribute {key}=, got {part:?}")),
            }
        })
        .collect()
}

fn printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The client's side, between its first message and the server's first answer.
#[derive(Debug)]
pub struct ClientFirst {
    bare: String,
    nonce: String,
}

/// The client's side after its final message: what the server must prove.
#[derive(Debug)]
pub struct ClientFinal {
    server_signature: [u8; 32],
}

impl ClientFirst {
    /// Starts an exchange for `user` with a fresh nonce; the message to send.
    pub fn new(user: &str) -> Result<(ClientFirst, String), ScramError> {
        Self::with_nonce(user, &nonce())
    }

    fn with_nonce(user: &str, nonce: &str) -> Result<(ClientFirst, String), ScramError> {
        if !valid_user_name(user) {
            return fail(format!(
                "{user:?} is not a valid user name (1 to 128 of A-Z a-z 0-9 . _ @ -)"
            ));
        }
        let bare = format!("n={user},r={nonce}");
        let message = format!("{GS2_HEADER}{bare}");
        Ok((
            ClientFirst {
                bare,
                nonce: nonce.to_owned(),
            },
            message,
        ))
    }

    /// Answers the server's first message with the proof for `password`; the message to send.
    pub fn finish(
        self,
        password: &str,
        server_first: &str,
    ) -> Result<(ClientFinal, String), ScramError> {
        let [nonce, salt, iterations] = attributes(server_first, &['r', 's', 'i'])?[..] else {
            unreachable!("three keys asked for")
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return fail("the broker's nonce does not extend the client's");
        }
        if !printable_nonce(nonce) {
            return fail("the broker's nonce has characters SCRAM forbids");
        }
        let salt = B64
            .decode(salt)
            .or_else(|_| fail("the salt is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .or_else(|_| fail("the iteration count is not a number"))?;
        if !(sluice_proto::auth::MIN_SCRAM_ITERATIONS..=sluice_proto::auth::MAX_SCRAM_ITERATIONS)
            .contains(&iterations)
        {
            return fail(format!("the broker asked for {iterations} iterations"));
        }
        let without_proof = format!("c={GS2_HEADER_B64},r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        Ok((
            ClientFinal {
                server_signature: hmac(&server_key, auth_message.as_bytes()),
            },
            format!("{without_proof},p={}", B64.encode(proof)),
        ))
    }
}

impl ClientFinal {
    /// Checks the server's final message: that it, too, knows the credential.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let [signature] = attributes(server_final, &['v'])?[..] else {
            unreachable!("one key asked for")
        };
        let signature = B64
            .decode(signature)
            .or_else(|_| fail("the server signature is not base64"))?;
        if !constant_time_eq(&signature, &self.server_signature) {
            return fail("the broker's signature is wrong: it does not hold this credential");
        }
        Ok(())
    }
}

/// The user a client-first message names, and its nonce (the broker's first step).
pub fn parse_client_first(message: &str) -> Result<(String, String), ScramError> {
    let Some(bare) = message.strip_prefix(GS2_HEADER) else {
        return fail("only SCRAM without channel binding (n,,) is supported");
    };
    let [user, nonce] = attributes(bare, &['n', 'r'])?[..] else {
        unreachable!("two keys asked for")
    };
    if !valid_user_name(user) {
        return fail("not a valid user name");
    }
    if !printable_nonce(nonce) || nonce.len() > 256 {
        return fail("the client nonce has characters SCRAM forbids");
    }
    Ok((user.to_owned(), nonce.to_owned()))
}

/// The broker's side between its first answer and the client's final message.
#[derive(Debug, Clone)]
pub struct ServerFirst {
    /// client-first-bare "," server-first: the start of the AuthMessage.
    prefix: String,
    nonce: String,
    credential: ScramCredential,
}

impl ServerFirst {
    /// Answers `client_first` for a user whose credential is `credential`; the message to send.
    pub fn new(
        client_first: &str,
        credential: ScramCredential,
    ) -> Result<(ServerFirst, String), ScramError> {
        let (user, client_nonce) = parse_client_first(client_first)?;
        let nonce = format!("{client_nonce}{}", self::nonce());
        let message = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        Ok((
            ServerFirst {
                prefix: format!("n={user},r={client_nonce},{message}"),
                nonce,
                credential,
            },
            message,
        ))
    }

    /// The stored key of the credential this exchange checks against.
    pub fn stored_key(&self) -> &[u8] {
        &self.credential.stored_key
    }

    /// Checks the client's proof; on success the server-final message to send.
    pub fn finish(&self, client_final: &str) -> Result<String, ScramError> {
        let [binding, nonce, proof] = attributes(client_final, &['c', 'r', 'p'])?[..] else {
            unreachable!("three keys asked for")
        };
        if binding != GS2_HEADER_B64 {
            return fail("channel binding is not supported");
        }
        if nonce != self.nonce {
            return fail("the nonce is not the one this exchange agreed");
        }
        let proof = B64
            .decode(proof)
            .or_else(|_| fail("the proof is not base64"))?;
        let auth_message = format!("{},c={binding},r={nonce}", self.prefix);
        let signature = hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return fail("wrong user name or password");
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        if !constant_time_eq(&sha256(&client_key), &self.credential.stored_key) {
            return fail("wrong user name or password");
        }
        let server_signature = hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// A credential for a user that does not exist, the same for the same name while the process
/// lives: answering it like any other keeps user names from being probed (the exchange then
/// fails at the proof, as a wrong password does).
pub fn decoy_credential(user: &str, secret: &[u8]) -> ScramCredential {
    let salt = hmac(secret, user.as_bytes())[..16].to_vec();
    ScramCredential {
        salt,
        iterations: DEFAULT_ITERATIONS,
        stored_key: hmac(secret, b"decoy stored key").to_vec(),
        server_key: hmac(secret, b"decoy server key").to_vec(),
    }
}

/// A new API token for a token id: `sluice_<id>_<secret>` with 32 random bytes of secret, and
/// the hash the broker keeps.
pub fn new_token(id: &str) -> (String, Vec<u8>) {
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32));
    let token = format!("sluice_{id}_{secret}");
    let hash = token_hash(&token);
    (token, hash)
}

/// The hash of a token the broker keeps and compares against.
pub fn token_hash(token: &str) -> Vec<u8> {
    sha256(token.as_bytes()).to_vec()
}

/// A token's id: the part between `sluice_` and the secret.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("sluice_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's test vector: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_exchange_comes_out_byte_for_byte() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = credential_with("pencil", &salt, 4096);
        let (client, first) = ClientFirst::with_nonce("user", "rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (check, client_final) = client.finish("pencil", server_first).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server = ServerFirst {
            prefix: format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first}"),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            credential,
        };
        let server_final = server.finish(&client_final).unwrap();
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        check.verify(&server_final).unwrap();
    }

    #[test]
    fn a_wrong_password_or_a_replayed_proof_is_refused() {
        let credential = credential("right horse battery");
        let (client, first) = ClientFirst::new("alice").unwrap();
        let (server, server_first) = ServerFirst::new(&first, credential.clone()).unwrap();
        let (_, wrong) = client.finish("wrong", &server_first).unwrap();
        assert_eq!(
            server.finish(&wrong).unwrap_err().0,
            "wrong user name or password"
        );
        // The right proof for one exchange does not pass another (a fresh server nonce).
        let (client, first) = ClientFirst::new("alice").unwrap();
        let (server, server_first) = ServerFirst::new(&first, credential.clone()).unwrap();
        let (check, right) = client.finish("right horse battery", &server_first).unwrap();
        let (other, _) = ServerFirst::new(&first, credential).unwrap();
        assert!(other.finish(&right).is_err());
        check.verify(&server.finish(&right).unwrap()).unwrap();
        // A server without the credential cannot fake its signature.
        assert!(check.verify("v=AAAA").is_err());
    }

    #[test]
    fn malformed_messages_are_refused_not_panicked_on() {
        for bad in [
            "",
            "n,,",
            "y,,n=a,r=b",
            "n,,n=a",
            "n,,n=a,r=",
            "n,,n=a b,r=x",
            "n,,r=x,n=a",
            "p=tls-unique,,n=a,r=b",
        ] {
            assert!(parse_client_first(bad).is_err(), "{bad:?}");
        }
        let (server, _) = ServerFirst::new("n,,n=a,r=xyz", credential("p")).unwrap();
        for bad in [
            "",
            "c=biws",
            "c=biws,r=xyz,p=!!",
            "c=eSws,r=x,p=AA==",
            "x=1,y=2,z=3",
        ] {
            assert!(server.finish(bad).is_err(), "{bad:?}");
        }
        let (client, _) = ClientFirst::new("a").unwrap();
        assert!(client.finish("p", "r=other,s=AAAA,i=4096").is_err());
        let (client, _) = ClientFirst::with_nonce("a", "n").unwrap();
        assert!(client.finish("p", "r=nx,s=AAAA,i=1").is_err());
        assert!(parse_client_first(&format!("n,,n=a,r={}", "x".repeat(2000))).is_err());
    }

    proptest::proptest! {
        /// Whatever a peer sends, each side answers with an error or a message, never a panic.
        #[test]
        fn arbitrary_messages_never_panic(text in ".{0,300}", junk in "[a-z=,]{0,60}") {
            let _ = parse_client_first(&text);
            let _ = parse_client_first(&format!("n,,{junk}"));
            let (server, _) = ServerFirst::new("n,,n=a,r=xyz", credential_with("p", &[0; 16], 4096))
                .unwrap();
            let _ = server.finish(&text);
            let _ = server.finish(&junk);
            let (client, _) = ClientFirst::with_nonce("a", "xyz").unwrap();
            let _ = client.finish("p", &text);
            let (client, _) = ClientFirst::with_nonce("a", "xyz").unwrap();
            let _ = client.finish("p", &format!("r=xyz1,s=AAAAAAAAAAAAAAAAAAAAAA==,{junk}"));
            let _ = ClientFinal { server_signature: [0; 32] }.verify(&text);
            let _ = token_id(&text);
        }
    }

    #[test]
    fn tokens_carry_their_id_and_are_kept_hashed() {
        let (token, hash) = new_token("k3y1d");
        assert_eq!(token_id(&token), Some("k3y1d"));
        assert_eq!(token_hash(&token), hash);
        assert!(
            !hash
                .windows(8)
                .any(|w| token.as_bytes().windows(8).any(|t| t == w))
        );
        assert_eq!(token_id("sluice__x"), None);
        assert_eq!(token_id("other_a_b"), None);
    }
}
