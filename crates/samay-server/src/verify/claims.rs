//! The checks on what a token says, shared by JWTs and introspection answers: `iss` exact,
//! `aud` contains the audience, `exp`/`nbf` with leeway, `sub` present.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::principal::MAX_SUBJECT_BYTES;
use super::{AuthFailure, Principal};

/// Seconds since the epoch, now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly fractional. `None` when
/// absent; `Err` when present but not a non-negative number.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, AuthFailure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(v.floor() as u64)),
                    _ => Err(AuthFailure::Malformed(name)),
                }
            }
        }
        Some(_) => Err(AuthFailure::Malformed(name)),
    }
}

/// What the checks need to know.
pub(crate) struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub leeway: Duration,
    /// JWTs must carry `iss` and `exp`; an introspection answer may leave them out (the
    /// introspection endpoint itself vouches for the issuer and for `active`).
    pub require_iss_and_exp: bool,
}

/// Checks the claims and returns who the token speaks for.
pub(crate) fn check(
    claims: &Map<String, Value>,
    expect: &Expect<'_>,
    now: u64,
) -> Result<Principal, AuthFailure> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == expect.issuer => {}
        None if !expect.require_iss_and_exp => {}
        _ => return Err(AuthFailure::BadIssuer),
    }

    let leeway = expect.leeway.as_secs();
    match numeric_date(claims, "exp")? {
        // RFC 7519 §4.1.4: the current time must be before `exp`.
        Some(exp) if now >= exp.saturating_add(leeway) => return Err(AuthFailure::Expired),
        Some(_) => {}
        None if expect.require_iss_and_exp => return Err(AuthFailure::MissingClaim("exp")),
        None => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(AuthFailure::NotYetValid);
        }
    }

    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expect.audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expect.audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthFailure::BadAudience);
    }

    let subject = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub,
        Some(Value::String(_)) | None => return Err(AuthFailure::MissingClaim("sub")),
        Some(_) => return Err(AuthFailure::Malformed("sub")),
    };
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(AuthFailure::Malformed("sub longer than 255 bytes"));
    }
    Ok(Principal {
        issuer: expect.issuer.to_string(),
        subject: subject.clone(),
    })
}
