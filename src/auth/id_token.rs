//! The OpenID Connect ID token: who signed in, for "Logged in as …", the batch's
//! informational `user_id` and the account the state files its acknowledgements under (a wrong
//! subject there would at worst send the history again, which the upstream absorbs). Nothing is authorised by it — the upstream keys data on the
//! subject of the *access token* it validates itself (`docs/upstream-api.md`) — but a wrong
//! name or subject must still not be shown or sent, so its claims are used only when they are
//! meant for us (OpenID Connect Core §3.1.3.7):
//!
//! * `iss` is the provider's issuer (the one discovery was done for);
//! * `aud` contains our `client_id`, and with several audiences `azp` is our `client_id`.
//!
//! Not checked, and why (also in `docs/login.md`):
//!
//! * the signature: the token arrives straight from the token endpoint, over https (required,
//!   `crate::endpoint`) or on this machine, in answer to our own code or refresh token — §3.1.3.7
//!   item 6 lets the TLS server validation stand in for it. A public client could not check an
//!   HS256 signature anyway (the key is a client secret it does not have);
//! * `exp` / `iat`: they limit the replay of a token presented later by someone else, which
//!   cannot happen to one fetched just now; a skewed clock would only turn a good login into a
//!   nameless one;
//! * `nonce`: none is sent (PKCE binds the code to this login, RFC 9700 §2.1.1).

use base64::Engine as _;
use serde::Deserialize;

/// The claims used for display and `user_id`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    pub sub: Option<String>,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

impl Claims {
    /// What "Logged in as …" shows: the most human claim there is.
    pub fn name(&self) -> Option<String> {
        self.preferred_username
            .clone()
            .or_else(|| self.email.clone())
            .or_else(|| self.name.clone())
            .or_else(|| self.sub.clone())
    }
}

/// Why an ID token's claims are not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    #[error("it is not a JWT with a readable JSON payload")]
    Unreadable,
    #[error("its issuer is not the provider's")]
    WrongIssuer,
    #[error("it is not issued to this client (aud/azp)")]
    WrongAudience,
    #[error("the provider has no issuer identifier to check it against (endpoints configured without auth.issuer)")]
    NoIssuer,
}

/// `aud`: one string, or an array of them (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Checked {
    iss: Option<String>,
    aud: Option<Audience>,
    azp: Option<String>,
    #[serde(flatten)]
    claims: Claims,
}

/// The claims of `jwt` when it was issued by `issuer` to `client_id`.
pub fn verified_claims(
    jwt: &str,
    issuer: Option<&str>,
    client_id: &str,
) -> Result<Claims, IdTokenError> {
    let payload = jwt.split('.').nth(1).ok_or(IdTokenError::Unreadable)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| IdTokenError::Unreadable)?;
    let checked: Checked = serde_json::from_slice(&bytes).map_err(|_| IdTokenError::Unreadable)?;
    let issuer = issuer.ok_or(IdTokenError::NoIssuer)?;
    let same_issuer = checked
        .iss
        .as_deref()
        .is_some_and(|iss| iss.trim_end_matches('/') == issuer.trim_end_matches('/'));
    if !same_issuer {
        return Err(IdTokenError::WrongIssuer);
    }
    let ours = match &checked.aud {
        Some(Audience::One(aud)) => aud == client_id,
        Some(Audience::Many(auds)) => {
            auds.iter().any(|a| a == client_id)
                && (auds.len() == 1 || checked.azp.as_deref() == Some(client_id))
        }
        None => false,
    };
    if !ours || checked.azp.as_deref().is_some_and(|azp| azp != client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    Ok(checked.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: serde_json::Value) -> String {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("e30.{payload}.sig")
    }

    const ISS: &str = "https://id.example.org";

    #[test]
    fn claims_issued_to_us_by_our_issuer_are_used() {
        for aud in [json!("c"), json!(["c"]), json!(["c", "api"])] {
            let mut claims =
                json!({"iss": ISS, "aud": aud, "sub": "u1", "preferred_username": "alice"});
            if aud.as_array().is_some_and(|a| a.len() > 1) {
                claims["azp"] = json!("c");
            }
            let c = verified_claims(&jwt(claims), Some(ISS), "c").expect("ours");
            assert_eq!(c.sub.as_deref(), Some("u1"));
            assert_eq!(c.name().as_deref(), Some("alice"));
        }
        // A trailing slash on either side is the same issuer.
        let c = verified_claims(
            &jwt(json!({"iss": "https://id.example.org/", "aud": "c"})),
            Some(ISS),
            "c",
        );
        assert!(c.is_ok(), "{c:?}");
    }

    /// Issue 11: the claims of any ID token were shown and sent, whoever it was for.
    #[test]
    fn claims_for_another_client_or_from_another_issuer_are_refused() {
        let cases = [
            (
                json!({"iss": "https://evil.example", "aud": "c", "sub": "x"}),
                IdTokenError::WrongIssuer,
            ),
            (json!({"aud": "c", "sub": "x"}), IdTokenError::WrongIssuer),
            (
                json!({"iss": ISS, "aud": "other", "sub": "x"}),
                IdTokenError::WrongAudience,
            ),
            (json!({"iss": ISS, "sub": "x"}), IdTokenError::WrongAudience),
            (
                json!({"iss": ISS, "aud": ["other", "c"], "sub": "x"}),
                IdTokenError::WrongAudience,
            ),
            (
                json!({"iss": ISS, "aud": ["other", "c"], "azp": "other", "sub": "x"}),
                IdTokenError::WrongAudience,
            ),
            (
                json!({"iss": ISS, "aud": "c", "azp": "other", "sub": "x"}),
                IdTokenError::WrongAudience,
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(
                verified_claims(&jwt(claims.clone()), Some(ISS), "c"),
                Err(want),
                "{claims}"
            );
        }
        let ours = jwt(json!({"iss": ISS, "aud": "c", "sub": "x"}));
        assert_eq!(
            verified_claims(&ours, None, "c"),
            Err(IdTokenError::NoIssuer)
        );
        for garbage in ["garbage", "a.!!!.c", "a.e30"] {
            assert!(
                verified_claims(garbage, Some(ISS), "c").is_err(),
                "{garbage}"
            );
        }
    }
}
