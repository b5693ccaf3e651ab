//! The tokens a login produced, as they are stored (keyring or file) and refreshed.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the login keeps between runs. `Debug` never prints a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTokens {
    pub access_token: String,
    /// Rotated on every refresh by providers that follow RFC 9700; the newest one is persisted
    /// before the access token that came with it is used.
    pub refresh_token: Option<String>,
    /// `None` when the provider sent no `expires_in`: the token is used until the upstream
    /// answers 401, then refreshed once.
    pub expires_at: Option<DateTime<Utc>>,
    pub scope: Option<String>,
    pub id_token: Option<String>,
    /// The OpenID subject, sent upstream as `user_id`.
    pub subject: Option<String>,
    /// What "Logged in as …" shows (preferred_username, email, name or subject).
    pub username: Option<String>,
    /// The provider these tokens belong to (its issuer, or its token endpoint without one).
    pub issuer: String,
    pub client_id: String,
    pub obtained_at: DateTime<Utc>,
}

impl fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTokens")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("subject", &self.subject)
            .field("username", &self.username)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("obtained_at", &self.obtained_at)
            .finish()
    }
}

/// Which stored entry: one per provider and client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    pub issuer: String,
    pub client_id: String,
}

impl Account {
    /// The keyring's service name for every entry of this program.
    pub const SERVICE: &'static str = "aw-sync-samay";

    /// The keyring's user field / the file name stem: readable, and unique per provider+client.
    pub fn key(&self) -> String {
        format!("{} {}", self.issuer, self.client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let t = StoredTokens {
            access_token: "AT-SECRET".into(),
            refresh_token: Some("RT-SECRET".into()),
            expires_at: None,
            scope: None,
            id_token: Some("ID-SECRET".into()),
            subject: Some("alice".into()),
            username: None,
            issuer: "https://idp".into(),
            client_id: "c".into(),
            obtained_at: Utc::now(),
        };
        let s = format!("{t:?}");
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("alice"));
    }
}
