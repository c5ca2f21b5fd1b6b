//! Authentication: who each connection's client is (`client_auth`, docs/security.md), the
//! SCRAM-SHA-256 and token exchanges of `Authenticate`, and the user and token requests.
//!
//! A connection under `none` is `ANONYMOUS` and under `mtls` its certificate's principal from
//! the start. Under `credentials` a connection that presented no certificate has no principal
//! until an `Authenticate` succeeds, and may send nothing but `Hello` and `Authenticate`
//! before. A principal established by a password or a token is looked up again on every
//! request: a deleted user, a changed password or a revoked (or expired) token stops the
//! connection at its next request, not only at its next connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::OnceCell;

use sluice_client::scram::{self, ServerFirst};
use sluice_metadata::MetadataCommand;
use sluice_metadata::security::TokenRecord;
use sluice_proto::acl::{Operation, ResourceType};
use sluice_proto::auth::{AuthReply, AuthStep, CreatedToken};
use sluice_proto::{ErrorCode, Request, ResponseBody, WireError};

use crate::Broker;
use crate::config::ClientAuth;
use crate::wire_error::propose_error;

/// The principal of an unauthenticated client under `client_auth = "none"`.
pub(crate) const ANONYMOUS: &str = "ANONYMOUS";

/// Failed `Authenticate` steps after which the connection is closed.
pub(crate) const MAX_AUTH_FAILURES: u32 = 3;

/// What one connection has agreed: the protocol version, once `Hello` has been answered, and
/// who its client is, once known.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) version: OnceCell<u16>,
    identity: OnceLock<Identity>,
    /// A SCRAM exchange between its two steps: the user and the broker's side.
    scram: Mutex<Option<(String, ServerFirst)>>,
    failures: AtomicU32,
}

/// Who a connection's client is and how that was established.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) principal: String,
    /// `none`, `mtls`, `scram-sha-256` or `token`.
    pub(crate) mechanism: &'static str,
    /// What must still exist for the identity to hold.
    credential: Credential,
}

#[derive(Debug, Clone)]
enum Credential {
    /// Fixed for the connection's life: anonymous, or a certificate.
    Fixed,
    /// A user, with the stored key it authenticated against (a password change ends it).
    User(String, Vec<u8>),
    Token(String),
}

impl Session {
    /// A session for a connection whose client is known from the start.
    fn known(principal: String, mechanism: &'static str) -> Session {
        let session = Session::default();
        let _ = session.identity.set(Identity {
            principal,
            mechanism,
            credential: Credential::Fixed,
        });
        session
    }

    /// The identity, if the connection has authenticated (or needed not).
    pub(crate) fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    /// Failed authentication steps so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// The session of a new connection, by the listener's `client_auth`; an error closes the
/// connection (a certificate the handshake verified but that names nobody).
pub(crate) fn open_session(broker: &Broker, conn: &quinn::Connection) -> Result<Session, String> {
    match broker.config.client_auth {
        ClientAuth::None => Ok(Session::known(ANONYMOUS.to_owned(), "none")),
        ClientAuth::Mtls => crate::tls::client_principal(conn)
            .map(|p| Session::known(p, "mtls"))
            .map_err(|e| e.to_string()),
        ClientAuth::Credentials => match crate::tls::client_principal(conn) {
            Ok(p) => Ok(Session::known(p, "mtls")),
            Err(crate::tls::PrincipalError::NoCertificate) => Ok(Session::default()),
            Err(e) => Err(e.to_string()),
        },
    }
}

fn not_authenticated(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::NotAuthenticated, message)
}

/// The connection's identity if it still holds: authenticated, and its user or token still
/// there (and the token current).
pub(crate) fn current<'s>(
    broker: &Broker,
    session: &'s Session,
) -> Result<&'s Identity, WireError> {
    let identity = session.identity().ok_or_else(|| {
        not_authenticated(
            "this broker requires authentication (client_auth = \"credentials\"): \
             authenticate with a password (--user, SLUICE_PASSWORD) or a token (SLUICE_TOKEN) \
             first, or present a client certificate",
        )
    })?;
    let gone = match &identity.credential {
        Credential::Fixed => None,
        Credential::User(name, key) => broker
            .controller
            .read(|s| s.security().user(name).is_none_or(|c| c.stored_key != *key))
            .then(|| format!("user {name:?} was deleted or its password changed")),
        Credential::Token(id) => {
            let now = crate::retention::now_ms();
            broker
                .controller
                .read(|s| s.security().token(id).is_none_or(|t| !t.is_current(now)))
                .then(|| format!("token {id} was revoked or has expired"))
        }
    };
    match gone {
        None => Ok(identity),
        Some(why) => Err(not_authenticated(format!(
            "{why}: this connection is no longer authenticated"
        ))),
    }
}

