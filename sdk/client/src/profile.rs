//! Where a client finds its cluster and its credentials outside its code: a profile file
//! (TOML) and environment variables — never a command line alone, which every user of the
//! machine can read (`ps`). docs/security.md.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ClientConfig, ClientError, ClientIdentity, Credentials, TlsConfig};

/// A profile file: any of `broker`, `tls_ca`, `tls_cert`, `tls_key`, `user`, `password`,
/// `token`. Its `Debug` hides the password and the token.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub broker: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<hidden>");
        f.debug_struct("Profile")
            .field("broker", &self.broker)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .finish()
    }
}

impl Profile {
    /// Reads a profile. A parse error names the line and what is wrong, never the line's text
    /// (it may hold a password).
    pub fn load(path: &Path) -> Result<Profile, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::InvalidConfig(format!("reading the profile {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            ClientError::InvalidConfig(format!(
                "parsing the profile {}{}: {}",
                path.display(),
                line.map_or(String::new(), |l| format!(", line {l}")),
                e.message()
            ))
        })
    }

    /// The credentials the profile names: a user (with its password) or a token.
    pub fn credentials(&self) -> Result<Option<Credentials>, ClientError> {
        Credentials::choose(self.user.clone(), self.password.clone(), self.token.clone())
    }

    /// The client certificate the profile names.
    pub fn identity(&self) -> Option<ClientIdentity> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// A client configuration from the profile alone (it must name `broker`; without
    /// `tls_ca`, the system's roots are trusted).
    pub fn client_config(&self) -> Result<ClientConfig, ClientError> {
        let broker = self
            .broker
            .clone()
            .ok_or_else(|| ClientError::InvalidConfig("the profile names no broker".into()))?;
        let tls = self
            .tls_ca
            .clone()
            .map_or(TlsConfig::SystemRoots, TlsConfig::CaFile);
        let mut config = ClientConfig::new(broker, tls);
        config.identity = self.identity();
        config.credentials = self.credentials()?;
        Ok(config)
    }
}

impl Credentials {
    /// The credentials in the environment: `SLUICE_USER` with `SLUICE_PASSWORD`, or
    /// `SLUICE_TOKEN`; `None` when neither is set.
    pub fn from_env() -> Result<Option<Credentials>, ClientError> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Credentials::choose(
            var("SLUICE_USER"),
            var("SLUICE_PASSWORD"),
            var("SLUICE_TOKEN"),
        )
    }

    /// The credentials named by a user (which needs `password`) or a token; the user wins.
    pub fn choose(
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
    ) -> Result<Option<Credentials>, ClientError> {
        Ok(match (user, token) {
            (Some(user), _) => {
                let password = password.ok_or_else(|| {
                    ClientError::InvalidConfig(format!(
                        "user {user} needs a password: set SLUICE_PASSWORD, or `password` in a profile"
                    ))
                })?;
                Some(Credentials::Password { user, password })
            }
            (None, Some(token)) => Some(Credentials::Token(token)),
            (None, None) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_gives_credentials_and_never_shows_or_quotes_its_secrets() {
        let dir = std::env::temp_dir().join(format!("sluice-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "broker = \"b:1\"\nuser = \"alice\"\npassword = \"hunter2-secret\"\n",
        )
        .unwrap();
        let p = Profile::load(&path).unwrap();
        assert!(matches!(
            p.credentials().unwrap(),
            Some(Credentials::Password { ref user, .. }) if user == "alice"
        ));
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(p.client_config().unwrap().broker, "b:1");
        // A typo: the error names the line, not its text.
        std::fs::write(&path, "broker = \"b:1\"\npasword = \"hunter2-secret\"\n").unwrap();
        let e = Profile::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("hunter2"), "{e}");
        // A user without a password says where to put it.
        std::fs::write(&path, "user = \"alice\"\n").unwrap();
        let e = Profile::load(&path).unwrap().credentials().unwrap_err();
        assert!(e.to_string().contains("needs a password"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
