//! JWT access tokens (RFC 9068): the header decides the issuer's key, the signature is
//! verified with `jsonwebtoken` (ring), then the claims are checked.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde_json::{Map, Value};

use super::claims::{self, Expect};
use super::keys::allowed_algorithm;
use super::{AuthFailure, Principal, TokenVerifier};

/// `typ` values of an access token: RFC 9068's `at+jwt` and the plain `JWT` many providers
/// (Keycloak, Entra ID) still send. Anything else (`logout+jwt`, `dpop+jwt`, …) is a JWT made
/// for another purpose and must not open the API.
fn access_token_typ(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    let typ = typ.strip_prefix("application/").unwrap_or(&typ);
    matches!(typ, "at+jwt" | "jwt")
}

/// A compact JWS: three base64url parts, the first a JSON object. `None` for anything else
/// (an opaque token; a 5-part JWE is refused by the caller).
pub(crate) fn split_header(token: &str) -> Option<Result<Map<String, Value>, AuthFailure>> {
    let mut parts = token.split('.');
    let (header, _payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(decode_object(header, "header"))
}

fn decode_object(part: &str, what: &'static str) -> Result<Map<String, Value>, AuthFailure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthFailure::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthFailure::Malformed(what)),
    }
}

impl TokenVerifier {
    pub(crate) async fn verify_jwt(
        &self,
        token: &str,
        header: Map<String, Value>,
    ) -> Result<Principal, AuthFailure> {
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(allowed_algorithm)
            .ok_or(AuthFailure::AlgorithmNotAllowed)?;
        // RFC 7515 §4.1.11: extensions we do not understand must be refused.
        if header.contains_key("crit") {
            return Err(AuthFailure::Malformed("crit header"));
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(typ)) if access_token_typ(typ) => {}
            Some(_) => return Err(AuthFailure::WrongTokenType),
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthFailure::Malformed("kid")),
        };

        // The issuer is chosen by the unverified `iss`, but only to pick whose keys must have
        // signed the token; nothing else is read before the signature checks out with them.
        let payload = token.split('.').nth(1).unwrap_or_default();
        let unverified = decode_object(payload, "payload")?;
        let issuer = unverified
            .get("iss")
            .and_then(Value::as_str)
            .and_then(|iss| self.issuers.iter().find(|i| i.config.url == iss))
            .ok_or(AuthFailure::BadIssuer)?;

        let keys = issuer
            .keys_for(kid, alg, &self.config, &self.http, self.clock.as_ref())
            .await?;

        // Signature only; the claims are checked below, strictly (jsonwebtoken 9 lets
        // a missing `aud` or a non-numeric `nbf` through).
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut verified = None;
        for key in &keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::InvalidAlgorithm => return Err(AuthFailure::AlgorithmNotAllowed),
                    ErrorKind::Base64(_) => return Err(AuthFailure::Malformed("signature")),
                    ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                        return Err(AuthFailure::Malformed("token"))
                    }
                    // ring could not use the key or the signature bytes: it does not verify.
                    _ => continue,
                },
            }
        }
        let claims = verified.ok_or(AuthFailure::BadSignature)?;
        claims::check(
            &claims,
            &Expect {
                issuer: &issuer.config.url,
                audience: &self.config.audience,
                leeway: self.config.leeway,
                require_iss_and_exp: true,
            },
            claims::unix_now(),
        )
    }
}