/// One `Authenticate` step. A failure counts towards [`MAX_AUTH_FAILURES`]; its message never
/// says whether the user exists.
pub(crate) fn step(
    broker: &Arc<Broker>,
    session: &Session,
    step: AuthStep,
) -> Result<AuthReply, WireError> {
    if broker.config.client_auth != ClientAuth::Credentials {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "this broker does not take passwords or tokens (client_auth = \"{}\")",
                broker.config.client_auth.as_str()
            ),
        ));
    }
    if let Some(identity) = session.identity() {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "this connection is authenticated already, as {} by {}: connect without a \
                 client certificate to authenticate with a password or token",
                identity.principal, identity.mechanism
            ),
        ));
    }
    if session.failures() >= MAX_AUTH_FAILURES {
        return Err(failed("too many failed attempts on this connection"));
    }
    let result = match step {
        AuthStep::ScramFirst { message } => scram_first(broker, session, &message),
        AuthStep::ScramFinal { message } => scram_final(session, &message),
        AuthStep::Token { token } => token_login(broker, session, &token),
    };
    if let Err(e) = &result {
        session.failures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::authentication_failed();
        tracing::warn!(cause = %e.message, "authentication failed");
    }
    result
}

fn failed(why: impl std::fmt::Display) -> WireError {
    not_authenticated(format!("authentication failed: {why}"))
}

fn scram_first(
    broker: &Arc<Broker>,
    session: &Session,
    message: &str,
) -> Result<AuthReply, WireError> {
    let (user, _) = scram::parse_client_first(message).map_err(failed)?;
    let (credential, secret) = broker.controller.read(|s| {
        let sec = s.security();
        (sec.user(&user).cloned(), sec.decoy_secret().to_vec())
    });
    // An unknown user is answered like a known one, alike on every broker and across
    // restarts (the cluster's decoy secret), and fails at the proof.
    let credential = credential.unwrap_or_else(|| {
        if secret.is_empty() {
            init_decoy_secret(broker);
            scram::decoy_credential(&user, &broker.auth_secret)
        } else {
            scram::decoy_credential(&user, &secret)
        }
    });
    let (server, reply) = ServerFirst::new(message, credential).map_err(failed)?;
    *session.scram.lock().expect("scram lock") = Some((user, server));
    Ok(AuthReply::ScramContinue { message: reply })
}

fn scram_final(session: &Session, message: &str) -> Result<AuthReply, WireError> {
    let (user, server) = session
        .scram
        .lock()
        .expect("scram lock")
        .take()
        .ok_or_else(|| failed("ScramFinal without a ScramFirst before it"))?;
    let server_final = server.finish(message).map_err(failed)?;
    let identity = Identity {
        principal: user.clone(),
        mechanism: scram::MECHANISM,
        credential: Credential::User(user, server.stored_key().to_vec()),
    };
    authenticated(session, identity, Some(server_final))
}

fn token_login(broker: &Broker, session: &Session, token: &str) -> Result<AuthReply, WireError> {
    let invalid = || failed("the token is not valid (wrong, revoked or expired)");
    let id = scram::token_id(token).ok_or_else(invalid)?;
    let now = crate::retention::now_ms();
    let principal = broker
        .controller
        .read(|s| {
            s.security()
                .token(id)
                .filter(|t| t.is_current(now))
                .filter(|t| {
                    sluice_proto::auth::constant_time_eq(&t.hash, &scram::token_hash(token))
                })
                .map(|t| t.principal.clone())
        })
        .ok_or_else(invalid)?;
    let identity = Identity {
        principal,
        mechanism: "token",
        credential: Credential::Token(id.to_owned()),
    };
    authenticated(session, identity, None)
}

fn authenticated(
    session: &Session,
    identity: Identity,
    server_final: Option<String>,
) -> Result<AuthReply, WireError> {
    let reply = AuthReply::Done {
        principal: identity.principal.clone(),
        mechanism: identity.mechanism.to_owned(),
        server_final,
    };
    let (principal, mechanism) = (identity.principal.clone(), identity.mechanism);
    session
        .identity
        .set(identity)
        .map_err(|_| failed("this connection is authenticated already"))?;
    tracing::info!(%principal, mechanism, "authenticated");
    Ok(reply)
}

/// Whether `request` is one of the user and token requests [`admin`] answers.
pub(crate) fn is_admin(request: &Request) -> bool {
    matches!(
        request,
        Request::UpsertUser { .. }
            | Request::DeleteUser { .. }
            | Request::ListUsers
            | Request::CreateToken { .. }
            | Request::RevokeToken { .. }
            | Request::ListTokens
    )
}

/// The user and token requests, for `identity` (already authorised as `authz` says; a token
/// of another principal needs `alter cluster`, checked here). Blocking: proposes and waits.
pub(crate) fn admin(
    broker: &Broker,
    identity: &Identity,
    request: Request,
) -> Result<ResponseBody, WireError> {
    let caller = identity.principal.as_str();
    let users = |broker: &Broker| broker.controller.read(|s| s.security().users());
    match request {
        Request::UpsertUser { name, credential } => {
            broker
                .controller
                .propose(MetadataCommand::UpsertUser {
                    name: name.clone(),
                    credential,
                })
                .map_err(propose_error)?;
            tracing::info!(user = %name, by = %caller, "user created or its password changed");
            Ok(ResponseBody::Users(users(broker)))
        }
        Request::DeleteUser { name } => {
            broker
                .controller
                .propose(MetadataCommand::DeleteUser { name: name.clone() })
                .map_err(propose_error)?;
            tracing::info!(user = %name, by = %caller, "user deleted");
            Ok(ResponseBody::Users(users(broker)))
        }
        Request::ListUsers => Ok(ResponseBody::Users(users(broker))),
        Request::CreateToken {
            principal,
            description,
            expires_in_ms,
        } => {
            if identity.mechanism == "token" {
                // A leaked short-lived token must not mint a lasting one.
                return Err(WireError::new(
                    ErrorCode::NotAuthorized,
                    "a connection authenticated by a token cannot create tokens; use a \
                     password or a certificate",
                ));
            }
            let principal = principal.unwrap_or_else(|| caller.to_owned());
            if principal != caller {
                on_cluster(broker, caller, Operation::Alter)?;
            } else if principal == ANONYMOUS {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    "an anonymous connection cannot create a token for itself; name a principal",
                ));
            }
            let id = crate::hex(&scram::random_bytes(8));
            let (token, hash) = scram::new_token(&id);
            let created_ms = crate::retention::now_ms();
            let record = TokenRecord {
                principal,
                hash,
                description,
                created_ms,
                expires_ms: expires_in_ms
                    .map(|ms| created_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))),
            };
            broker
                .controller
                .propose(MetadataCommand::CreateToken {
                    id: id.clone(),
                    token: record.clone(),
                })
                .map_err(propose_error)?;
            tracing::info!(token = %id, principal = %record.principal, by = %caller, "token created");
            Ok(ResponseBody::TokenCreated(CreatedToken {
                token,
                description: record.describe(&id),
            }))
        }
        Request::RevokeToken { id } => {
            let owner = broker
                .controller
                .read(|s| s.security().token(&id).map(|t| t.principal.clone()));
            let Some(owner) = owner else {
                return Err(WireError::new(
                    ErrorCode::InvalidConfig,
                    format!("token {id} does not exist (see `sluice token list`)"),
                ));
            };
            if owner != caller {
                on_cluster(broker, caller, Operation::Alter)?;
            }
            broker
                .controller
                .propose(MetadataCommand::RevokeToken { id: id.clone() })
                .map_err(propose_error)?;
            tracing::info!(token = %id, by = %caller, "token revoked");
            Ok(ResponseBody::Tokens(tokens(broker, caller)))
        }
        Request::ListTokens => Ok(ResponseBody::Tokens(tokens(broker, caller))),
        _ => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "request routed to the wrong handler",
        )),
    }
}

/// The tokens `caller` may see: every one when it may describe the cluster, else its own.
fn tokens(broker: &Broker, caller: &str) -> Vec<sluice_proto::auth::TokenDescription> {
    let all = on_cluster(broker, caller, Operation::Describe).is_ok();
    broker.controller.read(|s| {
        s.security()
            .tokens()
            .filter(|(_, t)| all || t.principal == caller)
            .map(|(id, t)| t.describe(id))
            .collect()
    })
}

/// Proposes the cluster's decoy secret, once per process, when the state has none.
fn init_decoy_secret(broker: &Arc<Broker>) {
    static PROPOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if PROPOSED.swap(true, Ordering::Relaxed) {
        return;
    }
    let broker = broker.clone();
    tokio::spawn(async move {
        let secret = scram::random_bytes(32);
        if let Err(e) = broker
            .controller
            .propose_async(MetadataCommand::InitDecoySecret { secret })
            .await
        {
            PROPOSED.store(false, Ordering::Relaxed);
            tracing::warn!(cause = %e, "could not set the cluster's decoy secret");
        }
    });
}

/// Whether `caller` may do `operation` on the cluster (another principal's tokens).
fn on_cluster(broker: &Broker, caller: &str, operation: Operation) -> Result<(), WireError> {
    crate::authz::require(broker, caller, operation, ResourceType::Cluster, "*")
}
